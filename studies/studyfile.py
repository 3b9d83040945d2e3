"""Studies defined in a TOML file: ``soensim-study run my_study.toml``.

A study file describes one grid (the registered studies' presets, without Python)::

    name = "my-study"          # optional; default: the file name without .toml
    description = "one line"   # optional
    seeds = 2                  # seeds 0..N-1 (default 1; --seeds N overrides)
    notes = "what the numbers are"   # optional; goes into results.md
    builds = "sst-lowdata"     # optional: the registered study that builds models and data
                               # (default: chosen by each run's task, see TASK_STUDIES)

    [base]                     # RunConfig fields shared by every row
    task = "digits"
    hidden = 16

    [rows.GRU]                 # one table per row: RunConfig fields overriding base
    gate = "-"
    [rows.SST]
    gate = "SST"

Every key is checked before anything runs: an unknown top-level key, an unknown
:class:`~studies.config.RunConfig` field or a bad value raises
:class:`~studies.errors.ConfigError` naming the file, the line (where it can be found) and
the key. ``study``, ``row`` and ``seed`` are not fields of a table: the study and its rows
are named by the file and its tables, the seeds by ``seeds``. A ``profile`` that is a
relative ``.json``/``.toml`` path is read relative to the study file.

The file's grid is its one preset, :data:`PRESET`, so the study goes to
``OUT/<name>/default``. Its runs record, as their ``study``, the registered study that
builds their model and data (so ``resume RUN_DIR``, the process and Ray launchers and
``transfer`` rebuild them without the file); ``study.json`` records the file's name and
path (``study_file``), from which ``plot`` and ``summarize`` reload it. The figures are
:func:`report`'s generic ones (loss and metric curves, gate histograms, loss spikes).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

from . import grid, plots
from .config import NAME_PATTERN, RunConfig
from .errors import ConfigError
from .registry import STUDIES, register

SUFFIX = ".toml"
PRESET = "default"
#: Top-level keys of a study file.
TOP_KEYS = ("name", "description", "seeds", "notes", "builds", "base", "rows")
#: Which registered study builds the models and data of a task (a file's ``builds`` overrides it).
TASK_STUDIES = {"scifar": "scifar-bias", "fake-images": "scifar-bias", "digits": "sst-lowdata",
                "copy": "gate-ablation", "adding": "gate-ablation"}
_NAMED_BY_FILE = {"study": "the study is named by the file (name = ...)",
                  "row": "rows are named by their tables ([rows.NAME])",
                  "seed": "seeds are chosen by seeds = N (or --seeds / --set seed=S)"}
_MODULE_PREFIX = "studies.studyfile:"


def is_study_file(arg: str | os.PathLike) -> bool:
    """True when a ``run`` argument names a study file (ends in ``.toml``) rather than a registered study."""
    return str(arg).lower().endswith(SUFFIX)


def load(path: str | os.PathLike) -> ModuleType:
    """Read, validate and register the study file at ``path``; returns its study module
    (the interface of :mod:`studies.registry`: ``NAME``, ``DESCRIPTION``, ``PRESETS``,
    ``row_names``, ``notes``, ``runs``, ``build``, ``report``, plus ``SOURCE``, the file)."""
    path = Path(path).expanduser().resolve()
    if not is_study_file(path):
        raise ConfigError(f"{path}: a study file ends in {SUFFIX}")
    text = path.read_text(encoding="utf-8")  # OSError names the file
    spec = _parse(path, text)
    module = _module(path, spec)
    name = module.NAME
    if name in STUDIES and not STUDIES[name].startswith(_MODULE_PREFIX):
        raise ConfigError(f"{path}: study name {name!r} is taken by a built-in study; set name = \"...\" in the file")
    sys.modules[_MODULE_PREFIX + name] = module
    register(name, _MODULE_PREFIX + name)
    return module


# --------------------------------------------------------------------------- parsing
def _parse(path: Path, text: str) -> dict[str, Any]:
    """The validated content of a study file (each row checked as a full RunConfig)."""
    from soensim.profiles import ProfileError, parse_toml

    try:
        data = parse_toml(text)
    except ProfileError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    where = _Locator(path, text)
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise where.error(None, unknown[0], f"unknown key {unknown[0]!r}; a study file has the keys {list(TOP_KEYS)}")
    for key in ("name", "description", "notes", "builds"):
        if key in data and not isinstance(data[key], str):
            raise where.error(None, key, f"{key} must be a string; got {data[key]!r}")
    name = data.get("name", path.stem)
    if not NAME_PATTERN.fullmatch(name):
        raise where.error(None, "name", f"study name {name!r} is not a valid name: use 1 to 100 letters, digits "
                          "and . _ + = - (starting with a letter or digit)")
    seeds = data.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise where.error(None, "seeds", f"seeds must be an integer ≥ 1; got {seeds!r}")
    builds = data.get("builds")
    if builds is not None and (builds not in STUDIES or STUDIES[builds].startswith(_MODULE_PREFIX)):
        raise where.error(None, "builds", f"builds must name a registered study; got {builds!r}; "
                          f"known: {sorted(k for k, v in STUDIES.items() if not v.startswith(_MODULE_PREFIX))}")
    base = _table(where, data, "base", None, required=False)
    rows_table = _table(where, data, "rows", None, required=True)
    if not rows_table:
        raise where.error(None, "rows", "a study needs at least one row: add a [rows.NAME] table")
    rows = {row: _table(where, rows_table, row, "rows", required=True) for row in rows_table}
    base = _fields(where, path, base, "base")
    rows = {row: _fields(where, path, fields, f"rows.{row}") for row, fields in rows.items()}
    for row, fields in rows.items():
        try:
            cfg = RunConfig(row=row, **{**base, **fields})
            builder(cfg.task, builds)
        except ConfigError as exc:
            key = _key_of(str(exc), fields, base)
            if key is None:  # e.g. the row's name itself
                raise where.error("rows", row, str(exc), scope=f"rows.{row}") from None
            raise where.error(f"rows.{row}" if key in fields else "base", key, str(exc)) from None
    return {"name": name, "description": data.get("description", f"study from {path.name}"), "seeds": seeds,
            "notes": data.get("notes", ""), "builds": builds, "base": base, "rows": rows}


def _table(where: "_Locator", data: Mapping[str, Any], key: str, parent: str | None,
           required: bool) -> dict[str, Any]:
    value = data.get(key, None if required else {})
    if not isinstance(value, dict):
        label = f"{parent}.{key}" if parent else key
        raise where.error(parent, key, f"{label} must be a table ([{label}]); got {value!r}")
    return dict(value)


def _fields(where: "_Locator", path: Path, fields: dict[str, Any], table: str) -> dict[str, Any]:
    """``fields`` of a base/row table with their keys checked and relative profile paths resolved."""
    for key in fields:
        if key in _NAMED_BY_FILE:
            raise where.error(table, key, f"{key} cannot be set in a study file: {_NAMED_BY_FILE[key]}")
        if key not in RunConfig.__dataclass_fields__:
            raise where.error(table, key, f"unknown config key {key!r}; known keys: "
                              f"{sorted(RunConfig.__dataclass_fields__)}")
    profile = fields.get("profile")
    if isinstance(profile, str) and is_profile_path(profile) and not Path(profile).expanduser().is_absolute():
        fields["profile"] = str(path.parent / profile)
    return fields


def is_profile_path(value: str) -> bool:
    from soensim.profiles import PROFILE_SUFFIXES

    return value.lower().endswith(PROFILE_SUFFIXES)


def _key_of(message: str, *tables: Mapping[str, Any]) -> str | None:
    """The field a RunConfig error message starts with, when one of ``tables`` sets it."""
    m = re.match(r"[A-Za-z_]+", message)
    key = m.group(0) if m else None
    return key if any(key in t for t in tables) else None


class _Locator:
    """Finds the line of ``key`` in table ``[table]`` of a TOML text (for error messages)."""

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")

    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, text.splitlines()

    def line(self, table: str | None, key: str | None) -> int | None:
        current: str | None = None
        for i, line in enumerate(self.lines, 1):
            header = self._HEADER.match(line)
            if header:
                current = ".".join(p.strip().strip('"').strip("'") for p in header.group(1).split("."))
                if key is not None and table is not None and current == f"{table}.{key}":
                    return i  # a row's own table header
                continue
            if key is not None and current == table and re.match(rf"""^\s*["']?{re.escape(key)}["']?\s*=""", line):
                return i
        return None

    def error(self, table: str | None, key: str | None, message: str, scope: str | None = None) -> ConfigError:
        """``FILE, line N: [table] message`` (the line left out when it cannot be found)."""
        n = self.line(table, key)
        where = f"{self.path}" + (f", line {n}" if n else "")
        scope = scope or table
        return ConfigError(f"{where}:{f' [{scope}]' if scope else ''} {message}")


# --------------------------------------------------------------------------- the study module
def builder(task: str, builds: str | None = None) -> str:
    """The registered study that builds a run of ``task`` (``builds`` if given)."""
    if builds is not None:
        return builds
    if task not in TASK_STUDIES:
        raise ConfigError(f"task must be one of {sorted(TASK_STUDIES)} in a study file (or set builds = \"STUDY\" "
                          f"to a registered study that builds it); got {task!r}")
    return TASK_STUDIES[task]


def _module(path: Path, spec: Mapping[str, Any]) -> ModuleType:
    name = spec["name"]
    presets = {PRESET: {"base": spec["base"], "rows": spec["rows"], "seeds": spec["seeds"], "notes": spec["notes"]}}
    row_names, notes, grid_runs = grid.preset_functions(name, presets)

    def runs(preset: str, seeds: int | None = None, overrides: Mapping[str, str] | Sequence[str] = (),
             rows: Sequence[str] | None = None) -> list[RunConfig]:
        """The file's grid; each run's ``study`` is the registered study that builds it."""
        return [cfg.replace(study=builder(cfg.task, spec["builds"]))
                for cfg in grid_runs(preset, seeds, overrides, rows)]

    def build(cfg: RunConfig):
        from .registry import get_study

        return get_study(builder(cfg.task, spec["builds"])).build(cfg)

    module = ModuleType(_MODULE_PREFIX + name, f"study {name!r} from {path}")
    module.__dict__.update(NAME=name, DESCRIPTION=spec["description"], PRESETS=presets, SOURCE=path,
                           row_names=row_names, notes=notes, runs=runs, build=build, report=report)
    return module


def report(sdir: str | os.PathLike) -> dict[str, Path | None]:
    """Generic figures of a study: loss and test-metric curves per epoch, the sampled step
    loss, gate histograms and loss-spike counts (a figure with nothing to draw is None)."""
    sdir = Path(sdir)
    return {
        "train_loss": plots.curves(sdir, "train_loss", "train_loss.png", ylabel="training loss (epoch mean)",
                                   title="training loss"),
        "test_loss": plots.curves(sdir, "test_loss", "test_loss.png", ylabel="test loss", title="test loss"),
        "test_acc": plots.curves(sdir, "test_acc", "test_accuracy.png", ylabel="test accuracy",
                                 title="test accuracy"),
        "test_mse": plots.curves(sdir, "test_mse", "test_mse.png", ylabel="test mean squared error", logy=True,
                                 title="test error"),
        "train_loss_steps": plots.curves(sdir, "loss", "train_loss_steps.png", source="steps", smooth=5,
                                         ylabel="training loss (sampled steps)", title="training loss per step"),
        "gate_histograms": plots.gate_histograms(sdir),
        "loss_spikes": plots.bars(sdir, "spikes", "loss_spikes.png", ylabel="loss spikes",
                                  title="loss spikes (loss > k × running median)"),
    }


__all__ = ["PRESET", "SUFFIX", "TASK_STUDIES", "TOP_KEYS", "builder", "is_profile_path", "is_study_file", "load",
           "report"]
