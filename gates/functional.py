"""Reference recurrences for every mechanism, written plainly with autograd.

These pure functions are the ground truth the fused kernels are tested against; a layer
uses them for mechanisms without a fused mode and while gate statistics are recorded.

Conventions (time-major): ``x`` is (T, B, I); states are (B, H); weights use torch's
stacked layout, rows split into named blocks by ``rows`` (``Mechanism.block_rows``):
``w_ih`` (G, I), ``w_hh`` (G, H), biases (G,) with G = sum(rows.values()).

GRU core (torch.nn.GRU form: the reset gate multiplies ``W_hn h + b_hn``)::

    a_k = gi_k + gh_k                     for every block k except the candidate
    r   = gate(a_reset)                   sigmoid (sigmoid² for SST and SSTN)
    n   = cand(gi_candidate + r * gh_candidate)   cand = tanh (tanh·|tanh| for SSTN)
    g, i = effective decay and input gate (see below); GRU: i = 1 - g unless master gates
    h'  = g * h + i * n

LSTM core::

    f, i = effective forget and input gate;  c' = f * c + i * cand(a_cell);  h' = gate(a_output) * tanh(c')

Effective gates: main f = act(a_decay) (sigmoid, sigmoid² or cumax over units);
refine: g = refine(f, sigmoid(a_refine)), i = 1 - g; master gates (H/C units, each
repeated C times): ω = f̃ ĩ, g = f ω + (f̃ - ω), i = i_main ω + (ĩ - ω).

The sequence functions compute ``x W_ih^T + b_ih`` for all steps in one GEMM, iterate
over its ``unbind(0)`` and stack the outputs once, so backward is O(T).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .mechanisms import Mechanism, cumax, refine

#: Called once per step with the step's gate activations (see :func:`gru_step`).
StepCallback = Callable[[dict[str, Tensor]], None]


def split_blocks(t: Tensor, rows: dict[str, int]) -> dict[str, Tensor]:
    """Split the last dim of ``t`` into named blocks of the given sizes (in order)."""
    return dict(zip(rows, torch.split(t, list(rows.values()), dim=-1), strict=True))


def _expand(master: Tensor, hidden: int) -> Tensor:
    return master.repeat_interleave(hidden // master.shape[-1], dim=-1)


def effective_gates(m: Mechanism, a: dict[str, Tensor], hidden: int) -> dict[str, Tensor]:
    """Effective decay and input gates from block pre-activations ``a`` (the ``input`` block
    is used only by the LSTM core). Returns ``decay_gate`` and ``input_gate`` (B, H), and
    ``main``/``refine``/``master_forget``/``master_input`` where the mechanism has them."""
    f = m.gate(a[m.decay_block])
    out: dict[str, Tensor] = {}
    if m.refine:
        r = torch.sigmoid(a[m.refine_block])  # type: ignore[index]
        g = refine(f, r)
        out.update(decay_gate=g, input_gate=1 - g, main=f, refine=r)
        return out
    if m.core == "gru":
        i = 1 - f
    elif m.activation == "cumax":
        i = 1 - cumax(a["input"])
    else:
        i = m.plain_gate(a["input"])
    if m.master is None:
        out.update(decay_gate=f, input_gate=i)
        return out
    if m.master == "cumax":
        mf, mi = cumax(a["master_forget"]), 1 - cumax(a["master_input"])
    else:
        mf, mi = torch.sigmoid(a["master_forget"]), torch.sigmoid(a["master_input"])
    mf_x, mi_x = _expand(mf, hidden), _expand(mi, hidden)
    w = mf_x * mi_x
    out.update(decay_gate=f * w + (mf_x - w), input_gate=i * w + (mi_x - w), main=f,
               master_forget=mf, master_input=mi)
    return out


def gru_step(m: Mechanism, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None,
             rows: dict[str, int]) -> tuple[Tensor, dict[str, Tensor]]:
    """One GRU-core step from the precomputed input projection ``gi`` (B, G).

    Returns ``(h', gates)`` with ``gates`` = :func:`effective_gates` plus ``reset``.
    """
    gh = torch.nn.functional.linear(h, w_hh, b_hh)
    ai, ah = split_blocks(gi, rows), split_blocks(gh, rows)
    a = {k: ai[k] + ah[k] for k in rows if k != "candidate"}
    r = m.plain_gate(a["reset"])
    n = m.candidate(ai["candidate"] + r * ah["candidate"])
    gates = effective_gates(m, a, h.shape[-1])
    gates["reset"] = r
    return gates["decay_gate"] * h + gates["input_gate"] * n, gates


def gru_sequence(m: Mechanism, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
                 b_ih: Tensor | None, b_hh: Tensor | None, rows: dict[str, int],
                 on_step: StepCallback | None = None) -> tuple[Tensor, Tensor]:
    """GRU-core layer over a sequence: x (T, B, I), h0 (B, H) -> (out (T, B, H), h_T (B, H)).

    ``on_step`` (optional) receives each step's gate dict (see :func:`gru_step`).
    """
    gi_all = torch.nn.functional.linear(x, w_ih, b_ih)  # one GEMM for all steps
    h, outs = h0, []
    for gi in gi_all.unbind(0):
        h, gates = gru_step(m, gi, h, w_hh, b_hh, rows)
        outs.append(h)
        if on_step is not None:
            on_step(gates)
    if not outs:
        return x.new_empty(0, h0.shape[0], h0.shape[1]), h0
    return torch.stack(outs), h


def lstm_step(m: Mechanism, gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None,
              rows: dict[str, int]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """One LSTM-core step; returns ``(h', c', gates)`` (gates as :func:`effective_gates` plus ``output``)."""
    a = split_blocks(gi + torch.nn.functional.linear(h, w_hh, b_hh), rows)
    gates = effective_gates(m, a, h.shape[-1])
    c = gates["decay_gate"] * c + gates["input_gate"] * m.candidate(a["cell"])
    o = m.plain_gate(a["output"])
    gates["output"] = o
    return o * torch.tanh(c), c, gates


def lstm_sequence(m: Mechanism, x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Tensor | None, b_hh: Tensor | None, rows: dict[str, int],
                  on_step: StepCallback | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM-core layer: x (T, B, I), h0, c0 (B, H) -> (out (T, B, H), h_T, c_T)."""
    gi_all = torch.nn.functional.linear(x, w_ih, b_ih)
    h, c, outs = h0, c0, []
    for gi in gi_all.unbind(0):
        h, c, gates = lstm_step(m, gi, h, c, w_hh, b_hh, rows)
        outs.append(h)
        if on_step is not None:
            on_step(gates)
    if not outs:
        return x.new_empty(0, h0.shape[0], h0.shape[1]), h0, c0
    return torch.stack(outs), h, c


__all__ = ["StepCallback", "effective_gates", "gru_sequence", "gru_step", "lstm_sequence", "lstm_step",
           "split_blocks"]
