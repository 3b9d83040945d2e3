"""gates.batched: M layers in one batched recurrence equal M separate forward passes.

The batched path is Triton's (the CPU runs each layer's own call): here under Triton's
interpreter in float32 at small shapes (on a CUDA machine, on the device). Ground truth:
each layer's reference recurrence (plain autograd), outputs, final states and every
parameter gradient, with each model's own transforms (hardware constraints, frozen biases).
"""
from __future__ import annotations

import pytest
import torch

from gates import GatedGRU, GatedLSTM, GateRecorder
from gates.batched import batch_signature, batched_implementation, forward_models
from soensim import HardwareProfile
from soensim.constraints import constrain, freeze_biases

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: conftest sets TRITON_INTERPRET=1
T, B, I, H = 5, 2, 3, 16

pytestmark = [pytest.mark.usefixtures("exact_float32"), pytest.mark.cuda]  # on a GPU machine: on the device


def layers(cls, gates, **kw):
    return [cls(I, H, gate=g, seed=10 + m, master_chunk=4, implementation="triton", device=DEVICE, **kw)
            for m, g in enumerate(gates)]


def flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def loss_of(results):
    return sum((t.square() * (k + 1)).sum() for r in results for k, t in enumerate(flat(r)))


def grads(mods):
    out = []
    for mod in mods:
        out += [p.grad.clone() for p in mod.parameters()]
        mod.zero_grad(set_to_none=True)
    return out


def inputs(n, seed=0, shape=(T, B, I)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(DEVICE) for _ in range(n)]


def check_against_reference(mods, xs, hx=None):
    got = forward_models(mods, xs, hx)
    loss_of(got).backward()
    got_grads = grads(mods)
    for mod in mods:
        mod.implementation = "reference"
    want = [mod(x) if hx is None else mod(x, h) for mod, x, h in zip(mods, xs, hx or [None] * len(mods), strict=True)]
    loss_of(want).backward()
    for r, g in zip(want, got, strict=True):
        for a, b in zip(flat(r), flat(g), strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
    for a, b in zip(grads(mods), got_grads, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)
    return got


@pytest.mark.parametrize("cls,gates", [
    (GatedGRU, ("-", "C", "U")),       # one kernel mode (sigmoid), three initialisations
    (GatedGRU, ("UR", "R")),           # refine
    (GatedGRU, ("OM", "OM")),          # master cumax
    (GatedLSTM, ("-", "C")),
    (GatedLSTM, ("SST", "SST")),
    (GatedLSTM, ("O", "O")),           # cumax
])
def test_batched_forward_and_gradients_equal_the_reference(cls, gates):
    check_against_reference(layers(cls, gates), inputs(len(gates)))


def test_constraints_and_frozen_biases_are_honoured_per_model():
    """One model under a hardware profile, one with frozen biases, one plain: each keeps its transforms."""
    mods = layers(GatedGRU, ("-", "-", "-"))
    constrain(mods[0], HardwareProfile.resolve("soen-dendrite"), dt=1e-9)
    freeze_biases(mods[1], {"z": 0.0, "r": 0.0})
    got = check_against_reference(mods, inputs(3, seed=1))
    assert not torch.allclose(got[0][0], got[2][0])  # the profile changes the result


def test_two_layers_batch_first_and_initial_states():
    mods = layers(GatedLSTM, ("U", "U"), num_layers=2, batch_first=True)
    g = torch.Generator().manual_seed(3)
    hx = [tuple(torch.randn(2, B, H, generator=g).to(DEVICE) for _ in range(2)) for _ in mods]
    got = check_against_reference(mods, inputs(2, seed=2, shape=(B, T, I)), hx)
    assert got[0][0].shape == (B, T, H) and got[0][1][0].shape == (2, B, H)


def test_unbatched_inputs():
    got = check_against_reference(layers(GatedGRU, ("-", "-")), inputs(2, seed=4, shape=(T, I)))
    assert got[0][0].shape == (T, H) and got[0][1].shape == (1, H)


def test_signatures_decide_what_packs():
    cpu = {"device": "cpu"}
    gru, chrono = GatedGRU(I, H, **cpu), GatedGRU(I, H, gate="C", **cpu)
    assert batched_implementation(gru) == "fused"  # the CPU: each layer's own fused call
    assert batch_signature(gru) == batch_signature(chrono)  # same kernel mode
    assert batch_signature(gru) != batch_signature(GatedGRU(I, H, gate="R", **cpu))
    assert batch_signature(gru) != batch_signature(GatedLSTM(I, H, **cpu))
    assert batch_signature(gru) != batch_signature(GatedGRU(I, H + 1, **cpu))
    assert batch_signature(gru) != batch_signature(GatedGRU(I, H, implementation="triton", **cpu))
    assert batch_signature(torch.nn.GRU(I, H)) is None
    assert batched_implementation(GatedGRU(I, H, implementation="torch")) is None
    assert batched_implementation(GatedGRU(I, H, implementation="reference")) is None
    assert batched_implementation(GatedGRU(I, H, num_layers=2, dropout=0.5)) is None
    with GateRecorder(gru):
        assert batched_implementation(gru) is None


def test_bad_packs_are_refused_with_the_reason():
    a, b = layers(GatedGRU, ("-", "R"))
    x = inputs(2)
    with pytest.raises(ValueError, match="layer 1 differs"):
        forward_models([a, b], x)
    with pytest.raises(ValueError, match="as many inputs"):
        forward_models([a], x)
    with pytest.raises(ValueError, match="cannot run batched"):
        forward_models([GatedGRU(I, H, implementation="torch")], x[:1])
    with pytest.raises(ValueError, match="same shape"):
        forward_models([a, layers(GatedGRU, ("-",))[0]], [x[0], x[1][:-1]])
