"""Study registry: a study name → the module that defines it.

A study module provides

    NAME: str                      registry name
    DESCRIPTION: str               one line for ``soensim-study list``
    PRESETS: dict[str, dict]       preset → {"base": RunConfig fields, "rows": {row: fields},
                                   "seeds": n, "notes": text}; smoke, quick and full at least
    def row_names(preset) -> list[str]
    def notes(preset) -> str       what the preset's numbers are (goes into results.md)
    def runs(preset, seeds=None, overrides=(), rows=None) -> list[RunConfig]
        the grid: one RunConfig per (row, seed) with unique ``run_id``s
    (:func:`studies.grid.preset_functions` makes ``row_names``, ``notes`` and ``runs``
    from ``NAME`` and ``PRESETS``)
    def build(cfg) -> (nn.Module, TaskData)
        the model and data of one run (used for fresh runs and ``resume RUN_DIR``)
    def report(study_dir) -> dict[str, Path | None]
        figures (and extra tables) from the study's runs (``plot``)

Studies are imported lazily so that ``list`` is fast and a study whose optional
pieces are missing does not break the others.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: name → module path.
STUDIES: dict[str, str] = {
    "scifar-bias": "studies.bias_ablation",
    "gate-ablation": "studies.gate_ablation",
    "sst-lowdata": "studies.sst_lowdata",
    "transfer": "studies.transfer_study",
}


class UnknownStudy(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register(name: str, module: str) -> None:
    """Add (or replace) a study: ``module`` is an importable module path."""
    STUDIES[name] = module


def get_study(name: str) -> ModuleType:
    """The study module for ``name``; an unknown name lists the known ones."""
    if name not in STUDIES:
        raise UnknownStudy(f"unknown study {name!r}; known studies: {sorted(STUDIES)}")
    return importlib.import_module(STUDIES[name])


def list_studies() -> list[tuple[str, str, list[str]]]:
    """(name, description, preset names) for every registered study."""
    out = []
    for name in sorted(STUDIES):
        mod = get_study(name)
        out.append((name, getattr(mod, "DESCRIPTION", ""), list(getattr(mod, "PRESETS", {}))))
    return out


__all__ = ["STUDIES", "UnknownStudy", "get_study", "list_studies", "register"]
