"""Figures of a study directory (matplotlib, Agg backend, PNG files under ``plots/``).

Every ``*_figure`` function reads the run logs (``epochs.jsonl``, ``steps.jsonl``,
``gates.jsonl``) or summaries of a study directory and returns a matplotlib figure (None
when there is nothing to draw); the function of the same name without ``_figure`` saves it
as one PNG (:func:`save_figure`) and returns the path. In curves, rows are lines (median
over seeds, min–max band when there are several).
"""
from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from .files import atomic_write, read_jsonl
from .grid import collect
from .rundir import EPOCHS_FILE, GATES_FILE, STEPS_FILE
from .stats import mean_std

PLOTS_DIR = "plots"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, imported on first use (running a study needs no matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rows(sdir: Path) -> dict[str, list[dict[str, Any]]]:
    """Row name → runs (with their logs loaded lazily by the callers)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in collect(sdir):
        row = r["config"].row if r["config"] is not None else r["run_id"].rsplit("-s", 1)[0]
        rows.setdefault(row, []).append(r)
    return rows


def _series(runs: Sequence[dict[str, Any]], file: str, x: str, y: str) -> list[tuple[list[float], list[float]]]:
    out = []
    for r in runs:
        recs = [rec for rec in read_jsonl(r["dir"] / file) if y in rec and _num(rec[y])]
        if recs:
            out.append(([rec[x] for rec in recs], [float(rec[y]) for rec in recs]))
    return out


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _median_band(series: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Align on x values common to every seed; median and min/max per x."""
    common = set(series[0][0])
    for xs, _ in series[1:]:
        common &= set(xs)
    xs = sorted(common)
    cols = [[dict(zip(sx, sy, strict=True))[x] for sx, sy in series] for x in xs]
    return xs, [statistics.median(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def _smooth(ys: list[float], k: int) -> list[float]:
    if k <= 1:
        return ys
    out, acc = [], 0.0
    for i, v in enumerate(ys):
        acc += v
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def save_figure(fig: Any, path: str | os.PathLike | None) -> Path | None:
    """Save ``fig`` (None: nothing) as PNG with :func:`studies.files.atomic_write` and close it."""
    if fig is None or path is None:
        return None
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"))
    finally:
        pyplot().close(fig)


def curves(sdir: str | os.PathLike, y: str, fname: str, **kw: Any) -> Path | None:
    """:func:`curves_figure` saved as ``plots/<fname>``."""
    return save_figure(curves_figure(sdir, y, **kw), Path(sdir) / PLOTS_DIR / fname)


def curves_figure(sdir: str | os.PathLike, y: str, *, ylabel: str | None = None, title: str | None = None,
                  source: str = "epochs", logy: bool = False, smooth: int = 1,
                  rows: Callable[[str], bool] | None = None, hline: float | None = None) -> Any:
    """One line per row of ``y`` against epoch (``source="epochs"``) or step (``"steps"``),
    labelled with the row name; ``hline``: a dotted reference line ("baseline loss")."""
    sdir = Path(sdir)
    file, x = (EPOCHS_FILE, "epoch") if source == "epochs" else (STEPS_FILE, "step")
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    drawn = 0
    for row, runs in _rows(sdir).items():
        if rows is not None and not rows(row):
            continue
        series = _series(runs, file, x, y)
        if not series:
            continue
        xs, med, lo, hi = _median_band(series)
        if not xs:
            continue
        (line,) = ax.plot(xs, _smooth(med, smooth), label=row, lw=1.4)
        if len(series) > 1:
            ax.fill_between(xs, _smooth(lo, smooth), _smooth(hi, smooth), color=line.get_color(), alpha=0.15, lw=0)
        drawn += 1
    if not drawn:
        pyplot().close(fig)
        return None
    if hline is not None:
        ax.axhline(hline, color="grey", ls=":", lw=1, label="baseline loss")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def gate_histograms(sdir: str | os.PathLike, fname: str = "gate_histograms.png", **kw: Any) -> Path | None:
    """:func:`gate_histograms_figure` saved as ``plots/<fname>``."""
    return save_figure(gate_histograms_figure(sdir, **kw), Path(sdir) / PLOTS_DIR / fname)


def gate_histograms_figure(sdir: str | os.PathLike, key: str | None = None, bins: int = 30) -> Any:
    """Per-unit gate activations (mean over batch and time) before and after training, per row
    (as in Fig. 4 of Gu et al. 2020, arXiv:1910.09890): first seed of each row, epoch 0 against the last recorded epoch."""
    sdir = Path(sdir)
    panels = []
    for row, runs in _rows(sdir).items():
        recs = read_jsonl(runs[0]["dir"] / GATES_FILE)
        if len(recs) < 1:
            continue
        k = key or next((c for c in ("decay_gate",) if c in recs[0]),
                        next((c for c in recs[0] if isinstance(recs[0][c], list)), None))
        if k is None:
            continue
        panels.append((row, k, recs[0], recs[-1]))
    if not panels:
        return None
    n = len(panels)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = pyplot().subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, (row, k, first, last) in zip(axes.flat, panels, strict=False):  # axes beyond the panels stay empty
        ax.hist(first[k], bins=bins, range=(0, 1), alpha=0.55, label=f"epoch {first['epoch']}")
        if last is not first:
            ax.hist(last[k], bins=bins, range=(0, 1), alpha=0.55, label=f"epoch {last['epoch']}")
        ax.set_title(f"{row}: {k}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("per-unit gate activation (mean over batch and time)", fontsize=9)
    fig.tight_layout()
    return fig


def bars(sdir: str | os.PathLike, key: str, fname: str, **kw: Any) -> Path | None:
    """:func:`bars_figure` saved as ``plots/<fname>``."""
    return save_figure(bars_figure(sdir, key, **kw), Path(sdir) / PLOTS_DIR / fname)


def bars_figure(sdir: str | os.PathLike, key: str, ylabel: str | None = None, title: str | None = None) -> Any:
    """Bar per row of a summary value (mean over seeds), e.g. loss-spike counts."""
    sdir = Path(sdir)
    names, vals = [], []
    for row, runs in _rows(sdir).items():
        v = [r["summary"][key] for r in runs if r["summary"] is not None and _num(r["summary"].get(key))]
        if v:
            names.append(row)
            vals.append(mean_std(v)[0])
    if not names:
        return None
    fig, ax = pyplot().subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), vals, color="tab:red", alpha=0.7)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel or key)
    ax.set_title(title or key)
    ax.grid(axis="y", alpha=0.3)
    return fig


def xy_lines(points: dict[str, list[tuple[float, float, float]]], path: str | os.PathLike, **kw: Any) -> Path | None:
    """:func:`xy_lines_figure` saved as ``path``."""
    return save_figure(xy_lines_figure(points, **kw), path)


def xy_lines_figure(points: dict[str, list[tuple[float, float, float]]], *, xlabel: str, ylabel: str, title: str,
                    logx: bool = True) -> Any:
    """Lines from ``{label: [(x, mean, std), ...]}`` with error bars (e.g. accuracy vs train size)."""
    if not points:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for label, pts in points.items():
        pts = sorted(pts)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


__all__ = ["PLOTS_DIR", "bars", "bars_figure", "curves", "curves_figure", "gate_histograms", "gate_histograms_figure",
           "save_figure", "xy_lines", "xy_lines_figure"]
