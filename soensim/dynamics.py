"""Continuous-time models: leaky units and the SOEN dendrite, as vector fields.

Functional core first: every model is a set of pure functions on tensors
(``*_vector_field(y, drive, params)`` and ``*_step(y, drive, params, dt)``) plus a
thin :class:`torch.nn.Module` that holds the parameters and calls them.

**Units.** Times (``tau``, ``dt``, ``tau0``) are in **seconds** and the models
integrate in seconds. Nothing depends on that choice except that all times given
to one model share a unit: pass ``tau0=1.0`` and times in τ₀ units to work in the
SOEN's dimensionless time. The flux φ is in units of Φ0 and currents (``i_b``, the
state ``s``) in units of the junction critical current I_c.

**Shapes.** States are ``(B, N)`` (batch, units). A *drive* is what a model holds
constant over one step of width ``dt`` (zero-order hold): the target ``n`` of a
:class:`LeakyIntegrator`, the input projections of a :class:`LeakyGatedUnit`, the
external flux of a :class:`SOENDendrite`. ``model.drive(inputs)`` maps a raw input
sequence ``(T, B, D)`` to drives ``(T, B, K)``.

**Use with torchdiffeq.** Each model is a vector field ``forward(t, y)`` once a
drive is held::

    model.hold(model.drive(x_t))          # (B, D) input held constant, or a callable t -> drive
    ys = torchdiffeq.odeint(model, y0, t)

:func:`soensim.simulate.simulate` does this step by step for input sequences.

Every decay factor comes from :mod:`soensim.timescales` (``decay``,
``one_minus_decay``); no τ→decay formula lives here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .timescales import decay, one_minus_decay, soen_time_unit

# --------------------------------------------------------------------------------------
# SOEN source function (DESIGN §3.2)
# --------------------------------------------------------------------------------------


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
"""The published fit (DESIGN §3.2), used by default."""


def _tensor(x: Union[float, Tensor], like: Optional[Tensor] = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def source_function(phi: Union[float, Tensor], i: Union[float, Tensor], fit: SourceFit = SOURCE_FIT) -> Tensor:
    """SQUID fluxon rate ``g(φ, i)`` of a SOEN dendrite (closed-form fit, DESIGN §3.2).

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


# --------------------------------------------------------------------------------------
# Leaky integrator: dh/dt = (n - h)/tau (DESIGN §3.1)
# --------------------------------------------------------------------------------------


def leaky_vector_field(h: Tensor, n: Tensor, tau: Tensor) -> Tensor:
    """``dh/dt = (n - h)/τ``; ``tau`` (seconds) broadcasts over the last (unit) dimension."""
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


# --------------------------------------------------------------------------------------
# GRU-style continuous gated unit: dh/dt = (n(x, h) - h)/tau
# --------------------------------------------------------------------------------------


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
    return torch.nn.functional.linear(x, w, b)


def candidate(h: Tensor, drive: Tensor, p: CandidateParams) -> Tensor:
    """Candidate ``n(x, h)`` from the state ``h`` (B, N) and the held :func:`candidate_drive`."""
    n_units = p.weight_h.shape[0]
    rec = torch.nn.functional.linear(h, p.weight_h, p.bias_h)
    if p.has_reset:
        r = torch.sigmoid(drive[..., n_units:] + torch.nn.functional.linear(h, p.reset_weight_h))
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


# --------------------------------------------------------------------------------------
# SOEN dendrite: ds/dt = γ₊·g(φ, i_b - s) - γ₋·s (DESIGN §3.2)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SOENParams:
    """Parameters of a layer of SOEN dendrites.

    Attributes:
        tau: ``(N,)`` leak time constant τ = L/r in seconds; ``γ₋ = 1/τ``.
        beta_L: ``(N,)`` or scalar, dimensionless inductance β_L = 2π I_c L / Φ0.
        i_b: ``(N,)`` bias current in units of I_c.
        J: ``(N, N)`` couplings, ``φ_i = Σ_j J_ij s_j + …``, or None for no coupling.
        phi_offset: ``(N,)`` static flux offset in Φ0.
        tau0: natural time unit τ₀ in seconds (``γ₊ = 1/(β_L τ₀)``); 1.0 when times are in τ₀.
        fit: source-function constants.
    """

    tau: Tensor
    beta_L: Union[Tensor, float]
    i_b: Tensor
    J: Optional[Tensor]
    phi_offset: Tensor
    tau0: float
    fit: SourceFit = SOURCE_FIT

    @property
    def gamma_minus(self) -> Tensor:
        """Leak rate ``γ₋ = 1/τ`` in 1/s."""
        return 1.0 / self.tau

    @property
    def gamma_plus(self) -> Tensor:
        """Drive rate ``γ₊ = 1/β_L`` per τ₀, i.e. ``1/(β_L τ₀)`` in 1/s."""
        return 1.0 / (_tensor(self.beta_L, self.tau) * self.tau0)

    @property
    def gain(self) -> Tensor:
        """``γ₊/γ₋ = τ/(β_L τ₀)`` (dimensionless; equals r_j/r for a physical dendrite)."""
        return self.tau / (_tensor(self.beta_L, self.tau) * self.tau0)


def soen_flux(s: Tensor, phi_ext: Tensor, p: SOENParams) -> Tensor:
    """Applied flux ``φ = s·Jᵀ + φ_offset + φ_ext`` (``J_ij`` couples unit j into unit i)."""
    phi = phi_ext + p.phi_offset
    if p.J is not None:
        phi = phi + s @ p.J.transpose(-1, -2)
    return phi


def soen_vector_field(s: Tensor, phi_ext: Tensor, p: SOENParams) -> Tensor:
    """``ds/dt = γ₊·g(φ, i_b - s) - γ₋·s`` in 1/s, with ``φ`` from :func:`soen_flux`."""
    g = source_function(soen_flux(s, phi_ext, p), p.i_b - s, p.fit)
    return p.gamma_plus * g - p.gamma_minus * s


def _soen_exp_euler(s: Tensor, phi_ext: Tensor, p: SOENParams, z: Tensor, omz_gain: Tensor) -> Tensor:
    g = source_function(soen_flux(s, phi_ext, p), p.i_b - s, p.fit)
    return z * s + omz_gain * g


def soen_step(s: Tensor, phi_ext: Tensor, params: SOENParams, dt: Union[float, Tensor]) -> Tensor:
    """Exponential-Euler step of the dendrite, ``g`` held over the step.

    ``s' = z·s + (1 - z)·(γ₊/γ₋)·g(φ, i_b - s)`` with ``z = decay(τ, dt)``. Exact for the
    leak, first order in ``dt`` for the source term. ``dt`` in seconds (the unit of τ).
    """
    z = decay(params.tau, dt)
    return _soen_exp_euler(s, phi_ext, params, z, one_minus_decay(params.tau, dt) * params.gain)


def dendrite_constants(
    inductance: float,
    resistance: float,
    critical_current: float = 100e-6,
    junction_resistance: float = 2.5714,
) -> dict[str, float]:
    """Model constants of a physical dendrite loop (SI units in, seconds out).

    Args:
        inductance: loop inductance L in henries.
        resistance: leak resistance r in ohms.
        critical_current: junction critical current I_c in amperes.
        junction_resistance: junction shunt resistance r_j in ohms.

    Returns:
        ``{"tau": L/r [s], "beta_L": 2π I_c L/Φ0, "tau0": Φ0/(2π I_c r_j) [s]}``, the
        keyword arguments of :class:`SOENDendrite`. Then ``γ₊/γ₋ = r_j/r``.
    """
    if inductance <= 0 or resistance <= 0:
        raise ValueError(f"inductance and resistance must be > 0 (H, Ω); got {inductance}, {resistance}")
    tau0 = soen_time_unit(critical_current, junction_resistance)
    beta_l = inductance / (junction_resistance * tau0)  # = 2π I_c L / Φ0
    return {"tau": inductance / resistance, "beta_L": beta_l, "tau0": tau0}


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------


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


DriveLike = Union[Tensor, Callable[[Tensor], Tensor]]
TensorLike = Union[float, Tensor]
Device = Union[str, torch.device, None]


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
        """``dy/dt`` (per second) at state ``y`` (B, N) under the held ``drive``."""
        raise NotImplementedError

    def discretize(self, dt: float) -> Discretization:  # pragma: no cover
        """The model's exact / exponential-Euler update at step ``dt`` (seconds)."""
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


def _log_tau(tau: Union[float, Tensor], n: int, dtype, device) -> Tensor:
    t = (tau.detach() if isinstance(tau, Tensor) else torch.as_tensor(tau, dtype=torch.float64)).to(torch.float64)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"tau must be a scalar or have shape ({n},); got {tuple(t.shape)}")
    if not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"tau must be finite and > 0 (seconds); got min {t.min().item():g}")
    return t.log().to(dtype=dtype, device=device)


def _per_unit(value: Union[float, Tensor], n: int, name: str, dtype, device) -> Tensor:
    t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64)
    t = t.to(dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},); got {tuple(t.shape)}")
    return t.clone()


class _TauMixin:
    """Holds ``log τ`` (seconds); τ is a frozen buffer unless ``learn_tau``."""

    def _init_tau(self, tau, n: int, learn_tau: bool, dtype, device) -> None:
        lt = _log_tau(tau, n, dtype or torch.get_default_dtype(), device)
        if learn_tau:
            self.log_tau = nn.Parameter(lt)
        else:
            self.register_buffer("log_tau", lt)

    @property
    def tau(self) -> Tensor:
        """Time constants τ (seconds), shape ``(N,)``."""
        return self.log_tau.exp()


class LeakyIntegrator(_TauMixin, DrivenSystem):
    """Leaky integrator ``dh/dt = (n(t) - h)/τ`` driven by a target ``n`` (B, N).

    The drive is the input itself (``D = N``), held over each step. The discrete update
    (:meth:`discretize`) is exact: ``h' = z·h + (1 - z)·n``, ``z = exp(-dt/τ)``, the GRU
    update with a frozen update gate of bias ``tau_to_bias(τ, dt)``.

    Args:
        tau: time constants in seconds, scalar or ``(N,)``.
        size: number of units N (inferred from ``tau`` when it is a vector).
        learn_tau: make ``log τ`` a parameter instead of a frozen buffer.
        dtype: parameter dtype (default: torch's default dtype).
        device: parameter device.
    """

    def __init__(
        self,
        tau: TensorLike,
        size: Optional[int] = None,
        *,
        learn_tau: bool = False,
        dtype: Optional[torch.dtype] = None,
        device: Device = None,
    ) -> None:
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
        return Discretization(
            prepare=lambda d: omz * d,
            step=lambda h, u: torch.addcmul(u, z, h),
            exact=True,
        )

    def extra_repr(self) -> str:
        return f"size={self.state_size}"


class LeakyGatedUnit(_TauMixin, DrivenSystem):
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
        tau: time constants in seconds, scalar or ``(N,)``.
        reset_gate: include the reset gate.
        learn_tau: make ``log τ`` a parameter instead of a frozen buffer.
        dtype: parameter dtype.
        device: parameter device.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        tau: TensorLike,
        *,
        reset_gate: bool = True,
        learn_tau: bool = False,
        dtype: Optional[torch.dtype] = None,
        device: Device = None,
    ) -> None:
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
        return CandidateParams(
            self.weight_x, self.weight_h, self.bias, self.bias_h,
            self.reset_weight_x, self.reset_weight_h, self.reset_bias,
        )

    def drive(self, inputs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return candidate_drive(inputs, self.params())

    def vector_field(self, y: Tensor, drive: Tensor) -> Tensor:
        return gated_vector_field(y, drive, self.params(), self.tau)

    def discretize(self, dt: float) -> Discretization:
        tau, p = self.tau, self.params()
        z, omz = decay(tau, dt), one_minus_decay(tau, dt)
        return Discretization(
            prepare=lambda d: d,
            step=lambda h, d: gru_update(h, candidate(h, d, p), z, omz),
            exact=False,
        )

    def extra_repr(self) -> str:
        return f"input_size={self.weight_x.shape[1]}, hidden_size={self.state_size}, reset_gate={self.reset_bias is not None}"


class SOENDendrite(_TauMixin, DrivenSystem):
    """A layer of N coupled SOEN dendrites (DESIGN §3.2).

    ``ds/dt = γ₊·g(φ, i_b - s) - γ₋·s``, ``γ₋ = 1/τ``, ``γ₊ = 1/(β_L τ₀)`` (times in seconds),
    ``φ = J·s + φ_offset + φ_ext(t)``. The external flux ``φ_ext`` is the input itself
    (``D = N``) or ``J_in·x`` when ``J_in`` (N, D) is given, plus Gaussian flux noise of
    standard deviation ``flux_noise`` (Φ0) drawn once per step and held over it.
    :meth:`discretize` is the exponential-Euler step of :func:`soen_step`.

    Args:
        tau: τ = L/r in seconds, scalar or ``(N,)``.
        size: N (inferred from ``tau`` when it is a vector).
        beta_L: dimensionless β_L = 2π I_c L/Φ0, scalar or ``(N,)`` (required: published codes
            differ; :func:`dendrite_constants` computes it from L and I_c).
        i_b: bias current (units of I_c), scalar or ``(N,)``; trainable.
        J: couplings ``(N, N)`` or None (no recurrent coupling); trainable when given.
        phi_offset: flux offset (Φ0), scalar or ``(N,)``; trainable.
        J_in: input couplings ``(N, D)`` or None (inputs are fluxes, D = N); trainable.
        flux_noise: per-step flux-noise standard deviation in Φ0.
        tau0: τ₀ in seconds (default :func:`~soensim.timescales.soen_time_unit`); pass 1.0 to
            give all times in τ₀ units.
        learn_tau: make ``log τ`` a parameter instead of a frozen buffer.
        dtype: parameter dtype.
        device: parameter device.
    """

    def __init__(
        self,
        tau: TensorLike,
        size: Optional[int] = None,
        *,
        beta_L: TensorLike,
        i_b: TensorLike = 1.8,
        J: Optional[Tensor] = None,
        phi_offset: TensorLike = 0.0,
        J_in: Optional[Tensor] = None,
        flux_noise: float = 0.0,
        tau0: Optional[float] = None,
        learn_tau: bool = False,
        dtype: Optional[torch.dtype] = None,
        device: Device = None,
    ) -> None:
        super().__init__()
        n = size if size is not None else int(torch.as_tensor(tau).numel())
        dtype = dtype or torch.get_default_dtype()
        kw = {"dtype": dtype, "device": device}
        self._init_tau(tau, n, learn_tau, dtype, device)
        self.register_buffer("beta_L", _per_unit(beta_L, n, "beta_L", **kw))
        if not bool((self.beta_L > 0).all()):
            raise ValueError("beta_L must be > 0")
        self.i_b = nn.Parameter(_per_unit(i_b, n, "i_b", **kw))
        self.phi_offset = nn.Parameter(_per_unit(phi_offset, n, "phi_offset", **kw))
        if J is not None:
            J = torch.as_tensor(J, **kw)
            if J.shape != (n, n):
                raise ValueError(f"J must have shape ({n}, {n}); got {tuple(J.shape)}")
            self.J = nn.Parameter(J.clone())
        else:
            self.J = None
        if J_in is not None:
            J_in = torch.as_tensor(J_in, **kw)
            if J_in.dim() != 2 or J_in.shape[0] != n:
                raise ValueError(f"J_in must have shape ({n}, D); got {tuple(J_in.shape)}")
            self.J_in = nn.Parameter(J_in.clone())
        else:
            self.J_in = None
        if flux_noise < 0:
            raise ValueError(f"flux_noise must be ≥ 0 (Φ0); got {flux_noise}")
        self.flux_noise = float(flux_noise)
        self.tau0 = float(soen_time_unit() if tau0 is None else tau0)
        if self.tau0 <= 0:
            raise ValueError(f"tau0 must be > 0 (seconds); got {self.tau0}")

    @classmethod
    def from_profile(cls, profile, size: int, *, seed: int = 0, spread: bool = False, **kwargs) -> "SOENDendrite":
        """Dendrites with the profile's fabricated τ (``profile.unit_taus``) and flux noise."""
        kwargs.setdefault("flux_noise", profile.flux_noise)
        return cls(profile.unit_taus(size, seed, spread=spread), size, **kwargs)

    @property
    def state_size(self) -> int:
        return self.log_tau.shape[0]

    def params(self) -> SOENParams:
        """Current parameters as an immutable :class:`SOENParams`."""
        return SOENParams(self.tau, self.beta_L, self.i_b, self.J, self.phi_offset, self.tau0)

    def drive(self, inputs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """External flux per step: ``inputs`` (or ``J_in·inputs``) plus held flux noise."""
        if self.J_in is not None:
            phi = torch.nn.functional.linear(inputs, self.J_in)
        else:
            if inputs.shape[-1] != self.state_size:
                raise ValueError(
                    f"SOENDendrite without J_in takes fluxes with last dim N={self.state_size}; got {tuple(inputs.shape)}"
                )
            phi = inputs
        if self.flux_noise > 0:
            noise = torch.randn(phi.shape, generator=generator, dtype=phi.dtype, device=phi.device)
            phi = phi + self.flux_noise * noise
        return phi

    def vector_field(self, y: Tensor, drive: Tensor) -> Tensor:
        return soen_vector_field(y, drive, self.params())

    def discretize(self, dt: float) -> Discretization:
        p = self.params()
        z = decay(p.tau, dt)
        omz_gain = one_minus_decay(p.tau, dt) * p.gain
        return Discretization(prepare=lambda d: d, step=lambda s, d: _soen_exp_euler(s, d, p, z, omz_gain), exact=False)

    def extra_repr(self) -> str:
        return f"size={self.state_size}, coupled={self.J is not None}, flux_noise={self.flux_noise}, tau0={self.tau0:g}"


__all__ = [
    "CandidateParams",
    "Discretization",
    "DrivenSystem",
    "LeakyGatedUnit",
    "LeakyIntegrator",
    "SOENDendrite",
    "SOENParams",
    "SOURCE_FIT",
    "SourceFit",
    "candidate",
    "candidate_drive",
    "dendrite_constants",
    "gated_step",
    "gated_vector_field",
    "gru_update",
    "leaky_step",
    "leaky_vector_field",
    "soen_flux",
    "soen_step",
    "soen_vector_field",
    "source_function",
    "source_threshold",
]
