"""Run directories: the files of one run, how they are read and written, and when the
results in one may be reused.

    RUN_DIR/
      config.json     the RunConfig the run uses (written whenever it starts or resumes)
      checkpoint.pt   last good state: end of the last finished epoch (epoch 0 = the
                      initial state) and the config fingerprint; loadable with
                      ``torch.load(..., weights_only=True)``
      steps.jsonl     sampled per-step records: step, epoch, loss, grad_norm, lr
      epochs.jsonl    one record per epoch (epoch 0 = the initial model, no train_* keys)
      gates.jsonl     gate statistics at epoch ends, epoch 0 = before training
      events.jsonl    spike / nonfinite / rollback / resume / stop events
      summary.json    written last; its presence marks the run done; holds the fingerprint
      error.txt       traceback of a run that failed (a grid goes on with the others)
      .lock           held by the one process writing the directory (:class:`studies.files.DirLock`)

Every file that is replaced goes through :func:`studies.files.atomic_write`; the JSON-lines
logs are appended and, on resume, cut back to the checkpoint.

Reuse (:func:`check_reuse`): a directory holding results — a summary or a checkpoint — is
reused (summary) or resumed (checkpoint) only when its recorded configuration has the
requested :attr:`~studies.config.RunConfig.fingerprint`. Otherwise
:class:`~studies.errors.ConfigMismatch` lists the fields that differ; :func:`clear` (the
CLI's ``--restart``) starts the run over.
"""
from __future__ import annotations

import os
import pickle
import traceback
import warnings
from pathlib import Path
from typing import Any, Mapping

from .config import RunConfig, config_diff
from .errors import ConfigError, ConfigMismatch, DataError, RunDirError
from .files import (
    DirLock,
    append_jsonl,
    read_json,
    read_jsonl,
    rewrite_jsonl,
    torch_save_atomic,
    write_json_atomic,
    write_text_atomic,
)

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
STEPS_FILE = "steps.jsonl"
EPOCHS_FILE = "epochs.jsonl"
GATES_FILE = "gates.jsonl"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
ERROR_FILE = "error.txt"
LOG_FILES = (STEPS_FILE, EPOCHS_FILE, GATES_FILE, EVENTS_FILE)
#: Version of the checkpoint layout (2: torch LR scheduler state and the config fingerprint).
CHECKPOINT_FORMAT = 2
_START_OVER = "run again with --restart to discard it and start over, or choose another --out"


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain types only,
    so loading never runs code from the file.

    Kept on the CPU by default (RNG states must be CPU tensors; ``load_state_dict`` moves
    the rest to the parameters' device). A file holding anything else, a corrupt or
    truncated file, or one of another layout raises :class:`DataError` naming it.
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about unusual pickle protocols before refusing them
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise DataError(f"{path}: refused: the file holds objects other than tensors and plain containers, "
                            "so it was not written by the studies' trainer and is not loaded; delete it") from None
        raise DataError(f"{path}: corrupt checkpoint ({type(exc).__name__}); delete it to start the run over") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError, TypeError) as exc:
        raise DataError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}); "
                        "delete it to start the run over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise DataError(f"{path}: not a checkpoint of this version (format {found!r}, expected {CHECKPOINT_FORMAT}); "
                        "delete it to start the run over")
    return state


def read_config(run_dir: str | os.PathLike) -> RunConfig | None:
    """The recorded config.json (None if absent); unreadable ones raise errors naming the file."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    data = read_json(path)
    try:
        return RunConfig.from_dict(data)
    except ConfigError as exc:
        raise DataError(f"{path}: {exc}") from None


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's summary.json (None if the run is not done)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        return None
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise DataError(f"{path}: expected a JSON object")
    return summary


def mismatch(run_dir: Path, recorded: Mapping[str, Any] | None, cfg: RunConfig, what: str) -> ConfigMismatch:
    """The error for results in ``run_dir`` recorded under another configuration."""
    diff = config_diff(recorded, cfg.to_dict()) if recorded is not None else []
    detail = f": {'; '.join(diff)}" if diff else f" (its {what} records another configuration fingerprint)"
    return ConfigMismatch(f"{run_dir} holds results of a different configuration{detail}; {_START_OVER}")


def check_reuse(run_dir: str | os.PathLike, cfg: RunConfig) -> str:
    """``"new"`` (nothing to reuse), ``"finished"`` (summary of this config) or ``"partial"``
    (checkpoint of this config). Raises :class:`ConfigMismatch` when the directory's
    results were recorded under another configuration, :class:`DataError` for a corrupt
    record."""
    run_dir = Path(run_dir)
    summary_path, ckpt_path = run_dir / SUMMARY_FILE, run_dir / CHECKPOINT_FILE
    if not (summary_path.exists() or ckpt_path.exists()):
        return "new"
    recorded = read_config(run_dir)
    if recorded is None:
        raise RunDirError(f"{run_dir} holds results but no {CONFIG_FILE}; {_START_OVER}")
    if recorded.fingerprint != cfg.fingerprint:
        raise mismatch(run_dir, recorded.to_dict(), cfg, CONFIG_FILE)
    summary = read_summary(run_dir)
    if summary is not None:
        if summary.get("fingerprint") != cfg.fingerprint:
            raise mismatch(run_dir, None, cfg, SUMMARY_FILE)
        return "finished"
    if load_checkpoint(ckpt_path).get("fingerprint") != cfg.fingerprint:
        raise mismatch(run_dir, None, cfg, CHECKPOINT_FILE)
    return "partial"


def clear(run_dir: str | os.PathLike) -> None:
    """Delete the run's files (config, checkpoint, logs, summary, error), so it starts over."""
    for name in (CONFIG_FILE, CHECKPOINT_FILE, SUMMARY_FILE, ERROR_FILE, *LOG_FILES):
        (Path(run_dir) / name).unlink(missing_ok=True)


class RunDir:
    """The files of one run (see the module docstring), as the trainer writes them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def lock(self) -> DirLock:
        """The writer's lock (a context manager); a second writer gets a LockedError."""
        return DirLock(self.path, "run directory")

    def start_fresh(self, cfg: RunConfig) -> None:
        """Remove previous logs and results and record ``cfg``."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in (*LOG_FILES, SUMMARY_FILE, ERROR_FILE):
            (self.path / name).unlink(missing_ok=True)
        self.write_config(cfg)

    def write_config(self, cfg: RunConfig) -> None:
        write_json_atomic(self.path / CONFIG_FILE, cfg.to_dict())

    def append(self, name: str, record: Mapping[str, Any]) -> None:
        append_jsonl(self.path / name, record)

    def records(self, name: str) -> list[dict[str, Any]]:
        return read_jsonl(self.path / name)

    def truncate_logs(self, step: int, epoch: int) -> None:
        """Drop the log records written after the checkpoint at (``step``, ``epoch``)."""
        rewrite_jsonl(self.path / STEPS_FILE, lambda r: r.get("step", 0) <= step)
        # spikes after the checkpoint will be seen again (or not) when those steps are redone
        rewrite_jsonl(self.path / EVENTS_FILE, lambda r: r.get("event") != "spike" or r.get("step", 0) <= step)
        rewrite_jsonl(self.path / EPOCHS_FILE, lambda r: r.get("epoch", 0) <= epoch)
        rewrite_jsonl(self.path / GATES_FILE, lambda r: r.get("epoch", 0) <= epoch)

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT_FILE).exists()

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        torch_save_atomic({**state, "format": CHECKPOINT_FORMAT}, self.path / CHECKPOINT_FILE)

    def load_checkpoint(self, cfg: RunConfig) -> dict[str, Any]:
        """The checkpoint, which must have been written under ``cfg``."""
        state = load_checkpoint(self.path / CHECKPOINT_FILE)
        if state.get("fingerprint") != cfg.fingerprint:
            recorded = read_config(self.path)
            raise mismatch(self.path, recorded.to_dict() if recorded else None, cfg, CHECKPOINT_FILE)
        return state

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(self.path / SUMMARY_FILE, summary)

    def record_failure(self, cfg: RunConfig, err: BaseException) -> dict[str, Any]:
        """Write ``err``'s traceback to error.txt; the run's summary with status "error"."""
        write_text_atomic(self.path / ERROR_FILE, "".join(traceback.format_exception(err)))
        return {"run_id": cfg.run_id, "row": cfg.row, "seed": cfg.seed, "status": "error",
                "error": f"{type(err).__name__}: {err}"}


__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "CONFIG_FILE", "EPOCHS_FILE", "ERROR_FILE", "EVENTS_FILE",
           "GATES_FILE", "LOG_FILES", "RunDir", "STEPS_FILE", "SUMMARY_FILE", "check_reuse", "clear",
           "load_checkpoint", "mismatch", "read_config", "read_summary"]
