"""Hardware export (soensim.export / load_export), its design-rule report and `soensim-study export`."""
import json

import pytest
import torch
from torch import nn

import soensim
from soensim import HardwareProfile, SOENLayer, check, constrain
from soensim.constraints.rules import RULES, rule_findings
from soensim.specification import SCHEMA_VERSION, ExportError, format_report, level_values, read_export
from soensim.transfer import max_abs_diff, to_continuous, transfer_model

QUANTIZED = HardwareProfile.preset("soen-dendrite").replace(name="test-chip", weight_levels=16)


def x64(t=30, b=3, i=3, seed=1, batch_first=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((b, t, i) if batch_first else (t, b, i), generator=g, dtype=torch.float64)


def trained_cell(profile=QUANTIZED, seed=0):
    """A GRUCell constrained to ``profile``, its free parameters moved away from their init."""
    torch.manual_seed(seed)
    cell = nn.GRUCell(3, 6).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cell, constrain(cell, profile, seed=seed)


def discrete(cell, x):
    """The GRUCell stepped over ``x`` (T, B, I): the ground truth for the continuous models."""
    h, out = torch.zeros(x.shape[1], cell.hidden_size, dtype=torch.float64), []
    for xt in x:
        h = cell(xt, h)
        out.append(h)
    return torch.stack(out)


def test_gru_round_trip_equals_the_continuous_time_model(tmp_path):
    cell, report = trained_cell()
    path = tmp_path / "chip.json"
    spec = soensim.export(cell, QUANTIZED, path, seed=0)
    assert spec["schema_version"] == SCHEMA_VERSION and spec["design_rules"]["passed"]
    loaded = soensim.load_export(path)
    x = x64()
    with torch.no_grad():
        y = loaded.run(x)[0]
        assert max_abs_diff(y, to_continuous(cell, QUANTIZED.dt).run(x)[0]) <= 1e-10
        assert max_abs_diff(y, discrete(cell, x)) <= 1e-10  # and the discrete layer itself
    layer = spec["layers"][0]
    # τ in seconds: the design values constrain() froze (cell label "<model>.cell")
    torch.testing.assert_close(torch.tensor(layer["units"]["tau_s"], dtype=torch.float64),
                               report.taus["<model>.cell"], rtol=1e-6, atol=0)
    # couplings at stored levels: every connected weight is the level its index names
    grid = torch.tensor(level_values(QUANTIZED), dtype=torch.float64)
    assert len(grid) == 16 and grid.abs().max() <= QUANTIZED.coupling_max
    for c in layer["couplings"].values():
        w, lv, mask = (torch.tensor(c[k]) for k in ("weights", "levels", "mask"))
        assert bool(((lv >= 0) == mask.bool()).all())
        assert max_abs_diff(w[mask.bool()].double(), grid[lv[mask.bool()]]) <= 1e-6
    fan_in = torch.tensor(layer["connectivity"]["fan_in"])
    assert fan_in.shape == (18,) and int(fan_in.max()) <= 3 + 6


def test_soen_round_trip_and_its_unit_parameters(tmp_path):
    layer = SOENLayer(3, 5, "soen-dendrite", seed=2, dtype=torch.float64)
    with torch.no_grad():  # move the trainable knobs away from their defaults
        layer.cell.phi_offset.add_(torch.linspace(-0.05, 0.05, 5, dtype=torch.float64))
        layer.cell.i_b.add_(torch.linspace(0.0, 0.1, 5, dtype=torch.float64))
    spec = soensim.export(layer, layer.profile, tmp_path / "soen.json")
    entry = spec["layers"][0]
    assert entry["core"] == "soen"
    torch.testing.assert_close(torch.tensor(entry["units"]["tau_s"], dtype=torch.float64), layer.tau, rtol=0, atol=0)
    assert entry["units"]["flux_offset"] == layer.cell.phi_offset.tolist()
    assert entry["units"]["bias_current"] == layer.cell.i_b.tolist()
    loaded = soensim.load_export(tmp_path / "soen.json")
    assert isinstance(loaded, SOENLayer) and loaded.profile == layer.profile
    x = x64(t=20) * 0.3
    with torch.no_grad():
        assert max_abs_diff(loaded(x, noise=False)[0], layer(x, noise=False)[0]) <= 1e-10
        ode = loaded.simulate(x, method="rk4", substeps=2)[0]
        assert max_abs_diff(ode, layer.simulate(x, method="rk4", substeps=2)[0]) <= 1e-10


def test_out_of_profile_network_exports_with_its_failures(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.rnn = nn.GRU(3, 4, batch_first=True).double()  # torch's GRU, never constrained
    with torch.no_grad():
        model.rnn.weight_hh_l0.fill_(0.9)  # above |J| ≤ 0.5
    spec = soensim.export(model, "soen-dendrite", tmp_path / "sw.json")
    rules = {r["rule"]: r for r in spec["design_rules"]["rules"]}
    assert list(rules) == list(RULES) and not spec["design_rules"]["passed"]
    violations = check(model, HardwareProfile.preset("soen-dendrite"))
    assert {r for r, v in rules.items() if not v["passed"]} == {v.rule for v in violations}
    assert {"coupling_bound", "frozen_time_constant", "time_constant_range"} <= {v.rule for v in violations}
    assert rules["coupling_bound"]["worst"] == pytest.approx(0.9) and rules["coupling_bound"]["limit"] == 0.5
    assert rules["quantization_levels"]["applies"] is False  # the preset stores continuous weights
    assert "FAIL" in format_report(spec) and "coupling_bound" in format_report(spec)
    # the exported network is still the network: equal to its transfer to continuous time
    loaded = soensim.load_export(tmp_path / "sw.json", layer="rnn")
    x = x64(batch_first=True)
    with torch.no_grad():
        assert loaded.batch_first
        ref = transfer_model(model, dt=HardwareProfile.preset("soen-dendrite").dt)(x)[0]
        assert max_abs_diff(loaded.run(x)[0], ref) <= 1e-10
        assert max_abs_diff(loaded.run(x)[0], model.rnn(x)[0]) <= 1e-10


def test_findings_give_the_worst_value_of_passing_rules():
    cell, _ = trained_cell()
    found = rule_findings(cell, QUANTIZED)
    bound = found["coupling_bound"]
    assert bound and all(f.passed for f in bound)
    worst = max(f.value for f in bound)
    assert worst == pytest.approx(max(cell.weight_ih.abs().max().item(), cell.weight_hh.abs().max().item()))
    assert worst <= QUANTIZED.coupling_max
    assert check(cell, QUANTIZED) == []


def test_bad_specifications_and_layers(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ExportError, match="not a soensim export"):
        read_export(bad)
    cell, _ = trained_cell()
    spec = soensim.export(cell, QUANTIZED)
    with pytest.raises(ExportError, match="schema_version"):
        read_export({**spec, "schema_version": 99})
    broken = {**spec, "layers": [{k: v for k, v in spec["layers"][0].items() if k != "gate_biases"}]}
    with pytest.raises(ExportError, match="gate_biases"):
        read_export(broken)
    with pytest.raises(ValueError, match="layer 'lstm'.*GRU core"):
        soensim.export(nn.ModuleDict({"lstm": nn.LSTM(3, 4)}), QUANTIZED)
    two = nn.ModuleDict({"a": nn.GRUCell(3, 4), "b": nn.GRUCell(4, 4)})
    with pytest.raises(ExportError, match="name the one"):
        soensim.load_export(soensim.export(two, QUANTIZED))
    assert soensim.load_export(soensim.export(two, QUANTIZED), layer="b").hidden_size == 4


# --------------------------------------------------------------------------- CLI
def test_cli_exports_a_finished_run(tmp_path, capsys):
    from studies.cli import main

    rc = main(["run", "transfer", "--preset", "smoke", "--out", str(tmp_path), "--rows", "hardware,software",
               "--no-report"])
    assert rc == 0
    runs = tmp_path / "transfer" / "smoke" / "runs"
    run = runs / "hardware-s0"
    capsys.readouterr()
    assert main(["export", str(run)]) == 0
    printed = capsys.readouterr().out
    spec = read_export(run / "export.json")
    assert spec["design_rules"]["passed"], printed
    assert spec["profile"]["name"] == "soen-dendrite" and "| coupling_bound | pass" in printed
    assert (run / "export.md").read_text(encoding="utf-8") in printed
    # the exported layer is the run's layer in continuous time
    from studies.transfer_study import load_run, recurrent_layer, training_dt

    cfg, model, data, _ = load_run(run)
    _, rnn = recurrent_layer(model)
    cont = to_continuous(rnn, training_dt(cfg, data.seq_len))
    x = x64(t=10, i=cont.input_size, batch_first=cont.batch_first)
    with torch.no_grad():
        assert max_abs_diff(soensim.load_export(run / "export.json").run(x)[0], cont.run(x)[0]) <= 1e-10
    # a software run: one line, exit 2, unless a profile is named (then its failures are listed)
    assert main(["export", str(runs / "software-s0")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--profile" in err
    assert main(["export", str(runs / "software-s0"), "--profile", "soen-dendrite", "--out",
                 str(tmp_path / "sw.json")]) == 0
    assert not read_export(tmp_path / "sw.json")["design_rules"]["passed"]


def test_cli_export_of_a_missing_run_dir_is_one_line(tmp_path, capsys):
    from studies.cli import main

    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
