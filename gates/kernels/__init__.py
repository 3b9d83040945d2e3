"""Fused recurrences: the time loop of a GRU or LSTM layer, forward and backward, every gate mode.

``fused_gru_recurrence(gi, h0, w_hh, b_hh, mode)`` and
``fused_lstm_recurrence(gi, h0, c0, w_hh, b_hh, mode)`` run one layer's recurrence over
precomputed input projections ``gi`` (T, B, rows) = ``x W_ih^T + b_ih`` (computed by the
caller in one GEMM, e.g. with :func:`input_projection`)::

    gh_t = h_{t-1} W_hh^T + b_hh                    one GEMM per step
    GRU : r = P(a_r), n = cand(gi_n + r gh_n),  h_t = g h_{t-1} + i n   (torch.nn.GRU form)
    LSTM: c_t = g c_{t-1} + i cand(a_cell),     h_t = P(a_output) tanh(c_t)

with the effective decay gate g and input gate i of the ``mode``. The modes, their
row blocks and activations are one table, :mod:`gates.kernels.modes` (``MODES``):
``sigmoid``, ``refine``, ``sst``, ``sst_candidate``, ``cumax``, ``cumax_refine``, ``master_cumax``,
``master_sigmoid`` — the names ``Mechanism.fused_mode`` returns — on both cores
(:func:`available_modes`). Master modes take the downsize factor C from the rows of
``w_hh`` (``rows = G*H + 2*H/C``) or from ``chunk``. The math equals
:mod:`gates.functional` (the reference recurrence, plain autograd).

Results are differentiable w.r.t. ``gi``, the initial states, ``w_hh`` and ``b_hh``
through a hand-written backward (first order only). Backends:

``"cpp"``      CPU, float32/float64: C++ extension built on first use (about a minute).
``"generic"``  any device/dtype: torch ops in a Python loop (used on CUDA and as the
               CPU fallback when the extension cannot be built).

``backend_for(device, dtype)`` says which one a call will use;
``SOENSIM_GRU_BACKEND=generic`` forces the generic one (both cores).

``input_projection(x, w_ih, b_ih)`` computes ``gi`` (one GEMM, differentiable); with
the C++ backend its output comes from the kernel's buffer pool, which saves re-faulting
~100 MB of fresh memory per training step at s-CIFAR sizes. The pool keeps freed kernel
buffers for reuse up to ``SOENSIM_GRU_POOL_MB`` (default: a quarter of RAM, at most
8 GiB; 0 disables it); ``gates.kernels.cpu.empty_cache()`` releases them,
``cpu.pool_stats()`` counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import cpu as _cpu
from .functions import run_gru, run_lstm
from .generic import GenericImpl
from .modes import CORES, MODES, KernelMode, check_inputs, mode_spec

__all__ = [
    "fused_gru_recurrence",
    "fused_lstm_recurrence",
    "input_projection",
    "available_modes",
    "available_backends",
    "backend_for",
    "mode_spec",
    "KernelMode",
    "MODES",
]

_BACKENDS = ("cpp", "generic")
_CPP_DTYPES = (torch.float32, torch.float64)


def available_modes(core: str = "gru") -> tuple[str, ...]:
    """Names of the fused modes of ``core`` (``"gru"`` or ``"lstm"``): every mode of :data:`MODES`."""
    if core not in CORES:
        raise ValueError(f"core: expected one of {', '.join(CORES)}, got {core!r}")
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


def _impl(backend: str | None, gi: torch.Tensor):
    if backend is None or backend == "auto":
        backend = backend_for(gi.device, gi.dtype)
    if backend == "generic":
        return GenericImpl
    if backend != "cpp":
        raise ValueError(f"backend: unknown backend {backend!r}; known: auto, {', '.join(_BACKENDS)}")
    if gi.device.type != "cpu":
        raise ValueError(f"backend: 'cpp' runs on the CPU only, gi is on {gi.device}")
    if gi.dtype not in _CPP_DTYPES:
        raise ValueError(f"backend: 'cpp' supports float32/float64, got {gi.dtype}")
    if not _cpu.load():
        raise RuntimeError(f"backend: the C++ extension is not available ({_cpu.build_info()['error']})")
    return _cpu.CppImpl


def _per_model(fn, gi, states, w_hh, b_hh, **kw):
    """``fn`` on each of the M models of a 4-D ``gi`` (M, T, B, R), results stacked on a leading M."""
    if w_hh.dim() != 3 or w_hh.shape[0] != gi.shape[0]:
        raise ValueError(f"w_hh: with gi of {gi.shape[0]} models (M, T, B, rows) expected (M, rows, H) with "
                         f"M = {gi.shape[0]}; got shape {tuple(w_hh.shape)}")
    def per(t):  # unbind, not indexing: its backward stacks the M gradients once instead of filling M zero tensors
        return [None] * gi.shape[0] if t is None else t.unbind(0)

    outs = [fn(*args, **kw) for args in zip(per(gi), *(per(s) for s in states), per(w_hh), per(b_hh), strict=True)]
    return tuple(torch.stack(parts) for parts in zip(*outs, strict=True))


def _zeros_for_none(gi, state, w_hh, b_hh):
    """Zero initial states / recurrent bias for the ``None`` arguments (shapes from ``gi``, ``w_hh``)."""
    if isinstance(gi, torch.Tensor) and isinstance(w_hh, torch.Tensor) and gi.dim() == 3 and w_hh.dim() == 2:
        state = tuple(gi.new_zeros((gi.shape[1], w_hh.shape[1])) if s is None else s for s in state)
        if b_hh is None:
            b_hh = w_hh.new_zeros((w_hh.shape[0],))
    return state, b_hh


def fused_gru_recurrence(
    gi: torch.Tensor,
    h0: torch.Tensor | None,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None,
    mode: str = "sigmoid",
    *,
    chunk: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the GRU recurrence over precomputed input projections.

    Args:
        gi: (T, B, rows) input projections ``x W_ih^T + b_ih``, blocks reset, update, candidate,
            then refine and master_forget, master_input where the mode has them (``MODES[mode].blocks("gru")``).
        h0: (B, H) initial state, or None for zeros.
        w_hh: (rows, H) recurrent weights (torch.nn.GRU layout, blocks stacked).
        b_hh: (rows,) recurrent bias, or None for zeros.
        mode: one of :func:`available_modes`.
        chunk: master downsize factor C (master modes); None takes it from ``w_hh``'s rows.
        backend: None/"auto" (pick with :func:`backend_for`), "cpp" or "generic".

    Models: ``gi`` (M, T, B, rows), states (M, B, H), ``w_hh`` (M, rows, H) and ``b_hh`` (M, rows)
    run M independent models of one shape and mode (the Triton backend's model dimension); the
    CPU backends run them one after another. The results gain the leading M.

    Returns:
        ``(out, h_T)``: all states (T, B, H) and the last one (B, H).
    """
    if gi.dim() == 4:
        return _per_model(fused_gru_recurrence, gi, (h0,), w_hh, b_hh, mode=mode, chunk=chunk, backend=backend)
    (h0,), b_hh = _zeros_for_none(gi, (h0,), w_hh, b_hh)
    _, _, _, M, spec = check_inputs("gru", gi, (h0,), w_hh, b_hh, mode, chunk)
    return run_gru(gi, h0, w_hh, b_hh, spec, M, _impl(backend, gi))


def fused_lstm_recurrence(
    gi: torch.Tensor,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None,
    mode: str = "sigmoid",
    *,
    chunk: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the LSTM recurrence over precomputed input projections.

    Args:
        gi: (T, B, rows) input projections, blocks input, forget, cell, output,
            then master_forget, master_input in master modes (``MODES[mode].blocks("lstm")``; refine modes hold
            the refine gate in the input block).
        h0, c0: (B, H) initial hidden and cell states, or None for zeros.
        w_hh: (rows, H) recurrent weights (torch.nn.LSTM layout); b_hh: (rows,) or None.
        mode, chunk, backend: as :func:`fused_gru_recurrence` (and its model dimension M).

    Returns:
        ``(out, h_T, c_T)``: all hidden states (T, B, H), the last hidden and cell states (B, H).
    """
    if gi.dim() == 4:
        return _per_model(fused_lstm_recurrence, gi, (h0, c0), w_hh, b_hh, mode=mode, chunk=chunk, backend=backend)
    (h0, c0), b_hh = _zeros_for_none(gi, (h0, c0), w_hh, b_hh)
    _, _, _, M, spec = check_inputs("lstm", gi, (h0, c0), w_hh, b_hh, mode, chunk)
    return run_lstm(gi, h0, c0, w_hh, b_hh, spec, M, _impl(backend, gi))


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
