"""The interface every continuous-time model implements: a vector field under a held drive.

A *drive* is what a model holds constant over one step of width ``dt`` (zero-order hold).
``model.drive(inputs)`` maps a raw input sequence ``(T, B, D)`` to drives ``(T, B, K)``;
``model.vector_field(y, drive)`` is ``dy/dt`` at states ``y`` ``(B, N)``; ``model.discretize(dt)``
is the model's own update over one step (exact, or exponential Euler). Once a drive is held,
``forward(t, y)`` makes the model a torchdiffeq vector field::

    model.hold(model.drive(x_t))          # (B, D) input held constant, or a callable t -> drive
    ys = torchdiffeq.odeint(model, y0, t)

:func:`soensim.simulate` does this step by step for input sequences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

DriveLike = Union[Tensor, Callable[[Tensor], Tensor]]
TensorLike = Union[float, Tensor]
Device = Union[str, torch.device, None]


@dataclass(frozen=True)
class Discretization:
    """A model's discrete update at a fixed step ``dt``, with decays computed once.

    Attributes:
        prepare: maps the drive sequence ``(T, B, K)`` to per-step operands (one op for the
            whole sequence, e.g. ``(1 - z)·n``).
        step: ``(y, operand_t) -> y'``.
        exact: True when the update is the exact solution under zero-order hold.
    """

    prepare: Callable[[Tensor], Tensor]
    step: Callable[[Tensor, Tensor], Tensor]
    exact: bool


class DrivenSystem(nn.Module):
    """Base class: a vector field ``dy/dt = f(y, d)`` with a drive ``d`` held by :meth:`hold`.

    Subclasses implement :attr:`state_size`, :meth:`drive`, :meth:`vector_field` and
    :meth:`discretize`. ``forward(t, y)`` makes the module a torchdiffeq vector field.
    """

    def __init__(self) -> None:
        super().__init__()
        self._held: Optional[DriveLike] = None

    # -- interface ------------------------------------------------------------------
    @property
    def state_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def drive(self, inputs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:  # pragma: no cover
        """Map raw inputs ``(…, D)`` to the drive held over each step ``(…, K)``."""
        raise NotImplementedError

    def vector_field(self, y: Tensor, drive: Tensor) -> Tensor:  # pragma: no cover
        """``dy/dt`` (per unit of time of the model) at state ``y`` (B, N) under the held ``drive``."""
        raise NotImplementedError

    def discretize(self, dt: float) -> Discretization:  # pragma: no cover
        """The model's exact / exponential-Euler update at step ``dt``."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    def initial_state(self, batch: int, dtype: Optional[torch.dtype] = None, device: Device = None) -> Tensor:
        """Zero state ``(batch, N)``, by default in the dtype/device of the model's parameters."""
        ref = self._reference_tensor()
        return torch.zeros(batch, self.state_size, dtype=dtype or ref.dtype, device=device or ref.device)

    def hold(self, drive: Optional[DriveLike]) -> "DrivenSystem":
        """Hold ``drive`` (a tensor, or a callable ``t -> drive``) for :meth:`forward`; returns self."""
        self._held = drive
        return self

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        """torchdiffeq vector field: :meth:`vector_field` under the held drive at time ``t``."""
        d = self._held
        if d is None:
            raise RuntimeError(f"{type(self).__name__}: no drive held; call model.hold(model.drive(x)) first")
        if callable(d):
            d = d(t)
        return self.vector_field(y, d)

    def _reference_tensor(self) -> Tensor:
        for t in self.buffers():
            if t.is_floating_point():
                return t
        for t in self.parameters():
            return t
        return torch.empty(0)


def per_unit(value: TensorLike, n: int, name: str, dtype: torch.dtype, device: Device) -> Tensor:
    """``value`` (scalar or ``(n,)``) as a fresh ``(n,)`` tensor; ValueError naming ``name`` otherwise."""
    t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64)
    t = t.to(dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},); got {tuple(t.shape)}")
    return t.clone()


class FixedTau:
    """Mixin holding per-unit time constants as ``log τ``: a frozen buffer unless ``learn_tau``."""

    log_tau: Tensor

    def _init_tau(self, tau: TensorLike, n: int, learn_tau: bool, dtype: Optional[torch.dtype], device: Device) -> None:
        t = per_unit(tau, n, "tau", torch.float64, None)
        if not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"tau must be finite and > 0; got min {t.min().item():g}")
        lt = t.log().to(dtype=dtype or torch.get_default_dtype(), device=device)
        if learn_tau:
            self.log_tau = nn.Parameter(lt)
        else:
            self.register_buffer("log_tau", lt)  # type: ignore[attr-defined]

    @property
    def tau(self) -> Tensor:
        """Time constants τ, shape ``(N,)``, in the model's unit of time."""
        return self.log_tau.exp()


#: Offset between the flux-noise and state-noise seeds of one target.
STATE_NOISE_STREAM = 7_919


def noise_draws(flux_sigma: float, state_sigma: float, seed: int, flux_shape: tuple[int, ...],
                state_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str
                ) -> tuple[Tensor | None, Tensor | None]:
    """The per-step noise a target adds during a run: Gaussian flux noise of std ``flux_sigma``
    (shape ``flux_shape``, e.g. ``(T, B, pre-activations)``) and state noise of std ``state_sigma``
    (``state_shape``, ``(T, B, N)``); None where the std is 0. Each comes from its own generator
    seeded from ``seed`` (the target's ``noise_seed``), so a noisy evaluation is reproducible."""
    def draw(sigma: float, shape: tuple[int, ...], stream: int) -> Tensor | None:
        if sigma <= 0:
            return None
        gen = torch.Generator(device=device).manual_seed(int(seed) + stream)
        return sigma * torch.randn(shape, generator=gen, dtype=dtype, device=device)

    return draw(flux_sigma, flux_shape, 0), draw(state_sigma, state_shape, STATE_NOISE_STREAM)


__all__ = ["Discretization", "DrivenSystem", "FixedTau", "STATE_NOISE_STREAM", "noise_draws", "per_unit"]
