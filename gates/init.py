"""Bias initialisers, orthogonal recurrent init and bias freezing for any GRU/LSTM-like layer.

Works on :class:`gates.layers.GatedGRU`/``GatedLSTM`` (blocks from ``gate_blocks()``) and on
``torch.nn.GRU``/``GRUCell`` (blocks r, z, n = reset, update, candidate) and
``torch.nn.LSTM``/``LSTMCell`` (i, f, g, o = input, forget, cell, output), every layer and
direction (parameters ``bias_ih*``/``bias_hh*``/``weight_hh*``). Blocks are named by their
full name or torch's letter.

Every value goes into ``bias_ih``; the matching ``bias_hh`` rows are set to 0, so the gate
sees exactly the value given (torch sums the two biases). Initialise before applying
:func:`soensim.constraints.constrain` (a parametrized tensor cannot be written in place:
that raises a ValueError here).

In-place functions end in ``_`` like ``torch.nn.init``; the names without the underscore
(``constant``, ``chrono``, ``ugi``, ``physical_tau``, ``orthogonal``) are aliases.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from soensim.timescales import tau_to_bias

from .mechanisms import (BASE_BLOCKS, DECAY_BLOCK, STANDARD_DECAY_BIAS, block_name, chrono_bias, default_chrono_tmax,
                         ugi_bias)

_TORCH_CORES: dict[type, str] = {nn.GRU: "gru", nn.GRUCell: "gru", nn.LSTM: "lstm", nn.LSTMCell: "lstm"}
_BIAS_RE = re.compile(r"^bias_ih(.*)$")
_WHH_RE = re.compile(r"^weight_hh(.*)$")


def _core(layer: nn.Module) -> str:
    mech = getattr(layer, "mechanism", None)
    if mech is not None:
        return mech.core
    for cls, core in _TORCH_CORES.items():
        if isinstance(layer, cls):
            return core
    raise ValueError(f"layer must be a GatedGRU/GatedLSTM or torch.nn.GRU/GRUCell/LSTM/LSTMCell; "
                     f"got {type(layer).__name__}")


def _hidden(layer: nn.Module) -> int:
    return int(layer.hidden_size)


def layer_blocks(layer: nn.Module) -> dict[str, slice]:
    """Named row blocks (name -> slice of the stacked gate dimension) of a recurrent layer."""
    if callable(getattr(layer, "gate_blocks", None)):
        blocks = layer.gate_blocks()
        if isinstance(blocks, Mapping):
            return dict(blocks)
    core = _core(layer)
    h = _hidden(layer)
    return {name: slice(i * h, (i + 1) * h) for i, name in enumerate(BASE_BLOCKS[core])}


def decay_block(layer: nn.Module) -> str:
    """The block whose bias sets the time constant (GRU ``update``, LSTM ``forget``)."""
    return getattr(layer, "decay_gate", None) or DECAY_BLOCK[_core(layer)]


def _resolve(layer: nn.Module, block: str) -> tuple[str, slice]:
    blocks = layer_blocks(layer)
    name = block_name(block)
    if name not in blocks:
        raise ValueError(f"block must be one of {list(blocks)} (or torch letters r,z,n / i,f,g,o); got {block!r}")
    return name, blocks[name]


def _tensor(layer: nn.Module, name: str) -> Tensor:
    if parametrize.is_parametrized(layer, name):
        raise ValueError(f"{name} is parametrized (e.g. by soensim.constraints.constrain): initialise before "
                         "constraining, or unconstrain first")
    return getattr(layer, name)


def _bias_pairs(layer: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(bias_ih, bias_hh) of every layer/direction, in parameter order."""
    names = [n for n, _ in layer.named_parameters(recurse=False)]
    if parametrize.is_parametrized(layer):
        names += [f"{n}" for n in layer.parametrizations.keys()]  # type: ignore[union-attr]
    pairs = []
    for n in dict.fromkeys(names):
        m = _BIAS_RE.match(n)
        if m and getattr(layer, f"bias_hh{m.group(1)}", None) is not None:
            pairs.append((_tensor(layer, n), _tensor(layer, f"bias_hh{m.group(1)}")))
    if not pairs:
        raise ValueError(f"{type(layer).__name__} has no biases (bias=False): nothing to initialise or freeze")
    return pairs


def _recurrent_weights(layer: nn.Module) -> list[Tensor]:
    return [_tensor(layer, n) for n, _ in layer.named_parameters(recurse=False) if _WHH_RE.match(n)]


def _per_pair(value: Any, n_pairs: int, rows: int, like: Tensor) -> list[Tensor]:
    """A scalar, an (rows,) tensor for every layer, or an (n_pairs, rows) tensor: one row vector per pair."""
    v = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, Tensor) else value.detach()
    if v.dim() == 2:
        if tuple(v.shape) != (n_pairs, rows):
            raise ValueError(f"values must be a number, ({rows},) or ({n_pairs}, {rows}); got {tuple(v.shape)}")
        return [v[k].to(like) for k in range(n_pairs)]
    if v.dim() > 1 or (v.dim() == 1 and v.numel() != rows):
        raise ValueError(f"values must be a number, ({rows},) or ({n_pairs}, {rows}); got {tuple(v.shape)}")
    return [v.to(like).expand(rows) for _ in range(n_pairs)]


def set_bias(layer: nn.Module, block: str, value: float | Tensor) -> None:
    """Set the effective bias of ``block`` to ``value`` in every layer: ``bias_ih`` rows = value,
    ``bias_hh`` rows = 0. ``value``: a number, (rows,) or (num_layers × directions, rows)."""
    _, sl = _resolve(layer, block)
    pairs = _bias_pairs(layer)
    vals = _per_pair(value, len(pairs), sl.stop - sl.start, pairs[0][0])
    with torch.no_grad():
        for (b_ih, b_hh), v in zip(pairs, vals):
            b_ih[sl] = v
            b_hh[sl] = 0.0


def constant_(layer: nn.Module, value: float = STANDARD_DECAY_BIAS, block: str | None = None) -> None:
    """Constant bias on ``block`` (default the decay gate): +1 is the standard forget/update init."""
    set_bias(layer, block or decay_block(layer), value)


def _refine_block(layer: nn.Module) -> str | None:
    mech = getattr(layer, "mechanism", None)
    return getattr(mech, "refine_block", None)


def ugi_(layer: nn.Module, generator: torch.Generator | None = None) -> None:
    """Uniform gate initialisation of the decay gate: b_f = logit(u), u ~ U[1/H, 1 - 1/H]
    (papers/002 eq. 9), drawn per layer. A refine gate gets b_r = -b_f (appendix A);
    an LSTM's independent input gate b_i = -b_f (appendix B.3)."""
    _, f = _resolve(layer, decay_block(layer))
    rb = _refine_block(layer)
    blocks = layer_blocks(layer)
    h = f.stop - f.start
    with torch.no_grad():
        for b_ih, b_hh in _bias_pairs(layer):
            b = ugi_bias(h, generator).to(b_ih)
            b_ih[f], b_hh[f] = b, 0.0
            tied = rb if rb is not None else ("input" if _core(layer) == "lstm" else None)
            if tied is not None:
                b_ih[blocks[tied]], b_hh[blocks[tied]] = -b, 0.0


def chrono_(layer: nn.Module, tmax: float | None = None, generator: torch.Generator | None = None) -> None:
    """Chrono initialisation b_f ~ log U[1, T_max - 1], drawn per layer; an LSTM's input gate
    b_i = -b_f (papers/002 eq. 17-18). ``tmax`` defaults to ``CHRONO_TMAX_PER_UNIT · H``.
    A refine gate (if any) gets 0."""
    _, f = _resolve(layer, decay_block(layer))
    h = f.stop - f.start
    tmax = default_chrono_tmax(h) if tmax is None else float(tmax)
    rb = _refine_block(layer)
    blocks = layer_blocks(layer)
    with torch.no_grad():
        for b_ih, b_hh in _bias_pairs(layer):
            b = chrono_bias(h, tmax, generator).to(b_ih)
            b_ih[f], b_hh[f] = b, 0.0
            if rb is not None:
                b_ih[blocks[rb]], b_hh[blocks[rb]] = 0.0, 0.0
            elif _core(layer) == "lstm":
                b_ih[blocks["input"]], b_hh[blocks["input"]] = -b, 0.0


def physical_tau_(layer: nn.Module, taus: float | Tensor, dt: float | Tensor) -> dict[str, Tensor]:
    """Decay-gate biases for physical time constants ``taus`` (same unit as ``dt``).

    ``taus``: a number, (H,) for every layer, or (num_layers, H). A gates layer uses its
    mechanism's ``bias_for_tau`` (e.g. SST: ``tau_to_bias(2 tau, dt)``; refine gates also get
    b_r = 0); torch's layers are sigmoid gates: ``tau_to_bias(tau, dt)``
    (:mod:`soensim.timescales`). Returns the biases written per block (float64). Raises
    ValueError for mechanisms without per-unit time constants (cumax, master gates).
    """
    mech = getattr(layer, "mechanism", None)
    taus_t = torch.as_tensor(taus, dtype=torch.float64) if not isinstance(taus, Tensor) else taus.double()
    values = mech.bias_for_tau(taus_t, dt) if mech is not None else {decay_block(layer): tau_to_bias(taus_t, dt)}
    for block, value in values.items():
        set_bias(layer, block, value)
    return values


def orthogonal_hh_(layer: nn.Module, generator: torch.Generator | None = None) -> None:
    """Orthogonal init of each recurrent block (rows of one gate) of every layer (papers/001)."""
    with torch.no_grad():
        for w in _recurrent_weights(layer):
            for sl in layer_blocks(layer).values():
                q = torch.empty(sl.stop - sl.start, w.shape[1], dtype=torch.float64)
                nn.init.orthogonal_(q, generator=generator)
                w[sl] = q.to(w)


@dataclass
class FrozenBiases:
    """Handle returned by :func:`freeze_biases`; ``remove()`` lifts the freeze (values stay)."""

    blocks: dict[str, slice] = field(default_factory=dict)
    handles: list = field(default_factory=list, repr=False)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    @property
    def active(self) -> bool:
        return bool(self.handles)


def freeze_biases(layer: nn.Module, gates: Sequence[str] | Mapping[str, float | Tensor | None],
                  value: float | Tensor | None = None) -> FrozenBiases:
    """Freeze bias blocks at given values: values set, and a gradient hook zeroes the
    gradient of those rows of ``bias_ih`` and ``bias_hh`` (the papers/001 ablation).

    Args:
        layer: a gates layer or torch.nn.GRU/LSTM (cells too).
        gates: ``{block: value}`` (value None keeps the current effective value), or a list of
            blocks sharing ``value``. Blocks by name or torch letter (``{"z": 0.0, "r": 0.0}``).
        value: the common value when ``gates`` is a list (None keeps the current values).

    Returns:
        a :class:`FrozenBiases` handle; ``handle.remove()`` lifts the hooks.

    The layer's fast path is untouched (hooks act on the parameters' gradients only). A
    hook stops gradients, not the optimizer: AdamW's decoupled weight decay, momentum carried
    from before the freeze, or any direct write still move the rows. Put the biases in a
    parameter group with ``weight_decay=0`` (a zero stays zero under AdamW), or use
    :func:`soensim.constraints.constrain`, whose transforms replace the rows in the forward
    pass and so hold them whatever the optimizer does.
    """
    items: Iterable[tuple[str, float | Tensor | None]]
    items = gates.items() if isinstance(gates, Mapping) else [(g, value) for g in gates]
    pairs = _bias_pairs(layer)
    frozen: dict[str, slice] = {}
    for g, v in items:
        name, sl = _resolve(layer, g)
        if v is not None:
            set_bias(layer, name, v)
        else:
            with torch.no_grad():
                for b_ih, b_hh in pairs:
                    b_ih[sl] += b_hh[sl]
                    b_hh[sl] = 0.0
        frozen[name] = sl
    handle = FrozenBiases(blocks=frozen)
    for b_ih, b_hh in pairs:
        for p in (b_ih, b_hh):
            mask = torch.ones(p.shape, dtype=p.dtype, device=p.device)
            for sl in frozen.values():
                mask[sl] = 0.0
            handle.handles.append(p.register_hook(lambda grad, m=mask: grad * m.to(grad)))
    return handle


# names without the in-place underscore (the brief's spelling)
constant = constant_
chrono = chrono_
ugi = ugi_
physical_tau = physical_tau_
orthogonal = orthogonal_hh_

__all__ = ["FrozenBiases", "chrono", "chrono_", "constant", "constant_", "decay_block", "freeze_biases",
           "layer_blocks", "orthogonal", "orthogonal_hh_", "physical_tau", "physical_tau_", "set_bias", "ugi",
           "ugi_"]
