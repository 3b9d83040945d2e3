"""A trained network as a hardware specification: :func:`export` and :func:`load_export`.

:func:`export` writes what a chip needs to realise the recurrent layers of a model — every
unit's time constant in seconds, the couplings at the profile's stored levels, the gate
biases (GRU cores) or flux offsets and bias currents (SOEN cores), the connectivity and the
profile itself — as JSON (schema on docs/export.md, version :data:`SCHEMA_VERSION`), with
the design-rule report of :func:`soensim.check`: every rule, pass or fail, with its worst
value against its limit. A network outside its profile still exports; the report lists
its failures.

:func:`load_export` reads a specification back as a continuous-time model: a
:class:`~soensim.continuous_gru.ContinuousGRU` for a GRU core (the model
:func:`soensim.to_continuous` makes of the trained layer), a
:class:`~soensim.soen_layer.SOENLayer` for a SOEN core, float64; its outputs equal the
exported layer's continuous-time equivalent.

Exported: GRU-core layers with a per-unit leaky mechanism (one layer, one direction: what
:func:`soensim.to_continuous` accepts) and :class:`~soensim.soen_layer.SOENLayer`. Layers
around them (a linear read-out) are software and not part of the specification.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .constraints.rules import RULES, rule_findings
from .constraints.transforms import quantize
from .continuous_gru import MODE_BLOCKS, ContinuousGRU
from .layouts import Layout, find_layers
from .profiles import ROLES, HardwareProfile
from .soen_layer import SOENLayer
from .transfer import layer_weights

SCHEMA = "soensim.export"
#: Version of the specification's layout (docs/export.md); :func:`load_export` reads this version.
SCHEMA_VERSION = 1
#: Level index of an absent connection (|w| ≤ atol) in a coupling's ``levels``.
NO_CONNECTION = -1


class ExportError(ValueError):
    """A specification that cannot be read back: wrong schema, version or a missing field."""


# =============================================================================
# Functional core: tensors and rule findings as JSON values
# =============================================================================
def _number(v: Any) -> float | None:
    """A finite float, or None (JSON has no NaN or infinity)."""
    f = float(v)
    return f if math.isfinite(f) else None


def _coupling(w: Tensor, profile: HardwareProfile, atol: float) -> dict[str, Any]:
    """One coupling matrix ``(rows, columns)``: its effective values (float64), the connection
    mask (``|w| > atol``) and, with ``profile.weight_levels``, each entry's nearest stored level."""
    w = w.detach().double().cpu()
    mask = w.abs() > atol
    out: dict[str, Any] = {"shape": list(w.shape), "weights": w.tolist(), "mask": mask.int().tolist()}
    if profile.weight_levels is not None:
        j, n = float(profile.coupling_max), int(profile.weight_levels)  # type: ignore[arg-type]
        index = torch.round((w + j) / (2.0 * j / (n - 1))).clamp(0, n - 1).long()
        out["levels"] = torch.where(mask, index, torch.full_like(index, NO_CONNECTION)).tolist()
    return out


def level_values(profile: HardwareProfile) -> list[float] | None:
    """The stored coupling levels of ``profile`` (the values :func:`quantize` snaps to), or None."""
    if profile.weight_levels is None:
        return None
    j, n = float(profile.coupling_max), int(profile.weight_levels)  # type: ignore[arg-type]
    return quantize(torch.linspace(-j, j, n, dtype=torch.float64), j, n).tolist()


def design_rules(model: nn.Module, profile: HardwareProfile, *, atol: float = 1e-6,
                 **check_options: Any) -> dict[str, Any]:
    """The design-rule report of ``model`` under ``profile``: every rule of
    :data:`~soensim.constraints.rules.RULES` with ``applies``, ``passed``, the ``worst`` value
    against its ``limit`` (on ``parameter``) and its ``failures``. ``check_options`` as
    :func:`soensim.check` (``dt``, ``seed``, ``spread``, ``update_bias``, ...)."""
    found = rule_findings(model, profile, atol=atol, **check_options)
    rules = []
    for name in RULES:
        findings = found.get(name, [])
        failures = [f for f in findings if not f.passed]
        # the worst finding: a failure if there is one, else the passing value closest to its limit
        pick = failures or findings
        worst = max(pick, key=lambda f: -math.inf if math.isnan(f.value) else f.value) if pick else None
        rules.append({
            "rule": name, "applies": bool(findings), "passed": not failures,
            "parameter": worst.parameter if worst else None,
            "worst": _number(worst.value) if worst else None,
            "limit": (worst.limit if isinstance(worst.limit, str) else _number(worst.limit)) if worst else None,
            "message": worst.message if worst else "not applicable: no such limit in the profile or no such parameter",
            "failures": [{"parameter": f.parameter, "value": _number(f.value),
                          "limit": f.limit if isinstance(f.limit, str) else _number(f.limit), "message": f.message}
                         for f in failures],
        })
    return {"passed": all(r["passed"] for r in rules), "atol": float(atol), "rules": rules}


def format_report(spec: Mapping[str, Any]) -> str:
    """The design-rule report of a specification as a Markdown table."""
    report = spec["design_rules"]
    lines = [f"design rules for profile {spec['profile']['name']!r}: "
             + ("all pass" if report["passed"] else "FAILED"), "",
             "| rule | result | worst | limit | on | detail |", "|---|---|---|---|---|---|"]
    for r in report["rules"]:
        result = "n/a" if not r["applies"] else "pass" if r["passed"] else f"FAIL ({len(r['failures'])})"
        worst = "" if r["worst"] is None else f"{r['worst']:.4g}"
        limit = r["limit"] if isinstance(r["limit"], str) else "" if r["limit"] is None else f"{r['limit']:.4g}"
        cells = (r["rule"], result, worst, limit, r["parameter"] or "", r["message"])
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# =============================================================================
# Layers
# =============================================================================
def _gru_layer(name: str, layer: nn.Module, lay: Layout, profile: HardwareProfile, dt: float,
               atol: float) -> dict[str, Any]:
    w = layer_weights(layer)  # effective values, rows in the kernel order of the mode
    H = lay.hidden
    b = (w["bias_ih"] + w["bias_hh"]).double()[H:2 * H]  # the decay block, second in every kernel order
    tau = lay.decay.tau_for_bias(b, dt)  # type: ignore[union-attr]
    return {
        "name": name, "core": "gru", "mechanism": lay.mechanism, "mode": w["mode"],
        "input_size": int(w["weight_ih"].shape[1]), "hidden_size": H, "batch_first": w["batch_first"], "dt_s": dt,
        "blocks": list(MODE_BLOCKS[w["mode"]]),
        "units": {"tau_s": tau.tolist()},
        "couplings": {"input": _coupling(w["weight_ih"], profile, atol),
                      "recurrent": _coupling(w["weight_hh"], profile, atol)},
        "gate_biases": {"bias_ih": w["bias_ih"].double().tolist(), "bias_hh": w["bias_hh"].double().tolist()},
        "connectivity": _fan_in(w["weight_ih"], w["weight_hh"], atol),
    }


def _soen_layer(name: str, layer: SOENLayer, profile: HardwareProfile, atol: float) -> dict[str, Any]:
    cell = layer.cell
    with torch.no_grad():
        W_in, J = layer.W_in.detach(), layer.J.detach()
        values = lambda t: t.detach().double().cpu().tolist()  # noqa: E731
        return {
            "name": name, "core": "soen", "mechanism": "soen", "input_size": layer.input_size,
            "hidden_size": layer.hidden_size, "batch_first": layer.batch_first, "dt_s": layer.dt,
            "units": {"tau_s": values(cell.tau), "beta_L": values(cell.beta_L), "tau0_s": cell.tau0,
                      "flux_offset": values(cell.phi_offset), "bias_current": values(cell.i_b)},
            "couplings": {"input": _coupling(W_in, profile, atol), "recurrent": _coupling(J, profile, atol)},
            "connectivity": _fan_in(W_in, J, atol),
            "noise": {"flux_noise": layer.flux_noise, "state_noise": layer.state_noise, "seed": layer.noise_seed},
        }


def _fan_in(w_in: Tensor, w_rec: Tensor, atol: float) -> dict[str, Any]:
    """Connections per receiving row, input and recurrent couplings together."""
    counts = ((w_in.abs() > atol).sum(-1) + (w_rec.abs() > atol).sum(-1)).tolist()
    return {"fan_in": counts, "max_fan_in": max(counts) if counts else 0}


# =============================================================================
# Entry points
# =============================================================================
def export(model: nn.Module, profile: HardwareProfile | str, path: str | os.PathLike | None = None, *,
           dt: float | None = None, seed: int = 0, spread: bool = False, atol: float = 1e-6,
           **check_options: Any) -> dict[str, Any]:
    """The hardware specification of ``model``'s recurrent layers under ``profile`` (see the
    module docstring); written as JSON to ``path`` when given.

    Args:
        model: a trained (constrained or not) model or layer; effective values are read.
        profile: a :class:`~soensim.profiles.HardwareProfile`, preset name or profile file.
        path: file to write (``.json``), or None.
        dt: the training step in seconds (default ``profile.dt``); GRU time constants are
            ``τ = -dt / log g`` of the decay gate at rest.
        seed, spread: as given to :func:`soensim.constrain` (for the ``frozen_time_constant`` rule).
        atol: tolerance of the rules; couplings with ``|w| ≤ atol`` count as absent connections.
        check_options: more :func:`soensim.check` options (``update_bias``, ``s_max``, ``phi_th``, ``max_fan_in``).

    Raises:
        ValueError: a layer that has no continuous-time form (LSTM or cumax/master gates,
            stacked or bidirectional GRUs), or no recurrent layer at all.
    """
    import soensim

    profile = HardwareProfile.resolve(profile)
    dt_s = float(profile.dt if dt is None else dt)
    report = design_rules(model, profile, dt=dt, seed=seed, spread=spread, atol=atol, **check_options)
    layers = []
    for name, layer, lay in find_layers(model):
        try:
            if isinstance(layer, SOENLayer):
                layers.append(_soen_layer(name, layer, profile, atol))
            else:
                layers.append(_gru_layer(name, layer, lay, profile, dt_s, atol))
        except ValueError as err:
            raise ValueError(f"export: layer {name or '<model>'!r}: {err}") from None
    spec = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "soensim_version": soensim.__version__,
        "dt_s": dt_s, "seed": seed, "spread": spread,
        "profile": profile.to_dict(), "weight_levels": level_values(profile),
        "design_rules": report, "layers": layers,
    }
    if path is not None:
        write_export(spec, path)
    return spec


def write_export(spec: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a specification as JSON (floats exact: they read back as the same float64)."""
    path = Path(path)
    path.write_text(json.dumps(spec, allow_nan=False) + "\n", encoding="utf-8")
    return path


def read_export(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A specification from a file (or an already loaded mapping), its schema checked.

    Raises:
        ExportError: not a soensim specification, another schema version, a layer without
            its fields (the message names the file and the field).
    """
    where = "specification"
    if isinstance(source, Mapping):
        spec = dict(source)
    else:
        where = str(source)
        try:
            spec = json.loads(Path(source).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ExportError(f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(spec, dict) or spec.get("schema") != SCHEMA:
        raise ExportError(f"{where}: not a soensim export (its 'schema' must be {SCHEMA!r})")
    if spec.get("schema_version") != SCHEMA_VERSION:
        raise ExportError(f"{where}: schema_version {spec.get('schema_version')!r}; this soensim reads "
                          f"version {SCHEMA_VERSION}")
    for key in ("profile", "layers", "design_rules"):
        if key not in spec:
            raise ExportError(f"{where}: missing field {key!r}")
    need = {"gru": ("mode", "dt_s", "couplings", "gate_biases", "batch_first"),
            "soen": ("dt_s", "couplings", "units", "batch_first", "noise")}
    for i, layer in enumerate(spec["layers"]):
        core = layer.get("core")
        if core not in need:
            raise ExportError(f"{where}: layers[{i}].core must be one of {sorted(need)}; got {core!r}")
        missing = [k for k in need[core] if k not in layer]
        if missing:
            raise ExportError(f"{where}: layers[{i}] ({layer.get('name')!r}) is missing {missing}")
    return spec


def load_export(source: str | os.PathLike | Mapping[str, Any], layer: str | None = None) -> ContinuousGRU | SOENLayer:
    """The continuous-time model (float64) of one exported layer: ``layer`` names it (the
    only layer when None).

    Raises:
        ExportError: see :func:`read_export`; an unknown ``layer``, or None when several are exported.
    """
    spec = read_export(source)
    names = [entry["name"] for entry in spec["layers"]]
    if layer is None and len(names) != 1:
        raise ExportError(f"the specification holds layers {names}; name the one to load")
    if layer is not None and layer not in names:
        raise ExportError(f"no layer {layer!r} in the specification; it holds {names}")
    entry = spec["layers"][0 if layer is None else names.index(layer)]
    profile = HardwareProfile.from_dict(spec["profile"])
    return _gru_model(entry) if entry["core"] == "gru" else _soen_model(entry, profile)


def _tensor(values: Any) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _gru_model(entry: Mapping[str, Any]) -> ContinuousGRU:
    c, b = entry["couplings"], entry["gate_biases"]
    return ContinuousGRU(_tensor(c["input"]["weights"]), _tensor(c["recurrent"]["weights"]), _tensor(b["bias_ih"]),
                         _tensor(b["bias_hh"]), entry["dt_s"], entry["mode"], batch_first=entry["batch_first"])


def _soen_model(entry: Mapping[str, Any], profile: HardwareProfile) -> SOENLayer:
    """A SOENLayer holding the exported values exactly: built under the profile with its limits
    lifted (nothing to re-apply: the values already are the constrained ones), then filled."""
    units, c = entry["units"], entry["couplings"]
    tau = _tensor(units["tau_s"])
    free = profile.replace(coupling_max=None, weight_levels=None, flux_budget=None, max_fan_in=None,
                           trainable=frozenset(ROLES))
    if not free.fixed_time_constants:
        free = free.replace(tau_range=(float(tau.min()), float(tau.max())))
    model = SOENLayer(entry["input_size"], entry["hidden_size"], free, dt=entry["dt_s"],
                      batch_first=entry["batch_first"], tau0=units["tau0_s"], dtype=torch.float64)
    cell = model.cell
    if parametrize.is_parametrized(cell):
        raise ExportError("internal: the rebuilt SOEN layer is constrained")
    with torch.no_grad():
        cell.log_tau.copy_(tau.log())
        cell.beta_L.copy_(_tensor(units["beta_L"]))
        cell.phi_offset.copy_(_tensor(units["flux_offset"]))
        cell.i_b.copy_(_tensor(units["bias_current"]))
        cell.J.copy_(_tensor(c["recurrent"]["weights"]))
        cell.J_in.copy_(_tensor(c["input"]["weights"]))
    model.profile = profile
    noise = entry["noise"]
    model.flux_noise, model.state_noise, model.noise_seed = noise["flux_noise"], noise["state_noise"], noise["seed"]
    return model


__all__ = ["ExportError", "NO_CONNECTION", "SCHEMA", "SCHEMA_VERSION", "design_rules", "export", "format_report",
           "level_values", "load_export", "read_export", "write_export"]
