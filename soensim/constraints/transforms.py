"""Pure functions on coupling tensors, and the parametrizations built from them.

Functional core first: :func:`bounded`, :func:`quantize`, :func:`excitatory_flux` … are
plain functions of tensors; the ``nn.Module`` s below (registered with
``torch.nn.utils.parametrize`` by :func:`soensim.constraints.constrain`) only hold their
arguments and call them.

*Bound by reparametrization, not projection.* The effective weight is
``w = J_max * tanh(raw / J_max)``. It can never violate the bound — whatever the
optimizer (Adam, AdamW with weight decay, SGD, closures, gradient accumulation) —
without hooks on any optimizer, it keeps a gradient everywhere, it is ≈ identity for
``|w| ≪ J_max``, and it is removable with the effective value left in place.
Projection after each step would need access to the optimizer (``constrain`` never
sees it) and would let a forward pass between steps run with out-of-bound weights.
The price: near the bound the gradient is scaled by ``1 - (w/J_max)²`` (weights
saturate softly; Adam-type optimizers largely normalise the scale away), and weight
decay acts on ``raw``. ``right_inverse`` first clips the original weight into
``(-J_max, J_max)`` so that the effective weight starts equal to the original one
(within float rounding; out-of-bound entries start just inside). Every bound holds
exactly in the parameter's dtype (clamped to the largest representable value ≤ the
bound).

*A flux budget shared by a row's matrices* — see :class:`RowBudget`.

*Frozen entries keep a buffer.* :class:`FrozenRows` returns ``where(mask, value, raw)``:
the gradient to the frozen entries is exactly zero and the effective value is the
buffer, so neither the optimizer nor weight decay (which may still move ``raw``) can
drift it.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


@functools.lru_cache(maxsize=64)
def _inner_limit(j_max: float, dtype: torch.dtype) -> float:
    """Largest value of ``dtype`` that is ≤ ``j_max`` (float32(0.3) > 0.3, for example)."""
    t = torch.tensor(j_max, dtype=dtype)
    if t.item() > j_max:
        t = torch.nextafter(t, torch.zeros((), dtype=dtype))
    return t.item()


def bounded(raw: Tensor, j_max: float) -> Tensor:
    """Smooth bound ``j_max * tanh(raw / j_max)``; always within ``[-j_max, j_max]``, also
    after rounding to ``raw``'s dtype."""
    lim = _inner_limit(float(j_max), raw.dtype)
    return (j_max * torch.tanh(raw / j_max)).clamp(-lim, lim)


def bounded_inverse(w: Tensor, j_max: float) -> Tensor:
    """Raw value whose :func:`bounded` image is ``w`` (``w`` clipped just inside the bound first)."""
    eps = torch.finfo(w.dtype).eps if w.is_floating_point() else 1e-7
    u = (w.double() / j_max).clamp(-1 + 16 * eps, 1 - 16 * eps)
    return (j_max * torch.atanh(u)).to(w.dtype)


def quantize(w: Tensor, j_max: float, levels: int, *, toward_zero: bool = False) -> Tensor:
    """Snap ``w`` to the grid of ``levels`` evenly spaced values in ``[-j_max, j_max]``.

    Default: the nearest level. ``toward_zero=True``: the nearest level of smaller or equal
    magnitude, or exactly 0 (an absent connection) below the smallest level, so that
    ``|q| ≤ |w|`` entry by entry and every row sum of ``|w|`` can only shrink (what a flux
    budget needs). No gradient rule (see :func:`quantize_ste`).
    """
    step = 2.0 * j_max / (levels - 1)
    lim = _inner_limit(float(j_max), w.dtype)
    if not toward_zero:
        k = torch.round((w + j_max) / step).clamp(0, levels - 1)
        return (k * step - j_max).clamp(-lim, lim)
    offset = 0.0 if levels % 2 else step / 2  # the smallest positive level
    mag = w.abs()
    k = torch.floor((mag - offset) / step)
    q = (k * step + offset).clamp(max=lim)
    q = torch.where(q > mag, q - step, q)  # float rounding may land one level above |w|
    return torch.where(q >= offset, q, torch.zeros_like(q)) * torch.sign(w)


class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor, j_max: float, levels: int, toward_zero: bool) -> Tensor:  # type: ignore[override]
        return quantize(w, j_max, levels, toward_zero=toward_zero)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        return grad, None, None, None


def quantize_ste(w: Tensor, j_max: float, levels: int, *, toward_zero: bool = False) -> Tensor:
    """:func:`quantize` with a straight-through gradient (d out / d w = 1)."""
    return _QuantizeSTE.apply(w, j_max, levels, toward_zero)


def excitatory_flux(coupling: Tensor, s_max: float | Tensor) -> Tensor:
    """Worst-case excitatory flux per receiving unit, ``Σ_{J>0} J·s_max`` over each row.

    ``coupling`` is ``(receivers, senders)``; ``s_max`` the senders' maximal signal
    (a number or a ``(senders,)`` tensor).
    """
    s = torch.as_tensor(s_max, dtype=coupling.dtype, device=coupling.device)
    return (coupling.clamp_min(0) * s).sum(-1)


def flux_window_excess(coupling: Tensor, s_max: float | Tensor, phi_th: float | Tensor) -> Tensor:
    """Per-row excess of :func:`excitatory_flux` over the monotone window ``0.5 − φ_th`` of the
    SOEN source function (docs/physics.md); ``> 0`` means the unit can be driven past φ = 0.5."""
    phi = torch.as_tensor(phi_th, dtype=coupling.dtype, device=coupling.device)
    return excitatory_flux(coupling, s_max) - (0.5 - phi)


def fan_in(coupling: Tensor, atol: float = 0.0) -> Tensor:
    """Number of connections per receiving unit: entries with ``|J| > atol`` in each row."""
    return (coupling.abs() > atol).sum(-1)


def row_l1(*couplings: Tensor) -> Tensor:
    """``Σ_j |W_ij|`` per row over matrices sharing their rows (e.g. ``[W_ih | W_hh]``), float64."""
    return sum(c.abs().double().sum(-1) for c in couplings)  # type: ignore[return-value]


def budget_scale(l1: Tensor, budget: float, columns: int, dtype: torch.dtype) -> Tensor:
    """Factor per row (float64, ≤ 1) that brings row norms ``l1`` within ``budget``: 1 inside
    it, ``budget' / l1`` outside, with ``budget'`` a hair below ``budget`` — by
    ``(columns + 4)·eps(dtype)`` relative — so that rounding the scaled entries to ``dtype``
    cannot push a row sum above ``budget``."""
    inner = budget * (1.0 - (columns + 4) * torch.finfo(dtype).eps)
    return inner / l1.clamp_min(inner)


def connectivity_mask(rows: int, columns: int, limit: int, generator: torch.Generator) -> Tensor:
    """``(rows, columns)`` bool: ``limit`` connections per row drawn uniformly without
    replacement (every entry when ``limit ≥ columns``)."""
    if limit >= columns:
        return torch.ones(rows, columns, dtype=torch.bool)
    scores = torch.rand(rows, columns, generator=generator, dtype=torch.float64)
    keep = torch.zeros(rows, columns, dtype=torch.bool)
    return keep.scatter_(1, scores.topk(limit, dim=1).indices, True)


# =============================================================================
# Parametrizations (registered with torch.nn.utils.parametrize)
# =============================================================================
class BoundedWeight(nn.Module):
    """``w = bound * tanh(raw / bound)`` (see the module docstring for why)."""

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.bound = float(bound)

    def forward(self, raw: Tensor) -> Tensor:
        return bounded(raw, self.bound)

    def right_inverse(self, w: Tensor) -> Tensor:
        return bounded_inverse(w, self.bound)

    def extra_repr(self) -> str:
        return f"bound={self.bound:g}"


class QuantizedWeight(nn.Module):
    """Snap to ``levels`` evenly spaced values in ``[-bound, bound]`` (nearest, or toward zero);
    straight-through gradient."""

    def __init__(self, bound: float, levels: int, toward_zero: bool = False) -> None:
        super().__init__()
        self.bound = float(bound)
        self.levels = int(levels)
        self.toward_zero = bool(toward_zero)

    def forward(self, w: Tensor) -> Tensor:
        return quantize_ste(w, self.bound, self.levels, toward_zero=self.toward_zero)

    def right_inverse(self, w: Tensor) -> Tensor:
        return w

    def extra_repr(self) -> str:
        return f"bound={self.bound:g}, levels={self.levels}" + (", toward_zero" if self.toward_zero else "")


class FrozenRows(nn.Module):
    """Entries where ``mask`` is set are replaced by the buffer ``value``; zero gradient there."""

    def __init__(self, mask: Tensor, value: Tensor) -> None:
        super().__init__()
        if mask.shape != value.shape or mask.dtype != torch.bool:
            raise ValueError("FrozenRows needs a bool mask and a value of the same shape")
        self.register_buffer("mask", mask)
        self.register_buffer("value", value)

    def forward(self, raw: Tensor) -> Tensor:
        return torch.where(self.mask, self.value, raw)

    def right_inverse(self, w: Tensor) -> Tensor:
        return torch.where(self.mask, self.value, w)

    def extra_repr(self) -> str:
        return f"frozen={int(self.mask.sum())}/{self.mask.numel()}"


class RowBudget(nn.Module):
    """Row budget shared by several matrices: ``Σ_j |W_ij| ≤ budget`` over this tensor and its
    ``partners`` (the other matrices feeding the same rows) together.

    Design. The constraint couples tensors (a gate row's input and recurrent weights share one
    budget), but a parametrization sees only its own tensor. Each tensor therefore gets one
    ``RowBudget`` that also reads its partners' values *before* their own ``RowBudget`` (through
    their parametrization chains: bound, fan-in mask), forms the joint row norm
    ``n_i = Σ_j |W_ij|`` over all of them and multiplies its rows by the shared factor
    ``s_i = min(1, budget / n_i)`` (:func:`budget_scale`). Every tensor of a row applies the
    same ``s_i``, so the row's total is ``s_i·n_i ≤ budget`` exactly after every optimizer step;
    equivalently, each tensor gets the share of the budget proportional to its current norm. A
    fixed split (say by column count) would starve a one-column input of almost all of its
    budget and forbid moving budget between input and recurrence.

    Inside the budget the transform is the identity (the weights start as they were, the
    gradient is untouched); outside it is ``w·budget/n``, whose Jacobian passes every direction
    except the one that only grows the norm, and also sends gradient to the partners (their
    norm sets the factor). Partners are held in a plain list, not as submodules, so they are
    neither registered twice nor saved in the state dict.
    """

    def __init__(self, budget: float, partners: list[tuple[nn.Module, str]]) -> None:
        super().__init__()
        self.budget = float(budget)
        self.partners = list(partners)

    def forward(self, w: Tensor) -> Tensor:
        others = [before_budget(m, a) for m, a in self.partners]
        columns = w.shape[-1] + sum(o.shape[-1] for o in others)
        scale = budget_scale(row_l1(w, *others), self.budget, columns, w.dtype)
        return (w.double() * scale.unsqueeze(-1)).to(w.dtype)

    def right_inverse(self, w: Tensor) -> Tensor:
        return w

    def extra_repr(self) -> str:
        return f"budget={self.budget:g}, partners={[a for _, a in self.partners]}"


def before_budget(module: nn.Module, attr: str) -> Tensor:
    """The tensor ``module.attr`` through its parametrizations up to (not including) its :class:`RowBudget`."""
    if not parametrize.is_parametrized(module, attr):
        return getattr(module, attr)
    chain = module.parametrizations[attr]  # type: ignore[index]
    value = chain.original
    for transform in chain:
        if isinstance(transform, RowBudget):
            break
        value = transform(value)
    return value


__all__ = ["BoundedWeight", "FrozenRows", "QuantizedWeight", "RowBudget", "before_budget", "bounded",
           "bounded_inverse", "budget_scale", "connectivity_mask", "excitatory_flux", "fan_in", "flux_window_excess",
           "quantize", "quantize_ste", "row_l1"]
