"""Triton fused recurrences (gates.kernels.triton_gru / triton_lstm) against the reference recurrence.

Ground truth: gates.functional.gru_step / lstm_step with the mechanism of each kernel mode, in float64.
Without a CUDA device the kernels run on the CPU under Triton's interpreter (TRITON_INTERPRET=1 is set
here before the kernels are imported), in float32 at small shapes; on a CUDA machine the same tests run
on the GPU with exact float32 products, and the tests marked ``cuda`` check TF32/bf16 tolerances at the
study's sizes. Skipped when triton is not installed.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ON_CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not ON_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from gates import functional as F  # noqa: E402
from gates.mechanisms import GATES, get_mechanism  # noqa: E402


def _kernel_modules():
    """The kernel modules, re-imported when an earlier import chose the other execution mode."""
    mods = [importlib.import_module(f"gates.kernels.triton_{n}") for n in ("common", "gru", "lstm")]
    if mods[0].INTERPRETED == ON_CUDA:
        mods = [importlib.reload(m) for m in mods]
    return mods


tc, tgru, tlstm = _kernel_modules()
DEVICE = "cuda" if ON_CUDA else "cpu"
GATE_OF_MODE = {}
for _name, _m in GATES.items():
    GATE_OF_MODE.setdefault(_m.fused_mode, _name)  # kernel mode -> first gate using it
CORES = ("gru", "lstm")
cuda = pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device (kernels run under the interpreter here)")


pytestmark = pytest.mark.usefixtures("exact_float32")


# --------------------------------------------------------------------------- helpers
def make_case(core, mode, T, B, H, chunk=4, M=None, seed=0, dtype=torch.float32):
    """Random inputs (leaf tensors on DEVICE) of one kernel call; a leading M when given."""
    m = get_mechanism(GATE_OF_MODE[mode], core)
    rows = m.block_rows(H, chunk)
    R = sum(rows.values())
    g = torch.Generator().manual_seed(seed)
    lead = () if M is None else (M,)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*lead, *shape, generator=g) * scale).to(DEVICE, dtype).requires_grad_()

    case = {"gi": leaf(T, B, R), "h0": leaf(B, H)}
    if core == "lstm":
        case["c0"] = leaf(B, H)
    case.update(w_hh=leaf(R, H, scale=1.5 / H**0.5), b_hh=leaf(R, scale=0.5))
    return m, rows, case


def run_kernel(core, mode, case, **kw):
    fn = tgru.triton_gru_recurrence if core == "gru" else tlstm.triton_lstm_recurrence
    return fn(*case.values(), mode, **kw)


def run_reference(core, m, rows, case):
    """The reference recurrence in float64 on one model's inputs (no model dimension)."""
    c = {k: v.double() for k, v in case.items()}
    h, outs = c["h0"], []
    cell = c.get("c0")
    for gi in c["gi"].unbind(0):
        if core == "gru":
            h, _ = F.gru_step(m, gi, h, c["w_hh"], c["b_hh"], rows)
        else:
            h, cell, _ = F.lstm_step(m, gi, h, cell, c["w_hh"], c["b_hh"], rows)
        outs.append(h)
    return (torch.stack(outs), h) if core == "gru" else (torch.stack(outs), h, cell)


def loss_and_grads(results, case, seed=1, use=None):
    """Σ result·weight with fixed random weights (``use``: indices of the results in the loss)."""
    g = torch.Generator().manual_seed(seed)
    loss = 0
    for k, r in enumerate(results):
        weight = torch.randn(r.shape, generator=g, dtype=torch.float64).to(r.device, r.dtype)
        if use is None or k in use:
            loss = loss + (r * weight).sum()
    return torch.autograd.grad(loss, list(case.values()))


def assert_matches(core, mode, case, m, rows, atol=2e-5, rtol=1e-4, use=None, **kw):
    got = run_kernel(core, mode, case, **kw)
    want = run_reference(core, m, rows, case)
    for name, a, b in zip(("out", "h_T", "c_T")[: len(want)], got, want, strict=True):
        torch.testing.assert_close(a.double(), b, atol=atol, rtol=rtol, msg=lambda s, n=name: f"{n}: {s}")
    for name, a, b in zip(case, loss_and_grads(got, case, use=use), loss_and_grads(want, case, use=use), strict=True):
        assert b.abs().max() > 1e-3, f"d{name} of the reference is ~0: the check would be vacuous"
        torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol, msg=lambda s, n=name: f"d{n}: {s}")


# --------------------------------------------------------------------------- every mode
@pytest.mark.parametrize("mode", list(GATE_OF_MODE))
@pytest.mark.parametrize("core", CORES)
def test_every_mode_matches_reference(core, mode):
    m, rows, case = make_case(core, mode, T=3, B=3, H=12, chunk=4)
    assert m.fused_mode == mode
    assert_matches(core, mode, case, m, rows)


@pytest.mark.parametrize("mode", ["cumax", "cumax_refine", "master_cumax"])
@pytest.mark.parametrize("core", CORES)
def test_several_tiles_match_reference(core, mode):
    """Two batch tiles, three hidden chunks and K-chunks, H and H/C not powers of two."""
    m, rows, case = make_case(core, mode, T=2, B=18, H=40, chunk=8, seed=3)
    assert_matches(core, mode, case, m, rows, config=tc.LaunchConfig(16, 16, 16, 4, 1))


@pytest.mark.parametrize("core,mode", [("gru", "refine"), ("lstm", "master_sigmoid"), ("lstm", "cumax")])
def test_batched_launch_equals_separate_runs(core, mode):
    M = 3
    m, rows, case = make_case(core, mode, T=3, B=5, H=16, chunk=4, M=M, seed=5)
    got = run_kernel(core, mode, case)
    grads = loss_and_grads(got, case)
    for k in range(M):
        one = {n: v[k].detach().clone().requires_grad_() for n, v in case.items()}
        ref = run_kernel(core, mode, one)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a[k], b)
        g = torch.Generator().manual_seed(1)
        weights = [torch.randn(r.shape, generator=g, dtype=torch.float64).to(r.device, r.dtype) for r in got]
        loss = sum((r * w[k]).sum() for r, w in zip(ref, weights, strict=True))
        for a, b in zip(grads, torch.autograd.grad(loss, list(one.values())), strict=True):
            torch.testing.assert_close(a[k], b)


@pytest.mark.parametrize("core,use", [("gru", {0}), ("gru", {1}), ("lstm", {0}), ("lstm", {1}), ("lstm", {2})])
def test_gradient_through_one_output(core, use):
    """Losses on the outputs, the last state or (LSTM) the last cell only: the other gradients arrive as None."""
    mode = "sigmoid"
    m, rows, case = make_case(core, mode, T=3, B=3, H=12, seed=7)
    assert_matches(core, mode, case, m, rows, use=use)


@pytest.mark.parametrize("core", CORES)
def test_inference_forward_equals_training_forward(core):
    """Without autograd the kernels save nothing (LSTM: two alternating cell buffers), same values."""
    mode = "master_sigmoid"
    _, _, case = make_case(core, mode, T=5, B=3, H=16, seed=9)
    train = run_kernel(core, mode, case)
    with torch.no_grad():
        infer = run_kernel(core, mode, case)
    for a, b in zip(train, infer, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("core", CORES)
def test_defaults_and_empty_sequence(core):
    mode = "sigmoid"
    _, _, case = make_case(core, mode, T=2, B=3, H=16)
    zeros = {k: (torch.zeros_like(v) if k in ("h0", "c0", "b_hh") else v) for k, v in case.items()}
    defaults = {k: (None if k in ("h0", "c0", "b_hh") else v) for k, v in case.items()}
    for a, b in zip(run_kernel(core, mode, defaults), run_kernel(core, mode, zeros), strict=True):
        torch.testing.assert_close(a, b)
    empty = dict(case, gi=case["gi"][:0])
    out, *states = run_kernel(core, mode, empty)
    assert out.shape == (0, 3, 16)
    for s, k in zip(states, ("h0", "c0")[: len(states)], strict=True):
        torch.testing.assert_close(s, case[k])


def test_errors_name_the_argument():
    _, _, case = make_case("gru", "sigmoid", T=2, B=3, H=16)
    gi, h0, w, b = case.values()
    with pytest.raises(ValueError, match="unknown recurrence mode 'bogus'"):
        tgru.triton_gru_recurrence(gi, h0, w, b, "bogus")
    with pytest.raises(ValueError, match=r"w_hh: expected shape \(G\*H, H\) = \(4\*H, H\)"):
        tgru.triton_gru_recurrence(gi, h0, w, b, "refine")
    with pytest.raises(ValueError, match=r"h0: expected shape \(B, H\) = \(3, 16\)"):
        tgru.triton_gru_recurrence(gi, h0[:2], w, b, "sigmoid")
    with pytest.raises(ValueError, match="b_hh: expected shape"):
        tgru.triton_gru_recurrence(gi, h0, w, b[:-1], "sigmoid")
    with pytest.raises(TypeError, match="h0: dtype"):
        tgru.triton_gru_recurrence(gi, h0.double(), w, b, "sigmoid")
    with pytest.raises(TypeError, match="gi: dtype torch.float64 not supported"):
        tgru.triton_gru_recurrence(*(t.double() for t in (gi, h0, w, b)), "sigmoid")
    with pytest.raises(ValueError, match=r"w_hh: expected shape \(4\*H \+ 2\*H/C, H\)"):
        tlstm.triton_lstm_recurrence(gi, h0, h0, w, b, "master_cumax")
    with pytest.raises(ValueError, match="model dimension M = 2"):
        tgru.triton_gru_recurrence(gi.expand(2, -1, -1, -1), h0, w.expand(2, -1, -1), b, "sigmoid")
    other = "meta"
    with pytest.raises(ValueError, match="run on"):
        tgru.triton_gru_recurrence(gi.to(other), h0.to(other), w.to(other), b.to(other), "sigmoid")


@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("core", CORES)
def test_layer_parameters_give_the_layer_output(core, gate):
    """The kernel on a GatedGRU/GatedLSTM's own parameters reproduces the layer's reference path."""
    from gates.layers import build_layer

    torch.manual_seed(0)
    layer = build_layer(core, 3, 16, gate=gate, master_chunk=4, implementation="reference", seed=1).to(DEVICE)
    x = torch.randn(4, 2, 3, device=DEVICE)
    want, _ = layer(x)
    gi = torch.nn.functional.linear(x, layer.weight_ih_l0, layer.bias_ih_l0)
    mode = layer.layout().mode
    if core == "gru":
        got, _ = tgru.triton_gru_recurrence(gi, None, layer.weight_hh_l0, layer.bias_hh_l0, mode)
    else:
        got, _, _ = tlstm.triton_lstm_recurrence(gi, None, None, layer.weight_hh_l0, layer.bias_hh_l0, mode)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    layer.implementation = "triton"  # the layer's own triton path: the same numbers
    assert layer.resolved_implementation() == "triton"
    torch.testing.assert_close(layer(x)[0], want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("core", CORES)
def test_layer_built_for_triton_matches_the_reference(core, gate):
    """``GatedGRU/GatedLSTM(..., implementation="triton")``: outputs, final states and every parameter
    gradient equal the same layer's reference recurrence."""
    from gates.layers import build_layer

    layer = build_layer(core, 3, 16, gate=gate, master_chunk=4, implementation="triton", seed=2, device=DEVICE)
    assert layer.resolved_implementation() == "triton"
    x = torch.randn(4, 2, 3, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(5))
    results = []
    for impl in ("triton", "reference"):
        layer.implementation = impl
        layer.zero_grad(set_to_none=True)
        out, state = layer(x)
        states = state if isinstance(state, tuple) else (state,)
        (out.square().sum() + sum(s.sum() for s in states)).backward()
        results.append([out, *states, *(p.grad for p in layer.parameters())])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


_SM90_COMPILE = r"""
import sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from gates.kernels import triton_common as tc, triton_gru, triton_lstm
from gates.kernels.modes import MODES

cfg = tc.default_configs(256)[0]  # H = 181
kernels = {"gru": ((triton_gru._gru_forward, dict(SAVE=True)),
                   (triton_gru._gru_backward, dict(HAS_GO=True, HAS_GH=True))),
           "lstm": ((triton_lstm._lstm_forward, dict(SAVE=True)),
                    (triton_lstm._lstm_backward, dict(HAS_GO=True, HAS_GH=True, HAS_GC=True)))}
for arg in sys.argv[1:]:
    core, mode = arg.split(":")
    act, refine, master = MODES[mode].flags
    base = dict(ACT=act, REFINE=refine, MASTER=master, BB=cfg.block_b, HMP=16, BN=cfg.block_n, BK=cfg.block_k,
                BKM=min(cfg.block_k, 16), PREC="tf32")
    for fn, extra in kernels[core]:
        if fn is triton_gru._gru_backward:
            extra = dict(extra, NB=3 + refine)
        consts = dict(base, **extra)
        sig = {n: "constexpr" if n in consts else ("i32" if n in ("B", "H", "HM", "R", "T", "NS") else "*fp32")
               for n in fn.arg_names}
        k = compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                    options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        print(core, mode, fn.__name__, k.metadata.shared)
"""


def test_kernels_compile_for_sm90():
    """The GPU compiler (Triton to PTX to cubin for sm_90, the H200) accepts the kernels: tile shapes, types and
    shared memory, checked without a GPU (the interpreter accepts things the compiler rejects)."""
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("triton's bundled ptxas is missing")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _SM90_COMPILE, "gru:master_cumax", "lstm:cumax"], env=env, capture_output=True,
                       text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.split("\n")[:-1]
    assert len(lines) == 4
    assert all(int(line.split()[-1]) <= 227 * 1024 for line in lines)  # H200: 227 KiB of shared memory per block


# --------------------------------------------------------------------------- on a CUDA device
def _rel_err(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-12)).item()


def _check_tolerance(core, mode, H, B, T, chunk, dtype, tol_out, tol_grad, precision="highest", M=None):
    torch.set_float32_matmul_precision(precision)
    m, rows, case = make_case(core, mode, T=T, B=B, H=H, chunk=chunk, dtype=dtype, M=M)
    got = run_kernel(core, mode, case)
    if M is None:
        want = run_reference(core, m, rows, case)
        ref_case = case
    else:  # reference on the last model only
        ref_case = {k: v[-1].detach().requires_grad_() for k, v in case.items()}
        want = run_reference(core, m, rows, ref_case)
        got = [r[-1] for r in got]
    for a, b in zip(got, want, strict=True):
        assert _rel_err(a, b) < tol_out
    if M is None:
        for a, b in zip(loss_and_grads(got, case), loss_and_grads(want, ref_case), strict=True):
            assert _rel_err(a, b) < tol_grad


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mode", list(GATE_OF_MODE))
@pytest.mark.parametrize("core", CORES)
def test_cuda_tf32_tolerance(core, mode):
    """The study's width (H = 181; master modes 176 with C = 16), TF32 products, 64 steps."""
    H, chunk = (176, 16) if mode.startswith("master") else (181, 1)
    _check_tolerance(core, mode, H, 50, 64, chunk, torch.float32, 5e-3, 1e-2, precision="high")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["sigmoid", "sst", "sst_candidate", "cumax_refine", "master_cumax"])
@pytest.mark.parametrize("core", CORES)
def test_cuda_bfloat16_tolerance(core, mode):
    H, chunk = (176, 16) if mode.startswith("master") else (181, 1)
    _check_tolerance(core, mode, H, 50, 64, chunk, torch.bfloat16, 3e-2, 6e-2)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("core", CORES)
def test_cuda_wide_hidden_float32(core):
    """H = 512 (two K-tiles of 256, eight output chunks), B = 128: the second benchmark shape."""
    _check_tolerance(core, "sigmoid", 512, 128, 16, 1, torch.float32, 1e-5, 1e-4)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("core", CORES)
def test_cuda_ten_models_in_one_launch(core):
    _check_tolerance(core, "refine", 181, 50, 32, 1, torch.float32, 1e-5, 1e-4, M=10)
