"""Study ``gate-ablation``: copy and adding tasks across gate mechanisms (Gu et al. 2020,
"Improving the Gating Mechanism of Recurrent Neural Networks", arXiv:1910.09890, §3.1, Figs. 3–4).

Tasks (Gu et al. 2020, §3.1, App. D.1):

- copy, length N + 20: ten tokens from {1..8}, N blanks, ten cue tokens 9; the model
  outputs the ten tokens over the last ten steps; cross-entropy on those steps only
  (chance: log 8);
- adding, length N: values U[0, 1] with two marked positions (one in each half); the
  target is their sum; mean squared error (chance: 1/6).

Training data is drawn fresh for every batch from the run's checkpointed generator
(every gate sees the same stream for a given seed); validation and test are fixed sets
of ``eval_size`` sequences drawn with seeds of their own. An "epoch" is
``steps_per_epoch`` optimizer steps.

Rows: ``<task>-<gate>`` for gate in ``-, C, O, U, R, OM, UM, OR, UR, SST`` (``-`` written ``std``). Chrono's T_max is
the sequence length. The full preset follows App. D.1 (LSTM, hidden 256, Adam 1e-3, clip 1.0,
copy N = 500 for 100k steps, adding N = 2000 for 20k steps); the batch size is not given
there: 64 here. The quick preset is a CPU-sized version (hidden 64, copy N = 30 for 1,000
steps, adding N = 50 for 500 steps).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import grid, plots
from .config import RunConfig
from .errors import ConfigError
from .models import build_model
from .taskdata import ArraySplit, StreamSplit, TaskData

NAME = "gate-ablation"
DESCRIPTION = "copy and adding tasks across gate mechanisms (Gu et al. 2020, arXiv:1910.09890, Figs. 3-4)"
GATES = ("-", "C", "O", "U", "R", "OM", "UM", "OR", "UR", "SST")
#: Configuration fields the results header states (synthetic tasks: no image or split fields).
HEADER_FIELDS = (*(f for f in grid.HEADER_FIELDS
                   if f not in ("image_size", "channels", "train_subset", "val_size", "test_subset", "train_size",
                                "hw_dt")), "steps_per_epoch", "eval_size")
VAL_SEED, TEST_SEED = 10_001, 10_002


def row_name(task: str, gate: str) -> str:
    """``copy-UR``; the standard gate ``-`` is spelled ``std`` (``copy-std``)."""
    return f"{task}-{'std' if gate == '-' else gate}"


def _rows(copy: dict[str, Any], adding: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {row_name("copy", g): {"task": "copy", "gate": g, **copy} for g in GATES}
    rows.update({row_name("adding", g): {"task": "adding", "gate": g, **adding} for g in GATES})
    return rows


PAPER = dict(cell="lstm", hidden=256, head="linear", optimizer="adam", lr=1e-3, lr_min=1e-3, schedule="constant",
             clip_norm=1.0, batch_size=64, orthogonal_hh=False, steps_per_epoch=1000, eval_size=1000)

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "base": {**PAPER, "hidden": 8, "batch_size": 16, "steps_per_epoch": 5, "eval_size": 32, "epochs": 2,
                 "log_every": 1, "gate_stats_size": 16, "progress": False, "threads": 1},
        "rows": _rows({"seq_len": 5}, {"seq_len": 10}),
        "seeds": 1,
        "notes": "smoke: hidden 8, copy N=5, adding N=10, 10 steps — plumbing only.",
    },
    "quick": {
        "base": {**PAPER, "hidden": 64, "steps_per_epoch": 250, "eval_size": 500, "log_every": 10,
                 "gate_stats_size": 128, "threads": 1},
        "rows": _rows({"seq_len": 30, "epochs": 4}, {"seq_len": 50, "epochs": 2}),
        "seeds": 1,
        "notes": ("quick (CPU): LSTM hidden 64, Adam 1e-3 constant, clip 1.0, batch 64; copy N=30 (50 steps) for "
                  "1,000 steps, adding N=50 for 500 steps; 1 seed (about 15 min on 2 busy cores)."),
    },
    "full": {
        "base": dict(PAPER),
        "rows": _rows({"seq_len": 500, "epochs": 100}, {"seq_len": 2000, "epochs": 20}),
        "seeds": 3,
        "notes": ("full: Gu et al. 2020, App. D.1 — LSTM hidden 256, Adam 1e-3, clip 1.0, batch 64 (not stated in the "
                  "paper); copy N=500 for 100k steps, adding N=2000 for 20k steps; 3 seeds."),
    },
}


row_names, notes, runs = grid.preset_functions(NAME, PRESETS)


def build(cfg: RunConfig) -> tuple[nn.Module, TaskData]:
    data, readout = synthetic_task(cfg)
    return build_model(cfg, data.input_size, data.num_outputs, data.seq_len, readout=readout), data


def synthetic_task(cfg: RunConfig) -> tuple[TaskData, int]:
    """Streamed training split and fixed validation/test sets; returns (data, readout steps)."""
    spec = task_spec(cfg.task, cfg.seq_len)

    def fixed(seed: int) -> ArraySplit:
        x, y = spec["sample"](cfg.eval_size, torch.Generator().manual_seed(seed))
        return ArraySplit(x, y)

    train = StreamSplit(spec["sample"], cfg.steps_per_epoch)
    data = TaskData(train, fixed(VAL_SEED), fixed(TEST_SEED), objective=spec["objective"],
                    num_outputs=spec["num_outputs"], input_size=spec["input_size"], seq_len=spec["length"],
                    info={"task": cfg.task, "N": cfg.seq_len, "length": spec["length"], "eval_size": cfg.eval_size,
                          "chance_loss": spec["chance_loss"]})
    return data, spec["readout"]


# =========================================================================== wiring
def task_spec(task: str, n: int) -> dict[str, Any]:
    """What the trainer needs to know about a synthetic task, from ``studies.tasks``.

    Keys: ``sample(batch, generator) -> (x, y)``, ``objective``, ``num_outputs``,
    ``input_size``, ``length`` (sequence length), ``readout`` (final steps scored),
    ``chance_loss``.
    """
    from . import tasks  # studies/tasks.py (copy/adding generators)

    if task == "copy":
        t = tasks.CopyTask(n)
        return {"sample": t.sample, "objective": "classify", "num_outputs": t.num_classes,
                "input_size": t.input_size, "length": t.length, "readout": t.readout,
                "chance_loss": t.chance_loss}
    if task == "adding":
        t = tasks.AddingTask(n)
        return {"sample": t.sample, "objective": "regress", "num_outputs": 1, "input_size": t.input_size,
                "length": t.length, "readout": 1, "chance_loss": t.chance_loss}
    raise ConfigError(f"study {NAME} runs task 'copy' or 'adding'; got {task!r}")


# --------------------------------------------------------------------------- report
def report(sdir: str | os.PathLike) -> dict[str, Path | None]:
    """Fig. 3-style loss curves (log scale, per task) and Fig. 4-style gate histograms."""
    sdir = Path(sdir)
    is_copy: Callable[[str], bool] = lambda r: r.startswith("copy-")  # noqa: E731
    is_add: Callable[[str], bool] = lambda r: r.startswith("adding-")  # noqa: E731
    return {
        "copy_loss": plots.curves(sdir, "loss", "copy_loss.png", source="steps", logy=True, smooth=5, rows=is_copy,
                                  ylabel="cross-entropy (last 10 steps)", title="copy task (Gu et al. 2020, Fig. 3 left)",
                                  hline=math.log(8)),
        "adding_loss": plots.curves(sdir, "loss", "adding_loss.png", source="steps", logy=True, smooth=5, rows=is_add,
                                    ylabel="mean squared error", title="adding task (Gu et al. 2020, Fig. 3 right)",
                                    hline=1 / 6),
        "copy_test_acc": plots.curves(sdir, "test_acc", "copy_test_accuracy.png", rows=is_copy,
                                      ylabel="token accuracy (test)", title="copy task accuracy"),
        "gate_histograms": plots.gate_histograms(sdir),
    }


__all__ = ["DESCRIPTION", "GATES", "NAME", "PRESETS", "build", "notes", "report", "row_name", "row_names", "runs",
           "synthetic_task", "task_spec"]
