"""--tensorboard: event files written by the trainer, read back with TensorBoard's EventAccumulator."""
import json

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from studies.cli import main  # noqa: E402
from studies.config import RunConfig  # noqa: E402
from studies.errors import ConfigError  # noqa: E402
from studies.rundir import EPOCHS_FILE, GATES_FILE, STEPS_FILE  # noqa: E402
from studies.tensorboard_log import LOG_DIR, TensorBoardTracker  # noqa: E402
from studies.train import read_jsonl, run  # noqa: E402

SMOKE = dict(study="scifar-bias", task="fake-images", image_size=4, hidden=8, epochs=2, batch_size=40, lr=3e-2,
             schedule="cosine", val_size=40, train_subset=160, test_subset=60, eval_batch_size=100,
             gate_stats_size=32, log_every=1, progress=False, threads=1, tensorboard=True)


def _events(run_dir):
    acc = EventAccumulator(str(run_dir / LOG_DIR), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_hardware_run_logs_scalars_and_histograms(tmp_path):
    cfg = RunConfig(row="hw", profile="soen-dendrite", coupling_max=0.3, **SMOKE)
    summary = run(cfg, tmp_path)
    assert summary["status"] == "finished"
    acc = _events(tmp_path)
    steps, epochs, gates = (read_jsonl(tmp_path / f) for f in (STEPS_FILE, EPOCHS_FILE, GATES_FILE))
    # every optimizer step's loss, gradient norm and learning rate, as in steps.jsonl (log_every=1)
    for tag, key in (("step/loss", "loss"), ("step/grad_norm", "grad_norm"), ("step/lr", "lr")):
        assert _scalars(acc, tag) == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in steps]
    assert len(steps) == summary["steps"] == 8
    # epoch records: accuracy and loss per split, weight diagnostics, spikes (epoch 0 at step 0)
    for tag, key in (("test/acc", "test_acc"), ("val/loss", "val_loss"), ("train/acc", "train_acc"),
                     ("train/loss", "train_loss"),
                     ("weights/w_hz_norm", "w_hz_norm"), ("weights/w_max_abs", "w_max_abs"),
                     ("spikes/total", "spikes_total"), ("run/lr", "lr")):
        want = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in epochs if key in r]
        assert _scalars(acc, tag) == want, tag
    assert [s for s, _ in _scalars(acc, "test/acc")] == [0, 4, 8]
    assert _scalars(acc, "weights/w_max_abs")[-1][1] <= 0.3 + 1e-6
    assert any(t.startswith("weights/norm/rnn.") for t in acc.Tags()["scalars"])
    # the constrained layer complies with its profile at every epoch end
    assert [v for _, v in _scalars(acc, "violations/total")] == [0.0, 0.0, 0.0]
    assert "violations/coupling_bound" in acc.Tags()["scalars"]
    # gate histograms: one value per unit, the statistics of gates.jsonl
    hist = acc.Histograms("gates/decay_gate")
    assert [h.step for h in hist] == [g["step"] for g in gates]
    for h, g in zip(hist, gates, strict=True):
        assert h.histogram_value.num == cfg.hidden
        assert h.histogram_value.min == pytest.approx(min(g["decay_gate"]))
        assert h.histogram_value.max == pytest.approx(max(g["decay_gate"]))
        assert h.histogram_value.sum == pytest.approx(sum(g["decay_gate"]))


def test_software_run_has_no_violation_tags_and_off_writes_nothing(tmp_path):
    run(RunConfig(row="sw", **{**SMOKE, "epochs": 1}), tmp_path / "sw")
    tags = _events(tmp_path / "sw").Tags()["scalars"]
    assert "step/loss" in tags and not any(t.startswith("violations/") for t in tags)
    run(RunConfig(row="off", **{**SMOKE, "epochs": 1, "tensorboard": False}), tmp_path / "off")
    assert not (tmp_path / "off" / LOG_DIR).exists()


def test_resumed_run_purges_the_steps_it_repeats(tmp_path):
    cfg = RunConfig(row="r", **SMOKE)

    def kill_at_step_6(trainer, record):
        if record["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path, callbacks=[kill_at_step_6])  # checkpoint at the end of epoch 1 (step 4)
    run(cfg, tmp_path)
    loss = _scalars(_events(tmp_path), "step/loss")
    assert [s for s, _ in loss] == list(range(1, 9))  # steps 5 and 6 once, from the resumed run
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in read_jsonl(tmp_path / STEPS_FILE)]


def test_cli_flag_reaches_every_run_without_changing_fingerprints(tmp_path, capsys):
    args = ["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path), "--rows", "baseline",
            "--set", "epochs=1", "--no-report"]
    assert main([*args, "--tensorboard"]) == 0, capsys.readouterr().err
    rdir = tmp_path / "scifar-bias" / "smoke" / "runs" / "baseline-s0"
    assert json.loads((rdir / "config.json").read_text())["tensorboard"] is True
    assert _scalars(_events(rdir), "test/acc")[-1][1] == pytest.approx(read_jsonl(rdir / EPOCHS_FILE)[-1]["test_acc"])
    assert main(args) == 0  # without the flag: the same runs, reused


def test_missing_tensorboard_is_a_config_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'soensim\[tensorboard\]'"):
        TensorBoardTracker(RunConfig(tensorboard=True), tmp_path)
