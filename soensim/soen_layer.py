"""A trainable recurrent layer made of SOEN dendrites (docs/physics.md, "SOEN dendrite"), nn.GRU-style.

State ``s`` ``(B, N)`` (loop currents, units of I_c). Per step of width ``dt`` the
input ``x_k`` is held and

    φ   = J·s + W_in·x_k + φ_offset (+ flux noise)
    s'  = z·s + (1 - z)·(γ₊/γ₋)·g(φ, i_b - s),       z = exp(-dt/τ)

the exponential-Euler step of ``ds/dt = γ₊·g(φ, i_b - s) - γ₋·s`` with the source
function ``g`` held over the step (:func:`soensim.dendrite.soen_step`). The physics
lives in :class:`soensim.dendrite.SOENDendrite` (``self.cell``); this module adds the
hardware profile and the training interface (and declares the layer contract,
:meth:`SOENLayer.layout`):

* **time constants** fixed per unit from ``profile.unit_taus(N, seed)`` (seconds),
  never trained;
* **couplings** ``J`` (N×N) and ``W_in`` (N×I) under the profile's constraints, applied by
  :func:`soensim.constrain` (the same transforms as for any layer): bounded
  ``|w| ≤ profile.coupling_max``, each unit's ``Σ_j |W_in,ij| + |J_ij|`` within
  ``profile.flux_budget``, quantized to ``weight_levels``, fan-in ``max_fan_in``; trainable
  when the profile's roles include ``"weights"``;
* **flux offsets** trainable when ``"flux_offset"`` is a trainable role, **bias
  currents** ``i_b`` when ``"bias_current"`` is (others are frozen and get no gradient);
* **gain** ``γ₊/γ₋ = τ/(β_L τ₀)`` (= r_j/r of the physical loop) is the same for every
  unit: β_L is set per unit as ``τ/(gain·τ₀)`` (a fixed leak resistance, L ∝ τ).

The layer's output is the state trajectory ``s`` (what a read-out, e.g. a linear
head, sees). ``forward`` trains by backpropagation through the discretization on any
device; :meth:`SOENLayer.simulate` integrates the same ODE with a solver of
:data:`soensim.SOLVERS` (e.g. dopri5) for checking: exponential Euler converges to it
at first order in ``dt``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .constraints import constrain, excitatory_flux
from .dendrite import SOENDendrite
from .driven import noise_draws
from .layouts import Cell, Layout, Param, tensor
from .profiles import HardwareProfile
from .solvers import simulate as _simulate
from .source import SOURCE_FIT, source_threshold
from .timescales import soen_time_unit


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

    Shapes: ``forward(input, hx=None)`` like ``torch.nn.GRU``: ``input`` ``(T, B, I)``
    (``(B, T, I)`` with ``batch_first``), ``hx`` ``(B, N)`` or ``(1, B, N)``; returns
    ``(output, h_n)``: all states ``(T, B, N)`` and the last ``(1, B, N)``.
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
        # start inside the monotone window: Σ_{J>0} J·s_max ≤ 0.9·(0.5 − φ_th) per unit (docs/physics.md,
        # "Hardware constraints")
        i_b_t = torch.as_tensor(i_b, dtype=torch.float64).expand(N)
        window = 0.9 * (0.5 - source_threshold(i_b_t))
        flux = excitatory_flux(J, (i_b_t - SOURCE_FIT.C).clamp_min(0.0))
        J = J * torch.where(flux > window, window / flux.clamp_min(1e-12), torch.ones_like(flux)).unsqueeze(1)
        self.cell = SOENDendrite(tau, N, beta_L=tau / (gain_t * tau0), i_b=i_b, J=J, phi_offset=phi_offset,
                                 J_in=w_in, tau0=tau0, dtype=dtype, device=device)
        # roles the profile never trains get no gradient (and no optimizer state) at all
        for param in self.layout().params:
            tensor(self, param.name).requires_grad_(param.role in profile.trainable)
        self.register_buffer("tau_scale", torch.ones(N, dtype=dtype, device=device))
        self.flux_noise = float(profile.flux_noise)
        self.state_noise = float(profile.state_noise)
        self.noise_seed = int(seed)
        constrain(self, profile, seed=seed, dt=self.dt)

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

    def layout(self) -> Layout:
        """The layer contract (:func:`soensim.layout`): one block ``unit`` of N rows, the input and
        recurrent couplings, the per-unit flux offsets and bias currents."""
        n = self.hidden_size
        return Layout(core="soen", hidden=n, blocks={"unit": slice(0, n)},
                      cells=(Cell(0, 0, "", "cell.J_in", "cell.J"),),
                      params=(Param("cell.J_in", "weights", "input"), Param("cell.J", "weights", "recurrent"),
                              Param("cell.phi_offset", "flux_offset", "unit"),
                              Param("cell.i_b", "bias_current", "unit")),
                      mechanism="soen", leaky=True, mode=None, decay=None)

    def weight_names(self) -> tuple[str, ...]:
        """Coupling matrices (for :mod:`soensim.nonideal`): the layout's ``weights``."""
        return tuple(p.name for p in self.layout().with_role("weights"))

    def scale_time_constants(self, factor: Tensor) -> None:
        """Multiply every unit's τ by ``factor`` (in place; β_L kept: a spread of the leak resistance)."""
        with torch.no_grad():
            f = torch.as_tensor(factor, dtype=self.cell.log_tau.dtype, device=self.cell.log_tau.device)
            self.cell.log_tau.add_(f.log())
            self.tau_scale.mul_(f.to(self.tau_scale.dtype))

    # ------------------------------------------------------------------ running
    def _time_major(self, input: Tensor) -> Tensor:
        if input.dim() != 3 or input.shape[-1] != self.input_size:
            raise ValueError(f"input must be {'(B, T, I)' if self.batch_first else '(T, B, I)'} with "
                             f"I={self.input_size}; got {tuple(input.shape)}")
        return input.transpose(0, 1) if self.batch_first else input

    def _initial(self, hx: Tensor | None, batch: int, like: Tensor) -> Tensor:
        if hx is None:
            return like.new_zeros(batch, self.hidden_size)
        h = hx[0] if hx.dim() == 3 else hx
        if tuple(h.shape) != (batch, self.hidden_size):
            raise ValueError(f"hx must be ({batch}, {self.hidden_size}) or (1, {batch}, {self.hidden_size}); "
                             f"got {tuple(hx.shape)}")
        return h.to(like.dtype)

    def _finish(self, out: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return (out.transpose(0, 1) if self.batch_first else out), h.unsqueeze(0)

    def forward(self, input: Tensor, hx: Tensor | None = None, *, substeps: int = 1,
                noise: bool = True) -> tuple[Tensor, Tensor]:
        """Exponential-Euler recurrence (differentiable): ``substeps`` steps of ``dt/substeps``
        per input step, the input held. Flux/state noise (``flux_noise``/``state_noise``,
        seeded by ``noise_seed``) is drawn per input step when set and ``noise`` is true.

        Args:
            input: ``(T, B, I)``, or ``(B, T, I)`` with ``batch_first``.
            hx: initial state ``(B, N)`` or ``(1, B, N)`` (units of I_c); zeros when None.

        Returns:
            ``(output, h_n)``: every state ``(T, B, N)`` (``(B, T, N)`` with ``batch_first``) and
            the last ``(1, B, N)``.
        """
        if isinstance(substeps, bool) or int(substeps) != substeps or substeps < 1:
            raise ValueError(f"substeps must be a positive integer; got {substeps}")
        xs = self._time_major(input)
        T, B = xs.shape[0], xs.shape[1]
        drives = self.cell.drive(xs.to(self.cell.phi_offset.dtype))  # W_in·x, (T, B, N)
        s = self._initial(hx, B, drives)
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

    def simulate(self, input: Tensor, hx: Tensor | None = None, method: str = "dopri5", **solver_options: Any
                 ) -> tuple[Tensor, Tensor]:
        """The same layer integrated by :func:`soensim.simulate` (input held over each step, no
        noise); arguments and returns as :meth:`forward`, ``method``/``solver_options`` as
        :func:`soensim.simulate` (``rtol``, ``atol``, ``substeps``)."""
        xs = self._time_major(input).to(self.cell.phi_offset.dtype)
        s0 = self._initial(hx, xs.shape[1], xs)
        states = _simulate(self.cell, xs, self.dt, method, s0, **solver_options)
        return self._finish(states[1:], states[-1])

    def noise_draws(self, T: int, B: int, dtype: torch.dtype | None = None,
                    device: Any = None) -> tuple[Tensor | None, Tensor | None]:
        """Flux-noise and state-noise draws ``(T, B, N)`` of :meth:`forward` (None where off)."""
        shape = (T, B, self.hidden_size)
        return noise_draws(self.flux_noise, self.state_noise, self.noise_seed, shape, shape,
                           dtype or self.cell.phi_offset.dtype,
                           device if device is not None else self.cell.phi_offset.device)

    def extra_repr(self) -> str:
        tau = self.cell.tau
        return (f"{self.input_size}, {self.hidden_size}, profile={self.profile.name!r}, dt={self.dt:g} s, "
                f"tau=[{tau.min().item():.3g}, {tau.max().item():.3g}] s, batch_first={self.batch_first}")


__all__ = ["SOENLayer"]
