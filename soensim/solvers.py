"""The solver registry :data:`SOLVERS` and :func:`simulate`, which runs a driven model over an
input sequence held constant over each step.

:func:`simulate` runs any :class:`~soensim.driven.DrivenSystem` over inputs
``(T, B, D)``; input ``t`` is held (zero-order hold) over ``[t·dt, (t+1)·dt)``.
The method is looked up by name in :data:`SOLVERS`:

| kind | names | what it does |
| --- | --- | --- |
| exact | ``exact`` | the model's discrete update (:meth:`~soensim.driven.DrivenSystem.discretize`): exact for a leaky integrator, exponential Euler otherwise |
| adaptive | ``dopri5``, ``dopri8``, ``bosh3``, ``adaptive_heun`` | torchdiffeq, ``rtol``/``atol`` passed through |
| fixed | ``rk4``, ``euler``, ``midpoint`` | torchdiffeq, ``substeps`` equal steps per input step |

ODE methods integrate every input step as its own initial-value problem, so the
piecewise-constant forcing is never smoothed across a step boundary. Inside a step
the solver works in local normalized time ``u = (t - t_k)/dt ∈ [0, 1]`` (the vector
field scaled by ``dt``): tolerances apply to the state as usual, and step-size
heuristics do not depend on whether times are in seconds or τ₀ units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .driven import DrivenSystem

__all__ = ["SOLVERS", "Solver", "get_solver", "register_solver", "simulate"]


@dataclass(frozen=True)
class Solver:
    """An entry of :data:`SOLVERS`.

    Attributes:
        name: the ``method`` string.
        kind: ``"exact"`` (the model's discrete update), ``"adaptive"`` or ``"fixed"`` (torchdiffeq).
        description: one line for docs and error messages.
        torchdiffeq_method: the torchdiffeq method name for ODE kinds.
    """

    name: str
    kind: str
    description: str
    torchdiffeq_method: Optional[str] = None


SOLVERS: dict[str, Solver] = {}
"""Registry of integration methods by name (see :func:`register_solver`)."""


def register_solver(solver: Solver) -> Solver:
    """Add ``solver`` to :data:`SOLVERS` (kind ``adaptive`` or ``fixed`` with a torchdiffeq method, or ``exact``)."""
    if solver.kind not in ("exact", "adaptive", "fixed"):
        raise ValueError(f"solver kind must be 'exact', 'adaptive' or 'fixed'; got {solver.kind!r}")
    if solver.kind != "exact" and not solver.torchdiffeq_method:
        raise ValueError(f"{solver.kind} solver {solver.name!r} needs a torchdiffeq_method")
    SOLVERS[solver.name] = solver
    return solver


register_solver(Solver("exact", "exact", "the model's discrete update: exact (leaky, ZOH) or exponential Euler"))
for _name, _desc in [
    ("dopri5", "Dormand-Prince 5(4), adaptive"),
    ("dopri8", "Dormand-Prince 8(5,3), adaptive"),
    ("bosh3", "Bogacki-Shampine 3(2), adaptive"),
    ("adaptive_heun", "Heun 2(1), adaptive"),
]:
    register_solver(Solver(_name, "adaptive", _desc, _name))
for _name, _desc in [
    ("rk4", "classical 4th-order Runge-Kutta (3/8 rule), fixed step"),
    ("euler", "explicit Euler, fixed step"),
    ("midpoint", "explicit midpoint, fixed step"),
]:
    register_solver(Solver(_name, "fixed", _desc, _name))


def get_solver(method: str) -> Solver:
    """Look up ``method`` in :data:`SOLVERS`; an unknown name raises ValueError listing the known ones."""
    try:
        return SOLVERS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {method!r}; known methods: {sorted(SOLVERS)}") from None


class _HeldField(nn.Module):
    """``f(u, y) = dt · model.vector_field(y, drive)`` in local normalized time ``u``."""

    def __init__(self, model: DrivenSystem, dt: float) -> None:
        super().__init__()
        self.model = model
        self.dt = dt
        self.drive: Optional[Tensor] = None

    def forward(self, u: Tensor, y: Tensor) -> Tensor:
        return self.dt * self.model.vector_field(y, self.drive)


def _check_dtypes(model: nn.Module, inputs: Tensor) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and (t.dtype != inputs.dtype or t.device != inputs.device):
            raise TypeError(
                f"model {name} is {t.dtype} on {t.device} but inputs are {inputs.dtype} on {inputs.device}; "
                f"use model.to(inputs.dtype) / model.to(inputs.device)"
            )


def simulate(
    model: DrivenSystem,
    inputs: Tensor,
    dt: float,
    method: str = "exact",
    h0: Optional[Tensor] = None,
    *,
    substeps: int = 1,
    generator: Optional[torch.Generator] = None,
    **solver_options: Any,
) -> Tensor:
    """Run ``model`` over ``inputs`` held constant over each step of width ``dt``.

    Args:
        model: a :class:`~soensim.driven.DrivenSystem` (LeakyIntegrator, LeakyGatedUnit,
            SOENDendrite, …).
        inputs: ``(T, B, D)`` sequence; ``inputs[t]`` acts over ``[t·dt, (t+1)·dt)``. Its dtype
            and device must match the model's parameters.
        dt: step width in the model's time unit (seconds for soensim models).
        method: a name in :data:`SOLVERS`.
        h0: initial state ``(B, N)``; zeros when None.
        substeps: equal substeps per input step for fixed-step methods.
        generator: random generator for the model's per-step noise (e.g. SOEN flux noise);
            the noise is drawn once per step before integration, so every method sees the
            same realization for the same seed.
        **solver_options: ``rtol``/``atol`` and any other torchdiffeq ``options`` (e.g.
            ``max_num_steps``) for adaptive methods; times in options (``first_step``,
            ``step_t``) are in normalized time (fractions of ``dt``). By default a step lands
            exactly on the end of each interval (``step_t=[1]``), so the result there is a
            step, not an interpolation. Each interval restarts torchdiffeq's initial-step
            heuristic; ``first_step=1.0`` tries the whole interval first instead, which is
            several times cheaper when the dynamics are slow compared with ``dt`` (error
            control is unchanged: a rejected step is retried smaller).

    Returns:
        States ``(T + 1, B, N)``: ``states[0] = h0`` and ``states[t + 1]`` is the state at time
        ``(t + 1)·dt``, after input ``t``.

    Raises:
        ValueError: unknown ``method``, bad shapes, ``dt ≤ 0`` or options a method does not take.
    """
    solver = get_solver(method)
    if not isinstance(inputs, Tensor) or inputs.dim() != 3:
        raise ValueError(f"inputs must be a (T, B, D) tensor; got {getattr(inputs, 'shape', type(inputs))}")
    dt = float(dt)
    if not dt > 0:
        raise ValueError(f"dt must be > 0; got {dt}")
    if int(substeps) != substeps or substeps < 1:
        raise ValueError(f"substeps must be a positive integer; got {substeps}")
    _check_dtypes(model, inputs)
    batch = inputs.shape[1]
    y = model.initial_state(batch, dtype=inputs.dtype, device=inputs.device) if h0 is None else h0
    if y.shape != (batch, model.state_size):
        raise ValueError(f"h0 must have shape ({batch}, {model.state_size}); got {tuple(y.shape)}")
    drives = model.drive(inputs, generator=generator)

    if solver.kind == "exact":
        if substeps != 1 or solver_options:
            raise ValueError(f"method 'exact' takes no substeps or solver options; got substeps={substeps}, {sorted(solver_options)}")
        disc = model.discretize(dt)
        out = [y]
        for u in disc.prepare(drives).unbind(0):  # unbind: O(T) backward, unlike per-step indexing
            y = disc.step(y, u)
            out.append(y)
        return torch.stack(out)

    from torchdiffeq import odeint  # here, not at import: the discrete paths (and the GPU check) run without it

    field = _HeldField(model, dt)
    kwargs: dict = {"method": solver.torchdiffeq_method}
    if solver.kind == "adaptive":
        if substeps != 1:
            raise ValueError(f"substeps applies to fixed-step methods, not {method!r}")
        opts = dict(solver_options)
        for key in ("rtol", "atol"):
            if key in opts:
                kwargs[key] = opts.pop(key)
        grid = torch.tensor([0.0, 1.0], dtype=inputs.dtype, device=inputs.device)
        # land a step exactly on the end of the interval: no dense-output interpolation there
        # (torchdiffeq's interpolants are less accurate than its steps, e.g. for dopri8/bosh3)
        opts.setdefault("step_t", grid[1:])
        kwargs["options"] = opts
    else:
        if solver_options:
            raise ValueError(f"fixed-step method {method!r} takes substeps, not {sorted(solver_options)}")
        grid = torch.linspace(0.0, 1.0, int(substeps) + 1, dtype=inputs.dtype, device=inputs.device)

    out = [y]
    for d in drives.unbind(0):
        field.drive = d
        y = odeint(field, y, grid, **kwargs)[-1]
        out.append(y)
    return torch.stack(out)
