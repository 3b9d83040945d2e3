"""Bias initialisers and orthogonal recurrent init for any GRU/LSTM-like layer.

Works on every layer :func:`soensim.layout` describes with a GRU or LSTM core — the gates
layers and ``torch.nn.GRU``/``GRUCell``/``LSTM``/``LSTMCell`` — on every layer and
direction (the layout's cells). Blocks are named by their full name or torch's letter
(``r, z, n`` / ``i, f, g, o``); the layout says which rows they are.

Every value goes into ``bias_ih``; the matching ``bias_hh`` rows are set to 0, so the gate
sees exactly the value given (torch sums the two biases). Initialise before constraining
or freezing (a parametrized tensor cannot be written in place: that raises a ValueError
here). To hold biases fixed while training use :func:`soensim.constraints.freeze_biases`.

In-place functions end in ``_`` like ``torch.nn.init``; the names without the underscore
(``constant``, ``chrono``, ``ugi``, ``physical_tau``, ``orthogonal``) are aliases.

The bias draws follow Gu et al. 2020, "Improving the Gating Mechanism of Recurrent Neural
Networks" (arXiv:1910.09890): UGI eq. 9, chrono eq. 17-18 (Tallec & Ollivier 2018).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from soensim.layouts import Layout, layout, owner

from .mechanisms import STANDARD_DECAY_BIAS, chrono_bias, default_chrono_tmax, ugi_bias


def _gate_layout(layer: nn.Module) -> Layout:
    lay = layout(layer)
    if lay.core not in ("gru", "lstm"):
        raise ValueError(f"gates.init initialises GRU/LSTM-core layers; {type(layer).__name__} has core {lay.core!r}")
    return lay


def _writable(layer: nn.Module, path: str) -> Tensor:
    module, name = owner(layer, path)
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"{path} is parametrized (e.g. by soensim.constrain or freeze_biases): initialise before "
                         "constraining, or remove the constraint first")
    return getattr(module, name)


def _bias_pairs(layer: nn.Module, lay: Layout) -> list[tuple[Tensor, Tensor]]:
    """(bias_ih, bias_hh) of every cell, in the layout's order."""
    pairs = [(_writable(layer, c.bias_ih), _writable(layer, c.bias_hh)) for c in lay.cells
             if c.bias_ih is not None and c.bias_hh is not None]
    if not pairs:
        raise ValueError(f"{type(layer).__name__} has no biases (bias=False): nothing to initialise")
    return pairs


def _per_pair(value: Any, n_pairs: int, rows: int, like: Tensor) -> list[Tensor]:
    """A scalar, an (rows,) tensor for every cell, or an (n_pairs, rows) tensor: one row vector per cell."""
    v = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, Tensor) else value.detach()
    if v.dim() == 2:
        if tuple(v.shape) != (n_pairs, rows):
            raise ValueError(f"values must be a number, ({rows},) or ({n_pairs}, {rows}); got {tuple(v.shape)}")
        return [v[k].to(like) for k in range(n_pairs)]
    if v.dim() > 1 or (v.dim() == 1 and v.numel() != rows):
        raise ValueError(f"values must be a number, ({rows},) or ({n_pairs}, {rows}); got {tuple(v.shape)}")
    return [v.to(like).expand(rows) for _ in range(n_pairs)]


def set_bias(layer: nn.Module, block: str, value: float | Tensor) -> None:
    """Set the effective bias of ``block`` to ``value`` in every cell: ``bias_ih`` rows = value,
    ``bias_hh`` rows = 0. ``value``: a number, (rows,) or (num_layers × directions, rows)."""
    lay = _gate_layout(layer)
    sl = lay.block(block)
    pairs = _bias_pairs(layer, lay)
    vals = _per_pair(value, len(pairs), sl.stop - sl.start, pairs[0][0])
    with torch.no_grad():
        for (b_ih, b_hh), v in zip(pairs, vals, strict=True):
            b_ih[sl] = v
            b_hh[sl] = 0.0


def constant_(layer: nn.Module, value: float = STANDARD_DECAY_BIAS, block: str | None = None) -> None:
    """Constant bias on ``block`` (default the decay gate): +1 is the standard forget/update init."""
    set_bias(layer, block or _gate_layout(layer).decay_block, value)


def _draw_decay_biases(layer: nn.Module, draw: Callable[[int], Tensor], refine_sign: float) -> None:
    """Decay-block biases b = ``draw(h)`` per cell; a refine gate gets ``refine_sign · b``, an
    LSTM's independent input gate -b (approximately tied gates, Gu et al. eq. 18)."""
    lay = _gate_layout(layer)
    f = lay.block(lay.decay_block)
    pairs = _bias_pairs(layer, lay)
    tied = lay.refine_block or ("input" if lay.core == "lstm" else None)
    sign = refine_sign if lay.refine_block is not None else -1.0
    with torch.no_grad():
        for b_ih, b_hh in pairs:
            b = draw(f.stop - f.start).to(b_ih)
            b_ih[f], b_hh[f] = b, 0.0
            if tied is not None:
                sl = lay.block(tied)
                b_ih[sl], b_hh[sl] = (sign * b if sign else 0.0), 0.0


def ugi_(layer: nn.Module, generator: torch.Generator | None = None) -> None:
    """Uniform gate initialisation of the decay gate: b_f = logit(u), u ~ U[1/H, 1 - 1/H]
    (Gu et al. eq. 9), drawn per cell. A refine gate gets b_r = -b_f (appendix A); an
    LSTM's independent input gate b_i = -b_f (appendix B.3)."""
    _draw_decay_biases(layer, lambda h: ugi_bias(h, generator), -1.0)


def chrono_(layer: nn.Module, tmax: float | None = None, generator: torch.Generator | None = None) -> None:
    """Chrono initialisation b_f ~ log U[1, T_max - 1], drawn per cell; an LSTM's input gate
    b_i = -b_f (Gu et al. eq. 17-18). ``tmax`` (steps) defaults to ``CHRONO_TMAX_PER_UNIT · H``.
    A refine gate (if any) gets 0."""
    def draw(h: int) -> Tensor:
        return chrono_bias(h, default_chrono_tmax(h) if tmax is None else float(tmax), generator)

    _draw_decay_biases(layer, draw, 0.0)


def physical_tau_(layer: nn.Module, taus: float | Tensor, dt: float | Tensor) -> dict[str, Tensor]:
    """Decay-gate biases for physical time constants ``taus`` (same unit as ``dt``).

    ``taus``: a number, (H,) for every cell, or (num_layers × directions, H). The biases come
    from the layout's ``decay`` (a gates layer's mechanism, e.g. SST ``tau_to_bias(2 tau, dt)``
    and b_r = 0 for refine gates; torch's layers ``tau_to_bias(tau, dt)``, see
    :mod:`soensim.timescales`). Returns the biases written per block (float64). Raises
    ValueError for mechanisms without per-unit time constants (cumax, master gates).
    """
    lay = _gate_layout(layer)
    if lay.decay is None:
        raise ValueError(f"{type(layer).__name__} (gate {lay.mechanism!r}) has no per-unit decay bias: its decay "
                         "gate mixes units (cumax or master gates), so no time constant maps to a bias")
    taus_t = torch.as_tensor(taus, dtype=torch.float64) if not isinstance(taus, Tensor) else taus.double()
    values = lay.decay.bias_for_tau(taus_t, dt)  # type: ignore[arg-type]
    for block, value in values.items():
        set_bias(layer, block, value)
    return values


def orthogonal_hh_(layer: nn.Module, generator: torch.Generator | None = None) -> None:
    """Orthogonal init of each recurrent block (rows of one gate) of every cell (as Malandain 2026,
    "Ablation of Gate Biases in GRUs for s-CIFAR-10")."""
    lay = _gate_layout(layer)
    with torch.no_grad():
        for c in lay.cells:
            w = _writable(layer, c.weight_hh)
            for sl in lay.blocks.values():
                q = torch.empty(sl.stop - sl.start, w.shape[1], dtype=torch.float64)
                nn.init.orthogonal_(q, generator=generator)
                w[sl] = q.to(w)


# names without the in-place underscore
constant = constant_
chrono = chrono_
ugi = ugi_
physical_tau = physical_tau_
orthogonal = orthogonal_hh_

__all__ = ["chrono", "chrono_", "constant", "constant_", "orthogonal", "orthogonal_hh_", "physical_tau",
           "physical_tau_", "set_bias", "ugi", "ugi_"]
