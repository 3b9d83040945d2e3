"""Evaluation-time non-idealities of physical hardware, applied to a trained model.

Each non-ideality is a pure function ``(model, value, seed) -> new model``: the input
model is never modified (the result is a deep copy) and the same arguments give the
same result. They act on *targets* — the modules that simulate a physical layer:
:class:`~soensim.continuous_gru.ContinuousGRU` (a transferred GRU) and
:class:`~soensim.soen_layer.SOENLayer`. A model without targets but with GRU-core
layers (``torch.nn.GRU``, ``GatedGRU``) is first transferred with
:func:`~soensim.transfer.transfer_model` at ``dt = 1`` (the exact integrator at the
training step *is* the discrete model), so the result is a transferred copy.

========================  =================================================================
kind (registry name)      what changes
========================  =================================================================
``tau_spread`` (σ)        every unit's time constant ``τ_i → τ_i·(1 + σ·ε_i)``, ε ~ N(0, 1),
                          one draw per unit (fabrication spread); for a transferred GRU the
                          input/state-dependent ``τ(t) = -dt/log g(t)`` is scaled per unit
``quantize`` (levels L)   coupling weights snapped to L evenly spaced levels in
                          ``[-J_max, J_max]`` (:func:`soensim.constraints.quantize`); ``J_max``
                          defaults to each target's own ``max |w|`` (pure resolution loss)
``clip`` (J_max)          coupling weights clipped to ``[-J_max, J_max]``
``flux_noise`` (σ)        additive Gaussian noise on every gate/candidate pre-activation
                          (SOEN: on the applied flux φ), drawn per step and unit
``state_noise`` (σ)       additive Gaussian noise on the state after every step
========================  =================================================================

``value = 0`` (or None) is the identity for every kind. Seeds: ``tau_spread`` draws
from ``torch.Generator().manual_seed(seed + k)`` for the k-th target; the noise kinds
store ``seed`` as the targets' ``noise_seed`` and the simulation draws from it, so a
noisy evaluation is reproducible. Biases (bias currents, flux offsets) are not
couplings and are never quantized or clipped.

:func:`sweep` evaluates a model under one kind over several values and seeds and
returns table rows; :func:`summarize` aggregates them (mean, std over seeds).
"""
from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .constraints import FrozenRows, quantize
from .driven import noise_draws
from .layouts import owner, tensor
from .transfer import transfer_model

#: Smallest factor ``1 + σ·ε`` a time constant may be scaled by (τ must stay > 0).
MIN_TAU_FACTOR = 0.01


# =============================================================================
# Targets
# =============================================================================
def is_target(m: nn.Module) -> bool:
    """A module simulating a physical layer: it has ``scale_time_constants``, ``weight_names``
    and the noise attributes ``flux_noise``/``state_noise``/``noise_seed``."""
    return (callable(getattr(m, "scale_time_constants", None)) and callable(getattr(m, "weight_names", None))
            and all(hasattr(m, a) for a in ("flux_noise", "state_noise", "noise_seed")))


def targets(model: nn.Module) -> list[nn.Module]:
    """Every target inside ``model`` (itself included), in module order."""
    return [m for m in model.modules() if is_target(m)]


def prepare(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with at least one target (a discrete GRU model is transferred at dt = 1)."""
    if targets(model):
        return copy.deepcopy(model)
    try:
        return transfer_model(model, 1.0)
    except ValueError as err:
        raise ValueError(f"{type(model).__name__} has no layer to apply non-idealities to "
                         "(ContinuousGRU, SOENLayer, or a GRU-core layer to transfer)") from err


def set_weight(m: nn.Module, path: str, value: Tensor) -> None:
    """Give the coupling ``path`` of ``m`` the effective value ``value``, in place.

    A plain parameter is overwritten. A parametrized one (e.g. the bound and quantization of a
    :class:`~soensim.soen_layer.SOENLayer`) gets a final replacement appended to its chain
    (:class:`~soensim.constraints.FrozenRows` over every entry), so the effective value is
    exactly ``value`` whatever the transforms before it do. Appending touches only ``m``'s own
    parametrization list; removing a parametrization would instead edit the class that
    ``torch.nn.utils.parametrize`` shares between a module and its deep copies."""
    module, name = owner(m, path)
    with torch.no_grad():
        if parametrize.is_parametrized(module, name):
            current = tensor(m, path)
            value = value.to(dtype=current.dtype, device=current.device)
            parametrize.register_parametrization(
                module, name, FrozenRows(torch.ones(value.shape, dtype=torch.bool, device=value.device), value.clone()))
        else:
            getattr(module, name).copy_(value)


def weights(m: nn.Module) -> dict[str, Tensor]:
    """Effective coupling matrices of a target, by name (detached)."""
    with torch.no_grad():
        return {p: tensor(m, p).detach().clone() for p in m.weight_names()}


# =============================================================================
# The non-idealities (pure functions)
# =============================================================================
def _off(value: float | int | None) -> bool:
    return value is None or value == 0


def spread_factors(n: int, sigma: float, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``1 + σ·ε`` for ``n`` units, ε ~ N(0, 1) from ``seed``, floored at :data:`MIN_TAU_FACTOR`."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"tau spread σ must be ≥ 0; got {sigma}")
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(n, generator=gen, dtype=torch.float64)
    return (1.0 + sigma * eps).clamp_min(MIN_TAU_FACTOR).to(dtype)


def tau_spread(model: nn.Module, sigma: float, seed: int = 0) -> nn.Module:
    """Copy of ``model`` with every unit's τ multiplied by ``1 + σ·ε`` (fabrication spread)."""
    out = prepare(model)
    if _off(sigma):
        return out
    for k, t in enumerate(targets(out)):
        t.scale_time_constants(spread_factors(t.state_size, float(sigma), seed + k))
    return out


def quantize_weights(model: nn.Module, levels: int | None, seed: int = 0, *, j_max: float | None = None) -> nn.Module:
    """Copy of ``model`` with coupling weights on ``levels`` evenly spaced levels in ``[-J, J]``.

    ``J`` is ``j_max`` when given (weights beyond it are clipped), otherwise each target's own
    largest ``|w|`` (so only the resolution changes). ``seed`` is unused (deterministic)."""
    out = prepare(model)
    if _off(levels):
        return out
    if int(levels) != levels or levels < 2:
        raise ValueError(f"levels must be an integer ≥ 2; got {levels}")
    for t in targets(out):
        ws = weights(t)
        j = float(j_max) if j_max is not None else max(float(w.abs().max()) for w in ws.values())
        if j <= 0:
            continue
        for name, w in ws.items():
            set_weight(t, name, quantize(w, j, int(levels)))
    return out


def clip_weights(model: nn.Module, j_max: float | None, seed: int = 0) -> nn.Module:
    """Copy of ``model`` with coupling weights clipped to ``[-j_max, j_max]``."""
    out = prepare(model)
    if j_max is None:
        return out
    if not j_max > 0:
        raise ValueError(f"j_max must be > 0; got {j_max}")
    for t in targets(out):
        for name, w in weights(t).items():
            set_weight(t, name, w.clamp(-float(j_max), float(j_max)))
    return out


def flux_noise(model: nn.Module, sigma: float, seed: int = 0) -> nn.Module:
    """Copy of ``model`` with per-step Gaussian noise of std ``σ`` on the pre-activations (flux)."""
    return _noise(model, "flux_noise", sigma, seed)


def state_noise(model: nn.Module, sigma: float, seed: int = 0) -> nn.Module:
    """Copy of ``model`` with per-step Gaussian noise of std ``σ`` added to the state."""
    return _noise(model, "state_noise", sigma, seed)


def _noise(model: nn.Module, attr: str, sigma: float | None, seed: int) -> nn.Module:
    out = prepare(model)
    sigma = 0.0 if sigma is None else float(sigma)
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"{attr} must be ≥ 0; got {sigma}")
    for k, t in enumerate(targets(out)):
        setattr(t, attr, sigma)
        t.noise_seed = int(seed) + 1_000 * k
    return out


@dataclass(frozen=True)
class Nonideality:
    """A registry entry: ``fn(model, value, seed) -> model``; ``seeded`` says whether the
    result depends on the seed; ``label`` names the value's axis."""

    name: str
    fn: Callable[..., nn.Module]
    seeded: bool
    label: str
    description: str


#: Registry: kind → :class:`Nonideality`.
NONIDEALITIES: dict[str, Nonideality] = {
    n.name: n for n in (
        Nonideality("tau_spread", tau_spread, True, "relative τ spread σ_τ", "τ_i → τ_i(1 + σ ε_i)"),
        Nonideality("quantize", quantize_weights, False, "weight levels", "couplings on L levels in ±J_max"),
        Nonideality("clip", clip_weights, False, "coupling bound J_max", "couplings clipped to ±J_max"),
        Nonideality("flux_noise", flux_noise, True, "flux noise σ_φ", "Gaussian noise on pre-activations per step"),
        Nonideality("state_noise", state_noise, True, "state noise σ_s", "Gaussian noise on the state per step"),
    )
}


def get_nonideality(kind: str) -> Nonideality:
    """Registry lookup; an unknown name lists the known ones."""
    if kind not in NONIDEALITIES:
        raise ValueError(f"unknown non-ideality {kind!r}; known: {sorted(NONIDEALITIES)}")
    return NONIDEALITIES[kind]


def apply(model: nn.Module, spec: Mapping[str, Any], seed: int = 0) -> nn.Module:
    """Apply several non-idealities (``{kind: value}``, in registry order) to a copy of ``model``."""
    for kind in spec:
        get_nonideality(kind)
    out = prepare(model)
    for kind, entry in NONIDEALITIES.items():
        if kind in spec:
            out = entry.fn(out, spec[kind], seed)
    return out


# =============================================================================
# Sweeps
# =============================================================================
def sweep(model_fn: nn.Module | Callable[[], nn.Module], eval_fn: Callable[[nn.Module], float | Mapping[str, float]],
          kind: str, values: Iterable[Any], seeds: Iterable[int] | int = (0,),
          extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Evaluate a model under one non-ideality at several values and seeds.

    Args:
        model_fn: the model, or a zero-argument function returning it (called once).
        eval_fn: ``model -> metric`` (a number, stored as ``"metric"``) or ``{name: number}``.
        kind: a name in :data:`NONIDEALITIES`.
        values: the values of the non-ideality (``0``/None = ideal).
        seeds: seeds (or a count n → ``range(n)``); kinds that do not depend on the seed
            (``quantize``, ``clip``) and ideal values are evaluated once, with seed None.
        extra: columns copied into every row (e.g. the model's label).

    Returns:
        rows ``{"kind", "value", "seed", **extra, **metrics}``.
    """
    entry = get_nonideality(kind)
    base = model_fn() if callable(model_fn) and not isinstance(model_fn, nn.Module) else model_fn
    base = prepare(base)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    rows: list[dict[str, Any]] = []
    for value in values:
        once = not entry.seeded or _off(value)
        for seed in ([None] if once else seed_list):
            m = entry.fn(base, value, 0 if seed is None else seed)
            m.eval()
            with torch.no_grad():
                res = eval_fn(m)
            metrics = dict(res) if isinstance(res, Mapping) else {"metric": float(res)}
            rows.append({"kind": kind, "value": value, "seed": seed, **(extra or {}),
                         **{k: float(v) for k, v in metrics.items()}})
    return rows


def summarize(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None,
              by: Sequence[str] = ("kind", "value")) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds: one row per distinct ``by`` key, with
    ``<metric>_mean``, ``<metric>_std`` (0 for a single seed) and ``n``."""
    if not rows:
        return []
    skip = set(by) | {"seed"}
    if metrics is None:
        metrics = [k for k, v in rows[0].items() if k not in skip and isinstance(v, (int, float))
                   and not isinstance(v, bool)]
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        for m in metrics:
            vals = [float(r[m]) for r in rs if m in r]
            if vals:
                row[f"{m}_mean"] = statistics.fmean(vals)
                row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["n"] = len(rs)
        out.append(row)
    return out


__all__ = [
    "MIN_TAU_FACTOR",
    "NONIDEALITIES",
    "Nonideality",
    "apply",
    "clip_weights",
    "flux_noise",
    "get_nonideality",
    "is_target",
    "noise_draws",
    "prepare",
    "quantize_weights",
    "set_weight",
    "spread_factors",
    "state_noise",
    "summarize",
    "sweep",
    "targets",
    "tau_spread",
    "weights",
]
