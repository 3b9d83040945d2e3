"""Vector fields and discrete steps of soensim.dynamics, checked against independent NumPy code."""
import math

import numpy as np
import pytest
import torch
from torchdiffeq import odeint

from soensim.dynamics import (
    SOURCE_FIT,
    LeakyGatedUnit,
    LeakyIntegrator,
    SOENDendrite,
    SOENParams,
    dendrite_constants,
    gated_step,
    leaky_step,
    leaky_vector_field,
    soen_step,
    soen_vector_field,
    source_function,
    source_threshold,
)
from soensim.profiles import HardwareProfile
from soensim.timescales import FLUX_QUANTUM, soen_time_unit, tau_to_bias

F64 = torch.float64

# ---------------------------------------------------------------- independent reference (NumPy)
A, B, C, K, M, N = 0.37091212, 0.31903101, 1.06435066, 1.92138556, 2.50322787, 2.62706077
EPS = 1e-6


def g_np(phi, i):
    """The fit of docs/physics.md ("SOEN dendrite"), written from the formula with NumPy only."""
    phi, i = np.asarray(phi, float), np.asarray(i, float)
    d = A * np.maximum(i - C, EPS) ** K - B * (np.abs(np.cos(np.pi * phi)) + EPS) ** M
    return 1.0 / (1.0 + np.exp(-100.0 * d)) * np.maximum(d, EPS) ** (1.0 / N)


def d_np(phi, i):
    return A * np.maximum(i - C, EPS) ** K - B * (np.abs(np.cos(np.pi * phi)) + EPS) ** M


def t64(x):
    return torch.as_tensor(np.asarray(x), dtype=F64)


# ---------------------------------------------------------------- source function
# (phi, i, g): g computed once, independently of the code under test, with mpmath at 50 significant
# digits from the fit on docs/physics.md ("SOEN dendrite": A..N above, eps = 1e-6), rounded to 17 digits.
TABLE = [
    (0.50, 1.7, 0.49217353775192325),
    (0.50, 1.8, 0.54768004339538089),
    (0.30, 1.8, 0.44795067835048722),
    (0.35, 1.7, 0.43326674384794706),
    (0.40, 1.5, 0.33791137404762427),
    (0.25, 2.0, 0.53401486457692762),
    (0.45, 1.4, 0.29619001595629544),
    (0.10, 1.7, 1.7416123869905201e-08),
]


def test_source_function_tabulated_values():
    phi, i, g = map(np.array, zip(*TABLE, strict=True))
    out = source_function(t64(phi), t64(i)).numpy()
    np.testing.assert_allclose(out, g, rtol=1e-12, atol=0)
    np.testing.assert_allclose(g_np(phi, i), g, rtol=1e-12, atol=0)  # the reference agrees with the table


def test_source_function_matches_numpy_reference_on_grid():
    phi, i = np.meshgrid(np.linspace(-1.5, 1.5, 301), np.linspace(1.0, 2.1, 45))
    np.testing.assert_allclose(source_function(t64(phi), t64(i)).numpy(), g_np(phi, i), rtol=1e-11, atol=1e-15)


def test_source_function_design_values():
    # docs/physics.md, typical values: i_b 1.7/1.8 -> g(0.5) ≈ 0.50/0.55, phi_th ≈ 0.22/0.17 (fit accuracy ~0.02)
    g_half = source_function(t64([0.5, 0.5]), t64([1.7, 1.8]))
    assert g_half.tolist() == pytest.approx([0.50, 0.55], abs=0.01)
    assert source_threshold(t64([1.7, 1.8])).tolist() == pytest.approx([0.22, 0.17], abs=0.015)


def test_source_function_periodic_and_symmetric():
    phi = torch.linspace(-0.5, 1.5, 2001, dtype=F64)
    i = t64(1.75)
    g = source_function(phi, i)
    for k in (-2, -1, 1, 3):
        torch.testing.assert_close(source_function(phi + k, i), g, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(source_function(-phi, i), g, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(source_function(1 - phi, i), g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("i", [1.4, 1.5, 1.6, 1.7, 1.8])
def test_source_function_zero_below_threshold_and_rises_after(i):
    th = float(source_threshold(i))
    assert 0.0 < th < 0.5
    # D crosses zero at the threshold (the threshold is the eps -> 0 limit; eps shifts D by ~B*M*eps)
    assert abs(d_np(th, i)) < 1e-5
    assert d_np(th - 1e-3, i) < 0 < d_np(th + 1e-3, i)
    below = torch.linspace(0.0, th - 0.05, 200, dtype=F64)
    assert float(source_function(below, t64(i)).max()) < 1e-4
    far_below = torch.linspace(0.0, th - 0.1, 200, dtype=F64)
    assert float(source_function(far_below, t64(i)).max()) < 1e-6
    assert float(source_function(t64(th + 0.05), t64(i))) > 0.1


@pytest.mark.parametrize("i", [1.4, 1.5, 1.6, 1.7, 1.8, 1.9])
def test_source_threshold_is_where_the_source_function_switches_on(i):
    """Bisection on g itself (no closed form): on [0, 1/2] g rises monotonically through its value at
    D = 0, sigmoid(0)·eps^(1/N); the flux where it does is the threshold."""
    level = 0.5 * EPS ** (1 / N)
    lo, hi = 0.0, 0.5
    assert float(source_function(t64(lo), t64(i))) < level < float(source_function(t64(hi), t64(i)))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(source_function(t64(mid), t64(i))) < level else (lo, mid)
    # the closed form drops eps (which shifts D by about B*M*eps): agreement to ~1e-5
    assert float(source_threshold(t64(i))) == pytest.approx(0.5 * (lo + hi), abs=1e-5)


def test_source_function_grows_with_the_bias_current():
    phi = torch.linspace(0.3, 0.7, 41, dtype=F64)
    g = torch.stack([source_function(phi, t64(i)) for i in (1.5, 1.6, 1.7, 1.8, 1.9, 2.0)])
    assert bool((g.diff(dim=0) > 0).all())
    assert float(g.min()) > 0 and float(g.max()) < 1


def test_source_threshold_limits():
    # large bias current: active at any flux; at or below C: never active
    assert float(source_threshold(2.0)) == 0.0
    assert float(source_function(t64(0.0), t64(2.0))) > 0.05
    assert float(source_threshold(1.0)) == pytest.approx(0.5)


@pytest.mark.parametrize("i", [1.4, 1.7, 1.8, 2.0])
def test_source_function_monotone_up_to_half(i):
    phi = torch.linspace(0.0, 0.5, 5001, dtype=F64)
    g = source_function(phi, t64(i))
    assert bool((g.diff() >= 0).all())
    above = phi > source_threshold(i) + 0.01
    assert bool((g[above].diff() > 0).all())
    # and falls again from 1/2 to 1
    assert bool((source_function(phi + 0.5, t64(i)).diff() <= 0).all())


def test_source_function_dtypes_and_zero_current():
    g32 = source_function(torch.tensor([0.5], dtype=torch.float32), 1.8)
    assert g32.dtype == torch.float32
    assert float(g32) == pytest.approx(0.5476800433953809, rel=1e-6)
    # below the critical current C no fluxons at any flux, up to the fit's eps floor:
    # at D ≈ 0 the fit gives sigmoid(0)·eps^(1/N) = 0.5·1e-6^0.3807 ≈ 2.6e-3
    g = source_function(torch.linspace(0, 1, 11, dtype=F64), t64(1.0))
    assert float(g.max()) == pytest.approx(0.5 * EPS ** (1 / N), rel=1e-3)
    assert float(g[[0, 1, 2, -3, -2, -1]].max()) < 1e-10


# ---------------------------------------------------------------- units
def test_dendrite_constants_match_physics():
    L, r = 77.5e-9, 0.31
    c = dendrite_constants(L, r)
    assert c["tau"] == pytest.approx(L / r, rel=1e-15)
    assert c["beta_L"] == pytest.approx(2 * math.pi * 100e-6 * L / FLUX_QUANTUM, rel=1e-12)
    assert c["tau0"] == pytest.approx(soen_time_unit(), rel=1e-15)
    dend = SOENDendrite(size=1, **c, dtype=F64)
    # gamma_+/gamma_- = r_j / r
    assert float(dend.params().gain) == pytest.approx(2.5714 / r, rel=1e-12)
    with pytest.raises(ValueError):
        dendrite_constants(-1.0, 1.0)


# ---------------------------------------------------------------- SOEN vector field and step
def _soen_setup(seed=0, n=5, b=3):
    gen = torch.Generator().manual_seed(seed)
    tau = 10 ** (1 + 2 * torch.rand(n, generator=gen, dtype=F64))  # 10 .. 1000 (tau0 units)
    p = SOENParams(
        tau=tau,
        beta_L=2.0 + torch.rand(n, generator=gen, dtype=F64),
        i_b=1.6 + 0.3 * torch.rand(n, generator=gen, dtype=F64),
        J=0.3 * torch.randn(n, n, generator=gen, dtype=F64),
        phi_offset=0.1 * torch.randn(n, generator=gen, dtype=F64),
        tau0=1.0,
    )
    s = 0.5 * torch.rand(b, n, generator=gen, dtype=F64)
    phi_ext = 0.4 * torch.rand(b, n, generator=gen, dtype=F64)
    return p, s, phi_ext


def test_soen_vector_field_matches_numpy():
    p, s, phi_ext = _soen_setup()
    phi = s.numpy() @ p.J.numpy().T + p.phi_offset.numpy() + phi_ext.numpy()
    ref = g_np(phi, p.i_b.numpy() - s.numpy()) / p.beta_L.numpy() - s.numpy() / p.tau.numpy()
    np.testing.assert_allclose(soen_vector_field(s, phi_ext, p).numpy(), ref, rtol=1e-12, atol=1e-15)


def test_soen_step_matches_formula():
    p, s, phi_ext = _soen_setup(1)
    dt = 0.7
    phi = s.numpy() @ p.J.numpy().T + p.phi_offset.numpy() + phi_ext.numpy()
    z = np.exp(-dt / p.tau.numpy())
    ref = z * s.numpy() + (1 - z) * (p.tau.numpy() / p.beta_L.numpy()) * g_np(phi, p.i_b.numpy() - s.numpy())
    np.testing.assert_allclose(soen_step(s, phi_ext, p, dt).numpy(), ref, rtol=1e-12, atol=1e-15)
    # the module's discretization is the same step
    dend = SOENDendrite(p.tau, beta_L=p.beta_L, i_b=p.i_b, J=p.J, phi_offset=p.phi_offset, tau0=1.0, dtype=F64)
    torch.testing.assert_close(dend.discretize(dt).step(s, phi_ext), soen_step(s, phi_ext, p, dt), rtol=1e-14, atol=0)
    dend.hold(phi_ext)
    torch.testing.assert_close(dend(torch.tensor(0.0), s), soen_vector_field(s, phi_ext, p), rtol=1e-14, atol=0)


def test_soen_step_exact_for_pure_leak():
    # below threshold g ≈ 0: s decays exactly as exp(-t/tau)
    p = SOENParams(tau=t64([5.0, 50.0]), beta_L=t64([1.0, 1.0]), i_b=t64([1.0, 1.0]), J=None,
                   phi_offset=t64([0.0, 0.0]), tau0=1.0)
    s0 = t64([[0.3, 0.2]])
    s = s0
    for _ in range(10):
        s = soen_step(s, torch.zeros_like(s), p, 0.5)
    np.testing.assert_allclose(s.numpy(), s0.numpy() * np.exp(-5.0 / np.array([5.0, 50.0])), rtol=1e-3)


def test_soen_step_gradients():
    p, s, phi_ext = _soen_setup(2, n=3, b=2)
    i_b = p.i_b.clone().requires_grad_(True)
    off = p.phi_offset.clone().requires_grad_(True)

    def f(i_b, off, phi_ext):
        q = SOENParams(p.tau, p.beta_L, i_b, p.J, off, 1.0)
        return soen_step(s, phi_ext, q, 0.3)

    assert torch.autograd.gradcheck(f, (i_b, off, phi_ext.clone().requires_grad_(True)))


# ---------------------------------------------------------------- leaky unit: ZOH = GRU
def test_leaky_step_is_gru_formula():
    gen = torch.Generator().manual_seed(3)
    tau = 10 ** (4 * torch.rand(7, generator=gen, dtype=F64) - 1)
    h, n = torch.randn(2, 4, 7, generator=gen, dtype=F64)
    dt = 0.37
    z = np.exp(-dt / tau.numpy())
    np.testing.assert_allclose(leaky_step(h, n, tau, dt).numpy(), z * h.numpy() + (1 - z) * n.numpy(), rtol=1e-14, atol=1e-15)
    # and it is the exact solution of dh/dt = (n - h)/tau with n held: n + (h - n) e^{-dt/tau}
    np.testing.assert_allclose(leaky_step(h, n, tau, dt).numpy(), n.numpy() + (h - n).numpy() * z, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(leaky_vector_field(h, n, tau).numpy(), (n - h).numpy() / tau.numpy(), rtol=1e-15)


def test_leaky_integrator_discretization_matches_sigmoid_of_tau_to_bias():
    tau = t64([10e-9, 250e-9, 1e-6])
    dt = 0.1e-9
    m = LeakyIntegrator(tau, dtype=F64)
    h, n = t64([[0.3, -0.2, 0.9]]), t64([[1.0, 0.5, -1.0]])
    disc = m.discretize(dt)
    assert disc.exact
    zb = torch.sigmoid(tau_to_bias(tau, dt))
    torch.testing.assert_close(disc.step(h, disc.prepare(n)), zb * h + (1 - zb) * n, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reset_gate", [True, False])
def test_gated_unit_step_equals_torch_gru_cell(reset_gate):
    torch.manual_seed(0)
    d, n, dt = 3, 6, 0.5
    tau = torch.logspace(-0.5, 2, n, dtype=F64)
    unit = LeakyGatedUnit(d, n, tau, reset_gate=reset_gate, dtype=F64)
    cell = torch.nn.GRUCell(d, n, dtype=F64)
    with torch.no_grad():
        zeros_x, zeros_h = torch.zeros(n, d, dtype=F64), torch.zeros(n, n, dtype=F64)
        wr_x = unit.reset_weight_x if reset_gate else zeros_x
        wr_h = unit.reset_weight_h if reset_gate else zeros_h
        # reset bias +inf-like when absent: r = 1
        br = unit.reset_bias if reset_gate else torch.full((n,), 1e3, dtype=F64)
        cell.weight_ih.copy_(torch.cat([wr_x, zeros_x, unit.weight_x]))
        cell.weight_hh.copy_(torch.cat([wr_h, zeros_h, unit.weight_h]))
        cell.bias_ih.copy_(torch.cat([br, tau_to_bias(tau, dt), unit.bias]))
        cell.bias_hh.copy_(torch.cat([torch.zeros(n, dtype=F64), torch.zeros(n, dtype=F64), unit.bias_h]))
    x = torch.randn(4, d, dtype=F64)
    h = torch.randn(4, n, dtype=F64)
    disc = unit.discretize(dt)
    torch.testing.assert_close(disc.step(h, disc.prepare(unit.drive(x))), cell(x, h), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gated_step(h, unit.drive(x), unit.params(), unit.tau, dt), cell(x, h), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- modules as torchdiffeq fields
def test_module_is_torchdiffeq_field_with_callable_drive():
    # n(t) = sin(w t), h(0) = 0: h(t) = [sin wt - w tau cos wt + w tau e^{-t/tau}] / (1 + w^2 tau^2)
    tau = t64([0.5, 2.0])
    w = 3.0
    m = LeakyIntegrator(tau, dtype=F64).hold(lambda t: torch.sin(w * t).expand(1, 2))
    t = torch.linspace(0, 4, 9, dtype=F64)
    ys = odeint(m, torch.zeros(1, 2, dtype=F64), t, rtol=1e-10, atol=1e-12)[:, 0]
    tt, ta = t[:, None].numpy(), tau.numpy()
    ref = (np.sin(w * tt) - w * ta * np.cos(w * tt) + w * ta * np.exp(-tt / ta)) / (1 + (w * ta) ** 2)
    np.testing.assert_allclose(ys.numpy(), ref, atol=1e-8)


def test_forward_without_drive_raises():
    with pytest.raises(RuntimeError, match="hold"):
        LeakyIntegrator(1.0, 3)(torch.tensor(0.0), torch.zeros(1, 3))


# ---------------------------------------------------------------- module construction
def test_module_validation():
    with pytest.raises(ValueError, match="tau"):
        LeakyIntegrator(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="tau"):
        LeakyIntegrator(torch.ones(3), size=4)
    with pytest.raises(ValueError, match="J"):
        SOENDendrite(torch.ones(3), beta_L=1.0, J=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="flux_noise"):
        SOENDendrite(torch.ones(3), beta_L=1.0, flux_noise=-1.0)
    with pytest.raises(ValueError, match="last dim"):
        SOENDendrite(torch.ones(3), beta_L=1.0).drive(torch.zeros(2, 1, 4))
    with pytest.raises(TypeError):
        SOENDendrite(torch.ones(3))  # beta_L is required


def test_tau_stored_as_log_and_frozen_by_default():
    m = SOENDendrite(t64([1e-8, 1e-7]), beta_L=300.0, dtype=F64)
    assert "log_tau" in dict(m.named_buffers())
    assert "log_tau" not in dict(m.named_parameters())
    torch.testing.assert_close(m.tau, t64([1e-8, 1e-7]), rtol=4e-15, atol=0)
    assert {n for n, _ in m.named_parameters()} == {"i_b", "phi_offset"}
    learn = LeakyIntegrator(t64([1.0, 2.0]), learn_tau=True)
    assert "log_tau" in dict(learn.named_parameters())


def test_from_profile_uses_fabricated_taus():
    prof = HardwareProfile.preset("soen-dendrite", flux_noise=0.01)
    m = SOENDendrite.from_profile(prof, 8, beta_L=300.0, dtype=F64)
    torch.testing.assert_close(m.tau, prof.unit_taus(8), rtol=1e-14, atol=0)
    assert m.flux_noise == 0.01


def test_drive_noise_is_seeded():
    m = SOENDendrite(torch.ones(4), beta_L=1.0, flux_noise=0.1, dtype=F64)
    x = torch.zeros(5, 2, 4, dtype=F64)
    a = m.drive(x, generator=torch.Generator().manual_seed(7))
    b = m.drive(x, generator=torch.Generator().manual_seed(7))
    c = m.drive(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.std()) == pytest.approx(0.1, rel=0.35)


def test_gated_unit_init_is_seeded():
    torch.manual_seed(5)
    a = LeakyGatedUnit(2, 3, 1.0)
    torch.manual_seed(5)
    b = LeakyGatedUnit(2, 3, 1.0)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_source_fit_defaults_are_design_constants():
    assert (SOURCE_FIT.A, SOURCE_FIT.B, SOURCE_FIT.C, SOURCE_FIT.K, SOURCE_FIT.M, SOURCE_FIT.N) == (A, B, C, K, M, N)
