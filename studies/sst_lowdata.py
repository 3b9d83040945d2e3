"""Study ``sst-lowdata``: SST gates vs the standard GRU across training-set sizes (the squared
sigmoid-tanh gates of "Contrast-Enhanced Gating in GRUs for Robust Low-Data Sequence Learning").

Two SST variants run beside the GRU: ``SST`` (the paper's: sigmoid² in the reset and update
gates, tanh candidate) and ``SSTN`` (the candidate squared too, tanh·|tanh|, soensim 0.1's SST).

Data: scikit-learn's handwritten digits (1,797 images of 8×8, 10 classes) read row by row
as 64-step sequences of one value (pixel / 16, standardized with the training subset's mean
and population standard deviation, :func:`studies.data.standardize`). A fixed stratified test set (``TEST_SIZE`` = 500) and validation set
(``val_size``) are carved out once with a fixed seed; each run trains on a stratified
subset of ``train_size // 10`` examples per class of the remaining pool, drawn with the
run's seed (so seeds differ in data as well as in initialization). Splits and subsets are
:func:`studies.data.stratified_split`/``stratified_subset``.

Rows: ``<gate>-n<size>`` for gate in (``-`` written ``GRU``, ``SST``, ``SSTN``) and each size. So that small sets are
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
from .stats import mean_ci, welch_p
from .taskdata import ArraySplit, TaskData

NAME = "sst-lowdata"
DESCRIPTION = "SST and SSTN vs standard GRU across training-set sizes on sklearn digits (64-step sequences)"
TEST_SIZE = 500
SPLIT_SEED = 0
GATES = ("-", "SST", "SSTN")
#: The row label of each gate, in table order.
LABELS = {g: "GRU" if g == "-" else g for g in GATES}
#: Configuration fields the results header states (digits: no image or hardware fields).
HEADER_FIELDS = tuple(f for f in grid.HEADER_FIELDS
                      if f not in ("image_size", "channels", "train_subset", "test_subset", "seq_len", "hw_dt"))


def _rows(sizes: Sequence[int], steps: int, batch: int) -> dict[str, dict[str, Any]]:
    rows = {}
    for g in GATES:
        for n in sizes:
            epochs = math.ceil(steps / math.ceil(n / batch))
            rows[f"{LABELS[g]}-n{n}"] = {"gate": g, "train_size": n, "epochs": epochs}
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
        "seeds": 5,
        "notes": ("quick: digits as 64-step sequences, GRU H=32 + linear head, AdamW lr 3e-3 cosine to 1e-5, "
                  "~400 steps per run, batch 32, sizes 30/100/300/1000, 5 seeds; test 500, validation 200."),
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
def accuracies(sdir: str | os.PathLike) -> dict[str, dict[int, list[float]]]:
    """row gate (``GRU``, ``SST``, ``SSTN``) → train size → the seeds' test accuracies at the best
    validation epoch (finished runs only)."""
    by: dict[str, dict[int, list[float]]] = {}
    for r in grid.collect(sdir):
        cfg, s = r["config"], r["summary"]
        if cfg is None or s is None or "test_acc" not in s.get("best", {}):
            continue
        by.setdefault(LABELS.get(cfg.gate, cfg.gate), {}).setdefault(cfg.train_size, []).append(s["best"]["test_acc"])
    order = list(LABELS.values())
    ranked = sorted(by.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    return {g: dict(sorted(sizes.items())) for g, sizes in ranked}


def accuracy_by_size(sdir: str | os.PathLike) -> dict[str, list[tuple[float, float, float]]]:
    """gate → [(train size, mean test acc at best validation epoch, 95 % CI half-width over seeds)]."""
    return _points(accuracies(sdir))


def _points(accs: dict[str, dict[int, list[float]]]) -> dict[str, list[tuple[float, float, float]]]:
    return {g: [(float(n), *mean_ci(vals)) for n, vals in sizes.items()] for g, sizes in accs.items()}


def table(accs: dict[str, dict[int, list[float]]]) -> str:
    """Markdown of :func:`accuracies`' result: per size, each gate's mean ± 95 % CI (n seeds), and
    Welch's p of each SST variant against the GRU at that size."""
    gates = list(accs)
    rivals = [g for g in gates if g != "GRU"] if "GRU" in accs else []
    head = ["train size", *gates, *(f"p({g} vs GRU)" for g in rivals)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for size in sorted({n for sizes in accs.values() for n in sizes}):
        cells = []
        for g in gates:
            vals = accs[g].get(size)
            if not vals:
                cells.append("–")
                continue
            mean, half = mean_ci(vals)
            cells.append(f"{grid.ci_cell(mean, half)} ({len(vals)})")
        cells += [grid.p_cell(welch_p(accs[g].get(size, []), accs["GRU"].get(size, []))) for g in rivals]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(sdir: str | os.PathLike) -> dict[str, Path | None]:
    sdir = Path(sdir)
    accs = accuracies(sdir)
    path = sdir / "accuracy_by_size.md"
    write_text_atomic(path, "# test accuracy at the best validation epoch (mean ± 95 % CI over seeds, seeds in "
                      "parentheses; Welch's t-test p against the GRU)\n\n" + table(accs))
    return {
        "accuracy_vs_size": plots.xy_lines(_points(accs), sdir / plots.PLOTS_DIR / "accuracy_vs_size.png",
                                           xlabel="training examples", ylabel="test accuracy (mean, 95 % CI)",
                                           title="SST variants vs GRU on digits (test acc. at best validation epoch)"),
        "accuracy_table": path,
        "gate_histograms": plots.gate_histograms(sdir),
    }


__all__ = ["DESCRIPTION", "NAME", "PRESETS", "accuracies", "accuracy_by_size", "build", "digits_task", "notes",
           "report", "row_names", "runs", "table"]
