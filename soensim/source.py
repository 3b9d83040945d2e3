"""The SOEN source function: the SQUID's time-averaged fluxon rate ``g(φ, i)``.

A SOEN dendrite (the phenomenological loop-neuron model of Shainline et al., "Phenomenological
model of superconducting optoelectronic loop neurons", 2022) integrates ``g`` into its loop
current (:mod:`soensim.dendrite`). soensim uses the closed-form fit of ``g`` given on the
physics page (docs/physics.md, "SOEN dendrite"). The flux φ is in units of Φ0 and the
current ``i = i_b − s`` through the SQUID in units of the junction critical current I_c.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class SourceFit:
    """Constants of the closed-form fit of the SQUID rate array ``g(φ, i)``.

    ``D = A·max(i - C, ε)^K - B·(|cos πφ| + ε)^M``, ``g = sigmoid(100·D)·max(D, ε)^(1/N)``.
    RMSE ≈ 0.02 against circuit-simulation tables for i_b between 1.4 and 2.0.
    """

    A: float = 0.37091212
    B: float = 0.31903101
    C: float = 1.06435066
    K: float = 1.92138556
    M: float = 2.50322787
    N: float = 2.62706077
    eps: float = 1e-6
    sharpness: float = 100.0


SOURCE_FIT = SourceFit()
"""The published fit (docs/physics.md, "SOEN dendrite"), used by default."""


def _tensor(x: Union[float, Tensor], like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def source_function(phi: Union[float, Tensor], i: Union[float, Tensor], fit: SourceFit = SOURCE_FIT) -> Tensor:
    """SQUID fluxon rate ``g(φ, i)`` of a SOEN dendrite (closed-form fit of docs/physics.md).

    Args:
        phi: applied flux in units of Φ0 (any shape).
        i: current through the SQUID, ``i_b - s``, in units of I_c (broadcasts with ``phi``).
        fit: fit constants; :data:`SOURCE_FIT` by default.

    Returns:
        ``g`` with the broadcast shape, in the dtype of the tensor argument(s). Periodic in
        ``phi`` with period 1, even (``g(φ) = g(-φ) = g(1 - φ)``), rising from the threshold
        :func:`source_threshold` up to ``φ = 1/2``. Below threshold ``g`` is not exactly zero
        but ``≤ sigmoid(100·D)·ε^(1/N)`` (< 1e-4 once ``D < -0.04``), which keeps it smooth for
        adaptive solvers.
    """
    phi_t = _tensor(phi, i if isinstance(i, Tensor) else None)
    i_t = _tensor(i, phi_t)
    f = fit
    drive = f.A * (i_t - f.C).clamp_min(f.eps).pow(f.K)
    flux = f.B * (torch.cos(math.pi * phi_t).abs() + f.eps).pow(f.M)
    d = drive - flux
    return torch.sigmoid(f.sharpness * d) * d.clamp_min(f.eps).pow(1.0 / f.N)


def source_threshold(i: Union[float, Tensor], fit: SourceFit = SOURCE_FIT) -> Tensor:
    """Threshold flux ``φ_th(i)`` in [0, 1/2] where the fit's ``D`` crosses zero (ε → 0).

    ``g`` is (numerically) zero for ``|φ| < φ_th`` (mod 1) and rises from there to ``φ = 1/2``.
    ``φ_th = 0`` means the SQUID is active at any flux; ``1/2`` that it never is.
    """
    i_t = _tensor(i)
    ratio = fit.A * (i_t - fit.C).clamp_min(0.0).pow(fit.K) / fit.B
    return torch.arccos(ratio.pow(1.0 / fit.M).clamp(0.0, 1.0)) / math.pi


__all__ = ["SOURCE_FIT", "SourceFit", "source_function", "source_threshold"]
