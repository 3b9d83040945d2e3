import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gates import GATES, GatedGRU, GatedLSTM
from gates.init import chrono_, constant_, freeze_biases, physical_tau_, set_bias, ugi_
from gates.mechanisms import chrono_bias, cumax, get_mechanism, refine, ugi_bias
from gates.stats import decay_weight_norms, gate_means
from soensim.timescales import decay

ALL = list(GATES)
LEAKY = [g for g in ALL if GATES[g].leaky]


def _copy(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_standard_gru_equals_nn_gru(impl, batch_first):
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 7, num_layers=2, batch_first=batch_first).double()
    g = GatedGRU(3, 7, num_layers=2, batch_first=batch_first, implementation=impl).double()
    _copy(ref, g)
    x = torch.randn(4, 9, 3, dtype=torch.float64) if batch_first else torch.randn(9, 4, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, 7, dtype=torch.float64)
    o1, h1 = ref(x, h0)
    o2, h2 = g(x, h0)
    torch.testing.assert_close(o2, o1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, h1, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad((o1 ** 2).sum() + h1.sum(), list(ref.parameters()))
    g2 = torch.autograd.grad((o2 ** 2).sum() + h2.sum(), list(g.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_standard_lstm_equals_nn_lstm_float32():
    torch.manual_seed(1)
    ref = torch.nn.LSTM(3, 6)
    g = GatedLSTM(3, 6, implementation="reference")
    _copy(ref, g)
    x = torch.randn(12, 2, 3)
    o1, (h1, c1) = ref(x)
    o2, (h2, c2) = g(x)
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c2, c1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gate", [g for g in ALL if get_mechanism(g).fused_mode])
def test_fused_equals_reference(gate):
    torch.manual_seed(2)
    m = GatedGRU(3, 8, gate=gate).double()
    x = torch.randn(15, 4, 3, dtype=torch.float64)
    assert m.resolved_implementation() == "fused"
    o1, h1 = m(x)
    g1 = torch.autograd.grad(o1.square().sum(), list(m.parameters()))
    m.implementation = "reference"
    o2, h2 = m(x)
    g2 = torch.autograd.grad(o2.square().sum(), list(m.parameters()))
    torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gate", ALL)
@pytest.mark.parametrize("cls", [GatedGRU, GatedLSTM])
def test_every_mechanism_runs_with_finite_gradients(gate, cls):
    torch.manual_seed(3)
    m = cls(2, 16, gate=gate, batch_first=True)
    out, _ = m(torch.randn(3, 6, 2))
    assert out.shape == (3, 6, 16)
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_parameter_counts():
    H, I, C = 32, 5, 16
    std_gru = sum(p.numel() for p in torch.nn.GRU(I, H).parameters())
    std_lstm = sum(p.numel() for p in torch.nn.LSTM(I, H).parameters())
    for gate in ALL:
        n_lstm = sum(p.numel() for p in GatedLSTM(I, H, gate=gate).parameters())
        n_gru = sum(p.numel() for p in GatedGRU(I, H, gate=gate).parameters())
        master = 2 * (H // C) * (I + H + 2) if gate in ("OM", "UM") else 0
        assert n_lstm == std_lstm + master, gate
        refine_rows = H * (I + H + 2) if gate in ("R", "UR", "OR") else 0
        assert n_gru == std_gru + master + refine_rows, gate
    with pytest.raises(ValueError, match="master_chunk"):
        GatedGRU(I, 30, gate="OM")


@settings(max_examples=200, deadline=None)
@given(f=st.floats(0, 1), r=st.floats(0, 1))
def test_refine_identity_and_bounds(f, r):
    ft, rt = torch.tensor(f, dtype=torch.float64), torch.tensor(r, dtype=torch.float64)
    g = refine(ft, rt).item()
    assert g == pytest.approx(r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2, abs=1e-12)
    assert f * f - 1e-12 <= g <= 1 - (1 - f) ** 2 + 1e-12
    # f ± α(f) band with α = f(1 - f) (papers/002 §2.3)
    assert g == pytest.approx(f + f * (1 - f) * (2 * r - 1), abs=1e-12)


def test_cumax_properties():
    x = torch.randn(50, 40, dtype=torch.float64)
    c = cumax(x)
    assert (c.diff(dim=-1) >= 0).all() and (c >= 0).all() and (c <= 1 + 1e-12).all()
    torch.testing.assert_close(c[:, -1], torch.ones(50, dtype=torch.float64))


def test_ugi_and_chrono_distributions():
    g = torch.Generator().manual_seed(0)
    d = 4000
    u = torch.sigmoid(ugi_bias(d, g).double()).numpy()
    lo, hi = 1 / d, 1 - 1 / d
    assert stats.kstest(u, stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue > 0.01
    # a wrong law (e.g. sigmoid of a standard normal) must be rejected by the same test
    assert stats.kstest(torch.sigmoid(torch.randn(d, generator=g)).numpy(), stats.uniform(lo, hi - lo).cdf).pvalue < 1e-6
    tmax = 200.0
    t = torch.exp(chrono_bias(d, tmax, g).double()).numpy()
    assert stats.kstest(t, stats.uniform(loc=1, scale=tmax - 2).cdf).pvalue > 0.01


def test_layer_initialisers():
    torch.manual_seed(0)
    m = GatedLSTM(2, 64, gate="C", chrono_tmax=50.0)
    b = m.bias_ih_l0
    blocks = m.gate_blocks()
    f, i = b[blocks["forget"]], b[blocks["input"]]
    torch.testing.assert_close(i, -f)
    assert (f >= 0).all() and (f <= math.log(49) + 1e-6).all()
    assert (m.bias_hh_l0[blocks["forget"]] == 0).all()
    ur = GatedGRU(2, 64, gate="UR")
    bl = ur.gate_blocks()
    torch.testing.assert_close(ur.bias_ih_l0[bl["refine"]], -ur.bias_ih_l0[bl["update"]])
    std = GatedGRU(2, 8)
    assert (std.bias_ih_l0[std.gate_blocks()["update"]] == 1).all()
    # the same initialisers work on torch's own layers
    gru = torch.nn.GRU(2, 8)
    constant_(gru, 1.0)
    assert (gru.bias_ih_l0[8:16] == 1).all() and (gru.bias_hh_l0[8:16] == 0).all()
    lstm = torch.nn.LSTM(2, 8)
    chrono_(lstm, tmax=20.0)
    torch.testing.assert_close(lstm.bias_ih_l0[:8], -lstm.bias_ih_l0[8:16])
    ugi_(gru)
    assert (gru.bias_ih_l0[8:16] != 1).all()
    with pytest.raises(ValueError, match="block must be one of"):
        set_bias(gru, "forget", 0.0)


@pytest.mark.parametrize("gate", LEAKY)
def test_bias_for_decay_gives_the_physical_decay(gate):
    # With every input and recurrent weight of the decay path zero, the effective gate equals z.
    taus = torch.logspace(0, 3, 6, dtype=torch.float64)
    m = GatedGRU(1, 6, gate=gate, implementation="reference").double()
    with torch.no_grad():
        for p in (m.weight_ih_l0, m.weight_hh_l0, m.bias_hh_l0):
            p.zero_()
        m.bias_ih_l0.zero_()
    physical_tau_(m, taus, 1.0)
    stats_ = gate_means(m, torch.randn(5, 2, 1, dtype=torch.float64))
    torch.testing.assert_close(stats_["decay_gate"], decay(taus, 1.0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(stats_["timescale_steps"], 1 / (1 - decay(taus, 1.0)), rtol=1e-9, atol=0)


def test_non_leaky_mechanisms_refuse_decay_bias():
    for gate in ("O", "OM", "UM", "OR"):
        with pytest.raises(ValueError, match="no per-unit decay bias"):
            get_mechanism(gate).bias_for_decay(torch.tensor([0.5]))


def test_freeze_biases_holds_under_sgd_and_keeps_fast_path():
    torch.manual_seed(0)
    m = GatedGRU(2, 8, gate="U")
    handle = freeze_biases(m, ["r", "z"], 0.0)
    before = m.bias_ih_l0.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        out, _ = m(torch.randn(5, 3, 2))
        out.square().sum().backward()
        opt.step()
    assert m.resolved_implementation() == "fused"
    assert torch.equal(m.bias_ih_l0[:16], torch.zeros(16))
    assert torch.equal(m.bias_hh_l0[:16], torch.zeros(16))
    assert not torch.equal(m.bias_ih_l0[16:], before[16:])
    handle.remove()
    out, _ = m(torch.randn(5, 3, 2))
    out.square().sum().backward()
    assert m.bias_ih_l0.grad[:16].abs().sum() > 0


def test_gate_means_match_manual_gru():
    torch.manual_seed(4)
    m = GatedGRU(2, 5, batch_first=True).double()
    x = torch.randn(3, 7, 2, dtype=torch.float64)
    H = 5
    h = torch.zeros(3, H, dtype=torch.float64)
    zs = []
    for t in range(7):
        gi = x[:, t] @ m.weight_ih_l0.T + m.bias_ih_l0
        gh = h @ m.weight_hh_l0.T + m.bias_hh_l0
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = z * h + (1 - z) * n
        zs.append(z)
    torch.testing.assert_close(gate_means(m, x)["decay_gate"], torch.stack(zs).mean((0, 1)))
    norms = decay_weight_norms(m)
    assert norms["W_h_decay_l0"] == pytest.approx(m.weight_hh_l0[H:2 * H].norm().item())


def test_bad_arguments():
    with pytest.raises(ValueError, match="gate must be one of"):
        GatedGRU(1, 4, gate="XYZ")
    with pytest.raises(ValueError, match="implementation='torch'"):
        GatedGRU(1, 4, gate="U", implementation="torch")
    with pytest.raises(ValueError, match="input feature size"):
        GatedGRU(3, 4)(torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match="h0 must have shape"):
        GatedGRU(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="hidden_size"):
        GatedGRU(3, 0)


def test_seeded_init_is_deterministic():
    a, b = GatedGRU(3, 16, gate="UR", seed=7), GatedGRU(3, 16, gate="UR", seed=7)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
