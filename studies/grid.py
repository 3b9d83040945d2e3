"""A study is a grid of runs (rows × seeds); launchers execute the grid.

Study directory layout (``--out OUT`` → ``OUT/<study>/<preset>/``)::

    study.json         study name, preset, seeds, overrides, the run ids in order
    runs/<run_id>/     one run directory each (see :mod:`studies.rundir`)
    results.md/.csv    the results table (``summarize``)
    plots/*.png        figures (``plot``)
    .lock              held by the one process writing the study (:class:`studies.files.DirLock`)

Run ids are ``<row>-s<seed>`` and must be unique in a grid. Before anything is written,
every run directory is checked (:func:`studies.rundir.check_reuse`): a finished run of the
same configuration is skipped, an interrupted one resumed, and results of another
configuration stop the whole grid with an error listing what differs (``restart=True``
discards them instead). So re-running the same command finishes an interrupted grid, and
a changed command never mixes old and new results. A call with other rows or seeds but the
same settings adds its runs to ``study.json`` (the tables then cover both calls); a call with
other settings (overrides, profile file) starts a new list.

Seeds: ``seeds=N`` runs seeds 0..N−1 (default: the preset's); an override ``seed=S`` runs
that one seed instead (giving both is an error). ``row`` and ``study`` cannot be
overridden: they name the runs.

Launchers (registry :data:`LAUNCHERS`): ``local`` runs one after another in this
process; ``process`` uses a pool of ``workers`` spawned processes (each with
``cpu_count // workers`` torch threads unless the config sets ``threads``; on Ctrl-C,
SIGTERM or an error the pool's workers are terminated, their checkpoints stay
resumable); ``ray`` submits each run as a Ray task asking for 1 GPU when the cluster has
GPUs, else 1 CPU (``pip install 'soensim[ray]'``); ``batched`` (:mod:`studies.packed`) trains
the runs whose models share a shape and kernel mode as one batched model (one Triton launch
per step on CUDA for all of them), with each run's results as if it had trained alone.

Errors inside one run: a mistake of that run's own configuration (e.g. an unknown task)
is recorded (``error.txt``, status ``"error"``) and the grid goes on; a problem of the
environment or of the recorded files (:class:`OSError`, :class:`~studies.errors.DataError`,
:class:`~studies.errors.RunDirError`) stops the grid.
"""
from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import os
import signal
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .config import RunConfig, parse_overrides
from .errors import ENVIRONMENT_ERRORS, ConfigError, DataError, RunDirError
from .files import DirLock, read_json, write_json_atomic, write_text_atomic
from .rundir import ERROR_FILE, RunDir, check_reuse, clear, read_config, read_summary
from .stats import mean_ci

STUDY_FILE = "study.json"
RUNS_DIR = "runs"

Job = tuple[RunConfig, Path]


def study_dir(out: str | os.PathLike, study: str, preset: str) -> Path:
    return Path(out) / study / preset


def run_dir(sdir: str | os.PathLike, cfg: RunConfig) -> Path:
    return Path(sdir) / RUNS_DIR / cfg.run_id


def study_lock(sdir: str | os.PathLike) -> DirLock:
    """The lock of a study directory's writer (a context manager)."""
    return DirLock(sdir, "study directory")


def make_grid(study: str, base: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]], row_names: Sequence[str],
              seeds: Sequence[int], overrides: Mapping[str, str] | Sequence[str] = ()) -> list[RunConfig]:
    """One RunConfig per (row, seed): preset ``base``, then the row's settings, then the
    user's ``overrides`` (``key=value``, validated), then ``seed``. Unknown rows, or an
    override of ``study``, ``row`` or ``seed``, are errors."""
    unknown = [r for r in row_names if r not in rows]
    if unknown:
        raise ConfigError(f"unknown rows {unknown} for study {study!r}; known rows: {list(rows)}")
    user = parse_overrides(overrides)
    for key in ("study", "row", "seed"):
        if key in user:
            raise ConfigError(f"{key} cannot be overridden for a grid: " +
                              ("choose seeds with --seeds N or one --set seed=S" if key == "seed"
                               else f"{key} names the runs (choose rows with --rows)"))
    configs = []
    for name in row_names:
        cfg = RunConfig(study=study, row=name, **{**base, **rows[name]})
        if user:
            cfg = cfg.replace(**user)
        configs.extend(cfg.replace(seed=s) for s in seeds)
    check_unique(configs)
    return configs


def preset_grid(study: str, presets: Mapping[str, Mapping[str, Any]], preset: str, seeds: int | None = None,
                overrides: Mapping[str, str] | Sequence[str] = (), rows: Sequence[str] | None = None) -> list[RunConfig]:
    """The grid of a study preset ``{"base": {...}, "rows": {name: {...}}, "seeds": n}``.

    ``seeds``: number of seeds 0..n-1 (default: the preset's); an override ``seed=S`` runs
    that single seed instead. ``rows``: a subset of the preset's rows (default: all, in
    preset order)."""
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r} for study {study!r}; known presets: {list(presets)}")
    p = presets[preset]
    user = parse_overrides(overrides)
    if "seed" in user:
        if seeds is not None:
            raise ConfigError("give either --seeds N (seeds 0..N-1) or --set seed=S (that one seed), not both")
        seed_list = [RunConfig(seed=user.pop("seed")).seed]
    else:
        n = p.get("seeds", 1) if seeds is None else seeds
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"seeds must be an integer ≥ 1; got {n!r}")
        seed_list = list(range(n))
    return make_grid(study, p["base"], p["rows"], list(rows) if rows else list(p["rows"]), seed_list, user)


def preset_functions(study: str, presets: Mapping[str, Mapping[str, Any]]) -> tuple[
        Callable[[str], list[str]], Callable[[str], str], Callable[..., list[RunConfig]]]:
    """``row_names(preset)``, ``notes(preset)`` and ``runs(preset, seeds=None, overrides=(), rows=None)``
    of a study defined by its presets (see :mod:`studies.registry`)."""

    def row_names(preset: str) -> list[str]:
        return list(presets[preset]["rows"])

    def notes(preset: str) -> str:
        return presets[preset].get("notes", "")

    def runs(preset: str, seeds: int | None = None, overrides: Mapping[str, str] | Sequence[str] = (),
             rows: Sequence[str] | None = None) -> list[RunConfig]:
        return preset_grid(study, presets, preset, seeds, overrides, rows)

    return row_names, notes, runs


def check_unique(configs: Sequence[RunConfig]) -> None:
    seen: set[str] = set()
    for cfg in configs:
        if cfg.run_id in seen:
            raise ConfigError(f"duplicate run id {cfg.run_id!r} in the grid (rows must have unique names)")
        seen.add(cfg.run_id)


def is_finished(rdir: str | os.PathLike) -> bool:
    return read_summary(rdir) is not None


# --------------------------------------------------------------------------- launchers
def _run_entry(cfg_dict: dict[str, Any], rdir: str, threads: int | None = None) -> dict[str, Any]:
    """Run one configuration; a failure of the run itself becomes a summary with status
    "error" (and error.txt); :data:`ENVIRONMENT_ERRORS` propagate."""
    from .train import run

    cfg = RunConfig.from_dict(cfg_dict)
    if threads is not None and cfg.threads is None:
        cfg = cfg.replace(threads=threads)
    try:
        return run(cfg, rdir, resume=True)
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as err:  # recorded, the grid goes on
        return RunDir(rdir).record_failure(cfg, err)


def _local(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    return [_run_entry(cfg.to_dict(), str(rdir)) for cfg, rdir in jobs]


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group; the parent handles it
    (and terminates the workers), so the workers do not print tracebacks of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _process(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    workers = max(1, min(workers, len(jobs)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = mp.get_context("spawn").Pool(workers, initializer=_ignore_sigint)
    try:
        pending = [pool.apply_async(_run_entry, (cfg.replace(progress=False).to_dict(), str(rdir), threads))
                   for cfg, rdir in jobs]
        out = [p.get() for p in pending]
    except BaseException:  # Ctrl-C, SIGTERM (raised as KeyboardInterrupt by the CLI) or a stopping error
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return out


def _ray(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise RunDirError("launcher 'ray' needs Ray, an optional extra: pip install 'soensim[ray]'") from None
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    resources = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
    task = ray.remote(**resources)(_run_entry)
    refs = [task.remote(cfg.replace(progress=False, device="auto").to_dict(), str(rdir),
                        None if gpus else 1) for cfg, rdir in jobs]
    return ray.get(refs)


def _batched(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    from .packed import launch

    return launch(jobs, workers)


#: Launcher registry: name → function(jobs, workers) → summaries in job order.
LAUNCHERS: dict[str, Callable[[Sequence[Job], int], list[dict[str, Any]]]] = {
    "batched": _batched,
    "local": _local,
    "process": _process,
    "ray": _ray,
}


def get_launcher(name: str) -> Callable[[Sequence[Job], int], list[dict[str, Any]]]:
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {name!r}; known launchers: {sorted(LAUNCHERS)}")
    return LAUNCHERS[name]


# --------------------------------------------------------------------------- running a grid
def write_study_file(sdir: Path, study: str, preset: str, configs: Sequence[RunConfig],
                     extra: dict[str, Any] | None = None) -> None:
    """Record the grid in ``study.json``. When the file already records a grid of the same study,
    preset and call settings (``extra``: overrides, profile file, study file) — an earlier call
    with other ``--rows`` or ``--seeds`` — its runs stay listed before the new ones, so the
    tables cover every run made with those settings; otherwise the new grid replaces it."""
    path = sdir / STUDY_FILE
    info = {"study": study, "preset": preset, **(extra or {})}
    runs, rows, seeds = [], [], []
    if path.exists():
        old = read_study_file(sdir)
        if all(old.get(k) == v for k, v in info.items()) and set(old) - {"runs", "rows", "seeds"} == set(info):
            runs, rows, seeds = list(old["runs"]), list(old.get("rows", [])), list(old.get("seeds", []))
    runs += [c.run_id for c in configs if c.run_id not in runs]
    rows += [r for r in dict.fromkeys(c.row for c in configs) if r not in rows]
    write_json_atomic(path, {**info, "runs": runs, "rows": rows, "seeds": sorted({*seeds, *(c.seed for c in configs)})})


def read_study_file(sdir: str | os.PathLike) -> dict[str, Any]:
    path = Path(sdir) / STUDY_FILE
    if not path.exists():
        raise RunDirError(f"{sdir} has no {STUDY_FILE}; is it a study directory (OUT/<study>/<preset>)?")
    info = read_json(path)
    if not isinstance(info, dict) or not isinstance(info.get("runs"), list):
        raise DataError(f"{path}: expected a JSON object with a list of 'runs'")
    return info


def run_grid(configs: Sequence[RunConfig], sdir: str | os.PathLike, launcher: str = "local", workers: int = 1,
             study: str | None = None, preset: str = "custom", extra: dict[str, Any] | None = None,
             restart: bool = False) -> list[dict[str, Any]]:
    """Run every configuration not yet finished; returns all summaries in grid order.

    Holds the study directory's lock. ``restart``: discard what the run directories hold
    and run everything again; otherwise results of another configuration raise
    :class:`~studies.errors.ConfigMismatch` before anything is written."""
    sdir = Path(sdir)
    check_unique(configs)
    launch = get_launcher(launcher)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer ≥ 1; got {workers!r}")
    jobs = [(cfg, run_dir(sdir, cfg)) for cfg in configs]
    with study_lock(sdir):
        states = {cfg.run_id: ("new" if restart else check_reuse(rdir, cfg)) for cfg, rdir in jobs}
        if restart:
            for _, rdir in jobs:
                with RunDir(rdir).lock():
                    clear(rdir)
        write_study_file(sdir, study or (configs[0].study if configs else "custom"), preset, configs, extra)
        todo = [(cfg, rdir) for cfg, rdir in jobs if states[cfg.run_id] != "finished"]
        by_id = {s.get("run_id"): s for s in (launch(todo, workers) if todo else [])}
        return [by_id[cfg.run_id] if cfg.run_id in by_id else read_summary(rdir) for cfg, rdir in jobs]


# --------------------------------------------------------------------------- results
def load_summaries(sdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Summaries of the study's finished runs, in grid order (unfinished runs are left out)."""
    return [r["summary"] for r in collect(sdir) if r["summary"] is not None]


def collect(sdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run of the study in grid order: ``run_id``, ``dir``, ``config`` (RunConfig or
    None), ``summary`` (dict or None) and ``error`` (last line of error.txt, or None)."""
    sdir = Path(sdir)
    out = []
    for rid in read_study_file(sdir)["runs"]:
        rdir = sdir / RUNS_DIR / str(rid)
        summary = read_summary(rdir)
        error = None
        if summary is None and (rdir / ERROR_FILE).exists():
            lines = [ln for ln in (rdir / ERROR_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
            error = lines[-1] if lines else "error"
        out.append({"run_id": rid, "dir": rdir, "config": read_config(rdir), "summary": summary, "error": error})
    return out


def _hardware_columns(cfg: RunConfig) -> dict[str, Any]:
    """The limits a run was trained under (its profile after the run's overrides): the coupling
    bound ``J_max``, the ``flux_budget`` (Σ_j |W_ij| per row) and the fabricable τ range in ns;
    "-" where none applies (software runs, or a profile without that limit)."""
    if cfg.profile is None:
        return {"J_max": "-", "flux_budget": "-", "tau_ns": "-"}
    from .models import run_profile

    p = run_profile(cfg)
    if p.tau_range is not None:
        taus = f"{p.tau_range[0] * 1e9:.3g}–{p.tau_range[1] * 1e9:.3g}"
    elif p.tau_values:
        taus = ",".join(f"{t * 1e9:.3g}" for t in p.tau_values)
    else:
        taus = "-"
    return {"J_max": "-" if p.coupling_max is None else p.coupling_max,
            "flux_budget": "-" if p.flux_budget is None else p.flux_budget, "tau_ns": taus}


#: RunConfig fields the results header states (with the values every run of the table shares).
HEADER_FIELDS = ("task", "image_size", "channels", "train_subset", "val_size", "test_subset", "seq_len",
                 "train_size", "cell", "hidden", "head", "optimizer", "lr", "lr_min", "weight_decay", "schedule",
                 "epochs", "batch_size", "clip_norm", "max_steps", "orthogonal_hh", "update_bias_init",
                 "reset_bias_init", "hw_dt")


def configuration_header(configs: Sequence[RunConfig | None], overrides: Sequence[str] = (),
                         fields: Sequence[str] = HEADER_FIELDS) -> str:
    """One paragraph stating what ran: the ``fields`` (a study's ``HEADER_FIELDS``, default
    :data:`HEADER_FIELDS`) all runs share, those that differ between rows (they are columns or
    named rows), the seeds, and the ``--set`` overrides."""
    cfgs = [c for c in configs if c is not None]
    if not cfgs:
        return ""
    shared, varying = [], []
    for name in fields:
        values = {json.dumps(getattr(c, name)) for c in cfgs}
        if len(values) == 1:
            v = getattr(cfgs[0], name)
            if v is not None:
                shared.append(f"{name}={v:g}" if isinstance(v, float) else f"{name}={v}")
        else:
            varying.append(name)
    text = "Configuration that ran: " + ", ".join(shared)
    text += f"; seeds {sorted({c.seed for c in cfgs})}"
    if varying:
        text += f"; varying by row: {', '.join(varying)}"
    text += "." + (f" Overrides: {' '.join(overrides)}." if overrides else " No overrides.")
    return text


#: Per-run values the results table aggregates over seeds.
SUMMARY_COLUMNS = ("final_test", "best_val", "test_at_best_val", "final_train_loss", "final_w_norm", "spikes",
                   "nonfinite", "rollbacks", "elapsed_s")


def summary_values(s: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """:data:`SUMMARY_COLUMNS` of one run's summary (the row's metric: acc or mse)."""
    final, best = s.get("final", {}), s.get("best", {})
    return {"final_test": final.get(f"test_{metric}", math.nan), "best_val": best.get(f"val_{metric}", math.nan),
            "test_at_best_val": best.get(f"test_{metric}", math.nan),
            "final_train_loss": final.get("train_loss", math.nan),
            "final_w_norm": final.get("w_hz_norm", final.get("w_hf_norm", math.nan)),
            "spikes": s.get("spikes"), "nonfinite": s.get("nonfinite"), "rollbacks": s.get("rollbacks"),
            "elapsed_s": s.get("elapsed_s")}


def results_table(sdir: str | os.PathLike) -> list[dict[str, Any]]:
    """One record per row: seeds aggregated by :func:`studies.stats.mean_ci` (``<column>`` the
    mean, ``<column>_ci95`` the half-width of its 95 % interval)."""
    return _table(collect(sdir))


def _table(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`results_table` of the runs :func:`collect` returned."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        rows.setdefault(r["run_id"].rsplit("-s", 1)[0], []).append(r)
    table = []
    for row, items in rows.items():
        sums = [r["summary"] for r in items if r["summary"] is not None]
        cfg = next((r["config"] for r in items if r["config"] is not None), None)
        metric = sums[0]["metric"] if sums else "acc"
        statuses = [r["summary"]["status"] if r["summary"] else ("error" if r["error"] else "pending") for r in items]
        rec: dict[str, Any] = {"row": row, "seeds": len(items), "status": ",".join(sorted(set(statuses)))}
        if cfg is not None:
            rec.update({"gate": cfg.gate, "bias": cfg.bias_mode if cfg.profile is None else f"hw:{cfg.hw_bias}",
                        "profile": cfg.profile_name or "software", **_hardware_columns(cfg)})
        rec["metric"] = metric
        per_seed = [summary_values(s, metric) for s in sums]
        for label in SUMMARY_COLUMNS:
            rec[label], rec[label + "_ci95"] = mean_ci([v[label] for v in per_seed])
        rec["params"] = sums[0]["params"] if sums else None
        found = [s.get("violations") for s in sums]
        rec["violations"] = "-" if not found or found[0] is None else sum(len(v or ()) for v in found)
        errors = [r["error"] for r in items if r["error"]]
        rec["error"] = errors[0] if errors else ""
        table.append(rec)
    return table


def format_value(v: Any, std: Any = None, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits (± std when given and > 0),
    NaN (missing) as –, infinities as inf / -inf."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = f"{v:.{digits}g}"
        if isinstance(std, float) and math.isfinite(std) and std > 0:
            text += f" ± {std:.2g}"
        return text
    return "" if v is None else str(v)


def ci_cell(mean: float, half: float) -> str:
    """A mean with the half-width of its 95 % interval, ``0.4870 ± 0.007``; the mean alone when the
    interval is undefined (one seed)."""
    return f"{mean:.4f} ± {half:.3f}" if math.isfinite(half) else f"{mean:.4f}"


def p_cell(p: float) -> str:
    """A p-value to 3 significant digits; – when undefined."""
    return f"{p:.3g}" if math.isfinite(p) else "–"


def markdown_cell(text: str) -> str:
    """``text`` safe inside a markdown table row (``|`` escaped, on one line)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _header_fields(study: str | None) -> Sequence[str]:
    """The configuration fields a registered study's runs use (its ``HEADER_FIELDS``), else all."""
    from .registry import STUDIES, get_study

    return getattr(get_study(study), "HEADER_FIELDS", HEADER_FIELDS) if study in STUDIES else HEADER_FIELDS


def write_results(sdir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.csv`` (atomically, under the study lock)."""
    sdir = Path(sdir)
    with study_lock(sdir):
        runs = collect(sdir)
        table = _table(runs)
        info = read_study_file(sdir)
        csv_cols = list(dict.fromkeys(k for rec in table for k in rec))
        cols = [c for c in csv_cols if not c.endswith("_ci95")]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=csv_cols, lineterminator="\n", restval="")
        writer.writeheader()
        for rec in table:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
        csv_path = write_text_atomic(sdir / "results.csv", buf.getvalue())
        lines = [f"# {info.get('study')} — preset {info.get('preset')}", ""]
        if info.get("notes"):
            lines += [f"Preset: {info['notes']}", ""]
        header = configuration_header([r["config"] for r in runs], info.get("overrides") or (),
                                      _header_fields(info.get("study")))
        if header:
            lines += [header + " Cells are means over seeds ± the half-width of their 95 % confidence interval "
                      "(Student's t; none with one seed).", ""]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for rec in table:
            lines.append("| " + " | ".join(markdown_cell(format_value(rec.get(c), rec.get(c + "_ci95")))
                                           for c in cols) + " |")
        lines.append("")
        md_path = write_text_atomic(sdir / "results.md", "\n".join(lines))
    return md_path, csv_path


__all__ = ["ENVIRONMENT_ERRORS", "ERROR_FILE", "LAUNCHERS", "check_unique", "ci_cell", "collect", "format_value", "get_launcher",
           "is_finished", "load_summaries", "make_grid", "markdown_cell", "p_cell", "preset_functions", "preset_grid",
           "read_study_file", "results_table", "run_dir", "run_grid", "study_dir", "study_lock", "summary_values",
           "write_study_file"]
