"""``soensim-study`` / ``python -m studies``: list, run, resume, plot and summarize studies.

    soensim-study list
    soensim-study run STUDY [--preset quick] [--out runs] [--data-dir DIR] [--seeds N]
                      [--rows a,b] [--launcher local|process|ray] [--workers N] [--set key=value ...]
    soensim-study resume RUN_DIR
    soensim-study transfer RUN_DIR [RUN_DIR ...] [--out DIR] [--seeds N] [--eval-size N]
    soensim-study plot STUDY_DIR
    soensim-study summarize STUDY_DIR

``run`` writes ``OUT/STUDY/PRESET/`` (see :mod:`studies.grid`), skips finished runs,
then writes the results table and figures. Data is looked for in ``--data-dir``,
else ``$SOENSIM_DATA_DIR``. ``--set`` overrides any :class:`studies.train.RunConfig`
field for every run; an unknown key is an error that lists the known ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from . import grid
from .registry import UnknownStudy, get_study, list_studies
from .train import ConfigError

DATA_ENV = "SOENSIM_DATA_DIR"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soensim-study", description="Run and report soensim studies.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the studies, their presets and rows")

    r = sub.add_parser("run", help="run (or finish) a study grid, then write its table and plots")
    r.add_argument("study")
    r.add_argument("--preset", default="quick", help="smoke | quick | full (default: quick)")
    r.add_argument("--out", default="runs", help="output root; the study goes to OUT/STUDY/PRESET (default: runs)")
    r.add_argument("--data-dir", default=None, help=f"dataset folder (default: ${DATA_ENV})")
    r.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (default: the preset's)")
    r.add_argument("--rows", default=None, help="comma-separated subset of the preset's rows")
    r.add_argument("--launcher", default="local", choices=sorted(grid.LAUNCHERS))
    r.add_argument("--workers", type=int, default=1, help="parallel runs for the process/ray launchers")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a RunConfig field for every run (repeatable)")
    r.add_argument("--no-report", action="store_true", help="skip the table and plots")

    s = sub.add_parser("resume", help="continue one run from its checkpoint")
    s.add_argument("run_dir")

    tr = sub.add_parser("transfer", help="move finished runs into continuous time and sweep non-idealities")
    tr.add_argument("run_dirs", nargs="+", help="run directories (each with config.json and checkpoint.pt)")
    tr.add_argument("--out", default=None, help="output folder (default: the first run's parent)")
    tr.add_argument("--seeds", type=int, default=3, help="noise seeds per setting (default: 3)")
    tr.add_argument("--eval-size", type=int, default=1000, help="test examples per evaluation (default: 1000)")

    pl = sub.add_parser("plot", help="(re)draw a study's figures")
    pl.add_argument("study_dir")

    sm = sub.add_parser("summarize", help="(re)write and print a study's results table")
    sm.add_argument("study_dir")
    return p


def _cmd_list() -> int:
    for name, desc, presets in list_studies():
        mod = get_study(name)
        print(f"{name}: {desc}")
        for preset in presets:
            rows = mod.row_names(preset)
            print(f"  {preset:<6} {len(rows)} rows × {mod.PRESETS[preset].get('seeds', 1)} seed(s): {', '.join(rows)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    study = get_study(args.study)
    if args.preset not in study.PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r} for {args.study}; known presets: {list(study.PRESETS)}")
    overrides = list(args.overrides)
    data_dir = args.data_dir or os.environ.get(DATA_ENV)
    if data_dir:
        overrides.append(f"data_dir={Path(data_dir).resolve()}")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    configs = study.runs(args.preset, seeds=args.seeds, overrides=overrides, rows=rows)
    sdir = grid.study_dir(args.out, args.study, args.preset)
    print(f"{args.study} [{args.preset}]: {len(configs)} runs → {sdir}", file=sys.stderr)
    t0 = time.perf_counter()
    summaries = grid.run_grid(configs, sdir, launcher=args.launcher, workers=args.workers, study=args.study,
                              preset=args.preset, extra={"overrides": overrides, "notes": study.notes(args.preset)})
    wall = time.perf_counter() - t0
    failed = [s for s in summaries if s.get("status") == "error"]
    for s in failed:
        print(f"run {s['run_id']} failed: {s.get('error')}", file=sys.stderr)
    if not args.no_report:
        _report(sdir)
    print(f"wall time {wall:.1f} s; {len(summaries) - len(failed)}/{len(summaries)} runs done", file=sys.stderr)
    return 1 if failed else 0


def _report(sdir: Path) -> None:
    info = grid.read_study_file(sdir)
    md, _ = grid.write_results(sdir)
    try:
        figs = get_study(info["study"]).report(sdir)
    except UnknownStudy:
        figs = {}
    print(md.read_text(encoding="utf-8"))
    for name, path in figs.items():
        if path is not None:
            print(f"figure {name}: {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "resume":
            from .train import resume

            summary = resume(args.run_dir)
            print(f"{summary['run_id']}: {summary['status']} after {summary['epochs']} epochs")
            return 0 if summary["status"] != "error" else 1
        if args.command == "transfer":
            from .transfer_study import transfer

            result = transfer(args.run_dirs, args.out, seeds=args.seeds, eval_size=args.eval_size)
            files = result["files"]
            for name, path in (files.items() if isinstance(files, dict) else enumerate(files)):
                print(f"{name}: {path}")
            return 0
        if args.command in ("plot", "summarize"):
            sdir = Path(args.study_dir)
            if args.command == "summarize":
                md, csv_path = grid.write_results(sdir)
                print(md.read_text(encoding="utf-8"))
                print(f"wrote {md} and {csv_path}", file=sys.stderr)
            else:
                info = grid.read_study_file(sdir)
                for name, path in get_study(info["study"]).report(sdir).items():
                    print(f"{name}: {path}")
            return 0
    except (ConfigError, UnknownStudy, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"soensim-study: error: {err}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse requires a command


__all__ = ["main"]
