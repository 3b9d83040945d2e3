"""Trainer: one run of one configuration, resumable, seeded, with divergence handling.

A run is described by a frozen :class:`~studies.config.RunConfig`. :class:`Trainer`
trains a model on a :class:`~studies.taskdata.TaskData` and writes everything into one run
directory (layout and reuse rules: :mod:`studies.rundir`); :func:`run` builds the model
and data of a config through its study and trains it, reusing or resuming what the
directory already holds for the same configuration.

Resuming (``Trainer.fit(resume=True)``, the default) reloads ``checkpoint.pt``, drops the
log records written after it, and continues; the shuffling generator, the global torch
RNG, the optimizer, the schedule and the spike detector are all in the checkpoint, so a
resumed run ends with the same numbers and logs as an uninterrupted one (on CPU; cuDNN
kernels are not bitwise deterministic).

Divergence is never skipped silently (:mod:`studies.monitor`): a non-finite or exploding
loss, a non-finite gradient norm or parameter is recorded, then
``nonfinite_policy="stop"`` ends the run with status ``"diverged"`` and ``"rollback"``
reloads the last good checkpoint, multiplies the learning rate by ``rollback_lr_factor``
and continues (at most ``max_rollbacks`` times, then ``"diverged"``).

This module also re-exports the names runs are usually driven with (``RunConfig``,
``ArraySplit``, ``TaskData``, the run-directory file names, ``load_checkpoint``,
``read_jsonl``) from the modules that define them.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .config import RunConfig
from .errors import ConfigError, RunDirError
from .files import read_jsonl
from .models import profile_violations
from .monitor import Diverged, SpikeDetector, divergence, nonfinite_parameters
from .optim import CosineToFloor, make_optimizer, make_schedule
from .rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    EPOCHS_FILE,
    EVENTS_FILE,
    GATES_FILE,
    STEPS_FILE,
    SUMMARY_FILE,
    RunDir,
    check_reuse,
    clear,
    load_checkpoint,
    read_config,
    read_summary,
)
from .taskdata import OBJECTIVES, ArraySplit, StreamSplit, TaskData, evaluate
from .tensorboard_log import tracker

StepCallback = Callable[["Trainer", dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' requested but CUDA is not available")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (None: unchanged), restoring the previous count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


class Trainer:
    """Train ``model`` on ``data`` under ``cfg``, logging into ``run_dir``.

    ``callbacks`` are called after every optimizer step with the step record
    (``step``, ``epoch``, ``loss``, ``grad_norm``, ``lr``); an exception raised there
    propagates (tests use this to simulate a kill). The model may define
    ``diagnostics() -> dict[str, float]`` (e.g. the W_hz norm) and
    ``gate_statistics(x) -> dict[str, list[float]]``; both are logged at epoch ends.

    :meth:`fit` is :meth:`start`, :meth:`train_remaining`, :meth:`finish`. A driver that trains
    several runs in lockstep (:mod:`studies.packed`) calls the phases itself: per epoch an
    :class:`Epoch`; per step :meth:`begin_step`, its own forward pass, :meth:`step_loss`,
    backward, :meth:`apply_gradients` and ``Epoch.record``; then :meth:`end_epoch`; a
    :class:`~studies.monitor.Diverged` from a step goes to :meth:`record_divergence`.
    """

    def __init__(self, cfg: RunConfig, model: nn.Module, data: TaskData, run_dir: str | os.PathLike,
                 callbacks: Sequence[StepCallback] = ()):
        if data.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {data.objective!r}; known: {sorted(OBJECTIVES)}")
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.dir = RunDir(self.run_dir)
        self.objective = OBJECTIVES[data.objective]
        self.callbacks = list(callbacks)
        self.tracker = tracker(cfg, self.run_dir)  # TensorBoard (cfg.tensorboard) or a no-op
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg)
        self.scheduler = make_schedule(self.optimizer, cfg, data.train.num_batches(cfg.batch_size))
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        self.spikes = SpikeDetector(cfg.spike_factor, cfg.spike_window, cfg.spike_min_history)
        self.epoch = 0
        self.step = 0
        self.rollbacks = 0
        self.nonfinite = 0
        self.elapsed = 0.0
        self.initial_loss: float | None = None  # the untrained model's loss: the divergence reference at step 1
        self.best: dict[str, Any] = {}
        self.status = "running"
        self.reason: str | None = None  # why the run stopped early (divergence)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": self.shuffle_gen.get_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "fingerprint": self.cfg.fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "spikes": self.spikes.state_dict(),
            "rng": rng,
            "epoch": self.epoch,
            "step": self.step,
            "rollbacks": self.rollbacks,
            "nonfinite": self.nonfinite,
            "elapsed": self.elapsed,
            "initial_loss": self.initial_loss,
            "best": dict(self.best),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.spikes.load_state_dict(state["spikes"])
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle_gen.set_state(state["rng"]["shuffle"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.rollbacks, self.nonfinite = int(state["rollbacks"]), int(state["nonfinite"])
        self.elapsed = float(state["elapsed"])
        self.initial_loss = state["initial_loss"]
        self.best = dict(state["best"])

    def save_checkpoint(self) -> None:
        self.dir.save_checkpoint(self.state_dict())

    def event(self, kind: str, **fields: Any) -> None:
        self.dir.append(EVENTS_FILE, {"event": kind, "step": self.step, "epoch": self.epoch, **fields})

    # ------------------------------------------------------------------ eval
    def eval_splits(self) -> list[tuple[str, ArraySplit]]:
        """The non-empty evaluation splits, named: ``("val", ...)``, ``("test", ...)``."""
        return [(name, split) for name, split in (("val", self.data.val), ("test", self.data.test))
                if split is not None and len(split)]

    def evaluate(self, split: ArraySplit) -> dict[str, float]:
        """Loss and metric on ``split`` (one of :meth:`eval_splits`)."""
        return evaluate(self.model, split, self.objective, self.cfg.eval_batch_size, self.device)

    def _diagnostics(self) -> dict[str, float]:
        fn = getattr(self.model, "diagnostics", None)
        return {k: float(v) for k, v in fn().items()} if callable(fn) else {}

    def _gate_stats(self) -> None:
        fn = getattr(self.model, "gate_statistics", None)
        if not (self.cfg.gate_stats and callable(fn)):
            return
        split = self.data.val if self.data.val is not None and len(self.data.val) else self.data.test
        if split is None or not hasattr(split, "sample"):
            return
        x = split.sample(self.cfg.gate_stats_size).to(self.device)
        self.model.eval()
        try:
            with torch.no_grad():
                stats = fn(x)
        finally:
            self.model.train()
        if stats:
            self.dir.append(GATES_FILE, {"epoch": self.epoch, "step": self.step,
                                         **{k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in stats.items()}})
            self.tracker.gates(self.step, stats)

    # ------------------------------------------------------------------ training
    def _loss_reference(self) -> float | None:
        ref = self.spikes.reference()
        return ref if ref is not None else self.initial_loss

    def _train_step(self, x: Tensor, y: Tensor) -> tuple[float, float, Tensor]:
        x, y = self.begin_step(x, y)
        out = self.model(x)
        loss, loss_v = self.step_loss(out, y)
        loss.backward()
        return loss_v, self.apply_gradients(), out.detach()

    def begin_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The batch on the device, the gradients cleared."""
        self.optimizer.zero_grad(set_to_none=True)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def step_loss(self, out: Tensor, y: Tensor) -> tuple[Tensor, float]:
        """The loss of the model's output ``out`` and its value; :class:`Diverged` when it explodes."""
        loss = self.objective.loss(out, y)
        loss_v = float(loss.detach())
        why = divergence(loss_v, self._loss_reference(), self.cfg.divergence_factor)
        if why is not None:
            raise Diverged(f"{why} at step {self.step + 1}")
        return loss, loss_v

    def apply_gradients(self) -> float:
        """Clip, step the optimizer and the per-step schedule after ``backward``; the gradient norm.
        :class:`Diverged` on a non-finite gradient norm or parameter."""
        cfg, n = self.cfg, self.step + 1
        params = [p for p in self.params if p.grad is not None]
        if cfg.clip_norm is not None:
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm))
        else:
            gnorm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        if not math.isfinite(gnorm):
            raise Diverged(f"non-finite gradient norm {gnorm} at step {n}")
        self.optimizer.step()
        if nonfinite_parameters(self.params):
            raise Diverged(f"non-finite parameters after step {n}")
        if self.scheduler.per == "step":
            self.scheduler.step()
        return gnorm

    def _run_epoch(self) -> dict[str, Any]:
        epoch = Epoch(self, self.cfg.progress)
        try:
            while (batch := epoch.next_batch()) is not None:
                loss_v, gnorm, out = self._train_step(*batch)
                epoch.record(loss_v, gnorm, out, batch[1])
        finally:
            epoch.close()
        return epoch.stats()

    def end_epoch(self, train_stats: dict[str, Any], t0: float, scores: Mapping[str, float] | None = None) -> None:
        """Evaluate, log the epoch record and gate statistics, checkpoint. Epoch 0 (no
        ``train_stats``) records the initial model, so curves start before training.
        ``scores``: the ``val_*``/``test_*`` fields when they were computed elsewhere (a pack
        evaluates its runs together); None evaluates here."""
        if train_stats:
            self.epoch += 1
            if self.scheduler.per == "epoch":
                self.scheduler.step()
        record: dict[str, Any] = {"epoch": self.epoch, "step": self.step, **train_stats}
        if scores is None:
            scores = {f"{name}_{k}": v for name, split in self.eval_splits() for k, v in self.evaluate(split).items()}
        record.update(scores)
        if not train_stats:
            self.initial_loss = record.get("val_loss", record.get("test_loss"))
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record.update(self._diagnostics())
        self._update_best(record)
        self.elapsed += time.perf_counter() - t0
        record["elapsed_s"] = self.elapsed
        record["spikes_total"] = self.spikes.count
        self.dir.append(EPOCHS_FILE, record)
        self.tracker.epoch(record, self.model)
        self._gate_stats()
        self.save_checkpoint()

    def _update_best(self, record: Mapping[str, Any]) -> None:
        metric = self.objective.metric
        key = f"val_{metric}" if f"val_{metric}" in record else f"test_{metric}"
        if key not in record:
            return
        value = record[key]
        better = (value > self.best.get("value", -math.inf)) if self.objective.higher_is_better else \
            (value < self.best.get("value", math.inf))
        if better:
            self.best = {"epoch": self.epoch, "key": key, "value": value,
                         **{k: v for k, v in record.items() if k.startswith(("val_", "test_"))}}

    def _rollback(self, err: Diverged) -> bool:
        """Reload the last good checkpoint with a smaller learning rate; False when out of rollbacks."""
        if self.cfg.nonfinite_policy != "rollback" or self.rollbacks >= self.cfg.max_rollbacks:
            return False
        rollbacks, nonfinite, scale = self.rollbacks + 1, self.nonfinite, self.scheduler.scale
        bad_step = self.step + 1
        self.load_state_dict(self.dir.load_checkpoint(self.cfg))
        self.rollbacks, self.nonfinite = rollbacks, nonfinite
        self.scheduler.set_scale(scale * self.cfg.rollback_lr_factor)
        self.dir.truncate_logs(self.step, self.epoch)
        self.tracker.close()  # reopened at the next record, purging the steps rolled back
        self.event("rollback", from_step=bad_step, lr_scale=self.scheduler.scale, reason=str(err))
        self.save_checkpoint()
        return True

    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train to the end (or divergence); returns the summary (also in summary.json).

        ``resume``: continue from the directory's checkpoint (which must have been written
        under this config), else start over. Holds the directory's lock throughout."""
        with self.dir.lock(), torch_threads(self.cfg.threads), self.tracker:
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict[str, Any]:
        self.start(resume)
        self.train_remaining()
        return self.finish()

    def start(self, resume: bool) -> None:
        """Load the checkpoint (``resume``) or start fresh and record the initial model."""
        cfg = self.cfg
        if resume and self.dir.has_checkpoint():
            self.load_state_dict(self.dir.load_checkpoint(cfg))
            self.dir.write_config(cfg)
            self.dir.truncate_logs(self.step, self.epoch)
            self.event("resume")
        else:
            self.dir.start_fresh(cfg)
            torch.manual_seed(cfg.seed)
            self.end_epoch({}, time.perf_counter())
        self.model.train()

    def wants_epoch(self) -> bool:
        """True while the run has epochs (and steps) left and has not stopped."""
        cfg = self.cfg
        return (self.status == "running" and self.epoch < cfg.epochs
                and not (cfg.max_steps is not None and self.step >= cfg.max_steps))

    def train_remaining(self) -> None:
        """Train epoch by epoch until :meth:`wants_epoch` is false."""
        while self.wants_epoch():
            t0 = time.perf_counter()
            try:
                stats = self._run_epoch()
            except Diverged as err:
                self.record_divergence(err, t0)
                continue
            self.end_epoch(stats, t0)

    def record_divergence(self, err: Diverged, t0: float) -> None:
        """Record a divergence in the epoch begun at ``t0``: roll back, or stop the run (status "diverged")."""
        self.nonfinite += 1
        self.event("nonfinite", reason=str(err), policy=self.cfg.nonfinite_policy)
        self.elapsed += time.perf_counter() - t0
        if not self._rollback(err):
            self.status, self.reason = "diverged", str(err)
            self.event("stop", reason=self.reason)

    def finish(self) -> dict[str, Any]:
        """Mark a run that did not stop early as finished; write and return its summary."""
        if self.status == "running":
            self.status = "finished"
        return self.write_summary()

    def write_summary(self) -> dict[str, Any]:
        epochs = self.dir.records(EPOCHS_FILE)
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        summary = {
            "run_id": self.cfg.run_id,
            "study": self.cfg.study,
            "row": self.cfg.row,
            "seed": self.cfg.seed,
            "fingerprint": self.cfg.fingerprint,
            "status": self.status,
            "reason": self.reason,
            "epochs": self.epoch,
            "steps": self.step,
            "metric": self.objective.metric,
            "final": epochs[-1] if epochs else {},
            "best": self.best,
            "spikes": self.spikes.count,
            "nonfinite": self.nonfinite,
            "rollbacks": self.rollbacks,
            "lr_scale": self.scheduler.scale,
            "params": n_params,
            "trainable_params": n_train,
            "violations": profile_violations(self.model) if self.cfg.profile is not None else None,
            "elapsed_s": self.elapsed,
            "data": self.data.info,
            "device": str(self.device),
            "torch": torch.__version__,
        }
        self.dir.write_summary(summary)
        return summary


class Epoch:
    """One training epoch of a :class:`Trainer`: its batches, progress bar and running totals.

    ``next_batch()`` gives the next ``(x, y)`` (None at the end of the epoch or at
    ``max_steps``), ``record(...)`` books a finished step (log, spikes, callbacks), ``close()``
    ends the bar and ``stats()`` returns the epoch's training record. A single run and a pack
    of runs (:mod:`studies.packed`) drive it the same way."""

    def __init__(self, trainer: Trainer, progress: bool):
        cfg = trainer.cfg
        self.trainer = trainer
        self.batches = iter(trainer.data.train.batches(cfg.batch_size, trainer.shuffle_gen))
        self.bar = progress_bar(trainer.data.train.num_batches(cfg.batch_size),
                                f"{cfg.run_id} ep {trainer.epoch + 1}/{cfg.epochs}", progress)
        self.loss_sum, self.metric_sum, self.count, self.seen, self.spikes = 0.0, 0.0, 0, 0, 0
        self.lr = trainer.optimizer.param_groups[0]["lr"]  # the rate of the coming step (a step schedule moves it)

    def next_batch(self) -> tuple[Tensor, Tensor] | None:
        t = self.trainer
        if t.cfg.max_steps is not None and t.step >= t.cfg.max_steps:
            return None
        self.lr = t.optimizer.param_groups[0]["lr"]
        return next(self.batches, None)

    def record(self, loss_v: float, gnorm: float, out: Tensor, y: Tensor) -> None:
        t, cfg = self.trainer, self.trainer.cfg
        t.step += 1
        self.loss_sum += loss_v * len(y)
        self.seen += len(y)
        m, c = t.objective.metric_sum(out, y.to(out.device))
        self.metric_sum, self.count = self.metric_sum + m, self.count + c
        spike = t.spikes.update(loss_v)
        record = {"step": t.step, "epoch": t.epoch + 1, "loss": loss_v, "grad_norm": gnorm, "lr": self.lr}
        if spike:
            self.spikes += 1
            t.event("spike", loss=loss_v, median=t.spikes.last_median)
        if spike or t.step % cfg.log_every == 0 or t.step == 1:
            t.dir.append(STEPS_FILE, {**record, "spike": spike})
        t.tracker.step(record)
        for cb in t.callbacks:
            cb(t, record)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss_v:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def stats(self) -> dict[str, Any]:
        return {"train_loss": self.loss_sum / max(1, self.seen),
                f"train_{self.trainer.objective.metric}": self.metric_sum / max(1, self.count), "spikes": self.spikes}


# --------------------------------------------------------------------------- one run
def run(cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = True,
        callbacks: Sequence[StepCallback] = ()) -> dict[str, Any]:
    """Build the model and data for ``cfg`` through its study and train it in ``run_dir``.

    ``resume=True``: a finished run of the same configuration is not retrained (its
    summary is returned) and an interrupted one continues from its checkpoint; results
    of another configuration raise :class:`~studies.errors.ConfigMismatch`.
    ``resume=False``: whatever the directory holds is discarded and the run starts over.
    Another process writing the directory raises :class:`~studies.errors.LockedError`.
    """
    with RunDir(run_dir).lock():
        prepared = prepare(cfg, run_dir, resume, callbacks)
        return prepared if isinstance(prepared, dict) else prepared.fit(resume=True)


def prepare(cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = True,
            callbacks: Sequence[StepCallback] = ()) -> Trainer | dict[str, Any]:
    """The :class:`Trainer` of ``cfg`` in ``run_dir``, its model and data built (seeded by
    ``cfg.seed``), ready to ``fit(resume=True)``; or the summary of a finished run of the same
    configuration. Reuse rules and ``resume`` as :func:`run`."""
    from .registry import get_study

    rd = RunDir(run_dir)
    with rd.lock():
        if not resume:
            clear(rd.path)
        state = check_reuse(rd.path, cfg)
        if state == "finished":
            return read_summary(rd.path)
        if state == "new":
            rd.start_fresh(cfg)  # the config is on disk even if building fails
        with torch_threads(cfg.threads):
            study = get_study(cfg.study)  # imported before seeding: a first import may draw random numbers
            torch.manual_seed(cfg.seed)
            model, data = study.build(cfg)
            if nonfinite_parameters(model.parameters()):
                raise ConfigError(f"{cfg.run_id}: the model built for this configuration has non-finite (NaN or "
                                  "infinite) parameters; check the hardware settings (profile, coupling_max, hw_dt)")
            return Trainer(cfg, model, data, rd.path, callbacks)


def resume(run_dir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Continue the run in ``run_dir`` under its recorded config.json (``overrides`` may
    change fields that are not fingerprinted, such as ``threads`` or ``progress``)."""
    cfg = read_config(run_dir)
    if cfg is None:
        raise RunDirError(f"{run_dir} has no {CONFIG_FILE}; is it a run directory?")
    if overrides:
        cfg = cfg.replace(**overrides)
    return run(cfg, run_dir, resume=True)


__all__ = [
    "ArraySplit", "CHECKPOINT_FILE", "CONFIG_FILE", "ConfigError", "CosineToFloor", "RunConfig", "SUMMARY_FILE",
    "Epoch", "SpikeDetector", "StepCallback", "StreamSplit", "TaskData", "Trainer", "load_checkpoint", "prepare",
    "progress_bar", "read_jsonl", "resolve_device", "resume", "run", "torch_threads",
]
