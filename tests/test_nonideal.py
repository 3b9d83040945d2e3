"""Evaluation-time non-idealities (soensim.nonideal): identities, grids, seeds, statistics, sweeps."""
import math

import pytest
import torch
from torch import nn

from gates import GatedGRU
from soensim import nonideal as NI
from soensim.constraints import quantize
from soensim.continuous_gru import ContinuousGRU, ContinuousLayer
from soensim.soen_layer import SOENLayer
from soensim.transfer import max_abs_diff, to_continuous

KINDS = ["tau_spread", "quantize", "clip", "flux_noise", "state_noise"]
ACTIVE = {"tau_spread": 0.2, "quantize": 8, "clip": 0.05, "flux_noise": 0.3, "state_noise": 0.05}
IDEAL = {"tau_spread": 0.0, "quantize": None, "clip": None, "flux_noise": 0.0, "state_noise": 0.0}


@pytest.fixture(scope="module")
def cont():
    torch.manual_seed(0)
    gru = nn.GRU(3, 16, batch_first=True).double()
    with torch.no_grad():
        for p in gru.parameters():
            p.mul_(4.0)  # weights up to ~1, beyond the clip value
    return to_continuous(gru, dt=1e-9)


@pytest.fixture(scope="module")
def x():
    return torch.randn(4, 12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


def out(model, x):
    return model.run(x)[0] if isinstance(model, ContinuousGRU) else model(x)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_ideal_value_is_identity_and_input_untouched(kind, cont, x):
    before = {k: v.clone() for k, v in cont.state_dict().items()}
    ref = out(cont, x)
    fn = NI.get_nonideality(kind).fn
    same = fn(cont, IDEAL[kind], 3)
    assert same is not cont
    assert max_abs_diff(out(same, x), ref) == 0.0
    changed = fn(cont, ACTIVE[kind], 3)
    assert max_abs_diff(out(changed, x), ref) > 1e-6
    # pure: the input model is unchanged
    assert all(torch.equal(before[k], v) for k, v in cont.state_dict().items())
    assert cont.flux_noise == 0 and cont.state_noise == 0
    assert max_abs_diff(out(cont, x), ref) == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_seeds_reproducible(kind, cont, x):
    fn = NI.get_nonideality(kind).fn
    a, b, c = fn(cont, ACTIVE[kind], 1), fn(cont, ACTIVE[kind], 1), fn(cont, ACTIVE[kind], 2)
    assert max_abs_diff(out(a, x), out(b, x)) == 0.0
    if NI.get_nonideality(kind).seeded:
        assert max_abs_diff(out(a, x), out(c, x)) > 1e-6
    else:
        assert max_abs_diff(out(a, x), out(c, x)) == 0.0


@pytest.mark.parametrize("levels", [2, 5, 16])
def test_quantized_weights_lie_on_the_grid(levels, cont):
    j = max(float(cont.weight_ih.abs().max()), float(cont.weight_hh.abs().max()))
    q = NI.quantize_weights(cont, levels)
    step = 2 * j / (levels - 1)
    for name in ("weight_ih", "weight_hh"):
        w = getattr(q, name).detach()
        k = (w + j) / step
        assert torch.allclose(k, k.round(), atol=1e-9)
        assert w.abs().max() <= j * (1 + 1e-12)
        assert len(torch.unique(w)) <= levels
        assert torch.equal(w, quantize(getattr(cont, name).detach(), j, levels))
    biases = (q.bias_ih, q.bias_hh)
    assert torch.equal(biases[0], cont.bias_ih) and torch.equal(biases[1], cont.bias_hh)  # not couplings
    # with an explicit J_max the grid spans ±J_max and larger weights are clipped onto its ends
    q2 = NI.quantize_weights(cont, levels, j_max=0.25)
    grid = torch.linspace(-0.25, 0.25, levels, dtype=torch.float64)
    w = q2.weight_hh.detach().reshape(-1, 1)
    assert ((w - grid).abs().min(1).values < 1e-12).all()


def test_clip_bounds_every_coupling(cont):
    c = NI.clip_weights(cont, 0.1)
    for name in ("weight_ih", "weight_hh"):
        w, w0 = getattr(c, name), getattr(cont, name)
        assert w.abs().max() <= 0.1
        inside = w0.abs() <= 0.1
        assert torch.equal(w[inside], w0[inside])
    with pytest.raises(ValueError):
        NI.clip_weights(cont, -1.0)


def test_spread_statistics():
    f = NI.spread_factors(20_000, 0.1, seed=7)
    assert abs(float(f.mean()) - 1.0) < 3 * 0.1 / math.sqrt(20_000)
    assert abs(float(f.std()) / 0.1 - 1.0) < 0.03
    assert torch.equal(f, NI.spread_factors(20_000, 0.1, seed=7))
    assert not torch.equal(f, NI.spread_factors(20_000, 0.1, seed=8))
    assert float(NI.spread_factors(1000, 0.9, seed=0).min()) >= NI.MIN_TAU_FACTOR  # τ stays > 0


def test_tau_spread_scales_every_units_time_constant(cont, x):
    spread = NI.tau_spread(cont, 0.1, seed=4)
    factors = NI.spread_factors(cont.hidden_size, 0.1, seed=4)
    h = torch.randn(4, 12, 16, dtype=torch.float64)
    ratio = spread.time_constants(x, h) / cont.time_constants(x, h)
    assert torch.allclose(ratio, factors.expand_as(ratio), rtol=1e-12)


def test_noise_draws_have_the_requested_statistics(cont):
    noisy = NI.state_noise(NI.flux_noise(cont, 0.2, seed=1), 0.05, seed=1)
    flux, state = noisy.noise_draws(200, 50)
    assert flux.shape == (200, 50, 48) and state.shape == (200, 50, 16)
    assert abs(float(flux.std()) / 0.2 - 1) < 0.02 and abs(float(flux.mean())) < 0.005
    assert abs(float(state.std()) / 0.05 - 1) < 0.02
    assert not torch.allclose(flux[..., :16] / 0.2, state / 0.05)  # separate streams


def test_state_noise_adds_to_the_state(cont, x):
    """One step from h0 = 0: the noisy state is the ideal one plus the first draw."""
    noisy = NI.state_noise(cont, 0.1, seed=3)
    y_ideal = cont.run(x[:, :1])[0]
    y_noisy = noisy.run(x[:, :1])[0]
    _, state = noisy.noise_draws(1, 4)
    assert max_abs_diff(y_noisy[:, 0], y_ideal[:, 0] + state[0]) < 1e-14


def test_discrete_models_are_transferred_first(x):
    torch.manual_seed(1)
    layer = GatedGRU(3, 6, batch_first=True, gate="UR", seed=0).double()
    m = NI.tau_spread(layer, 0.0)
    assert isinstance(m, ContinuousLayer)
    assert max_abs_diff(m(x)[0], layer(x)[0]) < 1e-10
    with pytest.raises(ValueError, match="no layer"):
        NI.tau_spread(nn.Linear(2, 2), 0.1)


def test_apply_combines_kinds(cont, x):
    m = NI.apply(cont, {"tau_spread": 0.1, "state_noise": 0.01}, seed=2)
    ref = NI.state_noise(NI.tau_spread(cont, 0.1, 2), 0.01, 2)
    assert max_abs_diff(out(m, x), out(ref, x)) == 0.0
    with pytest.raises(ValueError, match="known"):
        NI.apply(cont, {"gamma_rays": 1.0})


def test_sweep_rows_and_summary(cont, x):
    def evaluate(m):
        return {"mean_abs": float(out(m, x).abs().mean())}

    rows = NI.sweep(cont, evaluate, "tau_spread", [0.0, 0.1, 0.2], seeds=3, extra={"label": "a"})
    assert len(rows) == 1 + 2 * 3
    assert rows[0]["seed"] is None and rows[0]["label"] == "a" and rows[0]["kind"] == "tau_spread"
    q = NI.sweep(lambda: cont, lambda m: float(out(m, x).abs().mean()), "quantize", [None, 16], seeds=[0, 1])
    assert [r["seed"] for r in q] == [None, None] and "metric" in q[0]
    summary = NI.summarize(rows)
    assert [s["value"] for s in summary] == [0.0, 0.1, 0.2]
    assert [s["n"] for s in summary] == [1, 3, 3]
    vals = [r["mean_abs"] for r in rows if r["value"] == 0.1]
    assert summary[1]["mean_abs_mean"] == pytest.approx(sum(vals) / 3)
    assert summary[0]["mean_abs_std"] == 0.0 and summary[1]["mean_abs_std"] > 0
    with pytest.raises(ValueError, match="known"):
        NI.sweep(cont, evaluate, "nope", [1])


def test_soen_layer_is_a_target():
    layer = SOENLayer(2, 12, "soen-fabricated", dt=1e-9, seed=0, dtype=torch.float64)
    x = torch.rand(6, 3, 2, dtype=torch.float64)
    spread = NI.tau_spread(layer, 0.1, seed=1)
    assert torch.allclose(spread.tau / layer.tau, NI.spread_factors(12, 0.1, 1), rtol=1e-12)
    q = NI.quantize_weights(layer, 4, j_max=0.5)  # removes the layer's own 16-level transform on the copy
    grid = torch.linspace(-0.5, 0.5, 4, dtype=torch.float64)
    assert ((q.J.reshape(-1, 1) - grid).abs().min(1).values < 1e-12).all()
    assert max_abs_diff(q(x)[0], layer(x)[0]) > 0
    noisy = NI.flux_noise(layer, 0.05, seed=2)
    assert max_abs_diff(noisy(x)[0], NI.flux_noise(layer, 0.05, seed=2)(x)[0]) == 0
    assert max_abs_diff(noisy(x)[0], layer(x)[0]) > 0


def test_changing_a_copy_of_a_parametrized_layer_leaves_the_original_untouched():
    """The SOEN layer's couplings are parametrized (bound + 16 levels); torch shares a parametrized
    module's class with its deep copies, so the copy's new values must not reach the original."""
    layer = SOENLayer(2, 12, "soen-fabricated", dt=1e-9, seed=0, dtype=torch.float64)
    x = torch.rand(6, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    J, y = layer.J.detach().clone(), layer(x)[0]
    chains = {n: len(layer.cell.parametrizations[n]) for n in ("J", "J_in")}
    for changed in (NI.quantize_weights(layer, 4, j_max=0.5), NI.clip_weights(layer, 0.01)):
        assert max_abs_diff(changed.J, J) > 0.01 and max_abs_diff(changed(x)[0], y) > 0
        assert torch.equal(layer.J, J) and max_abs_diff(layer(x)[0], y) == 0.0
        assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
        assert {n: len(layer.cell.parametrizations[n]) for n in ("J", "J_in")} == chains
    clipped = NI.clip_weights(layer, 0.01)
    assert float(clipped.J.detach().abs().max()) <= 0.01 and float(clipped.W_in.detach().abs().max()) <= 0.01
    kept = clipped.J.detach().clone()
    # the original's own transforms still act: moving its raw weights keeps them on the 16-level grid,
    # and leaves the copy as it was
    with torch.no_grad():
        layer.cell.parametrizations.J.original.add_(0.013)
    grid = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64)
    assert not torch.equal(layer.J, J)
    assert ((layer.J.reshape(-1, 1) - grid).abs().min(1).values < 1e-12).all()
    assert torch.equal(clipped.J, kept)
