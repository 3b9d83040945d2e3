"""Leaky units: ``dh/dt = (n - h)/τ`` and its GRU-style gated form.

Held over a step ``dt`` (zero-order hold), the leaky integrator updates exactly as the GRU
interpolation ``h' = z·h + (1 - z)·n`` with ``z = exp(-dt/τ)`` (docs/physics.md, "Leaky
integration is a GRU update"). Functional core first — ``leaky_*``, ``candidate*``,
``gated_*`` are pure functions on tensors — then the thin modules :class:`LeakyIntegrator` and
:class:`LeakyGatedUnit` (:class:`~soensim.driven.DrivenSystem` s) that hold the parameters.

Times (``tau``, ``dt``) share one unit (seconds for soensim's hardware models). States are
``(B, N)``. Every decay factor comes from :mod:`soensim.timescales`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .driven import Device, Discretization, DrivenSystem, FixedTau, TensorLike
from .timescales import decay, one_minus_decay


def leaky_vector_field(h: Tensor, n: Tensor, tau: Tensor) -> Tensor:
    """``dh/dt = (n - h)/τ``; ``tau`` broadcasts over the last (unit) dimension."""
    return (n - h) / tau


def leaky_step(h: Tensor, n: Tensor, tau: Tensor, dt: Union[float, Tensor]) -> Tensor:
    """Exact zero-order-hold step of :func:`leaky_vector_field`: the GRU update.

    ``h' = z·h + (1 - z)·n`` with ``z = decay(tau, dt) = exp(-dt/τ)``, ``n`` held over the step.
    """
    return gru_update(h, n, decay(tau, dt), one_minus_decay(tau, dt))


def gru_update(h: Tensor, n: Tensor, z: Tensor, one_minus_z: Optional[Tensor] = None) -> Tensor:
    """GRU interpolation ``z·h + (1 - z)·n``; pass ``one_minus_z`` when z is close to 1."""
    omz = (1 - z) if one_minus_z is None else one_minus_z
    return z * h + omz * n


@dataclass(frozen=True)
class CandidateParams:
    """Weights of the candidate ``n = tanh(W_x·x + b + r ⊙ (W_h·h + b_h))`` (torch.nn.GRU form).

    Attributes:
        weight_x: ``(N, D)`` input weights ``W_x``.
        weight_h: ``(N, N)`` recurrent weights ``W_h``.
        bias: ``(N,)`` input-side bias ``b`` (outside the reset gate).
        bias_h: ``(N,)`` recurrent bias ``b_h`` (inside the reset gate, torch's ``b_hn``).
        reset_weight_x: ``(N, D)`` reset-gate input weights, or None for no reset gate (r = 1).
        reset_weight_h: ``(N, N)`` reset-gate recurrent weights, or None.
        reset_bias: ``(N,)`` reset-gate bias, or None.
    """

    weight_x: Tensor
    weight_h: Tensor
    bias: Tensor
    bias_h: Tensor
    reset_weight_x: Optional[Tensor] = None
    reset_weight_h: Optional[Tensor] = None
    reset_bias: Optional[Tensor] = None

    @property
    def has_reset(self) -> bool:
        return self.reset_weight_x is not None


def candidate_drive(x: Tensor, p: CandidateParams) -> Tensor:
    """Input projections held over a step: ``(…, D) -> (…, N)`` or ``(…, 2N)`` with a reset gate.

    The first ``N`` entries are ``W_x·x + b``; with a reset gate the next ``N`` are
    ``W_rx·x + b_r``. One GEMM for a whole sequence.
    """
    if p.has_reset:
        w = torch.cat([p.weight_x, p.reset_weight_x], 0)
        b = torch.cat([p.bias, p.reset_bias], 0)
    else:
        w, b = p.weight_x, p.bias
    return F.linear(x, w, b)


def candidate(h: Tensor, drive: Tensor, p: CandidateParams) -> Tensor:
    """Candidate ``n(x, h)`` from the state ``h`` (B, N) and the held :func:`candidate_drive`."""
    n_units = p.weight_h.shape[0]
    rec = F.linear(h, p.weight_h, p.bias_h)
    if p.has_reset:
        r = torch.sigmoid(drive[..., n_units:] + F.linear(h, p.reset_weight_h))
        rec = r * rec
    return torch.tanh(drive[..., :n_units] + rec)


def gated_vector_field(h: Tensor, drive: Tensor, p: CandidateParams, tau: Tensor) -> Tensor:
    """``dh/dt = (n(x, h) - h)/τ`` with the candidate of :func:`candidate`."""
    return leaky_vector_field(h, candidate(h, drive, p), tau)


def gated_step(h: Tensor, drive: Tensor, p: CandidateParams, tau: Tensor, dt: Union[float, Tensor]) -> Tensor:
    """GRU step with a frozen update gate: ``h' = z·h + (1 - z)·n(x, h)``, ``z = exp(-dt/τ)``.

    Exponential Euler for :func:`gated_vector_field` (``n`` held at its start-of-step value):
    first order in ``dt``; exact when ``W_h = 0`` and no reset gate.
    """
    return leaky_step(h, candidate(h, drive, p), tau, dt)


class LeakyIntegrator(FixedTau, DrivenSystem):
    """Leaky integrator ``dh/dt = (n(t) - h)/τ`` driven by a target ``n`` (B, N).

    The drive is the input itself (``D = N``), held over each step. The discrete update
    (:meth:`discretize`) is exact: ``h' = z·h + (1 - z)·n``, ``z = exp(-dt/τ)``, the GRU
    update with a frozen update gate of bias ``tau_to_bias(τ, dt)``.

    Args:
        tau: time constants (the unit of ``dt``, seconds by convention), scalar or ``(N,)``.
        size: number of units N (inferred from ``tau`` when it is a vector).
        learn_tau: make ``log τ`` a parameter instead of a frozen buffer.
        dtype: parameter dtype (default: torch's default dtype).
        device: parameter device.
    """

    def __init__(self, tau: TensorLike, size: Optional[int] = None, *, learn_tau: bool = False,
                 dtype: Optional[torch.dtype] = None, device: Device = None) -> None:
        super().__init__()
        n = size if size is not None else int(torch.as_tensor(tau).numel())
        self._init_tau(tau, n, learn_tau, dtype, device)

    @property
    def state_size(self) -> int:
        return self.log_tau.shape[0]

    def drive(self, inputs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if inputs.shape[-1] != self.state_size:
            raise ValueError(f"LeakyIntegrator drive must have last dim N={self.state_size}; got {tuple(inputs.shape)}")
        return inputs

    def vector_field(self, y: Tensor, drive: Tensor) -> Tensor:
        return leaky_vector_field(y, drive, self.tau)

    def discretize(self, dt: float) -> Discretization:
        tau = self.tau
        z, omz = decay(tau, dt), one_minus_decay(tau, dt)
        return Discretization(prepare=lambda d: omz * d, step=lambda h, u: torch.addcmul(u, z, h), exact=True)

    def extra_repr(self) -> str:
        return f"size={self.state_size}"


class LeakyGatedUnit(FixedTau, DrivenSystem):
    """Continuous GRU-style unit ``dh/dt = (n(x, h) - h)/τ`` with a fixed per-unit τ.

    ``n = tanh(W_x·x + b + r ⊙ (W_h·h + b_h))``, ``r = sigmoid(W_rx·x + W_rh·h + b_r)``
    (torch.nn.GRU form; ``reset_gate=False`` sets r = 1). The input ``x`` is held over each
    step. :meth:`discretize` gives the GRU update ``h' = z·h + (1 - z)·n(x, h)`` with the
    update gate frozen at ``z = exp(-dt/τ)``: exponential Euler (n held at the start of the
    step), first order in ``dt`` against this ODE, and equal to ``torch.nn.GRUCell`` with zero
    update-gate weights and update bias ``tau_to_bias(τ, dt)``.

    Weights are initialised like torch.nn.GRU, ``U(-1/√N, 1/√N)`` (seed with ``torch.manual_seed``).

    Args:
        input_size: D.
        hidden_size: N.
        tau: time constants (the unit of ``dt``), scalar or ``(N,)``.
        reset_gate: include the reset gate.
        learn_tau: make ``log τ`` a parameter instead of a frozen buffer.
        dtype: parameter dtype.
        device: parameter device.
    """

    def __init__(self, input_size: int, hidden_size: int, tau: TensorLike, *, reset_gate: bool = True,
                 learn_tau: bool = False, dtype: Optional[torch.dtype] = None, device: Device = None) -> None:
        super().__init__()
        n, d = hidden_size, input_size
        kw = {"dtype": dtype, "device": device}
        self._init_tau(tau, n, learn_tau, dtype, device)
        self.weight_x = nn.Parameter(torch.empty(n, d, **kw))
        self.weight_h = nn.Parameter(torch.empty(n, n, **kw))
        self.bias = nn.Parameter(torch.empty(n, **kw))
        self.bias_h = nn.Parameter(torch.empty(n, **kw))
        if reset_gate:
            self.reset_weight_x = nn.Parameter(torch.empty(n, d, **kw))
            self.reset_weight_h = nn.Parameter(torch.empty(n, n, **kw))
            self.reset_bias = nn.Parameter(torch.empty(n, **kw))
        else:
            self.reset_weight_x = self.reset_weight_h = self.reset_bias = None
        bound = 1.0 / math.sqrt(n)
        with torch.no_grad():
            for p in self.parameters():
                if p is not getattr(self, "log_tau", None):
                    p.uniform_(-bound, bound)

    @property
    def state_size(self) -> int:
        return self.weight_h.shape[0]

    def params(self) -> CandidateParams:
        """The candidate's weights as an immutable :class:`CandidateParams`."""
        return CandidateParams(self.weight_x, self.weight_h, self.bias, self.bias_h,
                               self.reset_weight_x, self.reset_weight_h, self.reset_bias)

    def drive(self, inputs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return candidate_drive(inputs, self.params())

    def vector_field(self, y: Tensor, drive: Tensor) -> Tensor:
        return gated_vector_field(y, drive, self.params(), self.tau)

    def discretize(self, dt: float) -> Discretization:
        tau, p = self.tau, self.params()
        z, omz = decay(tau, dt), one_minus_decay(tau, dt)
        return Discretization(prepare=lambda d: d, step=lambda h, d: gru_update(h, candidate(h, d, p), z, omz),
                              exact=False)

    def extra_repr(self) -> str:
        return (f"input_size={self.weight_x.shape[1]}, hidden_size={self.state_size}, "
                f"reset_gate={self.reset_bias is not None}")


__all__ = [
    "CandidateParams",
    "LeakyGatedUnit",
    "LeakyIntegrator",
    "candidate",
    "candidate_drive",
    "gated_step",
    "gated_vector_field",
    "gru_update",
    "leaky_step",
    "leaky_vector_field",
]
