"""Every fused mode on both cores (gates.kernels) against the reference recurrence.

Ground truth: gates.functional.gru_sequence / lstm_sequence with the mechanism of the
mode (plain autograd), torch.nn.LSTM for the LSTM "sigmoid" mode, and
torch.autograd.gradcheck in float64. Shapes are tiny; the C++ backend is built once
by the first test that needs it.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import gates.kernels as K
from gates import functional as Fn
from gates.kernels import cpu as kcpu
from gates.mechanisms import GATES, get_mechanism

#: One mechanism per mode (the mode is ``Mechanism.fused_mode``).
MECHANISM = {"sigmoid": "-", "refine": "R", "sst": "SST", "sst_candidate": "SSTN", "cumax": "O", "cumax_refine": "OR",
             "master_cumax": "OM", "master_sigmoid": "UM"}
MODES = tuple(MECHANISM)
CORES = ("gru", "lstm")
CPP_DISABLED = os.environ.get("SOENSIM_GRU_BACKEND", "").lower() == "generic"


def _cpp_or_skip():
    if CPP_DISABLED:
        pytest.skip("C++ backend disabled by SOENSIM_GRU_BACKEND=generic")
    if not kcpu.available():
        pytest.skip(f"C++ backend unavailable: {kcpu.build_info()['error']}")


@pytest.fixture(params=["cpp", "generic"])
def backend(request):
    if request.param == "cpp":
        _cpp_or_skip()
    return request.param


def fused(core, gi, states, w_hh, b_hh, mode, **kw):
    fn = K.fused_gru_recurrence if core == "gru" else K.fused_lstm_recurrence
    return fn(gi, *states, w_hh, b_hh, mode, **kw)


def layer_inputs(core, mode, T, B, H, I=3, chunk=4, dtype=torch.float64, seed=0):
    """x, states, w_ih, w_hh, b_ih, b_hh (all requiring grad) and the block rows of ``mode``."""
    m = get_mechanism(MECHANISM[mode], core)
    rows = m.block_rows(H, chunk)
    R = sum(rows.values())
    g = torch.Generator().manual_seed(seed)

    def r(*s, sc=1.0):
        return (torch.randn(*s, generator=g, dtype=dtype) * sc).requires_grad_()

    states = (r(B, H),) if core == "gru" else (r(B, H), r(B, H))
    return m, rows, r(T, B, I), states, r(R, I), r(R, H, sc=0.5), r(R), r(R)


def reference(core, m, rows, x, states, w_ih, w_hh, b_ih, b_hh):
    if core == "gru":
        return Fn.gru_sequence(m, x, states[0], w_ih, w_hh, b_ih, b_hh, rows)
    return Fn.lstm_sequence(m, x, states[0], states[1], w_ih, w_hh, b_ih, b_hh, rows)


def values_and_grads(outputs, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype) for o in outputs]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights, strict=True))
    return list(outputs) + list(torch.autograd.grad(loss, inputs))


def compare(core, mode, backend, dtype, tol, T=9, B=3, H=8, seed=0, device="cpu"):
    """Kernel in ``dtype`` vs the float64 reference: every output and gradient within
    ``tol`` times the largest magnitude of the reference tensor."""
    m, rows, x, states, w_ih, w_hh, b_ih, b_hh = layer_inputs(core, mode, T, B, H, seed=seed)
    truth = (x, *states, w_ih, w_hh, b_ih, b_hh)
    want = values_and_grads(reference(core, m, rows, x, states, w_ih, w_hh, b_ih, b_hh), truth)
    inputs = [t.detach().to(device, dtype).requires_grad_() for t in truth]
    x, states, (w_ih, w_hh, b_ih, b_hh) = inputs[0], inputs[1:-4], inputs[-4:]
    got = values_and_grads(fused(core, F.linear(x, w_ih, b_ih), states, w_hh, b_hh, mode, backend=backend), inputs)
    names = ["out", "h_T", "c_T"][: len(got) - len(inputs)] + ["d_x", "d_h0", "d_c0"][: 1 + len(states)]
    names += ["d_w_ih", "d_w_hh", "d_b_ih", "d_b_hh"]
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == dtype and a.device.type == torch.device(device).type
        err = (a.cpu().double() - b).abs().max().item()
        assert err <= tol * b.abs().max().item(), f"{core} {mode} {name}: error {err:.2e}"


# --------------------------------------------------------------- the mode table
def test_every_mechanism_has_its_mode_on_both_cores():
    assert K.available_modes("gru") == K.available_modes("lstm") == MODES == K.available_modes()
    assert {m.fused_mode for m in GATES.values()} == set(MODES)
    with pytest.raises(ValueError, match="core"):
        K.available_modes("rnn")


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("gate", list(GATES))
def test_mode_table_matches_the_mechanism(core, gate):
    m = get_mechanism(gate, core)
    spec = K.mode_spec(m.fused_mode)
    assert spec.rows(core, 32, 8) == m.block_rows(32, 8)
    assert (spec.activation, spec.refine, spec.master) == (m.activation, m.refine, m.master)
    acts = spec.activations(core)
    assert tuple(acts) == spec.blocks(core)
    decay = "update" if core == "gru" else "forget"
    assert acts[decay] == {"sigmoid": "sigmoid", "sst": "sigmoid_squared", "cumax": "cumax"}[m.activation]


# --------------------------------------------------------------- exactness
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("core", CORES)
def test_matches_reference_float64(core, mode, backend):
    compare(core, mode, backend, torch.float64, tol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("core", CORES)
def test_matches_reference_float32(core, mode):
    _cpp_or_skip()
    # The reference itself in float32 errs by ~1e-6 of the largest value here.
    compare(core, mode, "cpp", torch.float32, tol=2e-5, T=40, B=4, H=16, seed=3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("core", CORES)
def test_gradcheck(core, mode, backend):
    m, rows, _, states, _, w_hh, _, b_hh = layer_inputs(core, mode, T=4, B=2, H=4, chunk=2, seed=5)
    gi = torch.randn(4, 2, w_hh.shape[0], dtype=torch.float64, requires_grad=True)

    def f(gi, *rest):
        return fused(core, gi, rest[:-2], rest[-2], rest[-1], mode, backend=backend)

    assert torch.autograd.gradcheck(f, (gi, *states, w_hh, b_hh), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("core", CORES)
def test_cpp_equals_generic_on_parallel_sizes(core, mode):
    # B*H large enough that the C++ element loops split over threads; H/C = 12 master units.
    _cpp_or_skip()
    m, rows, _, states, _, w_hh, _, b_hh = layer_inputs(core, mode, T=6, B=64, H=192, chunk=16, seed=7)
    with torch.no_grad():
        w_hh.mul_(0.2)
    gi = torch.randn(6, 64, w_hh.shape[0], dtype=torch.float64, requires_grad=True)
    inputs = (gi, *states, w_hh, b_hh)
    a = values_and_grads(fused(core, gi, states, w_hh, b_hh, mode, backend="cpp"), inputs)
    b = values_and_grads(fused(core, gi, states, w_hh, b_hh, mode, backend="generic"), inputs)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)


# --------------------------------------------------------------- LSTM vs torch.nn.LSTM
def test_lstm_sigmoid_mode_equals_nn_lstm(backend):
    torch.manual_seed(0)
    T, B, I, H = 30, 5, 3, 8
    lstm = torch.nn.LSTM(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    leaves = [x, h0, c0, *lstm.parameters()]
    out_ref, (hn_ref, cn_ref) = lstm(x, (h0, c0))
    ref = torch.autograd.grad(out_ref.sum() + 2 * hn_ref.sum() - 3 * cn_ref.sum(), leaves)

    gi = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0)
    out, hT, cT = K.fused_lstm_recurrence(gi, h0[0], c0[0], lstm.weight_hh_l0, lstm.bias_hh_l0, "sigmoid",
                                          backend=backend)
    for a, b in ((out, out_ref), (hT, hn_ref[0]), (cT, cn_ref[0])):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    got = torch.autograd.grad(out.sum() + 2 * hT.sum() - 3 * cT.sum(), leaves)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_lstm_sigmoid_mode_equals_nn_lstm_float32_long():
    torch.manual_seed(1)
    T, B, I, H = 300, 4, 1, 16
    lstm = torch.nn.LSTM(I, H)
    x = torch.randn(T, B, I)
    out_ref, (hn_ref, cn_ref) = lstm(x)
    out, hT, cT = K.fused_lstm_recurrence(F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0), None, None,
                                          lstm.weight_hh_l0, lstm.bias_hh_l0)
    for a, b in ((out, out_ref), (hT, hn_ref[0]), (cT, cn_ref[0])):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


# --------------------------------------------------------------- behaviour
@pytest.mark.parametrize("which", [0, 1, 2])
def test_lstm_gradient_through_one_output(which, backend):
    # Only one of out, h_T, c_T used: the others' gradients arrive as None.
    m, rows, x, states, w_ih, w_hh, b_ih, b_hh = layer_inputs("lstm", "cumax", T=6, B=2, H=5, seed=2)
    inputs = (x, *states, w_ih, w_hh, b_ih, b_hh)
    gi = F.linear(x, w_ih, b_ih)
    got = torch.autograd.grad(fused("lstm", gi, states, w_hh, b_hh, "cumax", backend=backend)[which].sum(),
                              inputs)
    want = torch.autograd.grad(reference("lstm", m, rows, x, states, w_ih, w_hh, b_ih, b_hh)[which].sum(), inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("core", CORES)
def test_no_grad_forward_matches(core, mode, backend):
    # Without grad nothing is saved (the LSTM cell state then lives in a ping-pong buffer).
    _, _, _, states, _, w_hh, _, b_hh = layer_inputs(core, mode, T=5, B=3, H=8, dtype=torch.float32)
    gi = torch.randn(5, 3, w_hh.shape[0])
    a = fused(core, gi, states, w_hh, b_hh, mode, backend=backend)
    with torch.no_grad():
        b = fused(core, gi, states, w_hh, b_hh, mode, backend=backend)
    assert not b[0].requires_grad
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.detach(), y)


def test_lstm_defaults_and_empty_sequence(backend):
    _, _, _, (h0, c0), _, w, _, b = layer_inputs("lstm", "sigmoid", T=1, B=3, H=4)
    gi = torch.randn(6, 3, 16, dtype=torch.float64)
    out, hT, cT = K.fused_lstm_recurrence(gi, None, None, w, None, backend=backend)
    z = torch.zeros(3, 4, dtype=torch.float64)
    ref = K.fused_lstm_recurrence(gi, z, z, w, torch.zeros(16, dtype=torch.float64), backend="generic")
    for a, r in zip((out, hT, cT), ref, strict=True):
        torch.testing.assert_close(a, r)
    out, hT, cT = K.fused_lstm_recurrence(gi[:0], h0, c0, w, b, backend=backend)
    assert out.shape == (0, 3, 4) and torch.equal(hT, h0) and torch.equal(cT, c0)


def test_master_chunk_is_read_from_the_rows_or_checked():
    _, _, _, states, _, w, _, b = layer_inputs("lstm", "master_sigmoid", T=1, B=2, H=8, chunk=4)  # M = 2
    gi = torch.randn(3, 2, w.shape[0], dtype=torch.float64)
    out = K.fused_lstm_recurrence(gi, *states, w, b, "master_sigmoid")[0]
    torch.testing.assert_close(K.fused_lstm_recurrence(gi, *states, w, b, "master_sigmoid", chunk=4)[0], out)
    with pytest.raises(ValueError, match=r"w_hh: expected shape \(4\*H \+ 2\*H/C, H\) = \(40, 8\).*C=2, got \(36, 8\)"):
        K.fused_lstm_recurrence(gi, *states, w, b, "master_sigmoid", chunk=2)
    with pytest.raises(ValueError, match="chunk: the master downsize factor C must be a positive int dividing"):
        K.fused_lstm_recurrence(gi, *states, w, b, "master_sigmoid", chunk=3)
    with pytest.raises(ValueError, match=r"w_hh: expected shape \(3\*H \+ 2\*H/C, H\) with C dividing H=8"):
        K.fused_gru_recurrence(torch.zeros(2, 2, 30), None, torch.zeros(30, 8), None, "master_cumax")


def test_lstm_shape_errors_name_the_argument():
    gi, h, w = torch.zeros(4, 2, 12), torch.zeros(2, 3), torch.zeros(12, 3)
    with pytest.raises(ValueError, match=r"c0: expected shape \(B, H\) = \(2, 3\), got \(3, 3\)"):
        K.fused_lstm_recurrence(gi, h, torch.zeros(3, 3), w, None)
    with pytest.raises(ValueError, match=r"w_hh: expected shape \(G\*H, H\) = \(4\*H, H\) for lstm mode 'refine'"):
        K.fused_lstm_recurrence(gi[..., :9], h, h, torch.zeros(9, 3), None, "refine")
    with pytest.raises(TypeError, match="c0: dtype"):
        K.fused_lstm_recurrence(gi, h, h.double(), w, None)


def test_generic_lstm_runs_bfloat16():
    m, rows, x, states, w_ih, w_hh, b_ih, b_hh = layer_inputs("lstm", "cumax_refine", T=4, B=2, H=4)
    with torch.no_grad():
        ref = reference("lstm", m, rows, x, states, w_ih, w_hh, b_ih, b_hh)
        gi = F.linear(x, w_ih, b_ih).bfloat16()
        got = K.fused_lstm_recurrence(gi, *(s.bfloat16() for s in states), w_hh.bfloat16(), b_hh.bfloat16(),
                                      "cumax_refine")
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.double(), b, atol=5e-2, rtol=5e-2)


def test_one_cumax_master_unit_freezes_the_state():
    # M = 1: cumax over one unit is 1, the master input gate 0, so h never changes (no warning here).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gi = torch.randn(3, 2, 3 * 4 + 2, dtype=torch.float64)
        h0 = torch.randn(2, 4, dtype=torch.float64)
        out, _ = K.fused_gru_recurrence(gi, h0, torch.randn(14, 4, dtype=torch.float64), None, "master_cumax")
    torch.testing.assert_close(out, h0.expand(3, 2, 4))


# --------------------------------------------------------------- CUDA (generic backend)
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("core", CORES)
def test_cuda_generic_matches_reference(core, mode):
    assert K.backend_for("cuda") == "generic"
    compare(core, mode, None, torch.float64, tol=1e-12, device="cuda")
    compare(core, mode, None, torch.float32, tol=2e-5, T=40, B=4, H=16, seed=3, device="cuda")


@pytest.mark.parametrize("core", CORES)
def test_model_dimension_equals_separate_runs(core):
    """M models in one call (the Triton backend's model dimension) equal M separate calls, on the CPU."""
    M, T, B, H = 3, 5, 2, 4
    rows = (3 if core == "gru" else 4) * H
    g = torch.Generator().manual_seed(7)
    gi = torch.randn(M, T, B, rows, generator=g, dtype=torch.float64, requires_grad=True)
    w = (0.4 * torch.randn(M, rows, H, generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.randn(M, rows, generator=g, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(M, B, H, generator=g, dtype=torch.float64) for _ in range(1 if core == "gru" else 2)]
    run = K.fused_gru_recurrence if core == "gru" else K.fused_lstm_recurrence
    together = run(gi, *states, w, b, "refine" if core == "lstm" else "sst")
    sum(t.sum() for t in together).backward()
    grads = [t.grad.clone() for t in (gi, w, b)]
    for t in (gi, w, b):
        t.grad = None
    for m in range(M):
        alone = run(gi[m], *(s[m] for s in states), w[m], b[m], "refine" if core == "lstm" else "sst")
        for x, y in zip(together, alone, strict=True):
            torch.testing.assert_close(x[m], y, rtol=0, atol=1e-12)
        sum(t.sum() for t in alone).backward()
    for got, t in zip(grads, (gi, w, b), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="w_hh: with gi of 3 models"):
        run(gi, *states, w[0], b, "sigmoid")
