"""The SOEN dendrite: ``ds/dt = γ₊·g(φ, i_b - s) - γ₋·s``.

The phenomenological dendrite of Shainline et al. ("Phenomenological model of superconducting
optoelectronic loop neurons", 2022), as written on docs/physics.md ("SOEN dendrite"): the loop
current ``s`` (units of I_c) is driven by the SQUID's fluxon rate ``g`` (:mod:`soensim.source`)
at the applied flux ``φ = J·s + φ_offset + φ_ext`` (Φ0) and leaks at ``γ₋ = 1/τ``, ``τ = L/r``.
Times are in seconds (pass ``tau0=1.0`` and times in τ₀ units for the dimensionless form).

Functional core (:class:`SOENParams`, :func:`soen_flux`, :func:`soen_vector_field`,
:func:`soen_step`) first, then the module :class:`SOENDendrite`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .driven import Device, Discretization, DrivenSystem, FixedTau, TensorLike, per_unit
from .source import SOURCE_FIT, SourceFit, source_function
from .timescales import decay, one_minus_decay, soen_time_unit


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

    def _beta_l(self) -> Tensor:
        return torch.as_tensor(self.beta_L, dtype=self.tau.dtype, device=self.tau.device)

    @property
    def gamma_minus(self) -> Tensor:
        """Leak rate ``γ₋ = 1/τ`` in 1/s."""
        return 1.0 / self.tau

    @property
    def gamma_plus(self) -> Tensor:
        """Drive rate ``γ₊ = 1/β_L`` per τ₀, i.e. ``1/(β_L τ₀)`` in 1/s."""
        return 1.0 / (self._beta_l() * self.tau0)

    @property
    def gain(self) -> Tensor:
        """``γ₊/γ₋ = τ/(β_L τ₀)`` (dimensionless; equals r_j/r for a physical dendrite)."""
        return self.tau / (self._beta_l() * self.tau0)


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


def dendrite_constants(inductance: float, resistance: float, critical_current: float = 100e-6,
                       junction_resistance: float = 2.5714) -> dict[str, float]:
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


def _matrix(value: Optional[Tensor], rows: int, cols: Optional[int], name: str, kw: dict[str, Any]
            ) -> Optional[nn.Parameter]:
    if value is None:
        return None
    t = torch.as_tensor(value, **kw)
    if t.dim() != 2 or t.shape[0] != rows or (cols is not None and t.shape[1] != cols):
        raise ValueError(f"{name} must have shape ({rows}, {cols if cols is not None else 'D'}); got {tuple(t.shape)}")
    return nn.Parameter(t.clone())


class SOENDendrite(FixedTau, DrivenSystem):
    """A layer of N coupled SOEN dendrites (docs/physics.md, "SOEN dendrite").

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

    def __init__(self, tau: TensorLike, size: Optional[int] = None, *, beta_L: TensorLike, i_b: TensorLike = 1.8,
                 J: Optional[Tensor] = None, phi_offset: TensorLike = 0.0, J_in: Optional[Tensor] = None,
                 flux_noise: float = 0.0, tau0: Optional[float] = None, learn_tau: bool = False,
                 dtype: Optional[torch.dtype] = None, device: Device = None) -> None:
        super().__init__()
        n = size if size is not None else int(torch.as_tensor(tau).numel())
        dtype = dtype or torch.get_default_dtype()
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        self._init_tau(tau, n, learn_tau, dtype, device)
        self.register_buffer("beta_L", per_unit(beta_L, n, "beta_L", **kw))
        if not bool((self.beta_L > 0).all()):
            raise ValueError("beta_L must be > 0")
        self.i_b = nn.Parameter(per_unit(i_b, n, "i_b", **kw))
        self.phi_offset = nn.Parameter(per_unit(phi_offset, n, "phi_offset", **kw))
        self.J = _matrix(J, n, n, "J", kw)
        self.J_in = _matrix(J_in, n, None, "J_in", kw)
        if flux_noise < 0:
            raise ValueError(f"flux_noise must be ≥ 0 (Φ0); got {flux_noise}")
        self.flux_noise = float(flux_noise)
        self.tau0 = float(soen_time_unit() if tau0 is None else tau0)
        if self.tau0 <= 0:
            raise ValueError(f"tau0 must be > 0 (seconds); got {self.tau0}")

    @classmethod
    def from_profile(cls, profile: Any, size: int, *, seed: int = 0, spread: bool = False,
                     **kwargs: Any) -> "SOENDendrite":
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
            phi = F.linear(inputs, self.J_in)
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


__all__ = ["SOENDendrite", "SOENParams", "dendrite_constants", "soen_flux", "soen_step", "soen_vector_field"]
