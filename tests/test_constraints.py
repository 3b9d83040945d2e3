"""Hardware constraints as transforms: frozen time constants, bounded and quantized couplings,
freeze_biases, unconstrain. The rules (check) are tested in test_rules.py."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import gates
from soensim.constraints import (
    ConstraintReport,
    bounded,
    check,
    constrain,
    freeze_biases,
    quantize,
    quantize_ste,
    unconstrain,
)
from soensim.layouts import Cell, gate_layout, layout
from soensim.profiles import HardwareProfile
from soensim.timescales import bias_to_tau, decay, tau_to_bias

DENDRITE = HardwareProfile.preset("soen-dendrite").replace(flux_budget=None)  # τ range, |J| ≤ 0.5, b_r frozen 0
FABRICATED = HardwareProfile.preset("soen-fabricated")  # 4 τ values, 16 levels
SOFTWARE = HardwareProfile.preset("software")


def rows(block: int, h: int) -> slice:
    return slice(block * h, (block + 1) * h)


def effective(module: nn.Module) -> dict[str, torch.Tensor]:
    """Effective (constrained) values of a module's direct tensors, by attribute access."""
    names = [n for n, _ in module.named_parameters(recurse=False)]
    if parametrize.is_parametrized(module):
        names += list(module.parametrizations.keys())
    with torch.no_grad():
        return {n: getattr(module, n).detach().clone() for n in names}


def plain_copy(module: nn.Module) -> nn.RNNBase:
    """A torch nn.GRU/nn.LSTM of the same configuration holding the effective values."""
    kw = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
              bidirectional=module.bidirectional)
    if isinstance(module, gates.GatedLSTM):
        ref = nn.LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **kw)
    else:
        ref = nn.GRU(module.input_size, module.hidden_size, **kw)
    ref.load_state_dict(effective(module))
    return ref


def manual_gru(x, h, w_ih, w_hh, b_ih, b_hh):
    """torch.nn.GRU equations, one step at a time (x: T×B×I)."""
    H = h.shape[-1]
    outs = []
    for t in range(x.shape[0]):
        gi = x[t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs)


def _train(model, opt, steps=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(6, 4, model.input_size, generator=gen)
        out = model(x)[0]
        loss = (out - 0.9).pow(2).mean() + out.abs().sum() * 1e-3
        opt.zero_grad()
        loss.backward()
        opt.step()


# --------------------------------------------------------------------- time constants
@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM, nn.GRUCell, nn.LSTMCell])
def test_decay_biases_equal_tau_to_bias_exactly(cls):
    torch.manual_seed(0)
    H, block = 12, 1  # update (r, z, n) / forget (i, f, g, o)
    m = cls(3, H)
    sfx = "_l0" if isinstance(m, nn.RNNBase) else ""
    m = gates.convert(m)  # nn.GRU/nn.LSTM: the equivalent gates layer; cells stay as they are
    report = constrain(m, DENDRITE, seed=7)
    taus = DENDRITE.unit_taus(H, 7)
    want = tau_to_bias(taus, DENDRITE.dt).float()
    b_ih, b_hh = getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)
    assert torch.equal(b_ih[rows(block, H)], want)
    assert torch.equal(b_hh[rows(block, H)], torch.zeros(H))
    label = next(iter(report.taus))
    assert torch.equal(report.taus[label], taus)
    # the physical reading: decay per step = exp(-dt/τ), e.g. τ in [10 ns, 1 µs] → z in [0.99, 0.9999]
    z = torch.sigmoid(b_ih[rows(block, H)].double() + b_hh[rows(block, H)].double())
    assert torch.allclose(z, decay(taus, DENDRITE.dt), rtol=0, atol=1e-7)


def test_design_examples_from_physics_notes():
    # docs/physics.md: dt = 0.1 ns, τ = 10 ns → b ≈ 4.60, 1 µs → 9.21 (the range ends)
    m = gates.convert(nn.GRU(1, 64))
    constrain(m, DENDRITE)
    b = m.bias_ih_l0[64:128]
    assert b.min().item() == pytest.approx(4.600, abs=1e-3)
    assert b.max().item() == pytest.approx(9.210, abs=1e-3)


def test_unit_taus_reproducible_and_distinct_per_cell():
    H = 10
    a, b, c = (gates.convert(nn.GRU(2, H, num_layers=2, bidirectional=True)) for _ in range(3))
    ra, rb = constrain(a, DENDRITE, seed=3), constrain(b, DENDRITE, seed=3)
    constrain(c, DENDRITE, seed=4)
    for sfx in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        assert torch.equal(getattr(a, "bias_ih" + sfx)[H:2 * H], getattr(b, "bias_ih" + sfx)[H:2 * H])
    assert not torch.equal(a.bias_ih_l0[H:2 * H], c.bias_ih_l0[H:2 * H])
    # cell k (layer × direction in torch's order) uses seed + k
    for k, sfx in enumerate(("_l0", "_l0_reverse", "_l1", "_l1_reverse")):
        want = tau_to_bias(DENDRITE.unit_taus(H, 3 + k), DENDRITE.dt).float()
        assert torch.equal(getattr(a, "bias_ih" + sfx)[H:2 * H], want)
    assert list(ra.taus) == ["<model>.l0", "<model>.l0_reverse", "<model>.l1", "<model>.l1_reverse"]
    assert all(torch.equal(ra.taus[k], rb.taus[k]) for k in ra.taus)


def test_discrete_values_put_every_unit_on_a_fabricated_tau():
    H = 40
    m = gates.convert(nn.GRU(1, H))
    constrain(m, FABRICATED, seed=1)
    t_m = bias_to_tau(m.bias_ih_l0[H:2 * H].double(), FABRICATED.dt)
    rel = (t_m[:, None] / torch.tensor(FABRICATED.tau_values, dtype=torch.float64) - 1).abs().amin(1)
    assert rel.max() < 1e-5  # float32 bias rounding only


def test_zero_update_bias_without_fabricated_taus_and_explicit_update_bias():
    # the b_z = b_r = 0 ablation (Malandain 2026): b_n learnable, no physical τ
    ablated = HardwareProfile(name="ablated", dt=1.0, trainable={"weights", "candidate_bias"}, reset_bias=0.0)
    m = gates.convert(nn.GRU(2, 5))
    constrain(m, ablated)
    assert torch.equal(m.bias_ih_l0[:10], torch.zeros(10)) and torch.equal(m.bias_hh_l0[:10], torch.zeros(10))
    assert check(m, ablated) == []
    # explicit values win over the profile's τ
    g = gates.convert(nn.GRU(2, 5))
    ub = torch.linspace(-1, 1, 5)
    rep = constrain(g, DENDRITE, update_bias=ub)
    assert torch.equal(g.bias_ih_l0[5:10], ub) and torch.equal(g.bias_hh_l0[5:10], torch.zeros(5))
    assert torch.equal(rep.biases["<model>.l0"], ub.double())
    assert [v.rule for v in check(g, DENDRITE, update_bias=ub, rules=["frozen_time_constant"])] == []
    assert [v.rule for v in check(g, DENDRITE, rules=["frozen_time_constant"])] == ["frozen_time_constant"]
    with pytest.raises(ValueError, match="update_bias must be"):
        constrain(gates.convert(nn.GRU(2, 5)), DENDRITE, update_bias=torch.zeros(4))


def test_frozen_candidate_rows_lstm():
    prof = DENDRITE.replace(trainable=frozenset({"weights"}))
    m = gates.convert(nn.LSTM(3, 6))
    constrain(m, prof)
    g = rows(2, 6)
    assert torch.equal(m.bias_ih_l0[g], torch.zeros(6)) and torch.equal(m.bias_hh_l0[g], torch.zeros(6))
    assert check(m, prof) == []


# --------------------------------------------------------------------- training keeps the constraints
@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("opt_name", ["Adam", "AdamW"])
def test_large_lr_training_never_breaks_constraints(cls, opt_name):
    torch.manual_seed(1)
    H, J = 8, DENDRITE.coupling_max
    m = gates.convert(cls(3, H, num_layers=2))
    constrain(m, DENDRITE, seed=2)
    frozen_before = {n: t.clone() for n, t in effective(m).items() if n.startswith("bias")}
    raw_before = m.parametrizations.bias_ih_l0.original.detach().clone()
    w_before = effective(m)["weight_hh_l1"]
    opt = getattr(torch.optim, opt_name)(m.parameters(), lr=1.0, weight_decay=0.5)
    _train(m, opt)
    eff = effective(m)
    for n, t in eff.items():
        if n.startswith("weight"):
            assert t.abs().max().item() <= J, n  # no tolerance: the bound is exact
    blk = rows(1, H)  # z (GRU) / f (LSTM)
    for n, t in frozen_before.items():
        assert torch.equal(eff[n][blk], t[blk]), n  # bit-identical
        if cls is nn.GRU:
            assert torch.equal(eff[n][:H], t[:H]), n  # reset rows too (role not trainable)
            assert not torch.equal(eff[n][2 * H:], t[2 * H:]), n  # candidate bias trains
    assert not torch.equal(eff["weight_hh_l1"], w_before)
    # zero gradient to the frozen rows; weight decay still moved the raw values under them,
    # the effective values did not move
    raw = m.parametrizations.bias_ih_l0.original
    assert raw.grad is not None and torch.equal(raw.grad[blk], torch.zeros(H))
    assert not torch.equal(raw.detach()[blk], raw_before[blk])
    assert check(m, DENDRITE, seed=2) == []


def test_quantized_training_stays_on_grid_and_ste_passes_gradient():
    torch.manual_seed(2)
    J, L = FABRICATED.coupling_max, FABRICATED.weight_levels
    m = gates.convert(nn.GRU(3, 8))
    constrain(m, FABRICATED)
    grid = torch.tensor([-J + 2 * J * k / (L - 1) for k in range(L)], dtype=torch.float64)
    opt = torch.optim.AdamW(m.parameters(), lr=1.0, weight_decay=0.1)
    _train(m, opt, steps=5)
    for n in ("weight_ih_l0", "weight_hh_l0"):
        w = getattr(m, n).detach().double()
        assert (w[..., None] - grid).abs().amin(-1).max() < 1e-6, n
        assert len(torch.unique(w)) <= L
        raw = m.parametrizations[n].original
        assert raw.grad is not None and raw.grad.abs().sum() > 0  # gradient passed the rounding
    assert check(m, FABRICATED) == []


def test_ste_gradient_is_identity_and_quantize_is_exact():
    w = torch.tensor([-0.7, -0.5, -0.01, 0.02, 0.49, 0.5, 3.0], requires_grad=True)
    q = quantize_ste(w, 0.5, 5)  # levels -0.5, -0.25, 0, 0.25, 0.5
    assert q.tolist() == [-0.5, -0.5, 0.0, 0.0, 0.5, 0.5, 0.5]
    c = torch.arange(7.0)
    (q * c).sum().backward()
    assert torch.equal(w.grad, c)
    assert torch.equal(quantize(q.detach(), 0.5, 5), q.detach())  # idempotent
    big = torch.linspace(-5, 5, 1001)
    assert bounded(big, 0.3).abs().max().item() <= 0.3


def test_quantize_toward_zero_never_grows_a_magnitude():
    w = torch.tensor([-0.7, -0.3, -0.2, -0.01, 0.0, 0.02, 0.24, 0.26, 0.49, 3.0])
    # odd L = 5: levels -0.5, -0.25, 0, 0.25, 0.5
    assert quantize(w, 0.5, 5, toward_zero=True).tolist() == [-0.5, -0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.5]
    # even L = 4: levels ±1/6, ±1/2, no zero level: below 1/6 the connection is absent (exactly 0)
    q = quantize(w, 0.5, 4, toward_zero=True)
    torch.testing.assert_close(q, torch.tensor([-0.5, -1 / 6, -1 / 6, 0, 0, 0, 1 / 6, 1 / 6, 1 / 6, 0.5]))
    x = torch.randn(10_000, dtype=torch.float64)
    for levels in (2, 7, 16):
        q = quantize(x, 0.5, levels, toward_zero=True)
        assert (q.abs() <= x.abs()).all() and (q * x >= 0).all()
        on_grid = (q - quantize(q, 0.5, levels)).abs() < 1e-12
        assert (on_grid | (q == 0)).all()


# --------------------------------------------------------------------- forward uses the constrained weights
def test_parametrized_gru_forward_equals_manual_gru():
    torch.manual_seed(3)
    H, J = 6, 0.1  # tight bound: most initial weights (|w| ≤ 1/√6 ≈ 0.41) change a lot
    prof = DENDRITE.replace(coupling_max=J, weight_levels=9)
    m = gates.convert(nn.GRU(4, H))
    raw_w = m.weight_hh_l0.detach().clone()
    constrain(m, prof)
    x, h0 = torch.randn(7, 3, 4), torch.randn(1, 3, H)
    out, hn = m(x, h0)
    e = effective(m)
    ref = manual_gru(x, h0[0], e["weight_ih_l0"], e["weight_hh_l0"], e["bias_ih_l0"], e["bias_hh_l0"])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(hn[0], ref[-1], rtol=0, atol=1e-6)
    stale = manual_gru(x, h0[0], e["weight_ih_l0"], raw_w, e["bias_ih_l0"], e["bias_hh_l0"])
    assert (out - stale).abs().max() > 1e-2  # the raw weights would give a different answer
    # after an optimizer step the forward sees the new weights
    out.pow(2).mean().backward()
    torch.optim.SGD(m.parameters(), lr=5.0).step()
    e2 = effective(m)
    assert not torch.equal(e2["weight_hh_l0"], e["weight_hh_l0"])
    with torch.no_grad():
        ref2 = manual_gru(x, h0[0], e2["weight_ih_l0"], e2["weight_hh_l0"], e2["bias_ih_l0"], e2["bias_hh_l0"])
        torch.testing.assert_close(m(x, h0)[0], ref2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [nn.GRUCell, nn.LSTMCell])
def test_cells_use_constrained_weights(cls):
    torch.manual_seed(10)
    m = cls(3, 4)
    constrain(m, FABRICATED)
    x = torch.randn(2, 3)
    ref = cls(3, 4)
    ref.load_state_dict(effective(m))
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)
    assert check(m, FABRICATED) == []


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True),
        lambda: nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True),
        lambda: nn.LSTM(3, 6, proj_size=4, batch_first=True),
    ],
)
def test_stacked_and_bidirectional_forward_match_plain_copy(make):
    torch.manual_seed(4)
    m = gates.convert(make())
    constrain(m, FABRICATED)
    x = torch.randn(2, 9, 3)
    got = m(x)[0]
    torch.testing.assert_close(got, plain_copy(m)(x)[0], rtol=0, atol=1e-6)
    # gradients reach every raw tensor
    got.sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bounded_start_equals_original_weights_and_clips_outliers():
    torch.manual_seed(5)
    m = gates.convert(nn.GRU(3, 16))  # init |w| ≤ 1/4 < J_max = 0.5
    with torch.no_grad():
        m.weight_ih_l0[0, 0] = 2.0
        m.weight_ih_l0[0, 1] = -0.5
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    constrain(m, DENDRITE)
    w = m.weight_hh_l0.detach()
    torch.testing.assert_close(w, before["weight_hh_l0"], rtol=0, atol=1e-6)
    wi = m.weight_ih_l0.detach()
    torch.testing.assert_close(wi[1:], before["weight_ih_l0"][1:], rtol=0, atol=1e-6)
    assert 0.5 - 1e-5 < wi[0, 0].item() <= 0.5 and -0.5 <= wi[0, 1].item() < -0.5 + 1e-5


# --------------------------------------------------------------------- unconstrain, copies, state
def test_unconstrain_restores_plain_parameters_with_same_values():
    torch.manual_seed(6)
    m = gates.convert(nn.GRU(3, 5, num_layers=2))
    rep = constrain(m, FABRICATED)
    opt = torch.optim.Adam(m.parameters(), lr=0.5)
    _train(m, opt, steps=3)
    eff = effective(m)
    raws = {n: m.parametrizations[n].original for n in m.parametrizations.keys()}
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        y = m(x)[0]
    released = rep.remove()
    assert sorted(released) == sorted(eff)
    assert type(m) is gates.GatedGRU and not parametrize.is_parametrized(m)
    assert sorted(n for n, _ in m.named_parameters()) == sorted(eff)
    for n, t in eff.items():
        assert torch.equal(getattr(m, n), t), n
        assert getattr(m, n) is raws[n]  # same Parameter object: the optimizer still holds it
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], y, rtol=0, atol=0)
    assert check(m, FABRICATED) == []  # same values, still compliant
    assert unconstrain(m) == []  # nothing left to remove
    _train(m, opt, steps=1)  # plain training works again
    assert check(m, FABRICATED)  # ... and now breaks the rules


def test_deepcopy_state_dict_and_dtype_moves():
    torch.manual_seed(7)
    m = gates.convert(nn.GRU(3, 4))
    constrain(m, FABRICATED)
    x = torch.randn(5, 2, 3)
    y = m(x)[0]
    y.sum().backward()
    c = copy.deepcopy(m)  # works after a forward (no transformed tensors cached on the module)
    torch.testing.assert_close(c(x)[0], y, rtol=0, atol=0)
    fresh = gates.convert(nn.GRU(3, 4))
    constrain(fresh, FABRICATED)
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh(x)[0], y, rtol=0, atol=0)
    m64 = copy.deepcopy(m).double()
    torch.testing.assert_close(m64(x.double())[0].float(), y, rtol=0, atol=1e-5)
    assert check(m64, FABRICATED) == []


def test_weights_not_trainable_are_frozen():
    prof = DENDRITE.replace(trainable=frozenset({"candidate_bias"}))
    m = gates.convert(nn.GRU(3, 4))
    constrain(m, prof)
    before = effective(m)
    _train(m, torch.optim.AdamW(m.parameters(), lr=1.0, weight_decay=0.3), steps=3)
    after = effective(m)
    for n in ("weight_ih_l0", "weight_hh_l0"):
        assert torch.equal(after[n], before[n])
    assert not torch.equal(after["bias_ih_l0"][8:], before["bias_ih_l0"][8:])


# --------------------------------------------------------------------- torch's RNN layers, errors
@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_torch_rnn_layers_are_refused_with_the_conversion_named(cls):
    m = nn.Sequential(cls(2, 3))
    for fn in (lambda: constrain(m, DENDRITE), lambda: freeze_biases(m[0], {"f" if cls is nn.LSTM else "z": 0.0})):
        with pytest.raises(ValueError, match=r"gates\.convert\(model\)") as err:
            fn()
        assert "\n" not in str(err.value) and f"torch.nn.{cls.__name__}" in str(err.value)
    assert not parametrize.is_parametrized(m[0])
    assert check(m, SOFTWARE) == []  # read-only users accept it
    assert {v.rule for v in check(m, DENDRITE)} >= {"frozen_time_constant", "time_constant_range"}
    gates.convert(m)
    constrain(m, DENDRITE)
    assert check(m, DENDRITE) == []


def test_clear_errors():
    with pytest.raises(ValueError, match="no recurrent layer"):
        constrain(nn.Sequential(nn.Linear(2, 2)), DENDRITE)
    with pytest.raises(TypeError, match="HardwareProfile.preset"):
        constrain(nn.GRU(2, 2), "soen-dendrite")
    with pytest.raises(TypeError, match="nn.Module"):
        constrain("model", DENDRITE)
    with pytest.raises(ValueError, match="no gate"):
        constrain(nn.RNN(2, 2), DENDRITE)
    with pytest.raises(ValueError, match="no biases"):
        constrain(gates.convert(nn.GRU(2, 2, bias=False)), DENDRITE)
    with pytest.raises(ValueError, match="dt must be"):
        constrain(nn.GRUCell(2, 2), DENDRITE, dt=0.0)
    m = gates.convert(nn.GRU(2, 2))
    constrain(m, DENDRITE)
    with pytest.raises(ValueError, match="already constrained"):
        constrain(m, DENDRITE)
    # an error leaves the model untouched
    g = gates.convert(nn.GRU(2, 3))
    parametrize.register_parametrization(g, "weight_hh_l0", nn.Identity())
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    with pytest.raises(ValueError, match="another transform"):
        constrain(g, DENDRITE)
    assert list(g.parametrizations.keys()) == ["weight_hh_l0"]
    assert all(torch.equal(p, before[n]) for n, p in g.named_parameters())


def test_report_summary_and_no_op_profile():
    m = gates.convert(nn.GRU(2, 3))
    rep = constrain(m, SOFTWARE)
    assert isinstance(rep, ConstraintReport) and rep.transforms == () and not parametrize.is_parametrized(m)
    rep = constrain(m, FABRICATED)
    text = str(rep)
    assert "soen-fabricated" in text and "bounded" in text and "quantized" in text and "frozen_rows" in text


# --------------------------------------------------------------------- layers declaring their own layout()
def _logit(p):
    return torch.log(p) - torch.log1p(-p)


class _SSTDecay:
    """Squared-sigmoid decay: z = sigmoid(b)²."""

    def bias_for_tau(self, tau, dt):
        return {"update": _logit(torch.sqrt(decay(tau, dt)))}

    def tau_for_bias(self, bias, dt):
        return -dt / torch.log(torch.sigmoid(bias).square())


class ContractGRU(nn.Module):
    """Minimal layer declaring its layout (attribute access every forward)."""

    def __init__(self, i, h, mechanism="SST"):
        super().__init__()
        self.hidden_size, self.mechanism = h, mechanism
        self.weight_ih = nn.Parameter(torch.randn(3 * h, i) * 0.3)
        self.weight_hh = nn.Parameter(torch.randn(3 * h, h) * 0.3)
        self.bias_ih = nn.Parameter(torch.randn(3 * h) * 0.1)
        self.bias_hh = nn.Parameter(torch.randn(3 * h) * 0.1)
        self.inner = nn.GRU(i, h)  # a child must not be constrained a second time

    def layout(self):
        leaky = self.mechanism == "SST"
        cells = (Cell(0, 0, "", "weight_ih", "weight_hh", "bias_ih", "bias_hh"),)
        rows_ = {b: self.hidden_size for b in ("reset", "update", "candidate")}
        return gate_layout("gru", self.hidden_size, rows_, cells, mechanism=self.mechanism, leaky=leaky,
                           decay=_SSTDecay() if leaky else None)

    def forward(self, x):
        return manual_gru(x, torch.zeros(x.shape[1], self.hidden_size), self.weight_ih, self.weight_hh,
                          self.bias_ih, self.bias_hh)


def test_layout_layer_uses_its_decay_map():
    torch.manual_seed(9)
    H = 6
    m = ContractGRU(2, H)
    rep = constrain(m, DENDRITE, seed=1)
    taus = DENDRITE.unit_taus(H, 1)
    want = _logit(torch.sqrt(decay(taus, DENDRITE.dt))).float()
    assert torch.equal(m.bias_ih[H:2 * H], want) and torch.equal(m.bias_hh[H:2 * H], torch.zeros(H))
    # the sharp-points identity: logit(√z) = tau_to_bias(2τ, dt)
    torch.testing.assert_close(want, tau_to_bias(2 * taus, DENDRITE.dt).float(), rtol=1e-6, atol=1e-5)
    assert rep.layers == ("<model>",) and not parametrize.is_parametrized(m.inner)
    opt = torch.optim.AdamW(m.parameters(), lr=1.0, weight_decay=0.5)
    for _ in range(4):
        loss = m(torch.randn(5, 3, 2)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.weight_hh.abs().max().item() <= DENDRITE.coupling_max
    assert torch.equal(m.bias_ih[H:2 * H], want)
    assert check(m, DENDRITE, seed=1) == []


def test_non_leaky_mechanism_is_refused_and_reported():
    m = ContractGRU(2, 4, "O")
    with pytest.raises(ValueError, match="not a leaky"):
        constrain(m, DENDRITE)
    assert not parametrize.is_parametrized(m)
    got = {(v.rule, math.isnan(v.value)) for v in check(m, DENDRITE)}
    assert ("frozen_time_constant", True) in got and ("time_constant_range", True) in got
    # with τ trainable the same layer can still be bounded
    constrain(m, DENDRITE.replace(trainable=DENDRITE.trainable | {"update_bias", "reset_bias"}))
    assert parametrize.is_parametrized(m, "weight_hh") and not parametrize.is_parametrized(m, "bias_ih")


# --------------------------------------------------------------------- gates.layers (GatedGRU / GatedLSTM)
def _plain_gated(m):
    """An unconstrained gated layer of the same configuration holding m's effective values."""
    cls = gates.GatedGRU if isinstance(m, gates.GatedGRU) else gates.GatedLSTM
    ref = cls(m.input_size, m.hidden_size, num_layers=m.num_layers, gate=m.gate, implementation=m.implementation)
    ref.load_state_dict(effective(m))
    return ref


@pytest.mark.parametrize("core, gate", [("gru", "-"), ("gru", "U"), ("gru", "UR"), ("gru", "SST"),
                                        ("lstm", "-"), ("lstm", "R"), ("lstm", "SST")])
def test_gated_layers_freeze_design_biases_per_block(core, gate):
    H = 8
    cls = gates.GatedGRU if core == "gru" else gates.GatedLSTM
    m = cls(3, H, num_layers=2, gate=gate, seed=0)
    rep = constrain(m, DENDRITE, seed=4)
    lay = layout(m)
    blocks, decay_block = lay.blocks, lay.decay_block
    for k in range(2):
        taus = DENDRITE.unit_taus(H, 4 + k)
        want = m.mechanism.bias_for_decay(decay(taus, DENDRITE.dt))
        b_ih, b_hh = getattr(m, f"bias_ih_l{k}"), getattr(m, f"bias_hh_l{k}")
        for block, values in want.items():  # decay block (+ refine block at 0 for R/UR)
            assert torch.equal(b_ih[blocks[block]], values.float()), block
            assert torch.equal(b_hh[blocks[block]], torch.zeros(H)), block
        z_eff = m.mechanism.decay_for_bias(b_ih[blocks[decay_block]].double())
        torch.testing.assert_close(z_eff, decay(taus, DENDRITE.dt), rtol=0, atol=1e-6)
        if gate == "SST":  # sigmoid² gate: logit(√z) = tau_to_bias(2τ, dt)
            torch.testing.assert_close(b_ih[blocks[decay_block]], tau_to_bias(2 * taus, DENDRITE.dt).float())
        else:
            torch.testing.assert_close(b_ih[blocks[decay_block]], tau_to_bias(taus, DENDRITE.dt).float(),
                                       rtol=0, atol=1e-6)
    if core == "gru":  # reset role not trainable in the preset
        assert torch.equal(m.bias_ih_l0[blocks["reset"]], torch.zeros(H))
    assert set(rep.taus) == {"<model>.l0", "<model>.l1"}
    assert check(m, DENDRITE, seed=4) == []


@pytest.mark.parametrize("implementation", ["fused", "reference", "torch"])
def test_gated_gru_training_keeps_constraints_on_every_path(implementation):
    torch.manual_seed(11)
    H, J = 8, FABRICATED.coupling_max
    m = gates.GatedGRU(3, H, num_layers=2, gate="-", implementation=implementation, seed=1)
    constrain(m, FABRICATED, seed=2)
    x = torch.randn(6, 4, 3)
    # the forward really uses the constrained values (compare with a plain layer holding them)
    torch.testing.assert_close(m(x)[0], _plain_gated(m)(x)[0], rtol=0, atol=1e-6)
    blocks = layout(m).blocks
    frozen = [blocks["update"], blocks["reset"]]
    start = effective(m)
    before = {n: t for n, t in start.items() if n.startswith("bias")}
    opt = torch.optim.AdamW(m.parameters(), lr=1.0, weight_decay=0.5)
    _train(m, opt, steps=5)
    eff = effective(m)
    grid = torch.tensor([-J + 2 * J * k / 15 for k in range(16)], dtype=torch.float64)
    for n, t in eff.items():
        if n.startswith("weight"):
            assert t.abs().max().item() <= J, n
            assert (t.double()[..., None] - grid).abs().amin(-1).max() < 1e-6, n
        else:
            for rows_ in frozen:
                assert torch.equal(t[rows_], before[n][rows_]), n
    assert not torch.equal(eff["weight_hh_l0"], start["weight_hh_l0"])  # it did train
    torch.testing.assert_close(m(x)[0], _plain_gated(m)(x)[0], rtol=0, atol=1e-6)
    assert check(m, FABRICATED, seed=2) == []
    released = unconstrain(m)
    assert released and not parametrize.is_parametrized(m)
    for n, t in eff.items():
        assert torch.equal(getattr(m, n), t), n


def test_gated_lstm_training_keeps_constraints():
    torch.manual_seed(12)
    H, J = 6, DENDRITE.coupling_max
    m = gates.GatedLSTM(3, H, gate="UR", seed=3)
    constrain(m, DENDRITE)
    blocks = layout(m).blocks
    before = effective(m)["bias_ih_l0"].clone()
    _train(m, torch.optim.Adam(m.parameters(), lr=1.0, weight_decay=0.5), steps=5)
    after = effective(m)
    assert all(t.abs().max().item() <= J for n, t in after.items() if n.startswith("weight"))
    for block in ("forget", "input"):  # decay block and the refine block (input, tied) stay put
        assert torch.equal(after["bias_ih_l0"][blocks[block]], before[blocks[block]])
    assert not torch.equal(after["bias_ih_l0"][blocks["output"]], before[blocks["output"]])
    assert check(m, DENDRITE) == []
