"""Watching the training loss: divergence (acted on) and loss spikes (counted).

Divergence (:func:`divergence`), checked at every step from the first: a non-finite loss,
gradient norm or parameter, or a loss above ``factor`` × a reference — the median of the
previous losses, or at step 1 the initial model's evaluation loss. The trainer then stops
or rolls back (``RunConfig.nonfinite_policy``).

Spikes (:class:`SpikeDetector`): ``loss > factor × median(previous window losses)``, once
enough history is known — the sudden jumps of exploding gradients through long
back-propagation-through-time windows. They are logged and counted only.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Iterable, Mapping

import torch


class Diverged(RuntimeError):
    """Raised inside the trainer when a step diverged; the message says how and where."""


def divergence(loss: float, reference: float | None, factor: float | None) -> str | None:
    """Why ``loss`` means the run diverged, or None: non-finite, or above
    ``factor × reference`` (when both are given)."""
    if not math.isfinite(loss):
        return f"non-finite loss {loss}"
    if factor is not None and reference is not None and reference > 0 and loss > factor * reference:
        return f"exploding loss {loss:.4g} (over {factor:g} × the reference {reference:.4g})"
    return None


def nonfinite_parameters(params: Iterable[torch.Tensor]) -> bool:
    """True when any parameter holds a NaN or an infinity (largest |value| not finite)."""
    params = list(params)
    if not params:
        return False
    return not math.isfinite(float(torch.nn.utils.get_total_norm(params, norm_type=math.inf)))


class SpikeDetector:
    """Loss spike detector: ``loss > factor × median(previous window losses)``.

    Every finite loss enters the history (spikes too, so a lasting jump stops counting
    after about half a window). Non-finite losses are divergences, not spikes.
    """

    def __init__(self, factor: float = 3.0, window: int = 100, min_history: int = 20):
        self.factor, self.window, self.min_history = factor, window, max(1, min_history)
        self.history: deque[float] = deque(maxlen=window)
        self.count = 0
        self.last_median = math.nan

    def reference(self) -> float | None:
        """Median of the losses seen (None before the first)."""
        return statistics.median(self.history) if self.history else None

    def update(self, loss: float) -> bool:
        """Feed one loss; True when it is a spike (``last_median`` holds the reference)."""
        if not math.isfinite(loss):
            return False
        spike = False
        if len(self.history) >= self.min_history:
            self.last_median = statistics.median(self.history)
            spike = loss > self.factor * self.last_median
        self.history.append(loss)
        self.count += int(spike)
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"history": torch.tensor(list(self.history), dtype=torch.float64), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = deque((float(v) for v in state["history"]), maxlen=self.window)
        self.count = int(state["count"])


__all__ = ["Diverged", "SpikeDetector", "divergence", "nonfinite_parameters"]
