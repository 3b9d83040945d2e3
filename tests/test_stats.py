"""gates.stats: the opt-in gate recorder against manual computations."""
import pytest
import torch

import gates.layers as L
from gates import GatedGRU, GatedLSTM, GateRecorder
from gates.stats import decay_weight_norms, gate_means

D = torch.float64


def _manual_gru_gates(m, x, refine=False):
    """Per-step update (and effective) gates of a one-layer GRU written out by hand; x is (B, T, I)."""
    H = m.hidden_size
    bl = m.layout().blocks
    w_ih, w_hh, b_ih, b_hh = m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0
    h = torch.zeros(x.shape[0], H, dtype=x.dtype)
    fs, gs, rs = [], [], []
    for t in range(x.shape[1]):
        gi = x[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        a = lambda k, gi=gi, gh=gh: gi[:, bl[k]] + gh[:, bl[k]]  # noqa: E731
        r = torch.sigmoid(a("reset"))
        n = torch.tanh(gi[:, bl["candidate"]] + r * gh[:, bl["candidate"]])
        f = torch.sigmoid(a("update"))
        g = f
        if refine:
            rho = torch.sigmoid(a("refine"))
            g = 2 * rho * f + (1 - 2 * rho) * f * f
        h = g * h + (1 - g) * n
        fs.append(f)
        gs.append(g)
        rs.append(r)
    return torch.stack(fs), torch.stack(gs), torch.stack(rs)


@pytest.mark.parametrize("gate", ["-", "UR"])
def test_recorder_values_equal_manual_gru(gate):
    torch.manual_seed(0)
    m = GatedGRU(2, 5, batch_first=True, gate=gate).double()
    x = torch.randn(3, 7, 2, dtype=D)
    f, g, r = _manual_gru_gates(m, x, refine=gate == "UR")
    with GateRecorder(m) as rec:
        m(x)
    s = rec.stats()["l0"]
    torch.testing.assert_close(s["decay_gate"], g.mean((0, 1)), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(s["reset"], r.mean((0, 1)), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(s["input_gate"], 1 - g.mean((0, 1)), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(s["timescale_steps"], 1 / (1 - g.mean((0, 1))), rtol=1e-12, atol=0)
    if gate == "UR":
        torch.testing.assert_close(s["main"], f.mean((0, 1)), rtol=1e-12, atol=1e-14)
        assert s["refine"].shape == (5,)
    assert int(s["steps"]) == 21
    H = 5
    torch.testing.assert_close(s["W_h_decay"], m.weight_hh_l0[H:2 * H].detach().norm())
    torch.testing.assert_close(s["W_x_decay"], m.weight_ih_l0[H:2 * H].detach().norm())
    torch.testing.assert_close(s["W_h_decay_rows"], m.weight_hh_l0[H:2 * H].detach().norm(dim=1))
    # the old one-call helper gives the same
    gm = gate_means(m, x)
    torch.testing.assert_close(gm["decay_gate"], g.mean((0, 1)), rtol=1e-12, atol=1e-14)
    norms = decay_weight_norms(m)
    assert norms["W_h_decay_l0"] == pytest.approx(m.weight_hh_l0[H:2 * H].norm().item())


def test_recorder_lstm_and_master_shapes():
    torch.manual_seed(1)
    m = GatedLSTM(3, 32, num_layers=2, gate="UM", master_chunk=8)
    with GateRecorder(m) as rec:
        m(torch.randn(6, 4, 3))
    s = rec.stats()
    assert set(s) == {"l0", "l1"}
    for k in ("l0", "l1"):
        assert s[k]["decay_gate"].shape == (32,) and s[k]["output"].shape == (32,)
        assert s[k]["master_forget"].shape == (4,) and s[k]["master_input"].shape == (4,)
        assert ((s[k]["decay_gate"] >= 0) & (s[k]["decay_gate"] <= 1)).all()
        assert int(s[k]["steps"]) == 24


def test_recorder_lstm_values_equal_manual():
    torch.manual_seed(2)
    m = GatedLSTM(2, 4).double()
    x = torch.randn(5, 3, 2, dtype=D)
    h = c = torch.zeros(3, 4, dtype=D)
    fs = []
    for t in range(5):
        a = x[t] @ m.weight_ih_l0.T + m.bias_ih_l0 + h @ m.weight_hh_l0.T + m.bias_hh_l0
        i, f, gg, o = a.chunk(4, -1)
        i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
        c = f * c + i * torch.tanh(gg)
        h = o * torch.tanh(c)
        fs.append(f)
    with GateRecorder(m) as rec:
        m(x)
    torch.testing.assert_close(rec.stats()["l0"]["decay_gate"], torch.stack(fs).mean((0, 1)), rtol=1e-12, atol=1e-14)


def test_recorder_accumulates_over_calls_and_resets():
    torch.manual_seed(3)
    m = GatedGRU(2, 6, gate="U").double()
    x1, x2 = torch.randn(8, 2, 2, dtype=D), torch.randn(8, 3, 2, dtype=D)
    with GateRecorder(m) as rec:
        m(x1)
        m(x2)
    with GateRecorder(m) as both:
        m(torch.cat([x1, x2], dim=1))
    torch.testing.assert_close(rec.stats()["l0"]["decay_gate"], both.stats()["l0"]["decay_gate"],
                               rtol=1e-12, atol=1e-14)
    rec.reset()
    assert int(rec.stats()["l0"]["steps"]) == 0 and "decay_gate" not in rec.stats()["l0"]


def test_recording_changes_nothing_and_costs_nothing_when_off():
    torch.manual_seed(4)
    m = GatedGRU(2, 6, num_layers=2, gate="UR").double()
    model = torch.nn.Sequential()
    model.add_module("rnn", m)
    x = torch.randn(9, 4, 2, dtype=D)
    path = m.resolved_implementation()
    o1, _ = m(x)
    g1 = torch.autograd.grad(o1.square().sum(), list(m.parameters()))
    with GateRecorder(model) as rec:
        assert m._gate_recorder is rec
        o2, _ = m(x)
        g2 = torch.autograd.grad(o2.square().sum(), list(m.parameters()))
    torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert set(rec.stats()) == {"rnn.l0", "rnn.l1"}
    # off again: no recorder, no hooks, the fast path
    assert m._gate_recorder is None and not rec.active
    assert not m._forward_hooks and not m._forward_pre_hooks
    assert m.resolved_implementation() == path


def test_recorder_errors():
    with pytest.raises(ValueError, match="no GatedGRU/GatedLSTM"):
        GateRecorder(torch.nn.GRU(2, 3))
    m = GatedGRU(2, 3)
    with GateRecorder(m):
        with pytest.raises(RuntimeError, match="already recorded"):
            GateRecorder(m).start()
    with pytest.raises(ValueError, match="GatedGRU/GatedLSTM"):
        gate_means(torch.nn.GRU(2, 3), torch.randn(4, 1, 2))
    with pytest.raises(ValueError, match="unidirectional layers without proj_size"):
        GateRecorder(GatedGRU(2, 3, bidirectional=True))


def test_decay_weight_norms_on_nn_lstm():
    m = torch.nn.LSTM(2, 4)
    n = decay_weight_norms(m)
    assert n["W_h_decay_l0"] == pytest.approx(m.weight_hh_l0[4:8].norm().item())
    assert n["W_x_decay_l0"] == pytest.approx(m.weight_ih_l0[4:8].norm().item())
    bi = torch.nn.GRU(2, 4, bidirectional=True)  # every cell, by its tag; the decay rows z = 4:8
    n = decay_weight_norms(bi)
    assert set(n) == {"W_h_decay_l0", "W_x_decay_l0", "W_h_decay_l0_reverse", "W_x_decay_l0_reverse"}
    assert n["W_h_decay_l0_reverse"] == pytest.approx(bi.weight_hh_l0_reverse[4:8].norm().item())
    cell = torch.nn.LSTMCell(2, 4)
    assert decay_weight_norms(cell)["W_h_decay_cell"] == pytest.approx(cell.weight_hh[4:8].norm().item())


def test_recorder_is_independent_of_kernels(monkeypatch):
    monkeypatch.setattr(L, "fused_gru_recurrence", None)
    m = GatedGRU(2, 4, gate="SST")
    with GateRecorder(m) as rec:
        m(torch.randn(3, 2, 2))
    assert rec.stats()["l0"]["decay_gate"].shape == (4,)
