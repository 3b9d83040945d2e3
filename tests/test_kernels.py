"""Fused GRU recurrences (gates.kernels), modes sigmoid/refine/sst: values and gradients against
ground truth, and the API, buffers and build machinery of the kernels package.

Ground truth is a plain autograd loop written here from the step semantics
(torch.nn.GRU form) and torch.nn.GRU itself; every other mode, and the LSTM core, is
tested against gates.functional in tests/test_kernels_modes.py. The first test that
needs the C++ backend compiles it (about a minute on two cores, cached afterwards).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import gates.kernels as K
from gates.kernels import cpu as kcpu

MODES = ("sigmoid", "refine", "sst", "sst_candidate")
GATES = {"sigmoid": 3, "refine": 4, "sst": 3, "sst_candidate": 3}
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


# --------------------------------------------------------------- reference
def reference(gi, h0, w_hh, b_hh, mode):
    """Plain autograd loop, straight from the step semantics."""
    H = w_hh.shape[1]
    h, outs = h0, []
    for t in range(gi.shape[0]):
        gh = h @ w_hh.t() + b_hh
        a = gi[t]
        s_r = torch.sigmoid(a[:, :H] + gh[:, :H])
        s_z = torch.sigmoid(a[:, H : 2 * H] + gh[:, H : 2 * H])
        squared_gates = mode in ("sst", "sst_candidate")
        r = s_r**2 if squared_gates else s_r
        a_n = a[:, 2 * H : 3 * H] + r * gh[:, 2 * H : 3 * H]
        n = torch.tanh(a_n) * torch.tanh(a_n).abs() if mode == "sst_candidate" else torch.tanh(a_n)
        if mode == "refine":
            p = torch.sigmoid(a[:, 3 * H :] + gh[:, 3 * H :])
            z = 2 * p * s_z + (1 - 2 * p) * s_z**2
        elif squared_gates:
            z = s_z**2
        else:
            z = s_z
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs), h


def make_inputs(mode, T, B, H, dtype=torch.float64, seed=0, scale=0.5, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    G = GATES[mode]

    def r(*s, sc=1.0):
        return (torch.randn(*s, generator=g, dtype=dtype) * sc).to(device).requires_grad_()

    return r(T, B, G * H), r(B, H), r(G * H, H, sc=scale), r(G * H)


def grads(fn, inputs, seed=1):
    out, hT = fn(*inputs)
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    gh = torch.randn(hT.shape, generator=g, dtype=out.dtype).to(out.device)
    loss = (out * go).sum() + (hT * gh).sum()
    return (out, hT) + torch.autograd.grad(loss, inputs)


# --------------------------------------------------------------- build / API
def test_cpp_extension_builds():
    if CPP_DISABLED:
        pytest.skip("C++ backend disabled by SOENSIM_GRU_BACKEND=generic")
    assert kcpu.load(), kcpu.build_info()
    assert K.backend_for("cpu") == "cpp"
    assert K.backend_for("cpu", torch.float64) == "cpp"


def test_api_surface():
    assert K.available_modes()[:len(MODES)] == MODES
    assert K.backend_for("cpu", torch.bfloat16) == "generic"
    assert K.backend_for("cuda") == "generic"
    assert "generic" in K.available_backends()
    assert K.mode_spec("refine").main_blocks("gru") == 4


# --------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode, backend):
    inputs = make_inputs(mode, T=5, B=3, H=4)

    def f(*a):
        return K.fused_gru_recurrence(*a, mode=mode, backend=backend)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_float32(mode, backend):
    inputs = make_inputs(mode, T=50, B=4, H=9, dtype=torch.float32, seed=3)
    got = grads(lambda *a: K.fused_gru_recurrence(*a, mode=mode, backend=backend), inputs)
    want = grads(lambda *a: reference(*a, mode), inputs)
    names = ["out", "h_T", "d_gi", "d_h0", "d_w_hh", "d_b_hh"]
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("mode", MODES)
def test_cpp_equals_generic_on_parallel_sizes(mode):
    # B*H large enough that the C++ element loops split over threads.
    _cpp_or_skip()
    inputs = make_inputs(mode, T=12, B=64, H=200, scale=0.1, seed=5)
    a = grads(lambda *x: K.fused_gru_recurrence(*x, mode=mode, backend="cpp"), inputs)
    b = grads(lambda *x: K.fused_gru_recurrence(*x, mode=mode, backend="generic"), inputs)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)


def test_sigmoid_mode_equals_nn_gru(backend):
    torch.manual_seed(0)
    T, B, I, H = 30, 5, 3, 8
    gru = torch.nn.GRU(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    out_ref, hn_ref = gru(x, h0)
    (out_ref.sum() + 2 * hn_ref.sum()).backward()
    ref_grads = [p.grad.clone() for p in gru.parameters()] + [h0.grad.clone()]
    gru.zero_grad()
    h0.grad = None

    gi = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)
    out, hT = K.fused_gru_recurrence(
        gi, h0[0], gru.weight_hh_l0, gru.bias_hh_l0, "sigmoid", backend=backend
    )
    torch.testing.assert_close(out, out_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(hT, hn_ref[0], atol=1e-12, rtol=1e-10)
    (out.sum() + 2 * hT.sum()).backward()
    got = [p.grad for p in gru.parameters()] + [h0.grad]
    for a, b in zip(got, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_sigmoid_mode_equals_nn_gru_float32_long():
    # The s-CIFAR configuration in miniature: float32, many steps, one input.
    torch.manual_seed(1)
    T, B, I, H = 300, 4, 1, 16
    gru = torch.nn.GRU(I, H)
    x = torch.randn(T, B, I)
    out_ref, hn_ref = gru(x)
    out, hT = K.fused_gru_recurrence(
        F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0), None, gru.weight_hh_l0, gru.bias_hh_l0
    )
    torch.testing.assert_close(out, out_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(hT, hn_ref[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["out", "h_T"])
def test_gradient_through_one_output(which, backend):
    # Only one output used: the other's gradient arrives as None.
    gi, h0, w, b = make_inputs("refine", T=7, B=3, H=5, seed=11)
    out, hT = K.fused_gru_recurrence(gi, h0, w, b, "refine", backend=backend)
    (out.pow(2).sum() if which == "out" else hT.pow(2).sum()).backward()
    got = [t.grad.clone() for t in (gi, h0, w, b)]
    for t in (gi, h0, w, b):
        t.grad = None
    out, hT = reference(gi, h0, w, b, "refine")
    (out.pow(2).sum() if which == "out" else hT.pow(2).sum()).backward()
    for a, t in zip(got, (gi, h0, w, b), strict=True):
        torch.testing.assert_close(a, t.grad, atol=1e-12, rtol=1e-10)


def test_h0_gradient_only(backend):
    gi, h0, w, b = make_inputs("sst", T=6, B=2, H=3, seed=4)
    gi, w, b = gi.detach(), w.detach(), b.detach()
    assert torch.autograd.gradcheck(
        lambda h: K.fused_gru_recurrence(gi, h, w, b, "sst", backend=backend), (h0,)
    )


# --------------------------------------------------------------- behaviour
def test_no_grad_forward_matches(backend):
    inputs = make_inputs("refine", T=9, B=3, H=5, dtype=torch.float32)
    out, hT = K.fused_gru_recurrence(*inputs, mode="refine", backend=backend)
    with torch.no_grad():
        out2, hT2 = K.fused_gru_recurrence(*inputs, mode="refine", backend=backend)
    assert not out2.requires_grad
    assert torch.equal(out.detach(), out2) and torch.equal(hT.detach(), hT2)
    assert torch.equal(out[-1].detach(), hT.detach())


def test_deterministic(backend):
    inputs = make_inputs("sigmoid", T=20, B=40, H=150, dtype=torch.float32, scale=0.1)
    a = grads(lambda *x: K.fused_gru_recurrence(*x, backend=backend), inputs)
    b = grads(lambda *x: K.fused_gru_recurrence(*x, backend=backend), inputs)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_defaults_and_layouts(backend):
    # h0=None / b_hh=None mean zeros; non-contiguous gi (batch-first transposed) works.
    gi, h0, w, b = make_inputs("sigmoid", T=6, B=3, H=4, seed=2)
    gi_bf = gi.detach().transpose(0, 1).contiguous().requires_grad_()
    out, hT = K.fused_gru_recurrence(gi_bf.transpose(0, 1), None, w, None, backend=backend)
    ref_out, _ = reference(gi_bf.transpose(0, 1), torch.zeros_like(h0), w, torch.zeros_like(b), "sigmoid")
    torch.testing.assert_close(out, ref_out)
    out.sum().backward()
    assert gi_bf.grad.shape == gi_bf.shape and w.grad is not None


@pytest.mark.parametrize("T, B", [(1, 3), (3, 1)])
def test_single_step_and_single_row(T, B, backend):
    inputs = make_inputs("refine", T=T, B=B, H=3, seed=7)
    assert torch.autograd.gradcheck(
        lambda *a: K.fused_gru_recurrence(*a, mode="refine", backend=backend), inputs
    )


def test_empty_sequence(backend):
    gi = torch.zeros(0, 2, 9)
    h0 = torch.randn(2, 3)
    out, hT = K.fused_gru_recurrence(gi, h0, torch.zeros(9, 3), torch.zeros(9), backend=backend)
    assert out.shape == (0, 2, 3) and torch.equal(hT, h0)


def test_frozen_parameters(backend):
    # Gradients only for what requires them (e.g. frozen hardware biases).
    gi, h0, w, b = make_inputs("sigmoid", T=5, B=2, H=3)
    b = b.detach()
    h0 = h0.detach()
    out, _ = K.fused_gru_recurrence(gi, h0, w, b, backend=backend)
    out.sum().backward()
    assert b.grad is None and h0.grad is None and w.grad is not None and gi.grad is not None


# --------------------------------------------------------------- errors
def test_unknown_mode_lists_known():
    gi, h0, w, b = make_inputs("sigmoid", T=2, B=2, H=3)
    with pytest.raises(ValueError, match=r"mode.*'lstm'.*sigmoid, refine, sst"):
        K.fused_gru_recurrence(gi, h0, w, b, "lstm")


@pytest.mark.parametrize(
    "arg, bad, pattern",
    [
        ("gi", torch.zeros(4, 2, 10), r"gi: expected shape \(T, B, G\*H\) = \(T, B, 9\)"),
        ("gi", torch.zeros(2, 9), r"gi: expected shape"),
        ("h0", torch.zeros(3, 3), r"h0: expected shape \(B, H\) = \(2, 3\), got \(3, 3\)"),
        ("w_hh", torch.zeros(12, 3), r"w_hh: expected shape \(G\*H, H\) = \(3\*H, H\)"),
        ("b_hh", torch.zeros(12), r"b_hh: expected shape \(G\*H,\) = \(9,\)"),
    ],
)
def test_wrong_shapes_name_the_argument(arg, bad, pattern):
    args = {"gi": torch.zeros(4, 2, 9), "h0": torch.zeros(2, 3),
            "w_hh": torch.zeros(9, 3), "b_hh": torch.zeros(9)}
    args[arg] = bad
    with pytest.raises(ValueError, match=pattern):
        K.fused_gru_recurrence(**args, mode="sigmoid")


def test_refine_needs_four_blocks():
    with pytest.raises(ValueError, match=r"w_hh: expected shape \(G\*H, H\) = \(4\*H, H\).*refine"):
        K.fused_gru_recurrence(torch.zeros(2, 2, 12), None, torch.zeros(9, 3), None, "refine")


def test_dtype_and_backend_errors():
    gi = torch.zeros(2, 2, 9)
    with pytest.raises(TypeError, match="h0: dtype"):
        K.fused_gru_recurrence(gi, torch.zeros(2, 3, dtype=torch.float64), torch.zeros(9, 3), None)
    with pytest.raises(ValueError, match="backend: unknown backend 'fast'"):
        K.fused_gru_recurrence(gi, None, torch.zeros(9, 3), None, backend="fast")
    with pytest.raises(ValueError, match="backend: 'cpp' supports float32/float64"):
        K.fused_gru_recurrence(gi.bfloat16(), None, torch.zeros(9, 3).bfloat16(), None, backend="cpp")


def test_generic_runs_bfloat16():
    gi, h0, w, b = (t.detach().bfloat16() for t in make_inputs("sst", T=4, B=2, H=3))
    out, hT = K.fused_gru_recurrence(gi, h0, w, b, "sst")
    ref, _ = reference(gi.double(), h0.double(), w.double(), b.double(), "sst")
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)


# --------------------------------------------------------------- pieces of the C++ backend
def test_fast_math_accuracy():
    _cpp_or_skip()
    ops = torch.ops.soensim_rnn
    x = torch.linspace(-60, 60, 200_001)
    xd = x.double()
    for fast, exact in ((ops.fast_sigmoid, torch.sigmoid), (ops.fast_tanh, torch.tanh)):
        y, ref = fast(x).double(), exact(xd)
        assert (y - ref).abs().max() < 2e-7
        nz = ref.abs() > 1e-30
        assert ((y - ref).abs()[nz] / ref.abs()[nz]).max() < 5e-7
        special = fast(torch.tensor([float("nan"), float("inf"), -float("inf")]))
        assert special[0].isnan() and special[1:].isfinite().all()


def test_input_projection_matches_linear():
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(K.input_projection(x, w, b), F.linear(x, w, b))
    assert torch.autograd.gradcheck(K.input_projection, (x, w, b))
    assert torch.autograd.gradcheck(lambda a, c: K.input_projection(a, c), (x, w))


def test_buffer_pool_reuses_memory():
    _cpp_or_skip()
    inputs = [t.detach().float().requires_grad_() for t in make_inputs("sigmoid", 64, 32, 64)]
    for _ in range(3):
        out, hT = K.fused_gru_recurrence(*inputs)
        out.sum().backward()
        del out, hT
    stats = kcpu.pool_stats()
    assert stats["hits"] > 0 and stats["cached_bytes"] > 0
    kcpu.empty_cache()
    assert kcpu.pool_stats()["cached_bytes"] == 0


def test_build_failure_falls_back_with_one_warning(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as ext

    def broken(*a, **k):
        raise RuntimeError("error: simulated compiler failure")

    monkeypatch.setattr(ext, "load", broken)
    monkeypatch.setattr(kcpu, "_build_directory", lambda: tmp_path)
    monkeypatch.setattr(kcpu, "_state", {"loaded": False, "error": None, "path": None,
                                         "seconds": None, "flags": None})
    monkeypatch.delenv("SOENSIM_GRU_BACKEND", raising=False)
    with pytest.warns(RuntimeWarning, match="simulated compiler failure"):
        assert K.backend_for("cpu") == "generic"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert K.backend_for("cpu") == "generic"  # no second warning
        gi, h0, w, b = make_inputs("sigmoid", 3, 2, 2)
        out, _ = K.fused_gru_recurrence(gi, h0, w, b)
        assert out.shape == (3, 2, 2)
    # the failed OpenMP variant is remembered for this source, not retried
    assert (tmp_path / "omp.failed").exists()


def test_env_forces_generic():
    code = (
        "import gates.kernels as K, gates.kernels.cpu as c;"
        "print(K.backend_for('cpu'), c.build_info()['disabled_by_env'])"
    )
    env = dict(os.environ, SOENSIM_GRU_BACKEND="generic")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert res.stdout.split() == ["generic", "True"]


# --------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_generic_matches_reference(mode):
    assert K.backend_for("cuda") == "generic"
    inputs = make_inputs(mode, T=40, B=6, H=16, dtype=torch.float64, device="cuda")
    got = grads(lambda *a: K.fused_gru_recurrence(*a, mode=mode), inputs)
    want = grads(lambda *a: reference(*a, mode), inputs)
    for a, b in zip(got, want, strict=True):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    f32 = [t.detach().float().requires_grad_() for t in inputs]
    got = grads(lambda *a: K.fused_gru_recurrence(*a, mode=mode), f32)
    want = grads(lambda *a: reference(*a, mode), f32)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
