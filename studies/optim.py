"""Optimizers and the learning-rate schedule of a run.

:data:`OPTIMIZERS` maps ``RunConfig.optimizer`` to a constructor. The schedule is
:class:`CosineToFloor`, a :class:`torch.optim.lr_scheduler.LRScheduler` evaluated in
closed form (never recursively), so that its state is two numbers — the step count
``last_epoch`` and the rollback ``scale`` — and a resumed run gets bitwise the same
learning rates as an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.optim.lr_scheduler import LRScheduler

from .config import RunConfig

#: Optimizer registry: ``RunConfig.optimizer`` → ``f(params, cfg)``.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr),
}


class CosineToFloor(LRScheduler):
    """``lr(t) = (floor + (base − floor)·(1 + cos(π·min(t, T)/T))/2) · scale``.

    ``base`` is each parameter group's initial learning rate, ``t`` (``last_epoch``) the
    number of :meth:`step` calls so far — the caller steps once per optimizer step or once
    per epoch (``per`` records which: ``"step"`` or ``"epoch"``), ``T = total``.
    ``constant=True`` keeps ``base · scale``. ``scale`` (1 at first) is what a rollback
    lowers (:meth:`set_scale`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, floor: float, total: int, *, per: str = "step",
                 constant: bool = False):
        if per not in ("step", "epoch"):
            raise ValueError(f"per must be 'step' or 'epoch'; got {per!r}")
        self.floor, self.total, self.per, self.constant, self.scale = floor, max(1, total), per, constant, 1.0
        super().__init__(optimizer)

    def lr_at(self, base: float, t: int) -> float:
        if self.constant:
            return base * self.scale
        frac = min(t, self.total) / self.total
        return (self.floor + (base - self.floor) * 0.5 * (1 + math.cos(math.pi * frac))) * self.scale

    def get_lr(self) -> list[float]:
        return [self.lr_at(base, self.last_epoch) for base in self.base_lrs]

    def set_scale(self, scale: float) -> None:
        """Multiply the whole schedule by ``scale`` (relative to the base), from now on."""
        self.scale = scale
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def make_optimizer(params: Any, cfg: RunConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](params, cfg)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int) -> CosineToFloor:
    """``cfg.schedule``: ``cosine`` (per optimizer step over the run's steps, capped by
    ``max_steps``), ``cosine-epoch`` (per epoch), ``constant``; from ``cfg.lr`` to ``cfg.lr_min``."""
    if cfg.schedule == "cosine-epoch":
        return CosineToFloor(optimizer, cfg.lr_min, cfg.epochs, per="epoch")
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    return CosineToFloor(optimizer, cfg.lr_min, total, constant=cfg.schedule == "constant")


__all__ = ["CosineToFloor", "OPTIMIZERS", "make_optimizer", "make_schedule"]
