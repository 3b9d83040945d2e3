"""Reference recurrences for every mechanism, written plainly with autograd.

Time-major: ``x`` is (T, B, I). Blocks are split by the mechanism's
``block_rows``. These are the ground truth that the fused kernels are tested
against; a layer uses them for the mechanisms without a fused mode, and when
gate statistics are recorded (``record`` collects per-step effective decay gates).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .mechanisms import Mechanism, cumax, refine, signed_squared_tanh


def split_blocks(t: Tensor, rows: dict[str, int]) -> dict[str, Tensor]:
    """Split the last dim of ``t`` into named blocks of the given sizes (in order)."""
    return dict(zip(rows, torch.split(t, list(rows.values()), dim=-1)))


def _candidate(m: Mechanism) -> Callable[[Tensor], Tensor]:
    return signed_squared_tanh if m.activation == "sst" else torch.tanh


def _plain_gate(m: Mechanism, pre: Tensor) -> Tensor:
    """Non-decay [0, 1] gates (reset, input, output): sigmoid, or sigmoid^2 for SST."""
    s = torch.sigmoid(pre)
    return s * s if m.activation == "sst" else s


def _expand(master: Tensor, hidden: int) -> Tensor:
    return master.repeat_interleave(hidden // master.shape[-1], dim=-1)


def _forget_input(m: Mechanism, a: dict[str, Tensor], hidden: int,
                  input_pre: Tensor | None) -> tuple[Tensor, Tensor]:
    """Effective forget (decay) and input gates from the block pre-activations ``a``."""
    f = m.gate(a[m.decay_block])
    if m.refine:
        f = refine(f, torch.sigmoid(a[m.refine_block]))  # type: ignore[index]
        return f, 1 - f
    if m.master is not None:
        i = 1 - f if input_pre is None else _plain_gate(m, input_pre)
        if m.master == "cumax":
            mf, mi = cumax(a["master_forget"]), 1 - cumax(a["master_input"])
        else:
            mf, mi = torch.sigmoid(a["master_forget"]), torch.sigmoid(a["master_input"])
        mf, mi = _expand(mf, hidden), _expand(mi, hidden)
        w = mf * mi
        return f * w + (mf - w), i * w + (mi - w)
    if input_pre is None:
        return f, 1 - f
    if m.activation == "cumax":
        return f, 1 - cumax(input_pre)
    return f, _plain_gate(m, input_pre)


def gru_step(m: Mechanism, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None,
             rows: dict[str, int]) -> tuple[Tensor, Tensor]:
    """One GRU-core step; returns (h', effective decay gate)."""
    gh = torch.nn.functional.linear(h, w_hh, b_hh)
    ai, ah = split_blocks(gi, rows), split_blocks(gh, rows)
    a = {k: ai[k] + ah[k] for k in rows if k != "candidate"}
    r = _plain_gate(m, a["reset"])
    n = _candidate(m)(ai["candidate"] + r * ah["candidate"])
    forget, inp = _forget_input(m, a, h.shape[-1], None)
    return forget * h + inp * n, forget


def gru_sequence(m: Mechanism, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
                 b_ih: Tensor | None, b_hh: Tensor | None, rows: dict[str, int],
                 record: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """GRU-core layer over a sequence: x (T, B, I), h0 (B, H) -> (out (T, B, H), h_T (B, H))."""
    gi_all = torch.nn.functional.linear(x, w_ih, b_ih)  # one GEMM for all steps
    h, outs = h0, []
    for gi in gi_all.unbind(0):
        h, g = gru_step(m, gi, h, w_hh, b_hh, rows)
        outs.append(h)
        if record is not None:
            record.append(g.detach())
    return torch.stack(outs), h


def lstm_step(m: Mechanism, gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None,
              rows: dict[str, int]) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM-core step; returns (h', c', effective forget gate)."""
    a = split_blocks(gi + torch.nn.functional.linear(h, w_hh, b_hh), rows)
    forget, inp = _forget_input(m, a, h.shape[-1], None if m.refine else a["input"])
    c = forget * c + inp * _candidate(m)(a["cell"])
    h = _plain_gate(m, a["output"]) * torch.tanh(c)
    return h, c, forget


def lstm_sequence(m: Mechanism, x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Tensor | None, b_hh: Tensor | None, rows: dict[str, int],
                  record: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM-core layer: x (T, B, I) -> (out (T, B, H), h_T, c_T)."""
    gi_all = torch.nn.functional.linear(x, w_ih, b_ih)
    h, c, outs = h0, c0, []
    for gi in gi_all.unbind(0):
        h, c, f = lstm_step(m, gi, h, c, w_hh, b_hh, rows)
        outs.append(h)
        if record is not None:
            record.append(f.detach())
    return torch.stack(outs), h, c


__all__ = ["gru_sequence", "gru_step", "lstm_sequence", "lstm_step", "split_blocks"]
