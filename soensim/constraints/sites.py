"""The recurrent cells of a model as :func:`constrain` and :func:`check` see them.

Everything here is read from the layer contract (:mod:`soensim.layouts`): which tensors a
cell has, which rows are which gate, how a time constant maps to decay-gate biases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..layouts import Cell, Layout, find_layers, tensor
from ..profiles import HardwareProfile


@dataclass(frozen=True)
class Site:
    """One recurrent cell (layer × direction) of one layer found in a model.

    ``index`` counts the cells in model order: cell ``k`` draws its unit time constants
    from ``profile.unit_taus(H, seed + k)``.
    """

    layer_name: str
    layer: nn.Module
    layout: Layout
    cell: Cell
    index: int

    @property
    def label(self) -> str:
        """``"<layer>.l0"``, ``"<layer>.l0_reverse"``, ``"<layer>.cell"`` (``<model>`` for the root)."""
        return f"{self.layer_name or '<model>'}.{self.cell.tag}"

    @property
    def gated(self) -> bool:
        """A GRU/LSTM core (stacked gate rows with biases), not a SOEN core."""
        return self.layout.core != "soen"

    @property
    def row_couplings(self) -> tuple[str, ...]:
        """The input and recurrent couplings of the cell: the matrices whose rows feed one gate
        row (SOEN: one unit) together. Projection weights are not among them."""
        kinds = {p.name: p.kind for p in self.layout.params}
        return tuple(w for w in self.cell.weights if kinds.get(w) in ("input", "recurrent"))

    def qual(self, path: str) -> str:
        """Qualified name of the tensor at ``path`` of the layer."""
        return f"{self.layer_name}.{path}" if self.layer_name else path

    def value(self, path: str) -> Tensor:
        """Effective (constrained) value of the tensor at ``path``, detached."""
        with torch.no_grad():
            return tensor(self.layer, path).detach()

    def rows_sum(self, paths: tuple[str, ...] | list[str], rows: slice) -> Tensor:
        """Sum over the tensors ``paths`` of their ``rows``, float64 on the CPU."""
        total = torch.zeros(rows.stop - rows.start, dtype=torch.float64)
        for p in paths:
            total += self.value(p)[rows].double().cpu()
        return total

    def design_biases(self, tau: Tensor, dt: float) -> dict[str, Tensor]:
        """Biases per block (float64) that make the decay gate decay as ``exp(-dt/tau)``."""
        if self.layout.decay is None:
            raise ValueError(f"{self.label}: gate mechanism {self.layout.mechanism!r} has no leaky decay")
        out = self.layout.decay.bias_for_tau(tau, dt)
        unknown = [b for b in out if b not in self.layout.blocks]
        if unknown or self.layout.decay_block not in out:
            raise ValueError(f"{self.label}: the layout's decay gives blocks {list(out)}; the layer has "
                             f"{list(self.layout.blocks)} with decay block {self.layout.decay_block!r}")
        return {b: torch.as_tensor(v, dtype=torch.float64).reshape(tau.shape) for b, v in out.items()}

    def tau_for_bias(self, bias: Tensor, dt: float) -> Tensor | None:
        """Time constants (s) of decay-block biases ``bias``; None for a non-leaky mechanism."""
        return None if self.layout.decay is None else self.layout.decay.tau_for_bias(bias.double(), dt)


def find_sites(model: nn.Module) -> list[Site]:
    """Every recurrent cell inside ``model``, in model order.

    Raises:
        ValueError: an ``nn.RNN``/``nn.RNNCell`` (no gate to hold a time constant) or a
            malformed ``layout()`` inside ``model``.
    """
    try:
        layers = find_layers(model)
    except TypeError as exc:  # an argument of the right type holding a layer that cannot be described
        raise ValueError(str(exc)) from exc
    sites: list[Site] = []
    for name, layer, lay in layers:
        for cell in lay.cells:
            sites.append(Site(name, layer, lay, cell, len(sites)))
    return sites


def require(model: Any, profile: Any, fn: str) -> None:
    """Type checks shared by :func:`constrain` and :func:`check`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(profile, HardwareProfile):
        hint = " (use HardwareProfile.preset(name))" if isinstance(profile, str) else ""
        raise TypeError(f"{fn}: profile must be a soensim HardwareProfile{hint}; got {type(profile).__name__}")


def step(profile: HardwareProfile, dt: float | None) -> float:
    """The step in seconds biases are computed for: ``dt`` or ``profile.dt``."""
    if dt is None:
        return profile.dt
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive number of seconds; got {dt!r}")
    return float(dt)


def per_cell(value: Tensor | float, rows: int, index: int, n_cells: int, label: str) -> Tensor:
    """``value`` for the rows of one block of cell ``index``: a number, a ``(rows,)`` tensor for
    every cell or ``(n_cells, rows)`` (cells × units); float64 on the CPU."""
    b = torch.as_tensor(value.detach() if isinstance(value, Tensor) else value, dtype=torch.float64).cpu()
    if b.dim() == 0:
        b = b.expand(rows)
    elif b.dim() == 2 and b.shape[0] == n_cells:
        b = b[index]
    if b.shape != (rows,):
        raise ValueError(f"{label} must be a number, an ({rows},) tensor or ({n_cells}, {rows}) (cells × units); "
                         f"got shape {tuple(b.shape)}")
    if not torch.isfinite(b).all():
        raise ValueError(f"{label} must be finite")
    return b.clone()


__all__ = ["Site", "find_sites", "per_cell", "require", "step"]
