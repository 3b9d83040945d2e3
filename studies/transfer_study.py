"""Study ``transfer``: trained GRUs back in continuous time, under fabrication spread and noise.

Two entry points:

* :func:`transfer` takes finished run directories of *any* study (written by
  :class:`studies.train.Trainer`: ``config.json``, ``checkpoint.pt``, ``summary.json``; see
  :mod:`studies.rundir`),
  rebuilds each model through its study's ``build(cfg)``, loads the checkpoint, transfers
  the recurrent layer to continuous time (:func:`soensim.transfer.transfer_model`, the
  training step as ``dt``: :func:`studies.models.hardware_dt` under a profile, 1 otherwise),
  checks that the exact integrator reproduces the discrete layer (and dopri5, to its
  tolerance), then sweeps the non-idealities of :mod:`soensim.nonideal` — τ spread σ_τ ∈
  {0, 5, 10, 20 %}, weight quantization, coupling clipping, flux noise, state noise —
  evaluating the test metric. It writes ``transfer_rows.csv`` (every evaluation),
  ``transfer.csv`` and ``transfer.md`` (mean ± std over noise seeds and training seeds per
  row, with a software-vs-hardware comparison when both kinds of run are present) and
  ``plots/robustness_<kind>.png``.
* As a registered study (``NAME = "transfer"``) its presets train, on the adding task, a
  small **software** GRU (all parameters free) and a **hardware**-constrained one
  (``soen-dendrite``: update-gate biases frozen at the profile's τ, reset bias frozen,
  ``|W| ≤ 0.5``) with the ordinary trainer; :func:`report` then runs :func:`transfer` on
  them, so ``soensim-study run transfer --preset quick`` measures whether hardware-trained
  models lose less under non-idealities. :func:`adding_experiment` does the same from Python.

Metric: the test metric of the run's task (adding: mean squared error, lower is better;
classification: accuracy). The *drop* is the metric's change from the ideal transferred
model in the direction of "worse".
"""
from __future__ import annotations

import copy
import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from soensim import nonideal
from soensim.transfer import max_abs_diff, to_continuous

from . import grid, plots
from .config import RunConfig
from .errors import ConfigError, RunDirError
from .files import DirLock, write_json_atomic, write_text_atomic
from .models import build_model, hardware_dt
from .rundir import CHECKPOINT_FILE, load_checkpoint, read_config, read_summary
from .stats import mean_std, summarize
from .taskdata import OBJECTIVES, ArraySplit, TaskData, evaluate
from .train import torch_threads

NAME = "transfer"
DESCRIPTION = "trained GRUs in continuous time: robustness to τ spread, quantization, clipping and noise"
HW = "soen-dendrite"

#: Default sweeps: kind → values (0 / None = ideal).
SWEEPS: dict[str, tuple[Any, ...]] = {
    "tau_spread": (0.0, 0.05, 0.1, 0.2),
    "quantize": (None, 64, 16, 8),
    "clip": (None, 1.0, 0.5, 0.25),
    "flux_noise": (0.0, 0.03, 0.1, 0.3),
    "state_noise": (0.0, 0.01, 0.03, 0.1),
}

_BASE = dict(task="adding", cell="gru", gate="-", head="linear", optimizer="adam", lr=1e-2, lr_min=1e-3,
             schedule="cosine", clip_norm=1.0, batch_size=64, orthogonal_hh=False, gate_stats=False,
             log_every=10, progress=False, threads=1, val_size=0)
_ROWS = {"software": {}, "hardware": {"profile": HW, "hw_dt": 1e-8}}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "base": {**_BASE, "seq_len": 10, "hidden": 8, "steps_per_epoch": 10, "epochs": 1, "eval_size": 64},
        "rows": _ROWS, "seeds": 1,
        "notes": "smoke: adding N=10, hidden 8, 10 steps — plumbing only.",
        "sweep_seeds": 2,
    },
    "quick": {
        "base": {**_BASE, "seq_len": 30, "hidden": 32, "steps_per_epoch": 250, "epochs": 4, "eval_size": 500},
        "rows": _ROWS, "seeds": 2,
        "notes": ("quick (CPU, ~2 min): adding N=30, GRU hidden 32, Adam 1e-2 cosine to 1e-3, clip 1, batch 64, "
                  "1,000 steps; software vs soen-dendrite (τ ∈ [10 ns, 1 µs] at Δt = 10 ns: τ/Δt from 1 to 100 "
                  "steps; |W| ≤ 0.5); 2 training seeds × 3 noise seeds."),
        "sweep_seeds": 3,
    },
    "full": {
        "base": {**_BASE, "seq_len": 100, "hidden": 64, "steps_per_epoch": 500, "epochs": 8, "eval_size": 1000,
                 "lr": 3e-3, "lr_min": 1e-4},
        "rows": {"software": {}, "hardware": {"profile": HW, "hw_dt": 5e-9}}, "seeds": 5,
        "notes": ("full: adding N=100, hidden 64, 4,000 steps; software vs soen-dendrite at Δt = 5 ns "
                  "(τ/Δt from 2 to 200 steps); 5 training seeds × 5 noise seeds."),
        "sweep_seeds": 5,
    },
}


# =========================================================================== study API
row_names, notes, runs = grid.preset_functions(NAME, PRESETS)


def build(cfg: RunConfig) -> tuple[nn.Module, TaskData]:
    """Adding-task model and data (the model through :func:`studies.models.build_model`)."""
    data = adding_data(cfg)
    return build_model(cfg, data.input_size, data.num_outputs, data.seq_len), data


def report(sdir: str | os.PathLike) -> dict[str, Path | None]:
    """Run :func:`transfer` on the study's finished runs; figures and tables go into ``sdir``."""
    sdir = Path(sdir)
    info = grid.read_study_file(sdir)
    preset = PRESETS.get(info.get("preset", ""), {})
    dirs = [r["dir"] for r in grid.collect(sdir) if r["summary"] is not None and r["summary"].get("status") != "error"]
    if not dirs:
        return {}
    result = transfer(dirs, sdir, seeds=preset.get("sweep_seeds", 3))
    return dict(result["files"])


# =========================================================================== adding task
def adding_data(cfg: RunConfig) -> TaskData:
    """The adding task of :mod:`studies.gate_ablation` (:class:`studies.tasks.AddingTask`):
    streamed training batches, fixed validation/test sets of ``eval_size`` sequences."""
    if cfg.task != "adding":
        raise ConfigError(f"study {NAME} trains on task 'adding'; got {cfg.task!r} (use transfer() for other runs)")
    from .gate_ablation import synthetic_task

    data, _ = synthetic_task(cfg)
    return data


# =========================================================================== loading runs
def load_run(run_dir: str | os.PathLike) -> tuple[RunConfig, nn.Module, TaskData, dict[str, Any]]:
    """``(cfg, model, data, summary)`` of a trained run: the model rebuilt through its study's
    ``build(cfg)`` with the checkpoint's weights, in eval mode on the CPU."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    if cfg is None or not (run_dir / CHECKPOINT_FILE).exists():
        raise RunDirError(f"{run_dir} is not a trained run directory (it needs config.json and checkpoint.pt)")
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    summary = read_summary(run_dir) or {}
    if cfg.study == NAME:
        model, data = build(cfg)
    else:
        from .registry import get_study

        model, data = get_study(cfg.study).build(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    return cfg, model, data, summary


def recurrent_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, layer)`` of the model's GRU-core layer (``model.rnn`` for the studies' models)."""
    from soensim.transfer import is_gru_core

    found = [(n, m) for n, m in model.named_modules() if is_gru_core(m)]
    if len(found) != 1:
        raise ValueError(f"expected one GRU-core layer in {type(model).__name__}; found {[n for n, _ in found]}")
    return found[0]


def training_dt(cfg: RunConfig, seq_len: int) -> float:
    """The step the model was trained at: seconds per step under a profile, else 1 (steps)."""
    return hardware_dt(cfg, seq_len) if cfg.profile is not None else 1.0


def eval_split(data: TaskData) -> ArraySplit:
    split = data.test if data.test is not None and len(data.test) else data.val
    if split is None or not hasattr(split, "x"):
        raise ValueError("the run's data has no fixed test or validation split to evaluate on")
    return split


def evaluator(data: TaskData, eval_size: int | None = None, batch_size: int = 500):
    """``model -> {"loss", metric}`` on the first ``eval_size`` test examples (None: all;
    otherwise an integer ≥ 1)."""
    split = eval_split(data)
    if eval_size is not None:
        if isinstance(eval_size, bool) or not isinstance(eval_size, int) or eval_size < 1:
            raise ConfigError(f"eval_size must be an integer ≥ 1 (or None for all); got {eval_size!r}")
        split = split.head(eval_size)
    obj = OBJECTIVES[data.objective]

    def run_eval(model: nn.Module) -> dict[str, float]:
        return evaluate(model, split, obj, batch_size)

    run_eval.metric = obj.metric  # type: ignore[attr-defined]
    run_eval.higher_is_better = obj.higher_is_better  # type: ignore[attr-defined]
    return run_eval


# =========================================================================== transfer
def transfer_checks(model: nn.Module, cfg: RunConfig, data: TaskData, *, n_check: int = 8, dopri_steps: int = 32,
                    rtol: float = 1e-8, atol: float = 1e-10) -> dict[str, float]:
    """Exactness of the transfer on a few test sequences (float64):

    ``exact_max_abs``: exact integrator at the training ``dt`` vs the discrete layer;
    ``dopri5_max_abs``: dopri5 (held gates, ``rtol``/``atol``) vs the discrete layer on the
    first ``dopri_steps`` steps."""
    _, layer = recurrent_layer(model)
    dt = training_dt(cfg, data.seq_len)
    layer64 = copy.deepcopy(layer).double()
    cont = to_continuous(layer64, dt)
    x = eval_split(data).sample(n_check).double()
    if not cont.batch_first:
        x = x.transpose(0, 1)
    with torch.no_grad():
        ref, _ = layer64(x)
        exact, _ = cont.run(x)
        xs = x[:, :dopri_steps] if cont.batch_first else x[:dopri_steps]
        refs = ref[:, :dopri_steps] if cont.batch_first else ref[:dopri_steps]
        ode, _ = cont.run(xs, method="dopri5", rtol=rtol, atol=atol)
    return {"dt": dt, "exact_max_abs": max_abs_diff(ref, exact), "dopri5_max_abs": max_abs_diff(refs, ode),
            "dopri5_rtol": rtol, "dopri5_atol": atol}


def transferred(model: nn.Module, cfg: RunConfig, data: TaskData, method: str = "exact") -> nn.Module:
    """The model with its GRU-core layer replaced by the continuous-time model (float64 state;
    weights read in float64 from the constrained layer)."""
    name, layer = recurrent_layer(model)
    dt = training_dt(cfg, data.seq_len)
    cont = to_continuous(copy.deepcopy(layer).double(), dt)
    new = copy.deepcopy(model)
    parent = new.get_submodule(name.rsplit(".", 1)[0]) if "." in name else new
    setattr(parent, name.rsplit(".", 1)[-1], cont.as_layer(method))
    return new


def transfer(run_dirs: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None, *,
             sweeps: Mapping[str, Sequence[Any]] | None = None, seeds: int | Sequence[int] = 3,
             eval_size: int | None = 1000, method: str = "exact", checks: bool = True,
             threads: int | None = 1) -> dict[str, Any]:
    """Transfer finished runs to continuous time and measure their robustness.

    Args:
        run_dirs: one run directory or several (any study; each must hold ``config.json``
            and ``checkpoint.pt``). Runs trained under a profile are "hardware", others
            "software".
        out_dir: where ``transfer.md``, ``transfer.csv``, ``transfer_rows.csv``,
            ``transfer_checks.json`` and ``plots/robustness_<kind>.png`` go (default: the
            parent of the first run directory).
        sweeps: kind → values (default :data:`SWEEPS`); kinds from
            :data:`soensim.nonideal.NONIDEALITIES`.
        seeds: noise/spread seeds per value (a count or a list).
        eval_size: test examples evaluated per point (None: all).
        method: integrator of the transferred model (``"exact"``: the held-gate exponential
            integrator; an ODE method of :mod:`soensim.solvers` is much slower).
        checks: run :func:`transfer_checks` per run.
        threads: torch CPU threads during the sweep (None: unchanged).

    Returns:
        ``{"rows": every evaluation, "summary": aggregated rows, "checks": {run_id: ...},
        "comparison": software-vs-hardware records, "metric": name, "files": {name: path}}``.
    """
    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, os.PathLike)) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ConfigError("transfer: no run directories given")
    out = Path(out_dir) if out_dir is not None else dirs[0].parent
    sweeps = dict(SWEEPS if sweeps is None else sweeps)
    for kind in sweeps:
        nonideal.get_nonideality(kind)
    if isinstance(seeds, int) and (isinstance(seeds, bool) or seeds < 1):
        raise ConfigError(f"seeds must be an integer ≥ 1 (or a list of seeds); got {seeds!r}")
    rows: list[dict[str, Any]] = []
    check_results: dict[str, dict[str, float]] = {}
    metric = higher = None
    with DirLock(out, "transfer output folder"), torch_threads(threads):
        for d in dirs:
            cfg, model, data, summary = load_run(d)
            info = {"run_id": cfg.run_id, "row": cfg.row, "study": cfg.study, "trained": _trained(cfg),
                    "profile": cfg.profile or "software"}
            if checks:
                check_results[cfg.run_id] = transfer_checks(model, cfg, data)
            score = evaluator(data, eval_size)
            metric, higher = score.metric, score.higher_is_better  # type: ignore[attr-defined]
            discrete = score(model)
            cont = transferred(model, cfg, data, method)
            for kind, values in sweeps.items():
                rows += nonideal.sweep(cont, score, kind, values, seeds,
                                       extra={**info, f"discrete_{metric}": discrete[metric]})
        summary_rows = _summarize(rows, metric)
        comparison = _compare(summary_rows, metric, higher)
        files = write_outputs(out, rows, summary_rows, comparison, check_results, metric, higher, sweeps)
    return {"rows": rows, "summary": summary_rows, "checks": check_results, "comparison": comparison,
            "metric": metric, "higher_is_better": higher, "files": files}


def _trained(cfg: RunConfig) -> str:
    return "hardware" if cfg.profile is not None else "software"


def _key(v: Any) -> Any:
    return "ideal" if v is None else v


def _summarize(rows: Sequence[Mapping[str, Any]], metric: str | None) -> list[dict[str, Any]]:
    """Mean ± std per (row, kind, value) over noise seeds and training seeds, with the drop
    from the ideal value of the same row."""
    if not rows:
        return []
    agg = summarize([{**r, "value": _key(r["value"])} for r in rows], metrics=["loss", metric],
                    by=("row", "trained", "kind", "value"))
    ideal = {(r["row"], r["kind"]): r for r in agg if r["value"] in ("ideal", 0, 0.0)}
    for r in agg:
        base = ideal.get((r["row"], r["kind"]))
        r[f"{metric}_ideal"] = base[f"{metric}_mean"] if base else math.nan
    return agg


def _drop(value: float, ideal: float, higher: bool | None) -> float:
    return (ideal - value) if higher else (value - ideal)


def _compare(summary: Sequence[Mapping[str, Any]], metric: str | None, higher: bool | None) -> list[dict[str, Any]]:
    """Per (kind, value): mean metric and drop from ideal for software and hardware runs."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in summary:
        key = (r["kind"], r["value"])
        rec = out.setdefault(key, {"kind": r["kind"], "value": r["value"]})
        g = r["trained"]
        vals = rec.setdefault("_" + g, [])
        vals.append((r[f"{metric}_mean"], r[f"{metric}_ideal"]))
    records = []
    for rec in out.values():
        for g in ("software", "hardware"):
            vals = rec.pop("_" + g, [])
            if vals:
                rec[f"{g}_{metric}"] = mean_std(v for v, _ in vals)[0]
                rec[f"{g}_drop"] = mean_std(_drop(v, i, higher) for v, i in vals)[0]
                rec[f"{g}_rel_drop"] = mean_std(_drop(v, i, higher) / abs(i) for v, i in vals if i)[0]
        if "software_drop" in rec and "hardware_drop" in rec:
            rec["hardware_loses_less"] = rec["hardware_drop"] < rec["software_drop"]
            rec["hardware_loses_less_rel"] = rec["hardware_rel_drop"] < rec["software_rel_drop"]
        records.append(rec)
    return records


# =========================================================================== outputs
def _pct(v: Any) -> str:
    return "–" if not isinstance(v, float) or math.isnan(v) else f"{100 * v:+.0f}%"


def _value_label(kind: str, v: Any) -> str:
    if v in ("ideal", None) or v == 0:
        return "ideal"
    if kind in ("tau_spread",):
        return f"{100 * float(v):g}%"
    if kind == "quantize":
        return f"{int(v)} levels"
    if kind == "clip":
        return f"J_max={v:g}"
    return f"σ={v:g}"


def _csv(records: Sequence[Mapping[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", restval="")
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
    return buf.getvalue()


def write_outputs(out: Path, rows, summary, comparison, checks, metric, higher, sweeps) -> dict[str, Path | None]:
    """``transfer_rows.csv``, ``transfer.csv``, ``transfer.md``, ``transfer_checks.json`` and
    one robustness PNG per kind under ``out/plots``."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path | None] = {}
    write_text_atomic(out / "transfer_rows.csv", _csv(rows))
    write_text_atomic(out / "transfer.csv", _csv(summary))
    write_json_atomic(out / "transfer_checks.json", checks)
    files["transfer_rows_csv"] = out / "transfer_rows.csv"
    files["transfer_csv"] = out / "transfer.csv"
    files["transfer_checks"] = out / "transfer_checks.json"
    better = "higher" if higher else "lower"
    lines = ["# Transfer to continuous time: robustness to non-idealities", "",
             f"Metric: test {metric} ({better} is better), mean ± std over noise seeds and training seeds. "
             "The transferred model runs the exact held-gate integrator at the training step; "
             "'ideal' is the transferred model without non-idealities.", ""]
    if checks:
        lines += ["## Transfer exactness (float64)", "", "| run | dt | exact vs discrete | dopri5 vs discrete |",
                  "|---|---|---|---|"]
        for rid, c in checks.items():
            lines.append(f"| {rid} | {c['dt']:.3g} | {c['exact_max_abs']:.2e} | {c['dopri5_max_abs']:.2e} "
                         f"(rtol {c['dopri5_rtol']:g}) |")
        lines.append("")
    for kind in sweeps:
        recs = [r for r in summary if r["kind"] == kind]
        if not recs:
            continue
        values = list(dict.fromkeys(r["value"] for r in recs))
        lines += [f"## {kind}: {nonideal.get_nonideality(kind).description}", "",
                  "| row | trained | " + " | ".join(_value_label(kind, v) for v in values) + " |",
                  "|---|---|" + "---|" * len(values)]
        for row in dict.fromkeys(r["row"] for r in recs):
            by_v = {r["value"]: r for r in recs if r["row"] == row}
            trained = next(iter(by_v.values()))["trained"]
            cells = [grid.format_value(by_v[v][f"{metric}_mean"], by_v[v][f"{metric}_std"]) if v in by_v else "" for v in values]
            lines.append(f"| {row} | {trained} | " + " | ".join(cells) + " |")
        lines.append("")
    comp = [c for c in comparison if "software_drop" in c and "hardware_drop" in c]
    if comp:
        lines += ["## Software-trained vs hardware-trained: drop from ideal", "",
                  f"Drop = change of the test {metric} from the same model's ideal value, towards worse "
                  "(positive = worse); relative drop = drop / ideal. Averaged over the runs of each kind. "
                  "When the two kinds start from different ideal values, the absolute and the relative "
                  "comparison can disagree: read both.", "",
                  f"| non-ideality | value | software {metric} | software drop (rel.) | hardware {metric} | "
                  "hardware drop (rel.) | hardware loses less: absolute | relative |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in comp:
            if c["value"] in ("ideal", 0, 0.0):
                continue
            lines.append(f"| {c['kind']} | {_value_label(c['kind'], c['value'])} | {grid.format_value(c[f'software_{metric}'])} | "
                         f"{grid.format_value(c['software_drop'], digits=3)} ({_pct(c['software_rel_drop'])}) | "
                         f"{grid.format_value(c[f'hardware_{metric}'])} | {grid.format_value(c['hardware_drop'], digits=3)} "
                         f"({_pct(c['hardware_rel_drop'])}) | {grid.format_value(c['hardware_loses_less'])} | "
                         f"{grid.format_value(c['hardware_loses_less_rel'])} |")
        n_abs = sum(bool(c["hardware_loses_less"]) for c in comp if c["value"] not in ("ideal", 0, 0.0))
        n_rel = sum(bool(c["hardware_loses_less_rel"]) for c in comp if c["value"] not in ("ideal", 0, 0.0))
        n = sum(1 for c in comp if c["value"] not in ("ideal", 0, 0.0))
        lines += ["", f"Hardware-trained runs lose less in {n_abs} of {n} settings (absolute) and {n_rel} of {n} "
                  "(relative).", ""]
    write_text_atomic(out / "transfer.md", "\n".join(lines))
    files["transfer_md"] = out / "transfer.md"
    for kind in sweeps:
        files[f"robustness_{kind}"] = robustness_plot(summary, kind, metric, out / "plots" / f"robustness_{kind}.png")
    return files


def robustness_plot(summary: Sequence[Mapping[str, Any]], kind: str, metric: str | None,
                    path: str | os.PathLike) -> Path | None:
    """Test metric vs the non-ideality's value, one line per row (mean ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in summary if r["kind"] == kind]
    if not recs:
        return None
    values = list(dict.fromkeys(r["value"] for r in recs))
    numeric = all(isinstance(v, (int, float)) for v in values)
    xs = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in dict.fromkeys(r["row"] for r in recs):
        pts = [r for r in recs if r["row"] == row]
        style = "-" if pts[0]["trained"] == "hardware" else "--"
        ax.errorbar([xs[r["value"]] for r in pts], [r[f"{metric}_mean"] for r in pts],
                    yerr=[r[f"{metric}_std"] for r in pts], marker="o", capsize=3, linestyle=style,
                    label=f"{row} ({pts[0]['trained']})")
    if not numeric:
        ax.set_xticks(list(xs.values()))
        ax.set_xticklabels([_value_label(kind, v) for v in values])
    means = [r[f"{metric}_mean"] for r in recs]
    if all(m > 0 for m in means) and max(means) > 20 * min(means):
        ax.set_yscale("log")  # errors spanning orders of magnitude (e.g. MSE)
    entry = nonideal.get_nonideality(kind)
    ax.set_xlabel(entry.label)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"robustness: {entry.description}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save_figure(fig, Path(path))


# =========================================================================== adding experiment
def adding_experiment(out: str | os.PathLike, preset: str = "quick", *, seeds: int | None = None,
                      overrides: Sequence[str] = (), sweeps: Mapping[str, Sequence[Any]] | None = None,
                      sweep_seeds: int | None = None) -> dict[str, Any]:
    """Train the preset's software and hardware adding-task GRUs (CPU) and run :func:`transfer`.

    Runs go to ``out/transfer/<preset>/runs`` (finished runs are reused); returns the result of
    :func:`transfer` (tables and figures in ``out/transfer/<preset>``)."""
    from .registry import STUDIES, register

    if STUDIES.get(NAME) != __name__:
        register(NAME, __name__)  # the trainer rebuilds runs through the registry
    configs = runs(preset, seeds=seeds, overrides=overrides)
    sdir = grid.study_dir(out, NAME, preset)
    summaries = grid.run_grid(configs, sdir, study=NAME, preset=preset, extra={"notes": notes(preset)})
    failed = [s for s in summaries if s.get("status") == "error"]
    if failed:
        raise RuntimeError(f"training failed for {[s['run_id'] for s in failed]}: {failed[0].get('error')}")
    dirs = [grid.run_dir(sdir, c) for c in configs]
    n = PRESETS[preset].get("sweep_seeds", 3) if sweep_seeds is None else sweep_seeds
    result = transfer(dirs, sdir, sweeps=sweeps, seeds=n)
    result["train"] = summaries
    return result


__all__ = ["DESCRIPTION", "NAME", "PRESETS", "SWEEPS", "adding_data", "adding_experiment", "build",
           "evaluator", "load_run", "notes", "recurrent_layer", "report", "robustness_plot", "row_names", "runs",
           "training_dt", "transfer", "transfer_checks", "transferred", "write_outputs"]
