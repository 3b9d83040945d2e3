import dataclasses
import json
import math

import pytest
import torch

from soensim.constraints import excitatory_flux
from soensim.dynamics import SOURCE_FIT, source_function
from soensim.profiles import DENDRITE_BIAS_CURRENT, PRESETS, ROLES, HardwareProfile, ProfileError, flux_window_budget
from soensim.timescales import tau_to_bias


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_json(name):
    p = HardwareProfile.preset(name)
    assert HardwareProfile.from_json(p.to_json()) == p
    assert HardwareProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_soen_preset_values():
    p = HardwareProfile.preset("soen-dendrite")
    assert p.dt == pytest.approx(1e-10)
    assert p.tau_range == pytest.approx((1e-8, 1e-6))
    assert p.coupling_max == 0.5
    assert "update_bias" not in p.trainable and "weights" in p.trainable
    sw = HardwareProfile.preset("software")
    assert not sw.fixed_time_constants and sw.coupling_max is None and sw.trainable == frozenset(ROLES)


def test_immutable():
    p = HardwareProfile.preset("soen-dendrite")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.dt = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(dt=0.0), "dt"),
        (dict(dt=-1.0), "dt"),
        (dict(dt="1ns"), "dt"),
        (dict(dt=1.0, tau_range=(0.0, 10.0)), "tau_range[0]"),
        (dict(dt=1.0, tau_range=(0.5, 10.0)), "tau_range[0]"),
        (dict(dt=1.0, tau_range=(10.0, 5.0)), "tau_min ≤ tau_max"),
        (dict(dt=1.0, tau_range=(2.0,)), "tau_range"),
        (dict(dt=1.0, tau_values=(5.0, -1.0)), "tau_values[1]"),
        (dict(dt=1.0, tau_values=()), "tau_values"),
        (dict(dt=1.0, tau_range=(2.0, 3.0), tau_values=(2.0,)), "at most one"),
        (dict(tau_spread=1.5), "tau_spread"),
        (dict(tau_spread=-0.1), "tau_spread"),
        (dict(coupling_max=0.0), "coupling_max"),
        (dict(coupling_max=math.nan), "coupling_max"),
        (dict(coupling_max=math.inf), "coupling_max"),
        (dict(flux_budget=0.0), "flux_budget"),
        (dict(flux_budget=-0.4), "flux_budget"),
        (dict(flux_budget=math.nan), "flux_budget"),
        (dict(flux_budget=math.inf), "flux_budget"),
        (dict(flux_budget="0.4"), "flux_budget"),
        (dict(max_fan_in=0), "max_fan_in"),
        (dict(max_fan_in=2.5), "max_fan_in"),
        (dict(max_fan_in=True), "max_fan_in"),
        (dict(weight_levels=16), "weight_levels needs coupling_max"),
        (dict(coupling_max=0.5, weight_levels=1), "weight_levels"),
        (dict(coupling_max=0.5, weight_levels=4.0), "weight_levels"),
        (dict(flux_noise=-1e-3), "flux_noise"),
        (dict(trainable={"weights", "gain"}), "unknown roles"),
        (dict(trainable="weights"), "trainable"),
        (dict(name=""), "name"),
    ],
)
def test_validation_names_field(kwargs, field):
    with pytest.raises(ProfileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        HardwareProfile(**kwargs)


def test_unknown_preset_and_fields():
    with pytest.raises(ProfileError, match="known presets"):
        HardwareProfile.preset("loihi")
    with pytest.raises(ProfileError, match="unknown profile fields"):
        HardwareProfile.from_dict({"dt": 1.0, "tau": 3.0})
    with pytest.raises(ProfileError, match="mapping"):
        HardwareProfile.from_dict([("dt", 1.0)])  # type: ignore[arg-type]


def test_replace_revalidates():
    p = HardwareProfile.preset("soen-dendrite")
    with pytest.raises(ProfileError, match="dt"):
        p.replace(dt=1e-7)  # now tau_min (10 ns) < dt
    assert p.replace(coupling_max=0.2).coupling_max == 0.2
    assert HardwareProfile.preset("soen-dendrite", tau_spread=0.1).tau_spread == 0.1


def test_unit_taus_range_is_log_uniform_grid_and_seeded():
    p = HardwareProfile.preset("soen-dendrite")
    t = p.unit_taus(181, seed=3)
    assert torch.equal(t, p.unit_taus(181, seed=3))
    assert not torch.equal(t, p.unit_taus(181, seed=4))
    s = torch.sort(t).values
    torch.testing.assert_close(s, torch.logspace(-8, -6, 181, dtype=torch.float64), rtol=1e-12, atol=0)
    b = p.unit_biases(181, seed=3)
    torch.testing.assert_close(b, tau_to_bias(t, 1e-10))
    # a different training step changes the biases, not the taus
    assert (p.unit_biases(181, seed=3, dt=1e-9) < b).all()


def test_unit_taus_discrete_set_and_spread():
    p = HardwareProfile.preset("soen-fabricated")
    t = p.unit_taus(100, seed=0)
    vals, counts = torch.unique(t, return_counts=True)
    assert torch.allclose(vals, torch.tensor(p.tau_values, dtype=torch.float64))
    assert counts.tolist() == [25, 25, 25, 25]
    spread = p.replace(tau_spread=0.1).unit_taus(20000, seed=1, spread=True)
    design = p.unit_taus(20000, seed=1)
    rel = spread / design - 1
    assert rel.std().item() == pytest.approx(0.1, rel=0.05)
    assert abs(rel.mean().item()) < 0.005
    with pytest.raises(ProfileError, match="no fabricated time constants"):
        HardwareProfile.preset("software").unit_taus(4)


def test_flux_budget_and_fan_in_round_trip_json():
    p = HardwareProfile(name="budget", dt=1e-10, coupling_max=0.3, flux_budget=0.75, max_fan_in=20)
    q = HardwareProfile.from_json(p.to_json())
    assert q == p and q.flux_budget == 0.75 and q.max_fan_in == 20
    assert HardwareProfile().flux_budget is None and HardwareProfile().max_fan_in is None  # unbounded by default
    assert json.loads(p.to_json())["flux_budget"] == 0.75


def test_dendrite_flux_budget_comes_from_the_flux_window():
    budget = HardwareProfile.preset("soen-dendrite").flux_budget
    assert budget is not None and math.isfinite(budget) and budget > 0
    assert budget == flux_window_budget(DENDRITE_BIAS_CURRENT)
    i_b = DENDRITE_BIAS_CURRENT
    s_max = i_b - SOURCE_FIT.C
    # φ_th measured on the source function itself: ~0 below it, then g ∝ D^(1/N) rises steeply
    # (g = 0.01 within 1e-3 Φ0 of the threshold)
    phi = torch.linspace(0.0, 0.5, 50_001, dtype=torch.float64)
    g = source_function(phi, torch.full_like(phi, i_b))
    phi_th = phi[(g > 1e-2).nonzero()[0, 0]].item()
    assert budget == pytest.approx((0.5 - phi_th) / s_max, abs=2e-3)
    assert 0.3 < budget < 0.5  # φ_th(1.8) ≈ 0.18, s_max ≈ 0.74
    # what the bound guarantees: any row with Σ|J| ≤ budget keeps Σ_{J>0} J·s_max inside 0.5 − φ_th
    J = torch.rand(1000, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    J = J * budget / J.abs().sum(1, keepdim=True)
    assert (excitatory_flux(J, s_max) <= 0.5 - phi_th + 2e-3 * s_max).all()
    with pytest.raises(ValueError, match="i_b must exceed"):
        flux_window_budget(1.0)


@pytest.mark.parametrize("field, value", [
    ("tau_range", (1e-8, math.inf)), ("tau_values", (1e-8, math.inf)), ("flux_noise", math.inf),
    ("state_noise", math.inf), ("reset_bias", math.inf), ("reset_bias", math.nan), ("coupling_max", math.inf),
])
def test_infinite_fields_are_refused_naming_the_field(field, value):
    with pytest.raises(ProfileError, match=field):
        HardwareProfile(**{field: value})


# --------------------------------------------------------------------------- profile files
@pytest.mark.parametrize("suffix", [".json", ".toml"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_profile_files_round_trip(tmp_path, preset, suffix):
    p = PRESETS[preset].replace(name="my-chip", flux_noise=0.02)
    path = p.save(tmp_path / f"chip{suffix}")
    q = HardwareProfile.load(path)
    assert q == p and q.to_dict() == p.to_dict()
    assert HardwareProfile.resolve(str(path)) == p and HardwareProfile.resolve(path) == p


def test_toml_profile_leaves_out_fields_for_their_defaults(tmp_path):
    (tmp_path / "chip.toml").write_text('name = "chip"\ndt = 1e-10\ntau_values = [2e-8, 1e-8]\ncoupling_max = 0.4\n'
                                        'weight_levels = 8\ntrainable = ["weights"]\n')
    p = HardwareProfile.load(tmp_path / "chip.toml")
    assert p.tau_values == (1e-8, 2e-8) and p.coupling_max == 0.4 and p.weight_levels == 8
    assert p.trainable == frozenset({"weights"}) and p.tau_range is None and p.flux_budget is None
    assert p.nonidealities() == {"quantize": 8, "clip": 0.4}


@pytest.mark.parametrize("text, match", [
    ("tau_spread = 1.5\n", r"tau_spread must be a finite number in \[0, 1\); got 1.5"),
    ("dt = -1.0\n", r"dt must be a finite number in \[0, inf\]; got -1.0"),
    ("weight_levels = 1\ncoupling_max = 0.5\n", "weight_levels must be ≥ 2; got 1"),
    ("tau_range = 3\n", "tau_range must be a sequence of times in seconds; got 3"),
    ('tau_range = [1e-8, "a"]\n', "tau_range entry must be a number"),
    ("trainable = 3\n", "trainable must be a list of roles"),
    ('trainable = ["wires"]\n', r"trainable has unknown roles \['wires'\]"),
    ("tau_max = 1e-6\n", r"unknown profile fields \['tau_max'\]"),
    ("dt = 1e-10\ntau_range = [1e-8 2e-8]\n", r"not valid TOML \(.*line 2"),
])
def test_bad_profile_file_names_the_file_the_field_and_the_range(tmp_path, text, match):
    path = tmp_path / "chip.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=match) as err:
        HardwareProfile.load(path)
    assert str(err.value).startswith(f"{path}: ")


def test_bad_json_profile_and_bad_names(tmp_path):
    (tmp_path / "chip.json").write_text('{"dt": 1e-10,\n "coupling_max": }')
    with pytest.raises(ProfileError, match=r"chip.json: not valid JSON \(line 2"):
        HardwareProfile.load(tmp_path / "chip.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ProfileError, match="list.json: profile data must be a mapping"):
        HardwareProfile.load(tmp_path / "list.json")
    with pytest.raises(ProfileError, match="ends in .json or .toml"):
        HardwareProfile.load(tmp_path / "chip.yaml")
    with pytest.raises(FileNotFoundError):
        HardwareProfile.load(tmp_path / "missing.toml")
    with pytest.raises(ProfileError, match=r"unknown preset 'soen'; known presets: .*or give a profile file"):
        HardwareProfile.resolve("soen")
    with pytest.raises(ProfileError, match="a profile is a preset name"):
        HardwareProfile.resolve(3)
    assert HardwareProfile.resolve("soen-dendrite") is PRESETS["soen-dendrite"]
    assert HardwareProfile.resolve(PRESETS["software"].to_dict()) == PRESETS["software"]
