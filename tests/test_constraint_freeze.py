"""freeze_biases: the one way to freeze bias rows (a FrozenRows transform that neither the
gradient nor AdamW's weight decay can move), for every cell of a layer."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import gates
from soensim.constraints import FrozenBiases, constrain, freeze_biases
from soensim.layouts import layout
from soensim.profiles import HardwareProfile


def effective(module: nn.Module) -> dict[str, torch.Tensor]:
    """Effective (frozen) values of a module's direct tensors, by attribute access."""
    names = [n for n, _ in module.named_parameters(recurse=False)]
    if parametrize.is_parametrized(module):
        names += list(module.parametrizations.keys())
    with torch.no_grad():
        return {n: getattr(module, n).detach().clone() for n in names}


@pytest.mark.parametrize("make", [lambda: gates.convert(nn.GRU(3, 8, num_layers=2)), lambda: nn.GRUCell(3, 8)])
def test_freeze_biases_holds_under_adamw_and_lifts_cleanly(make):
    torch.manual_seed(14)
    m = make()
    z = torch.linspace(-1, 1, 8)
    handle = freeze_biases(m, {"r": 0.0, "update": z})
    assert isinstance(handle, FrozenBiases) and handle.active and handle.blocks == {"reset": slice(0, 8),
                                                                                   "update": slice(8, 16)}
    lay = layout(m)
    opt = torch.optim.AdamW(m.parameters(), lr=1.0, weight_decay=0.5)
    x = torch.randn(5, 2, 3)
    for _ in range(3):
        out = m(x[0]) if isinstance(m, nn.GRUCell) else m(x)[0]
        opt.zero_grad()
        out.pow(2).sum().backward()
        opt.step()
    for cell in lay.cells:
        b_ih, b_hh = getattr(m, cell.bias_ih), getattr(m, cell.bias_hh)
        assert torch.equal(b_ih[:8], torch.zeros(8)) and torch.equal(b_ih[8:16], z)  # bit-identical
        assert torch.equal(b_hh[:16], torch.zeros(16))
        assert not torch.equal(b_ih[16:], torch.zeros(8))  # the candidate trains
    eff = effective(m)
    assert sorted(handle.remove()) == sorted(handle.parameters) and not handle.active
    assert not parametrize.is_parametrized(m)
    assert all(torch.equal(getattr(m, n), t) for n, t in eff.items())


def test_freeze_biases_none_keeps_the_layer_function_and_takes_per_cell_values():
    torch.manual_seed(15)
    m = gates.convert(nn.GRU(2, 4, num_layers=2))
    x = torch.randn(6, 3, 2)
    with torch.no_grad():
        y = m(x)[0]
        b_hn = m.bias_hh_l0[8:].clone()
    handle = freeze_biases(m, {"z": None, "n": None})
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], y, rtol=0, atol=1e-6)
    assert torch.equal(m.bias_hh_l0[4:8], torch.zeros(4))  # decay rows: the sum moved into bias_ih
    assert torch.equal(m.bias_hh_l0[8:], b_hn)  # GRU candidate: b_hn acts inside r·(...), both halves kept
    handle.remove()
    per_cell = torch.tensor([[0.1] * 4, [0.2] * 4])
    freeze_biases(m, {"update": per_cell})
    assert torch.equal(m.bias_ih_l0[4:8], per_cell[0]) and torch.equal(m.bias_ih_l1[4:8], per_cell[1])
    with pytest.raises(ValueError, match="already constrained"):
        freeze_biases(m, {"r": 0.0})
    with pytest.raises(ValueError, match="block must be one of"):
        freeze_biases(nn.LSTMCell(2, 3), {"z": 0.0})
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        freeze_biases(gates.convert(nn.GRU(2, 4, num_layers=2)), {"z": torch.zeros(3)})
    with pytest.raises(ValueError, match="no stacked gate biases"):
        freeze_biases(nn.GRUCell(2, 3, bias=False), {"z": 0.0})
    with pytest.raises(TypeError, match="mapping"):
        freeze_biases(nn.GRUCell(2, 3), ["z"])


def test_constrain_and_freeze_biases_freeze_the_same_way():
    # the b_z = b_r = 0 ablation as a profile (constrain) and as a software freeze: one mechanism, same rows
    ablated = HardwareProfile(name="ablated", dt=1.0, trainable={"weights", "candidate_bias"})
    a, b = gates.GatedGRU(2, 6, seed=3), gates.GatedGRU(2, 6, seed=3)
    constrain(a, ablated)
    freeze_biases(b, {"reset": 0.0, "update": 0.0})
    for name in ("bias_ih_l0", "bias_hh_l0"):
        ta, tb = a.parametrizations[name][0], b.parametrizations[name][0]
        assert type(ta) is type(tb) and torch.equal(ta.mask, tb.mask) and torch.equal(ta.value, tb.value)
    x = torch.randn(4, 3, 2)
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="already constrained"):
        constrain(b, ablated)
