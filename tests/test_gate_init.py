"""gates.init: initialisers and bias freezing on gates layers and on torch's own GRU/LSTM."""
import math

import pytest
import torch
from scipy import stats
from torch.nn.utils import parametrize

from gates import GatedGRU, GatedLSTM
from gates import functional as F
from gates.init import (chrono, chrono_, constant_, freeze_biases, layer_blocks, orthogonal_hh_, physical_tau,
                        physical_tau_, set_bias, ugi_)
from soensim.timescales import decay, tau_to_bias

D = torch.float64


def test_layer_blocks_of_torch_layers():
    assert list(layer_blocks(torch.nn.GRU(2, 5))) == ["reset", "update", "candidate"]
    assert layer_blocks(torch.nn.LSTM(2, 5))["forget"] == slice(5, 10)
    assert layer_blocks(torch.nn.GRUCell(2, 5))["candidate"] == slice(10, 15)
    assert "refine" in layer_blocks(GatedGRU(2, 5, gate="UR"))
    with pytest.raises(ValueError, match="GatedGRU/GatedLSTM or torch.nn.GRU"):
        layer_blocks(torch.nn.RNN(2, 5))


@pytest.mark.parametrize("make", [lambda: torch.nn.GRU(2, 8, num_layers=2), lambda: torch.nn.GRUCell(2, 8),
                                  lambda: torch.nn.GRU(2, 8, bidirectional=True),
                                  lambda: GatedGRU(2, 8, num_layers=2, gate="U")])
def test_constant_on_any_gru(make):
    m = make()
    constant_(m, 1.0)
    n = 0
    for name, p in m.named_parameters():
        if name.startswith("bias_ih"):
            assert (p[8:16] == 1).all()
            n += 1
        if name.startswith("bias_hh"):
            assert (p[8:16] == 0).all()
    assert n >= 1
    set_bias(m, "r", -2.0)
    assert all((p[:8] == -2).all() for name, p in m.named_parameters() if name.startswith("bias_ih"))


def test_constant_on_lstm_and_errors():
    m = torch.nn.LSTM(2, 8)
    constant_(m)  # +1 on the forget gate
    assert (m.bias_ih_l0[8:16] == 1).all() and (m.bias_hh_l0[8:16] == 0).all()
    with pytest.raises(ValueError, match="block must be one of"):
        set_bias(torch.nn.GRU(2, 8), "forget", 0.0)
    with pytest.raises(ValueError, match="no biases"):
        constant_(torch.nn.GRU(2, 8, bias=False))
    with pytest.raises(ValueError, match=r"values must be a number, \(8,\) or \(1, 8\)"):
        set_bias(torch.nn.GRU(2, 8), "z", torch.zeros(7))


def test_ugi_on_nn_lstm_is_uniform():
    g = torch.Generator().manual_seed(0)
    H = 3000
    m = torch.nn.LSTM(1, H)
    ugi_(m, g)
    f = m.bias_ih_l0[H:2 * H].detach().double()
    u = torch.sigmoid(f).numpy()
    assert stats.kstest(u, stats.uniform(loc=1 / H, scale=1 - 2 / H).cdf).pvalue > 1e-3
    assert torch.equal(m.bias_ih_l0[:H], -m.bias_ih_l0[H:2 * H])  # b_i = -b_f
    assert (m.bias_hh_l0[:2 * H] == 0).all()
    ur = GatedGRU(2, 16, gate="R")
    ugi_(ur)  # on a refine layer: b_r = -b_f (papers/002 appendix A)
    bl = ur.gate_blocks()
    assert torch.equal(ur.bias_ih_l0[bl["refine"]], -ur.bias_ih_l0[bl["update"]])


def test_chrono_on_nn_gru_is_log_uniform():
    g = torch.Generator().manual_seed(1)
    H, tmax = 3000, 100.0
    m = torch.nn.GRU(1, H, num_layers=2)
    chrono_(m, tmax, g)
    t = torch.exp(m.bias_ih_l0[H:2 * H].detach().double()).numpy()
    assert stats.kstest(t, stats.uniform(loc=1, scale=tmax - 2).cdf).pvalue > 1e-3
    assert not torch.equal(m.bias_ih_l0[H:2 * H], m.bias_ih_l1[H:2 * H])
    lstm = torch.nn.LSTM(1, 8)
    chrono(lstm)  # default T_max = hidden size (at least 3)
    assert torch.equal(lstm.bias_ih_l0[:8], -lstm.bias_ih_l0[8:16])
    assert (lstm.bias_ih_l0[8:16] <= math.log(7) + 1e-6).all()


def test_physical_tau_on_nn_gru_and_gated_layers():
    taus = torch.tensor([10.0, 250.0, 1000.0], dtype=D) * 1e-9
    dt = 0.1e-9
    m = torch.nn.GRU(2, 3).double()
    vals = physical_tau_(m, taus, dt)
    torch.testing.assert_close(m.bias_ih_l0[3:6], tau_to_bias(taus, dt), rtol=0, atol=0)
    torch.testing.assert_close(m.bias_ih_l0[3:6], torch.tensor([4.60, 7.82, 9.21], dtype=D), rtol=0, atol=5e-3)
    assert list(vals) == ["update"]
    sst = GatedGRU(2, 3, gate="SST").double()
    physical_tau(sst, taus, dt)
    torch.testing.assert_close(sst.bias_ih_l0[3:6], tau_to_bias(2 * taus, dt), rtol=0, atol=0)
    lstm = GatedLSTM(2, 3, gate="UR", num_layers=2).double()
    per_layer = torch.stack([taus, 2 * taus])
    physical_tau_(lstm, per_layer, dt)
    bl = lstm.gate_blocks()
    torch.testing.assert_close(lstm.bias_ih_l1[bl["forget"]], tau_to_bias(2 * taus, dt), rtol=0, atol=0)
    assert (lstm.bias_ih_l0[bl["input"]] == 0).all()  # refine gate at r = 1/2
    with pytest.raises(ValueError, match="no per-unit decay bias"):
        physical_tau_(GatedGRU(2, 16, gate="O"), taus.repeat(6)[:16], dt)


@pytest.mark.parametrize("gate", ["-", "C", "U", "R", "UR", "SST"])
def test_physical_tau_gives_the_decay_in_the_reference_step(gate):
    # zero weights and every other bias zero: the effective decay gate equals exp(-dt/tau)
    H = 6
    taus = torch.logspace(0, 3, H, dtype=D)
    m = GatedGRU(1, H, gate=gate).double()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    physical_tau_(m, taus, 1.0)
    _, gates = F.gru_step(m.mechanism, m.bias_ih_l0.expand(2, -1), torch.randn(2, H, dtype=D), m.weight_hh_l0,
                          m.bias_hh_l0, m._rows)
    torch.testing.assert_close(gates["decay_gate"][0], decay(taus, 1.0), rtol=1e-12, atol=1e-15)


def test_orthogonal_on_nn_gru():
    m = torch.nn.GRU(2, 16, num_layers=2).double()
    orthogonal_hh_(m, torch.Generator().manual_seed(0))
    for k in range(2):
        w = getattr(m, f"weight_hh_l{k}")
        for sl in layer_blocks(m).values():
            torch.testing.assert_close(w[sl] @ w[sl].T, torch.eye(16, dtype=D), rtol=0, atol=1e-10)


def _sgd_steps(m, steps=3, lr=0.5, opt=None):
    opt = opt or torch.optim.SGD(m.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        out, _ = m(torch.randn(5, 3, 2))
        out.square().sum().backward()
        opt.step()


@pytest.mark.parametrize("make", [lambda: GatedGRU(2, 8, gate="U"), lambda: GatedGRU(2, 8),
                                  lambda: torch.nn.GRU(2, 8, num_layers=2)])
def test_freeze_biases_holds_under_sgd_and_keeps_path(make):
    torch.manual_seed(0)
    m = make()
    path = getattr(m, "resolved_implementation", lambda: None)()
    handle = freeze_biases(m, {"r": 0.0, "z": torch.linspace(-1, 1, 8)})
    assert set(handle.blocks) == {"reset", "update"} and handle.active
    before = m.bias_ih_l0.detach().clone()
    _sgd_steps(m)
    assert getattr(m, "resolved_implementation", lambda: None)() == path
    assert torch.equal(m.bias_ih_l0[:8], torch.zeros(8))
    assert torch.equal(m.bias_ih_l0[8:16], torch.linspace(-1, 1, 8))
    assert torch.equal(m.bias_hh_l0[:16], torch.zeros(16))
    assert not torch.equal(m.bias_ih_l0[16:], before[16:])  # the candidate bias still trains
    handle.remove()
    assert not handle.active
    m.zero_grad()
    out, _ = m(torch.randn(5, 3, 2))
    out.square().sum().backward()
    assert m.bias_ih_l0.grad[:16].abs().sum() > 0


def test_freeze_keeps_current_effective_value_and_weight_decay_caveat():
    torch.manual_seed(1)
    m = GatedLSTM(2, 6)
    eff = (m.bias_ih_l0 + m.bias_hh_l0).detach().clone()
    freeze_biases(m, ["f", "i"])  # value None: keep the current effective values
    fi = slice(0, 12)
    assert torch.equal(m.bias_hh_l0[fi], torch.zeros(12)) and torch.allclose(m.bias_ih_l0[fi], eff[fi])
    kept = m.bias_ih_l0[fi].detach().clone()
    # AdamW without weight decay on the biases keeps them ...
    biases = [p for n, p in m.named_parameters() if n.startswith("bias")]
    weights = [p for n, p in m.named_parameters() if n.startswith("weight")]
    opt = torch.optim.AdamW([{"params": weights}, {"params": biases, "weight_decay": 0.0}], lr=0.1,
                            weight_decay=0.5)
    _sgd_steps(m, opt=opt)
    assert torch.equal(m.bias_ih_l0[fi], kept)
    # ... decoupled weight decay on them still moves them (the documented caveat)
    _sgd_steps(m, opt=torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.5))
    assert not torch.equal(m.bias_ih_l0[fi], kept)


def test_init_refuses_parametrized_layers():
    from soensim import HardwareProfile
    from soensim.constraints import constrain

    m = GatedGRU(2, 8, gate="U")
    constrain(m, HardwareProfile.preset("soen-dendrite"))
    assert parametrize.is_parametrized(m, "bias_ih_l0")
    with pytest.raises(ValueError, match="parametrized"):
        freeze_biases(m, {"z": 0.0})
    with pytest.raises(ValueError, match="parametrized"):
        constant_(m)
