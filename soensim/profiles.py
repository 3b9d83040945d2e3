"""Hardware profiles: validated, immutable descriptions of a physical substrate.

Times are in seconds. A profile says which time constants can be fabricated
(a range or a discrete set), how much they spread from device to device, how
strong couplings may be, how finely weights are stored, how noisy the substrate
is, and which parameter roles may still be trained in hardware.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .dynamics import SOURCE_FIT, SourceFit, source_threshold
from .timescales import tau_to_bias

#: Parameter roles a profile can mark trainable.
#: ``weights``: input/recurrent couplings; ``update_bias``: the time-constant gate bias;
#: ``reset_bias``/``candidate_bias``: the GRU's other biases; ``flux_offset``/``bias_current``: SOEN knobs.
ROLES = ("weights", "update_bias", "reset_bias", "candidate_bias", "flux_offset", "bias_current")


#: Suffixes of profile files: JSON, or TOML (top-level keys are the fields; a field left out takes its default).
PROFILE_SUFFIXES = (".json", ".toml")


class ProfileError(ValueError):
    """A hardware-profile field is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class HardwareProfile:
    """What a physical recurrent substrate can realise.

    Attributes:
        name: label used in reports.
        dt: simulation/sampling step in seconds (> 0).
        tau_range: ``(tau_min, tau_max)`` in seconds of fabricable time constants, or None.
        tau_values: discrete fabricated time constants in seconds, or None. At most one of
            ``tau_range``/``tau_values`` may be given; neither means time constants are free
            (a software model).
        tau_spread: relative device-to-device standard deviation of tau (0 ≤ σ < 1).
        coupling_max: bound ``|J| ≤ J_max`` on every coupling weight, or None for unbounded.
        weight_levels: number of evenly spaced stored weight levels in ``[-J_max, J_max]``
            (≥ 2, needs ``coupling_max``), or None for continuous weights.
        flux_noise: standard deviation of additive input (flux) noise per step, in Φ0.
        state_noise: standard deviation of additive state noise per step (dimensionless).
        trainable: the parameter roles (see :data:`ROLES`) that may be trained.
        reset_bias: value the GRU reset-gate bias is frozen at when ``reset_bias`` is not
            trainable.
        flux_budget: bound on the summed coupling one unit receives, ``Σ_j |W_ij|`` over the
            input and recurrent weights of each gate row together (same units as
            ``coupling_max``; finite, > 0), or None for unbounded.
        max_fan_in: most connections one gate row receives (input + recurrent, int ≥ 1), or
            None for dense rows.
    """

    name: str = "custom"
    dt: float = 1e-10
    tau_range: tuple[float, float] | None = None
    tau_values: tuple[float, ...] | None = None
    tau_spread: float = 0.0
    coupling_max: float | None = None
    weight_levels: int | None = None
    flux_noise: float = 0.0
    state_noise: float = 0.0
    trainable: frozenset[str] = field(default_factory=lambda: frozenset(ROLES))
    reset_bias: float = 0.0
    flux_budget: float | None = None
    max_fan_in: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if not isinstance(self.name, str) or not self.name:
            raise ProfileError(f"name must be a non-empty string; got {self.name!r}")
        set_("dt", _positive_float("dt", self.dt))
        if self.tau_range is not None and self.tau_values is not None:
            raise ProfileError("give at most one of tau_range and tau_values")
        if self.tau_range is not None:
            rng = _float_tuple("tau_range", self.tau_range)
            if len(rng) != 2:
                raise ProfileError(f"tau_range must be (tau_min, tau_max) in seconds; got {self.tau_range!r}")
            lo, hi = rng
            for label, v in (("tau_range[0] (tau_min)", lo), ("tau_range[1] (tau_max)", hi)):
                _check_tau(label, v, self.dt)
            if hi < lo:
                raise ProfileError(f"tau_range must satisfy tau_min ≤ tau_max; got ({lo:g}, {hi:g}) s")
            set_("tau_range", (lo, hi))
        if self.tau_values is not None:
            vals = _float_tuple("tau_values", self.tau_values)
            if not vals:
                raise ProfileError("tau_values must hold at least one time constant")
            for i, v in enumerate(vals):
                _check_tau(f"tau_values[{i}]", v, self.dt)
            set_("tau_values", tuple(sorted(vals)))
        set_("tau_spread", _float_in("tau_spread", self.tau_spread, 0.0, 1.0, hi_open=True))
        for label in ("coupling_max", "flux_budget"):
            if getattr(self, label) is not None:
                set_(label, _positive_float(label, getattr(self, label)))
        if self.weight_levels is not None:
            if isinstance(self.weight_levels, bool) or not isinstance(self.weight_levels, int):
                raise ProfileError(f"weight_levels must be an int ≥ 2 or None; got {self.weight_levels!r}")
            if self.weight_levels < 2:
                raise ProfileError(f"weight_levels must be ≥ 2; got {self.weight_levels}")
            if self.coupling_max is None:
                raise ProfileError("weight_levels needs coupling_max (levels span [-coupling_max, coupling_max])")
        if self.max_fan_in is not None and (isinstance(self.max_fan_in, bool) or not isinstance(self.max_fan_in, int)
                                            or self.max_fan_in < 1):
            raise ProfileError(f"max_fan_in must be an int ≥ 1 (connections per gate row) or None; got {self.max_fan_in!r}")
        set_("flux_noise", _float_in("flux_noise", self.flux_noise, 0.0, math.inf))
        set_("state_noise", _float_in("state_noise", self.state_noise, 0.0, math.inf))
        if isinstance(self.trainable, str):
            raise ProfileError(f"trainable must be a collection of roles from {ROLES}; got the string {self.trainable!r}")
        roles = frozenset(self.trainable)
        unknown = sorted(roles - set(ROLES))
        if unknown:
            raise ProfileError(f"trainable has unknown roles {unknown}; allowed: {list(ROLES)}")
        set_("trainable", roles)
        set_("reset_bias", _float_in("reset_bias", self.reset_bias, -math.inf, math.inf))

    # ----------------------------------------------------------------- queries
    @property
    def fixed_time_constants(self) -> bool:
        """True when time constants are set at fabrication (a range or a discrete set)."""
        return self.tau_range is not None or self.tau_values is not None

    def unit_taus(self, n: int, seed: int = 0, *, spread: bool = False) -> Tensor:
        """Design time constants (seconds, float64, shape ``(n,)``) for ``n`` units.

        A range is covered log-uniformly (evenly spaced in log tau, then shuffled);
        a discrete set is assigned round-robin, then shuffled. ``spread=True`` multiplies
        each by ``1 + tau_spread * N(0, 1)`` (clipped to stay ≥ dt). Reproducible from ``seed``.
        """
        if not self.fixed_time_constants:
            raise ProfileError(f"profile {self.name!r} has no fabricated time constants (tau_range/tau_values)")
        if n < 1:
            raise ValueError(f"n must be ≥ 1; got {n}")
        gen = torch.Generator().manual_seed(seed)
        if self.tau_range is not None:
            lo, hi = self.tau_range
            grid = torch.linspace(math.log(lo), math.log(hi), n, dtype=torch.float64).exp()
        else:
            vals = torch.tensor(self.tau_values, dtype=torch.float64)
            grid = vals[torch.arange(n) % len(vals)]
        taus = grid[torch.randperm(n, generator=gen)]
        if spread and self.tau_spread > 0:
            noise = torch.randn(n, generator=gen, dtype=torch.float64)
            taus = (taus * (1 + self.tau_spread * noise)).clamp_min(self.dt)
        return taus

    def unit_biases(self, n: int, seed: int = 0, *, spread: bool = False, dt: float | None = None) -> Tensor:
        """Update-gate biases (float64, ``(n,)``) implied by :meth:`unit_taus` at step ``dt`` (default ``self.dt``)."""
        return tau_to_bias(self.unit_taus(n, seed, spread=spread), self.dt if dt is None else dt)

    def replace(self, **changes: Any) -> "HardwareProfile":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict (tuples as lists, roles sorted)."""
        d = dataclasses.asdict(self)
        d["trainable"] = sorted(self.trainable)
        for k in ("tau_range", "tau_values"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HardwareProfile":
        """Build from :meth:`to_dict` output; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ProfileError(f"profile data must be a mapping; got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProfileError(f"unknown profile fields {unknown}; allowed: {sorted(known)}")
        kw = dict(data)
        for k in ("tau_range", "tau_values"):
            if kw.get(k) is not None:
                kw[k] = _float_tuple(k, kw[k])
        if "trainable" in kw:
            if isinstance(kw["trainable"], (str, bytes)) or not isinstance(kw["trainable"], (list, tuple, set, frozenset)):
                raise ProfileError(f"trainable must be a list of roles from {list(ROLES)}; got {kw['trainable']!r}")
            kw["trainable"] = frozenset(kw["trainable"])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HardwareProfile":
        return cls.from_dict(json.loads(text))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "HardwareProfile":
        """A named preset (see :data:`PRESETS`), optionally with fields overridden."""
        if name not in PRESETS:
            raise ProfileError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HardwareProfile":
        """Read a profile file (``.json``, or ``.toml``): the fields of :meth:`to_dict` at the
        top level; a field left out takes its default (TOML has no null: leave out what is None).

        Every field is validated as for a preset; a mistake raises :class:`ProfileError` whose
        message starts with the file's path and names the field and its allowed range."""
        path = Path(path)
        if path.suffix.lower() not in PROFILE_SUFFIXES:
            raise ProfileError(f"{path}: a profile file ends in {' or '.join(PROFILE_SUFFIXES)}")
        text = path.read_text(encoding="utf-8")  # OSError (no such file, ...) names the file itself
        try:
            if path.suffix.lower() == ".toml":
                data = parse_toml(text)
            else:
                data = json.loads(text)
            return cls.from_dict(data)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        except ProfileError as exc:
            raise ProfileError(f"{path}: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile to ``path`` (``.json`` or ``.toml``, by suffix); :meth:`load` reads it back equal."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        elif path.suffix.lower() == ".toml":
            # JSON spellings of strings, finite numbers and flat lists are valid TOML values; None is left out.
            text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in sorted(self.to_dict().items()) if v is not None)
        else:
            raise ProfileError(f"{path}: a profile file ends in {' or '.join(PROFILE_SUFFIXES)}")
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def resolve(cls, spec: "str | os.PathLike | Mapping[str, Any] | HardwareProfile") -> "HardwareProfile":
        """The profile ``spec`` names, wherever a profile is accepted: a :class:`HardwareProfile`,
        a preset name (:data:`PRESETS`), a path to a profile file (:meth:`load`; a string ending
        in ``.json``/``.toml``), or a mapping of fields (:meth:`from_dict`, e.g. a run's recorded profile)."""
        if isinstance(spec, HardwareProfile):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        if isinstance(spec, os.PathLike) or (isinstance(spec, str) and spec.lower().endswith(PROFILE_SUFFIXES)):
            return cls.load(spec)
        if isinstance(spec, str):
            if spec not in PRESETS:
                raise ProfileError(f"unknown preset {spec!r}; known presets: {sorted(PRESETS)}, "
                                   f"or give a profile file ({', '.join(PROFILE_SUFFIXES)})")
            return PRESETS[spec]
        raise ProfileError(f"a profile is a preset name, a profile file or a mapping of fields; got "
                           f"{type(spec).__name__}")

    def nonidealities(self) -> dict[str, float | int]:
        """The profile's non-idealities as :data:`soensim.nonideal.NONIDEALITIES` values
        (kinds the profile leaves ideal are left out): ``tau_spread``, ``quantize`` (weight
        levels), ``clip`` (coupling bound), ``flux_noise``, ``state_noise``."""
        out = {"tau_spread": self.tau_spread, "quantize": self.weight_levels, "clip": self.coupling_max,
               "flux_noise": self.flux_noise, "state_noise": self.state_noise}
        return {k: v for k, v in out.items() if v}


def parse_toml(text: str) -> Any:
    """Parse TOML (:mod:`tomllib`, Python ≥ 3.11; the ``tomli`` package on 3.10); a syntax error
    becomes a :class:`ProfileError` with tomllib's line and column."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ProfileError("reading TOML needs Python ≥ 3.11 (or pip install tomli); use a .json file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"not valid TOML ({exc})") from None


def _positive_float(label: str, v: Any) -> float:
    f = _float_in(label, v, 0.0, math.inf)
    if f <= 0 or math.isinf(f):
        raise ProfileError(f"{label} must be finite and > 0; got {v!r}")
    return f


def _float_in(label: str, v: Any, lo: float, hi: float, hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProfileError(f"{label} must be a number; got {type(v).__name__} {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < lo or f > hi or (hi_open and f >= hi):
        bracket = ")" if hi_open else "]"
        raise ProfileError(f"{label} must be a finite number in [{lo:g}, {hi:g}{bracket}; got {v!r}")
    return f


def _float_tuple(label: str, v: Any) -> tuple[float, ...]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise ProfileError(f"{label} must be a sequence of times in seconds; got {v!r}")
    return tuple(_float_in(f"{label} entry", x, -math.inf, math.inf) for x in v)


def _check_tau(label: str, v: float, dt: float) -> None:
    if not v > 0:
        raise ProfileError(f"{label} must be > 0 s; got {v:g}")
    if v < dt:
        raise ProfileError(f"{label} must be ≥ dt = {dt:g} s (a unit cannot be faster than its sampling step); got {v:g}")


_NS = 1e-9
_HARDWARE_ROLES = frozenset({"weights", "candidate_bias", "flux_offset", "bias_current"})

#: Bias current (units of I_c) at which the ``soen-dendrite`` flux budget is computed: the
#: :class:`~soensim.soen_layer.SOENLayer` default (φ_th ≈ 0.18, s_max = i_b − C ≈ 0.74).
DENDRITE_BIAS_CURRENT = 1.8


def flux_window_budget(i_b: float = DENDRITE_BIAS_CURRENT, fit: SourceFit = SOURCE_FIT) -> float:
    """The flux budget of a SOEN unit at bias current ``i_b`` (units of I_c):
    ``(0.5 − φ_th(i_b)) / s_max`` with ``s_max = i_b − C``.

    The source function g(φ, i_b) of a dendrite is zero below the threshold flux φ_th(i_b)
    and rises monotonically up to φ = 1/2 (:func:`soensim.dynamics.source_threshold`;
    Shainline et al., phenomenological model of superconducting optoelectronic loop neurons;
    docs/physics.md). The flux a unit receives from its senders must stay inside that
    window: ``Σ_{J>0} J_ij·s_j ≤ 0.5 − φ_th``. A sender's state never exceeds
    ``s_max = i_b − C`` (g vanishes once ``i_b − s`` falls to the fit's C), and
    ``Σ_{J>0} J_ij·s_j ≤ s_max·Σ_j |J_ij|``, so the L1 row bound

        Σ_j |J_ij| ≤ (0.5 − φ_th) / s_max

    is sufficient. It is conservative: it charges inhibitory couplings as well and assumes
    every sender at its maximum at once.

    Mapping to gate layers (what ``HardwareProfile.flux_budget`` assumes): each gate row is
    one receiving unit, its pre-activation the flux, its weights the couplings ``J_ij`` (the
    units of ``coupling_max``) and its inputs and recurrent states the senders' signals, on
    the scale where a sender's largest signal is ``s_max``; the budget then bounds every row
    of ``[W_ih | W_hh]``.
    """
    if not i_b > fit.C:
        raise ValueError(f"i_b must exceed the source fit's C = {fit.C:.4g} (units of I_c) for a unit to be active; "
                         f"got {i_b!r}")
    phi_th = float(source_threshold(torch.tensor(float(i_b), dtype=torch.float64), fit))
    return (0.5 - phi_th) / (float(i_b) - fit.C)


#: Named presets. SOEN values follow docs/physics.md (dendrite τ = L/r of 10–1000 ns at
#: Δt = 0.1 ns, practical coupling |J| ≤ 0.5, fabrication spread ~5 %, the flux budget of
#: :func:`flux_window_budget`).
PRESETS: dict[str, HardwareProfile] = {
    "software": HardwareProfile(name="software", dt=1.0),
    "soen-dendrite": HardwareProfile(
        name="soen-dendrite",
        dt=0.1 * _NS,
        tau_range=(10 * _NS, 1000 * _NS),
        tau_spread=0.05,
        coupling_max=0.5,
        flux_budget=flux_window_budget(),
        trainable=_HARDWARE_ROLES,
    ),
    "soen-fabricated": HardwareProfile(
        name="soen-fabricated",
        dt=0.1 * _NS,
        tau_values=(10 * _NS, 50 * _NS, 250 * _NS, 1000 * _NS),
        tau_spread=0.05,
        coupling_max=0.5,
        weight_levels=16,
        trainable=_HARDWARE_ROLES,
    ),
}

__all__ = ["DENDRITE_BIAS_CURRENT", "HardwareProfile", "PRESETS", "PROFILE_SUFFIXES", "ProfileError", "ROLES",
           "flux_window_budget", "parse_toml"]
