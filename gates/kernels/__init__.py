"""Fast fused GRU recurrences: the time loop of a GRU layer, forward and backward.

``fused_gru_recurrence(gi, h0, w_hh, b_hh, mode)`` runs

    gh_t = h_{t-1} W_hh^T + b_hh                  (blocks r, z, n[, rho])
    r, z, n from gi_t and gh_t per ``mode``, with n = act(gi_n + r * gh_n)
    h_t  = (1 - z) * n + z * h_{t-1}              (torch.nn.GRU form)

for t = 0..T-1 and returns ``(out, h_T)`` with ``out`` of shape (T, B, H).
``gi`` (T, B, G*H) holds the input projections ``x_t W_ih^T + b_ih``, computed by
the caller in one GEMM. Modes (G = number of H-sized blocks):

``"sigmoid"`` (G=3: r, z, n)
    r = sigmoid(a_r), z = sigmoid(a_z), n = tanh(a_n) — exactly torch.nn.GRU.
``"refine"`` (G=4: r, z, n, rho)
    f = sigmoid(a_z), p = sigmoid(a_rho), effective update gate
    z = 2 p f + (1 - 2 p) f**2 (Gu et al. refine gate); r, n as in "sigmoid".
``"sst"`` (G=3: r, z, n)
    r = sigmoid(a_r)**2, z = sigmoid(a_z)**2, n = tanh(a_n) * |tanh(a_n)|
    (squared sigmoid-tanh; the square of tanh keeps tanh's sign).

The result is differentiable w.r.t. ``gi``, ``h0``, ``w_hh`` and ``b_hh``
through a hand-written backward (first order only). Backends:

``"cpp"``      CPU, float32/float64: C++ extension built on first use (~10 s).
``"generic"``  any device/dtype: torch ops in a Python loop (used on CUDA and as
               the CPU fallback when the extension cannot be built).

``backend_for(device, dtype)`` says which one a call will use;
``SOENSIM_GRU_BACKEND=generic`` forces the generic one.

``input_projection(x, w_ih, b_ih)`` computes ``gi`` (one GEMM, differentiable);
with the C++ backend its output comes from the kernel's buffer pool, which saves
re-faulting ~100 MB of fresh memory per training step at s-CIFAR sizes.
The pool keeps freed kernel buffers for reuse up to ``SOENSIM_GRU_POOL_MB``
(default: a quarter of RAM, at most 8 GiB; 0 disables it);
``gates.kernels.cpu.empty_cache()`` releases them, ``cpu.pool_stats()`` counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import cpu as _cpu
from .generic import MODES, GenericImpl, ModeSpec, check_inputs, mode_spec, run

__all__ = [
    "fused_gru_recurrence",
    "input_projection",
    "available_modes",
    "available_backends",
    "backend_for",
    "mode_spec",
    "ModeSpec",
    "MODES",
]

_BACKENDS = ("cpp", "generic")
_CPP_DTYPES = (torch.float32, torch.float64)


def available_modes() -> tuple[str, ...]:
    """Names of the recurrence modes, e.g. ``("sigmoid", "refine", "sst")``."""
    return tuple(MODES)


def available_backends() -> tuple[str, ...]:
    """Backends usable in this process (``"cpp"`` only when the extension loads)."""
    return _BACKENDS if _cpu.available() else ("generic",)


def backend_for(device="cpu", dtype: torch.dtype = torch.float32) -> str:
    """``"cpp"`` or ``"generic"``: the backend used for tensors on ``device``/``dtype``.

    May trigger the one-time build of the C++ extension.
    """
    device = torch.device(device)
    if device.type == "cpu" and dtype in _CPP_DTYPES and _cpu.available():
        return "cpp"
    return "generic"


def _impl(name: str, gi: torch.Tensor):
    if name == "generic":
        return GenericImpl
    # name == "cpp"
    if gi.device.type != "cpu":
        raise ValueError(f"backend: 'cpp' runs on the CPU only, gi is on {gi.device}")
    if gi.dtype not in _CPP_DTYPES:
        raise ValueError(f"backend: 'cpp' supports float32/float64, got {gi.dtype}")
    if not _cpu.load():
        raise RuntimeError(
            f"backend: the C++ extension is not available ({_cpu.build_info()['error']})"
        )
    return _cpu.CppImpl


def fused_gru_recurrence(
    gi: torch.Tensor,
    h0: torch.Tensor | None,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None,
    mode: str = "sigmoid",
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the GRU recurrence over precomputed input projections.

    Args:
        gi: (T, B, G*H) input projections ``x W_ih^T + b_ih``, blocks in the mode's order.
        h0: (B, H) initial state, or None for zeros.
        w_hh: (G*H, H) recurrent weights (torch.nn.GRU layout, blocks stacked).
        b_hh: (G*H,) recurrent bias, or None for zeros.
        mode: one of :func:`available_modes`.
        backend: None/"auto" (pick with :func:`backend_for`), "cpp" or "generic".

    Returns:
        ``(out, h_T)``: all states (T, B, H) and the last one (B, H).
    """
    spec = mode_spec(mode)
    if isinstance(w_hh, torch.Tensor) and isinstance(gi, torch.Tensor):
        if h0 is None and gi.dim() == 3 and w_hh.dim() == 2:
            h0 = gi.new_zeros((gi.shape[1], w_hh.shape[1]))
        if b_hh is None and w_hh.dim() == 2:
            b_hh = w_hh.new_zeros((w_hh.shape[0],))
    check_inputs(gi, h0, w_hh, b_hh, mode)
    if backend is None or backend == "auto":
        name = backend_for(gi.device, gi.dtype)
    elif backend in _BACKENDS:
        name = backend
    else:
        raise ValueError(
            f"backend: unknown backend {backend!r}; known: auto, {', '.join(_BACKENDS)}"
        )
    return run(gi, h0, w_hh, b_hh, spec, _impl(name, gi))


class _PooledLinear(torch.autograd.Function):
    """``x @ w.T + b`` into a pooled output buffer (CPU, C++ backend loaded)."""

    @staticmethod
    def forward(ctx, x2, w, b):
        out = _cpu.empty_pooled((x2.shape[0], w.shape[0]), x2.dtype)
        if b is None:
            torch.mm(x2, w.t(), out=out)
        else:
            torch.addmm(b, x2, w.t(), out=out)
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x2, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx = g.mm(w) if need[0] else None
        dw = g.t().mm(x2) if need[1] else None
        db = g.sum(0) if ctx.has_bias and need[2] else None
        return dx, dw, db


def input_projection(
    x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor | None = None
) -> torch.Tensor:
    """``gi = x W_ih^T + b_ih`` for all steps at once: (T, B, I) -> (T, B, G*H).

    Same values and gradients as ``torch.nn.functional.linear``; on the CPU with
    the C++ backend the (large) result lives in the kernel's buffer pool. First
    order only (no double backward), like the recurrence itself.
    """
    if (
        x.device.type == "cpu"
        and x.dtype in _CPP_DTYPES
        and w_ih.dtype == x.dtype
        and (b_ih is None or b_ih.dtype == x.dtype)
        and x.dim() >= 2
        and _cpu.available()
    ):
        x2 = x.reshape(-1, x.shape[-1])
        out = _PooledLinear.apply(x2, w_ih, b_ih)
        return out.view(*x.shape[:-1], w_ih.shape[0])
    return F.linear(x, w_ih, b_ih)
