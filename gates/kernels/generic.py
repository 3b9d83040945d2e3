"""Device-generic fused GRU recurrence: torch ops in a Python time loop, hand-written backward.

This is the implementation used on CUDA (and any other device) and the CPU
fallback when the C++ extension cannot be built. It follows exactly the same
algorithm and saved-tensor layout as ``gru_cpu.cpp``:

forward, for t = 0..T-1 (``gi`` already holds ``x_t W_ih^T + b_ih``)::

    gh   = b_hh + h W_hh^T                       one GEMM per step, blocks r, z, n[, rho]
    a_r  = gi_r + gh_r;  a_z = gi_z + gh_z;  a_n = gi_n + r * gh_n
    sigmoid: r = s(a_r),    z = s(a_z),                      n = tanh(a_n)
    refine : r = s(a_r),    z = 2 p f + (1 - 2 p) f**2,      n = tanh(a_n)
             with f = s(a_z), p = s(a_rho)
    sst    : r = s(a_r)**2, z = s(a_z)**2,                   n = tanh(a_n) * |tanh(a_n)|
    h    = (1 - z) * n + z * h                   (torch.nn.GRU form)

per step it saves ``[s(a_r), s(a_z), tanh(a_n), gh_n(, s(a_rho))]``; backward runs
the loop in reverse (one GEMM per step for ``dh_{t-1}``) and forms ``dW_hh`` with
a single GEMM over all steps after the loop, so its cost is O(T).

The shared pieces — mode table, input validation and the autograd Function that
both backends plug into — live here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "MODES",
    "ModeSpec",
    "mode_spec",
    "check_inputs",
    "GenericImpl",
    "FusedGRUFunction",
    "run",
]


@dataclass(frozen=True)
class ModeSpec:
    """A recurrence mode: its id in the C++ kernel, gate blocks and saved rows."""

    name: str
    mode_id: int
    blocks: tuple[str, ...]
    description: str

    @property
    def gates(self) -> int:
        """G, the number of H-sized blocks in ``gi``, ``w_hh`` and ``b_hh``."""
        return len(self.blocks)

    @property
    def saved_rows(self) -> int:
        """K, the H-sized rows saved per step and batch element for backward."""
        return self.gates + 1


MODES: dict[str, ModeSpec] = {
    "sigmoid": ModeSpec(
        "sigmoid", 0, ("r", "z", "n"), "r, z = sigmoid; n = tanh (torch.nn.GRU)"
    ),
    "refine": ModeSpec(
        "refine",
        1,
        ("r", "z", "n", "rho"),
        "effective update gate 2*rho*f + (1-2*rho)*f**2 with f, rho = sigmoid",
    ),
    "sst": ModeSpec(
        "sst", 2, ("r", "z", "n"), "r, z = sigmoid**2; n = tanh*|tanh| (sign kept)"
    ),
}


def mode_spec(mode: str) -> ModeSpec:
    """Look a mode up by name; an unknown name lists the known ones."""
    try:
        return MODES[mode]
    except (KeyError, TypeError):
        raise ValueError(
            f"mode: unknown recurrence mode {mode!r}; known modes: {', '.join(MODES)}"
        ) from None


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_inputs(gi, h0, w_hh, b_hh, mode: str) -> tuple[int, int, int, ModeSpec]:
    """Validate the arguments of ``fused_gru_recurrence``; return ``(T, B, H, spec)``.

    Errors name the argument and the expected shape.
    """
    spec = mode_spec(mode)
    G = spec.gates
    for name, t in (("gi", gi), ("h0", h0), ("w_hh", w_hh), ("b_hh", b_hh)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if w_hh.dim() != 2 or w_hh.shape[0] % G != 0 or w_hh.shape[0] != G * w_hh.shape[1]:
        raise ValueError(
            f"w_hh: expected shape (G*H, H) = ({G}*H, H) for mode {mode!r} "
            f"(blocks {', '.join(spec.blocks)}), got {_shape(w_hh)}"
        )
    H = w_hh.shape[1]
    if gi.dim() != 3 or gi.shape[2] != G * H:
        raise ValueError(
            f"gi: expected shape (T, B, G*H) = (T, B, {G * H}) for mode {mode!r} "
            f"with H={H}, got {_shape(gi)}"
        )
    T, B = gi.shape[0], gi.shape[1]
    if _shape(h0) != (B, H):
        raise ValueError(f"h0: expected shape (B, H) = ({B}, {H}), got {_shape(h0)}")
    if _shape(b_hh) != (G * H,):
        raise ValueError(
            f"b_hh: expected shape (G*H,) = ({G * H},) for mode {mode!r}, got {_shape(b_hh)}"
        )
    for name, t in (("h0", h0), ("w_hh", w_hh), ("b_hh", b_hh)):
        if t.dtype != gi.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} differs from gi's dtype {gi.dtype}")
        if t.device != gi.device:
            raise ValueError(f"{name}: device {t.device} differs from gi's device {gi.device}")
    if not gi.dtype.is_floating_point:
        raise TypeError(f"gi: expected a floating-point dtype, got {gi.dtype}")
    return T, B, H, spec


class GenericImpl:
    """Forward/backward loops written with torch ops (any device, any float dtype)."""

    name = "generic"

    @staticmethod
    def forward(gi, h0, w_hh, b_hh, mode_id: int, save: bool):
        T, B, GH = gi.shape
        H = h0.shape[1]
        refine, sst = mode_id == 1, mode_id == 2
        K = 5 if refine else 4
        out = gi.new_empty((T, B, H))
        saved = gi.new_empty((T, B, K, H)) if save else gi.new_empty((0,))
        gh = gi.new_empty((B, GH))
        w_t = w_hh.t()
        h = h0
        for t in range(T):
            torch.addmm(b_hh, h, w_t, out=gh)
            g = gi[t]
            s_rz = torch.sigmoid(g[:, : 2 * H] + gh[:, : 2 * H])
            sr, sz = s_rz[:, :H], s_rz[:, H:]
            gh_n = gh[:, 2 * H : 3 * H]
            r = sr * sr if sst else sr
            tn = torch.tanh(torch.addcmul(g[:, 2 * H : 3 * H], r, gh_n))
            n = tn * tn.abs() if sst else tn
            if refine:
                sp = torch.sigmoid(g[:, 3 * H :] + gh[:, 3 * H :])
                z = 2 * sp * sz + (1 - 2 * sp) * sz * sz
            else:
                z = sz * sz if sst else sz
            torch.lerp(n, h, z, out=out[t])
            if save:
                st = saved[t]
                st[:, 0:2].copy_(s_rz.view(B, 2, H))
                st[:, 2].copy_(tn)
                st[:, 3].copy_(gh_n)
                if refine:
                    st[:, 4].copy_(sp)
            h = out[t]
        return out, saved.view(T, B, K * H) if save else saved

    @staticmethod
    def backward(grad_out, grad_hT, h0, w_hh, out, saved, mode_id: int):
        T, B, H = out.shape
        refine, sst = mode_id == 1, mode_id == 2
        G = 4 if refine else 3
        K = G + 1
        sv_all = saved.view(T, B, K, H)
        d_gi = out.new_empty((T, B, G * H))
        d_gh = out.new_empty((T, B, G * H))
        dh = out.new_zeros((B, H))
        if grad_out is not None:
            dh += grad_out[T - 1]
        if grad_hT is not None:
            dh += grad_hT
        for t in range(T - 1, -1, -1):
            hp = out[t - 1] if t > 0 else h0
            sv = sv_all[t]
            sr, sz, tn, gn = sv[:, 0], sv[:, 1], sv[:, 2], sv[:, 3]
            if sst:
                at = tn.abs()
                n = tn * at
                dn_da = 2 * at * (1 - tn * tn)
                r = sr * sr
                dr_da = 2 * r * (1 - sr)
            else:
                n = tn
                dn_da = 1 - tn * tn
                r = sr
                dr_da = sr * (1 - sr)
            if refine:
                sp = sv[:, 4]
                fz = sz * (1 - sz)
                z = 2 * sp * sz + (1 - 2 * sp) * sz * sz
                dz_da = (2 * sp + 2 * (1 - 2 * sp) * sz) * fz
                dz_dp = 2 * fz * sp * (1 - sp)
            elif sst:
                z = sz * sz
                dz_da = 2 * z * (1 - sz)
            else:
                z = sz
                dz_da = sz * (1 - sz)
            dan = dh * (1 - z) * dn_da
            dz = dh * (hp - n)
            dar = dan * gn * dr_da
            daz = dz * dz_da
            dgi_t, dgh_t = d_gi[t], d_gh[t]
            dgi_t[:, :H] = dar
            dgi_t[:, H : 2 * H] = daz
            dgi_t[:, 2 * H : 3 * H] = dan
            if refine:
                dgi_t[:, 3 * H :] = dz * dz_dp
            dgh_t.copy_(dgi_t)
            torch.mul(dan, r, out=dgh_t[:, 2 * H : 3 * H])
            nxt = dh * z
            if grad_out is not None and t > 0:
                nxt += grad_out[t - 1]
            dh = nxt.addmm_(dgh_t, w_hh)
        d_w = d_gh[0].t().mm(h0)
        if T > 1:
            d_w.addmm_(d_gh[1:].reshape(-1, G * H).t(), out[:-1].reshape(-1, H))
        d_b = d_gh.reshape(-1, G * H).sum(0)
        return d_gi, dh, d_w, d_b


class FusedGRUFunction(torch.autograd.Function):
    """Autograd wrapper shared by the backends; ``impl`` supplies the two loops."""

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, mode_id: int, impl):
        ctx.set_materialize_grads(False)
        save = any(ctx.needs_input_grad[:4])
        gi_c, h0_c = gi.contiguous(), h0.contiguous()
        w_c, b_c = w_hh.contiguous(), b_hh.contiguous()
        out, saved = impl.forward(gi_c, h0_c, w_c, b_c, mode_id, save)
        if save:
            ctx.save_for_backward(h0_c, w_c, out, saved)
        ctx.mode_id = mode_id
        ctx.impl = impl
        return out, out[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_hT):
        h0, w_hh, out, saved = ctx.saved_tensors
        if grad_out is None and grad_hT is None:
            return None, None, None, None, None, None
        d_gi, d_h0, d_w, d_b = ctx.impl.backward(
            grad_out, grad_hT, h0, w_hh, out, saved, ctx.mode_id
        )
        need = ctx.needs_input_grad
        return (
            d_gi if need[0] else None,
            d_h0 if need[1] else None,
            d_w if need[2] else None,
            d_b if need[3] else None,
            None,
            None,
        )


def run(gi, h0, w_hh, b_hh, spec: ModeSpec, impl) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the fused recurrence with backend ``impl`` (inputs already validated)."""
    if gi.shape[0] == 0:
        return gi.new_empty((0, h0.shape[0], h0.shape[1])), h0.clone()
    return FusedGRUFunction.apply(gi, h0, w_hh, b_hh, spec.mode_id, impl)
