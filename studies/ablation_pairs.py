"""Baseline/ablated pairs of a study: the accuracy gap, its 95 % interval and Welch's test.

A pair is two rows whose names differ only in ``baseline`` → ``ablated`` (``baseline`` /
``ablated``, ``baseline-hw-B2`` / ``ablated-hw-B2``, …). For every pair with finished runs on
both sides, :func:`pairs` gives each side's mean final test metric with its 95 %
interval (:func:`studies.stats.mean_ci`), the gap baseline − ablated with the Welch interval of
a difference of means (:func:`studies.stats.diff_ci`) and Welch's two-sided p
(:func:`studies.stats.welch_p`). :func:`gap_figure` draws the gap against the hardware limit of
the pair, loose to tight: software (no limit), the per-weight bound alone, then the flux budgets
from the largest to the smallest.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from . import grid, plots
from .files import write_text_atomic
from .stats import diff_ci, mean_ci, welch_p

BASELINE, ABLATED = "baseline", "ablated"


def row_values(sdir: str | os.PathLike) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """``({row: final test metric of every finished seed}, {row: its config})``."""
    values: dict[str, list[float]] = {}
    configs: dict[str, Any] = {}
    for r in grid.collect(sdir):
        cfg, s = r["config"], r["summary"]
        if cfg is None or s is None or s.get("status") != "finished":
            continue
        v = grid.summary_values(s, s.get("metric", "acc"))["final_test"]
        if isinstance(v, (int, float)) and math.isfinite(v):
            values.setdefault(cfg.row, []).append(float(v))
            configs.setdefault(cfg.row, cfg)
    return values, configs


def _limit(cfg: Any) -> tuple[str, float]:
    """The pair's label on the gap axis and a sort key, loose (small) to tight (large)."""
    if cfg.profile is None:
        return "software", -2.0
    from .models import run_profile

    budget = run_profile(cfg).flux_budget
    if budget is None:
        return "|W| bound only", -1.0
    return f"Σ|W| ≤ {budget:.3g}", 1.0 / budget


def pairs(sdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every baseline/ablated pair with values on both sides, loose to tight: ``pair`` (the
    baseline row), ``limit`` (axis label), ``baseline``/``ablated`` (mean, CI half-width, n),
    ``gap`` (mean difference, Welch CI half-width) and ``p`` (Welch's two-sided p)."""
    values, configs = row_values(sdir)
    out = []
    for row, base in values.items():
        if not row.startswith(BASELINE):
            continue
        partner = ABLATED + row[len(BASELINE):]
        abl = values.get(partner)
        if not abl:
            continue
        label, key = _limit(configs[row])
        out.append({"pair": row, "ablated_row": partner, "limit": label, "key": key,
                    "baseline": (*mean_ci(base), len(base)), "ablated": (*mean_ci(abl), len(abl)),
                    "gap": diff_ci(base, abl), "p": welch_p(base, abl)})
    return sorted(out, key=lambda p: (p["key"], p["pair"]))


def pair_table(found: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`pairs`' result (empty string when there is none)."""
    if not found:
        return ""
    lines = ["| pair | limit | baseline | ablated | gap (baseline − ablated) | Welch p | seeds |",
             "|---|---|---|---|---|---|---|"]
    for p in found:
        (bm, bh, bn), (am, ah, an), (gm, gh) = p["baseline"], p["ablated"], p["gap"]
        lines.append(f"| {p['pair']} / {p['ablated_row']} | {grid.markdown_cell(p['limit'])} | {grid.ci_cell(bm, bh)} | "
                     f"{grid.ci_cell(am, ah)} | {gm:+.4f}" + (f" ± {gh:.3f}" if math.isfinite(gh) else "")
                     + f" | {grid.p_cell(p['p'])} | {bn}/{an} |")
    return "\n".join(lines) + "\n"


def gap_figure(found: list[dict[str, Any]]) -> Any:
    """Gap baseline − ablated (mean, 95 % Welch interval) per pair, loose to tight."""
    if not found:
        return None
    plt = plots.pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = range(len(found))
    gaps = [p["gap"][0] for p in found]
    err = [p["gap"][1] if math.isfinite(p["gap"][1]) else 0.0 for p in found]
    ax.errorbar(xs, gaps, yerr=err, marker="o", capsize=4, linestyle="none")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(list(xs), [f"{p['limit']}\n({p['pair']})" for p in found], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy gap, baseline − ablated")
    ax.set_title("does the b_z ablation matter under the hardware limit? (mean, 95 % CI)")
    ax.grid(alpha=0.3)
    return fig


def report(sdir: str | os.PathLike) -> dict[str, Path | None]:
    """Write ``pairs.md`` and ``plots/ablation_gap.png`` (nothing when the study has no pair)."""
    sdir = Path(sdir)
    found = pairs(sdir)
    if not found:
        return {"pairs_table": None, "ablation_gap": None}
    table = write_text_atomic(sdir / "pairs.md", "# baseline vs ablated: final test metric, mean ± 95 % CI over "
                              "seeds; gap with Welch's interval and two-sided p\n\n" + pair_table(found))
    return {"pairs_table": table,
            "ablation_gap": plots.save_figure(gap_figure(found), sdir / plots.PLOTS_DIR / "ablation_gap.png")}


__all__ = ["gap_figure", "pair_table", "pairs", "report", "row_values"]
