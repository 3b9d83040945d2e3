"""Runs of one shape trained as one batched model: the ``batched`` launcher.

A *pack* is a set of runs whose recurrent layers have one :func:`gates.batched.batch_signature`
(core, kernel mode, sizes, device, dtype) and whose training steps see batches of one shape
(batch size, examples per epoch, sequence shape). Each run keeps everything of its own —
model, constraints, optimizer, schedule, data order, random state, run directory,
checkpoints, logs — and only the recurrence of each training and evaluation step runs once
for the whole pack (:func:`gates.batched.forward_models`: one Triton launch on CUDA for M
models). The study's rows (frozen biases, profiles, gate initialisations of one kernel
mode) and seeds pack together.

Every run directory ends as that run trained alone would leave it: bit for bit on the CPU
(the models run one after another through the same kernel, so a pack is a test of the
GPU path's bookkeeping rather than a speed-up there), to float tolerance on CUDA (Triton
also stands in for cuDNN's gate ``-``). A run that diverges leaves the pack and goes on
alone under its policy (roll back or stop); runs resumed at different epochs share the
pack while they have epochs left; a run whose model cannot run batched, or that is alone
of its shape, trains alone. Failures are recorded per run as with the other launchers.

Every job of the grid is built (model and data) before training starts, and the packs
train one after another in this process. A packed run's ``elapsed_s`` is the pack's
training and evaluation time plus the run's own end-of-epoch work (gate statistics,
checkpoint).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from gates.batched import batch_signature, forward_models

from .config import RunConfig
from .errors import ENVIRONMENT_ERRORS, ConfigError
from .monitor import Diverged
from .rundir import RunDir
from .taskdata import Scores
from .train import Epoch, Trainer, prepare, progress_bar, torch_threads

Job = tuple[RunConfig, Path]


def pack_key(trainer: Trainer) -> tuple | None:
    """What runs must share to train in one pack; None when the run's model cannot run batched
    (it needs a ``rnn`` layer with a batch signature and a ``read`` head, see
    :class:`studies.models.SequenceModel`)."""
    model, cfg = trainer.model, trainer.cfg
    sig = batch_signature(getattr(model, "rnn", None))
    if sig is None or not callable(getattr(model, "read", None)):
        return None
    train = trainer.data.train
    evals = tuple((name, len(split)) for name, split in trainer.eval_splits())
    return (sig, cfg.batch_size, len(train), train.num_batches(cfg.batch_size), evals, cfg.eval_batch_size, cfg.device)


class _Member:
    """One run in a pack: its trainer, its own state of torch's global CPU generator (nothing in
    a pack's models draws on CUDA), the epoch under way."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.rng = torch.get_rng_state()  # as the run's prepare() left it: seeded, model built
        self.epoch: Epoch | None = None
        self.in_pack = True
        self.failure: dict[str, Any] | None = None
        self.batch: tuple[Tensor, Tensor] | None = None
        self.out: Tensor | None = None
        self.loss_v = 0.0
        self.diverged: tuple[Diverged, float] | None = None

    @contextlib.contextmanager
    def own(self, t0: float | None = None) -> Iterator[None]:
        """Run a phase of this member alone: its random state installed (and kept after); a
        divergence (during an epoch begun at ``t0``; handled by :meth:`settle`) or a failure of
        the run itself takes it out of the pack instead of stopping the others."""
        torch.set_rng_state(self.rng)
        try:
            yield
        except Diverged as err:
            self._leave()
            self.diverged = (err, t0 if t0 is not None else time.perf_counter())
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as err:  # recorded, the others go on
            self._leave()
            self.failure = self.trainer.dir.record_failure(self.trainer.cfg, err)
        finally:
            self.rng = torch.get_rng_state()

    def settle(self) -> None:
        """Roll back or stop after a divergence, once the pack's backward of that step is done (it
        still reads this model's tensors, which a rollback overwrites)."""
        if self.diverged is not None:
            err, t0 = self.diverged
            self.diverged = None
            with self.own():
                self.trainer.record_divergence(err, t0)

    def _leave(self) -> None:
        self.in_pack = False
        if self.epoch is not None:
            self.epoch.close()


@contextlib.contextmanager
def _shared(members: list[_Member]) -> Iterator[None]:
    """A phase all members share (the batched forward or backward): a failure is recorded for each of them."""
    try:
        yield
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as err:
        for m in members:
            if m.in_pack:
                m._leave()
                m.failure = m.trainer.dir.record_failure(m.trainer.cfg, err)


def _outputs(models: list[Any], xs: list[Tensor]) -> list[Tensor]:
    """Each model's output on its input, the recurrences in one batched call."""
    if len(models) == 1 or len({tuple(x.shape) for x in xs}) > 1:
        return [model(x) for model, x in zip(models, xs, strict=True)]
    results = forward_models([model.rnn for model in models], xs)
    return [model.read(y) for model, (y, _) in zip(models, results, strict=True)]


@torch.no_grad()
def _evaluate(members: list[_Member]) -> list[dict[str, float]]:
    """Each member's ``val_*``/``test_*`` scores (as :meth:`Trainer.evaluate` gives them), the
    models run in lockstep over their splits (one shape: :func:`pack_key`)."""
    trainers = [m.trainer for m in members]
    models = [t.model for t in trainers]
    out: list[dict[str, float]] = [{} for _ in members]
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        for k, (name, _) in enumerate(trainers[0].eval_splits()):
            scores = [Scores(t.objective) for t in trainers]
            batches = zip(*(t.eval_splits()[k][1].batches(t.cfg.eval_batch_size) for t in trainers), strict=True)
            for step in batches:
                ys = [y.to(t.device) for t, (_, y) in zip(trainers, step, strict=True)]
                outs = _outputs(models, [x.to(t.device) for t, (x, _) in zip(trainers, step, strict=True)])
                for sc, o, y in zip(scores, outs, ys, strict=True):
                    sc.add(o, y)
            for record, sc in zip(out, scores, strict=True):
                record.update({f"{name}_{key}": v for key, v in sc.result().items()})
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)
    return out


def _train_epoch(members: list[_Member], index: int) -> None:
    """One epoch of every member in lockstep: a shared forward and backward per step, then
    each member's own loss checks, clipping, optimizer step and logs; then the members'
    evaluation, in lockstep too, and each one's end of epoch (epoch record, checkpoint)."""
    t0 = time.perf_counter()
    for m in members:
        with m.own(t0):
            m.epoch = Epoch(m.trainer, progress=False)
    lead = members[0].trainer
    bar = progress_bar(lead.data.train.num_batches(lead.cfg.batch_size),
                       f"pack of {len(members)} ({lead.cfg.run_id}, …) ep {index}", lead.cfg.progress)
    stepping = [m for m in members if m.in_pack]
    try:
        while stepping:
            for m in stepping:
                m.batch = None
                with m.own(t0):
                    batch = m.epoch.next_batch()
                    m.batch = None if batch is None else m.trainer.begin_step(*batch)
            stepping = [m for m in stepping if m.in_pack and m.batch is not None]
            if not stepping:
                break
            outs, losses = [], []
            with _shared(stepping):
                outs = _outputs([m.trainer.model for m in stepping], [m.batch[0] for m in stepping])
            if not outs:  # the batched forward failed (recorded for every member)
                break
            for m, out in zip(stepping, outs, strict=True):
                with m.own(t0):
                    loss, m.loss_v = m.trainer.step_loss(out, m.batch[1])
                    losses.append(loss)
                    m.out = out.detach()
            stepping = [m for m in stepping if m.in_pack]
            with _shared(stepping):
                if losses:
                    torch.stack(losses).sum().backward()  # the runs share no parameter: each gets its own gradient
            for m in stepping:
                with m.own(t0):
                    m.epoch.record(m.loss_v, m.trainer.apply_gradients(), m.out, m.batch[1])
            for m in members:
                m.settle()
            stepping = [m for m in stepping if m.in_pack]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    done = [m for m in members if m.in_pack]
    scores: list[dict[str, float]] = []
    with _shared(done):
        scores = _evaluate(done) if done else []
    if not scores:  # every member left the pack, or the shared evaluation failed (recorded for each)
        return
    shared_s = time.perf_counter() - t0
    for m, sc in zip(done, scores, strict=True):
        with m.own():
            m.epoch.close()
            m.trainer.end_epoch(m.epoch.stats(), time.perf_counter() - shared_s, sc)  # elapsed: the pack's + own


def fit_pack(trainers: Sequence[Trainer], resume: bool = True) -> list[dict[str, Any]]:
    """Train ``trainers`` (each ready to ``fit``) as one pack; their summaries in order.

    Holds every run directory's lock; ``resume`` as :meth:`Trainer.fit`."""
    members = [_Member(t) for t in trainers]
    with contextlib.ExitStack() as stack:
        for t in trainers:
            stack.enter_context(t.dir.lock())
            stack.enter_context(t.tracker)
        stack.enter_context(torch_threads(trainers[0].cfg.threads))
        for m in members:
            with m.own():
                m.trainer.start(resume)
        index = 0
        while True:
            active = [m for m in members if m.in_pack and m.trainer.wants_epoch()]
            if not active:
                break
            index += 1
            _train_epoch(active, index)
        out = []
        for m in members:
            if m.failure is None:
                with m.own():
                    m.trainer.train_remaining()  # a member that left the pack (rolled back) goes on alone
                    out.append(m.trainer.finish())
            if m.failure is not None:
                out.append(m.failure)
        return out


def launch(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    """The ``batched`` launcher (:data:`studies.grid.LAUNCHERS`): build every job, train the
    runs that pack together as one batched model per pack, the others alone; summaries in job order."""
    if workers != 1:
        raise ConfigError(f"launcher 'batched' trains its packs one after another in this process (one device); "
                          f"--workers applies to the 'process' and 'ray' launchers; got workers={workers}")
    done: dict[str, dict[str, Any]] = {}
    packs: dict[Any, list[Trainer]] = {}
    with contextlib.ExitStack() as stack:
        for cfg, rdir in jobs:
            stack.enter_context(RunDir(rdir).lock())
            try:
                prepared = prepare(cfg, rdir)
            except ENVIRONMENT_ERRORS:
                raise
            except Exception as err:  # recorded, the grid goes on
                done[cfg.run_id] = RunDir(rdir).record_failure(cfg, err)
                continue
            if isinstance(prepared, dict):
                done[cfg.run_id] = prepared
                continue
            key = pack_key(prepared)
            packs.setdefault(("alone", cfg.run_id) if key is None else key, []).append(prepared)
        for trainers in packs.values():
            for t, summary in zip(trainers, fit_pack(trainers), strict=True):
                done[t.cfg.run_id] = summary
    return [done[cfg.run_id] for cfg, _ in jobs]


__all__ = ["fit_pack", "launch", "pack_key"]
