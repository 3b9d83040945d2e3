"""check(): the named rules, on constrained, hand-broken and freely trained models."""
import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import gates
from soensim.constraints import (
    RULES,
    Violation,
    check,
    constrain,
    excitatory_flux,
    fan_in,
    flux_window_excess,
    unconstrain,
)
from soensim.layouts import Cell, Layout, Param
from soensim.profiles import HardwareProfile
from soensim.timescales import tau_to_bias

DENDRITE = HardwareProfile.preset("soen-dendrite").replace(flux_budget=None)
FABRICATED = HardwareProfile.preset("soen-fabricated")
SOFTWARE = HardwareProfile.preset("software")


def _train(model, opt, steps=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        out = model(torch.randn(6, 4, model.input_size, generator=gen))[0]
        loss = (out - 0.9).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_spread_sample_passes_with_spread_and_is_flagged_without():
    H = 40
    s = gates.convert(nn.GRU(1, H))
    rep = constrain(s, FABRICATED, seed=1, spread=True)
    t_s = rep.taus["<model>.l0"]
    assert torch.equal(t_s, FABRICATED.unit_taus(H, 1, spread=True))
    assert not torch.equal(t_s, FABRICATED.unit_taus(H, 1))
    assert check(s, FABRICATED, seed=1, spread=True) == []
    # the spread sample is not the design: checked without spread it is flagged
    rules = {v.rule for v in check(s, FABRICATED, seed=1)}
    assert {"frozen_time_constant", "time_constant_range"} <= rules


def test_check_clean_on_constrained_models():
    for prof in (DENDRITE, FABRICATED):
        m = nn.Sequential()
        m.add_module("rnn", nn.LSTM(3, 6, num_layers=2))
        m.add_module("head", nn.Linear(6, 2))
        gates.convert(m)
        constrain(m, prof, seed=5)
        assert check(m, prof, seed=5) == []
        assert not parametrize.is_parametrized(m.head)  # software readout stays free
    assert set(RULES) >= {"coupling_bound", "frozen_time_constant", "time_constant_range", "quantization_levels",
                          "excitatory_flux_window", "fan_in", "frozen_bias"}


@pytest.mark.parametrize("torch_layer", [False, True])
def test_check_reports_named_violations_on_hand_broken_model(torch_layer):
    H, J = 4, FABRICATED.coupling_max
    m = gates.convert(nn.GRU(2, H))
    constrain(m, FABRICATED, seed=0)
    unconstrain(m)
    if torch_layer:  # check is read-only: torch's own nn.GRU holding the same values is read as well
        ref = nn.GRU(2, H)
        ref.load_state_dict(m.state_dict())
        m = ref
    with torch.no_grad():
        m.weight_hh_l0[0, 0] = 0.8  # above J_max (and off the grid)
        m.weight_ih_l0[1, 1] = 0.13  # inside the bound but off the 16-level grid (-0.5 + k/15)
        m.bias_ih_l0[H] = 20.0  # z row: not the frozen design value, τ far above 1 µs
        m.bias_hh_l0[0] = 0.3  # reset row: should be 0
    got = {(v.parameter, v.rule) for v in check(m, FABRICATED)}
    assert got == {
        ("weight_hh_l0", "coupling_bound"),
        ("weight_hh_l0", "quantization_levels"),
        ("weight_ih_l0", "quantization_levels"),
        ("bias_ih_l0", "frozen_time_constant"),
        ("bias_ih_l0", "time_constant_range"),
        ("bias_ih_l0", "frozen_bias"),
    }
    v = {x.rule: x for x in check(m, FABRICATED)}
    assert isinstance(v["coupling_bound"], Violation)
    assert v["coupling_bound"].value == pytest.approx(0.8) and v["coupling_bound"].limit == J
    design = tau_to_bias(FABRICATED.unit_taus(H, 0)[0], FABRICATED.dt).item()
    assert v["frozen_time_constant"].value == pytest.approx(20.0 - design, abs=1e-5)
    assert v["time_constant_range"].value == pytest.approx(FABRICATED.dt / math.log1p(math.exp(-20.0)), rel=1e-6)
    assert v["frozen_bias"].value == pytest.approx(0.3)
    assert "1 of 4 units" in v["frozen_time_constant"].message
    with pytest.raises(dataclasses.FrozenInstanceError):
        v["coupling_bound"].rule = "x"  # type: ignore[misc]
    # rule selection
    assert {x.rule for x in check(m, FABRICATED, rules=["coupling_bound"])} == {"coupling_bound"}
    with pytest.raises(ValueError, match="known rules"):
        check(m, FABRICATED, rules=["nope"])


def test_check_flags_freely_trained_unconstrained_model():
    torch.manual_seed(8)
    m = nn.GRU(3, 8)
    _train(m, torch.optim.Adam(m.parameters(), lr=0.5), steps=5)
    rules = {v.rule for v in check(m, FABRICATED)}
    assert {"coupling_bound", "quantization_levels", "frozen_time_constant", "time_constant_range", "frozen_bias"} <= rules
    assert check(m, SOFTWARE) == []  # the software profile allows everything


class Soma(nn.Module):
    """A SOEN-core layer declaring its layout, with its own s_max/phi_th."""

    s_max, phi_th = 0.7, 0.17

    def __init__(self, J):
        super().__init__()
        self.J = nn.Parameter(J.clone())
        self.J_in = nn.Parameter(torch.zeros(J.shape[0], 2))

    def layout(self):
        n = self.J.shape[0]
        return Layout("soen", n, {}, (Cell(0, 0, "", "J_in", "J"),),
                      (Param("J_in", "weights", "input"), Param("J", "weights", "recurrent")), leaky=False)


def test_flux_window_and_fan_in_functions_and_rules():
    J = torch.tensor([[0.2, -0.3, 0.1], [0.5, 0.5, 0.0]])
    assert torch.allclose(excitatory_flux(J, 0.7), torch.tensor([0.21, 0.70]))
    assert torch.allclose(flux_window_excess(J, 0.7, 0.17), torch.tensor([0.21 - 0.33, 0.70 - 0.33]))
    assert fan_in(J).tolist() == [3, 2]
    assert fan_in(J, atol=0.15).tolist() == [2, 2]

    net = nn.Sequential(Soma(J))
    got = check(net, SOFTWARE)
    assert [(v.parameter, v.rule) for v in got] == [("0.J", "excitatory_flux_window")]
    assert got[0].value == pytest.approx(0.7) and got[0].limit == pytest.approx(0.33)
    dense = torch.ones(3, 25) * 0.01
    net[0] = Soma(dense)
    fi = check(net, SOFTWARE, max_fan_in=20)
    assert [(v.rule, v.value, v.limit) for v in fi] == [("fan_in", 25.0, 20.0)]
    assert check(net, SOFTWARE.replace(max_fan_in=25)) == [] and check(net, SOFTWARE.replace(max_fan_in=24))
    # on a GRU: flux window applies to the recurrent matrix only; fan-in counts input + recurrent
    g = nn.GRU(2, 30)
    rules = {(v.parameter, v.rule) for v in check(g, SOFTWARE, s_max=0.7, phi_th=0.17, max_fan_in=20)}
    assert rules == {("weight_hh_l0", "excitatory_flux_window"), ("weight_ih_l0 + weight_hh_l0", "fan_in")}


def test_check_errors():
    with pytest.raises(ValueError, match="no recurrent layer"):
        check(nn.Linear(2, 2), DENDRITE)
    with pytest.raises(TypeError, match="HardwareProfile"):
        check(nn.GRU(2, 2), {"dt": 1.0})
    with pytest.raises(ValueError, match="no gate"):
        check(nn.Sequential(nn.RNN(2, 2)), DENDRITE)


@pytest.mark.parametrize("gate", ["O", "OM", "UM", "OR"])
def test_gated_non_leaky_mechanisms_are_refused(gate):
    m = gates.GatedGRU(2, 16, gate=gate, master_chunk=4, seed=0)
    with pytest.raises(ValueError, match="not a leaky"):
        constrain(m, DENDRITE)
    assert not parametrize.is_parametrized(m)
    rules = {v.rule for v in check(m, DENDRITE) if math.isnan(v.value)}
    assert rules == {"frozen_time_constant", "time_constant_range"}


def test_gated_unconstrained_training_is_flagged():
    torch.manual_seed(13)
    m = gates.GatedGRU(3, 8, gate="U", seed=2)
    _train(m, torch.optim.Adam(m.parameters(), lr=0.5), steps=4)
    rules = {v.rule for v in check(m, FABRICATED)}
    assert {"coupling_bound", "quantization_levels", "frozen_time_constant", "time_constant_range", "frozen_bias"} <= rules
