"""Test problems with exact solutions, for every solver, dtype and device.

Each entry of :data:`PROBLEMS` builds a driven model, a piecewise-constant input sequence, an
initial state and the exact states at the step ends, the last computed in float64 NumPy/SciPy
from the closed form of the ODE — never through the code under test. ``tests/test_simulate.py``
loops the table over every entry of ``soensim.SOLVERS``, float32/float64 and cpu/cuda.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.linalg import expm
from torch import Tensor

from soensim import ContinuousGRU, Discretization, DrivenSystem, LeakyGatedUnit, LeakyIntegrator, SOENDendrite


@dataclass(frozen=True)
class Case:
    """One instance of a problem: ``simulate(model, inputs, dt, method, h0)`` must give ``exact``."""

    model: DrivenSystem
    inputs: Tensor  # (T, B, D), in the model's dtype and device
    h0: Tensor  # (B, N)
    dt: float
    exact: np.ndarray  # (T + 1, B, N), float64


def _draws(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _zoh_leaky(h0: np.ndarray, targets: np.ndarray, tau: np.ndarray, dt: float) -> np.ndarray:
    """States of dh/dt = (n_k - h)/tau with n_k held over [k dt, (k+1) dt): h <- n + (h - n) e^(-dt/tau)."""
    out, h = [h0], h0
    for n in targets:
        h = n + (h - n) * np.exp(-dt / tau)
        out.append(h)
    return np.stack(out)


def leaky_constant(dtype: torch.dtype, device: str) -> Case:
    """Leaky integrator with a constant target: h(t) = n + (h0 - n) e^(-t/tau), read at t = k dt."""
    tau, n, dt, steps = np.array([0.5, 2.0, 8.0]), np.array([[1.0, -0.5, 2.0], [0.3, 0.3, -1.0]]), 0.7, 6
    h0 = np.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])
    t = dt * np.arange(steps + 1)[:, None, None]
    exact = n + (h0 - n) * np.exp(-t / tau)
    model = LeakyIntegrator(torch.tensor(tau), dtype=dtype, device=device)
    inputs = torch.tensor(np.broadcast_to(n, (steps,) + n.shape).copy(), dtype=dtype, device=device)
    return Case(model, inputs, torch.tensor(h0, dtype=dtype, device=device), dt, exact)


def leaky_stiff(dtype: torch.dtype, device: str) -> Case:
    """Time constants over four decades (tau/dt from 0.1 to 1000) under a random held target."""
    rng = _draws(1)
    dt, steps = 1.0, 10
    tau = dt * 10 ** np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    targets = rng.standard_normal((steps, 2, 5))
    h0 = rng.standard_normal((2, 5))
    model = LeakyIntegrator(torch.tensor(tau), dtype=dtype, device=device)
    return Case(model, torch.tensor(targets, dtype=dtype, device=device), torch.tensor(h0, dtype=dtype, device=device),
                dt, _zoh_leaky(h0, targets, tau, dt))


class LinearSystem(DrivenSystem):
    """dy/dt = A y + B u with u held over each step; its discrete update is the exact matrix-exponential
    (zero-order-hold) step, from the augmented matrix [[A, B], [0, 0]]."""

    def __init__(self, a: np.ndarray, b: np.ndarray, dtype: torch.dtype, device: str) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor(a, dtype=dtype, device=device))
        self.register_buffer("b", torch.tensor(b, dtype=dtype, device=device))

    @property
    def state_size(self) -> int:
        return self.a.shape[0]

    def drive(self, inputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return inputs

    def vector_field(self, y: Tensor, drive: Tensor) -> Tensor:
        return y @ self.a.T + drive @ self.b.T

    def discretize(self, dt: float) -> Discretization:
        n, m = self.b.shape
        aug = torch.zeros(n + m, n + m, dtype=self.a.dtype, device=self.a.device)
        aug[:n, :n], aug[:n, n:] = self.a, self.b
        phi = torch.linalg.matrix_exp(dt * aug.double()).to(self.a.dtype)
        ad, bd = phi[:n, :n], phi[:n, n:]
        return Discretization(prepare=lambda u: u @ bd.T, step=lambda y, v: y @ ad.T + v, exact=True)


def linear_oscillator(dtype: torch.dtype, device: str) -> Case:
    """A damped oscillator (non-normal coupling) driven by held inputs: y_k+1 = e^(A dt) y_k + A^-1 (e^(A dt) - I) B u_k."""
    rng = _draws(2)
    a = np.array([[-0.2, 3.0, 0.0], [-3.0, -0.2, 0.5], [0.0, 0.0, -1.5]])
    b = np.array([[1.0, 0.0], [0.0, 0.5], [0.3, 1.0]])
    dt, steps = 0.4, 8
    u = rng.standard_normal((steps, 2, 2))
    y0 = rng.standard_normal((2, 3))
    ad = expm(a * dt)
    bd = np.linalg.solve(a, (ad - np.eye(3)) @ b)
    out, y = [y0], y0
    for uk in u:
        y = y @ ad.T + uk @ bd.T
        out.append(y)
    return Case(LinearSystem(a, b, dtype, device), torch.tensor(u, dtype=dtype, device=device),
                torch.tensor(y0, dtype=dtype, device=device), dt, np.stack(out))


def gated_unit_without_recurrence(dtype: torch.dtype, device: str) -> Case:
    """A LeakyGatedUnit with W_h = 0 and no reset gate: the target tanh(W_x x + b + b_h) is constant
    over each step, so the unit is a leaky integrator under a held target."""
    torch.manual_seed(3)
    rng = _draws(3)
    tau, dt, steps = np.array([0.3, 1.0, 4.0, 20.0]), 0.5, 7
    unit = LeakyGatedUnit(2, 4, torch.tensor(tau), reset_gate=False, dtype=torch.float64)
    with torch.no_grad():
        unit.weight_h.zero_()
    w_x, bias = unit.weight_x.detach().numpy().copy(), (unit.bias + unit.bias_h).detach().numpy().copy()
    x = rng.standard_normal((steps, 3, 2))
    h0 = 0.5 * rng.standard_normal((3, 4))
    exact = _zoh_leaky(h0, np.tanh(x @ w_x.T + bias), tau, dt)
    unit = unit.to(device=device, dtype=dtype)
    return Case(unit, torch.tensor(x, dtype=dtype, device=device), torch.tensor(h0, dtype=dtype, device=device),
                dt, exact)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def gru_without_recurrent_weights(dtype: torch.dtype, device: str) -> Case:
    """A ContinuousGRU (torch.nn.GRU gates) with W_hh = 0 but recurrent biases: its update gate z and
    candidate n depend on the input only, so each unit relaxes to n with tau = -dt / log z."""
    rng = _draws(4)
    H, I, dt, steps = 3, 2, 2.0, 6
    w_ih = 0.5 * rng.standard_normal((3 * H, I))  # gates away from 0 and 1: tau/dt of order 1
    b_ih, b_hh = 0.5 * rng.standard_normal(3 * H), 0.5 * rng.standard_normal(3 * H)
    x = rng.standard_normal((steps, 2, I))
    h0 = 0.5 * rng.standard_normal((2, H))
    gi = x @ w_ih.T + b_ih
    r = _sigmoid(gi[..., :H] + b_hh[:H])
    z = _sigmoid(gi[..., H:2 * H] + b_hh[H:2 * H])
    n = np.tanh(gi[..., 2 * H:] + r * b_hh[2 * H:])
    out, h = [h0], h0
    for zk, nk in zip(z, n, strict=True):
        h = nk + (h - nk) * zk  # the exact relaxation over dt with tau = -dt / log z: e^(-dt/tau) = z
        out.append(h)
    cont = ContinuousGRU(torch.tensor(w_ih), torch.zeros(3 * H, H, dtype=torch.float64), torch.tensor(b_ih),
                         torch.tensor(b_hh), dt, hold="input", dtype=dtype).to(device)
    return Case(cont, torch.tensor(x, dtype=dtype, device=device), torch.tensor(h0, dtype=dtype, device=device),
                dt, np.stack(out))


def soen_below_critical_current(dtype: torch.dtype, device: str) -> Case:
    """SOEN dendrites biased below the fit's critical current (i_b = 1 < C) at zero flux: the SQUID
    emits no fluxons (g < 1e-15), so the loop current only leaks, s(t) = s0 e^(-t/tau)."""
    tau, dt, steps = np.array([3.0, 30.0, 300.0]), 1.5, 8
    s0 = np.array([[0.5, 0.2, 0.4], [0.1, 0.3, 0.0]])
    dend = SOENDendrite(torch.tensor(tau), beta_L=1.0, i_b=1.0, tau0=1.0, dtype=dtype, device=device)
    t = dt * np.arange(steps + 1)[:, None, None]
    return Case(dend, torch.zeros(steps, 2, 3, dtype=dtype, device=device), torch.tensor(s0, dtype=dtype, device=device),
                dt, s0 * np.exp(-t / tau))


#: name → builder ``(dtype, device) -> Case``.
PROBLEMS: dict[str, Callable[[torch.dtype, str], Case]] = {
    "leaky_constant": leaky_constant,
    "leaky_stiff": leaky_stiff,
    "linear_oscillator": linear_oscillator,
    "gated_unit_without_recurrence": gated_unit_without_recurrence,
    "gru_without_recurrent_weights": gru_without_recurrent_weights,
    "soen_below_critical_current": soen_below_critical_current,
}


@dataclass(frozen=True)
class Settings:
    """How to run one solver on the table and how close it must come (max abs error; states ~ 1).

    ``options`` are for float64; in float32 adaptive tolerances are floored at ``rtol = 1e-6``."""

    options: dict[str, float]
    tolerance64: float
    tolerance32: float

    def run_options(self, dtype: torch.dtype) -> dict[str, float]:
        if dtype == torch.float32 and "rtol" in self.options:
            rtol = max(self.options["rtol"], 1e-6)
            return {"rtol": rtol, "atol": rtol * 1e-2}
        return dict(self.options)

    def tolerance(self, dtype: torch.dtype) -> float:
        return self.tolerance32 if dtype == torch.float32 else self.tolerance64


#: One entry per solver of ``soensim.SOLVERS``: adaptive solvers at tolerances their order reaches in a
#: fraction of a second, fixed-step ones with enough substeps for their order to push the error below
#: the bound (measured errors are 3–100× below it).
SETTINGS: dict[str, Settings] = {
    "exact": Settings({}, 1e-12, 2e-6),
    "dopri5": Settings({"rtol": 1e-9, "atol": 1e-11}, 1e-7, 1e-4),
    "dopri8": Settings({"rtol": 1e-10, "atol": 1e-12}, 1e-9, 1e-4),
    "bosh3": Settings({"rtol": 1e-6, "atol": 1e-8}, 1e-4, 1e-4),
    "adaptive_heun": Settings({"rtol": 1e-4, "atol": 1e-6}, 1e-2, 1e-2),
    "rk4": Settings({"substeps": 32}, 2e-6, 2e-5),
    "midpoint": Settings({"substeps": 64}, 2e-3, 2e-3),
    "euler": Settings({"substeps": 256}, 3e-2, 3e-2),
}


__all__ = ["Case", "LinearSystem", "PROBLEMS", "SETTINGS", "Settings"]
