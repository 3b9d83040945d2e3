"""Study ``sst-lowdata``: SST gates vs the standard GRU across training-set sizes (the squared
sigmoid-tanh gates of "Contrast-Enhanced Gating in GRUs for Robust Low-Data Sequence Learning").

Data: scikit-learn's handwritten digits (1,797 images of 8×8, 10 classes) read row by row
as 64-step sequences of one value (pixel / 16, standardized with the training subset's mean
and population standard deviation, :func:`studies.data.standardize`). A fixed stratified test set (``TEST_SIZE`` = 500) and validation set
(``val_size``) are carved out once with a fixed seed; each run trains on a stratified
subset of ``train_size // 10`` examples per class of the remaining pool, drawn with the
run's seed (so seeds differ in data as well as in initialization). Splits and subsets are
:func:`studies.data.stratified_split`/``stratified_subset``.

Rows: ``<gate>-n<size>`` for gate in (``-``, ``SST``) and each size. So that small sets are
not also starved of optimizer steps, every row runs about ``steps`` optimizer steps:
``epochs = ceil(steps / ceil(size / batch))``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import data, grid, plots
from .config import RunConfig
from .errors import ConfigError
from .files import write_text_atomic
from .models import build_model
from .stats import mean_std
from .taskdata import ArraySplit, TaskData

NAME = "sst-lowdata"
DESCRIPTION = "SST vs standard GRU across training-set sizes on sklearn digits (64-step sequences)"
TEST_SIZE = 500
SPLIT_SEED = 0
GATES = ("-", "SST")


def _rows(sizes: Sequence[int], steps: int, batch: int) -> dict[str, dict[str, Any]]:
    rows = {}
    for g in GATES:
        for n in sizes:
            epochs = math.ceil(steps / math.ceil(n / batch))
            rows[f"{'GRU' if g == '-' else g}-n{n}"] = {"gate": g, "train_size": n, "epochs": epochs}
    return rows


BASE = dict(task="digits", cell="gru", head="linear", optimizer="adamw", lr=3e-3, lr_min=1e-5, weight_decay=0.01,
            schedule="cosine", clip_norm=1.0, batch_size=32, orthogonal_hh=True, val_size=200, eval_batch_size=500)

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "base": {**BASE, "hidden": 8, "progress": False, "threads": 1, "log_every": 1, "gate_stats_size": 16},
        "rows": _rows((20, 40), steps=4, batch=32),
        "seeds": 1,
        "notes": "smoke: sizes 20/40, H=8, ~4 steps — plumbing only.",
    },
    "quick": {
        "base": {**BASE, "hidden": 32, "log_every": 10, "gate_stats_size": 128, "threads": 1},
        "rows": _rows((30, 100, 300, 1000), steps=400, batch=32),
        "seeds": 3,
        "notes": ("quick: digits as 64-step sequences, GRU H=32 + linear head, AdamW lr 3e-3 cosine to 1e-5, "
                  "~400 steps per run, batch 32, sizes 30/100/300/1000, 3 seeds; test 500, validation 200."),
    },
    "full": {
        "base": {**BASE, "hidden": 64, "log_every": 20},
        "rows": _rows((20, 50, 100, 200, 400, 700, 1000), steps=2000, batch=32),
        "seeds": 5,
        "notes": ("full: GRU H=64, ~2,000 steps per run, sizes 20–1000 (up to 100 per class), 5 seeds; "
                  "test 500, validation 200."),
    },
}


row_names, notes, runs = grid.preset_functions(NAME, PRESETS)


def build(cfg: RunConfig) -> tuple[nn.Module, TaskData]:
    data = digits_task(cfg)
    return build_model(cfg, 1, 10, 64), data


def digits_task(cfg: RunConfig) -> TaskData:
    if cfg.task != "digits":
        raise ConfigError(f"study {NAME} runs task 'digits'; got {cfg.task!r}")
    images, labels = data.load_digits()
    x, y = torch.from_numpy(data.to_sequences(images)), torch.from_numpy(labels).long()
    rest, test_idx = data.stratified_split(labels, TEST_SIZE / len(labels), SPLIT_SEED)
    pool_rel, val_rel = data.stratified_split(labels[rest], cfg.val_size / len(rest), SPLIT_SEED + 1)
    pool, val_idx = rest[pool_rel], rest[val_rel]
    if cfg.train_size is None:
        train_idx = pool
    else:
        per_class, most = cfg.train_size // 10, int(np.bincount(labels[pool]).min())
        if not 1 <= per_class <= most:
            raise ConfigError(f"train_size {cfg.train_size} must give 1..{most} examples per class "
                              "of the pool left after test/validation")
        train_idx = pool[data.stratified_subset(labels[pool], per_class, 1000 + cfg.seed)]
    xs = data.standardize(x[train_idx], x[val_idx], x[test_idx])
    train, val, test = (ArraySplit(xi, y[idx]) for xi, idx in zip(xs, (train_idx, val_idx, test_idx), strict=True))
    return TaskData(train, val, test, objective="classify", num_outputs=10,
                    input_size=1, seq_len=64,
                    info={"source": "sklearn digits", "train": len(train_idx), "val": len(val_idx),
                          "test": len(test_idx)})


# --------------------------------------------------------------------------- report
def accuracy_by_size(sdir: str | os.PathLike) -> dict[str, list[tuple[float, float, float]]]:
    """gate → [(train size, mean test acc at best validation epoch, std over seeds)]."""
    by: dict[tuple[str, int], list[float]] = {}
    for r in grid.collect(sdir):
        cfg, s = r["config"], r["summary"]
        if cfg is None or s is None or "test_acc" not in s.get("best", {}):
            continue
        by.setdefault(("GRU" if cfg.gate == "-" else cfg.gate, cfg.train_size), []).append(s["best"]["test_acc"])
    out: dict[str, list[tuple[float, float, float]]] = {}
    for (gate, size), accs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        mean, std = mean_std(accs)
        out.setdefault(gate, []).append((float(size), mean, std))
    return out


def report(sdir: str | os.PathLike) -> dict[str, Path | None]:
    sdir = Path(sdir)
    points = accuracy_by_size(sdir)
    lines = ["| train size | " + " | ".join(points) + " |", "|---|" + "---|" * len(points)]
    sizes = sorted({p[0] for pts in points.values() for p in pts})
    for size in sizes:
        cells = []
        for gate in points:
            hit = [p for p in points[gate] if p[0] == size]
            cells.append(f"{hit[0][1]:.4f} ± {hit[0][2]:.3f}" if hit else "–")
        lines.append(f"| {int(size)} | " + " | ".join(cells) + " |")
    table = sdir / "accuracy_by_size.md"
    write_text_atomic(table, "# test accuracy at the best validation epoch (mean ± std over seeds)\n\n"
                      + "\n".join(lines) + "\n")
    return {
        "accuracy_vs_size": plots.xy_lines(points, sdir / plots.PLOTS_DIR / "accuracy_vs_size.png",
                                           xlabel="training examples", ylabel="test accuracy",
                                           title="SST vs GRU on digits (test acc. at best validation epoch)"),
        "accuracy_table": table,
        "gate_histograms": plots.gate_histograms(sdir),
    }


__all__ = ["DESCRIPTION", "NAME", "PRESETS", "accuracy_by_size", "build", "digits_task", "notes",
           "report", "row_names", "runs"]
