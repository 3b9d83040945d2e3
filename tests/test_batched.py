"""gates.batched: M layers in one batched recurrence equal M separate forward passes.

Ground truth: each layer's own forward (the CPU's compiled kernel), outputs, final states and
every parameter gradient, bit for bit (the batched CPU path runs the same kernel per model).
The Triton path is checked in tests/test_triton.py under the interpreter.
"""
from __future__ import annotations

import pytest
import torch

from gates import GatedGRU, GatedLSTM, GateRecorder
from gates.batched import batch_signature, batched_implementation, forward_models
from soensim import HardwareProfile
from soensim.constraints import constrain, freeze_biases

T, B, I, H = 6, 3, 2, 8


def layers(cls, gates, **kw):
    return [cls(I, H, gate=g, seed=10 + m, master_chunk=4, **kw).double() for m, g in enumerate(gates)]


def separate(mods, xs, hx=None):
    return [mod(x) if hx is None else mod(x, h) for mod, x, h in zip(mods, xs, hx or [None] * len(mods), strict=True)]


def flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def loss_of(results):
    return sum((t * (k + 1)).sum() for r in results for k, t in enumerate(flat(r)))


def grads(mods):
    out = []
    for mod in mods:
        out += [p.grad.clone() for p in mod.parameters() if p.grad is not None]
        mod.zero_grad(set_to_none=True)
    return out


def inputs(n, seed=0, shape=(T, B, I)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(n)]


@pytest.mark.parametrize("cls,gates", [
    (GatedGRU, ("-", "C", "U")),       # one kernel mode (sigmoid), three initialisations
    (GatedGRU, ("UR", "R")),           # refine
    (GatedGRU, ("OM", "OM")),          # master cumax
    (GatedLSTM, ("-", "C")),
    (GatedLSTM, ("SST", "SST")),
    (GatedLSTM, ("O", "O")),           # cumax
])
def test_batched_forward_and_gradients_equal_separate_runs(cls, gates):
    mods = layers(cls, gates)
    xs = inputs(len(mods))
    ref = separate(mods, xs)
    loss_of(ref).backward()
    want = grads(mods)
    got = forward_models(mods, xs)
    loss_of(got).backward()
    for r, g in zip(ref, got, strict=True):
        for a, b in zip(flat(r), flat(g), strict=True):
            assert torch.equal(a, b)
    for a, b in zip(want, grads(mods), strict=True):
        assert torch.equal(a, b)


def test_constraints_and_frozen_biases_are_honoured_per_model():
    """One model under a hardware profile, one with frozen biases, one plain: each keeps its transforms."""
    mods = layers(GatedGRU, ("-", "-", "-"))
    constrain(mods[0], HardwareProfile.resolve("soen-dendrite"), dt=1e-9)
    freeze_biases(mods[1], {"z": 0.0, "r": 0.0})
    xs = inputs(3, seed=1)
    ref = separate(mods, xs)
    loss_of(ref).backward()
    want = grads(mods)
    got = forward_models(mods, xs)
    loss_of(got).backward()
    assert all(torch.equal(a, b) for r, g in zip(ref, got, strict=True) for a, b in zip(flat(r), flat(g), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(want, grads(mods), strict=True))
    assert not torch.equal(flat(got[0])[0], flat(got[2])[0])  # the profile changes the result


def test_two_layers_batch_first_and_initial_states():
    mods = [GatedLSTM(I, H, num_layers=2, batch_first=True, gate="U", seed=s).double() for s in (1, 2)]
    xs = inputs(2, seed=2, shape=(B, T, I))
    g = torch.Generator().manual_seed(3)
    hx = [(torch.randn(2, B, H, generator=g, dtype=torch.float64), torch.randn(2, B, H, generator=g,
                                                                                dtype=torch.float64)) for _ in mods]
    ref, got = separate(mods, xs, hx), forward_models(mods, xs, hx)
    for r, b in zip(ref, got, strict=True):
        assert r[0].shape == (B, T, H) and r[1][0].shape == (2, B, H)
        assert all(torch.equal(u, v) for u, v in zip(flat(r), flat(b), strict=True))


def test_unbatched_inputs():
    mods = layers(GatedGRU, ("-", "-"))
    xs = inputs(2, seed=4, shape=(T, I))
    ref, got = separate(mods, xs), forward_models(mods, xs)
    assert got[0][0].shape == (T, H) and got[0][1].shape == (1, H)
    assert all(torch.equal(u, v) for r, b in zip(ref, got, strict=True) for u, v in zip(flat(r), flat(b), strict=True))


def test_signatures_decide_what_packs():
    gru, sigmoid_family = layers(GatedGRU, ("-", "C", "R"))[0], layers(GatedGRU, ("U",))[0]
    assert batch_signature(gru) == batch_signature(sigmoid_family)  # same kernel mode
    assert batch_signature(gru) != batch_signature(layers(GatedGRU, ("R",))[0])
    assert batch_signature(gru) != batch_signature(layers(GatedLSTM, ("-",))[0])
    assert batch_signature(GatedGRU(I, H + 1).double()) != batch_signature(gru)
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
        forward_models([GatedGRU(I, H, implementation="torch").double()], x[:1])
    with pytest.raises(ValueError, match="same shape"):
        forward_models([a, layers(GatedGRU, ("-",))[0]], [x[0], x[1][:-1]])
