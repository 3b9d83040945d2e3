"""A study is a grid of runs (rows × seeds); launchers execute the grid.

Study directory layout (``--out OUT`` → ``OUT/<study>/<preset>/``)::

    study.json         study name, preset, seeds, overrides, the run ids in order
    runs/<run_id>/     one run directory each (see :mod:`studies.train`)
    results.md/.csv    the results table (``summarize``)
    plots/*.png        figures (``plot``)

Run ids are ``<row>-s<seed>`` and must be unique in a grid. A run whose
``summary.json`` exists is skipped, one with only a checkpoint is resumed, so
re-running the same command finishes an interrupted grid.

Launchers (registry :data:`LAUNCHERS`): ``local`` runs one after another in this
process; ``process`` uses a pool of ``workers`` processes (spawned, each with
``cpu_count // workers`` torch threads unless the config sets ``threads``);
``ray`` submits each run as a Ray task asking for 1 GPU when the cluster has
GPUs, else 1 CPU (``pip install 'soensim[ray]'``).
"""
from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import os
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .train import CONFIG_FILE, SUMMARY_FILE, RunConfig, parse_overrides, write_json_atomic, write_text_atomic

STUDY_FILE = "study.json"
RUNS_DIR = "runs"
ERROR_FILE = "error.txt"

Job = tuple[RunConfig, Path]


def study_dir(out: str | os.PathLike, study: str, preset: str) -> Path:
    return Path(out) / study / preset


def run_dir(sdir: str | os.PathLike, cfg: RunConfig) -> Path:
    return Path(sdir) / RUNS_DIR / cfg.run_id


def make_grid(study: str, base: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]], row_names: Sequence[str],
              seeds: Sequence[int], overrides: Mapping[str, str] | Sequence[str] = ()) -> list[RunConfig]:
    """One RunConfig per (row, seed): preset ``base``, then the row's settings, then the
    user's ``overrides`` (``key=value``, validated), then ``seed``. Unknown rows are an error."""
    unknown = [r for r in row_names if r not in rows]
    if unknown:
        raise ValueError(f"unknown rows {unknown} for study {study!r}; known rows: {list(rows)}")
    user = parse_overrides(overrides)
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

    ``seeds``: number of seeds 0..n-1 (default: the preset's); ``rows``: a subset of the
    preset's rows (default: all, in preset order)."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for study {study!r}; known presets: {list(presets)}")
    p = presets[preset]
    n = p.get("seeds", 1) if seeds is None else seeds
    if n < 1:
        raise ValueError(f"seeds must be ≥ 1; got {n}")
    return make_grid(study, p["base"], p["rows"], list(rows) if rows else list(p["rows"]), range(n), overrides)


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
    seen: dict[str, RunConfig] = {}
    for cfg in configs:
        if cfg.run_id in seen:
            raise ValueError(f"duplicate run id {cfg.run_id!r} in the grid (rows must have unique names)")
        seen[cfg.run_id] = cfg


def is_finished(rdir: str | os.PathLike) -> bool:
    return (Path(rdir) / SUMMARY_FILE).exists()


def _run_entry(cfg_dict: dict[str, Any], rdir: str, threads: int | None = None) -> dict[str, Any]:
    """Run one configuration; never raises (errors become a summary with status "error")."""
    from .train import run

    cfg = RunConfig.from_dict(cfg_dict)
    if threads is not None and cfg.threads is None:
        cfg = cfg.replace(threads=threads)
    try:
        return run(cfg, rdir, resume=True)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # recorded, the grid goes on
        Path(rdir).mkdir(parents=True, exist_ok=True)
        text = traceback.format_exc()
        (Path(rdir) / ERROR_FILE).write_text(text, encoding="utf-8")
        return {"run_id": cfg.run_id, "row": cfg.row, "seed": cfg.seed, "status": "error",
                "error": f"{type(err).__name__}: {err}"}


def _local(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    return [_run_entry(cfg.to_dict(), str(rdir)) for cfg, rdir in jobs]


def _process(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    workers = max(1, min(workers, len(jobs)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_run_entry, cfg.replace(progress=False).to_dict(), str(rdir), threads)
                   for cfg, rdir in jobs]
        return [f.result() for f in futures]


def _ray(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise RuntimeError("launcher 'ray' needs Ray, an optional extra: pip install 'soensim[ray]'") from None
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    resources = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
    task = ray.remote(**resources)(_run_entry)
    refs = [task.remote(cfg.replace(progress=False, device="auto").to_dict(), str(rdir),
                        None if gpus else 1) for cfg, rdir in jobs]
    return ray.get(refs)


#: Launcher registry: name → function(jobs, workers) → summaries in job order.
LAUNCHERS: dict[str, Callable[[Sequence[Job], int], list[dict[str, Any]]]] = {
    "local": _local,
    "process": _process,
    "ray": _ray,
}


def get_launcher(name: str) -> Callable[[Sequence[Job], int], list[dict[str, Any]]]:
    if name not in LAUNCHERS:
        raise ValueError(f"unknown launcher {name!r}; known launchers: {sorted(LAUNCHERS)}")
    return LAUNCHERS[name]


def write_study_file(sdir: Path, study: str, preset: str, configs: Sequence[RunConfig],
                     extra: dict[str, Any] | None = None) -> None:
    write_json_atomic(sdir / STUDY_FILE, {
        "study": study,
        "preset": preset,
        "runs": [c.run_id for c in configs],
        "rows": list(dict.fromkeys(c.row for c in configs)),
        "seeds": sorted({c.seed for c in configs}),
        **(extra or {}),
    })


def read_study_file(sdir: str | os.PathLike) -> dict[str, Any]:
    path = Path(sdir) / STUDY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{sdir} has no {STUDY_FILE}; is it a study directory (OUT/<study>/<preset>)?")
    return json.loads(path.read_text(encoding="utf-8"))


def run_grid(configs: Sequence[RunConfig], sdir: str | os.PathLike, launcher: str = "local", workers: int = 1,
             study: str | None = None, preset: str = "custom", extra: dict[str, Any] | None = None,
             ) -> list[dict[str, Any]]:
    """Run every configuration not yet finished; returns all summaries in grid order."""
    sdir = Path(sdir)
    check_unique(configs)
    launch = get_launcher(launcher)
    sdir.mkdir(parents=True, exist_ok=True)
    name = study or (configs[0].study if configs else "custom")
    write_study_file(sdir, name, preset, configs, extra)
    jobs = [(cfg, run_dir(sdir, cfg)) for cfg in configs]
    todo = [(cfg, rdir) for cfg, rdir in jobs if not is_finished(rdir)]
    done = launch(todo, workers) if todo else []
    by_id = {s.get("run_id"): s for s in done}
    out = []
    for cfg, rdir in jobs:
        if cfg.run_id in by_id:
            out.append(by_id[cfg.run_id])
        else:
            out.append(json.loads((rdir / SUMMARY_FILE).read_text(encoding="utf-8")))
    return out


def load_summaries(sdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Summaries of the study's finished runs, in grid order (unfinished runs are left out)."""
    return [r["summary"] for r in collect(sdir) if r["summary"] is not None]


def collect(sdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run of the study in grid order: ``run_id``, ``dir``, ``config`` (RunConfig or
    None), ``summary`` (dict or None) and ``error`` (last line of error.txt, or None)."""
    sdir = Path(sdir)
    out = []
    for rid in read_study_file(sdir)["runs"]:
        rdir = sdir / RUNS_DIR / rid
        cfg_path, sum_path, err_path = rdir / CONFIG_FILE, rdir / SUMMARY_FILE, rdir / ERROR_FILE
        cfg = RunConfig.from_json(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else None
        summary = json.loads(sum_path.read_text(encoding="utf-8")) if sum_path.exists() else None
        error = None
        if summary is None and err_path.exists():
            lines = [ln for ln in err_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            error = lines[-1] if lines else "error"
        out.append({"run_id": rid, "dir": rdir, "config": cfg, "summary": summary, "error": error})
    return out


def _j_max(cfg: RunConfig) -> float | str:
    if cfg.coupling_max is not None:
        return cfg.coupling_max
    if cfg.profile is None:
        return "-"
    from soensim import HardwareProfile

    j = HardwareProfile.preset(cfg.profile).coupling_max
    return "-" if j is None else j


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def results_table(sdir: str | os.PathLike) -> list[dict[str, Any]]:
    """One record per row (seeds aggregated: mean and standard deviation)."""
    runs = collect(sdir)
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
            rec.update({"gate": cfg.gate, "bias": cfg.bias_mode, "profile": cfg.profile or "software",
                        "J_max": _j_max(cfg)})
        rec["metric"] = metric
        for label, get in (  # values of the row's metric (acc or mse)
            ("final_test", lambda s: s["final"].get(f"test_{metric}", math.nan)),
            ("best_val", lambda s: s["best"].get(f"val_{metric}", math.nan)),
            ("test_at_best_val", lambda s: s["best"].get(f"test_{metric}", math.nan)),
            ("final_train_loss", lambda s: s["final"].get("train_loss", math.nan)),
            ("final_w_norm", lambda s: s["final"].get("w_hz_norm", s["final"].get("w_hf_norm", math.nan))),
            ("spikes", lambda s: s["spikes"]),
            ("nonfinite", lambda s: s["nonfinite"]),
            ("rollbacks", lambda s: s["rollbacks"]),
            ("elapsed_s", lambda s: s["elapsed_s"]),
        ):
            rec[label], rec[label + "_std"] = _mean_std([get(s) for s in sums])
        rec["params"] = sums[0]["params"] if sums else None
        errors = [r["error"] for r in items if r["error"]]
        rec["error"] = errors[0] if errors else ""
        table.append(rec)
    return table


def format_value(v: Any, std: Any = None, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits (± std when given), NaN as –."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        text = f"{v:.{digits}g}"
        if isinstance(std, float) and std > 0:
            text += f" ± {std:.2g}"
        return text
    return "" if v is None else str(v)


def write_results(sdir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.csv`` (atomically) into the study directory."""
    sdir = Path(sdir)
    table = results_table(sdir)
    info = read_study_file(sdir)
    csv_cols = list(dict.fromkeys(k for rec in table for k in rec))
    cols = [c for c in csv_cols if not c.endswith("_std")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_cols, lineterminator="\n", restval="")
    writer.writeheader()
    for rec in table:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
    csv_path = sdir / "results.csv"
    write_text_atomic(csv_path, buf.getvalue())
    lines = [f"# {info['study']} — preset {info['preset']}", ""]
    if info.get("notes"):
        lines += [str(info["notes"]), ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in table:
        lines.append("| " + " | ".join(format_value(rec.get(c), rec.get(c + "_std")) for c in cols) + " |")
    lines.append("")
    md_path = sdir / "results.md"
    write_text_atomic(md_path, "\n".join(lines))
    return md_path, csv_path


__all__ = ["LAUNCHERS", "check_unique", "make_grid", "preset_functions", "preset_grid", "get_launcher", "is_finished", "collect", "load_summaries", "read_study_file", "results_table", "write_results",
           "run_dir", "run_grid", "study_dir", "write_study_file"]
