"""What a study hands the trainer: data splits, the objective, and how a model is scored.

:class:`TaskData` holds a training split (:class:`ArraySplit`: a fixed set; or
:class:`StreamSplit`: fresh examples every batch) and fixed validation/test sets;
``objective`` names an entry of :data:`OBJECTIVES` (the loss, the reported metric, and
whether higher is better). :func:`evaluate` is the one way a model is scored on a split.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn


class ArraySplit:
    """A fixed set of examples held as tensors; batches are drawn without replacement.

    ``x``: (N, T, C) inputs (any dtype; ``transform`` is applied per batch, e.g. uint8 →
    float), ``y``: (N,) or (N, K) targets.
    """

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor] | None = None):
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """In order, or in ``torch.randperm(generator=generator)`` order when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
            x = self.x[idx]
            yield (self.transform(x) if self.transform else x), self.y[idx]

    def sample(self, n: int) -> Tensor:
        """First ``n`` inputs (transformed), for gate statistics."""
        x = self.x[:n]
        return self.transform(x) if self.transform else x

    def head(self, n: int) -> "ArraySplit":
        """The first ``n`` examples (``1 ≤ n``; all of them when ``n ≥ len``)."""
        if n < 1:
            raise ValueError(f"n must be ≥ 1; got {n}")
        return self if n >= len(self) else ArraySplit(self.x[:n], self.y[:n], self.transform)


class StreamSplit:
    """Fresh examples every batch (copy/adding tasks): ``sampler(batch_size, generator) -> (x, y)``."""

    def __init__(self, sampler: Callable[[int, torch.Generator], tuple[Tensor, Tensor]], batches_per_epoch: int):
        self.sampler, self.batches_per_epoch = sampler, batches_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def num_batches(self, batch_size: int) -> int:
        return self.batches_per_epoch

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        for _ in range(self.batches_per_epoch):
            yield self.sampler(batch_size, gen)


@dataclass
class TaskData:
    """Train/validation/test splits plus what the model's output means.

    ``objective``: ``"classify"`` (cross-entropy; outputs (B, C) or (B, K, C) against
    targets (B,) or (B, K)) or ``"regress"`` (mean squared error).
    ``info``: free-form facts recorded in the summary (sizes, sequence length, data copy).
    """

    train: ArraySplit | StreamSplit
    val: ArraySplit | None
    test: ArraySplit | None
    objective: str = "classify"
    num_outputs: int = 10
    input_size: int = 1
    seq_len: int = 1
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Objective:
    """A loss, the metric reported with it (as a sum and a count, so batches add up) and
    whether a higher metric is better."""

    loss: Callable[[Tensor, Tensor], Tensor]
    metric: str
    metric_sum: Callable[[Tensor, Tensor], tuple[float, int]]
    higher_is_better: bool


def _ce(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _acc_sum(out: Tensor, y: Tensor) -> tuple[float, int]:
    pred = out.argmax(-1)
    return float((pred == y).sum()), y.numel()


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(out.reshape(y.shape), y)


def _sq_sum(out: Tensor, y: Tensor) -> tuple[float, int]:
    return float(((out.reshape(y.shape) - y) ** 2).sum()), y.numel()


#: Objective registry: name → loss, the reported metric and whether higher is better.
OBJECTIVES: dict[str, Objective] = {
    "classify": Objective(_ce, "acc", _acc_sum, True),
    "regress": Objective(_mse, "mse", _sq_sum, False),
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


class Scores:
    """Running loss and metric of one model over evaluation batches: ``add(out, y)`` per batch,
    ``result()`` → ``{"loss": mean loss per example, metric: metric per scored element}``."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.loss_sum, self.metric_sum, self.count, self.examples = 0.0, 0.0, 0, 0

    def add(self, out: Tensor, y: Tensor) -> None:
        self.loss_sum += float(self.objective.loss(out, y)) * len(y)
        m, c = self.objective.metric_sum(out, y)
        self.metric_sum, self.count, self.examples = self.metric_sum + m, self.count + c, self.examples + len(y)

    def result(self) -> dict[str, float]:
        return {"loss": self.loss_sum / self.examples, self.objective.metric: self.metric_sum / self.count}


@torch.no_grad()
def evaluate(model: nn.Module, split: ArraySplit, objective: Objective, batch_size: int,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """``{"loss": mean loss per example, metric: metric per scored element}`` of ``model``
    (in eval mode; its mode is restored) on every example of ``split``, which must not be
    empty."""
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    was_training = model.training
    model.eval()
    scores = Scores(objective)
    try:
        for x, y in split.batches(batch_size):
            x, y = x.to(device), y.to(device)
            scores.add(model(x), y)
    finally:
        model.train(was_training)
    return scores.result()


__all__ = ["ArraySplit", "OBJECTIVES", "Objective", "Scores", "StreamSplit", "TaskData", "evaluate", "get_objective"]
