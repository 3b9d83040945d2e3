"""Optional TensorBoard log of a run (``RunConfig.tensorboard``; the CLI's ``--tensorboard``).

With it the trainer also writes ``RUN_DIR/tensorboard/`` through
:class:`torch.utils.tensorboard.SummaryWriter` (``pip install 'soensim[tensorboard]'``);
``tensorboard --logdir OUT/STUDY/PRESET/runs`` then shows every run of a study side by side.
The JSON-lines logs of :mod:`studies.rundir` stay the record; this is a view of the same
numbers. Tags (global step = optimizer step):

- ``step/loss``, ``step/grad_norm``, ``step/lr``: every optimizer step;
- ``train/<k>``, ``val/<k>``, ``test/<k>``: the epoch record's ``train_loss``, ``val_acc``,
  ``test_mse``, ... (loss and the task's metric), at each epoch end (epoch 0 = the
  initial model, at step 0);
- ``run/lr``, ``run/epoch``, ``spikes/epoch``, ``spikes/total``: learning rate, epoch and
  loss-spike counts at epoch ends;
- ``weights/<diagnostic>`` (the model's ``diagnostics()``, e.g. ``w_hz_norm``) and
  ``weights/norm/<parameter>`` (Frobenius norm of every parameter tensor);
- ``violations/total`` and ``violations/<rule>``: for a run under a hardware profile, the
  number of broken :func:`soensim.check` rules of the constrained layer at each epoch end
  (:func:`studies.models.profile_violations`; 0 for a correctly constrained model);
- histograms ``gates/<statistic>``: the per-unit gate statistics of ``gates.jsonl``.

A resumed or rolled-back run purges the events after its checkpoint (``purge_step``), as the
JSON-lines logs are cut back; a fresh start removes the folder.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .config import RunConfig
from .errors import ConfigError

LOG_DIR = "tensorboard"
_SPLITS = ("train_", "val_", "test_")


class NullTracker:
    """What the trainer calls when TensorBoard is off: every method does nothing."""

    def step(self, record: Mapping[str, Any]) -> None:
        pass

    def epoch(self, record: Mapping[str, Any], model: nn.Module) -> None:
        pass

    def gates(self, step: int, stats: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullTracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TensorBoardTracker(NullTracker):
    """Writes a run's scalars and gate histograms to ``run_dir/tensorboard`` (see the module docstring)."""

    def __init__(self, cfg: RunConfig, run_dir: str | os.PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tensorboard=true needs the tensorboard package: "
                              "pip install 'soensim[tensorboard]'") from None
        self._writer_class = SummaryWriter
        self.cfg, self.path = cfg, Path(run_dir) / LOG_DIR
        self.writer: Any = None

    def _open(self, step: int) -> Any:
        """The writer, opened at the first record: a fresh run (step 0) starts an empty folder,
        a resumed one purges what was logged after its checkpoint."""
        if self.writer is None:
            if step == 0:
                shutil.rmtree(self.path, ignore_errors=True)
            self.writer = self._writer_class(str(self.path), purge_step=step if step > 0 else None)
        return self.writer

    def step(self, record: Mapping[str, Any]) -> None:
        w, n = self._open(record["step"]), record["step"]
        for key in ("loss", "grad_norm", "lr"):
            _scalar(w, f"step/{key}", record.get(key), n)

    def epoch(self, record: Mapping[str, Any], model: nn.Module) -> None:
        n = record["step"]
        w = self._open(n)
        for key, value in record.items():
            if key.startswith(_SPLITS):
                split, name = key.split("_", 1)
                _scalar(w, f"{split}/{name}", value, n)
        _scalar(w, "run/lr", record.get("lr"), n)
        _scalar(w, "run/epoch", record.get("epoch"), n)
        _scalar(w, "spikes/epoch", record.get("spikes"), n)
        _scalar(w, "spikes/total", record.get("spikes_total"), n)
        diagnostics = getattr(model, "diagnostics", None)
        for key, value in (diagnostics() if callable(diagnostics) else {}).items():
            _scalar(w, f"weights/{key}", value, n)
        with torch.no_grad():
            for name, p in model.named_parameters():
                _scalar(w, f"weights/norm/{name}", float(p.detach().norm()), n)
        if getattr(model, "constraint_report", None) is not None:
            from soensim.constraints.rules import RULES

            from .models import profile_violations

            broken = [v["rule"] for v in profile_violations(model)]
            _scalar(w, "violations/total", len(broken), n)
            for rule in RULES:
                _scalar(w, f"violations/{rule}", broken.count(rule), n)
        w.flush()

    def gates(self, step: int, stats: Mapping[str, Any]) -> None:
        w = self._open(step)
        for key, values in stats.items():
            t = torch.as_tensor(values, dtype=torch.float64).flatten()
            t = t[torch.isfinite(t)]
            if t.numel():
                w.add_histogram(f"gates/{key}", t.numpy(), step)
        w.flush()

    def close(self) -> None:
        """Close the writer; the next record reopens it, purging what was logged after that record's step."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _scalar(writer: Any, tag: str, value: Any, step: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return
    writer.add_scalar(tag, float(value), step)


def tracker(cfg: RunConfig, run_dir: str | os.PathLike) -> NullTracker:
    """The run's tracker: a :class:`TensorBoardTracker` when ``cfg.tensorboard``, else a :class:`NullTracker`."""
    return TensorBoardTracker(cfg, run_dir) if cfg.tensorboard else NullTracker()


__all__ = ["LOG_DIR", "NullTracker", "TensorBoardTracker", "tracker"]
