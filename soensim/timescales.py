"""The one mapping between physical time constants, decays and gate biases.

A leaky unit ``dh/dt = (n - h)/tau`` sampled with a zero-order hold of width
``dt`` updates exactly as ``h' = z*h + (1 - z)*n`` with ``z = exp(-dt/tau)``.
With ``z = sigmoid(b)`` the gate bias is ``b = logit(z) = -log(expm1(dt/tau))``.

Every function here accepts Python floats, NumPy arrays or tensors and returns a
tensor (float64 for non-tensor input, otherwise the input's dtype). ``tau`` and
``dt`` must be in the same unit; :func:`to_seconds` converts physical units.
Formulas are written so that ``tau`` from ``1e-3*dt`` to ``1e6*dt`` gives finite
results in float32 and float64.
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

ArrayLike = Union[float, int, Tensor, "numpy.ndarray"]  # noqa: F821

#: Magnetic flux quantum Φ0 = h / 2e in webers.
FLUX_QUANTUM = 2.067833848e-15

#: Multipliers from a time unit to seconds. ``"tau0"`` is resolved by :func:`soen_time_unit`.
TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}


def _as_tensor(x: ArrayLike, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.double()
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.float64)


def _pair(tau: ArrayLike, dt: ArrayLike) -> tuple[Tensor, Tensor]:
    tau_t = _as_tensor(tau, dt if isinstance(dt, Tensor) and not isinstance(tau, Tensor) else None)
    dt_t = _as_tensor(dt, tau_t)
    if bool((tau_t <= 0).any()):
        raise ValueError(f"tau must be > 0 (same unit as dt); got min {tau_t.min().item():g}")
    if bool((dt_t <= 0).any()):
        raise ValueError(f"dt must be > 0; got {dt_t.min().item():g}")
    return tau_t, dt_t


def soen_time_unit(critical_current: float = 100e-6, junction_resistance: float = 2.5714) -> float:
    """SOEN natural time unit τ₀ = Φ0 / (2π I_c r_j) in seconds.

    ``critical_current`` in amperes, ``junction_resistance`` in ohms. The defaults
    (100 µA, 2.57 Ω) give τ₀ ≈ 1.28 ps (docs/physics.md, "SOEN dendrite").
    """
    if critical_current <= 0:
        raise ValueError(f"critical_current must be > 0 A; got {critical_current}")
    if junction_resistance <= 0:
        raise ValueError(f"junction_resistance must be > 0 Ω; got {junction_resistance}")
    return FLUX_QUANTUM / (2 * math.pi * critical_current * junction_resistance)


def to_seconds(value: ArrayLike, unit: str, **tau0_kwargs: float) -> ArrayLike:
    """Convert a time ``value`` in ``unit`` (s, ms, us, ns, ps, fs or tau0) to seconds."""
    if unit == "tau0":
        return value * soen_time_unit(**tau0_kwargs)
    if unit not in TIME_UNITS:
        raise ValueError(f"unit must be one of {sorted(TIME_UNITS) + ['tau0']}; got {unit!r}")
    return value * TIME_UNITS[unit]


def from_seconds(value: ArrayLike, unit: str, **tau0_kwargs: float) -> ArrayLike:
    """Inverse of :func:`to_seconds`."""
    return value / to_seconds(1.0, unit, **tau0_kwargs)


def decay(tau: ArrayLike, dt: ArrayLike) -> Tensor:
    """Per-step decay ``z = exp(-dt/tau)`` of a unit with time constant ``tau``."""
    tau_t, dt_t = _pair(tau, dt)
    return torch.exp(-dt_t / tau_t)


def one_minus_decay(tau: ArrayLike, dt: ArrayLike) -> Tensor:
    """``1 - z = -expm1(-dt/tau)``, accurate when ``tau >> dt``."""
    tau_t, dt_t = _pair(tau, dt)
    return -torch.expm1(-dt_t / tau_t)


def tau_to_bias(tau: ArrayLike, dt: ArrayLike) -> Tensor:
    """Gate bias ``b`` with ``sigmoid(b) = exp(-dt/tau)``.

    Computed as ``-(x + log(-expm1(-x)))`` with ``x = dt/tau``, which equals
    ``-log(expm1(x))`` without overflow for large ``x`` or cancellation for small ``x``.
    For ``tau >> dt``, ``b ≈ log(tau/dt)``.
    """
    tau_t, dt_t = _pair(tau, dt)
    x = dt_t / tau_t
    return -(x + torch.log(-torch.expm1(-x)))


def bias_to_tau(bias: ArrayLike, dt: ArrayLike) -> Tensor:
    """Time constant implied by an update/forget gate bias: ``tau = -dt / log(sigmoid(b))``.

    Uses ``-log(sigmoid(b)) = softplus(-b)``, so large biases stay finite.
    """
    b = _as_tensor(bias, dt if isinstance(dt, Tensor) else None)
    dt_t = _as_tensor(dt, b)
    return dt_t / torch.nn.functional.softplus(-b)


def timescale_steps(tau: ArrayLike, dt: ArrayLike) -> Tensor:
    """Characteristic time scale in steps, ``1/(1 - z)`` (about ``tau/dt + 1/2`` for ``tau >> dt``)."""
    return 1.0 / one_minus_decay(tau, dt)


def gate_timescale_steps(gate: ArrayLike) -> Tensor:
    """Time scale in steps ``1/(1 - g)`` of a gate activation ``g`` in [0, 1)."""
    return 1.0 / (1.0 - _as_tensor(gate))


__all__ = [
    "FLUX_QUANTUM",
    "TIME_UNITS",
    "bias_to_tau",
    "decay",
    "from_seconds",
    "gate_timescale_steps",
    "one_minus_decay",
    "soen_time_unit",
    "tau_to_bias",
    "timescale_steps",
    "to_seconds",
]
