import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from soensim.timescales import (
    bias_to_tau,
    decay,
    from_seconds,
    gate_timescale_steps,
    one_minus_decay,
    soen_time_unit,
    tau_to_bias,
    timescale_steps,
    to_seconds,
)

# tau/dt from 1e-3 to 1e6, as the mapping promises.
ratios = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)
dts = st.floats(min_value=1e-12, max_value=1e3, allow_nan=False)


def test_design_examples():
    # docs/physics.md worked numbers: dt = 0.1 ns; tau = 10 ns, 250 ns, 1 us -> b ≈ 4.60, 7.82, 9.21.
    b = tau_to_bias(torch.tensor([10e-9, 250e-9, 1e-6], dtype=torch.float64), 0.1e-9)
    assert b.tolist() == pytest.approx([4.600, 7.824, 9.210], abs=2e-3)


def test_bias_is_logit_of_decay_float64():
    tau = torch.logspace(-3, 6, 200, dtype=torch.float64)
    b = tau_to_bias(tau, 1.0)
    # log sigmoid(b) = log z = -dt/tau, compared in log space (z underflows for tau << dt)
    np.testing.assert_allclose(torch.nn.functional.logsigmoid(b).numpy(), (-1.0 / tau).numpy(), rtol=1e-12)
    np.testing.assert_allclose(torch.sigmoid(b[tau > 0.1]).numpy(), decay(tau[tau > 0.1], 1.0).numpy(), rtol=1e-13)
    # mpmath-free reference for -log(expm1(x)) at moderate x
    x = 1.0 / tau[(tau > 0.05) & (tau < 1e5)]
    ref = -np.log(np.expm1(x.numpy()))
    np.testing.assert_allclose(tau_to_bias(1.0 / x, 1.0).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_over_full_range(dtype):
    tau = torch.logspace(-3, 6, 1000, dtype=dtype)
    for f in (decay, one_minus_decay, tau_to_bias, timescale_steps):
        out = f(tau, torch.tensor(1.0, dtype=dtype))
        assert out.dtype == dtype
        assert torch.isfinite(out).all(), f.__name__
    back = bias_to_tau(tau_to_bias(tau, 1.0), 1.0)
    assert torch.isfinite(back).all()
    rtol = 1e-4 if dtype == torch.float32 else 1e-9
    # float32 round trip loses precision where sigmoid(b) rounds to 1 (tau/dt ≳ 1e6): check below that
    mask = tau < (1e5 if dtype == torch.float32 else 1e7)
    torch.testing.assert_close(back[mask], tau[mask], rtol=rtol, atol=0)


@settings(max_examples=300, deadline=None)
@given(r=ratios, dt=dts)
def test_round_trip(r, dt):
    tau = r * dt
    back = bias_to_tau(tau_to_bias(tau, dt), dt).item()
    assert back == pytest.approx(tau, rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(r1=ratios, r2=ratios)
def test_monotone_in_tau(r1, r2):
    lo, hi = sorted((r1, r2))
    if hi / lo < 1 + 1e-9:
        return
    assert tau_to_bias(hi, 1.0).item() > tau_to_bias(lo, 1.0).item()
    assert decay(hi, 1.0).item() >= decay(lo, 1.0).item()
    t_hi, t_lo = timescale_steps(hi, 1.0).item(), timescale_steps(lo, 1.0).item()
    # exp(-dt/tau) underflows to 0 below tau ≈ dt/745: both time scales are then exactly one step
    assert t_hi > t_lo or t_hi == t_lo == 1.0


@settings(max_examples=200, deadline=None)
@given(r=st.floats(min_value=1e3, max_value=1e6))
def test_large_tau_asymptote(r):
    # b = log(r) - 1/(2r) - 1/(24 r²) + O(r⁻⁴), r = tau/dt
    b = tau_to_bias(r, 1.0).item()
    assert b == pytest.approx(math.log(r) - 0.5 / r, abs=1 / (12 * r * r))


@settings(max_examples=200, deadline=None)
@given(r=ratios)
def test_timescale_steps_matches_gate_view(r):
    z = decay(r, 1.0)
    assert timescale_steps(r, 1.0).item() == pytest.approx(gate_timescale_steps(z).item(), rel=1e-6 if r > 1e4 else 1e-12)
    # for tau >> dt, 1/(1-z) = r + 1/2 + 1/(12 r) + O(r⁻³), r = tau/dt
    if r > 100:
        assert timescale_steps(r, 1.0).item() == pytest.approx(r + 0.5 + 1 / (12 * r), rel=1e-9)


def test_units_and_tau0():
    assert to_seconds(250, "ns") == pytest.approx(250e-9)
    assert from_seconds(2.5e-7, "ns") == pytest.approx(250)
    t0 = soen_time_unit()
    assert t0 == pytest.approx(1.28e-12, rel=1e-3)
    assert to_seconds(1000, "tau0") == pytest.approx(1000 * t0)
    # tau0 scales as 1/(I_c r_j)
    assert soen_time_unit(200e-6) == pytest.approx(t0 / 2)
    with pytest.raises(ValueError, match="unit must be one of"):
        to_seconds(1.0, "minutes")
    with pytest.raises(ValueError, match="critical_current"):
        soen_time_unit(critical_current=0.0)


def test_bad_tau_and_dt():
    with pytest.raises(ValueError, match="tau must be > 0"):
        tau_to_bias(torch.tensor([1.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="dt must be > 0"):
        decay(1.0, -1.0)


def test_broadcast_and_device_dtype_follow_tensor():
    tau = torch.tensor([[1.0, 10.0], [100.0, 1000.0]], dtype=torch.float32)
    out = tau_to_bias(tau, 0.5)
    assert out.shape == (2, 2) and out.dtype == torch.float32
    dt = torch.tensor([0.1, 1.0], dtype=torch.float64)
    assert decay(5.0, dt).dtype == torch.float64
