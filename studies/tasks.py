"""Synthetic memory tasks of Gu et al. 2020 (arXiv:1910.09890) §3.1 / App. D.1, generated per
batch from a torch.Generator.

Every task draws a fresh batch from the generator it is given (``batch(batch_size,
generator) -> (x, y)``; ``sample`` is the same method), so a seeded generator reproduces the
whole stream of training data, and fixed evaluation sets are one batch from their own seed.
Tasks are looked up by name in :data:`TASKS` (:func:`get_task`).

Copy task, ``CopyTask(N)`` — sequence length N + 20
    Alphabet: 0 = blank, 1..8 = data symbols, 9 = cue. Steps 0..9 hold a_0..a_9, drawn
    independently and uniformly from {1..8}; steps 10..N+9 are blank (0); steps N+10..N+19
    are the cue (9). Input: one-hot over the 10 tokens, float32 (B, N+20, 10). The model must
    output a_0..a_9, in order, on the last ten steps.

    Output classes: data symbol k ↦ class k − 1 (0..7); in ``targets="all"`` mode class 8 is
    the blank that every other step must emit.

    * ``targets="last"`` (default, Gu et al. 2020, App. D.1: only the last ten outputs are scored):
      y (B, 10) int64 in 0..7; ``readout`` = 10; loss = mean per-step cross-entropy over
      those ten steps; 8 classes.
    * ``targets="all"`` (the classic variant): y (B, N+20) int64, 8 (blank) except the last
      ten steps; ``readout`` = N+20; 9 classes.

    Memoryless baseline (:attr:`CopyTask.baseline_loss`): a model that knows the step index
    but remembers nothing predicts blank with certainty before the cue and the uniform
    distribution over the 8 symbols during it, scoring ``log 8`` per recall step:
    ``log 8`` ("last") or ``10 · log 8 / (N + 20)`` ("all"). Losses clearly below it mean
    something was remembered.

Adding task, ``AddingTask(N)`` — sequence length N
    x (B, N, 2) float32: channel 0 holds a_t ~ U[0, 1] i.i.d.; channel 1 is 1 at two marked
    steps i_0 ~ U{0..⌊N/2⌋−1} and i_1 ~ U{⌊N/2⌋..N−1}, 0 elsewhere. Target y (B, 1) =
    a_{i0} + a_{i1}, scored by MSE on the last step's output. Baseline: always predicting 1
    (the target's mean) gives MSE = Var(a_{i0} + a_{i1}) = 2 · 1/12 = 1/6 ≈ 0.167. Draw
    order: values, then i_0, then i_1.

Loss kinds (:attr:`Task.loss`): ``"ce_per_step"`` — cross-entropy per scored step, averaged
(the trainer's ``"classify"`` objective); ``"mse_last"`` — mean squared error of the output
at the last step (``"regress"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

LOSS_KINDS = ("ce_per_step", "mse_last")
#: Loss kind → the trainer's objective name (:data:`studies.taskdata.OBJECTIVES`).
OBJECTIVE_OF_LOSS = {"ce_per_step": "classify", "mse_last": "regress"}


def _check_length(n: int, least: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < least:
        raise ValueError(f"N (sequence length parameter) must be an int ≥ {least}; got {n!r}")


class Task:
    """Interface of a synthetic task (see the module docstring)."""

    name: ClassVar[str]
    loss: ClassVar[str]
    input_size: int
    output_size: int
    length: int
    readout: int
    baseline_loss: float

    def batch(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Same as :meth:`batch`."""
        return self.batch(batch_size, generator)

    @property
    def objective(self) -> str:
        return OBJECTIVE_OF_LOSS[self.loss]

    @property
    def chance_loss(self) -> float:
        """Same as :attr:`baseline_loss`."""
        return self.baseline_loss


@dataclass(frozen=True)
class CopyTask(Task):
    """Copy task with N blank steps between the ten symbols and the ten cues (length N + 20)."""

    n: int
    symbols: int = 8
    memorize: int = 10
    targets: str = "last"

    name: ClassVar[str] = "copy"
    loss: ClassVar[str] = "ce_per_step"

    def __post_init__(self) -> None:
        _check_length(self.n, 0)
        if self.symbols < 1 or self.memorize < 1:
            raise ValueError(f"symbols and memorize must be ≥ 1; got {self.symbols}, {self.memorize}")
        if self.targets not in ("last", "all"):
            raise ValueError(f"targets must be 'last' or 'all'; got {self.targets!r}")

    @property
    def length(self) -> int:
        return self.n + 2 * self.memorize

    @property
    def input_size(self) -> int:
        """One-hot width: blank, the symbols, the cue."""
        return self.symbols + 2

    @property
    def cue(self) -> int:
        return self.symbols + 1

    @property
    def blank_class(self) -> int | None:
        """Output class of the blank (``targets="all"`` only)."""
        return self.symbols if self.targets == "all" else None

    @property
    def num_classes(self) -> int:
        return self.symbols + (1 if self.targets == "all" else 0)

    @property
    def output_size(self) -> int:
        return self.num_classes

    @property
    def readout(self) -> int:
        """Number of final steps that are scored."""
        return self.memorize if self.targets == "last" else self.length

    @property
    def baseline_loss(self) -> float:
        """Cross-entropy of the memoryless strategy (module docstring)."""
        return memoryless_copy_loss(self.n, self.symbols, self.memorize, self.targets)

    def tokens(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(tokens (B, N+20) int64 in 0..9, symbols a (B, 10) in 1..8)."""
        a = torch.randint(1, self.symbols + 1, (batch_size, self.memorize), generator=generator)
        tokens = torch.zeros(batch_size, self.length, dtype=torch.long)
        tokens[:, :self.memorize] = a
        tokens[:, -self.memorize:] = self.cue
        return tokens, a

    def batch(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        tokens, a = self.tokens(batch_size, generator)
        x = torch.nn.functional.one_hot(tokens, self.input_size).float()
        if self.targets == "last":
            return x, a - 1
        y = torch.full((batch_size, self.length), self.symbols, dtype=torch.long)
        y[:, -self.memorize:] = a - 1
        return x, y

    sample = batch


def memoryless_copy_loss(n: int, symbols: int = 8, memorize: int = 10, targets: str = "last") -> float:
    """Per-step cross-entropy of the best predictor without memory: ``log(symbols)`` on
    each of the ``memorize`` recall steps, 0 on the blank steps (scored only with
    ``targets="all"``)."""
    per_recall = math.log(symbols)
    return per_recall if targets == "last" else memorize * per_recall / (n + 2 * memorize)


@dataclass(frozen=True)
class AddingTask(Task):
    """Adding task of length N: x (B, N, 2) = (value, marker), y (B, 1) = sum of the two marked values."""

    n: int

    name: ClassVar[str] = "adding"
    loss: ClassVar[str] = "mse_last"
    input_size: ClassVar[int] = 2
    output_size: ClassVar[int] = 1
    readout: ClassVar[int] = 1
    baseline_loss: ClassVar[float] = 1.0 / 6.0
    chance_loss: ClassVar[float] = 1.0 / 6.0  # type: ignore[misc]

    def __post_init__(self) -> None:
        _check_length(self.n, 2)

    @property
    def length(self) -> int:
        return self.n

    @property
    def num_classes(self) -> int:
        return 1

    def batch(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        half = self.n // 2
        values = torch.rand(batch_size, self.n, generator=generator)
        i0 = torch.randint(0, half, (batch_size,), generator=generator)
        i1 = torch.randint(half, self.n, (batch_size,), generator=generator)
        rows = torch.arange(batch_size)
        marks = torch.zeros(batch_size, self.n)
        marks[rows, i0] = 1.0
        marks[rows, i1] = 1.0
        y = (values[rows, i0] + values[rows, i1]).unsqueeze(1)
        return torch.stack([values, marks], dim=-1), y

    sample = batch


#: Task name → class (called as ``cls(N, **options)``).
TASKS: dict[str, Callable[..., Task]] = {"copy": CopyTask, "adding": AddingTask}


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator adding a task to :data:`TASKS`."""
    def deco(cls: type) -> type:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = cls
        return cls
    return deco


def get_task(name: str, n: int, **options: object) -> Task:
    """``TASKS[name](n, **options)``; an unknown name lists the known tasks."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}; got {name!r}")
    return TASKS[name](n, **options)


__all__ = ["AddingTask", "CopyTask", "LOSS_KINDS", "OBJECTIVE_OF_LOSS", "TASKS", "Task", "get_task",
           "memoryless_copy_loss", "register_task"]
