"""gates.init: initialisers on gates layers and on torch's own GRU/LSTM; bias freezing through
soensim.constraints.freeze_biases (the one way: a FrozenRows transform) for the software ablation."""
import math

import pytest
import torch
from scipy import stats
from torch.nn.utils import parametrize

from gates import GatedGRU, GatedLSTM, from_torch
from gates import functional as F
from gates.init import chrono, chrono_, constant_, orthogonal_hh_, physical_tau, physical_tau_, set_bias, ugi_
from soensim.constraints import freeze_biases
from soensim.layouts import layout
from soensim.timescales import decay, tau_to_bias

D = torch.float64


def test_blocks_come_from_the_layout_and_rnn_is_refused():
    assert list(layout(torch.nn.GRU(2, 5)).blocks) == ["reset", "update", "candidate"]
    assert layout(torch.nn.LSTM(2, 5)).blocks["forget"] == slice(5, 10)
    assert layout(torch.nn.GRUCell(2, 5)).blocks["candidate"] == slice(10, 15)
    assert "refine" in layout(GatedGRU(2, 5, gate="UR")).blocks
    cell = torch.nn.GRUCell(2, 5)
    set_bias(cell, "n", 0.25)  # the candidate rows 10:15 of a cell
    assert (cell.bias_ih[10:15] == 0.25).all() and (cell.bias_hh[10:15] == 0).all()
    with pytest.raises(TypeError, match="no gate to hold a time constant"):
        constant_(torch.nn.RNN(2, 5))


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
    ugi_(ur)  # on a refine layer: b_r = -b_f (Gu et al. 2020, arXiv:1910.09890, appendix A)
    bl = ur.layout().blocks
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
    bl = lstm.layout().blocks
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
        for sl in layout(m).blocks.values():
            torch.testing.assert_close(w[sl] @ w[sl].T, torch.eye(16, dtype=D), rtol=0, atol=1e-10)


def _sgd_steps(m, steps=3, lr=0.5, opt=None):
    opt = opt or torch.optim.SGD(m.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        out, _ = m(torch.randn(5, 3, 2))
        out.square().sum().backward()
        opt.step()


@pytest.mark.parametrize("make", [lambda: GatedGRU(2, 8, gate="U"), lambda: GatedGRU(2, 8),
                                  lambda: from_torch(torch.nn.GRU(2, 8, num_layers=2))])
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


def test_freeze_keeps_current_effective_value_under_adamw_weight_decay():
    torch.manual_seed(1)
    m = GatedLSTM(2, 6)
    eff = (m.bias_ih_l0 + m.bias_hh_l0).detach().clone()
    freeze_biases(m, {"f": None, "i": None})  # value None: keep the current effective values
    fi = slice(0, 12)
    assert torch.equal(m.bias_hh_l0[fi], torch.zeros(12)) and torch.allclose(m.bias_ih_l0[fi], eff[fi])
    kept = m.bias_ih_l0[fi].detach().clone()
    # AdamW without weight decay on the biases keeps them ...
    biases = [p for n, p in m.named_parameters() if "bias" in n]  # the frozen ones: parametrizations.*.original
    weights = [p for n, p in m.named_parameters() if "bias" not in n]
    assert len(biases) == 2 and len(weights) == 2
    opt = torch.optim.AdamW([{"params": weights}, {"params": biases, "weight_decay": 0.0}], lr=0.1,
                            weight_decay=0.5)
    _sgd_steps(m, opt=opt)
    assert torch.equal(m.bias_ih_l0[fi], kept)
    # ... and so does decoupled weight decay on them: the rows are replaced in the forward pass
    _sgd_steps(m, opt=torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.5))
    assert torch.equal(m.bias_ih_l0[fi], kept) and torch.equal(m.bias_hh_l0[fi], torch.zeros(12))
    assert not torch.equal(m.bias_ih_l0[12:], eff[12:])  # the free rows moved


def test_adamw_weight_decay_cannot_move_frozen_rows():
    torch.manual_seed(2)
    m = GatedGRU(2, 8, gate="U")
    handle = freeze_biases(m, {"z": torch.linspace(-2, 2, 8), "r": 0.5})
    opt = torch.optim.AdamW(m.parameters(), lr=0.2, weight_decay=1.0)  # a large decay, on every tensor
    for _ in range(5):
        opt.zero_grad()
        out, h = m(torch.randn(6, 3, 2))
        (out.square().sum() + h.sum()).backward()
        opt.step()
    assert torch.equal(m.bias_ih_l0[8:16], torch.linspace(-2, 2, 8))
    assert torch.equal(m.bias_ih_l0[:8], torch.full((8,), 0.5))
    assert torch.equal(m.bias_hh_l0[:16], torch.zeros(16))
    # the forward pass sees the frozen values: a reference step with them written by hand agrees
    ref = GatedGRU(2, 8, gate="U", implementation="reference")
    with torch.no_grad():
        for name, _ in ref.named_parameters():
            getattr(ref, name).copy_(getattr(m, name))
    x = torch.randn(4, 2, 2)
    torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-6, atol=1e-6)
    assert set(handle.blocks) == {"update", "reset"}


def test_init_refuses_parametrized_layers():
    from soensim import HardwareProfile
    from soensim.constraints import constrain

    m = GatedGRU(2, 8, gate="U")
    constrain(m, HardwareProfile.preset("soen-dendrite"))
    assert parametrize.is_parametrized(m, "bias_ih_l0")
    with pytest.raises(ValueError, match="already constrained"):
        freeze_biases(m, {"z": 0.0})
    with pytest.raises(ValueError, match="parametrized"):
        constant_(m)
    with pytest.raises(ValueError, match="parametrized"):
        orthogonal_hh_(m)
    frozen = GatedGRU(2, 8)
    freeze_biases(frozen, {"z": 0.0})
    with pytest.raises(ValueError, match="parametrized"):
        ugi_(frozen)
    with pytest.raises(ValueError, match=r"convert it first with gates.convert"):
        freeze_biases(torch.nn.GRU(2, 8), {"z": 0.0})
