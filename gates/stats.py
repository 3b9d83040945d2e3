"""Opt-in gate statistics (papers/002 Fig. 4 histograms, papers/001 W_hz growth).

Nothing here touches the normal forward path: statistics are computed by a separate
no-grad pass through the reference recurrence (``layer(x, record=...)``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .init import layer_blocks


@torch.no_grad()
def gate_means(layer: nn.Module, x: Tensor, h0: Tensor | None = None) -> dict[str, Tensor]:
    """Per-unit effective decay gate of the first layer, averaged over time and batch.

    ``x`` is laid out as the layer expects (``batch_first`` honoured). Returns
    ``{"decay_gate": (H,), "timescale_steps": (H,)}`` where the time scale is 1/(1 - g)
    of the mean gate (papers/002 B.2). Works for GatedGRU and GatedLSTM.
    """
    if not hasattr(layer, "gate_blocks"):
        raise ValueError(f"layer must be a GatedGRU/GatedLSTM; got {type(layer).__name__}")
    record: list[list[Tensor]] = []
    layer(x, h0, record=record)
    g = torch.stack(record[0]).mean(dim=(0, 1))
    return {"decay_gate": g, "timescale_steps": 1.0 / (1.0 - g).clamp_min(torch.finfo(g.dtype).tiny)}


@torch.no_grad()
def decay_weight_norms(layer: nn.Module) -> dict[str, float]:
    """Frobenius norms of the decay-gate rows of W_hh and W_ih (W_hz, W_xz for a GRU) per layer."""
    sl = layer_blocks(layer)[getattr(layer, "decay_gate", "update")]
    out = {}
    for k in range(layer.num_layers):
        out[f"W_h_decay_l{k}"] = getattr(layer, f"weight_hh_l{k}")[sl].norm().item()
        out[f"W_x_decay_l{k}"] = getattr(layer, f"weight_ih_l{k}")[sl].norm().item()
    return out


__all__ = ["decay_weight_norms", "gate_means"]
