"""Trainer: exact resume, divergence policies, spike detection, checkpoints, config round trip."""
import json
import math

import pytest
import torch
from torch import nn

from gates import GatedGRU
from studies.models import SequenceModel
from studies.train import (
    CHECKPOINT_FILE,
    ArraySplit,
    ConfigError,
    CosineToFloor,
    RunConfig,
    SpikeDetector,
    TaskData,
    Trainer,
    load_checkpoint,
    read_jsonl,
)


def tiny_data(n=96, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, T, 1, generator=g) * 0.3
    x[:, 2, 0] += y.float() - 1.0  # the label sits early in the sequence
    split = lambda a, b: ArraySplit(x[a:b], y[a:b])  # noqa: E731
    return TaskData(train=split(0, 64), val=split(64, 80), test=split(80, 96), num_outputs=3, seq_len=T)


def tiny_cfg(**kw):
    base = dict(study="test", row="tiny", seed=3, hidden=8, epochs=3, batch_size=16, lr=1e-2, lr_min=1e-4,
                progress=False, log_every=1, gate_stats_size=8, threads=1)
    base.update(kw)
    return RunConfig(**base)


def tiny_model(seed=3):
    torch.manual_seed(seed)
    return SequenceModel(GatedGRU(1, 8, batch_first=True), 8, 3)


class Kill(Exception):
    pass


def kill_at(step):
    def cb(trainer, record):
        if record["step"] == step:
            raise Kill(step)
    return cb


def final_state(run_dir):
    return load_checkpoint(run_dir / CHECKPOINT_FILE)["model"]


def comparable(summary):
    drop = {"elapsed_s"}
    out = {k: v for k, v in summary.items() if k not in drop}
    out["final"] = {k: v for k, v in summary["final"].items() if k != "elapsed_s"}
    return out


def test_resume_equals_uninterrupted(tmp_path):
    cfg = tiny_cfg()
    a = tmp_path / "a"
    ref = Trainer(cfg, tiny_model(), tiny_data(), a).fit()
    assert ref["status"] == "finished" and ref["epochs"] == 3 and ref["steps"] == 12

    b = tmp_path / "b"
    with pytest.raises(Kill):  # killed in the middle of epoch 2 (4 steps per epoch)
        Trainer(cfg, tiny_model(), tiny_data(), b, callbacks=[kill_at(6)]).fit()
    assert load_checkpoint(b / CHECKPOINT_FILE)["epoch"] == 1
    # a fresh process would rebuild the model with other weights: the checkpoint must win
    resumed = Trainer(cfg, tiny_model(seed=99), tiny_data(), b).fit()

    assert comparable(resumed) == comparable(ref)
    for k, v in final_state(a).items():
        assert torch.equal(v, final_state(b)[k]), k
    assert read_jsonl(a / "steps.jsonl") == read_jsonl(b / "steps.jsonl")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(read_jsonl(a / "epochs.jsonl")) == strip(read_jsonl(b / "epochs.jsonl"))
    assert [e["event"] for e in read_jsonl(b / "events.jsonl")] == ["resume"]


def test_run_dir_layout_and_weights_only_checkpoint(tmp_path):
    Trainer(tiny_cfg(epochs=2), tiny_model(), tiny_data(), tmp_path).fit()
    for name in ("config.json", "checkpoint.pt", "steps.jsonl", "epochs.jsonl", "gates.jsonl", "summary.json"):
        assert (tmp_path / name).exists(), name
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 8
    assert isinstance(state["rng"]["shuffle"], torch.Tensor)
    assert RunConfig.from_json((tmp_path / "config.json").read_text()) == tiny_cfg(epochs=2)
    epochs = read_jsonl(tmp_path / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert "train_loss" not in epochs[0] and "test_acc" in epochs[0] and "w_hz_norm" in epochs[0]
    for key in ("train_loss", "train_acc", "val_acc", "test_acc", "val_loss", "lr", "w_hz_norm", "b_z_mean"):
        assert key in epochs[1], key
    gates = read_jsonl(tmp_path / "gates.jsonl")
    assert [g["epoch"] for g in gates] == [0, 1, 2]
    assert len(gates[0]["decay_gate"]) == 8 and len(gates[0]["timescale_steps"]) == 8
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["params"] == sum(p.numel() for p in tiny_model().parameters())


def test_learning_rate_schedule_reaches_floor(tmp_path):
    summary = Trainer(tiny_cfg(epochs=2), tiny_model(), tiny_data(), tmp_path).fit()
    assert summary["final"]["lr"] == pytest.approx(1e-4)
    steps = read_jsonl(tmp_path / "steps.jsonl")
    assert steps[0]["lr"] == pytest.approx(1e-2)
    lrs = [s["lr"] for s in steps]
    assert all(b <= a for a, b in zip(lrs[:-1], lrs[1:], strict=True))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineToFloor(opt, floor=0.1, total=4)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.55)


class NaNOnce(nn.Module):
    """Wraps a model; the ``at``-th training forward returns NaN (once, or always)."""

    def __init__(self, inner, at, always=False):
        super().__init__()
        self.inner, self.at, self.always, self.calls = inner, at, always, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at or (self.always and self.calls >= self.at):
                return out * float("nan")
        return out


def test_nonfinite_loss_stop(tmp_path):
    model = NaNOnce(tiny_model(), at=6)
    summary = Trainer(tiny_cfg(nonfinite_policy="stop"), model, tiny_data(), tmp_path).fit()
    assert summary["status"] == "diverged"
    assert summary["nonfinite"] == 1 and summary["rollbacks"] == 0
    assert summary["epochs"] == 1
    events = [e["event"] for e in read_jsonl(tmp_path / "events.jsonl")]
    assert events == ["nonfinite", "stop"]
    state = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nonfinite_gradient_rollback(tmp_path):
    model = tiny_model()
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 6 else grad

    model.head.weight.register_hook(poison)
    summary = Trainer(tiny_cfg(nonfinite_policy="rollback", rollback_lr_factor=0.5), model, tiny_data(), tmp_path).fit()
    assert summary["status"] == "finished" and summary["epochs"] == 3
    assert summary["nonfinite"] == 1 and summary["rollbacks"] == 1
    assert summary["lr_scale"] == 0.5
    events = read_jsonl(tmp_path / "events.jsonl")
    assert [e["event"] for e in events] == ["nonfinite", "rollback"]
    assert "gradient" in events[0]["reason"] and events[1]["from_step"] == 6
    assert summary["final"]["lr"] == pytest.approx(0.5e-4)
    steps = [s["step"] for s in read_jsonl(tmp_path / "steps.jsonl")]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 12  # no duplicated steps after rollback
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_rollback_gives_up_after_max(tmp_path):
    model = NaNOnce(tiny_model(), at=2, always=True)
    summary = Trainer(tiny_cfg(max_rollbacks=2), model, tiny_data(), tmp_path).fit()
    assert summary["status"] == "diverged"
    assert summary["rollbacks"] == 2 and summary["nonfinite"] == 3
    assert [e["event"] for e in read_jsonl(tmp_path / "events.jsonl")][-1] == "stop"


def test_spike_detector_on_synthetic_trace():
    g = torch.Generator().manual_seed(0)
    trace = (1.0 + 0.05 * torch.randn(200, generator=g)).tolist()
    trace = [v * (1 - i / 400) for i, v in enumerate(trace)]  # slowly decreasing loss
    trace[120] = 6.0  # a BPTT cliff
    trace[121] = 4.5  # still high right after
    det = SpikeDetector(factor=3.0, window=50, min_history=20)
    flags = [det.update(v) for v in trace]
    assert [i for i, f in enumerate(flags) if f] == [120, 121]
    assert det.count == 2
    assert det.update(float("nan")) is False

    early = SpikeDetector(factor=3.0, window=50, min_history=20)
    assert not any(early.update(v) for v in [1.0] * 5 + [100.0])  # too little history to judge

    state = det.state_dict()
    clone = SpikeDetector(factor=3.0, window=50, min_history=20)
    clone.load_state_dict(state)
    assert list(clone.history) == list(det.history) and clone.count == 2


def test_spikes_logged_by_trainer(tmp_path):
    class Spiky(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            out = self.inner(x)
            if self.training:
                self.calls += 1
                if self.calls == 10:
                    return out * 0 + torch.tensor([100.0, -100.0, -100.0])  # confidently wrong for most
            return out

    cfg = tiny_cfg(spike_min_history=5, spike_factor=3.0)
    summary = Trainer(cfg, Spiky(tiny_model()), tiny_data(), tmp_path).fit()
    assert summary["spikes"] >= 1
    events = read_jsonl(tmp_path / "events.jsonl")
    assert any(e["event"] == "spike" and e["step"] == 10 for e in events)
    steps = {s["step"]: s for s in read_jsonl(tmp_path / "steps.jsonl")}
    assert steps[10]["spike"] is True


def test_config_round_trip_and_validation():
    cfg = RunConfig(row="x", seed=2, hidden=32, profile="soen-dendrite", coupling_max=0.25, train_subset=None)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="known keys"):
        RunConfig.from_dict({"hiddden": 3})
    with pytest.raises(ConfigError, match="unknown config keys \\['nope'\\]"):
        cfg.with_overrides(["nope=1"])
    over = cfg.with_overrides(["lr=1e-3", "hidden=64", "train_subset=none", "permute=true", "gate=UR"])
    assert (over.lr, over.hidden, over.train_subset, over.permute, over.gate) == (1e-3, 64, None, True, "UR")
    assert isinstance(RunConfig(lr=1).lr, float)
    with pytest.raises(ConfigError, match="integer"):
        cfg.with_overrides(["hidden=1.5"])
    with pytest.raises(ConfigError, match="nonfinite_policy"):
        cfg.replace(nonfinite_policy="ignore")
    with pytest.raises(ConfigError, match="not key=value"):
        cfg.with_overrides(["hidden"])
    with pytest.raises(ConfigError, match="lr_min"):
        RunConfig(lr=1e-3, lr_min=1e-2)
    assert cfg.run_id == "x-s2"
    assert cfg.lr == 5e-4 and isinstance(cfg.lr, float)  # the default, parsed as a float
    for bad in ("NaN", "Infinity", "-Infinity", "nan", "inf"):  # JSON and Python spellings of non-finite values
        with pytest.raises(ConfigError, match="lr must be a (finite )?number"):
            cfg.with_overrides([f"lr={bad}"])
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        RunConfig(lr=math.nan)
