"""Bias initializers and bias freezing for any GRU/LSTM-like layer.

Works on :class:`gates.layers.GatedGRU`/``GatedLSTM`` and on ``torch.nn.GRU``/``LSTM``
(blocks r, z, n / i, f, g, o). Values go into ``bias_ih``; the matching ``bias_hh``
rows are set to 0, so the gate sees exactly the value given.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from soensim.timescales import decay

from .mechanisms import BASE_BLOCKS, DECAY_BLOCK, block_name, chrono_bias, ugi_bias


def layer_blocks(layer: nn.Module) -> dict[str, slice]:
    """Named row blocks of a recurrent layer."""
    if hasattr(layer, "gate_blocks"):
        return layer.gate_blocks()
    core = {nn.GRU: "gru", nn.LSTM: "lstm"}.get(type(layer))
    if core is None:
        raise ValueError(f"layer must be a GatedGRU/GatedLSTM or torch.nn.GRU/LSTM; got {type(layer).__name__}")
    h = layer.hidden_size
    return {name: slice(i * h, (i + 1) * h) for i, name in enumerate(BASE_BLOCKS[core])}


def _decay_block(layer: nn.Module) -> str:
    return getattr(layer, "decay_gate", None) or DECAY_BLOCK["lstm" if isinstance(layer, nn.LSTM) else "gru"]


def _bias_pairs(layer: nn.Module) -> list[tuple[Tensor, Tensor]]:
    pairs = []
    for k in range(layer.num_layers):
        b_ih, b_hh = getattr(layer, f"bias_ih_l{k}", None), getattr(layer, f"bias_hh_l{k}", None)
        if b_ih is None or b_hh is None:
            raise ValueError("layer has no biases (bias=False): nothing to initialise or freeze")
        pairs.append((b_ih, b_hh))
    return pairs


def set_bias(layer: nn.Module, block: str, value: float | Tensor) -> None:
    """Set the effective bias of ``block`` (name or alias) to ``value`` (scalar or (rows,)) in every layer."""
    blocks = layer_blocks(layer)
    name = block_name(block)
    if name not in blocks:
        raise ValueError(f"block must be one of {list(blocks)} (or aliases r,z,n,i,f,g,o); got {block!r}")
    with torch.no_grad():
        for b_ih, b_hh in _bias_pairs(layer):
            b_ih[blocks[name]] = torch.as_tensor(value, dtype=b_ih.dtype)
            b_hh[blocks[name]] = 0.0


def constant_(layer: nn.Module, value: float = 1.0, block: str | None = None) -> None:
    """Constant decay-gate bias (+1 is the standard forget/update init)."""
    set_bias(layer, block or _decay_block(layer), value)


def ugi_(layer: nn.Module, generator: torch.Generator | None = None) -> None:
    """Uniform gate initialisation of the decay gate (papers/002 eq. 9)."""
    for k, (b_ih, b_hh) in enumerate(_bias_pairs(layer)):
        sl = layer_blocks(layer)[_decay_block(layer)]
        with torch.no_grad():
            b_ih[sl] = ugi_bias(sl.stop - sl.start, generator).to(b_ih.dtype)
            b_hh[sl] = 0.0


def chrono_(layer: nn.Module, tmax: float | None = None, generator: torch.Generator | None = None) -> None:
    """Chrono initialisation: b_f ~ log U[1, T_max - 1]; for LSTMs also b_i = -b_f."""
    blocks = layer_blocks(layer)
    f = blocks[_decay_block(layer)]
    n = f.stop - f.start
    with torch.no_grad():
        for b_ih, b_hh in _bias_pairs(layer):
            b = chrono_bias(n, tmax or float(n), generator).to(b_ih.dtype)
            b_ih[f], b_hh[f] = b, 0.0
            if "input" in blocks and not getattr(getattr(layer, "mechanism", None), "refine", False):
                b_ih[blocks["input"]], b_hh[blocks["input"]] = -b, 0.0


def physical_tau_(layer: nn.Module, taus: Tensor, dt: float) -> None:
    """Decay-gate biases for per-unit time constants ``taus`` (same unit as ``dt``), shape (H,).

    Uses the layer mechanism's ``bias_for_decay`` (SST and refine gates need their own
    value for the same decay); torch's layers are plain sigmoid gates.
    """
    z = decay(taus, dt)
    mech = getattr(layer, "mechanism", None)
    values = mech.bias_for_decay(z) if mech is not None else {_decay_block(layer): torch.logit(z)}
    for block, value in values.items():
        set_bias(layer, block, value)


def orthogonal_hh_(layer: nn.Module, generator: torch.Generator | None = None) -> None:
    """Orthogonal init of each recurrent block of every layer (papers/001)."""
    with torch.no_grad():
        for k in range(layer.num_layers):
            w = getattr(layer, f"weight_hh_l{k}")
            for sl in layer_blocks(layer).values():
                nn.init.orthogonal_(w[sl], generator=generator)


@dataclass
class FrozenBiases:
    """Handle returned by :func:`freeze_biases`; ``remove()`` lifts the freeze."""

    handles: list = field(default_factory=list)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def freeze_biases(layer: nn.Module, gates: Sequence[str] | Mapping[str, float | Tensor],
                  value: float | Tensor | None = None) -> FrozenBiases:
    """Freeze bias blocks at values by a gradient hook that zeroes their rows (papers/001).

    ``gates`` is a list of block names/aliases with a common ``value`` (None keeps the
    current effective values), or a mapping block → value. The fast paths are untouched.
    Decoupled weight decay (AdamW) still shrinks hooked rows: exclude the biases from
    weight decay, or use :func:`soensim.constraints.constrain`, which replaces the rows in
    the forward pass and so holds them whatever the optimizer does.
    """
    items: Iterable[tuple[str, float | Tensor | None]]
    items = gates.items() if isinstance(gates, Mapping) else [(g, value) for g in gates]
    blocks = layer_blocks(layer)
    rows = []
    for g, v in items:
        name = block_name(g)
        if name not in blocks:
            raise ValueError(f"gates must name blocks of {list(blocks)} (or aliases); got {g!r}")
        if v is not None:
            set_bias(layer, name, v)
        else:
            with torch.no_grad():
                for b_ih, b_hh in _bias_pairs(layer):
                    b_ih[blocks[name]] += b_hh[blocks[name]]
                    b_hh[blocks[name]] = 0.0
        rows.append(blocks[name])
    mask = torch.ones(_bias_pairs(layer)[0][0].numel())
    for sl in rows:
        mask[sl] = 0.0
    handle = FrozenBiases()
    for b_ih, b_hh in _bias_pairs(layer):
        for p in (b_ih, b_hh):
            handle.handles.append(p.register_hook(lambda g, m=mask: g * m.to(g)))
    return handle


__all__ = ["FrozenBiases", "chrono_", "constant_", "freeze_biases", "layer_blocks", "orthogonal_hh_",
           "physical_tau_", "set_bias", "ugi_"]
