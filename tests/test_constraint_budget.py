"""The flux budget (Σ_j |W_ij| over a row's input and recurrent weights ≤ flux_budget) and the
fan-in mask, enforced by constrain on every layer type and checked by the rules."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import gates
from soensim.constraints import RULES, FrozenRows, check, constrain, unconstrain
from soensim.layouts import find_layers, owner, tensor
from soensim.profiles import HardwareProfile
from soensim.soen_layer import SOENLayer

DENDRITE = HardwareProfile.preset("soen-dendrite")  # flux budget from the flux window (≈ 0.43)
SOEN_DT = 2e-9  # τ/dt from 5 to 500 steps


def soen_layer(i, n, seed=0):
    layer = SOENLayer(i, n, DENDRITE.replace(flux_budget=None), dt=SOEN_DT, seed=seed, input_scale=3.0,
                recurrent_scale=1.0)
    unconstrain(layer)  # whatever the layer applied itself: the test applies the profile under test
    return layer


LAYERS = {
    "GatedGRU": lambda: gates.GatedGRU(3, 16, num_layers=2, seed=0),
    "GatedGRU-UR": lambda: gates.GatedGRU(3, 16, gate="UR", seed=0),
    "GatedLSTM": lambda: gates.GatedLSTM(3, 16, num_layers=2, seed=0),
    "nn.GRU-bidirectional": lambda: gates.convert(nn.GRU(3, 16, bidirectional=True)),
    "nn.LSTM-proj": lambda: gates.convert(nn.LSTM(3, 16, proj_size=5)),
    "GRUCell": lambda: nn.GRUCell(3, 16),
    "LSTMCell": lambda: nn.LSTMCell(3, 16),
    "SOENLayer": lambda: soen_layer(3, 16),
}


def _forward(m, x):
    """All hidden states over the sequence x (T, B, I), whatever the layer type."""
    if isinstance(m, (nn.GRUCell, nn.LSTMCell)):
        state, outs = None, []
        for xt in x:
            state = m(xt, state)
            outs.append(state if isinstance(m, nn.GRUCell) else state[0])
        return torch.stack(outs)
    return m(x)[0]


def _rows(m):
    """For every cell: (row couplings' paths, Σ_j |W_ij| per row in float64)."""
    out = []
    for _, layer, lay in find_layers(m):
        kinds = {p.name: p.kind for p in lay.params}
        for cell in lay.cells:
            paths = [w for w in cell.weights if kinds[w] in ("input", "recurrent")]
            with torch.no_grad():
                total = sum(tensor(layer, w).detach().abs().double().sum(1) for w in paths)
            out.append((layer, paths, total))
    return out


def _connected(m, attr):
    """The fan-in mask constrain drew for ``m.attr`` (True: a connection)."""
    return ~next(t.mask for t in m.parametrizations[attr] if isinstance(t, FrozenRows))


def _input_size(m):
    return m.input_size


def _train(m, steps=6, lr=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    dtype = next(m.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(8, 4, _input_size(m), generator=gen, dtype=dtype)
        loss = (_forward(m, x) - 0.9).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("name", list(LAYERS))
def test_budget_holds_after_every_adam_step_at_lr_1_and_weights_keep_gradient(name):
    torch.manual_seed(0)
    m = LAYERS[name]()
    budget = DENDRITE.flux_budget
    constrain(m, DENDRITE, dt=SOEN_DT if name == "SOENLayer" else None)
    for _, _, total in _rows(m):
        assert total.max().item() <= budget  # at initialisation already (no tolerance)
    before = {p: tensor(layer, p).detach().clone() for layer, paths, _ in _rows(m) for p in paths}
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(m.parameters(), lr=1.0)
    for _ in range(6):
        x = torch.randn(8, 4, 3, generator=gen, dtype=next(m.parameters()).dtype)
        loss = (_forward(m, x) - 0.9).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for _, _, total in _rows(m):  # Σ_j |W_ij| over input + recurrent weights of each row, every step
            assert total.max().item() <= budget
    binding = max(total.max().item() for _, _, total in _rows(m))
    assert binding > 0.99 * budget  # the budget was reached: the bound was tested, not idle
    for layer, paths, _ in _rows(m):
        for p in paths:
            module, attr = owner(layer, p)
            raw = module.parametrizations[attr].original
            assert raw.grad is not None and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0, p
            assert not torch.equal(tensor(layer, p).detach(), before[p]), p  # they trained
    assert check(m, DENDRITE, dt=SOEN_DT if name == "SOENLayer" else None, rules=["flux_budget", "coupling_bound"]) == []


def test_rows_inside_the_budget_are_untouched_and_unconstrain_keeps_values():
    torch.manual_seed(2)
    m = gates.GatedGRU(3, 8, seed=1)
    start = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = torch.randn(5, 2, 3)
    constrain(m, DENDRITE.replace(coupling_max=None, flux_budget=100.0))
    for n in ("weight_ih_l0", "weight_hh_l0"):
        assert torch.equal(getattr(m, n), start[n]), n  # identity inside the budget
    unconstrain(m)
    tight = DENDRITE.replace(coupling_max=None, flux_budget=0.3)
    constrain(m, tight)
    for _, _, total in _rows(m):
        assert total.max().item() <= 0.3 and total.min().item() > 0.299  # every row was above 0.3: scaled to it
    # scaling a whole row keeps its direction: the ratios between weights of a row are those of the original
    w = torch.cat([m.weight_ih_l0, m.weight_hh_l0], 1).detach().double()
    w0 = torch.cat([start["weight_ih_l0"], start["weight_hh_l0"]], 1).double()
    torch.testing.assert_close(w / w.abs().sum(1, keepdim=True), w0 / w0.abs().sum(1, keepdim=True))
    c, w_ih = copy.deepcopy(m), m.weight_ih_l0.detach().clone()  # a copy's budget reads the copy's partner
    with torch.no_grad():
        c.parametrizations.weight_hh_l0.original.mul_(5.0)  # its rows grow: its weight_ih share shrinks
    assert torch.equal(m.weight_ih_l0, w_ih)
    assert not torch.equal(c.weight_ih_l0, m.weight_ih_l0) and check(c, tight, rules=["flux_budget"]) == []
    _train(m, steps=3)
    with torch.no_grad():
        y = m(x)[0]
        eff = {n: getattr(m, n).detach().clone() for n in start}
    unconstrain(m)  # the budget reads both matrices: every value is read before the first removal
    assert not parametrize.is_parametrized(m)
    assert all(torch.equal(getattr(m, n), t) for n, t in eff.items())
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], y, rtol=0, atol=0)
    assert check(m, tight) == []


def test_budget_with_quantization_and_fan_in_mask():
    torch.manual_seed(3)
    prof = HardwareProfile.preset("soen-fabricated", flux_budget=0.8, max_fan_in=6)
    m = gates.GatedGRU(3, 10, seed=0)
    constrain(m, prof, seed=5)
    mask = _connected(m, "weight_ih_l0"), _connected(m, "weight_hh_l0")
    assert ((mask[0].sum(1) + mask[1].sum(1)) == 6).all()
    _train(m, steps=6)
    assert check(m, prof, seed=5) == []
    w_ih, w_hh = m.weight_ih_l0.detach(), m.weight_hh_l0.detach()
    total = w_ih.abs().double().sum(1) + w_hh.abs().double().sum(1)
    assert total.max().item() <= 0.8
    fan = (w_ih != 0).sum(1) + (w_hh != 0).sum(1)
    assert fan.max().item() <= 6
    # zero entries are the mask's (or below the smallest level): never outside the drawn mask
    assert not ((w_ih != 0) & ~mask[0]).any() and not ((w_hh != 0) & ~mask[1]).any()
    L, J = prof.weight_levels, prof.coupling_max
    grid = torch.tensor([-J + 2 * J * k / (L - 1) for k in range(L)] + [0.0], dtype=torch.float64)
    for w in (w_ih, w_hh):
        assert (w.double()[..., None] - grid).abs().amin(-1).max() < 1e-6


def test_fan_in_mask_is_fixed_by_the_seed_and_holds_under_training():
    limit = 5
    prof = DENDRITE.replace(flux_budget=None, max_fan_in=limit)

    def masked(seed):
        m = gates.GatedLSTM(4, 6, num_layers=2, seed=0)
        constrain(m, prof, seed=seed)
        return m, [_connected(m, a) for a in ("weight_ih_l0", "weight_hh_l0", "weight_hh_l1")]

    a, ma = masked(7)
    _, mb = masked(7)
    _, mc = masked(8)
    assert all(torch.equal(x, y) for x, y in zip(ma, mb, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(ma, mc, strict=True))
    for cell in ("l0", "l1"):
        fan = (getattr(a, f"weight_ih_{cell}") != 0).sum(1) + (getattr(a, f"weight_hh_{cell}") != 0).sum(1)
        assert fan.tolist() == [limit] * 24  # exactly `limit` connections per gate row
    _train(a, steps=4)
    assert torch.equal(a.weight_ih_l0 != 0, ma[0]) and torch.equal(a.weight_hh_l0 != 0, ma[1])
    assert check(a, prof, seed=7) == []
    raw = a.parametrizations.weight_hh_l0.original
    assert torch.equal(raw.grad[~ma[1]], torch.zeros(int((~ma[1]).sum())))  # absent connections get no gradient
    assert raw.grad[ma[1]].abs().sum() > 0


def test_flux_budget_rule_flags_dense_rows_with_the_worst_sum():
    torch.manual_seed(4)
    g = nn.GRU(3, 20)  # read-only: torch's layer is checked as it is
    prof = HardwareProfile(name="budget", dt=1.0, flux_budget=1.0)
    worst = (g.weight_ih_l0.double().abs().sum(1) + g.weight_hh_l0.double().abs().sum(1)).max().item()
    (v,) = check(g, prof)
    assert (v.rule, v.parameter, v.limit) == ("flux_budget", "weight_ih_l0 + weight_hh_l0", 1.0)
    assert v.value == pytest.approx(worst, rel=1e-9) and worst > 2.0
    assert check(g, prof.replace(flux_budget=worst * 1.001)) == []
    assert "flux_budget" in RULES
    c = copy.deepcopy(gates.convert(g))
    constrain(c, prof)
    assert check(c, prof) == []


def test_soen_layer_roles_follow_the_profile():
    torch.manual_seed(5)
    m = soen_layer(3, 8)
    prof = DENDRITE.replace(trainable=frozenset({"weights", "bias_current"}))
    rep = constrain(m, prof)
    assert {(t.parameter, t.kind) for t in rep.transforms if t.kind == "frozen"} == {("cell.phi_offset", "frozen")}
    assert rep.taus == {}  # a SOEN layer's time constants are set by the layer itself, not by bias rows
    phi, i_b = m.cell.phi_offset.detach().clone(), m.cell.i_b.detach().clone()
    _train(m, steps=3, lr=0.1)
    assert torch.equal(m.cell.phi_offset, phi) and not torch.equal(m.cell.i_b, i_b)
    with pytest.raises(ValueError, match="no decay gate"):
        constrain(soen_layer(3, 8), DENDRITE, update_bias=0.0)
