"""Named rules that check a model against a hardware profile: :func:`check`.

:func:`check` reports :class:`Violation` s of the rules in :data:`RULES` and works on
constrained and unconstrained models alike (it reads effective values and changes
nothing). It accepts every layer :func:`soensim.layout` describes, ``torch.nn.GRU`` and
``nn.LSTM`` included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..profiles import HardwareProfile
from .sites import Site, find_sites, per_cell, require, step
from .transforms import excitatory_flux, fan_in, flux_window_excess, quantize, row_l1

#: Relative τ deviation (in multiples of ``profile.tau_spread``) tolerated by the
#: time-constant range rule: fabrication spread is Gaussian, 5σ keeps false alarms
#: below one in a million units.
SPREAD_SIGMAS = 5.0

#: Design fan-in limit of a SOEN neuron without a collection coil (Shainline et al.,
#: phenomenological model of superconducting optoelectronic loop neurons; docs/physics.md);
#: used by the ``fan_in`` rule when ``check(..., max_fan_in=FAN_IN_LIMIT)`` is passed.
FAN_IN_LIMIT = 20


@dataclass(frozen=True)
class Finding:
    """One rule's result on one parameter: ``value`` is the worst value found (an offending one
    when ``passed`` is false), ``limit`` what the rule allows."""

    parameter: str
    rule: str
    value: float
    limit: float | str
    message: str
    passed: bool = True

    def __str__(self) -> str:
        return f"[{self.rule}] {self.parameter}: {self.message}"


@dataclass(frozen=True)
class Violation(Finding):
    """One broken rule on one parameter; ``value`` is the worst offending value."""

    passed: bool = False


@dataclass
class CheckContext:
    """Everything a rule needs: the profile, the step, the cells found in the model and the
    optional arguments of :func:`check`."""

    profile: HardwareProfile
    dt: float
    seed: int
    spread: bool
    atol: float
    sites: list[Site]
    s_max: float | Tensor | None = None
    phi_th: float | Tensor | None = None
    max_fan_in: int | None = None
    update_bias: Tensor | float | None = None

    def weight_matrices(self) -> Iterator[tuple[str, Tensor, str, Site]]:
        """(qualified name, effective matrix, kind, site) for every coupling matrix; kind is the
        layout's ``"input"``, ``"recurrent"`` or ``"projection"``."""
        for site in self.sites:
            kinds = {p.name: p.kind for p in site.layout.params}
            for w in site.cell.weights:
                yield site.qual(w), site.value(w), kinds.get(w, "input"), site

    def gate_sites(self) -> Iterator[Site]:
        """The GRU/LSTM-core cells (with stacked gate rows)."""
        return (s for s in self.sites if s.gated)


Rule = Callable[[CheckContext], Iterable[Finding]]

#: Named rules: name -> function(CheckContext) -> findings (a :class:`Violation` per broken
#: parameter, a passed :class:`Finding` per complying one). ``check(rules=[...])`` selects.
RULES: dict[str, Rule] = {}


def _rule(name: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn

    return deco


@_rule("coupling_bound")
def _coupling_bound(ctx: CheckContext) -> Iterator[Finding]:
    """Every coupling |w| ≤ profile.coupling_max (+atol)."""
    j = ctx.profile.coupling_max
    if j is None:
        return
    for name, w, _, _ in ctx.weight_matrices():
        a = w.abs()
        bad = a > j + ctx.atol
        worst = a.max().item() if a.numel() else 0.0
        if bad.any():
            yield Violation(name, "coupling_bound", worst, j,
                            f"{int(bad.sum())} of {w.numel()} weights exceed |J| ≤ {j:g} (max {worst:.4g})")
        else:
            yield Finding(name, "coupling_bound", worst, j, f"all {w.numel()} weights within |J| ≤ {j:g} (max {worst:.4g})")


@_rule("quantization_levels")
def _quantization_levels(ctx: CheckContext) -> Iterator[Finding]:
    """Every coupling lies (within atol) on the profile's weight grid, or is exactly 0: an absent
    connection (a fan-in mask, or a weight rounded toward zero below the smallest level)."""
    j, levels = ctx.profile.coupling_max, ctx.profile.weight_levels
    if j is None or levels is None:
        return
    for name, w, _, _ in ctx.weight_matrices():
        dist = torch.where(w == 0, 0.0, (w - quantize(w, j, levels)).abs())
        bad = dist > ctx.atol
        worst = dist.max().item() if dist.numel() else 0.0
        if bad.any():
            yield Violation(name, "quantization_levels", worst, ctx.atol,
                            f"{int(bad.sum())} of {w.numel()} weights are off the {levels}-level grid in ±{j:g} "
                            f"(max distance {worst:.3g})")
        else:
            yield Finding(name, "quantization_levels", worst, ctx.atol,
                          f"all {w.numel()} weights on the {levels}-level grid in ±{j:g} or 0 (max distance {worst:.3g})")


def _not_leaky(site: Site, rule: str) -> Violation | None:
    lay = site.layout
    if not lay.leaky:
        return Violation(site.qual(site.cell.bias_ih or site.layer_name), rule, math.nan, "leaky decay gate",
                         f"gate mechanism {lay.mechanism!r} has no per-unit leaky decay; fabricated time constants "
                         "cannot be realised")
    if not site.cell.biases:
        return Violation(site.label, rule, math.nan, "decay bias", "layer has no biases; its time constants cannot be set")
    return None


def _expected_biases(ctx: CheckContext, site: Site) -> dict[str, Tensor]:
    lay = site.layout
    if ctx.update_bias is not None:
        n = len(ctx.sites)
        return {lay.decay_block: per_cell(ctx.update_bias, lay.hidden, site.index, n, "update_bias")}  # type: ignore[dict-item]
    tau = ctx.profile.unit_taus(lay.hidden, ctx.seed + site.index, spread=ctx.spread)
    return site.design_biases(tau, ctx.dt)


@_rule("frozen_time_constant")
def _frozen_time_constant(ctx: CheckContext) -> Iterator[Finding]:
    """Decay-gate bias equals the profile's design value (seeded per cell) when τ is fixed and
    not trainable, or the ``update_bias`` given to :func:`check`."""
    p = ctx.profile
    explicit = ctx.update_bias is not None
    if not explicit and (not p.fixed_time_constants or "update_bias" in p.trainable):
        return
    for site in ctx.gate_sites():
        bad = _not_leaky(site, "frozen_time_constant")
        if bad and not (explicit and site.cell.biases):
            yield bad
            continue
        present = site.cell.biases
        worst, parts = 0.0, []
        for block, want in _expected_biases(ctx, site).items():
            err = (site.rows_sum(present, site.layout.block(block)) - want).abs()
            off = err > ctx.atol
            worst = max(worst, err.max().item())
            if off.any():
                parts.append(f"{int(off.sum())} of {err.numel()} units of gate {block!r}")
        if parts:
            yield Violation(
                site.qual(present[0]), "frozen_time_constant", worst, ctx.atol,
                f"{', '.join(parts)} (bias_ih + bias_hh) differ from the "
                + ("given update_bias (" if explicit else f"frozen design bias (seed {ctx.seed + site.index}, ")
                + f"max |Δb| {worst:.3g})",
            )
        else:
            yield Finding(site.qual(present[0]), "frozen_time_constant", worst, ctx.atol,
                          f"decay-gate biases at their frozen values (max |Δb| {worst:.3g})")


@_rule("time_constant_range")
def _time_constant_range(ctx: CheckContext) -> Iterator[Finding]:
    """Decay-gate bias maps to a fabricable τ: inside [τ_min, τ_max] or at a fabricated value.

    With ``check(spread=True)`` the bands widen by ``SPREAD_SIGMAS * tau_spread`` (relative);
    the comparison is made in bias space and widened by ``atol``."""
    p = ctx.profile
    if not p.fixed_time_constants:
        return
    rel = SPREAD_SIGMAS * p.tau_spread if ctx.spread else 0.0
    if p.tau_range is not None:
        bands = [(p.tau_range[0] * (1 - rel), p.tau_range[1] * (1 + rel))]
        label = f"[{p.tau_range[0]:.3g}, {p.tau_range[1]:.3g}] s"
    else:
        bands = [(v * (1 - rel), v * (1 + rel)) for v in p.tau_values]  # type: ignore[union-attr]
        label = "{" + ", ".join(f"{v:.3g}" for v in p.tau_values) + "} s"  # type: ignore[union-attr]
    if rel:
        label += f" ± {SPREAD_SIGMAS:g}σ ({rel:.2g})"
    for site in ctx.gate_sites():
        bad = _not_leaky(site, "time_constant_range")
        if bad:
            yield bad
            continue
        block = site.layout.decay_block
        b = site.rows_sum(site.cell.biases, site.layout.block(block))  # type: ignore[arg-type]
        ok = torch.zeros_like(b, dtype=torch.bool)
        for lo, hi in bands:  # in bias space (any monotone τ ↔ bias map), widened by atol
            ends = site.design_biases(torch.tensor([max(lo, 1e-300), hi], dtype=torch.float64), ctx.dt)[block]
            ok |= (b >= ends.min().item() - ctx.atol) & (b <= ends.max().item() + ctx.atol)
        if ok.all():
            taus = site.tau_for_bias(b, ctx.dt)  # a leaky site: never None
            yield Finding(site.qual(site.cell.biases[0]), "time_constant_range", float(taus.max()), label,  # type: ignore[union-attr]
                          f"all {b.numel()} units of gate {block!r} inside {label} (τ from {float(taus.min()):.3g} "  # type: ignore[union-attr]
                          f"to {float(taus.max()):.3g} s)")  # type: ignore[union-attr]
            continue
        t_bad = site.tau_for_bias(b, ctx.dt)[~ok]  # type: ignore[index]
        # the worst offender: farthest (in log τ) from the allowed bands
        d = torch.stack([torch.where(t_bad < lo, (lo / t_bad).log(), (t_bad / hi).log()).clamp_min(0)
                         for lo, hi in bands]).amin(0)
        worst = t_bad[d.argmax()].item()
        yield Violation(
            site.qual(site.cell.biases[0]), "time_constant_range", worst, label,
            f"{int((~ok).sum())} of {b.numel()} units of gate {block!r} have a time constant outside {label} "
            f"(worst τ = {worst:.3g} s)",
        )


@_rule("frozen_bias")
def _frozen_bias(ctx: CheckContext) -> Iterator[Finding]:
    """Non-trainable reset/candidate (and τ-less update) biases hold their fixed values."""
    p = ctx.profile
    for site in ctx.gate_sites():
        lay, present = site.layout, site.cell.biases
        if not present:
            continue
        targets: list[tuple[str, float]] = []
        if "reset_bias" not in p.trainable:
            targets += [(b, p.reset_bias) for b in lay.blocks_of_role("reset_bias")]
        if "candidate_bias" not in p.trainable:
            targets += [(b, 0.0) for b in lay.blocks_of_role("candidate_bias")]
        if not p.fixed_time_constants and "update_bias" not in p.trainable:
            targets += [(b, 0.0) for b in lay.blocks_of_role("update_bias")]
        for block, want in targets:
            # A GRU candidate's bias_hh sits inside r·(W_hn h + b_hn): both halves must be 0.
            # Elsewhere only the sum bias_ih + bias_hh acts.
            gru_candidate = lay.core == "gru" and block == lay.candidate_block
            for group in ([[q] for q in present] if gru_candidate else [list(present)]):
                err = (site.rows_sum(group, lay.block(block)) - want).abs()
                off = err > ctx.atol
                worst = err.max().item()
                if off.any():
                    yield Violation(site.qual(group[0]), "frozen_bias", worst, want,
                                    f"{int(off.sum())} rows of gate {block!r} ({' + '.join(group)}) differ from the "
                                    f"fixed value {want:g} (max |Δ| {worst:.3g})")
                else:
                    yield Finding(site.qual(group[0]), "frozen_bias", worst, want,
                                  f"gate {block!r} ({' + '.join(group)}) at {want:g} (max |Δ| {worst:.3g})")


@_rule("excitatory_flux_window")
def _excitatory_flux_window(ctx: CheckContext) -> Iterator[Finding]:
    """Σ_{J>0} J·s_max ≤ 0.5 − φ_th per receiving unit, on the recurrent couplings.

    ``s_max``/``phi_th`` come from :func:`check`, or for SOEN-core layers from the layer's own
    ``s_max``/``phi_th`` attributes. Input and projection weights are skipped: their senders
    are not SOEN states bounded by ``s_max``."""
    for name, J, kind, site in ctx.weight_matrices():
        if kind != "recurrent":
            continue
        native = not site.gated
        s_max = ctx.s_max if ctx.s_max is not None else (getattr(site.layer, "s_max", None) if native else None)
        phi_th = ctx.phi_th if ctx.phi_th is not None else (getattr(site.layer, "phi_th", None) if native else None)
        if s_max is None or phi_th is None:
            continue
        excess = flux_window_excess(J.double(), s_max, phi_th)
        bad = excess > ctx.atol
        worst = excitatory_flux(J.double(), s_max).max().item()
        lim = float((0.5 - torch.as_tensor(phi_th, dtype=torch.float64)).min())
        if bad.any():
            yield Violation(name, "excitatory_flux_window", worst, lim,
                            f"{int(bad.sum())} of {J.shape[0]} units can receive Σ_(J>0) J·s_max up to {worst:.4g} "
                            f"> 0.5 − φ_th = {lim:.4g}")
        else:
            yield Finding(name, "excitatory_flux_window", worst, lim,
                          f"every unit's Σ_(J>0) J·s_max (max {worst:.4g}) within 0.5 − φ_th")


@_rule("fan_in")
def _fan_in(ctx: CheckContext) -> Iterator[Finding]:
    """Connections per receiving row ≤ max_fan_in (input + recurrent weights of a row together)."""
    limit = ctx.max_fan_in if ctx.max_fan_in is not None else ctx.profile.max_fan_in
    if limit is None:
        return
    for site in ctx.sites:
        mats = site.row_couplings
        if not mats:
            continue
        counts = sum(fan_in(site.value(w), ctx.atol) for w in mats)
        bad = counts > limit
        worst = int(counts.max())
        if bad.any():
            yield Violation(site.qual(" + ".join(mats)), "fan_in", float(worst), float(limit),
                            f"{int(bad.sum())} units have fan-in above {limit} (max {worst})")
        else:
            yield Finding(site.qual(" + ".join(mats)), "fan_in", float(worst), float(limit),
                          f"every unit's fan-in within {limit} (max {worst})")


@_rule("flux_budget")
def _flux_budget(ctx: CheckContext) -> Iterator[Finding]:
    """Σ_j |W_ij| ≤ profile.flux_budget (+atol) per row, input and recurrent weights of the row together."""
    budget = ctx.profile.flux_budget
    if budget is None:
        return
    for site in ctx.sites:
        mats = site.row_couplings
        if not mats:
            continue
        total = row_l1(*(site.value(w) for w in mats))
        bad = total > budget + ctx.atol
        worst = total.max().item()
        if bad.any():
            yield Violation(site.qual(" + ".join(mats)), "flux_budget", worst, budget,
                            f"{int(bad.sum())} of {total.numel()} rows receive Σ_j |W_ij| up to {worst:.4g} "
                            f"> flux_budget {budget:g}")
        else:
            yield Finding(site.qual(" + ".join(mats)), "flux_budget", worst, budget,
                          f"every row's Σ_j |W_ij| (max {worst:.4g}) within flux_budget {budget:g}")


def rule_findings(
    model: nn.Module,
    profile: HardwareProfile,
    *,
    dt: float | None = None,
    seed: int = 0,
    spread: bool = False,
    atol: float = 1e-6,
    rules: Sequence[str] | None = None,
    s_max: float | Tensor | None = None,
    phi_th: float | Tensor | None = None,
    max_fan_in: int | None = None,
    update_bias: Tensor | float | None = None,
) -> dict[str, list[Finding]]:
    """Every selected rule → its findings on ``model``: a :class:`Violation` per broken parameter,
    a passed :class:`Finding` (worst value within the limit) per complying one; an empty list
    when the rule does not apply (the profile sets no such limit). Arguments as :func:`check`."""
    require(model, profile, "check")
    if rules is None:
        selected = list(RULES)
    else:
        if isinstance(rules, str):
            rules = [rules]
        unknown = [r for r in rules if r not in RULES]
        if unknown:
            raise ValueError(f"unknown rules {unknown}; known rules: {sorted(RULES)}")
        selected = list(rules)
    sites = find_sites(model)
    if not sites:
        raise ValueError(f"check: {type(model).__name__} has no recurrent layer (a gates layer, SOENLayer, "
                         "torch's GRU/LSTM or their cells, or a module declaring layout())")
    ctx = CheckContext(profile, step(profile, dt), seed, spread, float(atol), sites, s_max, phi_th, max_fan_in,
                       update_bias)
    return {name: list(RULES[name](ctx)) for name in selected}


def check(model: nn.Module, profile: HardwareProfile, **options: Any) -> list[Violation]:
    """Check ``model`` against ``profile``; returns the violations (empty when it complies).

    Works on constrained and unconstrained models (it reads effective values). Keyword
    options: ``dt`` (s; default the profile's), ``seed`` (0), ``spread`` (False), ``atol``
    (1e-6), ``rules``, ``s_max``, ``phi_th``, ``max_fan_in``, ``update_bias``.
    ``seed``/``spread``/``dt`` must match the :func:`constrain` call for the
    ``frozen_time_constant`` rule. ``s_max``/``phi_th`` enable the
    ``excitatory_flux_window`` rule on GRU/LSTM recurrent weights (SOEN-core layers carry
    their own ``s_max``/``phi_th``); ``max_fan_in`` (e.g. :data:`FAN_IN_LIMIT`) replaces
    ``profile.max_fan_in`` in ``fan_in``; ``update_bias`` (as for :func:`constrain`)
    replaces the profile's design biases in ``frozen_time_constant``.
    ``rules`` selects rule names from :data:`RULES` (default: all). :func:`rule_findings`
    also gives the rules that hold, with their worst values.
    """
    found = rule_findings(model, profile, **options)
    return [f for findings in found.values() for f in findings if isinstance(f, Violation)]


__all__ = ["CheckContext", "FAN_IN_LIMIT", "Finding", "RULES", "SPREAD_SIGMAS", "Violation", "check", "rule_findings"]
