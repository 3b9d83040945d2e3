"""Back to continuous time: a trained GRU-core layer as a leaky-integrator ODE.

A GRU step ``h' = g·h + (1 - g)·n`` (``g`` the effective update gate, ``n`` the
candidate) is the exact zero-order-hold solution over one step ``dt`` of

    dh/dt = (n - h) / τ,        τ = -dt / log g                                  (1)

(DESIGN §3.1). For a trained layer ``g`` and ``n`` depend on the input and on the
state, so each unit becomes a leaky integrator with an **input- and state-dependent
time constant** ``τ(t) = -dt / log g(t)`` driven towards the **target** ``n(t)``.
For a hardware-constrained model whose update-gate bias is frozen at a physical τ and
whose update-gate weight rows are zero, ``g`` is constant and ``τ(t)`` is exactly
that frozen, fabricated τ.

The hold assumption
-------------------
The discrete model sees the input once per step, and it evaluates ``g`` and ``n``
once per step, from ``x_k`` and the state ``h_k`` at the start of the step. The
continuous-time model of this module makes the same assumption explicit:

* ``hold="gates"`` (default): the input is held over the step *and* ``g``, ``n``
  are computed once, at the step start, from ``(x_k, h_k)`` and held (a zero-order
  hold of the gates). Within the step (1) is then linear with constant
  coefficients, so the exact exponential integrator (``method="exact"``) at the
  training ``dt`` reproduces the discrete layer to rounding (float64: ~1e-15), and
  any torchdiffeq solver reproduces it to its tolerance. This is the model in which
  the discrete network *is* a continuous-time system; it is the reference point for
  the non-idealities of :mod:`soensim.nonideal` (τ spread, noise, weights), which
  act on the same vector field.
* ``hold="input"``: only the input is held; ``g`` and ``n`` follow the state
  ``h(t)`` continuously inside the step (a fully continuous feedback loop, as a
  physical circuit would have). This differs from the discrete model by O(dt) per
  step; ``method="exact"`` is then exponential Euler with ``substeps`` sub-steps
  per sequence step, and torchdiffeq solvers integrate the state-dependent field.

Time is in the unit of ``dt`` (seconds for hardware profiles, "steps" with
``dt = 1`` for software models). Gate semantics follow the fused recurrence modes of
:mod:`gates.kernels` — ``"sigmoid"`` (torch.nn.GRU; gates ``-``, ``C``, ``U``),
``"refine"`` (``R``, ``UR``: ``g = 2pf + (1 - 2p)f²``) and ``"sst"`` (squared
sigmoid gates, candidate ``tanh·|tanh|``). cumax/master mechanisms (``O``, ``OM``,
``UM``, ``OR``) mix units and are not a per-unit leaky integration; they are refused.

Solvers come from the :mod:`soensim.simulate` registry. :class:`ContinuousGRU` is a
:class:`~soensim.dynamics.DrivenSystem` (drive = input projection, vector field with
the gates following the state), so ``simulate(cont, x, cont.dt, method)`` runs the
``hold="input"`` model; :meth:`ContinuousGRU.run` runs either hold, per input step
through the same registry, and adds the per-step noise of :mod:`soensim.nonideal`.

Example::

    cont = to_continuous(gru, dt=1.0)          # float64 copy of the weights
    y, h_n = cont.run(x)                        # exact integrator == gru(x.double())
    y2, _ = cont.run(x, method="dopri5", rtol=1e-10, atol=1e-12)   # same, to tolerance
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dynamics import Discretization, DrivenSystem, leaky_step, leaky_vector_field
from .simulate import get_solver, simulate

#: Fused recurrence modes (gates.kernels) → gate blocks in kernel order.
MODE_BLOCKS: dict[str, tuple[str, ...]] = {
    "sigmoid": ("r", "z", "n"),
    "refine": ("r", "z", "n", "rho"),
    "sst": ("r", "z", "n"),
}

#: Gate-mechanism names (gates registry) whose update is a leaky integration, → mode.
#: Used only when a layer does not state its ``fused_mode`` itself.
GATE_MODES: dict[str, str] = {"-": "sigmoid", "C": "sigmoid", "U": "sigmoid", "R": "refine", "UR": "refine",
                              "SST": "sst"}

#: Mechanisms that are not a per-unit leaky integration (cumax / master gates).
NOT_LEAKY = ("O", "OM", "UM", "OR")

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
    blocks = MODE_BLOCKS[mode]
    H = gh.shape[-1] // len(blocks)
    a_r = gi[..., :H] + gh[..., :H]
    a_z = gi[..., H:2 * H] + gh[..., H:2 * H]
    sst = mode == "sst"
    r = torch.sigmoid(a_r)
    if sst:
        r = r * r
    tn = torch.tanh(gi[..., 2 * H:3 * H] + r * gh[..., 2 * H:3 * H])
    n = tn * tn.abs() if sst else tn
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
# Reading a trained layer
# =============================================================================
def _attr(obj: Any, name: str) -> Any:
    v = getattr(obj, name, None)
    return v() if callable(v) and not isinstance(v, (Tensor, nn.Module)) else v


def _layer_mode(layer: nn.Module) -> str:
    """Fused mode of a gates-contract layer; ValueError when it is not a leaky integration."""
    mech = getattr(layer, "mechanism", None)
    gate = _attr(layer, "gate") or getattr(mech, "name", None)
    leaky = getattr(mech, "leaky", True) if mech is not None else True
    mode = _attr(layer, "fused_mode") or (_attr(mech, "fused_mode") if mech is not None else None)
    if isinstance(gate, str) and gate in NOT_LEAKY or leaky is False:
        raise ValueError(
            f"gate mechanism {gate!r} is not a per-unit leaky integration (cumax/master gates mix units); "
            f"to_continuous supports {sorted(GATE_MODES)}"
        )
    if mode is None and isinstance(gate, str):
        mode = GATE_MODES.get(gate)
    if mode not in MODE_BLOCKS:
        raise ValueError(
            f"layer {type(layer).__name__} (gate {gate!r}, fused mode {mode!r}) has no leaky-integration form; "
            f"known modes {sorted(MODE_BLOCKS)}, gates {sorted(GATE_MODES)}"
        )
    return mode


def _pick(blocks: Mapping[str, Tensor], *names: str | None) -> str | None:
    for n in names:
        if n is not None and n in blocks:
            return n
    return None


def _block_rows(layer: nn.Module, rows: int, mode: str) -> list[Tensor]:
    """Row indices of the blocks in kernel order (r, z, n[, rho]) for a contract layer.

    Block names may be the short (``r``, ``z``, ``n``) or long ones of
    :mod:`gates.mechanisms` (``reset``, ``update``, ``candidate``, ``refine``)."""
    spec = layer.gate_blocks()
    if isinstance(spec, Mapping):
        blocks = {}
        for name, idx in spec.items():
            if isinstance(idx, slice):
                idx = range(*idx.indices(rows))
            blocks[str(name)] = torch.as_tensor(list(idx) if isinstance(idx, range) else idx, dtype=torch.long).reshape(-1)
    else:
        names = [str(s) for s in spec]
        h = rows // len(names)
        blocks = {n: torch.arange(i * h, (i + 1) * h) for i, n in enumerate(names)}
    named = {
        "z": _pick(blocks, _attr(layer, "decay_gate"), "update", "z"),
        "r": _pick(blocks, getattr(layer, "reset_gate", None), "reset", "r"),
        "n": _pick(blocks, getattr(layer, "candidate_gate", None), "candidate", "n"),
    }
    missing = [k for k, v in named.items() if v is None]
    if missing:
        raise ValueError(f"gate_blocks() {list(blocks)} lacks the GRU blocks {missing} (reset/update/candidate)")
    rest = [b for b in blocks if b not in named.values()]
    want = MODE_BLOCKS[mode]
    if len(want) == 4:
        rho = _pick(blocks, "refine", "rho") or (rest[0] if len(rest) == 1 else None)
        if rho is None or len(rest) != 1:
            raise ValueError(f"refine mode needs exactly one refine block besides r, z, n; got {list(blocks)}")
        named["rho"] = rho
    elif rest:
        raise ValueError(f"mode {mode!r} expects blocks {want}; layer has {list(blocks)}")
    return [blocks[named[w]] for w in want]  # type: ignore[index]


def layer_weights(layer: nn.Module) -> dict[str, Any]:
    """Effective weights and layout of a single-layer, unidirectional GRU-core layer.

    Returns ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (rows in kernel block
    order, effective values — constraints/parametrizations applied, detached), ``mode``
    and ``batch_first``. Accepts torch.nn.GRU, torch.nn.GRUCell and layers following
    the gates contract (``gate_blocks()``, ``decay_gate``, a mechanism with ``fused_mode``).
    """
    is_contract = callable(getattr(layer, "gate_blocks", None)) and hasattr(layer, "decay_gate")
    if isinstance(layer, (nn.LSTM, nn.LSTMCell, nn.RNN, nn.RNNCell)) and not is_contract:
        raise ValueError(f"{type(layer).__name__} is not a GRU core; to_continuous needs a GRU-type layer")
    if isinstance(layer, nn.RNNBase) or is_contract:
        if getattr(layer, "bidirectional", False):
            raise ValueError("to_continuous: bidirectional layers have no causal continuous-time form")
        if getattr(layer, "num_layers", 1) != 1:
            raise ValueError("to_continuous: convert one layer at a time (num_layers must be 1)")
        if getattr(layer, "proj_size", 0):
            raise ValueError("to_continuous: projected layers are not supported")
    if is_contract:
        if "LSTM" in type(layer).__name__ or getattr(layer, "cell", "gru") == "lstm":
            raise ValueError(f"{type(layer).__name__} is an LSTM core; to_continuous needs a GRU core")
        mode = _layer_mode(layer)
    elif isinstance(layer, (nn.GRU, nn.GRUCell)):
        mode = "sigmoid"
    else:
        raise ValueError(
            f"to_continuous: {type(layer).__name__} is not a GRU-core layer (torch.nn.GRU, nn.GRUCell, or a gates "
            "layer exposing gate_blocks()/decay_gate)"
        )
    suffix = "_l0" if hasattr(layer, "weight_ih_l0") else ""
    with torch.no_grad():
        w_ih = getattr(layer, "weight_ih" + suffix).detach().clone()
        w_hh = getattr(layer, "weight_hh" + suffix).detach().clone()
        b_ih = getattr(layer, "bias_ih" + suffix, None)
        b_hh = getattr(layer, "bias_hh" + suffix, None)
        b_ih = torch.zeros(w_ih.shape[0], dtype=w_ih.dtype) if b_ih is None else b_ih.detach().clone()
        b_hh = torch.zeros(w_hh.shape[0], dtype=w_hh.dtype) if b_hh is None else b_hh.detach().clone()
    G = len(MODE_BLOCKS[mode])
    if w_hh.shape[0] != G * w_hh.shape[1]:
        raise ValueError(f"weight_hh has {w_hh.shape[0]} rows; mode {mode!r} needs {G} × hidden = {G * w_hh.shape[1]}")
    if is_contract:
        idx = torch.cat(_block_rows(layer, w_hh.shape[0], mode))
        w_ih, w_hh, b_ih, b_hh = w_ih[idx], w_hh[idx], b_ih[idx], b_hh[idx]
    return {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh, "mode": mode,
            "batch_first": bool(getattr(layer, "batch_first", False))}


# =============================================================================
# The continuous-time model
# =============================================================================
class ContinuousGRU(DrivenSystem):
    """A GRU-core layer as a continuous-time leaky-integrator network (see the module docstring).

    A :class:`~soensim.dynamics.DrivenSystem`: the *drive* held over a step is the input
    projection ``gi = x W_ih^T + b_ih``; :meth:`vector_field` is ``dh/dt = (n - h)/τ``
    with ``τ``, ``n`` evaluated at the current state (gates follow the state), so
    ``soensim.simulate.simulate(cont, x, cont.dt, method)`` integrates the
    ``hold="input"`` model with any registered solver, and ``forward(t, h)`` (after
    ``hold(drive)``) is a torchdiffeq vector field. :meth:`discretize` is the GRU step
    (gates at the step start): at ``dt = self.dt`` it *is* the discrete layer.

    :meth:`run` integrates a sequence nn.GRU-style under either hold (``hold="gates"``:
    gates held per step, exact reproduction of the discrete layer).

    Non-idealities (set by :mod:`soensim.nonideal`, all off by default):
    ``tau_scale`` (buffer ``(H,)``) multiplies every unit's time constant; ``flux_noise``
    is the standard deviation of additive Gaussian noise on all gate/candidate
    pre-activations, drawn once per step and held over it; ``state_noise`` the standard
    deviation of additive Gaussian noise on ``h`` after each step; ``noise_seed`` makes
    the draws of :meth:`run` reproducible.
    """

    def __init__(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
                 dt: float, mode: str = "sigmoid", *, batch_first: bool = True, hold: str = "gates",
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
    def run(self, x: Tensor, h0: Tensor | None = None, method: str = "exact", *, hold: str | None = None,
            substeps: int = 1, rtol: float = 1e-9, atol: float = 1e-11, noise: bool = True,
            **solver_options: Any) -> tuple[Tensor, Tensor]:
        """Integrate over a sequence, one ``dt`` per input step (the input held over each step).

        Args:
            x: ``(B, T, I)`` if ``batch_first`` else ``(T, B, I)``.
            h0: ``(B, H)`` or ``(1, B, H)`` initial state (default zeros).
            method: ``"exact"`` or any name in :data:`soensim.simulate.SOLVERS`
                (``"dopri5"``, ``"rk4"``, …). ``"exact"`` is the exponential integrator: exact
                for ``hold="gates"``, exponential Euler with ``substeps`` sub-steps for
                ``hold="input"``.
            hold: ``"gates"`` or ``"input"`` (default: the model's ``hold_mode``).
            substeps: sub-steps per input step (``exact`` with ``hold="input"``, fixed-step solvers).
            rtol, atol, solver_options: for adaptive solvers (see :func:`soensim.simulate.simulate`).
            noise: apply ``flux_noise``/``state_noise`` when set.

        Returns:
            ``(output, h_n)``: the states at the step ends, ``(B, T, H)`` (or ``(T, B, H)``),
            and ``(1, B, H)``, in the model's dtype.
        """
        hold = self.hold_mode if hold is None else hold
        if hold not in HOLDS:
            raise ValueError(f"hold must be one of {HOLDS}; got {hold!r}")
        if isinstance(substeps, bool) or int(substeps) != substeps or substeps < 1:
            raise ValueError(f"substeps must be a positive integer; got {substeps}")
        xs = x.transpose(0, 1) if self.batch_first else x
        if xs.dim() != 3 or xs.shape[-1] != self.input_size:
            raise ValueError(f"x must be {'(B, T, I)' if self.batch_first else '(T, B, I)'} with I={self.input_size}; "
                             f"got {tuple(x.shape)}")
        T, B = xs.shape[0], xs.shape[1]
        gi_all = self.drive(xs)
        if h0 is None:
            h = gi_all.new_zeros(B, self.hidden_size)
        else:
            h = (h0[0] if h0.dim() == 3 else h0).to(gi_all.dtype)
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
        dtype = dtype or self.weight_ih.dtype
        device = torch.device(device) if device is not None else self.weight_ih.device
        flux = state = None
        if self.flux_noise > 0:
            gen = torch.Generator(device=device).manual_seed(int(self.noise_seed))
            flux = self.flux_noise * torch.randn(T, B, self.weight_ih.shape[0], generator=gen, dtype=dtype, device=device)
        if self.state_noise > 0:
            gen = torch.Generator(device=device).manual_seed(int(self.noise_seed) + _STATE_STREAM)
            state = self.state_noise * torch.randn(T, B, self.hidden_size, generator=gen, dtype=dtype, device=device)
        return flux, state

    # ---------------------------------------------------------------- misc
    def scale_time_constants(self, factor: Tensor) -> None:
        """Multiply every unit's τ by ``factor`` (``(H,)``, in place): fabrication spread."""
        with torch.no_grad():
            self.tau_scale.mul_(torch.as_tensor(factor, dtype=self.tau_scale.dtype, device=self.tau_scale.device))

    def weight_names(self) -> tuple[str, ...]:
        """Names of the coupling matrices (what quantization and clipping act on)."""
        return ("weight_ih", "weight_hh")

    def as_layer(self, method: str = "exact", **run_kwargs: Any) -> "ContinuousLayer":
        """An nn.GRU-signature module ``(x, h0) -> (output, h_n)`` running :meth:`run`."""
        return ContinuousLayer(self, method, **run_kwargs)

    def extra_repr(self) -> str:
        extras = []
        if not bool(torch.all(self.tau_scale == 1)):
            extras.append("tau_spread")
        if self.flux_noise:
            extras.append(f"flux_noise={self.flux_noise:g}")
        if self.state_noise:
            extras.append(f"state_noise={self.state_noise:g}")
        return (f"{self.input_size}, {self.hidden_size}, mode={self.mode!r}, dt={self.dt:g}, hold={self.hold_mode!r}"
                + "".join(", " + e for e in extras))


#: Offset between the flux-noise and state-noise seeds of one ContinuousGRU.
_STATE_STREAM = 7_919


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
    """Drop-in replacement of a GRU layer: ``forward(x, h0=None) -> (output, h_n)`` through
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

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, h_n = self.cont.run(x, h0, self.method, **self.run_kwargs)
        return out.to(x.dtype), h_n.to(x.dtype)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


# =============================================================================
# Entry points
# =============================================================================
def to_continuous(layer: nn.Module, dt: float = 1.0, *, hold: str = "gates", dtype: torch.dtype = torch.float64,
                  batch_first: bool | None = None, requires_grad: bool = False) -> ContinuousGRU:
    """The continuous-time model of a trained GRU-core layer (see the module docstring).

    Args:
        layer: torch.nn.GRU / nn.GRUCell (one layer, unidirectional) or a gates layer
            (GatedGRU) with a leaky mechanism (``-``, ``C``, ``U``, ``R``, ``UR``, ``SST``).
            Effective (constrained) values are read; the layer is not modified.
        dt: the training step in the unit the continuous model should use (seconds for a
            hardware profile — e.g. :func:`studies.models.hardware_dt` — or 1 for steps).
        hold: ``"gates"`` (exact reproduction of the discrete layer) or ``"input"``.
        dtype: parameter dtype of the continuous model (float64 by default).
        batch_first: default: the layer's own (False for GRUCell).

    Raises:
        ValueError: not a GRU core (LSTM, RNN), a cumax/master mechanism, several layers,
            bidirectional.
    """
    spec = layer_weights(layer)
    return ContinuousGRU(spec["weight_ih"], spec["weight_hh"], spec["bias_ih"], spec["bias_hh"], dt, spec["mode"],
                         batch_first=spec["batch_first"] if batch_first is None else batch_first, hold=hold,
                         dtype=dtype, requires_grad=requires_grad)


def is_gru_core(m: nn.Module) -> bool:
    """True for modules :func:`to_continuous` accepts (without checking the mechanism)."""
    if isinstance(m, (nn.GRU, nn.GRUCell)):
        return True
    return callable(getattr(m, "gate_blocks", None)) and hasattr(m, "decay_gate") and "LSTM" not in type(m).__name__


def transfer_model(model: nn.Module, dt: float | Callable[[str, nn.Module], float] = 1.0, method: str = "exact",
                   *, hold: str = "gates", dtype: torch.dtype = torch.float64, **run_kwargs: Any) -> nn.Module:
    """A deep copy of ``model`` whose GRU-core layers are replaced by :class:`ContinuousLayer` s.

    ``dt`` is a number or a function ``(qualified name, layer) -> dt``. The rest of the
    model (heads, embeddings) is kept as it is. A model that is itself a GRU layer comes
    back as a :class:`ContinuousLayer`.
    """
    def dt_for(name: str, m: nn.Module) -> float:
        return float(dt(name, m)) if callable(dt) else float(dt)

    if is_gru_core(model):
        return to_continuous(model, dt_for("", model), hold=hold, dtype=dtype).as_layer(method, **run_kwargs)
    new = copy.deepcopy(model)
    replaced = 0
    for name, m in list(new.named_modules()):
        for cname, child in list(m.named_children()):
            if is_gru_core(child):
                qual = f"{name}.{cname}" if name else cname
                cont = to_continuous(child, dt_for(qual, child), hold=hold, dtype=dtype)
                setattr(m, cname, cont.as_layer(method, **run_kwargs))
                replaced += 1
    if not replaced:
        raise ValueError(f"transfer_model: {type(model).__name__} contains no GRU-core layer")
    return new


def continuous_modules(model: nn.Module) -> list[ContinuousGRU]:
    """Every :class:`ContinuousGRU` inside ``model`` (itself included)."""
    return [m for m in model.modules() if isinstance(m, ContinuousGRU)]


def max_abs_diff(a: Sequence[Tensor] | Tensor, b: Sequence[Tensor] | Tensor) -> float:
    """Largest absolute difference between two tensors (or matching sequences of them), in float64."""
    if isinstance(a, Tensor):
        a, b = [a], [b]  # type: ignore[list-item]
    return max(float((x.detach().double() - y.detach().double()).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b))


__all__ = [
    "ContinuousGRU",
    "ContinuousLayer",
    "GATE_MODES",
    "HOLDS",
    "MODE_BLOCKS",
    "continuous_modules",
    "gru_gates",
    "is_gru_core",
    "layer_weights",
    "unit_tau",
    "max_abs_diff",
    "to_continuous",
    "transfer_model",
]
