"""Device-generic fused recurrences: torch ops in a Python time loop, hand-written backward.

Used on CUDA (and any other device or dtype) and as the CPU fallback when the C++
extension cannot be built. It implements every mode of :mod:`gates.kernels.modes` on
both cores with the same algorithm and saved-tensor layout as the C++ kernel: one
recurrent GEMM per step forward; backward runs the loop in reverse with one GEMM per
step for ``dh_{t-1}`` and forms ``dW_hh`` with a single GEMM over all steps after the
loop, so both directions cost O(T).

The gate algebra shared by the cores (decay gate, tied or independent input gate,
refine gate, master gates) is :func:`effective_gates` / :func:`effective_gates_grad`,
working on the *base activations* that are saved per step (sigmoid values, softmax for
cumax blocks).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .modes import KernelMode

__all__ = ["GenericImpl", "block_slices", "effective_gates", "effective_gates_grad"]


def block_slices(spec: KernelMode, core: str, H: int, M: int) -> dict[str, slice]:
    """Column slice of every block in ``gi`` (and in the saved vector), plus ``tail`` (the last H)."""
    out, start = {}, 0
    for name in spec.blocks(core):
        n = M if name.startswith("master_") else H
        out[name] = slice(start, start + n)
        start += n
    out["tail"] = slice(start, start + H)
    return out


def _plain(s: Tensor, sq: bool) -> Tensor:
    return s * s if sq else s


def _plain_grad(s: Tensor, sq: bool) -> Tensor:
    """d P(a) / d a from the sigmoid value s (P = sigmoid, or sigmoid² when ``sq``)."""
    return 2 * s * s * (1 - s) if sq else s * (1 - s)


def _cand(t: Tensor, squared: bool) -> Tensor:
    return t * t.abs() if squared else t


def _cand_grad(t: Tensor, squared: bool) -> Tensor:
    """d cand(a) / d a from t = tanh(a)."""
    return 2 * t.abs() * (1 - t * t) if squared else 1 - t * t


def _cumax_grad(s: Tensor, dy: Tensor) -> Tensor:
    """Gradient w.r.t. a of y = cumsum(softmax(a)), from s = softmax(a) and dy = dL/dy."""
    u = dy.flip(-1).cumsum(-1).flip(-1)
    return s * (u - (s * u).sum(-1, keepdim=True))


def _expand(x: Tensor, C: int) -> Tensor:
    return x.repeat_interleave(C, dim=-1)


def _chunk_sum(x: Tensor, C: int) -> Tensor:
    return x.unflatten(-1, (-1, C)).sum(-1)


def _bases(spec: KernelMode, core: str, a: dict[str, Tensor]) -> dict[str, Tensor]:
    """Base activations of the gate blocks from their pre-activations (softmax or sigmoid)."""
    decay = "forget" if core == "lstm" else "update"
    soft = spec.activation == "cumax"
    b = {decay: torch.softmax(a[decay], -1) if soft else torch.sigmoid(a[decay])}
    if spec.refine:
        b["refine"] = torch.sigmoid(a["input" if core == "lstm" else "refine"])
    elif core == "lstm":
        b["input"] = torch.softmax(a["input"], -1) if soft else torch.sigmoid(a["input"])
    if spec.master is not None:
        act = (lambda x: torch.softmax(x, -1)) if spec.master == "cumax" else torch.sigmoid
        b["master_forget"], b["master_input"] = act(a["master_forget"]), act(a["master_input"])
    return b


def effective_gates(spec: KernelMode, core: str, base: dict[str, Tensor], C: int) -> dict[str, Tensor]:
    """Effective decay gate ``ge`` and input gate ``ie`` from the base activations.

    Also returns the main gates ``g``, ``i`` and, with master gates, the expanded master
    gates ``mf``, ``mi`` and ``w`` = mf·mi (all (B, H)). ``base`` holds the decay block's
    base (``update``/``forget``), ``refine`` when the mode has one, the LSTM ``input``
    base otherwise, and the master bases.
    """
    sq = spec.squared_gates
    decay = base["forget" if core == "lstm" else "update"]
    f = decay.cumsum(-1) if spec.activation == "cumax" else _plain(decay, sq)
    if spec.refine:
        p = base["refine"]
        g = 2 * p * f + (1 - 2 * p) * f * f
        i = 1 - g
    elif core == "gru":
        g, i = f, 1 - f
    else:
        s_i = base["input"]
        g, i = f, (1 - s_i.cumsum(-1) if spec.activation == "cumax" else _plain(s_i, sq))
    out = {"f": f, "g": g, "i": i, "ge": g, "ie": i}
    if spec.master is not None:
        s_mf, s_mi = base["master_forget"], base["master_input"]
        if spec.master == "cumax":
            mf, mi = s_mf.cumsum(-1), 1 - s_mi.cumsum(-1)
        else:
            mf, mi = s_mf, s_mi
        mf, mi = _expand(mf, C), _expand(mi, C)
        w = mf * mi
        out.update(mf=mf, mi=mi, w=w, ge=g * w + (mf - w), ie=i * w + (mi - w))
    return out


def effective_gates_grad(spec: KernelMode, core: str, base: dict[str, Tensor], e: dict[str, Tensor],
                         d_ge: Tensor, d_ie: Tensor, C: int) -> dict[str, Tensor]:
    """Gradients w.r.t. the gate blocks' pre-activations from dL/d ge and dL/d ie.

    ``e`` is :func:`effective_gates`'s result; returns ``{block: dL/da_block}`` for the
    decay block, the refine/LSTM input block and the master blocks.
    """
    sq = spec.squared_gates
    decay_name = "forget" if core == "lstm" else "update"
    grads: dict[str, Tensor] = {}
    if spec.master is not None:
        w, mf, mi = e["w"], e["mf"], e["mi"]
        dw = d_ge * (e["g"] - 1) + d_ie * (e["i"] - 1)
        d_mf, d_mi = _chunk_sum(d_ge + dw * mi, C), _chunk_sum(d_ie + dw * mf, C)
        s_mf, s_mi = base["master_forget"], base["master_input"]
        if spec.master == "cumax":
            grads["master_forget"] = _cumax_grad(s_mf, d_mf)
            grads["master_input"] = _cumax_grad(s_mi, -d_mi)
        else:
            grads["master_forget"] = d_mf * s_mf * (1 - s_mf)
            grads["master_input"] = d_mi * s_mi * (1 - s_mi)
        dg, di = d_ge * w, d_ie * w
    else:
        dg, di = d_ge, d_ie
    if spec.refine or core == "gru":
        dg = dg - di  # i = 1 - g
    f = e["f"]
    if spec.refine:
        p = base["refine"]
        grads["input" if core == "lstm" else "refine"] = dg * 2 * f * (1 - f) * p * (1 - p)
        df = dg * (2 * p + 2 * (1 - 2 * p) * f)
    else:
        df = dg
        if core == "lstm":
            s_i = base["input"]
            grads["input"] = _cumax_grad(s_i, -di) if spec.activation == "cumax" else di * _plain_grad(s_i, sq)
    s_f = base[decay_name]
    grads[decay_name] = _cumax_grad(s_f, df) if spec.activation == "cumax" else df * _plain_grad(s_f, sq)
    return grads


def _gate_blocks(spec: KernelMode, core: str) -> tuple[str, ...]:
    """Blocks whose base activation :func:`_bases` computes (all but reset/candidate/cell/output)."""
    return tuple(b for b in spec.blocks(core) if b not in ("reset", "candidate", "cell", "output"))


def _base_key(spec: KernelMode, core: str, block: str) -> str:
    """Key of ``block``'s base in :func:`_bases`: the LSTM ``input`` block holds the refine gate in refine modes."""
    return "refine" if (core == "lstm" and spec.refine and block == "input") else block


def _saved_bases(spec: KernelMode, core: str, sv: Tensor, sl: dict[str, slice]) -> dict[str, Tensor]:
    return {_base_key(spec, core, n): sv[:, sl[n]] for n in _gate_blocks(spec, core)}


def _store_bases(spec: KernelMode, core: str, st: Tensor, sl: dict[str, slice], base: dict[str, Tensor]) -> None:
    for name in _gate_blocks(spec, core):
        st[:, sl[name]].copy_(base[_base_key(spec, core, name)])


def _store_grads(spec: KernelMode, core: str, dst: Tensor, sl: dict[str, slice], grads: dict[str, Tensor]) -> None:
    for name in _gate_blocks(spec, core):
        dst[:, sl[name]] = grads[name]


def _weight_grads(d_gh: Tensor, h0: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """``dW_hh = sum_t d_gh_t^T h_{t-1}`` (one GEMM after the loop) and ``db_hh``."""
    T, B, R = d_gh.shape
    H = out.shape[2]
    d_w = d_gh[0].t().mm(h0)
    if T > 1:
        d_w.addmm_(d_gh[1:].reshape(-1, R).t(), out[:-1].reshape(-1, H))
    return d_w, d_gh.reshape(-1, R).sum(0)


class GenericImpl:
    """Forward/backward loops written with torch ops (any device, any float dtype).

    ``M`` is the number of master units (0 without master gates); saved tensors are
    (T, B, rows + H) as described in :mod:`gates.kernels.modes`.
    """

    name = "generic"

    # ------------------------------------------------------------------ GRU
    @staticmethod
    def gru_forward(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, spec: KernelMode, M: int, save: bool):
        T, B, R = gi.shape
        H = h0.shape[1]
        C = H // M if M else 1
        sq = spec.squared_gates
        sqc = spec.squared_candidate
        sl = block_slices(spec, "gru", H, M)
        out = gi.new_empty((T, B, H))
        saved = gi.new_empty((T, B, R + H)) if save else gi.new_empty((0,))
        gh = gi.new_empty((B, R))
        w_t, h = w_hh.t(), h0
        for t in range(T):
            torch.addmm(b_hh, h, w_t, out=gh)
            a = gi[t] + gh
            s_r = torch.sigmoid(a[:, sl["reset"]])
            gh_n = gh[:, sl["candidate"]]
            tn = torch.tanh(torch.addcmul(gi[t][:, sl["candidate"]], _plain(s_r, sq), gh_n))
            base = _bases(spec, "gru", {k: a[:, s] for k, s in sl.items()})
            e = effective_gates(spec, "gru", base, C)
            torch.addcmul(e["ie"] * _cand(tn, sqc), e["ge"], h, out=out[t])
            if save:
                st = saved[t]
                st[:, sl["reset"]].copy_(s_r)
                st[:, sl["candidate"]].copy_(tn)
                st[:, sl["tail"]].copy_(gh_n)
                _store_bases(spec, "gru", st, sl, base)
            h = out[t]
        return out, saved

    @staticmethod
    def gru_backward(grad_out, grad_hT, h0, w_hh, out, saved, spec: KernelMode, M: int):
        T, B, H = out.shape
        R = w_hh.shape[0]
        C = H // M if M else 1
        sq = spec.squared_gates
        sqc = spec.squared_candidate
        sl = block_slices(spec, "gru", H, M)
        d_gi = out.new_empty((T, B, R))
        d_gh = out.new_empty((T, B, R))
        dh = out.new_zeros((B, H))
        if grad_out is not None:
            dh += grad_out[T - 1]
        if grad_hT is not None:
            dh += grad_hT
        for t in range(T - 1, -1, -1):
            hp = out[t - 1] if t > 0 else h0
            sv = saved[t]
            s_r, tn, gh_n = sv[:, sl["reset"]], sv[:, sl["candidate"]], sv[:, sl["tail"]]
            base = _saved_bases(spec, "gru", sv, sl)
            e = effective_gates(spec, "gru", base, C)
            grads = effective_gates_grad(spec, "gru", base, e, dh * hp, dh * _cand(tn, sqc), C)
            dan = dh * e["ie"] * _cand_grad(tn, sqc)
            dgi_t = d_gi[t]
            dgi_t[:, sl["reset"]] = dan * gh_n * _plain_grad(s_r, sq)
            dgi_t[:, sl["candidate"]] = dan
            _store_grads(spec, "gru", dgi_t, sl, grads)
            d_gh[t].copy_(dgi_t)
            torch.mul(dan, _plain(s_r, sq), out=d_gh[t][:, sl["candidate"]])
            nxt = dh * e["ge"]
            if grad_out is not None and t > 0:
                nxt += grad_out[t - 1]
            dh = nxt.addmm_(d_gh[t], w_hh)
        d_w, d_b = _weight_grads(d_gh, h0, out)
        return d_gi, dh, d_w, d_b

    # ------------------------------------------------------------------ LSTM
    @staticmethod
    def lstm_forward(gi: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, b_hh: Tensor, spec: KernelMode, M: int,
                     save: bool):
        T, B, R = gi.shape
        H = h0.shape[1]
        C = H // M if M else 1
        sq = spec.squared_gates
        sqc = spec.squared_candidate
        sl = block_slices(spec, "lstm", H, M)
        out = gi.new_empty((T, B, H))
        saved = gi.new_empty((T, B, R + H)) if save else gi.new_empty((0,))
        gh = gi.new_empty((B, R))
        w_t, h, c = w_hh.t(), h0, c0
        for t in range(T):
            torch.addmm(b_hh, h, w_t, out=gh)
            a = gi[t] + gh
            tg = torch.tanh(a[:, sl["cell"]])
            s_o = torch.sigmoid(a[:, sl["output"]])
            base = _bases(spec, "lstm", {k: a[:, s] for k, s in sl.items()})
            e = effective_gates(spec, "lstm", base, C)
            c = torch.addcmul(e["ie"] * _cand(tg, sqc), e["ge"], c)
            torch.mul(_plain(s_o, sq), torch.tanh(c), out=out[t])
            if save:
                st = saved[t]
                st[:, sl["cell"]].copy_(tg)
                st[:, sl["output"]].copy_(s_o)
                st[:, sl["tail"]].copy_(c)
                _store_bases(spec, "lstm", st, sl, base)
            h = out[t]
        return out, c.clone(), saved

    @staticmethod
    def lstm_backward(grad_out, grad_hT, grad_cT, h0, c0, w_hh, out, saved, spec: KernelMode, M: int):
        T, B, H = out.shape
        R = w_hh.shape[0]
        C = H // M if M else 1
        sq = spec.squared_gates
        sqc = spec.squared_candidate
        sl = block_slices(spec, "lstm", H, M)
        d_gi = out.new_empty((T, B, R))
        dh = out.new_zeros((B, H))
        dc = out.new_zeros((B, H)) if grad_cT is None else grad_cT.clone()
        if grad_out is not None:
            dh += grad_out[T - 1]
        if grad_hT is not None:
            dh += grad_hT
        for t in range(T - 1, -1, -1):
            sv = saved[t]
            cp = saved[t - 1][:, sl["tail"]] if t > 0 else c0
            tg, s_o, c = sv[:, sl["cell"]], sv[:, sl["output"]], sv[:, sl["tail"]]
            tc = torch.tanh(c)
            o = _plain(s_o, sq)
            dct = dc + dh * o * (1 - tc * tc)
            base = _saved_bases(spec, "lstm", sv, sl)
            e = effective_gates(spec, "lstm", base, C)
            cand = _cand(tg, sqc)
            grads = effective_gates_grad(spec, "lstm", base, e, dct * cp, dct * cand, C)
            dgi_t = d_gi[t]
            dgi_t[:, sl["cell"]] = dct * e["ie"] * _cand_grad(tg, sqc)
            dgi_t[:, sl["output"]] = dh * tc * _plain_grad(s_o, sq)
            _store_grads(spec, "lstm", dgi_t, sl, grads)
            dc = dct * e["ge"]
            dh = dgi_t.mm(w_hh)
            if grad_out is not None and t > 0:
                dh += grad_out[t - 1]
        d_w, d_b = _weight_grads(d_gi, h0, out)
        return d_gi, dh, dc, d_w, d_b
