"""Apply a hardware profile to a model as removable transforms: :func:`constrain`,
:func:`unconstrain`, and the one way to freeze bias rows, :func:`freeze_biases`.

:func:`constrain` finds the recurrent layers of a model through the layer contract
(:func:`soensim.layouts.find_layers`) and registers ``torch.nn.utils.parametrize``
transforms (:mod:`soensim.constraints.transforms`) so that training can only reach what a
:class:`~soensim.profiles.HardwareProfile` can realise:

* **fixed time constants** — when the profile fixes time constants
  (``tau_range``/``tau_values``) and ``"update_bias"`` is not a trainable role, the bias
  rows of the decay gate are frozen at ``layout.decay.bias_for_tau(tau, dt)`` for
  ``tau = profile.unit_taus(H, seed + k, spread=spread)``: one entry per block the
  mechanism names (e.g. the refine block at 0, so that training it cannot shift τ). The
  value goes into ``bias_ih`` and 0 into the matching ``bias_hh`` rows (the gate sees
  their sum). ``k`` counts the recurrent cells (layer × direction) in model order, so
  stacked layers get distinct, reproducible time constants. ``constrain(update_bias=...)``
  freezes given decay-block values instead. With ``"update_bias"`` not trainable but no
  fabricated time constants, the update-bias rows are frozen at 0 (the b_z = 0 ablation
  of Malandain 2026, "Ablation of Gate Biases in GRUs for s-CIFAR-10").
* **other frozen biases** — ``"reset_bias"`` not trainable: the reset rows at
  ``profile.reset_bias``; ``"candidate_bias"`` not trainable: the candidate rows at 0;
  LSTM input/output gate biases carry no role and stay free. ``"weights"``,
  ``"flux_offset"``, ``"bias_current"`` not trainable: those whole tensors frozen at
  their (constrained) value.
* **bounded couplings** — with ``profile.coupling_max`` every coupling matrix of the
  recurrent cells (input, recurrent and projection weights) is bounded by
  ``|w| ≤ J_max``; biases are not couplings (they stand for bias currents and flux
  offsets) and layers outside the recurrent cells (a linear read-out) are software.
* **flux budget** — with ``profile.flux_budget`` = B every gate row (SOEN: every unit) keeps
  ``Σ_j |W_ij| ≤ B`` over its input and recurrent weights together
  (:class:`~soensim.constraints.transforms.RowBudget`), exactly after every optimizer step.
* **fan-in** — with ``profile.max_fan_in`` = F each row keeps F connections over its input and
  recurrent weights, a fixed mask drawn from ``seed`` (the other entries are held at 0).
* **quantized couplings** — with ``profile.weight_levels`` = L the effective weights are
  snapped to L evenly spaced levels in ``[-J_max, J_max]`` (toward zero under a budget or a
  mask, which rounding must not undo); the gradient passes straight through the rounding.

Layers: everything :func:`soensim.layout` describes, constrained in place — except
``torch.nn.GRU``/``nn.LSTM``, whose kernels read a cached list of flattened weights that
a parametrization cannot reach: convert those first with ``gates.convert(model)`` (the
equivalent GatedGRU/GatedLSTM, same weights, equal outputs). ``nn.GRUCell``/``nn.LSTMCell``
read their weights by attribute and are constrained in place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..layouts import layout, owner
from ..profiles import HardwareProfile
from .rules import Violation, check
from .sites import Site, find_sites, per_cell, require, step
from .transforms import BoundedWeight, FrozenRows, QuantizedWeight, RowBudget, connectivity_mask

#: The parametrizations soensim registers (and :func:`unconstrain` removes).
OURS = (BoundedWeight, QuantizedWeight, FrozenRows, RowBudget)
#: Offset of the fan-in masks' seed (cell ``k`` draws from ``MASK_STREAM + seed + k``), so that
#: the masks are not drawn from the same stream as anything else seeded by ``seed``.
MASK_STREAM = 15_485_863


@dataclass(frozen=True)
class AppliedTransform:
    """One transform registered on one parameter."""

    parameter: str
    kind: str  # "bounded", "fan_in_mask", "flux_budget", "quantized", "frozen_rows", "frozen"
    detail: str


@dataclass
class ConstraintReport:
    """What :func:`constrain` did; ``remove()`` undoes it (same as :func:`unconstrain`).

    ``taus``/``biases`` map each cell label (``"<module>.l0"``, ``"<module>.cell"``) to the
    design time constants (seconds) and the frozen decay-gate biases (float64);
    ``update_bias`` is the explicit value given to :func:`constrain` (None: the profile's).
    :meth:`check` checks the model against the profile with the same arguments.
    """

    model: nn.Module = field(repr=False)
    profile: HardwareProfile
    dt: float
    seed: int
    spread: bool
    layers: tuple[str, ...]
    transforms: tuple[AppliedTransform, ...] = field(repr=False)
    taus: dict[str, Tensor] = field(default_factory=dict, repr=False)
    biases: dict[str, Tensor] = field(default_factory=dict, repr=False)
    update_bias: Tensor | float | None = field(default=None, repr=False)

    def remove(self) -> list[str]:
        return unconstrain(self.model)

    def check(self, **options: Any) -> list[Violation]:
        """:func:`soensim.constraints.check` of the model against this profile at the step, seed,
        spread and update biases :func:`constrain` used (``options`` go to ``check``)."""
        return check(self.model, self.profile, dt=self.dt, seed=self.seed, spread=self.spread,
                     update_bias=self.update_bias, **options)

    def __str__(self) -> str:
        lines = [
            f"constraints from profile {self.profile.name!r} (dt={self.dt:g} s, seed={self.seed}, spread={self.spread})",
            f"layers: {', '.join(self.layers) or '-'}",
        ]
        lines += [f"  {t.parameter}: {t.kind} ({t.detail})" for t in self.transforms]
        return "\n".join(lines)


@dataclass
class FrozenBiases:
    """Handle returned by :func:`freeze_biases`: the frozen ``blocks`` (full name → rows) and
    the ``parameters`` carrying them; ``remove()`` lifts the freeze (the values stay)."""

    blocks: dict[str, slice]
    parameters: tuple[str, ...]
    _targets: list[tuple[nn.Module, str, str]] = field(default_factory=list, repr=False)

    @property
    def active(self) -> bool:
        return bool(self._targets)

    def remove(self) -> list[str]:
        """Remove the freeze's transforms (values left in place); returns the names released."""
        live = [t for t in self._targets if parametrize.is_parametrized(t[0], t[1])]
        self._targets.clear()
        return release(live)


# =============================================================================
# Planning: collect every frozen entry first, so that an error leaves the model untouched
# =============================================================================
@dataclass
class _Freeze:
    module: nn.Module
    attr: str
    name: str
    mask: Tensor
    value: Tensor
    what: list[str]


class _Plan:
    """Frozen entries per tensor, registered as one :class:`FrozenRows` each by :meth:`apply`."""

    def __init__(self) -> None:
        self.freezes: dict[tuple[int, str], _Freeze] = {}

    def freeze(self, site: Site, path: str, rows: slice | None, value: Tensor | float | None, what: str) -> None:
        """Freeze ``rows`` of the tensor at ``path`` at ``value`` (``rows`` None: the whole tensor at
        ``value``, or at its current value when ``value`` is None)."""
        module, attr = owner(site.layer, path)
        f = self.freezes.get((id(module), attr))
        if f is None:
            t = site.value(path)
            f = self.freezes[(id(module), attr)] = _Freeze(
                module, attr, site.qual(path), torch.zeros(t.shape, dtype=torch.bool, device=t.device), t.clone(), [])
        sel = slice(None) if rows is None else rows
        f.mask[sel] = True
        if value is not None:
            f.value[sel] = torch.as_tensor(value, dtype=torch.float64).to(device=f.value.device, dtype=f.value.dtype)
        f.what.append(what)

    def apply(self) -> list[AppliedTransform]:
        out = []
        for f in self.freezes.values():
            parametrize.register_parametrization(f.module, f.attr, FrozenRows(f.mask, f.value))
            whole = bool(f.mask.all()) and len(f.what) == 1
            out.append(AppliedTransform(f.name, "frozen" if whole else "frozen_rows", "; ".join(f.what)))
        return out


def _freeze_block(plan: _Plan, site: Site, block: str, value: Tensor | float | None, what: str) -> None:
    """Freeze one bias block of one cell: ``bias_ih`` rows at ``value``, ``bias_hh`` rows at 0.

    ``value`` None keeps the current effective value ``bias_ih + bias_hh``; a GRU candidate
    block keeps both halves as they are instead (its ``bias_hh`` acts inside ``r·(W_hn h + b_hn)``,
    so moving it into ``bias_ih`` would change the layer's function).
    """
    cell, lay = site.cell, site.layout
    rows = lay.block(block)
    if not cell.biases:
        raise ValueError(f"{site.label}: layer has no biases (bias=False); cannot freeze block {block!r}")
    if value is None and lay.core == "gru" and lay.named(block) == lay.candidate_block:
        for b in cell.biases:
            plan.freeze(site, b, rows, site.value(b)[rows], f"{block}: kept")
        return
    if value is None:
        value = site.rows_sum(cell.biases, rows)
    first, *rest = cell.biases
    plan.freeze(site, first, rows, value, what)
    for b in rest:
        plan.freeze(site, b, rows, 0.0, f"{lay.named(block)}: 0")


def _refuse_torch_rnn(sites: list[Site], fn: str) -> None:
    for s in sites:
        if isinstance(s.layer, nn.RNNBase):
            raise ValueError(
                f"{fn}: {s.layer_name or '<model>'} is a torch.nn.{type(s.layer).__name__}, whose cached flat weights "
                "cannot be parametrized; convert it first with gates.convert(model) (same weights, equal outputs)")


def _refuse_parametrized(site: Site, paths: list[str] | tuple[str, ...]) -> None:
    for path in paths:
        module, attr = owner(site.layer, path)
        if parametrize.is_parametrized(module, attr):
            ours = all(isinstance(p, OURS) for p in module.parametrizations[attr])  # type: ignore[index]
            raise ValueError(f"{site.qual(path)} is already " + (
                "constrained; call unconstrain(model) first" if ours else
                "parametrized by another transform; remove it first"))


def _range(v: Tensor) -> str:
    lo, hi = v.min().item(), v.max().item()
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g}…{hi:.3g}"


# =============================================================================
# constrain / unconstrain / freeze_biases
# =============================================================================
def constrain(
    model: nn.Module,
    profile: HardwareProfile,
    *,
    seed: int = 0,
    dt: float | None = None,
    spread: bool = False,
    update_bias: Tensor | float | None = None,
) -> ConstraintReport:
    """Apply ``profile``'s hardware constraints to every recurrent layer of ``model`` in place.

    Args:
        model: a module containing recurrent layers (``gates.GatedGRU``/``GatedLSTM``,
            ``SOENLayer``, ``nn.GRUCell``/``nn.LSTMCell``, any layer declaring ``layout()``).
        profile: the :class:`~soensim.profiles.HardwareProfile`.
        seed: seed of the unit time constants and fan-in masks; cell ``k`` (layer × direction,
            model order) uses ``profile.unit_taus(H, seed + k, spread=spread)`` and the mask
            drawn from ``MASK_STREAM + seed + k``.
        dt: step in seconds the biases are computed for (default ``profile.dt``).
        spread: draw each unit's τ with the profile's fabrication spread.
        update_bias: explicit decay-block biases to freeze instead of the profile's τ values
            (a number, an ``(H,)`` tensor for every cell or ``(cells, H)``); frozen whatever
            the profile's roles — for ablations such as ``b_z`` fixed at 0 or at its initial draw.

    Returns:
        a :class:`ConstraintReport`; ``report.remove()`` or :func:`unconstrain` undoes it.

    Raises:
        TypeError: model/profile of the wrong type.
        ValueError: no recurrent layer; an ``nn.GRU``/``nn.LSTM`` (convert it with
            ``gates.convert``); a tensor already constrained/parametrized; a mechanism that
            is not leaky (cumax/master gates) or a layer without biases where time constants
            must be fixed; ``nn.RNN`` layers.
    """
    require(model, profile, "constrain")
    dt_s = step(profile, dt)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {seed!r}")
    sites = find_sites(model)
    if not sites:
        raise ValueError(f"constrain: {type(model).__name__} has no recurrent layer (a gates layer, SOENLayer, "
                         "nn.GRUCell, nn.LSTMCell or a module declaring layout())")
    _refuse_torch_rnn(sites, "constrain")
    roles = profile.trainable
    explicit = update_bias is not None
    fix_tau = explicit or (profile.fixed_time_constants and "update_bias" not in roles)
    zero_update = not explicit and not profile.fixed_time_constants and "update_bias" not in roles

    plan = _Plan()
    taus: dict[str, Tensor] = {}
    biases: dict[str, Tensor] = {}
    for site in sites:
        cell, lay = site.cell, site.layout
        k_in_layer = lay.cells.index(cell)
        own = [p for p in lay.params if p.cell == k_in_layer and p.role in ("flux_offset", "bias_current")]
        _refuse_parametrized(site, list(cell.weights) + list(cell.biases) + [p.name for p in own])
        if site.gated:
            _plan_gate_biases(plan, site, profile, dt_s, seed, spread, update_bias, len(sites), taus, biases,
                              fix_tau=fix_tau, zero_update=zero_update)
        elif explicit:
            raise ValueError(f"{site.label}: a {lay.core!r} layer has no decay gate; update_bias applies to GRU/LSTM "
                             "cores only")
        for p in own:
            if p.role not in roles:
                plan.freeze(site, p.name, None, None, f"{p.role} not trainable")

    applied = plan.apply()
    for site in sites:
        applied += _constrain_weights(site, profile, seed)
    layers = tuple(dict.fromkeys(s.layer_name or "<model>" for s in sites))
    return ConstraintReport(model, profile, dt_s, seed, spread, layers, tuple(applied), taus, biases, update_bias)


def _constrain_weights(site: Site, profile: HardwareProfile, seed: int) -> list[AppliedTransform]:
    """Register the coupling transforms of one cell, per matrix in this order: bound
    (``coupling_max``), fan-in mask (``max_fan_in``), flux budget (``flux_budget``, shared by the
    input and recurrent matrices of a row), quantization (``weight_levels``; toward zero when a
    mask or budget is present, so that neither can be undone by rounding), frozen (``weights``
    not trainable). The first one registered keeps the effective value equal to the original."""
    j_max, levels, budget, limit = profile.coupling_max, profile.weight_levels, profile.flux_budget, profile.max_fan_in
    row = site.row_couplings
    applied: list[AppliedTransform] = []
    masks: dict[str, Tensor] = {}
    if limit is not None and row:
        widths = [site.value(p).shape[-1] for p in row]
        gen = torch.Generator().manual_seed(MASK_STREAM + seed + site.index)
        keep = connectivity_mask(site.value(row[0]).shape[0], sum(widths), limit, gen)
        if not keep.all():
            masks = dict(zip(row, keep.split(widths, dim=1), strict=True))
    for path in site.cell.weights:
        module, attr = owner(site.layer, path)
        if j_max is not None:
            parametrize.register_parametrization(module, attr, BoundedWeight(j_max))
            applied.append(AppliedTransform(site.qual(path), "bounded", f"|w| ≤ {j_max:g} via tanh"))
        if path in masks:
            value = site.value(path)
            absent = (~masks[path]).to(value.device)
            parametrize.register_parametrization(module, attr, FrozenRows(absent, torch.zeros_like(value)))
            applied.append(AppliedTransform(site.qual(path), "fan_in_mask",
                                            f"≤ {limit} connections per row over {' + '.join(row)} (seed {seed})"))
    if budget is not None:
        for path in row:
            module, attr = owner(site.layer, path)
            partners = [owner(site.layer, q) for q in row if q != path]
            parametrize.register_parametrization(module, attr, RowBudget(budget, partners))
            applied.append(AppliedTransform(site.qual(path), "flux_budget",
                                            f"Σ_j |w_ij| ≤ {budget:g} over {' + '.join(row)}"))
    for path in site.cell.weights:
        module, attr = owner(site.layer, path)
        if levels is not None:
            toward_zero = path in row and (bool(masks) or budget is not None)
            parametrize.register_parametrization(module, attr, QuantizedWeight(j_max, levels, toward_zero))  # type: ignore[arg-type]
            applied.append(AppliedTransform(site.qual(path), "quantized", f"{levels} levels in ±{j_max:g}"
                                            + (", toward zero" if toward_zero else "")))
        if "weights" not in profile.trainable:
            current = site.value(path).clone()
            mask = torch.ones(current.shape, dtype=torch.bool, device=current.device)
            parametrize.register_parametrization(module, attr, FrozenRows(mask, current))
            applied.append(AppliedTransform(site.qual(path), "frozen", "weights not trainable"))
    return applied


def _plan_gate_biases(plan: _Plan, site: Site, profile: HardwareProfile, dt: float, seed: int, spread: bool,
                      update_bias: Tensor | float | None, n_cells: int, taus: dict[str, Tensor],
                      biases: dict[str, Tensor], *, fix_tau: bool, zero_update: bool) -> None:
    """The bias freezes of one GRU/LSTM cell under ``profile`` (see the module docstring)."""
    cell, lay = site.cell, site.layout
    roles, explicit = profile.trainable, update_bias is not None
    if fix_tau or zero_update:
        if not lay.leaky and not explicit:
            raise ValueError(
                f"{site.label}: gate mechanism {lay.mechanism!r} is not a leaky (sigmoid-family) decay — cumax/master "
                "gates have no per-unit time constant, so fixed time constants cannot be imposed; use a "
                "sigmoid-family variant ('-', 'C', 'U', 'R', 'UR', 'SST', 'SSTN') or a profile with 'update_bias' trainable")
        if not cell.biases:
            raise ValueError(f"{site.label}: layer has no biases (bias=False); cannot fix its time constants")
    if fix_tau:
        if explicit:
            b = per_cell(update_bias, lay.hidden, site.index, n_cells, "update_bias")  # type: ignore[arg-type]
            tau = site.tau_for_bias(b, dt)
            design = {lay.decay_block: b}
            tag = f"given bias ∈ [{b.min().item():.3g}, {b.max().item():.3g}]"
        else:
            tau = profile.unit_taus(lay.hidden, seed + site.index, spread=spread)
            design = site.design_biases(tau, dt)
            tag = f"τ ∈ [{tau.min().item():.3g}, {tau.max().item():.3g}] s"
        for block, values in design.items():
            if not torch.isfinite(values).all():
                raise ValueError(f"{site.label}: non-finite {block!r} bias for τ in [{tau.min():g}, {tau.max():g}] s "
                                 f"at dt={dt:g} s")
            what = tag if block == lay.decay_block else f"{_range(values)} (τ fixed)"
            _freeze_block(plan, site, block, values, f"{block}: {what}")
        biases[site.label] = design[lay.decay_block]  # type: ignore[index]
        if tau is not None:
            taus[site.label] = tau
    elif zero_update:
        for block in lay.blocks_of_role("update_bias"):
            _freeze_block(plan, site, block, 0.0, f"{block}: 0")
    if "reset_bias" not in roles:
        for block in lay.blocks_of_role("reset_bias"):
            _freeze_block(plan, site, block, profile.reset_bias, f"{block}: {profile.reset_bias:g}")
    if "candidate_bias" not in roles:
        for block in lay.blocks_of_role("candidate_bias"):
            _freeze_block(plan, site, block, 0.0, f"{block}: 0")


def freeze_biases(layer: nn.Module, blocks: Mapping[str, float | Tensor | None]) -> FrozenBiases:
    """Freeze bias blocks of every cell of ``layer``: replaced in the forward pass, so neither
    the gradient nor AdamW's weight decay can move them (a :class:`FrozenRows` transform).

    Args:
        layer: one recurrent layer with biases (a gates layer, ``nn.GRUCell``/``nn.LSTMCell``,
            any layer declaring ``layout()``).
        blocks: ``{block: value}`` with blocks by full name or torch letter (``{"z": 0.0, "r": 0.0}``).
            A value is a number, an ``(rows,)`` tensor for every cell or ``(cells, rows)``; it goes
            into ``bias_ih`` with the ``bias_hh`` rows at 0 (the gate sees their sum). None keeps
            the current effective value ``bias_ih + bias_hh`` (a GRU candidate keeps both halves).

    Returns:
        a :class:`FrozenBiases` handle; ``handle.remove()`` lifts the freeze.

    Raises:
        TypeError: ``layer`` is not a recurrent layer, ``blocks`` not a mapping.
        ValueError: an ``nn.GRU``/``nn.LSTM`` (convert it with ``gates.convert``), a layer without
            biases, an unknown block, a bias already constrained.
    """
    if not isinstance(layer, nn.Module):
        raise TypeError(f"freeze_biases: layer must be a torch.nn.Module; got {type(layer).__name__}")
    if not isinstance(blocks, Mapping):
        raise TypeError(f"freeze_biases: blocks must be a mapping {{block: value or None}}; got {type(blocks).__name__}")
    lay = layout(layer)
    sites = [Site("", layer, lay, c, k) for k, c in enumerate(lay.cells)]
    _refuse_torch_rnn(sites, "freeze_biases")
    if lay.core == "soen" or not all(s.cell.biases for s in sites):
        raise ValueError(f"freeze_biases: {type(layer).__name__} has no stacked gate biases to freeze")
    for s in sites:
        _refuse_parametrized(s, s.cell.biases)
    plan, frozen = _Plan(), {}
    for block, value in blocks.items():
        name, rows = lay.named(block), lay.block(block)
        for s in sites:
            v = None if value is None else per_cell(value, rows.stop - rows.start, s.index, len(sites),
                                                    f"the value of block {block!r}")
            _freeze_block(plan, s, block, v, f"{name}: " + ("kept" if v is None else _range(v)))
        frozen[name] = rows
    plan.apply()
    targets = [(f.module, f.attr, f.name) for f in plan.freezes.values()]
    return FrozenBiases(frozen, tuple(t[2] for t in targets), targets)


def release(targets: list[tuple[nn.Module, str, str]]) -> list[str]:
    """Remove the parametrizations of ``(module, attribute, name)`` targets, leaving each
    parameter object in place holding its effective value. All effective values are read
    before the first removal (a transform may read another tensor). Returns the names."""
    with torch.no_grad():
        values = [getattr(m, a).detach().clone() for m, a, _ in targets]
    for (m, a, _), v in zip(targets, values, strict=True):
        parametrize.remove_parametrizations(m, a, leave_parametrized=True)
        with torch.no_grad():
            getattr(m, a).copy_(v)
    return [n for _, _, n in targets]


def unconstrain(model: nn.Module) -> list[str]:
    """Remove every soensim transform, leaving the effective values as plain parameters.

    The parameter objects stay the same (their data becomes the effective value), so an
    existing optimizer keeps working. Returns the qualified names that were released.

    Raises:
        ValueError: a constrained tensor also carries a foreign parametrization.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"unconstrain: model must be a torch.nn.Module; got {type(model).__name__}")
    targets: list[tuple[nn.Module, str, str]] = []
    for mname, m in model.named_modules():
        if not parametrize.is_parametrized(m):
            continue
        for attr in list(m.parametrizations.keys()):  # type: ignore[union-attr]
            ours = [isinstance(p, OURS) for p in m.parametrizations[attr]]  # type: ignore[index]
            if not any(ours):
                continue
            if not all(ours):
                raise ValueError(f"{mname}.{attr} mixes soensim constraints with other parametrizations; "
                                 "remove those first")
            targets.append((m, attr, f"{mname}.{attr}" if mname else attr))
    return release(targets)


__all__ = ["AppliedTransform", "ConstraintReport", "FrozenBiases", "constrain", "freeze_biases", "unconstrain"]
