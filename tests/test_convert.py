"""gates.from_torch / gates.convert: torch's nn.GRU/nn.LSTM become equal gates layers.

Ground truth is the original torch module: outputs, final states and every gradient of the
converted layer must equal it, for each option torch's layers have.
"""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import gates
from gates import GatedGRU, GatedLSTM, convert, from_torch
from soensim.constraints import freeze_biases

D = torch.float64

CASES = {
    "gru": (nn.GRU, dict()),
    "gru-stacked-bidirectional": (nn.GRU, dict(num_layers=2, bidirectional=True)),
    "gru-batch-first-no-bias": (nn.GRU, dict(num_layers=3, batch_first=True, bias=False)),
    "lstm-stacked": (nn.LSTM, dict(num_layers=2)),
    "lstm-bidirectional": (nn.LSTM, dict(bidirectional=True, batch_first=True)),
    "lstm-proj": (nn.LSTM, dict(num_layers=2, proj_size=3)),
    "lstm-proj-bidirectional": (nn.LSTM, dict(num_layers=2, proj_size=2, bidirectional=True, batch_first=True)),
}


def _state(cls, kw, batch, hidden=5):
    d = 2 if kw.get("bidirectional") else 1
    n = kw.get("num_layers", 1) * d
    h = torch.randn(n, batch, kw.get("proj_size") or hidden, dtype=D, requires_grad=True)
    if cls is nn.GRU:
        return h, (h,)
    c = torch.randn(n, batch, hidden, dtype=D, requires_grad=True)
    return (h, c), (h, c)


def _loss(out, state):
    states = state if isinstance(state, tuple) else (state,)
    return out.square().sum() + sum((k + 1) * s.sin().sum() for k, s in enumerate(states))


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_states_and_gradients_equal_torch(case):
    cls, kw = CASES[case]
    torch.manual_seed(0)
    ref = cls(4, 5, dtype=D, **kw)
    layer = from_torch(ref)
    assert isinstance(layer, GatedGRU if cls is nn.GRU else GatedLSTM)
    assert layer.implementation == "torch" and layer.gate == "-"
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (_, p), (_, q) in zip(ref.named_parameters(), layer.named_parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()  # copies, not shared storage
    x = torch.randn(3, 7, 4, dtype=D) if kw.get("batch_first") else torch.randn(7, 3, 4, dtype=D)
    x.requires_grad_(True)
    hx, leaves = _state(cls, kw, batch=3)
    o1, s1 = ref(x, hx)
    o2, s2 = layer(x, hx)
    assert o2.shape == o1.shape
    torch.testing.assert_close(o2, o1, rtol=0, atol=1e-15)
    for a, b in zip(s1 if isinstance(s1, tuple) else (s1,), s2 if isinstance(s2, tuple) else (s2,), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-15)  # h_n (and c_n)
    wrt = (x, *leaves)
    g1 = torch.autograd.grad(_loss(o1, s1), list(ref.parameters()) + list(wrt))
    g2 = torch.autograd.grad(_loss(o2, s2), list(layer.parameters()) + list(wrt))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-13)
    # no initial state, and unbatched input
    torch.testing.assert_close(layer(x)[0], ref(x)[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(layer(x[0])[0], ref(x[0])[0], rtol=0, atol=1e-15)


def test_dropout_training_mode_and_flags_are_carried():
    torch.manual_seed(1)
    ref = nn.GRU(3, 6, num_layers=3, dropout=0.4, dtype=D).train()
    ref.bias_hh_l1.requires_grad_(False)
    layer = from_torch(ref)
    assert layer.training and layer.dropout == pytest.approx(0.4) and not layer.bias_hh_l1.requires_grad
    x = torch.randn(5, 2, 3, dtype=D)
    torch.manual_seed(7)
    o1 = ref(x)[0]
    torch.manual_seed(7)
    o2 = layer(x)[0]
    torch.testing.assert_close(o2, o1, rtol=0, atol=1e-15)  # the same dropout masks: the same torch kernel
    torch.manual_seed(8)
    assert not torch.allclose(layer(x)[0], o1)  # dropout is on
    assert not from_torch(ref.eval()).training


def test_conversion_leaves_the_global_rng_alone():
    torch.manual_seed(2)
    ref = nn.LSTM(3, 4, num_layers=2)
    state = torch.get_rng_state()
    from_torch(ref)
    assert torch.equal(torch.get_rng_state(), state)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.GRU(2, 4, batch_first=True)
        shared = nn.LSTM(4, 4, batch_first=True)
        self.stack = nn.ModuleList([shared, nn.Linear(4, 4), shared])
        self.head = nn.Sequential(nn.Linear(4, 2))

    def forward(self, x):
        y, _ = self.encoder(x)
        y, _ = self.stack[0](y)
        y, _ = self.stack[2](torch.tanh(self.stack[1](y)))
        return self.head(y)


def test_convert_replaces_every_torch_rnn_in_place():
    torch.manual_seed(3)
    model = _Model().double()
    ref = copy.deepcopy(model)
    head = model.head
    assert convert(model) is model
    assert isinstance(model.encoder, GatedGRU) and isinstance(model.stack[0], GatedLSTM)
    assert model.stack[0] is model.stack[2]  # one shared layer stays one layer
    assert model.head is head and isinstance(model.stack[1], nn.Linear)
    assert not any(isinstance(m, nn.RNNBase) for m in model.modules())
    x = torch.randn(2, 6, 2, dtype=D)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-15)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(model) == n(ref)
    root = nn.LSTM(2, 3)
    out = convert(root)
    assert isinstance(out, GatedLSTM) and out is not root
    assert gates.convert is convert and gates.from_torch is from_torch


def test_refusals():
    class MyGRU(nn.GRU):
        pass

    with pytest.raises(TypeError, match=r"got MyGRU \(a subclass may change the forward pass\)"):
        from_torch(MyGRU(2, 3))
    with pytest.raises(TypeError, match="converts torch.nn.GRU and torch.nn.LSTM"):
        from_torch(nn.RNN(2, 3))
    m = nn.GRU(2, 3)
    parametrize.register_parametrization(m, "weight_hh_l0", _Half())
    with pytest.raises(ValueError, match="parametrized"):
        from_torch(m)


class _Half(nn.Module):
    def forward(self, w):
        return 0.5 * w


@pytest.mark.parametrize("cls, kw, name", [(nn.GRU, dict(num_layers=2), "weight_hh_l1"),
                                           (nn.LSTM, dict(proj_size=2, bidirectional=True), "weight_hr_l0_reverse"),
                                           (nn.LSTM, dict(), "bias_ih_l0")])
def test_parametrizations_on_a_converted_layer_are_honoured(cls, kw, name):
    torch.manual_seed(4)
    ref = cls(3, 4, dtype=D, **kw)
    layer = from_torch(ref)
    parametrize.register_parametrization(layer, name, _Half())
    with torch.no_grad():
        getattr(ref, name).mul_(0.5)  # what the forward pass must now see
    x = torch.randn(6, 2, 3, dtype=D)
    o_ref, o = ref(x)[0], layer(x)[0]
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-15)
    o.square().sum().backward()
    o_ref.square().sum().backward()
    original = getattr(layer.parametrizations, name).original
    torch.testing.assert_close(original.grad, 0.5 * getattr(ref, name).grad, rtol=1e-12, atol=1e-14)  # chain rule


def test_freeze_biases_on_a_converted_layer_sets_the_rows_torch_would_see():
    torch.manual_seed(5)
    ref = nn.GRU(3, 4, num_layers=2, dtype=D)
    layer = from_torch(ref)
    freeze_biases(layer, {"z": 0.0, "r": -1.0})
    with torch.no_grad():
        for k in range(2):
            getattr(ref, f"bias_ih_l{k}")[:8] = torch.tensor([-1.0] * 4 + [0.0] * 4, dtype=D)
            getattr(ref, f"bias_hh_l{k}")[:8] = 0.0
    x = torch.randn(5, 2, 3, dtype=D)
    torch.testing.assert_close(layer(x)[0], ref(x)[0], rtol=0, atol=1e-15)
