"""Transfer of trained GRU-core layers to continuous time (soensim.transfer) and the transfer study."""
import math

import pytest
import torch
from torch import nn

import gates
from gates import GatedGRU
from soensim import HardwareProfile, simulate
from soensim.constraints import constrain
from soensim.continuous_gru import ContinuousGRU, ContinuousLayer, gru_gates
from soensim.layouts import gate_layout, layout, rnn_cells
from soensim.transfer import layer_weights, max_abs_diff, to_continuous, transfer_model

LEAKY_GATES = ["-", "C", "U", "R", "UR", "SST", "SSTN"]


def perturbed(layer: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Move every parameter away from its init so that all gates and weights matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def gated(gate: str, hidden: int = 8, inp: int = 3, implementation: str = "auto", batch_first: bool = True):
    layer = GatedGRU(inp, hidden, batch_first=batch_first, gate=gate, implementation=implementation, seed=1,
                     chrono_tmax=20.0).double()
    return perturbed(layer)


def x64(b=4, t=25, i=3, seed=1, batch_first=True):
    g = torch.Generator().manual_seed(seed)
    shape = (b, t, i) if batch_first else (t, b, i)
    return torch.randn(shape, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("gate", LEAKY_GATES)
@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_exact_integrator_reproduces_gated_gru(gate, implementation):
    layer = gated(gate, implementation=implementation)
    x = x64()
    h0 = 0.5 * torch.randn(1, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y, h_n = layer(x, h0)
    cont = to_continuous(layer, dt=1e-9)
    y2, h2 = cont.run(x, h0)
    assert y2.dtype == torch.float64 and y2.shape == y.shape and h2.shape == h_n.shape
    assert max_abs_diff((y, h_n), (y2, h2)) < 1e-10


@pytest.mark.parametrize("batch_first", [True, False])
def test_exact_integrator_reproduces_torch_gru(batch_first):
    torch.manual_seed(0)
    gru = perturbed(nn.GRU(3, 10, batch_first=batch_first).double())
    x = x64(batch_first=batch_first)
    y, h_n = gru(x)
    cont = to_continuous(gru, dt=1.0)
    assert cont.batch_first == batch_first and cont.mode == "sigmoid"
    y2, h2 = cont.run(x)
    assert max_abs_diff((y, h_n), (y2, h2)) < 1e-10


def test_grucell_and_no_bias():
    torch.manual_seed(0)
    cell = perturbed(nn.GRUCell(3, 6).double())
    x = x64(t=5, batch_first=False)
    h = torch.zeros(4, 6, dtype=torch.float64)
    hs = []
    for t in range(5):
        h = cell(x[t], h)
        hs.append(h)
    y2, _ = to_continuous(cell, dt=2.0).run(x)
    assert max_abs_diff(torch.stack(hs), y2) < 1e-10
    gru = perturbed(nn.GRU(3, 6, bias=False).double())
    assert max_abs_diff(gru(x)[0], to_continuous(gru).run(x)[0]) < 1e-10


@pytest.mark.parametrize("gate", ["-", "UR", "SST", "SSTN"])
def test_dopri5_with_held_gates_matches_to_tolerance(gate):
    layer = gated(gate)
    x = x64(b=3, t=8)
    y, _ = layer(x)
    cont = to_continuous(layer, dt=1e-9)  # physical seconds: the solver works in normalized time
    errs = []
    for rtol in (1e-5, 1e-9):
        y2, _ = cont.run(x, method="dopri5", rtol=rtol, atol=rtol * 1e-2)
        errs.append(max_abs_diff(y, y2))
    assert errs[1] < 1e-7
    assert errs[1] < errs[0]


def test_fixed_step_solver_converges_to_exact():
    layer = gated("-")
    x = x64(b=2, t=6)
    y, _ = layer(x)
    cont = to_continuous(layer)
    e = [max_abs_diff(y, cont.run(x, method="rk4", substeps=k)[0]) for k in (1, 2, 4)]
    assert e[0] > e[1] > e[2]
    assert math.log2(e[1] / e[2]) > 3.5  # 4th order
    with pytest.raises(ValueError, match="substeps"):
        cont.run(x, method="dopri5", substeps=2)


def test_simulate_registry_runs_the_continuous_gru():
    """ContinuousGRU is a DrivenSystem: the exact method of soensim.simulate is the discrete layer."""
    gru = perturbed(nn.GRU(3, 5).double())
    x = x64(t=7, batch_first=False)
    cont = to_continuous(gru, dt=0.5)
    states = simulate(cont, x, 0.5, "exact")
    assert states.shape == (8, 4, 5)
    assert max_abs_diff(states[1:], gru(x)[0]) < 1e-10
    # an ODE method of the registry integrates the gates-follow-the-state field (hold="input")
    ode = simulate(cont, x[:3], 0.5, "dopri5", rtol=1e-8, atol=1e-10)
    euler = cont.run(x[:3], hold="input", substeps=64)[0]
    assert max_abs_diff(ode[1:], euler) < 5e-3


def test_hold_input_exponential_euler_is_first_order():
    gru = perturbed(nn.GRU(3, 6).double(), 0.5)
    x = x64(b=3, t=4, batch_first=False)
    cont = to_continuous(gru, hold="input")
    assert max_abs_diff(cont.run(x)[0], gru(x)[0]) < 1e-10  # one sub-step: the discrete layer
    ref = cont.run(x, method="dopri5", rtol=1e-8, atol=1e-10)[0]
    ks = [2, 4, 8, 16]
    errs = [max_abs_diff(ref, cont.run(x, substeps=k)[0]) for k in ks]
    orders = [math.log2(a / b) for a, b in zip(errs[:-1], errs[1:], strict=True)]
    assert all(0.8 < o < 1.2 for o in orders), orders


def test_vector_field_is_the_leaky_integrator():
    gru = perturbed(nn.GRU(2, 4).double())
    cont = to_continuous(gru, dt=3.0)
    x = torch.randn(5, 2, dtype=torch.float64)
    h = torch.randn(5, 4, dtype=torch.float64)
    gi = cont.drive(x)
    tau, n = cont.tau_and_target(gi, h)
    cont.hold(gi)
    f = cont(torch.tensor(0.0), h)
    assert torch.allclose(f, (n - h) / tau)
    # τ = -dt / log z with z the GRU's update gate
    H = 4
    gh = h @ gru.weight_hh_l0.T + gru.bias_hh_l0
    z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    assert torch.allclose(tau, -3.0 / torch.log(z))


# --------------------------------------------------------------------------- hardware τ
@pytest.mark.parametrize("make", [lambda: gates.convert(nn.GRU(2, 6, batch_first=True)),
                                  lambda: GatedGRU(2, 6, batch_first=True, gate="UR", seed=0),
                                  lambda: GatedGRU(2, 6, batch_first=True, gate="SST", seed=0)],
                         ids=["nn.GRU", "UR", "SST"])
def test_frozen_bias_and_zero_update_rows_give_the_physical_tau(make):
    profile = HardwareProfile.preset("soen-dendrite")
    dt = 1e-9
    layer = make().double()
    report = constrain(layer, profile, dt=dt)
    blocks = layout(layer).blocks
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0"):
            orig = getattr(layer.parametrizations, name).original
            orig[blocks["update"]] = 0.0
            if "refine" in blocks:
                orig[blocks["refine"]] = 0.0
    cont = to_continuous(layer, dt=dt)
    x = torch.randn(3, 7, 2, dtype=torch.float64)
    h = torch.randn(3, 7, 6, dtype=torch.float64)
    tau = cont.time_constants(x, h)
    expected = next(iter(report.taus.values()))
    assert torch.allclose(tau, expected.expand_as(tau), rtol=1e-10, atol=0)
    y, _ = layer(x)
    assert max_abs_diff(y, cont.run(x)[0]) < 1e-10


def test_constrained_layer_is_read_through_its_transforms():
    profile = HardwareProfile.preset("soen-fabricated")  # bounded + 16-level quantized weights
    layer = perturbed(GatedGRU(2, 5, batch_first=True, gate="-", seed=0).double(), 1.0)
    constrain(layer, profile, dt=1e-9)
    w = layer_weights(layer)
    assert w["weight_hh"].abs().max() <= 0.5
    assert max_abs_diff(w["weight_hh"], layer.weight_hh_l0) == 0
    x = torch.randn(2, 9, 2, dtype=torch.float64)
    assert max_abs_diff(layer(x)[0], to_continuous(layer, 1e-9).run(x)[0]) < 1e-10


class PermutedGRU(nn.Module):
    """An nn.GRU whose stacked rows are stored as (update, candidate, reset) and declared so by its layout."""

    def __init__(self, gru: nn.GRU):
        super().__init__()
        H = gru.hidden_size
        perm = torch.cat([torch.arange(H, 2 * H), torch.arange(2 * H, 3 * H), torch.arange(H)])
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            self.register_parameter(name, nn.Parameter(getattr(gru, name + "_l0").detach()[perm].clone()))
        self.hidden_size = H

    def layout(self):
        H = self.hidden_size
        return gate_layout("gru", H, {"update": H, "candidate": H, "reset": H}, rnn_cells(self, 0), mode="sigmoid")


def test_rows_are_read_through_the_layout():
    """The blocks the layout names, not torch's row order, decide which rows are which gate."""
    gru = perturbed(nn.GRU(3, 5).double())
    x = x64(t=6, batch_first=False)
    permuted = PermutedGRU(gru)
    w = layer_weights(permuted)
    assert torch.equal(w["weight_hh"], gru.weight_hh_l0) and torch.equal(w["bias_ih"], gru.bias_ih_l0)
    assert max_abs_diff(to_continuous(permuted).run(x)[0], gru(x)[0]) < 1e-12


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("gate", ["O", "OM", "UM", "OR"])
def test_cumax_and_master_gates_are_refused(gate):
    with pytest.raises(ValueError, match="leaky"):
        to_continuous(GatedGRU(2, 16, gate=gate, master_chunk=4))


@pytest.mark.parametrize("layer", [nn.LSTM(2, 4), nn.RNN(2, 4), nn.GRU(2, 4, num_layers=2),
                                   nn.GRU(2, 4, bidirectional=True), nn.Linear(2, 4)],
                         ids=["lstm", "rnn", "two-layers", "bidirectional", "linear"])
def test_non_gru_layers_are_refused(layer):
    with pytest.raises(ValueError):
        to_continuous(layer)


def test_bad_arguments():
    gru = nn.GRU(2, 4)
    with pytest.raises(ValueError, match="dt"):
        to_continuous(gru, dt=0.0)
    with pytest.raises(ValueError, match="hold"):
        to_continuous(gru, hold="nothing")
    cont = to_continuous(gru)
    with pytest.raises(ValueError, match="unknown method"):
        cont.run(torch.zeros(3, 1, 2), method="leapfrog")
    with pytest.raises(ValueError, match="I=2"):
        cont.run(torch.zeros(3, 1, 5))
    with pytest.raises(RuntimeError, match="hold"):
        ContinuousGRU(gru.weight_ih_l0, gru.weight_hh_l0, None, None, 1.0)(torch.tensor(0.0), torch.zeros(1, 4))


# --------------------------------------------------------------------------- models
class Seq(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_transfer_model_swaps_the_layer_and_keeps_the_head():
    torch.manual_seed(0)
    model = Seq(GatedGRU(3, 7, batch_first=True, gate="R", seed=2))
    new = transfer_model(model, dt=1.0)
    assert isinstance(new.rnn, ContinuousLayer) and isinstance(model.rnn, GatedGRU)
    assert new.head is not model.head and torch.equal(new.head.weight, model.head.weight)
    x = torch.randn(5, 12, 3)
    out = new(x)
    assert out.dtype == torch.float32
    assert max_abs_diff(out, model(x)) < 1e-5  # float32 model vs float64 simulation
    with pytest.raises(ValueError, match="no GRU-core"):
        transfer_model(nn.Linear(2, 2))


def test_gradients_flow_through_the_continuous_model():
    gru = nn.GRU(2, 3).double()
    cont = to_continuous(gru, requires_grad=True)
    y, _ = cont.run(torch.randn(4, 2, 2, dtype=torch.float64))
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cont.parameters())


def test_gru_gates_log_g_is_accurate_for_long_time_constants():
    H = 2
    gi = torch.zeros(1, 3 * H, dtype=torch.float64)
    gh = torch.zeros(1, 3 * H, dtype=torch.float64)
    gi[0, H:2 * H] = 30.0  # z = sigmoid(30): 1 - z ≈ 9.4e-14
    log_g, _ = gru_gates(gi, gh, "sigmoid")
    assert torch.allclose(-log_g, torch.full_like(log_g, math.exp(-30.0)), rtol=1e-12)


# --------------------------------------------------------------------------- study
def test_transfer_study_smoke(tmp_path):
    from studies import transfer_study as ts

    result = ts.adding_experiment(tmp_path, "smoke", sweeps={"tau_spread": (0.0, 0.2), "quantize": (None, 8)},
                                  sweep_seeds=2)
    files = result["files"]
    for key in ("transfer_md", "transfer_csv", "transfer_rows_csv", "robustness_tau_spread", "robustness_quantize"):
        assert files[key] is not None and files[key].exists(), key
    assert files["robustness_tau_spread"].stat().st_size > 1000
    for rid, c in result["checks"].items():
        assert c["exact_max_abs"] < 1e-10, rid
        assert c["dopri5_max_abs"] < 1e-6, rid
    trained = {r["trained"] for r in result["rows"]}
    assert trained == {"software", "hardware"}
    # ideal + 1 spread value × 2 seeds, ideal + 1 quantization level, per run
    assert len(result["rows"]) == 2 * (1 + 2 + 1 + 1)
    md = files["transfer_md"].read_text()
    assert "Software-trained vs hardware-trained" in md and "| tau_spread | 20% |" in md
    # a run directory alone works too (load_run through the registry)
    run_dir = tmp_path / "transfer" / "smoke" / "runs" / "hardware-s0"
    again = ts.transfer(run_dir, tmp_path / "again", sweeps={"state_noise": (0.0, 0.05)}, seeds=1, checks=False)
    assert (tmp_path / "again" / "transfer.md").exists() and len(again["rows"]) == 2
