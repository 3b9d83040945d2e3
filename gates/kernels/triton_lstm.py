"""Triton fused LSTM recurrence (CUDA, or the CPU under ``TRITON_INTERPRET=1``), every kernel mode.

``triton_lstm_recurrence(gi, h0, c0, w_hh, b_hh, mode)`` runs, per step::

    a   = gi + h W_hh^T + b_hh               blocks input, forget, cell, output[, master_forget, master_input]
    f   = decay(a_forget)                    sigmoid, sigmoid² (sst) or cumax over units
    refine modes: g = refine(f, sigmoid(a_input)), i = 1 - g   (the input block holds the refine gate)
    otherwise:    g = f, i = gate(a_input)   (1 - cumax(a_input) for the cumax modes)
    g, i = master mix with f̃, ĩ (H/C units each, repeated C times) for the master modes
    c'  = g * c + i * cand(a_cell);   h' = gate(a_output) * tanh(c')

with gate = sigmoid (sigmoid² for sst) and cand = tanh (tanh·|tanh| for sst_candidate): the math of
:func:`gates.functional.lstm_sequence`. Shapes as :func:`gates.kernels.triton_gru.triton_gru_recurrence`
plus ``c0`` like ``h0``; returns ``(out, h_T, c_T)``. Differentiable in ``gi``, ``h0``, ``c0``,
``w_hh``, ``b_hh`` (first order).
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
    tanh,
    weight_grads,
)

__all__ = ["triton_lstm_recurrence"]


@triton.jit(do_not_specialize=RUNTIME_INTS)
def _lstm_forward(gi, h0, c0, w, b, out, gh_save, c_buf, lse_save, B, H, HM, R, T, NS,
                  ACT: tl.constexpr, REFINE: tl.constexpr, MASTER: tl.constexpr, SAVE: tl.constexpr,
                  BB: tl.constexpr, HMP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  BKM: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(1).to(tl.int64)
    offs_b = tl.program_id(0) * BB + tl.arange(0, BB)
    row_ok = offs_b < B
    SQ: tl.constexpr = (ACT == 1) or (ACT == 5)
    SQC: tl.constexpr = ACT == 5
    CUM: tl.constexpr = ACT == 2  # cumax forget gate
    CUM_I: tl.constexpr = CUM and not REFINE  # and input gate 1 - cumax
    step = B * R
    BH = B * H
    gi_m = gi + pid_m * T * step
    gh_m = gh_save + pid_m * T * step  # the saved products (always written for cumax: its second pass reads them)
    out_m = out + pid_m * T * BH
    cb_m = c_buf + pid_m * NS * BH  # c_t in slot t % NS (NS = T when saving, else 2)
    c0_m = c0 + pid_m * BH
    w_m = w + pid_m * R * H
    b_m = b + pid_m * R
    h_src = h0 + pid_m * BH  # the previous state: h0, then out[t - 1]
    if MASTER != 0:
        offs_mm = tl.arange(0, HMP)
        m0 = R - 2 * HM
    for t in range(T):
        gi_t = gi_m + t * step
        gh_t = gh_m + t * step
        c_prev_src = cb_m + ((t + NS - 1) % NS) * BH
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
        if CUM:  # first pass of the cumax over the units: products and log-sum-exp of the cumax blocks
            lse_f = cumax_lse(h_src, w_m, b_m, gi_t, gh_t, H, R, H, offs_b, row_ok, BB, BN, BK, PREC)
            carry_f = tl.zeros((BB,), dtype=tl.float32)
            if SAVE:
                tl.store(lse_save + ((pid_m * T + t) * 2) * B + offs_b, lse_f, mask=row_ok)
            if CUM_I:
                lse_i = cumax_lse(h_src, w_m, b_m, gi_t, gh_t, 0, R, H, offs_b, row_ok, BB, BN, BK, PREC)
                carry_i = tl.zeros((BB,), dtype=tl.float32)
                if SAVE:
                    tl.store(lse_save + ((pid_m * T + t) * 2 + 1) * B + offs_b, lse_i, mask=row_ok)
            tl.debug_barrier()
        for j0 in range(0, H, BN):  # chunks of hidden units
            offs_j = j0 + tl.arange(0, BN)
            valid = (offs_j < H)[None, :]
            acc_g = tl.zeros((BB, BN), dtype=tl.float32)
            acc_o = tl.zeros((BB, BN), dtype=tl.float32)
            if not CUM:
                acc_f = tl.zeros((BB, BN), dtype=tl.float32)
            if not CUM_I:
                acc_i = tl.zeros((BB, BN), dtype=tl.float32)
            for k0 in range(0, H, BK):
                offs_k = k0 + tl.arange(0, BK)
                hk = load_state(h_src, offs_b, row_ok, offs_k, H)
                acc_g = dot_rows(acc_g, hk, w_m, 2 * H, offs_j, H, offs_k, H, PREC)
                acc_o = dot_rows(acc_o, hk, w_m, 3 * H, offs_j, H, offs_k, H, PREC)
                if not CUM:
                    acc_f = dot_rows(acc_f, hk, w_m, H, offs_j, H, offs_k, H, PREC)
                if not CUM_I:
                    acc_i = dot_rows(acc_i, hk, w_m, 0, offs_j, H, offs_k, H, PREC)
            gh_g = acc_g + row_bias(b_m, 2 * H, offs_j, H)
            gh_o = acc_o + row_bias(b_m, 3 * H, offs_j, H)
            if SAVE:
                store_tile(gh_t, offs_b, row_ok, R, 2 * H, offs_j, H, gh_g)
                store_tile(gh_t, offs_b, row_ok, R, 3 * H, offs_j, H, gh_o)
            if CUM:
                a_f = load_tile(gi_t, offs_b, row_ok, R, H, offs_j, H) + load_tile(gh_t, offs_b, row_ok, R, H, offs_j, H)
                g, p_f, carry_f = cumax_chunk(a_f, lse_f, carry_f, valid)
            else:
                gh_f = acc_f + row_bias(b_m, H, offs_j, H)
                g, s_f = plain_gate(load_tile(gi_t, offs_b, row_ok, R, H, offs_j, H) + gh_f, SQ)
                if SAVE:
                    store_tile(gh_t, offs_b, row_ok, R, H, offs_j, H, gh_f)
            if CUM_I:
                a_i = load_tile(gi_t, offs_b, row_ok, R, 0, offs_j, H) + load_tile(gh_t, offs_b, row_ok, R, 0, offs_j, H)
                ci, p_i, carry_i = cumax_chunk(a_i, lse_i, carry_i, valid)
                i = 1.0 - ci
            else:
                gh_i = acc_i + row_bias(b_m, 0, offs_j, H)
                a_i = load_tile(gi_t, offs_b, row_ok, R, 0, offs_j, H) + gh_i
                if SAVE:
                    store_tile(gh_t, offs_b, row_ok, R, 0, offs_j, H, gh_i)
                if REFINE:  # the input block holds the refine gate; input tied to 1 - g
                    g = refine_gate(g, sigmoid(a_i))
                    i = 1.0 - g
                else:
                    i, s_i = plain_gate(a_i, SQ)
            if MASTER != 0:
                E = expansion(offs_mm, offs_j, H // HM, HM, H)
                g, i = master_mix(g, i, tl.dot(mf, E, input_precision="ieee"), tl.dot(mi, E, input_precision="ieee"))
            cand, t_c = candidate(load_tile(gi_t, offs_b, row_ok, R, 2 * H, offs_j, H) + gh_g, SQC)
            c_prev = load_tile(c_prev_src, offs_b, row_ok & (t > 0), H, 0, offs_j, H) + \
                load_tile(c0_m, offs_b, row_ok & (t == 0), H, 0, offs_j, H)
            c = g * c_prev + i * cand
            o, s_o = plain_gate(load_tile(gi_t, offs_b, row_ok, R, 3 * H, offs_j, H) + gh_o, SQ)
            store_tile(cb_m + (t % NS) * BH, offs_b, row_ok, H, 0, offs_j, H, c)
            store_tile(out_m + t * BH, offs_b, row_ok, H, 0, offs_j, H, o * tanh(c))
        tl.debug_barrier()  # the next step reads this state back
        h_src = out_m + t * BH


@triton.jit(do_not_specialize=RUNTIME_INTS)
def _lstm_backward(gi, c0, w, c_buf, gh_save, lse_save, grad_out, grad_h, grad_c, d_a, dh_buf, dc_buf, dy_buf,
                   B, H, HM, R, T, ACT: tl.constexpr, REFINE: tl.constexpr, MASTER: tl.constexpr,
                   HAS_GO: tl.constexpr, HAS_GH: tl.constexpr, HAS_GC: tl.constexpr,
                   BB: tl.constexpr, HMP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   BKM: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(1).to(tl.int64)
    offs_b = tl.program_id(0) * BB + tl.arange(0, BB)
    row_ok = offs_b < B
    SQ: tl.constexpr = (ACT == 1) or (ACT == 5)
    SQC: tl.constexpr = ACT == 5
    CUM: tl.constexpr = ACT == 2
    CUM_I: tl.constexpr = CUM and not REFINE
    step = B * R
    BH = B * H
    gi_m = gi + pid_m * T * step
    gh_m = gh_save + pid_m * T * step
    da_m = d_a + pid_m * T * step
    cs_m = c_buf + pid_m * T * BH
    go_m = grad_out + pid_m * T * BH
    w_m = w + pid_m * R * H
    c0_m = c0 + pid_m * BH
    dh_m = dh_buf + pid_m * BH  # dL/dh_t, finally dL/dh0
    dc_m = dc_buf + pid_m * 2 * BH  # dL/dc_t alternates between two slots
    dy_m = dy_buf + pid_m * 2 * BH  # cumax modes: dL/d(forget gate), dL/d(1 - input gate) of the step
    for j0 in range(0, H, BN):
        offs_j = j0 + tl.arange(0, BN)
        dh = tl.zeros((BB, BN), dtype=tl.float32)
        dc = tl.zeros((BB, BN), dtype=tl.float32)
        if HAS_GH:
            dh += load_tile(grad_h + pid_m * BH, offs_b, row_ok, H, 0, offs_j, H)
        if HAS_GO:
            dh += load_tile(go_m + (T - 1) * BH, offs_b, row_ok, H, 0, offs_j, H)
        if HAS_GC:
            dc += load_tile(grad_c + pid_m * BH, offs_b, row_ok, H, 0, offs_j, H)
        store_tile(dh_m, offs_b, row_ok, H, 0, offs_j, H, dh)
        store_tile(dc_m, offs_b, row_ok, H, 0, offs_j, H, dc)
    if MASTER != 0:
        offs_mm = tl.arange(0, HMP)
        m0 = R - 2 * HM
    tl.debug_barrier()
    for tt in range(T):
        t = T - 1 - tt
        gi_t = gi_m + t * step
        gh_t = gh_m + t * step
        da_t = da_m + t * step
        prev = (t - 1 + (t == 0)) * BH  # c_{t-1} is c_buf[t - 1] (c0 at t = 0, masked below)
        dc_in = dc_m + (tt % 2) * BH
        dc_out = dc_m + ((tt + 1) % 2) * BH
        if MASTER != 0:
            mf, mi, pf, pi = master_gates(
                load_tile(gi_t, offs_b, row_ok, R, m0, offs_mm, HM) + load_tile(gh_t, offs_b, row_ok, R, m0, offs_mm, HM),
                load_tile(gi_t, offs_b, row_ok, R, m0 + HM, offs_mm, HM) +
                load_tile(gh_t, offs_b, row_ok, R, m0 + HM, offs_mm, HM), (offs_mm < HM)[None, :], MASTER)
            dmf = tl.zeros((BB, HMP), dtype=tl.float32)
            dmi = tl.zeros((BB, HMP), dtype=tl.float32)
        if CUM:
            lse_f = tl.load(lse_save + ((pid_m * T + t) * 2) * B + offs_b, mask=row_ok, other=0.0)
            carry_f = tl.zeros((BB,), dtype=tl.float32)
            sum_f = tl.zeros((BB,), dtype=tl.float32)
            dot_f = tl.zeros((BB,), dtype=tl.float32)
            if CUM_I:
                lse_i = tl.load(lse_save + ((pid_m * T + t) * 2 + 1) * B + offs_b, mask=row_ok, other=0.0)
                carry_i = tl.zeros((BB,), dtype=tl.float32)
                sum_i = tl.zeros((BB,), dtype=tl.float32)
                dot_i = tl.zeros((BB,), dtype=tl.float32)
        for j0 in range(0, H, BN):
            offs_j = j0 + tl.arange(0, BN)
            valid = (offs_j < H)[None, :]
            dh = load_tile(dh_m, offs_b, row_ok, H, 0, offs_j, H)
            dc = load_tile(dc_in, offs_b, row_ok, H, 0, offs_j, H)
            c_prev = load_tile(cs_m + prev, offs_b, row_ok & (t > 0), H, 0, offs_j, H) + \
                load_tile(c0_m, offs_b, row_ok & (t == 0), H, 0, offs_j, H)
            c = load_tile(cs_m + t * BH, offs_b, row_ok, H, 0, offs_j, H)
            a_f = load_tile(gi_t, offs_b, row_ok, R, H, offs_j, H) + load_tile(gh_t, offs_b, row_ok, R, H, offs_j, H)
            a_i = load_tile(gi_t, offs_b, row_ok, R, 0, offs_j, H) + load_tile(gh_t, offs_b, row_ok, R, 0, offs_j, H)
            if CUM:
                f, p_f, carry_f = cumax_chunk(a_f, lse_f, carry_f, valid)
            else:
                f, s_f = plain_gate(a_f, SQ)
            g = f
            if CUM_I:
                ci, p_i, carry_i = cumax_chunk(a_i, lse_i, carry_i, valid)
                i = 1.0 - ci
            elif REFINE:
                q = sigmoid(a_i)
                g = refine_gate(f, q)
                i = 1.0 - g
            else:
                i, s_i = plain_gate(a_i, SQ)
            g_eff = g
            i_eff = i
            if MASTER != 0:
                E = expansion(offs_mm, offs_j, H // HM, HM, H)
                mf_x = tl.dot(mf, E, input_precision="ieee")
                mi_x = tl.dot(mi, E, input_precision="ieee")
                g_eff, i_eff = master_mix(g, i, mf_x, mi_x)
            cand, t_c = candidate(load_tile(gi_t, offs_b, row_ok, R, 2 * H, offs_j, H) +
                                  load_tile(gh_t, offs_b, row_ok, R, 2 * H, offs_j, H), SQC)
            o, s_o = plain_gate(load_tile(gi_t, offs_b, row_ok, R, 3 * H, offs_j, H) +
                                load_tile(gh_t, offs_b, row_ok, R, 3 * H, offs_j, H), SQ)
            # h' = o tanh(c'),  c' = g c + i cand
            tc = tanh(c)
            da_o = plain_gate_grad(dh * tc, s_o, SQ)
            dc = dc + dh * o * (1.0 - tc * tc)
            store_tile(dc_out, offs_b, row_ok, H, 0, offs_j, H, dc * g_eff)
            dg = dc * c_prev
            di = dc * cand
            da_c = candidate_grad(dc * i_eff, t_c, SQC)
            if MASTER != 0:
                dg, di, dmf_x, dmi_x = master_mix_grad(dg, di, g, i, mf_x, mi_x)
                dmf += tl.dot(dmf_x, tl.trans(E), input_precision="ieee")
                dmi += tl.dot(dmi_x, tl.trans(E), input_precision="ieee")
            if REFINE:
                dg, da_i = refine_grad(dg - di, f, q)  # i = 1 - g
                store_tile(da_t, offs_b, row_ok, R, 0, offs_j, H, da_i)
            elif CUM_I:  # i = 1 - cumax(a_i): second pass below
                dy = tl.where(valid, -di, 0.0)
                store_tile(dy_m + BH, offs_b, row_ok, H, 0, offs_j, H, dy)
                sum_i += tl.sum(dy, axis=1)
                dot_i += tl.sum(dy * ci, axis=1)
            else:
                store_tile(da_t, offs_b, row_ok, R, 0, offs_j, H, plain_gate_grad(di, s_i, SQ))
            if CUM:  # forget gate: second pass below
                dg = tl.where(valid, dg, 0.0)
                store_tile(dy_m, offs_b, row_ok, H, 0, offs_j, H, dg)
                sum_f += tl.sum(dg, axis=1)
                dot_f += tl.sum(dg * f, axis=1)
            else:
                store_tile(da_t, offs_b, row_ok, R, H, offs_j, H, plain_gate_grad(dg, s_f, SQ))
            store_tile(da_t, offs_b, row_ok, R, 2 * H, offs_j, H, da_c)
            store_tile(da_t, offs_b, row_ok, R, 3 * H, offs_j, H, da_o)
        if MASTER != 0:
            da_mf, da_mi = master_gates_grad(dmf, dmi, pf, pi, MASTER)
            store_tile(da_t, offs_b, row_ok, R, m0, offs_mm, HM, da_mf)
            store_tile(da_t, offs_b, row_ok, R, m0 + HM, offs_mm, HM, da_mi)
        if CUM:
            tl.debug_barrier()
            cumax_backprop(dy_m, gi_t, gh_t, H, R, H, lse_f, sum_f, dot_f, da_t, da_t, offs_b, row_ok, BB, BN)
            if CUM_I:
                cumax_backprop(dy_m + BH, gi_t, gh_t, 0, R, H, lse_i, sum_i, dot_i, da_t, da_t, offs_b, row_ok,
                               BB, BN)
        tl.debug_barrier()  # the products below read this step's gradients back
        for j0 in range(0, H, BN):  # dL/dh_{t-1} = d_a W_hh (+ grad_out[t-1])
            offs_j = j0 + tl.arange(0, BN)
            acc = tl.zeros((BB, BN), dtype=tl.float32)
            if HAS_GO:
                acc += load_tile(go_m + prev, offs_b, row_ok & (t > 0), H, 0, offs_j, H)
            for k0 in range(0, H, BK):
                offs_k = k0 + tl.arange(0, BK)
                for blk in tl.static_range(4):
                    acc = dot_cols(acc, da_t, R, offs_b, row_ok, w_m, blk * H, offs_k, H, offs_j, H, PREC)
            if MASTER != 0:
                for k0 in range(0, 2 * HM, BKM):
                    acc = dot_cols(acc, da_t, R, offs_b, row_ok, w_m, m0, k0 + tl.arange(0, BKM), 2 * HM, offs_j,
                                   H, PREC)
            store_tile(dh_m, offs_b, row_ok, H, 0, offs_j, H, acc)
        tl.debug_barrier()


class _TritonLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, h0, c0, w_hh, b_hh, g: Geometry, config: LaunchConfig | None):
        ctx.set_materialize_grads(False)
        save = any(ctx.needs_input_grad[:5])
        gi, h0, c0, w_hh, b_hh = (t.contiguous() for t in (gi, h0, c0, w_hh, b_hh))
        out = gi.new_empty((g.M, g.T, g.B, g.H))
        f32 = dict(device=gi.device, dtype=torch.float32)
        gh = torch.empty(gi.shape if save or g.cumax_blocks else (1,), **f32)
        slots = g.T if save else 2
        c_buf = torch.empty((g.M, slots, g.B, g.H), **f32)
        lse = torch.empty((g.M, g.T, 2, g.B) if save and g.cumax_blocks else (1,), **f32)
        launch(_lstm_forward, g, config, gi, h0, c0, w_hh, b_hh, out, gh, c_buf, lse,
               g.B, g.H, g.HM, g.R, NS=slots, SAVE=save, **kernel_constants(g, gi.dtype))
        if save:
            ctx.save_for_backward(gi, h0, c0, w_hh, out, c_buf, gh, lse)
        ctx.geometry, ctx.config = g, config
        return out, out[:, -1].clone(), c_buf[:, (g.T - 1) % slots].to(gi.dtype, copy=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h, grad_c):
        if grad_out is None and grad_h is None and grad_c is None:
            return (None,) * 7
        gi, h0, c0, w_hh, out, c_buf, gh, lse = ctx.saved_tensors
        g = ctx.geometry
        f32 = dict(device=gi.device, dtype=torch.float32)
        d_a = torch.empty(gi.shape, **f32)
        d_h0 = torch.empty((g.M, g.B, g.H), **f32)
        dc_buf = torch.empty((g.M, 2, g.B, g.H), **f32)
        dy_buf = torch.empty((g.M, 2, g.B, g.H) if g.cumax_blocks else (1,), **f32)
        go, gh_last, gc_last = (out if x is None else x.contiguous() for x in (grad_out, grad_h, grad_c))
        launch(_lstm_backward, g, ctx.config, gi, c0, w_hh, c_buf, gh, lse, go, gh_last,
               gc_last, d_a, d_h0, dc_buf, dy_buf, g.B, g.H, g.HM, g.R, HAS_GO=grad_out is not None,
               HAS_GH=grad_h is not None, HAS_GC=grad_c is not None, **kernel_constants(g, gi.dtype))
        need = ctx.needs_input_grad
        d_w, d_b = weight_grads(d_a, h0, out) if need[3] or need[4] else (None, None)
        return (d_a.to(gi.dtype) if need[0] else None, d_h0.to(h0.dtype) if need[1] else None,
                dc_buf[:, g.T % 2].to(c0.dtype) if need[2] else None, d_w.to(w_hh.dtype) if need[3] else None,
                d_b.to(w_hh.dtype) if need[4] else None, None, None)


def triton_lstm_recurrence(gi: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, w_hh: torch.Tensor,
                           b_hh: torch.Tensor | None, mode: str = "sigmoid", *, chunk: int | None = None,
                           config: LaunchConfig | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LSTM recurrence over precomputed input projections ``gi = x W_ih^T + b_ih`` (one or M models).

    Args:
        gi: (T, B, R) or (M, T, B, R), blocks in the order of ``Mechanism.block_rows``.
        h0, c0: (B, H) / (M, B, H) initial states, or None for zeros.
        w_hh: (R, H) / (M, R, H); b_hh: (R,) / (M, R) or None for zeros.
        mode: a kernel mode (``Mechanism.fused_mode``); chunk, config: as ``triton_gru_recurrence``.

    Returns:
        ``(out, h_T, c_T)``: (T, B, H), (B, H), (B, H), or with a leading M.
    """
    single, gi, (h0, c0), w_hh, b_hh = as_batched(gi, (h0, c0), w_hh, b_hh)
    g = geometry("lstm", gi, {"h0": h0, "c0": c0}, w_hh, b_hh, mode, chunk)
    if g.T == 0:
        out, h, c = gi.new_empty((g.M, 0, g.B, g.H)), h0.clone(), c0.clone()
    else:
        out, h, c = _TritonLSTM.apply(gi, h0, c0, w_hh, b_hh, g, config)
    return (out[0], h[0], c[0]) if single else (out, h, c)
