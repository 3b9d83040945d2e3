"""Synthetic memory tasks of papers/002 §3.1, generated per batch from a torch.Generator.

Copy (length N + 20): tokens a_0..a_9 drawn from {1..8}, then N zeros, then ten cue
tokens 9; the model must emit a_0..a_9 on the last ten steps. Input is one-hot over the
10 symbols {0..9}; targets are the ten class indices (a_k - 1 ∈ 0..7), so the
memoryless baseline (uniform over the 8 symbols) has cross-entropy log 8.

Adding (length N): channel 0 holds a_t ~ U[0, 1], channel 1 is two-hot at i_0 ∈ [0, N/2)
and i_1 ∈ [N/2, N); target a_{i0} + a_{i1}. Predicting the mean 1 gives MSE 1/6.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _check_length(n: int) -> None:
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"N (sequence length parameter) must be an int ≥ 2; got {n!r}")


@dataclass(frozen=True)
class CopyTask:
    """Copy task with N blanks. ``sample`` gives x (B, N+20, 10) one-hot and y (B, 10) in 0..7."""

    n: int
    symbols: int = 8
    memorize: int = 10

    def __post_init__(self) -> None:
        _check_length(self.n)

    @property
    def length(self) -> int:
        return self.n + 2 * self.memorize

    @property
    def input_size(self) -> int:
        return self.symbols + 2

    @property
    def num_classes(self) -> int:
        return self.symbols

    @property
    def readout(self) -> int:
        """Number of final steps that are scored."""
        return self.memorize

    @property
    def chance_loss(self) -> float:
        return math.log(self.symbols)

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        a = torch.randint(1, self.symbols + 1, (batch, self.memorize), generator=generator)
        tokens = torch.zeros(batch, self.length, dtype=torch.long)
        tokens[:, : self.memorize] = a
        tokens[:, -self.memorize:] = self.symbols + 1
        return torch.nn.functional.one_hot(tokens, self.input_size).float(), a - 1


@dataclass(frozen=True)
class AddingTask:
    """Adding task of length N. ``sample`` gives x (B, N, 2) and y (B, 1)."""

    n: int

    def __post_init__(self) -> None:
        _check_length(self.n)

    @property
    def length(self) -> int:
        return self.n

    input_size = 2
    chance_loss = 1.0 / 6.0

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        half = self.n // 2
        values = torch.rand(batch, self.n, generator=generator)
        i0 = torch.randint(0, half, (batch,), generator=generator)
        i1 = torch.randint(half, self.n, (batch,), generator=generator)
        marks = torch.zeros(batch, self.n)
        rows = torch.arange(batch)
        marks[rows, i0] = 1.0
        marks[rows, i1] = 1.0
        y = (values[rows, i0] + values[rows, i1]).unsqueeze(1)
        return torch.stack([values, marks], dim=-1), y


TASKS = {"copy": CopyTask, "adding": AddingTask}


def get_task(name: str, n: int) -> CopyTask | AddingTask:
    """Registry lookup; an unknown name lists the known tasks."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}; got {name!r}")
    return TASKS[name](n)


__all__ = ["AddingTask", "CopyTask", "TASKS", "get_task"]
