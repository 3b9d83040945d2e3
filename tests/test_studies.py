"""Study definitions: model sizes and inits, the hardware rows, data preprocessing, presets."""
import importlib.util
import math

import numpy as np
import pytest
import torch
from torch import nn

from soensim import HardwareProfile, tau_to_bias
from studies import bias_ablation, gate_ablation, sst_lowdata
from studies.models import (
    SequenceModel,
    build_model,
    count_parameters,
    hardware_dt,
    hardware_update_bias,
    profile_violations,
    recurrent_diagnostics,
)
from studies.registry import STUDIES, UnknownStudy, get_study
from studies.train import ConfigError, RunConfig

STUDY_MODULES = [bias_ablation, gate_ablation, sst_lowdata]


@pytest.fixture(autouse=True)
def one_thread():
    """Small recurrent models: one thread is fastest, and two stall on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def paper_cfg(**kw):
    return RunConfig(**{**bias_ablation.PRESETS["full"]["base"], "study": "scifar-bias", **kw})


def has(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_paper_model_has_101732_parameters():
    torch.manual_seed(0)
    model = build_model(paper_cfg(row="baseline"), input_size=1, num_outputs=10, seq_len=1024)
    assert count_parameters(model) == 101_732
    assert count_parameters(model.rnn) == 3 * 181 * (1 + 181 + 2)
    # the head of Gu et al. 2020 (arXiv:1910.09890): per-step 256-unit ReLU layer then linear
    mlp = build_model(paper_cfg(head="mlp", hidden=181), 1, 10, 1024)
    assert count_parameters(mlp) == count_parameters(model.rnn) + 181 * 256 + 256 + 256 * 10 + 10


def test_paper_protocol_numbers():
    cfg = paper_cfg()
    assert (cfg.hidden, cfg.epochs, cfg.batch_size, cfg.image_size, cfg.channels) == (181, 40, 50, 32, 1)
    assert (cfg.optimizer, cfg.lr, cfg.lr_min, cfg.clip_norm, cfg.orthogonal_hh) == ("adamw", 5e-4, 1e-5, 1.0, True)
    assert cfg.schedule == "cosine-epoch" and cfg.update_bias_init == 1.0


def test_baseline_init_biases_in_one_vector_and_orthogonal_blocks():
    torch.manual_seed(0)
    rnn = build_model(paper_cfg(hidden=16), 1, 10, 64).rnn
    H = 16
    b_ih, b_hh = rnn.bias_ih_l0.detach(), rnn.bias_hh_l0.detach()
    assert torch.all(b_ih[: 2 * H] == 1.0) and torch.all(b_hh[: 2 * H] == 0.0)
    w = rnn.weight_hh_l0.detach()
    for k in range(3):
        block = w[k * H:(k + 1) * H]
        assert torch.allclose(block @ block.T, torch.eye(H), atol=1e-5)
    diag = recurrent_diagnostics(rnn)
    assert diag["b_z_mean"] == pytest.approx(1.0)
    assert diag["w_hz_norm"] == pytest.approx(math.sqrt(H), rel=1e-5)  # orthogonal block: ‖Q‖_F = √H


def _train_a_bit(model, steps=5, wd=0.1):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=wd)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(8, 12, 1, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_ablated_row_keeps_update_and_reset_bias_at_zero_under_adamw():
    torch.manual_seed(0)
    H = 8
    model = build_model(paper_cfg(hidden=H, bias_mode="frozen-zero"), 1, 10, 12)
    b_n_before = (model.rnn.bias_ih_l0.detach()[2 * H:].clone(), model.rnn.bias_hh_l0.detach()[2 * H:].clone())
    _train_a_bit(model)
    for name in ("bias_ih_l0", "bias_hh_l0"):
        assert torch.all(getattr(model.rnn, name).detach()[: 2 * H] == 0.0), name
    assert not torch.equal(model.rnn.bias_ih_l0.detach()[2 * H:], b_n_before[0])  # b_n learns


@pytest.mark.parametrize("row", ["baseline-hw", "ablated-hw", "chrono-hw"])
def test_hardware_rows_obey_their_profile_before_and_after_training(row):
    from soensim.constraints import check

    cfg = bias_ablation.runs("quick", rows=[row], overrides=["hidden=8"])[0]
    torch.manual_seed(0)
    model = build_model(cfg, 1, 10, 256)
    profile = HardwareProfile.preset(cfg.profile)
    dt = hardware_dt(cfg, 256)
    assert dt == pytest.approx(0.4e-9)  # one image = 1024 × 0.1 ns
    report = model.constraint_report
    (frozen,) = report.biases.values()
    tau = dt / torch.log1p(torch.exp(-frozen))  # z = sigmoid(b) = exp(-dt/τ)
    lo, hi = profile.tau_range
    if row == "baseline-hw":  # the profile's τ values through the one τ → bias mapping
        assert torch.allclose(frozen, tau_to_bias(profile.unit_taus(8, cfg.seed), dt))
        assert hardware_update_bias(model.rnn, cfg, 256) is None
    elif row == "ablated-hw":  # the least memory the hardware offers: every unit at τ_min
        assert torch.allclose(tau, torch.full_like(tau, lo), rtol=1e-9)
    else:  # chrono's uniform time scales, inside the fabricable range, not all equal
        assert torch.all(tau >= lo * (1 - 1e-9)) and torch.all(tau <= hi * (1 + 1e-9)) and tau.std() > 0
    assert profile_violations(model) == []
    _train_a_bit(model, wd=0.5)
    assert profile_violations(model) == []
    assert check(model, profile, dt=dt, seed=cfg.seed, update_bias=report.update_bias) == []
    assert recurrent_diagnostics(model.rnn)["w_max_abs"] <= profile.coupling_max
    got = (model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0).detach()[8:16]
    assert torch.allclose(got.double(), frozen, atol=1e-5)
    assert isinstance(model.head, nn.Linear)  # the read-out is software: not bounded


@pytest.mark.parametrize(("overrides", "rule"), [
    (["hw_bias=zero"], "time_constant_range"),  # b_z = 0: τ = Δt/ln 2 ≈ 0.58 ns < τ_min = 10 ns
    (["hw_bias=init", "gate=C", "chrono_tmax=5"], "time_constant_range"),  # chrono draws below τ_min
    (["gate=O"], "leaky"),  # cumax has no per-unit decay bias to fabricate a τ with
])
def test_a_row_outside_its_profile_fails_at_start_naming_the_rule(overrides, rule):
    cfg = bias_ablation.runs("quick", rows=["baseline-hw"], overrides=["hidden=8", *overrides])[0]
    with pytest.raises(ConfigError, match=rule) as err:
        build_model(cfg, 1, 10, 256)
    assert "baseline-hw" in str(err.value) and "soen-dendrite" in str(err.value)


def test_budget_rows_and_tau_sweep_record_their_profile():
    rows = bias_ablation.row_names("medium")
    for label in ("J", "B8", "B2", "B0.431"):
        assert f"baseline-hw-{label}" in rows and f"ablated-hw-{label}" in rows
    by_row = {c.row: c for c in bias_ablation.runs("medium", seeds=1)}
    assert by_row["baseline-hw-J"].profile["flux_budget"] is None
    assert by_row["ablated-hw-B2"].profile["flux_budget"] == 2.0
    assert by_row["baseline-hw-B0.431"].profile["flux_budget"] == HardwareProfile.preset("soen-dendrite").flux_budget
    assert by_row["baseline-hw-B2-tau10"].profile["tau_range"] == pytest.approx([1e-7, 1e-5])
    assert by_row["baseline"].profile is None and by_row["ablated"].bias_mode == "frozen-zero"
    assert len(bias_ablation.runs("medium")) >= 3 * len(rows)


def _params(base, gate, hidden):
    return count_parameters(build_model(RunConfig(**{**base, "gate": gate, "hidden": hidden}), 1, 10, 16))


def test_refine_rows_are_parameter_matched():
    for preset in ("quick", "full"):
        base = bias_ablation.PRESETS[preset]["base"]
        target = _params(base, "-", base["hidden"])
        for gate in ("R", "UR"):
            h = bias_ablation.PRESETS[preset]["rows"][f"gate-{gate}-pm"]["hidden"]
            assert _params(base, gate, h) <= target < _params(base, gate, h + 1)


def test_hardware_dt_choice():
    cfg = RunConfig(profile="soen-dendrite")
    assert hardware_dt(cfg, 1024) == pytest.approx(1e-10)
    assert hardware_dt(cfg, 64) == pytest.approx(1.6e-9)
    assert hardware_dt(cfg.replace(hw_dt=2e-10), 64) == 2e-10


def test_j_max_sweep_in_full_preset():
    rows = bias_ablation.row_names("full")
    for j in ("0.1", "0.25", "1"):
        assert f"baseline-hw-J{j}" in rows and f"ablated-hw-J{j}" in rows and f"chrono-hw-J{j}" in rows
    cfg = bias_ablation.runs("full", rows=["ablated-hw-J0.25"])[0]
    assert cfg.coupling_max == 0.25 and cfg.profile == "soen-dendrite" and cfg.hw_bias == "tau-min"


@pytest.mark.parametrize("module", STUDY_MODULES, ids=lambda m: m.NAME)
def test_presets_are_complete(module):
    assert set(module.PRESETS) >= {"smoke", "quick", "full"}
    assert get_study(module.NAME) is module and STUDIES[module.NAME] == module.__name__
    for preset in module.PRESETS:
        configs = module.runs(preset)
        ids = [c.run_id for c in configs]
        assert len(ids) == len(set(ids)) > 0
        assert all(c.study == module.NAME for c in configs)
        assert module.notes(preset)


def test_unknown_study():
    with pytest.raises(UnknownStudy, match="known studies"):
        get_study("nope")


def test_gate_ablation_rows_cover_all_gates():
    rows = gate_ablation.row_names("quick")
    for g in ("std", "C", "O", "U", "R", "OM", "UM", "OR", "UR", "SST"):
        assert f"copy-{g}" in rows and f"adding-{g}" in rows
    assert gate_ablation.runs("quick", rows=["copy-std"])[0].gate == "-"


def test_sst_lowdata_rows_and_step_budget():
    configs = sst_lowdata.runs("quick", seeds=1)
    assert {c.gate for c in configs} == {"-", "SST", "SSTN"}
    for c in configs:
        steps = c.epochs * math.ceil(c.train_size / c.batch_size)
        assert 400 <= steps < 400 + math.ceil(c.train_size / c.batch_size)


# --------------------------------------------------------------------------- preprocessing
def test_to_sequences_grayscale_downsample_and_scan_order():
    img = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    img[0, ..., 0] = 255  # pure red
    seq = bias_ablation.image_sequences(img, size=4, channels=1)
    assert seq.shape == (1, 16, 1) and torch.allclose(seq, torch.full_like(seq, 0.299))
    ramp = np.repeat((np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10), 3, axis=-1)
    seq = bias_ablation.image_sequences(ramp, size=4, channels=1)
    assert torch.allclose(seq[0, :, 0] * 255, torch.arange(16).float() * 10, atol=1e-3)  # row-major scan
    small = bias_ablation.image_sequences(ramp, size=2, channels=3)
    assert small.shape == (1, 4, 3)
    assert float(small[0, 0, 0]) * 255 == pytest.approx((0 + 10 + 40 + 50) / 4, rel=1e-5)  # 2×2 block mean
    perm = bias_ablation.image_sequences(ramp, size=2, channels=1, permute=True)
    gray = bias_ablation.image_sequences(ramp, size=2, channels=1)
    assert torch.equal(perm[0, :, 0], gray[0, [0, 2, 1, 3], 0])  # bit reversal after downsampling
    with pytest.raises(ConfigError, match="divide"):
        bias_ablation.image_sequences(ramp, size=3, channels=1)


def test_image_splits_are_stratified_and_disjoint():
    labels = np.arange(1000) % 10
    train, val = bias_ablation.split_indices(labels, 100, train_subset=300)
    assert len(val) == 100 and len(train) == 300 and not set(train) & set(val)
    assert np.all(np.bincount(labels[train]) == 30) and np.all(np.bincount(labels[val]) == 10)
    again = bias_ablation.split_indices(labels, 100, train_subset=300)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])  # fixed split seed


def test_fake_image_task_shapes_and_standardization():
    cfg = bias_ablation.runs("smoke", rows=["baseline"])[0]
    data = bias_ablation.image_task(cfg)
    assert data.seq_len == 16 and data.input_size == 1
    assert (len(data.train), len(data.val), len(data.test)) == (160, 40, 60)
    x = data.train.x
    assert x.shape == (160, 16, 1)
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-3)


def test_gate_statistics_and_diagnostics_at_init():
    torch.manual_seed(0)
    model = build_model(paper_cfg(hidden=6), 1, 10, 5)
    with torch.no_grad():  # no input or recurrent drive: the gate is sigmoid(b_z) = sigmoid(1)
        model.rnn.weight_hh_l0.zero_()
        model.rnn.weight_ih_l0.zero_()
    stats = model.gate_statistics(torch.randn(4, 5, 1))
    assert stats["decay_gate"] == pytest.approx([1 / (1 + math.exp(-1))] * 6, rel=1e-5)
    assert SequenceModel(nn.GRU(1, 6, batch_first=True), 6, 10).gate_statistics(torch.randn(2, 3, 1)) == {}
    # torch.nn.GRU layout (r, z, n) gives the same diagnostics as the gates layer
    assert recurrent_diagnostics(nn.GRU(1, 6))["w_hz_norm"] > 0


# --------------------------------------------------------------------------- smoke runs needing other packages
@pytest.mark.skipif(not has("studies.tasks") or not has("gates.layers"), reason="needs studies.tasks and gates.layers")
def test_gate_ablation_smoke(tmp_path):
    from studies.grid import run_grid

    configs = gate_ablation.runs("smoke", rows=["copy-std", "copy-UR", "adding-R"])
    out = run_grid(configs, tmp_path, study=gate_ablation.NAME)
    assert [s["status"] for s in out] == ["finished"] * 3, out
    assert out[2]["metric"] == "mse"


@pytest.mark.skipif(not has("studies.data") or not has("gates.layers"), reason="needs studies.data and gates.layers")
def test_sst_lowdata_smoke(tmp_path):
    from studies.grid import run_grid

    out = run_grid(sst_lowdata.runs("smoke"), tmp_path, study=sst_lowdata.NAME)
    assert all(s["status"] == "finished" for s in out), out
    figs = sst_lowdata.report(tmp_path)
    assert figs["accuracy_vs_size"].exists() and figs["accuracy_table"].exists()
    text = figs["accuracy_table"].read_text()
    assert "| train size | GRU | SST | SSTN | p(SST vs GRU) | p(SSTN vs GRU) |" in text
    assert "| 20 |" in text and "| 40 |" in text
