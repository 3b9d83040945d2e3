"""gates.layers: GatedGRU/GatedLSTM against torch.nn.GRU/LSTM, every path, every mechanism."""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn.utils import parametrize

import gates.layers as L
from gates import GATES, GatedGRU, GatedLSTM, build_layer
from gates.mechanisms import get_mechanism
from soensim.layouts import layout

ALL = list(GATES)
FUSED = [g for g in ALL if L.fused_available("gru", GATES[g].fused_mode)]
#: The compiled CPU kernel loads in this process (else the fused path runs the generic backend).
HAS_CPP = L.backend_for("cpu", torch.float64) == "cpp"
GRU_PATHS = ["auto", "torch", "reference", "fused"]
D = torch.float64


def _copy(src, dst):
    dst.load_state_dict(src.state_dict())


def _grads(module, out, h, extra=()):
    loss = (out ** 2).sum() + (h[0] if isinstance(h, tuple) else h).sin().sum()
    if isinstance(h, tuple):
        loss = loss + h[1].cos().sum()
    return torch.autograd.grad(loss, list(module.parameters()) + list(extra))


@pytest.mark.parametrize("impl", GRU_PATHS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_standard_gru_equals_nn_gru_float64(impl, batch_first):
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 7, num_layers=2, batch_first=batch_first).double()
    g = GatedGRU(3, 7, num_layers=2, batch_first=batch_first, implementation=impl).double()
    _copy(ref, g)
    shape = (4, 9, 3) if batch_first else (9, 4, 3)
    x = torch.randn(*shape, dtype=D, requires_grad=True)
    h0 = torch.randn(2, 4, 7, dtype=D, requires_grad=True)
    o1, h1 = ref(x, h0)
    o2, h2 = g(x, h0)
    torch.testing.assert_close(o2, o1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, h1, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(ref, o1, h1, (x, h0)), _grads(g, o2, h2, (x, h0)), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", GRU_PATHS)
def test_standard_gru_equals_nn_gru_float32(impl):
    torch.manual_seed(1)
    ref = torch.nn.GRU(5, 16, num_layers=3, batch_first=True)
    g = GatedGRU(5, 16, num_layers=3, batch_first=True, implementation=impl)
    _copy(ref, g)
    x = torch.randn(6, 30, 5)
    h0 = torch.randn(3, 6, 16)
    o1, h1 = ref(x, h0)
    o2, h2 = g(x, h0)
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h2, h1, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(ref, o1, h1), _grads(g, o2, h2), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["auto", "torch", "reference"])
@pytest.mark.parametrize("dtype, tol", [(D, 1e-12), (torch.float32, 1e-5)])
def test_standard_lstm_equals_nn_lstm(impl, dtype, tol):
    torch.manual_seed(2)
    ref = torch.nn.LSTM(3, 6, num_layers=2, batch_first=True).to(dtype)
    g = GatedLSTM(3, 6, num_layers=2, batch_first=True, implementation=impl).to(dtype)
    _copy(ref, g)
    x = torch.randn(2, 12, 3, dtype=dtype)
    hc = (torch.randn(2, 2, 6, dtype=dtype), torch.randn(2, 2, 6, dtype=dtype))
    o1, s1 = ref(x, hc)
    o2, s2 = g(x, hc)
    torch.testing.assert_close(o2, o1, rtol=tol, atol=tol)
    torch.testing.assert_close(s2[1], s1[1], rtol=tol, atol=tol)
    for a, b in zip(_grads(ref, o1, s1), _grads(g, o2, s2), strict=True):
        torch.testing.assert_close(b, a, rtol=10 * tol, atol=tol)


def test_unbatched_input_matches_nn():
    torch.manual_seed(3)
    for ref, g in ((torch.nn.GRU(2, 5, 2), GatedGRU(2, 5, 2, implementation="reference")),
                   (torch.nn.LSTM(2, 5, 2), GatedLSTM(2, 5, 2, implementation="reference"))):
        _copy(ref, g)
        x = torch.randn(7, 2)
        o1, s1 = ref(x)
        o2, s2 = g(x)
        assert o2.shape == (7, 5)
        torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
    g = GatedGRU(2, 5, 2)
    o, h = g(torch.randn(7, 2), torch.zeros(2, 5))
    assert o.shape == (7, 5) and h.shape == (2, 5)


@pytest.mark.skipif(not HAS_CPP, reason="the compiled CPU kernel does not build here (generic backend: see below)")
@pytest.mark.parametrize("gate", FUSED)
def test_fused_equals_reference(gate):
    torch.manual_seed(4)
    m = GatedGRU(3, 8, num_layers=2, gate=gate, master_chunk=4, seed=1).double()
    assert m.resolved_implementation() == "fused" and L.backend_for("cpu", D) == "cpp"
    x = torch.randn(15, 4, 3, dtype=D)
    h0 = torch.randn(2, 4, 8, dtype=D)
    o1, h1 = m(x, h0)
    g1 = _grads(m, o1, h1)
    m.implementation = "reference"
    o2, h2 = m(x, h0)
    g2 = _grads(m, o2, h2)
    torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gate", ALL)
@pytest.mark.parametrize("cls", [GatedGRU, GatedLSTM])
def test_every_mechanism_runs_with_finite_gradients(gate, cls):
    torch.manual_seed(5)
    m = cls(2, 32, num_layers=2, gate=gate, batch_first=True, dropout=0.1)  # 2 master units at C = 16
    x = torch.randn(3, 6, 2, requires_grad=True)
    out, state = m(x)
    assert out.shape == (3, 6, 32)
    hn = state[0] if isinstance(state, tuple) else state
    assert hn.shape == (2, 3, 32) and torch.isfinite(out).all()
    (out.square().mean() + hn.sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_parameter_counts():
    I, H, C = 5, 32, 16
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    std_gru, std_lstm = n(torch.nn.GRU(I, H)), n(torch.nn.LSTM(I, H))
    assert std_gru == 3 * H * (I + H + 2) and std_lstm == 4 * H * (I + H + 2)
    master = 2 * (H // C) * (I + H + 2)  # two H/C-row blocks, each with W_ih, W_hh rows and two biases
    for gate in ALL:
        lstm, gru = n(GatedLSTM(I, H, gate=gate)), n(GatedGRU(I, H, gate=gate))
        if gate in ("OM", "UM"):
            assert lstm == std_lstm + master, gate
            assert gru == std_gru + master, gate
        elif gate in ("R", "UR", "OR"):
            assert lstm == std_lstm, gate  # refine gate reuses the input block (input tied to 1 - g)
            assert gru == std_gru + H * (I + H + 2), gate  # the GRU gets its own refine block
        else:
            assert lstm == std_lstm and gru == std_gru, gate
    # +1/C of the main gates' parameters on the LSTM (Gu et al. 2020, arXiv:1910.09890, §2.6)
    assert n(GatedLSTM(I, H, gate="OM")) - std_lstm == std_lstm * 2 / (4 * C)
    assert n(GatedLSTM(I, 64, gate="UM", master_chunk=8)) == n(torch.nn.LSTM(I, 64)) + 2 * 8 * (I + 64 + 2)
    with pytest.raises(ValueError, match="master_chunk"):
        GatedGRU(I, 30, gate="OM")
    GatedGRU(I, 30, gate="OM", master_chunk=10)
    with pytest.warns(UserWarning, match="one master unit"):
        GatedGRU(I, 16, gate="OM")  # cumax over one unit is constant: the layer cannot learn
    GatedGRU(I, 30, gate="U")  # non-master gates do not care about C


def test_state_dict_is_nn_compatible():
    assert GatedGRU(3, 4, 2).state_dict().keys() == torch.nn.GRU(3, 4, 2).state_dict().keys()
    assert GatedLSTM(3, 4, bias=False).state_dict().keys() == torch.nn.LSTM(3, 4, bias=False).state_dict().keys()


def test_default_init():
    H = 64
    for gate in ALL:
        for cls in (GatedGRU, GatedLSTM):
            m = cls(3, H, num_layers=2, gate=gate, seed=0)
            bound = 1 / math.sqrt(H)
            blocks = m.layout().blocks
            written = m.mechanism.init_biases(
                {b: torch.zeros(sl.stop - sl.start, dtype=D) for b, sl in blocks.items()})
            for k in range(2):
                for name in ("weight_ih", "weight_hh"):
                    w = getattr(m, f"{name}_l{k}")
                    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
                b_ih, b_hh = getattr(m, f"bias_ih_l{k}"), getattr(m, f"bias_hh_l{k}")
                for b, sl in blocks.items():
                    if b in written:
                        assert (b_hh[sl] == 0).all(), (gate, b)
                    else:
                        assert b_ih[sl].abs().max() <= bound and b_hh[sl].abs().max() <= bound
    gru = GatedGRU(2, 8)
    assert (gru.bias_ih_l0[8:16] == 1).all() and (gru.bias_hh_l0[8:16] == 0).all()
    lstm = GatedLSTM(2, 8)
    assert (lstm.bias_ih_l0[8:16] == 1).all() and (lstm.bias_hh_l0[8:16] == 0).all()
    ur = GatedGRU(2, 8, gate="UR", num_layers=2)
    bl = ur.layout().blocks
    for k in range(2):
        b = getattr(ur, f"bias_ih_l{k}")
        torch.testing.assert_close(b[bl["refine"]], -b[bl["update"]])
    assert not torch.equal(ur.bias_ih_l0[bl["update"]], ur.bias_ih_l1[bl["update"]])  # drawn per layer
    c = GatedLSTM(2, 8, gate="C", chrono_tmax=20.0)
    bl = c.layout().blocks
    torch.testing.assert_close(c.bias_ih_l0[bl["input"]], -c.bias_ih_l0[bl["forget"]])
    assert (c.bias_ih_l0[bl["forget"]] <= math.log(19) + 1e-6).all()


def test_orthogonal_hh_and_seed():
    m = GatedGRU(3, 16, gate="UR", orthogonal_hh=True, seed=7).double()
    for sl in m.layout().blocks.values():
        w = m.weight_hh_l0[sl]
        torch.testing.assert_close(w @ w.T, torch.eye(16, dtype=D), rtol=0, atol=1e-6)
    a, b = GatedGRU(3, 16, gate="UR", seed=7), GatedGRU(3, 16, gate="UR", seed=7)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    c = GatedGRU(3, 16, gate="UR", seed=8)
    assert not torch.equal(a.weight_hh_l0, c.weight_hh_l0)
    d = GatedGRU(3, 16, dtype=D)
    assert d.weight_hh_l0.dtype == D


def _expected_path(core, gate):
    fused = L.fused_available(core, GATES[gate].fused_mode)
    if gate == "-":
        return "fused" if fused and L.backend_for("cpu", torch.float32) == "cpp" else "torch"
    return "fused" if fused else "reference"


def test_dispatch():
    assert FUSED == ALL  # every mode has a fused GRU kernel
    for gate in ALL:
        m = GatedGRU(2, 32, gate=gate)
        assert m.resolved_implementation() == _expected_path("gru", gate), gate
        lstm = GatedLSTM(2, 32, gate=gate)
        assert lstm.resolved_implementation() == _expected_path("lstm", gate), gate
    assert GatedLSTM(2, 32, gate="UR").resolved_implementation() == "fused"
    assert GatedGRU(2, 32, bidirectional=True).resolved_implementation() == "torch"
    with pytest.raises(ValueError, match="implementation='torch' supports gate '-' only"):
        GatedGRU(1, 4, gate="U", implementation="torch")
    with pytest.raises(ValueError, match="implementation must be one of"):
        GatedGRU(1, 4, implementation="cuda")


def test_without_the_compiled_backend_standard_gate_uses_torch(monkeypatch):
    # the generic (torch-ops) recurrence is slower than oneDNN for the standard gate, so auto picks torch
    monkeypatch.setattr(L, "backend_for", lambda device, dtype: "generic")
    assert GatedGRU(2, 8).resolved_implementation() == "torch"
    assert GatedGRU(2, 8, gate="UR").resolved_implementation() == "fused"
    monkeypatch.setattr(L, "backend_for", lambda device, dtype: "cpp")
    assert GatedGRU(2, 8).resolved_implementation() == "fused"


class _Half(torch.nn.Module):
    def forward(self, w):
        return 0.5 * w


@pytest.mark.parametrize("impl", GRU_PATHS)
def test_parametrizations_are_honoured_on_every_path(impl):
    torch.manual_seed(6)
    m = GatedGRU(3, 6, implementation=impl).double()
    plain = GatedGRU(3, 6, implementation="reference").double()
    _copy(m, plain)
    with torch.no_grad():
        plain.weight_hh_l0.mul_(0.5)
    parametrize.register_parametrization(m, "weight_hh_l0", _Half())
    x = torch.randn(5, 2, 3, dtype=D)
    torch.testing.assert_close(m(x)[0], plain(x)[0], rtol=1e-12, atol=1e-12)
    m(x)[0].sum().backward()
    assert m.parametrizations.weight_hh_l0.original.grad is not None


def test_dropout_between_layers():
    torch.manual_seed(7)
    m = GatedGRU(2, 8, num_layers=2, gate="U", dropout=0.5)
    x = torch.randn(6, 3, 2)
    m.eval()
    a, b = m(x)[0], m(x)[0]
    assert torch.equal(a, b)
    m.train()
    assert not torch.allclose(m(x)[0], a)
    one = GatedGRU(2, 8, num_layers=1, gate="U", dropout=0.5, seed=0).train()
    assert torch.equal(one(x)[0], one(x)[0])  # no dropout after the last layer (as nn.GRU)


def test_bad_arguments():
    with pytest.raises(ValueError, match="gate must be one of"):
        GatedGRU(1, 4, gate="XYZ")
    with pytest.raises(ValueError, match="input feature size"):
        GatedGRU(3, 4)(torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match="h0 must have shape"):
        GatedGRU(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="c0 must have shape"):
        GatedLSTM(3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match="hidden_size"):
        GatedGRU(3, 0)
    with pytest.raises(ValueError, match="dropout"):
        GatedGRU(3, 4, dropout=1.0)
    with pytest.raises(ValueError, match="bidirectional=True and proj_size > 0 run on implementation='torch'"):
        GatedGRU(3, 4, bidirectional=True, gate="U")
    with pytest.raises(ValueError, match="bidirectional=True and proj_size > 0 run on implementation='torch'"):
        GatedLSTM(3, 4, proj_size=2, implementation="reference")
    with pytest.raises(ValueError, match="bidirectional=True and proj_size > 0 run on implementation='torch'"):
        GatedGRU(3, 4, bidirectional=True, implementation="fused")
    with pytest.raises(ValueError, match="proj_size is an LSTM option"):
        GatedGRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"proj_size must be an int in \[0, hidden_size=4\)"):
        GatedLSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match=r"input must be \(T, B, 3\)"):
        GatedGRU(3, 4)(torch.randn(2, 5, 2, 3))
    with pytest.raises(ValueError, match="cell must be one of"):
        build_layer("rnn", 1, 4)
    assert isinstance(build_layer("lstm", 1, 4, gate="UR"), GatedLSTM)
    assert "gate='UR'" in repr(build_layer("gru", 1, 4, gate="UR"))


def test_mechanism_is_bound_to_core():
    assert GatedGRU(2, 4, gate="R").mechanism == get_mechanism("R", "gru")
    assert GatedLSTM(2, 4, gate="R").mechanism == get_mechanism("R", "lstm")
    assert GatedGRU(2, 4).layout().decay_block == "update" and GatedLSTM(2, 4).layout().decay_block == "forget"


@pytest.mark.parametrize("gate", ALL)
@pytest.mark.parametrize("cls", [GatedGRU, GatedLSTM])
def test_layout_declares_the_mechanism_and_the_tensors(gate, cls):
    m = cls(3, 32, num_layers=2, gate=gate)
    lay = layout(m)
    mech = m.mechanism
    assert lay.core == mech.core and lay.mechanism == gate and lay.mode == mech.fused_mode
    assert lay.leaky == mech.leaky and (lay.decay is mech if mech.leaky else lay.decay is None)
    assert lay.refine_block == mech.refine_block and lay.decay_block == mech.decay_block
    assert list(lay.blocks) == list(mech.block_rows(32))
    names = [n for c in lay.cells for n in (c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh)]
    assert names == [n for n, _ in m.named_parameters()]
    assert all(p.shape[0] == lay.rows for _, p in m.named_parameters())
    lstm = layout(GatedLSTM(3, 8, num_layers=2, bidirectional=True, proj_size=4))
    assert [c.suffix for c in lstm.cells] == ["_l0", "_l0_reverse", "_l1", "_l1_reverse"]
    assert lstm.cells[3].weight_hr == "weight_hr_l1_reverse"


def test_the_generic_backend_runs_the_fused_path():
    """With SOENSIM_GRU_BACKEND=generic (a fresh process: the C++ library is not loaded) the
    standard gate runs on torch's kernel and the other fused modes on the generic recurrence,
    equal to the reference path."""
    script = textwrap.dedent("""
        import torch
        import gates.layers as L
        from gates import GATES, GatedGRU
        D = torch.float64
        assert L.backend_for("cpu", D) == "generic" and L.backend_for("cpu", torch.float32) == "generic"
        assert GatedGRU(2, 8).resolved_implementation() == "torch"
        for gate in GATES:
            mode = GATES[gate].fused_mode
            if not L.fused_available("gru", mode):
                continue
            m = GatedGRU(3, 8, num_layers=2, gate=gate, master_chunk=4, seed=1,
                         implementation="auto" if gate != "-" else "fused")
            m = m.double()
            assert m.resolved_implementation() == "fused", gate
            x, h0 = torch.randn(11, 4, 3, dtype=D), torch.randn(2, 4, 8, dtype=D)
            runs = []
            for impl in ("fused", "reference"):
                m.implementation = impl
                o, h = m(x, h0)
                g = torch.autograd.grad((o ** 2).sum() + h.sin().sum(), list(m.parameters()))
                runs.append((o, h, g))
            (o1, h1, g1), (o2, h2, g2) = runs
            torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)
            for a, b in zip(g1, g2):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
            print("ok", gate)
    """)
    env = {**os.environ, "SOENSIM_GRU_BACKEND": "generic"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [w for g in FUSED for w in ("ok", g)]
