"""gates.mechanisms and gates.functional: the registry, activations, bias draws, and the
reference recurrences checked against the papers' equations written out by hand."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from gates import functional as F
from gates.mechanisms import (
    CHRONO_TMAX_PER_UNIT,
    GATES,
    chrono_bias,
    cumax,
    default_chrono_tmax,
    get_mechanism,
    refine,
    signed_squared_tanh,
    squared_sigmoid,
    ugi_bias,
)
from soensim.layouts import TORCH_BLOCKS, Decay
from soensim.timescales import decay, tau_to_bias

ALL = list(GATES)
LEAKY = ["-", "C", "U", "R", "UR", "SST", "SSTN"]
D = torch.float64


# --------------------------------------------------------------------------- registry
def test_registry_entries():
    assert ALL == ["-", "C", "O", "U", "R", "OM", "UM", "OR", "UR", "SST", "SSTN"]
    assert [g for g in ALL if GATES[g].leaky] == LEAKY
    want_mode = {"-": "sigmoid", "C": "sigmoid", "U": "sigmoid", "R": "refine", "UR": "refine", "SST": "sst", "SSTN": "sst_candidate",
                 "O": "cumax", "OM": "master_cumax", "UM": "master_sigmoid", "OR": "cumax_refine"}
    for g in ALL:
        m = GATES[g]
        assert m.name == g and m.description
        for core in ("gru", "lstm"):
            mc = get_mechanism(g, core)
            assert mc.fused_mode == want_mode[g], (g, core)  # one mode name on both cores
            assert isinstance(mc, Decay) and mc.decay_block == {"gru": "update", "lstm": "forget"}[core]
            assert mc.core == core
            rows = mc.block_rows(32)
            assert tuple(rows)[: len(TORCH_BLOCKS[core])] == TORCH_BLOCKS[core]
            assert tuple(rows)[len(TORCH_BLOCKS[core]):] == mc.extra_blocks
    assert get_mechanism("UR", "gru").extra_blocks == ("refine",) and get_mechanism("UR", "gru").refine_block == "refine"
    assert get_mechanism("UR", "lstm").extra_blocks == () and get_mechanism("UR", "lstm").refine_block == "input"
    assert get_mechanism("OM", "lstm").block_rows(64, 16) == {"input": 64, "forget": 64, "cell": 64, "output": 64,
                                                             "master_forget": 4, "master_input": 4}


def test_registry_errors():
    with pytest.raises(ValueError, match=r"gate must be one of \['-', 'C'"):
        get_mechanism("X")
    with pytest.raises(ValueError, match="core must be one of"):
        get_mechanism("-", "rnn")
    with pytest.raises(ValueError, match="master_chunk .* dividing hidden_size"):
        get_mechanism("UM").block_rows(30, 16)
    with pytest.raises(ValueError, match="no per-unit decay bias"):
        get_mechanism("O").bias_for_decay(0.5)
    for g in ("O", "OM", "UM", "OR"):
        with pytest.raises(ValueError, match="leaky gates: -, C, U, R, UR, SST, SSTN"):
            get_mechanism(g, "lstm").bias_for_tau(1.0, 0.1)
        with pytest.raises(ValueError, match="no per-unit decay bias"):
            get_mechanism(g).tau_for_bias(torch.zeros(3), 0.1)


# --------------------------------------------------------------------------- activations
@settings(max_examples=300, deadline=None)
@given(f=st.floats(0, 1), r=st.floats(0, 1))
def test_refine_identity_and_bounds(f, r):
    ft, rt = torch.tensor(f, dtype=D), torch.tensor(r, dtype=D)
    g = refine(ft, rt).item()
    assert g == pytest.approx(r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2, abs=1e-12)  # eq. 12
    assert g == pytest.approx(f + f * (1 - f) * (2 * r - 1), abs=1e-12)  # f ± α(f), α = f(1 - f)
    assert f * f - 1e-12 <= g <= 1 - (1 - f) ** 2 + 1e-12
    assert refine(ft, torch.tensor(0.5, dtype=D)).item() == pytest.approx(f, abs=1e-15)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 40)),
              elements=st.floats(-30, 30, allow_nan=False)))
def test_cumax_monotone_bounded_ends_at_one(a):
    c = cumax(torch.from_numpy(a))
    assert (c.diff(dim=-1) >= -1e-15).all()
    assert (c >= 0).all() and (c <= 1 + 1e-12).all()
    torch.testing.assert_close(c[..., -1], torch.ones(a.shape[0], dtype=D))


def test_sst_activations():
    x = torch.linspace(-8, 8, 1001, dtype=D)
    torch.testing.assert_close(squared_sigmoid(x), torch.sigmoid(x) ** 2)
    y = signed_squared_tanh(x)
    torch.testing.assert_close(y.abs(), torch.tanh(x) ** 2)
    assert torch.equal(torch.sign(y), torch.sign(x))  # the sign of tanh is kept
    assert (y > -1).all() and (y < 1).all() and torch.equal(y, -signed_squared_tanh(-x))
    for name, cand in (("SST", torch.tanh(x)), ("SSTN", y)):  # papers/000: only the gates are squared
        m = get_mechanism(name, "lstm")
        torch.testing.assert_close(m.gate(x), torch.sigmoid(x) ** 2)
        torch.testing.assert_close(m.plain_gate(x), torch.sigmoid(x) ** 2)
        torch.testing.assert_close(m.candidate(x), cand)


# --------------------------------------------------------------------------- bias draws
def test_ugi_distribution():
    g = torch.Generator().manual_seed(0)
    d = 4000
    u = torch.sigmoid(ugi_bias(d, g)).numpy()
    lo, hi = 1 / d, 1 - 1 / d
    assert u.min() >= lo - 1e-12 and u.max() <= hi + 1e-12
    assert stats.kstest(u, stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue > 1e-3
    # the same test rejects a wrong law (sigmoid of a standard normal)
    wrong = torch.sigmoid(torch.randn(d, generator=g, dtype=D)).numpy()
    assert stats.kstest(wrong, stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue < 1e-6
    # bounds from a given hidden size (master gates draw H/C values with d = H)
    u2 = torch.sigmoid(ugi_bias(3000, g, d=10)).numpy()
    assert u2.min() >= 0.1 - 1e-12 and u2.max() <= 0.9 + 1e-12
    assert stats.kstest(u2, stats.uniform(loc=0.1, scale=0.8).cdf).pvalue > 1e-3


def test_chrono_distribution():
    g = torch.Generator().manual_seed(1)
    tmax = 200.0
    t = torch.exp(chrono_bias(4000, tmax, g)).numpy()
    assert t.min() >= 1 - 1e-12 and t.max() <= tmax - 1 + 1e-9
    assert stats.kstest(t, stats.uniform(loc=1, scale=tmax - 2).cdf).pvalue > 1e-3
    # a plausible mistake, T log-uniform (b ~ U[0, log(T_max - 1)]), is rejected by the same test
    wrong = np.exp(np.random.default_rng(0).uniform(0, math.log(tmax - 1), 4000))
    assert stats.kstest(wrong, stats.uniform(loc=1, scale=tmax - 2).cdf).pvalue < 1e-6
    with pytest.raises(ValueError, match="chrono_tmax must be ≥ 2"):
        chrono_bias(3, 1.5)
    assert default_chrono_tmax(256) == CHRONO_TMAX_PER_UNIT * 256 and default_chrono_tmax(1) == 3.0


def _init(gate, core, H=64, tmax=None, seed=0):
    m = get_mechanism(gate, core)
    views = {n: torch.full((r,), math.nan, dtype=D) for n, r in m.block_rows(H).items()}
    written = m.init_biases(views, torch.Generator().manual_seed(seed), tmax)
    return views, written


@pytest.mark.parametrize("core", ["gru", "lstm"])
def test_init_biases_per_mechanism(core):
    f = "update" if core == "gru" else "forget"
    v, w = _init("-", core)
    assert w == {f} and (v[f] == 1).all()
    v, w = _init("SST", core)
    assert w == {f} and (v[f] == 1).all()
    v, w = _init("C", core, tmax=50.0)
    assert (v[f] >= 0).all() and (v[f] <= math.log(49) + 1e-12).all()
    v, w = _init("U", core)
    u = torch.sigmoid(v[f])
    assert (u >= 1 / 64 - 1e-12).all() and (u <= 1 - 1 / 64 + 1e-12).all()
    if core == "lstm":  # b_i = -b_f for chrono and UGI (Gu et al. 2020, arXiv:1910.09890, eq. 18, B.3)
        for gate in ("C", "U"):
            v, w = _init(gate, core)
            assert w == {"forget", "input"} and torch.equal(v["input"], -v["forget"])
    rb = "refine" if core == "gru" else "input"
    v, w = _init("UR", core)
    assert w == {f, rb} and torch.equal(v[rb], -v[f])  # appendix A: r = σ(L_r - b_f)
    v, w = _init("R", core)
    assert (v[f] == 1).all() and (v[rb] == 0).all()
    v, w = _init("OR", core)
    assert (v[f] == 0).all() and (v[rb] == 0).all()
    v, w = _init("OM", core)
    assert (v[f] == 1).all() and (v["master_forget"] == 0).all() and (v["master_input"] == 0).all()
    v, w = _init("UM", core)
    assert w == {f, "master_forget", "master_input"} and torch.equal(v["master_input"], -v["master_forget"])
    u = torch.sigmoid(v["master_forget"])
    assert (u >= 1 / 64 - 1e-12).all() and (u <= 1 - 1 / 64 + 1e-12).all()


# --------------------------------------------------------------------------- decay mapping
def _rest_gate(m, biases, H):
    """Effective decay gate of one reference step with zero input/weights and the given biases."""
    rows = m.block_rows(H)
    G = sum(rows.values())
    b = torch.zeros(G, dtype=D)
    start = 0
    for name, n in rows.items():
        if name in biases:
            b[start:start + n] = biases[name]
        start += n
    gi = b.expand(3, G)  # x W_ih^T + b_ih with W_ih = 0
    h = torch.randn(3, H, dtype=D)
    w_hh = torch.zeros(G, H, dtype=D)
    if m.core == "gru":
        _, gates = F.gru_step(m, gi, h, w_hh, None, rows)
    else:
        _, _, gates = F.lstm_step(m, gi, h, torch.randn(3, H, dtype=D), w_hh, None, rows)
    return gates["decay_gate"]


@pytest.mark.parametrize("core", ["gru", "lstm"])
@pytest.mark.parametrize("gate", LEAKY)
def test_bias_for_decay_reproduces_z(gate, core):
    m = get_mechanism(gate, core)
    H = 7
    taus = torch.logspace(-1, 4, H, dtype=D)
    z = decay(taus, 1.0)
    b = m.bias_for_decay(z)
    assert m.decay_block in b and all(v.dtype == D for v in b.values())
    if m.refine:
        assert torch.equal(b[m.refine_block], torch.zeros(H, dtype=D))
    g = _rest_gate(m, b, H)
    torch.testing.assert_close(g, z.expand(3, H), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(m.decay_for_bias(b[m.decay_block]), z, rtol=1e-12, atol=1e-15)
    # bias_for_tau: the same biases without forming z; SST: logit(√z) = tau_to_bias(2τ, dt)
    bt = m.bias_for_tau(taus, 1.0)
    for k in b:
        torch.testing.assert_close(bt[k], b[k], rtol=1e-9, atol=1e-9)
    want = tau_to_bias(2 * taus, 1.0) if gate in ("SST", "SSTN") else tau_to_bias(taus, 1.0)
    torch.testing.assert_close(bt[m.decay_block], want, rtol=0, atol=0)
    # tau_for_bias inverts it on the decay block, float64 whatever the bias dtype
    torch.testing.assert_close(m.tau_for_bias(bt[m.decay_block], 1.0), taus, rtol=1e-9, atol=0)
    back = m.tau_for_bias(bt[m.decay_block].float(), 0.5)
    assert back.dtype == D
    torch.testing.assert_close(back, taus / 2, rtol=1e-5, atol=0)  # the same bias at half the step: τ/2
    assert all(v.dtype == D for v in m.bias_for_tau(taus.float(), 1.0).values())
    assert torch.equal(m.bias_for_decay(0.5)[m.decay_block],
                       torch.logit(torch.tensor(math.sqrt(0.5) if gate in ("SST", "SSTN") else 0.5, dtype=D)))


# --------------------------------------------------------------------------- reference recurrences vs the equations
def _params(m, I, H, seed):
    g = torch.Generator().manual_seed(seed)
    rows = m.block_rows(H, 4)
    G = sum(rows.values())
    p = [torch.randn(G, I, generator=g, dtype=D) * 0.5, torch.randn(G, H, generator=g, dtype=D) * 0.5,
         torch.randn(G, generator=g, dtype=D) * 0.5, torch.randn(G, generator=g, dtype=D) * 0.5]
    return rows, p


def _blk(rows, t, name):
    """Rows (dim 0) of block ``name`` of a stacked weight or bias."""
    start = 0
    for k, n in rows.items():
        if k == name:
            return t[start:start + n]
        start += n
    raise KeyError(name)


@pytest.mark.parametrize("gate", ALL)
def test_lstm_step_equals_hand_written_equations(gate):
    """Gu et al. 2020 (arXiv:1910.09890): eq. 2-7 (standard), 12-15 and Listing 2 (refine), 19-23 (master), 28-29 (O), 34-37 (OR)."""
    m = get_mechanism(gate, "lstm")
    I, H, B = 3, 8, 5
    rows, (w_ih, w_hh, b_ih, b_hh) = _params(m, I, H, 1)
    g = torch.Generator().manual_seed(2)
    x, h, c = (torch.randn(B, n, generator=g, dtype=D) for n in (I, H, H))
    L = {k: x @ _blk(rows, w_ih, k).T + _blk(rows, b_ih, k) + h @ _blk(rows, w_hh, k).T + _blk(rows, b_hh, k)
         for k in rows}
    sq = gate in ("SST", "SSTN")
    sig = (lambda a: torch.sigmoid(a) ** 2) if sq else torch.sigmoid
    u = torch.tanh(L["cell"]) * torch.tanh(L["cell"]).abs() if gate == "SSTN" else torch.tanh(L["cell"])
    if gate in ("O", "OR"):
        f = torch.cumsum(torch.softmax(L["forget"], -1), -1)
    else:
        f = sig(L["forget"])
    if gate in ("R", "UR", "OR"):
        r = torch.sigmoid(L["input"])
        f = r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2
        i = 1 - f
    elif gate == "O":
        i = 1 - torch.cumsum(torch.softmax(L["input"], -1), -1)
    else:
        i = sig(L["input"])
    if gate in ("OM", "UM"):
        if gate == "OM":
            mf = torch.cumsum(torch.softmax(L["master_forget"], -1), -1)
            mi = 1 - torch.cumsum(torch.softmax(L["master_input"], -1), -1)
        else:
            mf, mi = torch.sigmoid(L["master_forget"]), torch.sigmoid(L["master_input"])
        mf, mi = mf.repeat_interleave(4, -1), mi.repeat_interleave(4, -1)  # chunk C = 4
        w = mf * mi
        f, i = f * w + (mf - w), i * w + (mi - w)
    c_want = f * c + i * u
    h_want = sig(L["output"]) * torch.tanh(c_want)
    h2, c2, gates = F.lstm_step(m, x @ w_ih.T + b_ih, h, c, w_hh, b_hh, rows)
    torch.testing.assert_close(c2, c_want, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(h2, h_want, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(gates["decay_gate"], f, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("gate", ALL)
def test_gru_step_equals_hand_written_equations(gate):
    """torch.nn.GRU form; decay gate z of the mechanism, input tied 1 - z (master: eq. 21-23 with i = 1 - f)."""
    m = get_mechanism(gate, "gru")
    I, H, B = 2, 8, 4
    rows, (w_ih, w_hh, b_ih, b_hh) = _params(m, I, H, 3)
    g = torch.Generator().manual_seed(4)
    x, h = torch.randn(B, I, generator=g, dtype=D), torch.randn(B, H, generator=g, dtype=D)
    gi = {k: x @ _blk(rows, w_ih, k).T + _blk(rows, b_ih, k) for k in rows}
    gh = {k: h @ _blk(rows, w_hh, k).T + _blk(rows, b_hh, k) for k in rows}
    sq = gate in ("SST", "SSTN")
    sig = (lambda a: torch.sigmoid(a) ** 2) if sq else torch.sigmoid
    r = sig(gi["reset"] + gh["reset"])
    a_n = gi["candidate"] + r * gh["candidate"]
    n = torch.tanh(a_n) * torch.tanh(a_n).abs() if gate == "SSTN" else torch.tanh(a_n)
    a_z = gi["update"] + gh["update"]
    z = torch.cumsum(torch.softmax(a_z, -1), -1) if gate in ("O", "OR") else sig(a_z)
    if m.refine:
        rho = torch.sigmoid(gi["refine"] + gh["refine"])
        z = 2 * rho * z + (1 - 2 * rho) * z ** 2
    i = 1 - z
    if m.master:
        a_mf, a_mi = gi["master_forget"] + gh["master_forget"], gi["master_input"] + gh["master_input"]
        if gate == "OM":
            mf, mi = torch.cumsum(torch.softmax(a_mf, -1), -1), 1 - torch.cumsum(torch.softmax(a_mi, -1), -1)
        else:
            mf, mi = torch.sigmoid(a_mf), torch.sigmoid(a_mi)
        mf, mi = mf.repeat_interleave(4, -1), mi.repeat_interleave(4, -1)
        w = mf * mi
        z, i = z * w + (mf - w), i * w + (mi - w)
    h_want = z * h + i * n
    h2, gates = F.gru_step(m, x @ w_ih.T + b_ih, h, w_hh, b_hh, rows)
    torch.testing.assert_close(h2, h_want, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(gates["decay_gate"], z, rtol=1e-13, atol=1e-14)
    assert set(gates) >= {"decay_gate", "input_gate", "reset"}


@pytest.mark.parametrize("gate", ["UR", "UM", "SST", "O"])
def test_sequences_unroll_the_step_and_gradcheck(gate):
    m = get_mechanism(gate, "gru")
    I, H, T, B = 2, 4, 5, 3
    rows, params = _params(m, I, H, 5)
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    h0 = torch.randn(B, H, dtype=D, requires_grad=True)
    seen = []
    out, hT = F.gru_sequence(m, x, h0, *params, rows, on_step=lambda gts: seen.append(gts["decay_gate"]))
    assert out.shape == (T, B, H) and torch.equal(out[-1], hT) and len(seen) == T
    h = h0
    for t in range(T):
        h, _ = F.gru_step(m, x[t] @ params[0].T + params[2], h, params[1], params[3], rows)
        torch.testing.assert_close(out[t], h, rtol=1e-13, atol=1e-14)
    ps = [p.requires_grad_() for p in params]
    assert torch.autograd.gradcheck(lambda x_, h_, *p: F.gru_sequence(m, x_, h_, *p, rows)[0], (x, h0, *ps),
                                    fast_mode=True)
    ml = get_mechanism(gate, "lstm")
    rows_l, pl = _params(ml, I, H, 6)
    c0 = torch.randn(B, H, dtype=D, requires_grad=True)
    pl = [p.requires_grad_() for p in pl]
    assert torch.autograd.gradcheck(lambda x_, h_, c_, *p: F.lstm_sequence(ml, x_, h_, c_, *p, rows_l)[0],
                                    (x, h0, c0, *pl), fast_mode=True)
