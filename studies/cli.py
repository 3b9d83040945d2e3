"""``soensim-study`` / ``python -m studies``: list, run, resume, plot and summarize studies.

    soensim-study list
    soensim-study run STUDY|FILE.toml [--preset quick] [--out runs] [--data-dir DIR] [--seeds N]
                      [--rows a,b] [--launcher local|process|ray|batched] [--workers N] [--set key=value ...]
                      [--profile FILE] [--tensorboard] [--restart] [--no-report]
    soensim-study resume RUN_DIR
    soensim-study transfer RUN_DIR [RUN_DIR ...] [--out DIR] [--seeds N] [--eval-size N] [--profile FILE]
    soensim-study export RUN_DIR [--out FILE] [--profile PROFILE]
    soensim-study plot STUDY_DIR
    soensim-study summarize STUDY_DIR

``run`` writes ``OUT/STUDY/PRESET/`` (see :mod:`studies.grid`): finished runs of the same
configuration are skipped and interrupted ones resumed; results recorded under another
configuration are an error listing the fields that differ, unless ``--restart`` discards
them. Then it writes the results table and figures. Data is looked for in ``--data-dir``,
else ``$SOENSIM_DATA_DIR`` (either must exist). ``--set`` overrides any
:class:`studies.config.RunConfig` field for every run (an unknown key is an error that
lists the known ones); ``--set seed=S`` runs that one seed instead of ``--seeds``.

``run FILE.toml`` runs the grid of a study file (:mod:`studies.studyfile`; its one preset,
``default``, is the default there). ``--profile FILE`` (a :class:`soensim.HardwareProfile`
``.json``/``.toml`` file) replaces the profile of the rows that run under one (the
hardware rows; software rows stay software); the file's content is recorded in each run's
configuration, so editing the file changes the runs' fingerprints (``--set profile=FILE``
instead puts every row under it). ``--tensorboard`` also logs each run to
``RUN_DIR/tensorboard`` (:mod:`studies.tensorboard_log`; not part of the fingerprint).
``transfer --profile FILE`` adds the chip's own non-idealities (τ spread, weight levels,
coupling bound, flux and state noise) as points of the sweeps.

Exit codes
    0: everything finished; 1: a run failed (its ``error.txt`` has the traceback) or an
    unexpected internal error; 2: a mistake in the input or the environment — one line
    naming the field or the file (``--debug`` or ``SOENSIM_DEBUG=1`` shows the traceback);
    3: a run diverged (status ``"diverged"``: non-finite or exploding loss);
    130 / 143: interrupted by Ctrl-C / SIGTERM — checkpoints stay resumable, and the same
    command continues the runs.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, Sequence

from . import grid, studyfile
from .cifar import DATA_ENV
from .errors import ConfigError, StudyError
from .registry import UnknownStudy, get_study, list_studies

DEBUG_ENV = "SOENSIM_DEBUG"
EXIT_OK, EXIT_RUN_FAILED, EXIT_MISTAKE, EXIT_DIVERGED = 0, 1, 2, 3
RESUME_HINT = "checkpoints are kept: run the same command again to continue"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        self.exit(EXIT_MISTAKE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1; got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"show tracebacks (also ${DEBUG_ENV}=1)")
    p = _Parser(prog="soensim-study", description="Run and report soensim studies.", parents=[common])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("list", help="list the studies, their presets and rows", parents=[common])

    r = sub.add_parser("run", help="run (or finish) a study grid, then write its table and plots", parents=[common])
    r.add_argument("study", help="a registered study (see list) or a study file ending in .toml")
    r.add_argument("--preset", default=None,
                   help="smoke | quick | full (default: quick; a study file's grid is its preset 'default')")
    r.add_argument("--out", default="runs", help="output root; the study goes to OUT/STUDY/PRESET (default: runs)")
    r.add_argument("--data-dir", default=None, help=f"dataset folder (default: ${DATA_ENV})")
    r.add_argument("--seeds", type=_positive_int, default=None, help="number of seeds 0..N-1 (default: the preset's)")
    r.add_argument("--rows", default=None, help="comma-separated subset of the preset's rows")
    r.add_argument("--launcher", default="local", choices=sorted(grid.LAUNCHERS),
                   help="local: one run after another; process/ray: runs in parallel; batched: the runs of one "
                        "layer shape and gate mode as one batched model (one Triton launch per step on a GPU)")
    r.add_argument("--workers", type=_positive_int, default=1, help="parallel runs for the process/ray launchers")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a RunConfig field for every run (repeatable)")
    r.add_argument("--profile", default=None, metavar="FILE",
                   help="hardware profile file (.json/.toml) for the rows that run under a profile")
    r.add_argument("--tensorboard", action="store_true", help="also log every run to RUN_DIR/tensorboard")
    r.add_argument("--restart", action="store_true",
                   help="discard what the selected runs' directories hold and train them again")
    r.add_argument("--no-report", action="store_true", help="skip the table and plots")

    s = sub.add_parser("resume", help="continue one run from its checkpoint", parents=[common])
    s.add_argument("run_dir")

    tr = sub.add_parser("transfer", help="move finished runs into continuous time and sweep non-idealities",
                        parents=[common])
    tr.add_argument("run_dirs", nargs="+", help="run directories (each with config.json and checkpoint.pt)")
    tr.add_argument("--out", default=None, help="output folder (default: the first run's parent)")
    tr.add_argument("--seeds", type=_positive_int, default=3, help="noise seeds per setting (default: 3)")
    tr.add_argument("--eval-size", type=_positive_int, default=1000,
                    help="test examples per evaluation (default: 1000)")
    tr.add_argument("--profile", default=None, metavar="FILE",
                    help="hardware profile file (.json/.toml): add its non-idealities to the sweeps")

    ex = sub.add_parser("export", help="write a finished run's network as a hardware specification (JSON) "
                        "with its design-rule report", parents=[common])
    ex.add_argument("run_dir", help="a run directory (with config.json and checkpoint.pt)")
    ex.add_argument("--out", default=None, help="specification file (default: RUN_DIR/export.json; the report "
                    "goes next to it as .md)")
    ex.add_argument("--profile", default=None, help="check against this profile (preset name or .json/.toml file) "
                    "instead of the run's own; a software run needs one")

    pl = sub.add_parser("plot", help="(re)draw a study's figures", parents=[common])
    pl.add_argument("study_dir")

    sm = sub.add_parser("summarize", help="(re)write and print a study's results table", parents=[common])
    sm.add_argument("study_dir")
    return p


def _cmd_list() -> int:
    for name, desc, presets in list_studies():
        mod = get_study(name)
        print(f"{name}: {desc}")
        for preset in presets:
            rows = mod.row_names(preset)
            print(f"  {preset:<6} {len(rows)} rows × {mod.PRESETS[preset].get('seeds', 1)} seed(s): {', '.join(rows)}")
    return EXIT_OK


def _data_dir(flag: str | None) -> str | None:
    """``--data-dir`` or ``$SOENSIM_DATA_DIR``, resolved; a path that does not exist is an
    error (a mistyped folder is never created)."""
    given, origin = (flag, "--data-dir") if flag else (os.environ.get(DATA_ENV), f"${DATA_ENV}")
    if not given:
        return None
    path = Path(given).expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"{origin} {given}: no such file or folder (create it first to download CIFAR-10 there)")
    return str(path)


def _load_study(arg: str) -> ModuleType:
    """A registered study, or the study file ``arg`` (``.toml``) loaded and registered."""
    return studyfile.load(arg) if studyfile.is_study_file(arg) else get_study(arg)


def _with_profile_file(configs: list, path: str, where: str) -> list:
    """``configs`` with the profile of every hardware row replaced by the profile file's content."""
    from soensim import HardwareProfile

    content = HardwareProfile.load(path).to_dict()
    if not any(cfg.profile is not None for cfg in configs):
        raise ConfigError(f"--profile {path}: the selected rows of {where} all run in software and --profile "
                          f"replaces the profile of hardware rows; use --set profile={path} to run every row under it")
    return [cfg.replace(profile=content) if cfg.profile is not None else cfg for cfg in configs]


def _cmd_run(args: argparse.Namespace) -> int:
    study = _load_study(args.study)
    name = study.NAME
    preset = args.preset or ("quick" if "quick" in study.PRESETS else next(iter(study.PRESETS)))
    if preset not in study.PRESETS:
        raise ConfigError(f"unknown preset {preset!r} for {name}; known presets: {list(study.PRESETS)}")
    overrides = list(args.overrides)
    if args.profile and any(o.split("=", 1)[0].strip() == "profile" for o in overrides):
        raise ConfigError("give --profile FILE (the hardware rows) or --set profile=... (every row), not both")
    data_dir = _data_dir(args.data_dir)
    if data_dir:
        overrides.append(f"data_dir={data_dir}")
    if args.tensorboard:
        overrides.append("tensorboard=true")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    configs = study.runs(preset, seeds=args.seeds, overrides=overrides, rows=rows)
    extra: dict[str, Any] = {"overrides": overrides, "notes": study.notes(preset)}
    if args.profile:
        configs = _with_profile_file(configs, args.profile, f"{name} [{preset}]")
        extra["profile_file"] = str(Path(args.profile).resolve())
    if getattr(study, "SOURCE", None) is not None:
        extra["study_file"] = str(study.SOURCE)
    sdir = grid.study_dir(args.out, name, preset)
    print(f"{name} [{preset}]: {len(configs)} runs → {sdir}", file=sys.stderr)
    t0 = time.perf_counter()
    with grid.study_lock(sdir):
        summaries = grid.run_grid(configs, sdir, launcher=args.launcher, workers=args.workers, study=name,
                                  preset=preset, restart=args.restart, extra=extra)
        wall = time.perf_counter() - t0
        failed = [s for s in summaries if s.get("status") == "error"]
        diverged = [s for s in summaries if s.get("status") == "diverged"]
        for s in failed:
            print(f"run {s['run_id']} failed: {s.get('error')}", file=sys.stderr)
        for s in diverged:
            print(f"run {s['run_id']} diverged: {s.get('reason') or 'see its events.jsonl'}", file=sys.stderr)
        if not args.no_report:
            _report(sdir)
    done = len(summaries) - len(failed) - len(diverged)
    print(f"wall time {wall:.1f} s; {done}/{len(summaries)} runs finished"
          + (f", {len(diverged)} diverged" if diverged else "") + (f", {len(failed)} failed" if failed else ""),
          file=sys.stderr)
    return EXIT_RUN_FAILED if failed else EXIT_DIVERGED if diverged else EXIT_OK


def _study_of(info: dict[str, Any]) -> ModuleType:
    """The study module of a study directory's ``study.json`` (a study file is read again)."""
    if info.get("study_file"):
        return studyfile.load(info["study_file"])
    return get_study(info["study"])


def _report(sdir: Path) -> None:
    with grid.study_lock(sdir):
        info = grid.read_study_file(sdir)
        md, _ = grid.write_results(sdir)
        try:
            figs = _study_of(info).report(sdir)
        except UnknownStudy:
            figs = {}
    print(md.read_text(encoding="utf-8"))
    for name, path in figs.items():
        if path is not None:
            print(f"figure {name}: {path}", file=sys.stderr)


def _cmd_resume(args: argparse.Namespace) -> int:
    from .train import resume

    summary = resume(args.run_dir)
    print(f"{summary['run_id']}: {summary['status']} after {summary['epochs']} epochs")
    return EXIT_DIVERGED if summary["status"] == "diverged" else EXIT_OK


def _cmd_transfer(args: argparse.Namespace) -> int:
    from .transfer_study import transfer

    sweeps = _profile_sweeps(args.profile) if args.profile else None
    result = transfer(args.run_dirs, args.out, seeds=args.seeds, eval_size=args.eval_size, sweeps=sweeps)
    for name, path in result["files"].items():
        print(f"{name}: {path}")
    return EXIT_OK


def _profile_sweeps(path: str) -> dict[str, tuple[Any, ...]]:
    """The transfer sweeps with the profile file's non-idealities added as points (ideal first,
    then from mild to severe)."""
    from soensim import HardwareProfile

    from .transfer_study import SWEEPS

    chip = HardwareProfile.load(path).nonidealities()
    sweeps = {}
    for kind, values in SWEEPS.items():
        merged = set(values) | ({chip[kind]} if kind in chip else set())
        severity = (lambda v: -v) if kind in ("quantize", "clip") else (lambda v: v)  # fewer levels, tighter bound
        sweeps[kind] = tuple(sorted(merged, key=lambda v: (v is not None and v != 0, 0 if v is None else severity(v))))
    return sweeps


def _cmd_export(args: argparse.Namespace) -> int:
    """Rebuild the run's model (config.json + checkpoint) and export its recurrent layer."""
    from soensim import HardwareProfile
    from soensim.specification import export, format_report

    from .files import write_text_atomic
    from .transfer_study import load_run

    cfg, model, _, _ = load_run(args.run_dir)
    rnn = getattr(model, "rnn", model)
    report = getattr(model, "constraint_report", None)
    if args.profile is not None:
        profile = HardwareProfile.resolve(args.profile)
        options: dict[str, Any] = {"dt": report.dt, "seed": report.seed, "spread": report.spread} if report else {}
    elif report is not None:
        profile = report.profile
        options = {"dt": report.dt, "seed": report.seed, "spread": report.spread,
                   "update_bias": report.update_bias}
    else:
        raise ConfigError(f"{args.run_dir} is a software run (no profile): pass --profile to check it against one")
    out = Path(args.out) if args.out else Path(args.run_dir) / "export.json"
    spec = export(rnn, profile, out, **options)
    md = write_text_atomic(out.with_suffix(".md"), format_report(spec))
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {out} and {md}", file=sys.stderr)
    return EXIT_OK


def _cmd_plot_or_summarize(args: argparse.Namespace) -> int:
    sdir = Path(args.study_dir)
    with grid.study_lock(sdir):
        if args.command == "summarize":
            md, csv_path = grid.write_results(sdir)
            print(md.read_text(encoding="utf-8"))
            print(f"wrote {md} and {csv_path}", file=sys.stderr)
        else:
            info = grid.read_study_file(sdir)
            for name, path in _study_of(info).report(sdir).items():
                print(f"{name}: {path}")
    return EXIT_OK


COMMANDS = {"list": lambda args: _cmd_list(), "run": _cmd_run, "resume": _cmd_resume, "transfer": _cmd_transfer,
            "export": _cmd_export, "plot": _cmd_plot_or_summarize, "summarize": _cmd_plot_or_summarize}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the same clean-up as for Ctrl-C runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _mistake_types() -> tuple[type[BaseException], ...]:
    from soensim.profiles import ProfileError

    return StudyError, ProfileError, UnknownStudy, OSError, ValueError


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help, or a malformed command line (one line, exit code 2)
        return int(done.code or 0)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as err:
        if debug:
            raise
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"soensim-study: {how}; {RESUME_HINT}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
    except Exception as err:
        if debug:
            raise
        if isinstance(err, _mistake_types()):
            print(f"soensim-study: error: {_describe(err)}", file=sys.stderr)
            return EXIT_MISTAKE
        print(f"soensim-study: internal error: {type(err).__name__}: {_describe(err)} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_RUN_FAILED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["EXIT_DIVERGED", "EXIT_MISTAKE", "EXIT_OK", "EXIT_RUN_FAILED", "main"]
