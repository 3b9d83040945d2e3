"""A GRU-core layer as a continuous-time leaky-integrator network.

A GRU step ``h' = g·h + (1 - g)·n`` (``g`` the effective update gate, ``n`` the
candidate) is the exact zero-order-hold solution over one step ``dt`` of

    dh/dt = (n - h) / τ,        τ = -dt / log g                                  (1)

(docs/physics.md, "Leaky integration is a GRU update"). For a trained layer ``g`` and ``n``
depend on the input and on the state, so each unit becomes a leaky integrator with an
**input- and state-dependent time constant** ``τ(t) = -dt / log g(t)`` driven towards the
**target** ``n(t)``. For a hardware-constrained model whose update-gate bias is frozen at a
physical τ and whose update-gate weight rows are zero, ``g`` is constant and ``τ(t)`` is
exactly that frozen, fabricated τ.

The hold assumption
-------------------
The discrete model sees the input once per step, and it evaluates ``g`` and ``n``
once per step, from ``x_k`` and the state ``h_k`` at the start of the step. The
continuous-time model makes the same assumption explicit:

* ``hold="gates"`` (default): the input is held over the step *and* ``g``, ``n``
  are computed once, at the step start, from ``(x_k, h_k)`` and held (a zero-order
  hold of the gates). Within the step (1) is then linear with constant
  coefficients, so the exact exponential integrator (``method="exact"``) at the
  training ``dt`` reproduces the discrete layer to rounding (float64: ~1e-15), and
  any ODE solver reproduces it to its tolerance. This is the model in which the
  discrete network *is* a continuous-time system; it is the reference point for
  the non-idealities of :mod:`soensim.nonideal` (τ spread, noise, weights), which
  act on the same vector field.
* ``hold="input"``: only the input is held; ``g`` and ``n`` follow the state
  ``h(t)`` continuously inside the step (a fully continuous feedback loop, as a
  physical circuit would have). This differs from the discrete model by O(dt) per
  step; ``method="exact"`` is then exponential Euler with ``substeps`` sub-steps
  per sequence step, and ODE solvers integrate the state-dependent field.

Time is in the unit of ``dt`` (seconds for hardware profiles, "steps" with ``dt = 1``
for software models). Gate semantics follow the kernel modes of :data:`MODE_BLOCKS` —
``"sigmoid"`` (torch.nn.GRU), ``"refine"`` (``g = 2pf + (1 - 2p)f²``), ``"sst"``
(squared sigmoid gates, tanh candidate) and ``"sst_candidate"`` (candidate ``tanh·|tanh|`` too); weight rows are stacked in the
kernel order of the mode's blocks. :func:`soensim.transfer.to_continuous` builds the
model from a trained layer.

Solvers come from :data:`soensim.SOLVERS`. :class:`ContinuousGRU` is a
:class:`~soensim.driven.DrivenSystem` (drive = input projection, vector field with the
gates following the state), so ``soensim.simulate(cont, x, cont.dt, method)`` runs the
``hold="input"`` model; :meth:`ContinuousGRU.run` runs either hold, per input step through
the same registry, and adds the per-step noise of :mod:`soensim.nonideal`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .driven import Discretization, DrivenSystem, noise_draws
from .leaky import leaky_step, leaky_vector_field
from .solvers import get_solver, simulate

#: Kernel modes (gates.kernels) that are a per-unit leaky integration → their row blocks, in kernel order.
MODE_BLOCKS: Mapping[str, tuple[str, ...]] = {
    "sigmoid": ("reset", "update", "candidate"),
    "refine": ("reset", "update", "candidate", "refine"),
    "sst": ("reset", "update", "candidate"),
    "sst_candidate": ("reset", "update", "candidate"),
}

HOLDS = ("gates", "input")


# =============================================================================
# Functional core
# =============================================================================
def gru_gates(gi: Tensor, gh: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """``(log g, n)``: log of the effective update gate and the candidate of one GRU step.

    ``gi = x W_ih^T + b_ih`` and ``gh = h W_hh^T + b_hh``, both ``(..., G*H)`` with the
    blocks of :data:`MODE_BLOCKS` ``[mode]``. ``log g`` is computed without forming
    ``g`` (``log sigmoid`` and ``log1p``), so ``τ = -dt/log g`` stays accurate for
    ``g → 1`` (long time constants).
    """
    H = gh.shape[-1] // len(MODE_BLOCKS[mode])
    a_r = gi[..., :H] + gh[..., :H]
    a_z = gi[..., H:2 * H] + gh[..., H:2 * H]
    sst = mode in ("sst", "sst_candidate")
    r = torch.sigmoid(a_r)
    if sst:
        r = r * r
    tn = torch.tanh(gi[..., 2 * H:3 * H] + r * gh[..., 2 * H:3 * H])
    n = tn * tn.abs() if mode == "sst_candidate" else tn
    log_f = F.logsigmoid(a_z)
    if mode == "sigmoid":
        log_g = log_f
    elif sst:
        log_g = 2.0 * log_f
    else:  # refine: g = 2pf + (1-2p)f² = f·(1 - (1-f)(1-2p))
        p = torch.sigmoid(gi[..., 3 * H:] + gh[..., 3 * H:])
        log_g = log_f + torch.log1p(-torch.sigmoid(-a_z) * (1.0 - 2.0 * p))
    return log_g, n


def unit_tau(log_g: Tensor, dt: float, tau_scale: Tensor | None = None) -> Tensor:
    """``τ = -dt / log g`` per unit (times the fabrication factor ``tau_scale``), in the unit of ``dt``."""
    tau = dt / -log_g
    return tau if tau_scale is None else tau * tau_scale


# =============================================================================
# The continuous-time model
# =============================================================================
class ContinuousGRU(DrivenSystem):
    """A GRU-core layer as a continuous-time leaky-integrator network (see the module docstring).

    A :class:`~soensim.driven.DrivenSystem`: the *drive* held over a step is the input
    projection ``gi = x W_ih^T + b_ih``; :meth:`vector_field` is ``dh/dt = (n - h)/τ``
    with ``τ``, ``n`` evaluated at the current state (gates follow the state), so
    ``soensim.simulate(cont, x, cont.dt, method)`` integrates the ``hold="input"`` model
    with any registered solver, and ``forward(t, h)`` (after ``hold(drive)``) is a
    torchdiffeq vector field. :meth:`discretize` is the GRU step (gates at the step start):
    at ``dt = self.dt`` it *is* the discrete layer.

    :meth:`run` integrates a sequence nn.GRU-style under either hold (``hold="gates"``:
    gates held per step, exact reproduction of the discrete layer); :meth:`as_layer` wraps
    it as a module with torch's ``forward(input, hx=None)``.

    Args:
        weight_ih: ``(G·H, I)`` input weights, rows in the kernel order of ``mode``.
        weight_hh: ``(G·H, H)`` recurrent weights.
        bias_ih, bias_hh: ``(G·H,)`` biases, or None (zeros).
        dt: the training step, in the unit the model's times use (seconds under a profile).
        mode: a kernel mode of :data:`MODE_BLOCKS`.
        batch_first: inputs/outputs ``(B, T, ·)`` instead of torch's default ``(T, B, ·)``.
        hold: ``"gates"`` or ``"input"`` (see the module docstring).
        dtype: parameter dtype (float64 by default; None keeps ``weight_hh``'s).
        requires_grad: make the weights trainable.

    Non-idealities (set by :mod:`soensim.nonideal`, all off by default):
    ``tau_scale`` (buffer ``(H,)``) multiplies every unit's time constant; ``flux_noise``
    is the standard deviation of additive Gaussian noise on all gate/candidate
    pre-activations, drawn once per step and held over it; ``state_noise`` the standard
    deviation of additive Gaussian noise on ``h`` after each step; ``noise_seed`` makes
    the draws of :meth:`run` reproducible.
    """

    def __init__(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
                 dt: float, mode: str = "sigmoid", *, batch_first: bool = False, hold: str = "gates",
                 dtype: torch.dtype | None = torch.float64, requires_grad: bool = False):
        super().__init__()
        if mode not in MODE_BLOCKS:
            raise ValueError(f"mode must be one of {sorted(MODE_BLOCKS)}; got {mode!r}")
        if hold not in HOLDS:
            raise ValueError(f"hold must be one of {HOLDS}; got {hold!r}")
        if isinstance(dt, bool) or not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive number (the training step); got {dt!r}")
        G = len(MODE_BLOCKS[mode])
        H = weight_hh.shape[1]
        if tuple(weight_hh.shape) != (G * H, H) or weight_ih.dim() != 2 or weight_ih.shape[0] != G * H:
            raise ValueError(f"mode {mode!r}: expected weight_hh ({G}·H, H) and weight_ih ({G}·H, I); "
                             f"got {tuple(weight_hh.shape)} and {tuple(weight_ih.shape)}")
        dtype = dtype or weight_hh.dtype

        def param(t: Tensor | None) -> nn.Parameter:
            t = torch.zeros(G * H, dtype=dtype) if t is None else t.detach().to(dtype).clone()
            return nn.Parameter(t, requires_grad=requires_grad)

        self.weight_ih = param(weight_ih)
        self.weight_hh = param(weight_hh)
        self.bias_ih = param(bias_ih)
        self.bias_hh = param(bias_hh)
        self.register_buffer("tau_scale", torch.ones(H, dtype=dtype))
        self.dt = float(dt)
        self.mode = mode
        self.hold_mode = hold
        self.batch_first = batch_first
        self.input_size = int(weight_ih.shape[1])
        self.hidden_size = int(H)
        self.flux_noise = 0.0
        self.state_noise = 0.0
        self.noise_seed = 0

    # ------------------------------------------------------------ DrivenSystem
    @property
    def state_size(self) -> int:
        return self.hidden_size

    def drive(self, inputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Input projections ``x W_ih^T + b_ih`` (``(…, I) -> (…, G·H)``); with a ``generator``
        and ``flux_noise > 0``, plus flux noise drawn from it."""
        gi = F.linear(inputs.to(self.weight_ih.dtype), self.weight_ih, self.bias_ih)
        if generator is not None and self.flux_noise > 0:
            gi = gi + self.flux_noise * torch.randn(gi.shape, generator=generator, dtype=gi.dtype, device=gi.device)
        return gi

    def vector_field(self, y: Tensor, drive: Tensor) -> Tensor:
        """``dh/dt = (n - h)/τ`` with ``τ``, ``n`` from the held input projection and the current ``y``."""
        tau, n = self.tau_and_target(drive, y)
        return leaky_vector_field(y, n, tau)

    def discretize(self, dt: float) -> Discretization:
        """GRU step over ``dt`` with gates at the step start (``dt = self.dt``: the discrete layer)."""
        return Discretization(prepare=lambda d: d, step=lambda h, gi: self._gated_step(h, gi, dt), exact=False)

    # ---------------------------------------------------------------- pieces
    def tau_and_target(self, gi: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(τ, n)`` at state ``h`` for input projection ``gi``; τ includes ``tau_scale``."""
        log_g, n = gru_gates(gi, F.linear(h, self.weight_hh, self.bias_hh), self.mode)
        return unit_tau(log_g, self.dt, self.tau_scale), n

    def time_constants(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        """τ of every unit (unit of ``dt``) for input ``x`` ``(…, I)`` and state ``h`` (default zeros)."""
        gi = self.drive(x)
        if h is None:
            h = gi.new_zeros(*gi.shape[:-1], self.hidden_size)
        return self.tau_and_target(gi, h.to(gi.dtype))[0]

    def _gated_step(self, h: Tensor, gi: Tensor, span: float) -> Tensor:
        tau, n = self.tau_and_target(gi, h)
        return leaky_step(h, n, tau, span)

    # ---------------------------------------------------------------- running
    def run(self, input: Tensor, hx: Tensor | None = None, method: str = "exact", *, hold: str | None = None,
            substeps: int = 1, rtol: float = 1e-9, atol: float = 1e-11, noise: bool = True,
            **solver_options: Any) -> tuple[Tensor, Tensor]:
        """Integrate over a sequence, one ``dt`` per input step (the input held over each step).

        Args:
            input: ``(T, B, I)``, or ``(B, T, I)`` with ``batch_first``.
            hx: ``(B, H)`` or ``(1, B, H)`` initial state (default zeros).
            method: ``"exact"`` or any name in :data:`soensim.SOLVERS`
                (``"dopri5"``, ``"rk4"``, …). ``"exact"`` is the exponential integrator: exact
                for ``hold="gates"``, exponential Euler with ``substeps`` sub-steps for
                ``hold="input"``.
            hold: ``"gates"`` or ``"input"`` (default: the model's ``hold_mode``).
            substeps: sub-steps per input step (``exact`` with ``hold="input"``, fixed-step solvers).
            rtol, atol, solver_options: for adaptive solvers (see :func:`soensim.simulate`).
            noise: apply ``flux_noise``/``state_noise`` when set.

        Returns:
            ``(output, h_n)``: the states at the step ends, ``(T, B, H)`` (or ``(B, T, H)``),
            and ``(1, B, H)``, in the model's dtype.
        """
        hold = self.hold_mode if hold is None else hold
        if hold not in HOLDS:
            raise ValueError(f"hold must be one of {HOLDS}; got {hold!r}")
        if isinstance(substeps, bool) or int(substeps) != substeps or substeps < 1:
            raise ValueError(f"substeps must be a positive integer; got {substeps}")
        xs = input.transpose(0, 1) if self.batch_first else input
        if xs.dim() != 3 or xs.shape[-1] != self.input_size:
            raise ValueError(f"input must be {'(B, T, I)' if self.batch_first else '(T, B, I)'} with "
                             f"I={self.input_size}; got {tuple(input.shape)}")
        T, B = xs.shape[0], xs.shape[1]
        gi_all = self.drive(xs)
        h = gi_all.new_zeros(B, self.hidden_size) if hx is None else (hx[0] if hx.dim() == 3 else hx).to(gi_all.dtype)
        flux_eps, state_eps = self.noise_draws(T, B, gi_all.dtype, gi_all.device) if noise else (None, None)
        solve = self._solver(method, hold, substeps, rtol, atol, solver_options)
        outs = []
        for k, gi in enumerate(gi_all.unbind(0)):  # unbind: O(T) backward
            if flux_eps is not None:
                gi = gi + flux_eps[k]
            h = solve(h, gi)
            if state_eps is not None:
                h = h + state_eps[k]
            outs.append(h)
        out = torch.stack(outs) if outs else gi_all.new_zeros(0, B, self.hidden_size)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, h.unsqueeze(0)

    def _solver(self, method: str, hold: str, substeps: int, rtol: float, atol: float,
                options: Mapping[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
        """``step(h, gi) -> h'`` over one input step for the method and hold."""
        if method == "exact":
            if options:
                raise ValueError(f"method 'exact' takes no solver options; got {sorted(options)}")
            if hold == "gates":
                return lambda h, gi: self._gated_step(h, gi, self.dt)
            span = self.dt / substeps

            def euler(h: Tensor, gi: Tensor) -> Tensor:
                for _ in range(substeps):
                    h = self._gated_step(h, gi, span)
                return h

            return euler
        solver = get_solver(method)
        kw: dict[str, Any] = {}
        if solver.kind == "adaptive":
            if substeps != 1:
                raise ValueError(f"substeps applies to fixed-step methods, not {method!r}")
            kw = {"rtol": rtol, "atol": atol, **options}
        elif options:
            raise ValueError(f"fixed-step method {method!r} takes substeps, not {sorted(options)}")
        else:
            kw = {"substeps": substeps}
        if hold == "gates":
            held = _HeldLeaky(self.hidden_size)

            def held_step(h: Tensor, gi: Tensor) -> Tensor:
                tau, n = self.tau_and_target(gi, h)
                return simulate(held, torch.cat([n, tau], -1).unsqueeze(0), self.dt, method, h0=h, **kw)[-1]

            return held_step
        feedback = _Projected(self)
        return lambda h, gi: simulate(feedback, gi.unsqueeze(0), self.dt, method, h0=h, **kw)[-1]

    def noise_draws(self, T: int, B: int, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> tuple[Tensor | None, Tensor | None]:
        """The flux-noise ``(T, B, G·H)`` and state-noise ``(T, B, H)`` draws of :meth:`run`
        (None where off), reproducible from ``noise_seed``."""
        return noise_draws(self.flux_noise, self.state_noise, self.noise_seed, (T, B, self.weight_ih.shape[0]),
                           (T, B, self.hidden_size), dtype or self.weight_ih.dtype,
                           device if device is not None else self.weight_ih.device)

    # ---------------------------------------------------------------- misc
    def scale_time_constants(self, factor: Tensor) -> None:
        """Multiply every unit's τ by ``factor`` (``(H,)``, in place): fabrication spread."""
        with torch.no_grad():
            self.tau_scale.mul_(torch.as_tensor(factor, dtype=self.tau_scale.dtype, device=self.tau_scale.device))

    def weight_names(self) -> tuple[str, ...]:
        """Names of the coupling matrices (what quantization and clipping act on)."""
        return ("weight_ih", "weight_hh")

    def as_layer(self, method: str = "exact", **run_kwargs: Any) -> "ContinuousLayer":
        """A torch-signature module ``forward(input, hx=None) -> (output, h_n)`` running :meth:`run`."""
        return ContinuousLayer(self, method, **run_kwargs)

    def extra_repr(self) -> str:
        extras = []
        if not bool(torch.all(self.tau_scale == 1)):
            extras.append("tau_spread")
        if self.flux_noise:
            extras.append(f"flux_noise={self.flux_noise:g}")
        if self.state_noise:
            extras.append(f"state_noise={self.state_noise:g}")
        return (f"{self.input_size}, {self.hidden_size}, mode={self.mode!r}, dt={self.dt:g}, hold={self.hold_mode!r}, "
                f"batch_first={self.batch_first}" + "".join(", " + e for e in extras))


class _HeldLeaky(DrivenSystem):
    """``dh/dt = (n - h)/τ`` with ``n`` and ``τ`` held (drive = ``[n, τ]``, ``(B, 2H)``)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    @property
    def state_size(self) -> int:
        return self.size

    def drive(self, inputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return inputs

    def vector_field(self, y: Tensor, drive: Tensor) -> Tensor:
        return leaky_vector_field(y, drive[..., : self.size], drive[..., self.size:])

    def discretize(self, dt: float) -> Discretization:
        H = self.size
        return Discretization(prepare=lambda d: d, step=lambda h, d: leaky_step(h, d[..., :H], d[..., H:], dt), exact=True)


class _Projected(DrivenSystem):
    """A :class:`ContinuousGRU` whose drive is already the input projection (noise included)."""

    def __init__(self, cont: ContinuousGRU) -> None:
        super().__init__()
        self.cont = cont

    @property
    def state_size(self) -> int:
        return self.cont.hidden_size

    def drive(self, inputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return inputs

    def vector_field(self, y: Tensor, drive: Tensor) -> Tensor:
        return self.cont.vector_field(y, drive)

    def discretize(self, dt: float) -> Discretization:
        return self.cont.discretize(dt)


class ContinuousLayer(nn.Module):
    """Drop-in replacement of a GRU layer: ``forward(input, hx=None) -> (output, h_n)`` through
    :meth:`ContinuousGRU.run` (input cast to the continuous model's dtype, outputs cast
    back to the input's dtype, so a float32 head can follow a float64 simulation)."""

    def __init__(self, cont: ContinuousGRU, method: str = "exact", **run_kwargs: Any):
        super().__init__()
        self.cont = cont
        self.method = method
        self.run_kwargs = dict(run_kwargs)

    @property
    def batch_first(self) -> bool:
        return self.cont.batch_first

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, h_n = self.cont.run(input, hx, self.method, **self.run_kwargs)
        return out.to(input.dtype), h_n.to(input.dtype)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


__all__ = ["ContinuousGRU", "ContinuousLayer", "HOLDS", "MODE_BLOCKS", "gru_gates", "unit_tau"]
