"""Triton fused GRU recurrence (CUDA, or the CPU under ``TRITON_INTERPRET=1``), every kernel mode.

``triton_gru_recurrence(gi, h0, w_hh, b_hh, mode)`` runs, per step (torch.nn.GRU form)::

    gh  = h W_hh^T + b_hh                      blocks reset, update, candidate[, refine][, master_forget, master_input]
    r   = gate(gi_r + gh_r);   n = cand(gi_n + r * gh_n)
    f   = decay(gi_z + gh_z)                   sigmoid, sigmoid² (sst) or cumax over units
    g   = refine(f, sigmoid(a_refine)) or f;   i = 1 - g
    g, i = master mix with f̃, ĩ (H/C units each, repeated C times) for the master modes
    h'  = g * h + i * n

with gate = sigmoid (sigmoid² for sst) and cand = tanh (tanh·|tanh| for sst_candidate): the math of
:func:`gates.functional.gru_sequence`. ``gi`` (T, B, R) or, with a model dimension, (M, T, B, R):
M independent models of the same shape and mode in one launch (``h0`` (M, B, H), ``w_hh``
(M, R, H), ``b_hh`` (M, R)). Returns ``(out, h_T)``: (T, B, H) and (B, H), or with M leading.
Differentiable in ``gi``, ``h0``, ``w_hh``, ``b_hh`` (first order).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .triton_common import (
    RUNTIME_INTS,
    Geometry,
    LaunchConfig,
    as_batched,
    candidate,
    candidate_grad,
    cumax_backprop,
    cumax_chunk,
    cumax_lse,
    dot_cols,
    dot_rows,
    expansion,
    geometry,
    kernel_constants,
    launch,
    load_state,
    load_tile,
    master_gates,
    master_gates_grad,
    master_mix,
    master_mix_grad,
    plain_gate,
    plain_gate_grad,
    refine_gate,
    refine_grad,
    row_bias,
    sigmoid,
    store_tile,
    weight_grads,
)

__all__ = ["triton_gru_recurrence"]


@triton.jit(do_not_specialize=RUNTIME_INTS)
def _gru_forward(gi, h0, w, b, out, gh_save, lse_save, B, H, HM, R, T,
                 ACT: tl.constexpr, REFINE: tl.constexpr, MASTER: tl.constexpr, SAVE: tl.constexpr,
                 BB: tl.constexpr, HMP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 BKM: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(1).to(tl.int64)
    offs_b = tl.program_id(0) * BB + tl.arange(0, BB)
    row_ok = offs_b < B
    SQ: tl.constexpr = (ACT == 1) or (ACT == 5)
    SQC: tl.constexpr = ACT == 5
    CUM: tl.constexpr = ACT == 2
    step = B * R
    BH = B * H
    gi_m = gi + pid_m * T * step
    gh_m = gh_save + pid_m * T * step  # the saved products (always written for cumax: its second pass reads them)
    out_m = out + pid_m * T * BH
    w_m = w + pid_m * R * H
    b_m = b + pid_m * R
    h_src = h0 + pid_m * BH  # the previous state: h0, then out[t - 1]
    if MASTER != 0:
        offs_mm = tl.arange(0, HMP)
        m0 = R - 2 * HM
    for t in range(T):
        gi_t = gi_m + t * step
        gh_t = gh_m + t * step
        if MASTER != 0:  # compact master gates of this step (all H/C units)
            acc_mf = tl.zeros((BB, HMP), dtype=tl.float32)
            acc_mi = tl.zeros((BB, HMP), dtype=tl.float32)
            for k0 in range(0, H, BK):
                offs_k = k0 + tl.arange(0, BK)
                hk = load_state(h_src, offs_b, row_ok, offs_k, H)
                acc_mf = dot_rows(acc_mf, hk, w_m, m0, offs_mm, HM, offs_k, H, PREC)
                acc_mi = dot_rows(acc_mi, hk, w_m, m0 + HM, offs_mm, HM, offs_k, H, PREC)
            gh_mf = acc_mf + row_bias(b_m, m0, offs_mm, HM)
            gh_mi = acc_mi + row_bias(b_m, m0 + HM, offs_mm, HM)
            if SAVE:
                store_tile(gh_t, offs_b, row_ok, R, m0, offs_mm, HM, gh_mf)
                store_tile(gh_t, offs_b, row_ok, R, m0 + HM, offs_mm, HM, gh_mi)
            mf, mi, pf, pi = master_gates(load_tile(gi_t, offs_b, row_ok, R, m0, offs_mm, HM) + gh_mf,
                                          load_tile(gi_t, offs_b, row_ok, R, m0 + HM, offs_mm, HM) + gh_mi,
                                          (offs_mm < HM)[None, :], MASTER)
        if CUM:  # first pass of the cumax over the units: update-gate products and their log-sum-exp
            lse = cumax_lse(h_src, w_m, b_m, gi_t, gh_t, H, R, H, offs_b, row_ok, BB, BN, BK, PREC)
            if SAVE:
                tl.store(lse_save + (pid_m * T + t) * B + offs_b, lse, mask=row_ok)
            carry = tl.zeros((BB,), dtype=tl.float32)
            tl.debug_barrier()
        for j0 in range(0, H, BN):  # chunks of hidden units
            offs_j = j0 + tl.arange(0, BN)
            acc_r = tl.zeros((BB, BN), dtype=tl.float32)
            acc_n = tl.zeros((BB, BN), dtype=tl.float32)
            if not CUM:
                acc_z = tl.zeros((BB, BN), dtype=tl.float32)
            if REFINE:
                acc_q = tl.zeros((BB, BN), dtype=tl.float32)
            for k0 in range(0, H, BK):
                offs_k = k0 + tl.arange(0, BK)
                hk = load_state(h_src, offs_b, row_ok, offs_k, H)
                acc_r = dot_rows(acc_r, hk, w_m, 0, offs_j, H, offs_k, H, PREC)
                acc_n = dot_rows(acc_n, hk, w_m, 2 * H, offs_j, H, offs_k, H, PREC)
                if not CUM:
                    acc_z = dot_rows(acc_z, hk, w_m, H, offs_j, H, offs_k, H, PREC)
                if REFINE:
                    acc_q = dot_rows(acc_q, hk, w_m, 3 * H, offs_j, H, offs_k, H, PREC)
            gh_r = acc_r + row_bias(b_m, 0, offs_j, H)
            gh_n = acc_n + row_bias(b_m, 2 * H, offs_j, H)
            r, s_r = plain_gate(load_tile(gi_t, offs_b, row_ok, R, 0, offs_j, H) + gh_r, SQ)
            n, t_n = candidate(load_tile(gi_t, offs_b, row_ok, R, 2 * H, offs_j, H) + r * gh_n, SQC)
            if SAVE:
                store_tile(gh_t, offs_b, row_ok, R, 0, offs_j, H, gh_r)
                store_tile(gh_t, offs_b, row_ok, R, 2 * H, offs_j, H, gh_n)
            if CUM:
                a_z = load_tile(gi_t, offs_b, row_ok, R, H, offs_j, H) + load_tile(gh_t, offs_b, row_ok, R, H, offs_j, H)
                g, p_z, carry = cumax_chunk(a_z, lse, carry, (offs_j < H)[None, :])
            else:
                gh_z = acc_z + row_bias(b_m, H, offs_j, H)
                g, s_z = plain_gate(load_tile(gi_t, offs_b, row_ok, R, H, offs_j, H) + gh_z, SQ)
                if SAVE:
                    store_tile(gh_t, offs_b, row_ok, R, H, offs_j, H, gh_z)
            if REFINE:
                gh_q = acc_q + row_bias(b_m, 3 * H, offs_j, H)
                g = refine_gate(g, sigmoid(load_tile(gi_t, offs_b, row_ok, R, 3 * H, offs_j, H) + gh_q))
                if SAVE:
                    store_tile(gh_t, offs_b, row_ok, R, 3 * H, offs_j, H, gh_q)
            i = 1.0 - g
            if MASTER != 0:
                E = expansion(offs_mm, offs_j, H // HM, HM, H)
                g, i = master_mix(g, i, tl.dot(mf, E, input_precision="ieee"), tl.dot(mi, E, input_precision="ieee"))
            h = g * load_tile(h_src, offs_b, row_ok, H, 0, offs_j, H) + i * n
            store_tile(out_m + t * BH, offs_b, row_ok, H, 0, offs_j, H, h)
        tl.debug_barrier()  # the next step reads this state back
        h_src = out_m + t * BH


@triton.jit(do_not_specialize=RUNTIME_INTS)
def _gru_backward(gi, h0, w, out, gh_save, lse_save, grad_out, grad_h, d_gi, d_gh, dh_buf, dg_buf, dy_buf,
                  B, H, HM, R, T, ACT: tl.constexpr, REFINE: tl.constexpr, MASTER: tl.constexpr,
                  HAS_GO: tl.constexpr, HAS_GH: tl.constexpr, NB: tl.constexpr,
                  BB: tl.constexpr, HMP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  BKM: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(1).to(tl.int64)
    offs_b = tl.program_id(0) * BB + tl.arange(0, BB)
    row_ok = offs_b < B
    SQ: tl.constexpr = (ACT == 1) or (ACT == 5)
    SQC: tl.constexpr = ACT == 5
    CUM: tl.constexpr = ACT == 2
    step = B * R
    BH = B * H
    gi_m = gi + pid_m * T * step
    gh_m = gh_save + pid_m * T * step
    dgi_m = d_gi + pid_m * T * step
    dgh_m = d_gh + pid_m * T * step
    out_m = out + pid_m * T * BH
    go_m = grad_out + pid_m * T * BH
    w_m = w + pid_m * R * H
    h0_m = h0 + pid_m * BH
    dh_m = dh_buf + pid_m * BH  # dL/dh_t, finally dL/dh0
    dd_m = dg_buf + pid_m * BH  # dL/dh_t * g_t (the direct path to h_{t-1})
    dy_m = dy_buf + pid_m * BH  # cumax modes: dL/d(update gate) of the step
    for j0 in range(0, H, BN):
        offs_j = j0 + tl.arange(0, BN)
        dh = tl.zeros((BB, BN), dtype=tl.float32)
        if HAS_GH:
            dh += load_tile(grad_h + pid_m * BH, offs_b, row_ok, H, 0, offs_j, H)
        if HAS_GO:
            dh += load_tile(go_m + (T - 1) * BH, offs_b, row_ok, H, 0, offs_j, H)
        store_tile(dh_m, offs_b, row_ok, H, 0, offs_j, H, dh)
    if MASTER != 0:
        offs_mm = tl.arange(0, HMP)
        m0 = R - 2 * HM
    tl.debug_barrier()
    for tt in range(T):
        t = T - 1 - tt
        gi_t = gi_m + t * step
        gh_t = gh_m + t * step
        dgi_t = dgi_m + t * step
        dgh_t = dgh_m + t * step
        prev = (t - 1 + (t == 0)) * BH  # h_{t-1} is out[t - 1] (h0 at t = 0, masked below)
        if MASTER != 0:
            mf, mi, pf, pi = master_gates(
                load_tile(gi_t, offs_b, row_ok, R, m0, offs_mm, HM) + load_tile(gh_t, offs_b, row_ok, R, m0, offs_mm, HM),
                load_tile(gi_t, offs_b, row_ok, R, m0 + HM, offs_mm, HM) +
                load_tile(gh_t, offs_b, row_ok, R, m0 + HM, offs_mm, HM), (offs_mm < HM)[None, :], MASTER)
            dmf = tl.zeros((BB, HMP), dtype=tl.float32)
            dmi = tl.zeros((BB, HMP), dtype=tl.float32)
        if CUM:
            lse = tl.load(lse_save + (pid_m * T + t) * B + offs_b, mask=row_ok, other=0.0)
            carry = tl.zeros((BB,), dtype=tl.float32)
            dy_sum = tl.zeros((BB,), dtype=tl.float32)
            dy_dot = tl.zeros((BB,), dtype=tl.float32)
        for j0 in range(0, H, BN):
            offs_j = j0 + tl.arange(0, BN)
            valid = (offs_j < H)[None, :]
            dh = load_tile(dh_m, offs_b, row_ok, H, 0, offs_j, H)
            h_prev = load_tile(out_m + prev, offs_b, row_ok & (t > 0), H, 0, offs_j, H) + \
                load_tile(h0_m, offs_b, row_ok & (t == 0), H, 0, offs_j, H)
            gh_n = load_tile(gh_t, offs_b, row_ok, R, 2 * H, offs_j, H)
            r, s_r = plain_gate(load_tile(gi_t, offs_b, row_ok, R, 0, offs_j, H) +
                                load_tile(gh_t, offs_b, row_ok, R, 0, offs_j, H), SQ)
            n, t_n = candidate(load_tile(gi_t, offs_b, row_ok, R, 2 * H, offs_j, H) + r * gh_n, SQC)
            a_z = load_tile(gi_t, offs_b, row_ok, R, H, offs_j, H) + load_tile(gh_t, offs_b, row_ok, R, H, offs_j, H)
            if CUM:
                f, p_z, carry = cumax_chunk(a_z, lse, carry, valid)
            else:
                f, s_z = plain_gate(a_z, SQ)
            g = f
            if REFINE:
                q = sigmoid(load_tile(gi_t, offs_b, row_ok, R, 3 * H, offs_j, H) +
                            load_tile(gh_t, offs_b, row_ok, R, 3 * H, offs_j, H))
                g = refine_gate(f, q)
            i = 1.0 - g
            g_eff = g
            i_eff = i
            if MASTER != 0:
                E = expansion(offs_mm, offs_j, H // HM, HM, H)
                mf_x = tl.dot(mf, E, input_precision="ieee")
                mi_x = tl.dot(mi, E, input_precision="ieee")
                g_eff, i_eff = master_mix(g, i, mf_x, mi_x)
            # h' = g h + i n
            store_tile(dd_m, offs_b, row_ok, H, 0, offs_j, H, dh * g_eff)
            dg = dh * h_prev
            di = dh * n
            da_n = candidate_grad(dh * i_eff, t_n, SQC)
            if MASTER != 0:
                dg, di, dmf_x, dmi_x = master_mix_grad(dg, di, g, i, mf_x, mi_x)
                dmf += tl.dot(dmf_x, tl.trans(E), input_precision="ieee")
                dmi += tl.dot(dmi_x, tl.trans(E), input_precision="ieee")
            dg = dg - di  # i = 1 - g
            if REFINE:
                dg, da_q = refine_grad(dg, f, q)
                store_tile(dgi_t, offs_b, row_ok, R, 3 * H, offs_j, H, da_q)
                store_tile(dgh_t, offs_b, row_ok, R, 3 * H, offs_j, H, da_q)
            if CUM:  # the update gate's pre-activation gradient needs the whole row: second pass below
                dg = tl.where(valid, dg, 0.0)
                store_tile(dy_m, offs_b, row_ok, H, 0, offs_j, H, dg)
                dy_sum += tl.sum(dg, axis=1)
                dy_dot += tl.sum(dg * f, axis=1)
            else:
                da_z = plain_gate_grad(dg, s_z, SQ)
                store_tile(dgi_t, offs_b, row_ok, R, H, offs_j, H, da_z)
                store_tile(dgh_t, offs_b, row_ok, R, H, offs_j, H, da_z)
            da_r = plain_gate_grad(da_n * gh_n, s_r, SQ)
            store_tile(dgi_t, offs_b, row_ok, R, 0, offs_j, H, da_r)
            store_tile(dgi_t, offs_b, row_ok, R, 2 * H, offs_j, H, da_n)
            store_tile(dgh_t, offs_b, row_ok, R, 0, offs_j, H, da_r)
            store_tile(dgh_t, offs_b, row_ok, R, 2 * H, offs_j, H, da_n * r)
        if MASTER != 0:
            da_mf, da_mi = master_gates_grad(dmf, dmi, pf, pi, MASTER)
            store_tile(dgi_t, offs_b, row_ok, R, m0, offs_mm, HM, da_mf)
            store_tile(dgi_t, offs_b, row_ok, R, m0 + HM, offs_mm, HM, da_mi)
            store_tile(dgh_t, offs_b, row_ok, R, m0, offs_mm, HM, da_mf)
            store_tile(dgh_t, offs_b, row_ok, R, m0 + HM, offs_mm, HM, da_mi)
        if CUM:
            tl.debug_barrier()
            cumax_backprop(dy_m, gi_t, gh_t, H, R, H, lse, dy_sum, dy_dot, dgi_t, dgh_t, offs_b, row_ok, BB, BN)
        tl.debug_barrier()  # the products below read this step's gradients back
        for j0 in range(0, H, BN):  # dL/dh_{t-1} = dh * g + d_gh W_hh (+ grad_out[t-1])
            offs_j = j0 + tl.arange(0, BN)
            acc = load_tile(dd_m, offs_b, row_ok, H, 0, offs_j, H)
            if HAS_GO:
                acc += load_tile(go_m + prev, offs_b, row_ok & (t > 0), H, 0, offs_j, H)
            for k0 in range(0, H, BK):
                offs_k = k0 + tl.arange(0, BK)
                for blk in tl.static_range(NB):
                    acc = dot_cols(acc, dgh_t, R, offs_b, row_ok, w_m, blk * H, offs_k, H, offs_j, H, PREC)
            if MASTER != 0:
                for k0 in range(0, 2 * HM, BKM):
                    acc = dot_cols(acc, dgh_t, R, offs_b, row_ok, w_m, m0, k0 + tl.arange(0, BKM), 2 * HM, offs_j,
                                   H, PREC)
            store_tile(dh_m, offs_b, row_ok, H, 0, offs_j, H, acc)
        tl.debug_barrier()


class _TritonGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, g: Geometry, config: LaunchConfig | None):
        ctx.set_materialize_grads(False)
        save = any(ctx.needs_input_grad[:4])
        gi, h0, w_hh, b_hh = (t.contiguous() for t in (gi, h0, w_hh, b_hh))
        out = gi.new_empty((g.M, g.T, g.B, g.H))
        f32 = dict(device=gi.device, dtype=torch.float32)
        gh = torch.empty(gi.shape if save or g.cumax_blocks else (1,), **f32)
        lse = torch.empty((g.M, g.T, g.B) if save and g.cumax_blocks else (1,), **f32)
        launch(_gru_forward, g, config, gi, h0, w_hh, b_hh, out, gh, lse, g.B, g.H, g.HM,
               g.R, SAVE=save, **kernel_constants(g, gi.dtype))
        if save:
            ctx.save_for_backward(gi, h0, w_hh, out, gh, lse)
        ctx.geometry, ctx.config = g, config
        return out, out[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h):
        if grad_out is None and grad_h is None:
            return None, None, None, None, None, None
        gi, h0, w_hh, out, gh, lse = ctx.saved_tensors
        g = ctx.geometry
        f32 = dict(device=gi.device, dtype=torch.float32)
        d_gi = torch.empty_like(gi)
        d_gh = torch.empty(gi.shape, **f32)
        d_h0 = torch.empty((g.M, g.B, g.H), **f32)
        scratch = torch.empty((2, g.M, g.B, g.H), **f32)
        go = out if grad_out is None else grad_out.contiguous()
        gh_last = out if grad_h is None else grad_h.contiguous()
        launch(_gru_backward, g, ctx.config, gi, h0, w_hh, out, gh, lse, go, gh_last, d_gi,
               d_gh, d_h0, scratch[0], scratch[1], g.B, g.H, g.HM, g.R, HAS_GO=grad_out is not None,
               HAS_GH=grad_h is not None, NB=g.base, **kernel_constants(g, gi.dtype))
        need = ctx.needs_input_grad
        d_w, d_b = weight_grads(d_gh, h0, out) if need[2] or need[3] else (None, None)
        return (d_gi if need[0] else None, d_h0.to(h0.dtype) if need[1] else None,
                d_w.to(w_hh.dtype) if need[2] else None, d_b.to(w_hh.dtype) if need[3] else None, None, None)


def triton_gru_recurrence(gi: torch.Tensor, h0: torch.Tensor | None, w_hh: torch.Tensor, b_hh: torch.Tensor | None,
                          mode: str = "sigmoid", *, chunk: int | None = None, config: LaunchConfig | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU recurrence over precomputed input projections ``gi = x W_ih^T + b_ih`` (one or M models).

    Args:
        gi: (T, B, R) or (M, T, B, R), blocks in the order of ``Mechanism.block_rows``.
        h0: (B, H) / (M, B, H) initial state, or None for zeros.
        w_hh: (R, H) / (M, R, H) recurrent weights; b_hh: (R,) / (M, R) or None for zeros.
        mode: a kernel mode (``Mechanism.fused_mode``).
        chunk: master downsize factor C (master modes); None takes it from ``w_hh``'s rows.
        config: tile sizes (default: :func:`gates.kernels.triton_common.default_configs`).

    Returns:
        ``(out, h_T)``: (T, B, H) and (B, H), or (M, T, B, H) and (M, B, H).
    """
    single, gi, (h0,), w_hh, b_hh = as_batched(gi, (h0,), w_hh, b_hh)
    g = geometry("gru", gi, {"h0": h0}, w_hh, b_hh, mode, chunk)
    if g.T == 0:
        out, h = gi.new_empty((g.M, 0, g.B, g.H)), h0.clone()
    else:
        out, h = _TritonGRU.apply(gi, h0, w_hh, b_hh, g, config)
    return (out[0], h[0]) if single else (out, h)
