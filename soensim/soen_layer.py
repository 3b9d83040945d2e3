"""A trainable recurrent layer made of SOEN dendrites (DESIGN §3.2), nn.GRU-style.

State ``s`` ``(B, N)`` (loop currents, units of I_c). Per step of width ``dt`` the
input ``x_k`` is held and

    φ   = J·s + W_in·x_k + φ_offset (+ flux noise)
    s'  = z·s + (1 - z)·(γ₊/γ₋)·g(φ, i_b - s),       z = exp(-dt/τ)

the exponential-Euler step of ``ds/dt = γ₊·g(φ, i_b - s) - γ₋·s`` with the source
function ``g`` held over the step (:func:`soensim.dynamics.soen_step`). The physics
lives in :class:`soensim.dynamics.SOENDendrite` (``self.cell``); this module adds the
hardware profile and the training interface:

* **time constants** fixed per unit from ``profile.unit_taus(N, seed)`` (seconds),
  never trained;
* **couplings** ``J`` (N×N) and ``W_in`` (N×I) bounded ``|w| ≤ profile.coupling_max``
  by :class:`soensim.constraints.BoundedWeight` (and quantized with
  :class:`~soensim.constraints.QuantizedWeight` when the profile has ``weight_levels``);
  trainable when the profile's roles include ``"weights"``;
* **flux offsets** trainable when ``"flux_offset"`` is a trainable role, **bias
  currents** ``i_b`` when ``"bias_current"`` is;
* **gain** ``γ₊/γ₋ = τ/(β_L τ₀)`` (= r_j/r of the physical loop) is the same for every
  unit: β_L is set per unit as ``τ/(gain·τ₀)`` (a fixed leak resistance, L ∝ τ).

The layer's output is the state trajectory ``s`` (what a read-out, e.g. a linear
head, sees). ``forward`` trains by backpropagation through the discretization on any
device; :meth:`SOENLayer.simulate` integrates the same ODE with a solver of
:mod:`soensim.simulate` (e.g. dopri5) for checking: exponential Euler converges to it
at first order in ``dt``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .constraints import BoundedWeight, QuantizedWeight, excitatory_flux
from .dynamics import SOURCE_FIT, SOENDendrite, source_threshold
from .profiles import HardwareProfile
from .simulate import simulate as _simulate
from .timescales import soen_time_unit

#: Offset between the flux-noise and state-noise seeds.
_STATE_STREAM = 7_919


class SOENLayer(nn.Module):
    """Recurrent layer of N coupled SOEN dendrites with fixed, fabricated time constants.

    Args:
        input_size: I.
        hidden_size: N.
        profile: a :class:`~soensim.profiles.HardwareProfile` (or preset name) with fabricated
            time constants; default ``"soen-dendrite"``.
        dt: step in seconds (default ``profile.dt``). τ/dt sets each unit's memory in steps.
        seed: seed of the unit time constants (``profile.unit_taus(N, seed)``) and of the
            weight initialisation.
        spread: draw the time constants with the profile's fabrication spread.
        batch_first: input/output ``(B, T, ·)`` instead of ``(T, B, ·)``.
        i_b: bias current (units of I_c), scalar or ``(N,)``.
        phi_offset: initial flux offset (Φ0), scalar or ``(N,)``; about midway between the
            threshold ``φ_th(i_b)`` and 1/2 keeps the units active.
        gain: ``γ₊/γ₋`` (dimensionless), scalar or ``(N,)``.
        input_scale, recurrent_scale: initial ``W_in ~ U(±input_scale/√I)``,
            ``J ~ U(±recurrent_scale/√N)``, then bounded by ``coupling_max`` and each row scaled
            down where needed so that the excitatory flux ``Σ_{J>0} J·s_max`` stays within 90 %
            of the monotone window ``0.5 − φ_th`` (training may leave it; :func:`check` reports).
        tau0: natural time unit in seconds (default :func:`~soensim.timescales.soen_time_unit`).
        dtype, device: of the parameters.

    Shapes: ``x`` ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), ``h0`` ``(B, N)`` or
    ``(1, B, N)``. ``forward`` returns ``(output, h_n)``: all states ``(T, B, N)`` and the
    last ``(1, B, N)``, like ``torch.nn.GRU``.
    """

    def __init__(self, input_size: int, hidden_size: int, profile: HardwareProfile | str = "soen-dendrite", *,
                 dt: float | None = None, seed: int = 0, spread: bool = False, batch_first: bool = False,
                 i_b: float | Tensor = 1.8, phi_offset: float | Tensor = 0.35, gain: float | Tensor = 1.0,
                 input_scale: float = 0.5, recurrent_scale: float = 0.5, tau0: float | None = None,
                 dtype: torch.dtype | None = None, device: Any = None) -> None:
        super().__init__()
        if isinstance(profile, str):
            profile = HardwareProfile.preset(profile)
        if not isinstance(profile, HardwareProfile):
            raise TypeError(f"profile must be a HardwareProfile or a preset name; got {type(profile).__name__}")
        if not profile.fixed_time_constants:
            raise ValueError(f"SOENLayer needs a profile with fabricated time constants; {profile.name!r} has none")
        for label, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{label} must be an int ≥ 1; got {v!r}")
        self.profile = profile
        self.dt = float(profile.dt if dt is None else dt)
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt must be > 0 seconds; got {dt!r}")
        self.input_size, self.hidden_size, self.batch_first = input_size, hidden_size, batch_first
        dtype = dtype or torch.get_default_dtype()
        N, I = hidden_size, input_size
        tau0 = float(soen_time_unit() if tau0 is None else tau0)
        tau = profile.unit_taus(N, seed, spread=spread)
        gain_t = torch.as_tensor(gain, dtype=torch.float64).expand(N) if torch.as_tensor(gain).dim() == 0 \
            else torch.as_tensor(gain, dtype=torch.float64)
        if not bool((gain_t > 0).all()):
            raise ValueError("gain must be > 0")
        gen = torch.Generator().manual_seed(int(seed) + 104_729)
        w_in = (torch.rand(N, I, generator=gen, dtype=torch.float64) * 2 - 1) * input_scale / math.sqrt(I)
        J = (torch.rand(N, N, generator=gen, dtype=torch.float64) * 2 - 1) * recurrent_scale / math.sqrt(N)
        j_max = profile.coupling_max
        if j_max is not None:
            lim = 0.999 * j_max
            w_in, J = w_in.clamp(-lim, lim), J.clamp(-lim, lim)
        # start inside the monotone window: Σ_{J>0} J·s_max ≤ 0.9·(0.5 − φ_th) per unit (DESIGN §3.3)
        i_b_t = torch.as_tensor(i_b, dtype=torch.float64).expand(N)
        window = 0.9 * (0.5 - source_threshold(i_b_t))
        flux = excitatory_flux(J, (i_b_t - SOURCE_FIT.C).clamp_min(0.0))
        J = J * torch.where(flux > window, window / flux.clamp_min(1e-12), torch.ones_like(flux)).unsqueeze(1)
        self.cell = SOENDendrite(tau, N, beta_L=tau / (gain_t * tau0), i_b=i_b, J=J, phi_offset=phi_offset,
                                 J_in=w_in, tau0=tau0, dtype=dtype, device=device)
        roles = profile.trainable
        self.cell.J.requires_grad_("weights" in roles)
        self.cell.J_in.requires_grad_("weights" in roles)
        self.cell.phi_offset.requires_grad_("flux_offset" in roles)
        self.cell.i_b.requires_grad_("bias_current" in roles)
        if j_max is not None:
            for name in ("J", "J_in"):
                parametrize.register_parametrization(self.cell, name, BoundedWeight(j_max))
                if profile.weight_levels is not None:
                    parametrize.register_parametrization(self.cell, name, QuantizedWeight(j_max, profile.weight_levels))
        self.register_buffer("tau_scale", torch.ones(N, dtype=dtype, device=device))
        self.flux_noise = float(profile.flux_noise)
        self.state_noise = float(profile.state_noise)
        self.noise_seed = int(seed)

    # ------------------------------------------------------------------ views
    @property
    def state_size(self) -> int:
        return self.hidden_size

    @property
    def tau(self) -> Tensor:
        """Time constants in seconds ``(N,)`` (with any fabrication spread applied)."""
        return self.cell.tau

    @property
    def J(self) -> Tensor:
        """Effective recurrent couplings ``(N, N)`` (bounded/quantized)."""
        return self.cell.J

    @property
    def W_in(self) -> Tensor:
        """Effective input couplings ``(N, I)``."""
        return self.cell.J_in

    @property
    def phi_th(self) -> Tensor:
        """Threshold flux of each unit at rest (``s = 0``), ``φ_th(i_b)``."""
        return source_threshold(self.cell.i_b.detach(), self.cell.params().fit)

    @property
    def s_max(self) -> Tensor:
        """Upper bound of each unit's state: ``g`` vanishes once ``i_b - s`` falls to the fit's C."""
        return (self.cell.i_b.detach() - SOURCE_FIT.C).clamp_min(0.0)

    def couplings(self) -> dict[str, Tensor]:
        """Recurrent couplings for :func:`soensim.constraints.check` (with ``s_max``/``phi_th``)."""
        return {"J": self.cell.J}

    def weight_names(self) -> tuple[str, ...]:
        """Coupling matrices (for :mod:`soensim.nonideal`)."""
        return ("cell.J", "cell.J_in")

    def scale_time_constants(self, factor: Tensor) -> None:
        """Multiply every unit's τ by ``factor`` (in place; β_L kept: a spread of the leak resistance)."""
        with torch.no_grad():
            f = torch.as_tensor(factor, dtype=self.cell.log_tau.dtype, device=self.cell.log_tau.device)
            self.cell.log_tau.add_(f.log())
            self.tau_scale.mul_(f.to(self.tau_scale.dtype))

    # ------------------------------------------------------------------ running
    def _layout(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must be {'(B, T, I)' if self.batch_first else '(T, B, I)'} with I={self.input_size}; "
                             f"got {tuple(x.shape)}")
        return x.transpose(0, 1) if self.batch_first else x

    def _h0(self, h0: Tensor | None, batch: int, like: Tensor) -> Tensor:
        if h0 is None:
            return like.new_zeros(batch, self.hidden_size)
        h = h0[0] if h0.dim() == 3 else h0
        if tuple(h.shape) != (batch, self.hidden_size):
            raise ValueError(f"h0 must be ({batch}, {self.hidden_size}) or (1, {batch}, {self.hidden_size}); "
                             f"got {tuple(h0.shape)}")
        return h.to(like.dtype)

    def _finish(self, out: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return (out.transpose(0, 1) if self.batch_first else out), h.unsqueeze(0)

    def forward(self, x: Tensor, h0: Tensor | None = None, *, substeps: int = 1,
                noise: bool = True) -> tuple[Tensor, Tensor]:
        """Exponential-Euler recurrence (differentiable): ``substeps`` steps of ``dt/substeps``
        per input step, the input held. Flux/state noise (``flux_noise``/``state_noise``,
        seeded by ``noise_seed``) is drawn per input step when set and ``noise`` is true."""
        if isinstance(substeps, bool) or int(substeps) != substeps or substeps < 1:
            raise ValueError(f"substeps must be a positive integer; got {substeps}")
        xs = self._layout(x)
        T, B = xs.shape[0], xs.shape[1]
        drives = self.cell.drive(xs.to(self.cell.phi_offset.dtype))  # W_in·x, (T, B, N)
        s = self._h0(h0, B, drives)
        flux_eps, state_eps = self.noise_draws(T, B, drives.dtype, drives.device) if noise else (None, None)
        if flux_eps is not None:
            drives = drives + flux_eps
        step = self.cell.discretize(self.dt / substeps).step
        outs = []
        for k, d in enumerate(drives.unbind(0)):
            for _ in range(substeps):
                s = step(s, d)
            if state_eps is not None:
                s = s + state_eps[k]
            outs.append(s)
        out = torch.stack(outs) if outs else drives.new_zeros(0, B, self.hidden_size)
        return self._finish(out, s)

    def simulate(self, x: Tensor, h0: Tensor | None = None, method: str = "dopri5", **solver_options: Any
                 ) -> tuple[Tensor, Tensor]:
        """The same layer integrated by :func:`soensim.simulate.simulate` (input held over each
        step, no noise). ``method``/``solver_options`` as there (``rtol``, ``atol``, ``substeps``)."""
        xs = self._layout(x).to(self.cell.phi_offset.dtype)
        s0 = self._h0(h0, xs.shape[1], xs)
        states = _simulate(self.cell, xs, self.dt, method, s0, **solver_options)
        return self._finish(states[1:], states[-1])

    def noise_draws(self, T: int, B: int, dtype: torch.dtype | None = None,
                    device: Any = None) -> tuple[Tensor | None, Tensor | None]:
        """Flux-noise and state-noise draws ``(T, B, N)`` of :meth:`forward` (None where off)."""
        dtype = dtype or self.cell.phi_offset.dtype
        device = torch.device(device) if device is not None else self.cell.phi_offset.device
        flux = state = None
        if self.flux_noise > 0:
            gen = torch.Generator(device=device).manual_seed(int(self.noise_seed))
            flux = self.flux_noise * torch.randn(T, B, self.hidden_size, generator=gen, dtype=dtype, device=device)
        if self.state_noise > 0:
            gen = torch.Generator(device=device).manual_seed(int(self.noise_seed) + _STATE_STREAM)
            state = self.state_noise * torch.randn(T, B, self.hidden_size, generator=gen, dtype=dtype, device=device)
        return flux, state

    def extra_repr(self) -> str:
        tau = self.cell.tau
        return (f"{self.input_size}, {self.hidden_size}, profile={self.profile.name!r}, dt={self.dt:g} s, "
                f"tau=[{tau.min().item():.3g}, {tau.max().item():.3g}] s, batch_first={self.batch_first}")


__all__ = ["SOENLayer"]
