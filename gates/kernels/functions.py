"""The autograd Functions of the fused recurrences, shared by the backends.

A backend (``impl``) supplies four loops — ``gru_forward``, ``gru_backward``,
``lstm_forward``, ``lstm_backward`` (see :class:`gates.kernels.generic.GenericImpl`) — and
these Functions save what the backward loop needs and route the gradients. First
order only (the backward is hand-written).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .modes import KernelMode

__all__ = ["FusedGRUFunction", "FusedLSTMFunction", "run_gru", "run_lstm"]


class FusedGRUFunction(torch.autograd.Function):
    """``(gi, h0, w_hh, b_hh) -> (out, h_T)`` through ``impl``'s GRU loops."""

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, spec: KernelMode, M: int, impl):
        ctx.set_materialize_grads(False)
        save = any(ctx.needs_input_grad[:4])
        gi_c, h0_c = gi.contiguous(), h0.contiguous()
        w_c, b_c = w_hh.contiguous(), b_hh.contiguous()
        out, saved = impl.gru_forward(gi_c, h0_c, w_c, b_c, spec, M, save)
        if save:
            ctx.save_for_backward(h0_c, w_c, out, saved)
        ctx.spec, ctx.M, ctx.impl = spec, M, impl
        return out, out[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_hT):
        if grad_out is None and grad_hT is None:
            return (None,) * 7
        h0, w_hh, out, saved = ctx.saved_tensors
        d_gi, d_h0, d_w, d_b = ctx.impl.gru_backward(grad_out, grad_hT, h0, w_hh, out, saved, ctx.spec, ctx.M)
        need = ctx.needs_input_grad
        grads = (d_gi, d_h0, d_w, d_b)
        return tuple(g if n else None for g, n in zip(grads, need[:4], strict=True)) + (None, None, None)


class FusedLSTMFunction(torch.autograd.Function):
    """``(gi, h0, c0, w_hh, b_hh) -> (out, h_T, c_T)`` through ``impl``'s LSTM loops."""

    @staticmethod
    def forward(ctx, gi, h0, c0, w_hh, b_hh, spec: KernelMode, M: int, impl):
        ctx.set_materialize_grads(False)
        save = any(ctx.needs_input_grad[:5])
        gi_c, h0_c, c0_c = gi.contiguous(), h0.contiguous(), c0.contiguous()
        w_c, b_c = w_hh.contiguous(), b_hh.contiguous()
        out, c_T, saved = impl.lstm_forward(gi_c, h0_c, c0_c, w_c, b_c, spec, M, save)
        if save:
            ctx.save_for_backward(h0_c, c0_c, w_c, out, saved)
        ctx.spec, ctx.M, ctx.impl = spec, M, impl
        return out, out[-1].clone(), c_T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_hT, grad_cT):
        if grad_out is None and grad_hT is None and grad_cT is None:
            return (None,) * 8
        h0, c0, w_hh, out, saved = ctx.saved_tensors
        grads = ctx.impl.lstm_backward(grad_out, grad_hT, grad_cT, h0, c0, w_hh, out, saved, ctx.spec, ctx.M)
        need = ctx.needs_input_grad
        return tuple(g if n else None for g, n in zip(grads, need[:5], strict=True)) + (None, None, None)


def run_gru(gi, h0, w_hh, b_hh, spec: KernelMode, M: int, impl) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the fused GRU recurrence with backend ``impl`` (inputs already validated)."""
    if gi.shape[0] == 0:
        return gi.new_empty((0, h0.shape[0], h0.shape[1])), h0.clone()
    return FusedGRUFunction.apply(gi, h0, w_hh, b_hh, spec, M, impl)


def run_lstm(gi, h0, c0, w_hh, b_hh, spec: KernelMode, M: int, impl):
    """Apply the fused LSTM recurrence with backend ``impl`` (inputs already validated)."""
    if gi.shape[0] == 0:
        return gi.new_empty((0, h0.shape[0], h0.shape[1])), h0.clone(), c0.clone()
    return FusedLSTMFunction.apply(gi, h0, c0, w_hh, b_hh, spec, M, impl)
