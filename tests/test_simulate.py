"""soensim.solvers: every solver on the problems with exact solutions (tests/problems.py), exact integrator
vs torchdiffeq vs SciPy Radau, convergence orders, registry."""
import numpy as np
import pytest
import torch
from problems import PROBLEMS, SETTINGS
from scipy.integrate import solve_ivp

from soensim.dynamics import LeakyGatedUnit, LeakyIntegrator, SOENDendrite
from soensim.solvers import SOLVERS, Solver, get_solver, register_solver, simulate

F64 = torch.float64


def fit_order(dts, errors):
    """Slope of log(error) against log(dt)."""
    return float(np.polyfit(np.log(dts), np.log(errors), 1)[0])


def stiff_leaky(seed=0, n=6, b=2, steps=15, dt=1.0):
    """Leaky units with tau spread over 4 decades (tau/dt from 0.1 to 1000) and random ZOH targets."""
    gen = torch.Generator().manual_seed(seed)
    tau = dt * 10 ** (4 * torch.rand(n, generator=gen, dtype=F64) - 1)
    tau[0], tau[1] = 0.1 * dt, 1000 * dt  # pin the ends of the spread
    x = torch.randn(steps, b, n, generator=gen, dtype=F64)
    h0 = torch.randn(b, n, generator=gen, dtype=F64)
    return LeakyIntegrator(tau, dtype=F64), x, h0, dt


def radau_leaky(tau, x, h0, dt, rtol=1e-10, atol=1e-12):
    """Independent reference: SciPy Radau (implicit, for stiff problems), one solve per held input."""
    tau = np.broadcast_to(tau, h0.shape).ravel()
    y = h0.ravel().copy()
    out = [y.copy()]
    jac = np.diag(-1.0 / tau)
    for n in x.reshape(x.shape[0], -1):
        sol = solve_ivp(lambda t, y, n=n: (n - y) / tau, (0.0, dt), y, method="Radau", rtol=rtol, atol=atol, jac=jac)
        assert sol.success
        y = sol.y[:, -1]
        out.append(y.copy())
    return np.stack(out).reshape((x.shape[0] + 1,) + h0.shape)


# ---------------------------------------------------------------- every solver on the exact problems
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda,
                                   pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny per-step solves: intra-op threads only contend (see the sharp points page)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_solver_has_settings():
    assert set(SETTINGS) == set(SOLVERS)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("method", sorted(SOLVERS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@torch.no_grad()
def test_solver_reaches_the_exact_solution(problem, method, dtype, device):
    case = PROBLEMS[problem](dtype, device)
    settings = SETTINGS[method]
    tol = settings.tolerance(dtype)
    assert np.abs(case.exact - case.exact[0]).max() > 10 * tol  # a solver returning h0 fails
    out = simulate(case.model, case.inputs, case.dt, method, case.h0, **settings.run_options(dtype))
    assert out.dtype == dtype and out.device.type == device and out.shape == case.exact.shape
    err = float(np.abs(out.double().cpu().numpy() - case.exact).max())
    assert err < tol, f"{problem} / {method} / {dtype}: max error {err:.2e} ≥ {tol:.0e}"


# ---------------------------------------------------------------- exact vs ODE solvers (leaky, stiff)
def test_exact_leaky_matches_dopri5_and_radau_stiff():
    m, x, h0, dt = stiff_leaky()
    ex = simulate(m, x, dt, "exact", h0).numpy()
    dp = simulate(m, x, dt, "dopri5", h0, rtol=1e-7, atol=1e-9).numpy()
    rd = radau_leaky(m.tau.numpy(), x.numpy(), h0.numpy(), dt)
    err_dopri = np.abs(ex - dp).max()
    err_radau = np.abs(ex - rd).max()
    err_solvers = np.abs(dp - rd).max()
    print(f"max |exact - dopri5| = {err_dopri:.2e}, |exact - Radau| = {err_radau:.2e}, |dopri5 - Radau| = {err_solvers:.2e}")
    # solver tolerance rtol 1e-7 (|h| ~ 1, 15 steps): agreement to a few times the tolerance
    assert err_dopri < 1e-6
    assert err_radau < 1e-8
    assert err_solvers < 1e-6


def test_piecewise_constant_forcing_is_not_smoothed():
    # square wave with tau = dt: any smoothing across step boundaries would show at O(1e-2)
    tau = torch.tensor([1.0, 0.2], dtype=F64)
    m = LeakyIntegrator(tau, dtype=F64)
    x = torch.tensor([1.0, -1.0] * 5, dtype=F64).reshape(10, 1, 1).expand(10, 1, 2).contiguous()
    ex = simulate(m, x, 1.0, "exact")
    for method, rtol in (("dopri5", 1e-8), ("dopri8", 1e-9)):
        out = simulate(m, x, 1.0, method, rtol=rtol, atol=rtol * 1e-2)
        torch.testing.assert_close(out, ex, rtol=0, atol=1e-7, msg=method)


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_methods_converge_at_their_order(method, order):
    m = LeakyIntegrator(torch.tensor([0.7, 3.0], dtype=F64), dtype=F64)
    x = torch.randn(8, 2, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    ex = simulate(m, x, 1.0, "exact")
    subs = [4, 8, 16, 32]
    errs = [float((simulate(m, x, 1.0, method, substeps=k) - ex).abs().max()) for k in subs]
    slope = fit_order([1.0 / k for k in subs], errs)
    assert abs(slope - order) < 0.2, (errs, slope)


# ---------------------------------------------------------------- SOEN: exponential Euler is first order
def soen_problem(seed=0):
    """Coupled dendrites in tau0 units, fluxes kept in the active window (D > 0)."""
    gen = torch.Generator().manual_seed(seed)
    n, b = 4, 2
    tau = 10 + 30 * torch.rand(n, generator=gen, dtype=F64)
    dend = SOENDendrite(
        tau,
        beta_L=tau / 3.0,  # gamma_+/gamma_- = 3
        i_b=1.75 + 0.1 * torch.rand(n, generator=gen, dtype=F64),
        J=0.05 * torch.randn(n, n, generator=gen, dtype=F64),
        tau0=1.0,
        dtype=F64,
    )
    # flux drive held over coarse steps of width 2 (tau0 units), in [0.42, 0.58]
    coarse = 0.42 + 0.16 * torch.rand(12, b, n, generator=gen, dtype=F64)
    return dend, coarse, 2.0


@torch.no_grad()
def test_soen_exponential_euler_is_first_order():
    dend, coarse, big_dt = soen_problem()
    ref = simulate(dend, coarse, big_dt, "dopri5", rtol=1e-11, atol=1e-13)
    subs = [1, 2, 4, 8, 16]
    dts, errs = [], []
    for k in subs:
        fine = coarse.repeat_interleave(k, dim=0)  # the same piecewise-constant drive at step big_dt/k
        out = simulate(dend, fine, big_dt / k, "exact")[::k]
        dts.append(big_dt / k)
        errs.append(float((out - ref).abs().max()))
    slope = fit_order(dts, errs)
    print(f"SOEN exp-Euler errors {['%.2e' % e for e in errs]} at dt {dts}: order {slope:.3f}")
    assert errs[-1] > 1e-8  # still far above the reference's own error
    assert 0.8 <= slope <= 1.2
    # and the adaptive solvers agree with each other on the reference
    ref8 = simulate(dend, coarse, big_dt, "dopri8", rtol=1e-11, atol=1e-13)
    print(f"max |dopri5 - dopri8| reference = {float((ref8 - ref).abs().max()):.2e}")
    assert float((ref8 - ref).abs().max()) < 1e-9


@torch.no_grad()
def test_gated_unit_exponential_euler_is_first_order():
    torch.manual_seed(0)
    unit = LeakyGatedUnit(2, 5, torch.logspace(0, 1, 5, dtype=F64), dtype=F64)
    coarse = torch.randn(6, 3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = simulate(unit, coarse, 1.0, "dopri5", rtol=1e-11, atol=1e-13)
    subs = [2, 4, 8, 16]
    errs = [float((simulate(unit, coarse.repeat_interleave(k, 0), 1.0 / k, "exact")[::k] - ref).abs().max()) for k in subs]
    slope = fit_order([1.0 / k for k in subs], errs)
    print(f"gated-unit exp-Euler (GRU step) errors {['%.2e' % e for e in errs]}: order {slope:.3f}")
    assert 0.8 <= slope <= 1.2


# ---------------------------------------------------------------- registry and arguments
def test_registry_contents():
    assert {"exact", "dopri5", "dopri8", "bosh3", "adaptive_heun", "rk4", "euler", "midpoint"} <= set(SOLVERS)
    assert get_solver("dopri5").kind == "adaptive"
    assert get_solver("rk4").kind == "fixed"
    assert get_solver("exact").kind == "exact"


def test_unknown_method_lists_known():
    m = LeakyIntegrator(torch.ones(2))
    with pytest.raises(ValueError) as err:
        simulate(m, torch.zeros(3, 1, 2), 0.1, method="radau5")
    msg = str(err.value)
    assert "radau5" in msg
    for name in ("dopri5", "exact", "rk4", "bosh3"):
        assert name in msg


def test_bad_arguments():
    m = LeakyIntegrator(torch.ones(2))
    x = torch.zeros(3, 1, 2)
    with pytest.raises(ValueError, match="exact"):
        simulate(m, x, 0.1, "exact", rtol=1e-6)
    with pytest.raises(ValueError, match="substeps"):
        simulate(m, x, 0.1, "dopri5", substeps=4)
    with pytest.raises(ValueError, match="fixed-step"):
        simulate(m, x, 0.1, "rk4", rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(T, B, D\)"):
        simulate(m, torch.zeros(3, 2), 0.1)
    with pytest.raises(ValueError, match="dt"):
        simulate(m, x, 0.0)
    with pytest.raises(ValueError, match="h0"):
        simulate(m, x, 0.1, h0=torch.zeros(2, 2))
    with pytest.raises(TypeError, match="float64"):
        simulate(m, x.double(), 0.1)
    with pytest.raises(ValueError, match="kind"):
        register_solver(Solver("mine", "implicit", "?"))


def test_register_solver_and_options_pass_through():
    m = LeakyIntegrator(torch.tensor([1.0, 5.0], dtype=F64), dtype=F64)
    x = torch.randn(5, 1, 2, dtype=F64)
    register_solver(Solver("heun3", "fixed", "Heun 3rd order, fixed step", "heun3"))
    try:
        out = simulate(m, x, 0.5, "heun3", substeps=8)
        torch.testing.assert_close(out, simulate(m, x, 0.5), rtol=0, atol=1e-5)
    finally:
        del SOLVERS["heun3"]
    # torchdiffeq options go through: a tiny step budget must fail
    with pytest.raises(AssertionError, match="max_num_steps"):
        simulate(m, x, 0.5, "dopri5", rtol=1e-12, atol=1e-14, max_num_steps=2)
    loose = simulate(m, x, 0.5, "dopri5", rtol=1e-3, atol=1e-5)
    tight = simulate(m, x, 0.5, "dopri5", rtol=1e-10, atol=1e-12)
    ex = simulate(m, x, 0.5)
    assert float((tight - ex).abs().max()) < float((loose - ex).abs().max())


# ---------------------------------------------------------------- determinism, dtypes, gradients
def test_seeded_determinism_with_flux_noise():
    dend, coarse, dt = soen_problem(3)
    dend.flux_noise = 0.02

    def run(seed, method="exact"):
        return simulate(dend, coarse, dt, method, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(11), run(11), run(12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the noise is drawn once per step before integration and held over the step, so every
    # method sees the same realization: it equals running noise-free on inputs + that noise
    noise = 0.02 * torch.randn(coarse.shape, generator=torch.Generator().manual_seed(11), dtype=F64)
    dp = run(11, "dopri5")
    dend.flux_noise = 0.0
    torch.testing.assert_close(a, simulate(dend, coarse + noise, dt, "exact"), rtol=0, atol=1e-15)
    torch.testing.assert_close(dp, simulate(dend, coarse + noise, dt, "dopri5"), rtol=0, atol=1e-15)


def test_gradients_flow_through_exact_and_ode_paths():
    dend, coarse, dt = soen_problem(5)
    for method in ("exact", "rk4"):
        dend.zero_grad()
        simulate(dend, coarse[:4], dt, method)[-1].sum().backward()
        assert dend.i_b.grad is not None and torch.isfinite(dend.i_b.grad).all()
        assert float(dend.i_b.grad.abs().sum()) > 0
    # exact-path gradient w.r.t. inputs matches finite differences
    m = LeakyIntegrator(torch.tensor([0.5, 3.0], dtype=F64), dtype=F64)
    x = torch.randn(6, 1, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: simulate(m, x, 0.3)[-1], (x,))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    dend, coarse, dt = soen_problem(6)
    dend = dend.to(dtype)
    cpu = simulate(dend, coarse.to(dtype), dt, "exact")
    gpu = simulate(dend.to("cuda"), coarse.to("cuda", dtype), dt, "exact")
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=tol)
    dp = simulate(dend, coarse.to("cuda", dtype), dt, "dopri5", rtol=1e-6, atol=1e-8)
    assert float((dp.cpu() - cpu).abs().max()) < 0.1
