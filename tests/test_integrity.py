"""Run directories that never lie: one test per finding of the run-integrity issue.

1 reuse only under the same configuration · 2 one writer at a time · 3 numeric input validated ·
4 unbounded hardware settings refused · 5 divergence is never "finished" · 6 one-line errors ·
7 names and seeds · 8 signals stop the workers · 9 the smaller items.
"""
import errno
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studies import bias_ablation, cifar, grid
from studies.bias_ablation import runs as scifar_runs
from studies.cli import main
from studies.config import RunConfig
from studies.errors import ConfigError, ConfigMismatch, DataError
from studies.files import LOCK_FILE, read_jsonl, write_json_atomic
from studies.models import SequenceModel
from studies.rundir import CHECKPOINT_FILE, CONFIG_FILE, SUMMARY_FILE, check_reuse, load_checkpoint
from studies.stats import mean_std
from studies.taskdata import ArraySplit, TaskData
from studies.train import Trainer, run

SMOKE = ["run", "scifar-bias", "--preset", "smoke", "--rows", "baseline", "--no-report"]
ENV = {**os.environ, "SOENSIM_GRU_BACKEND": "generic"}  # subprocesses need not build the C++ kernel


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_dir_of(out, row="baseline", seed=0, study="scifar-bias", preset="smoke"):
    return Path(out) / study / preset / "runs" / f"{row}-s{seed}"


def one_line_error(err):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("soensim-study")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class Kill(Exception):
    pass


def kill_at_epoch(epoch):
    def cb(trainer, record):
        if record["epoch"] == epoch:
            raise Kill
    return cb


def wait_for(predicate, timeout=180.0, proc=None):
    t0 = time.monotonic()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.1)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead too
        return fh.read().split(") ", 1)[1][0] != "Z"


# --------------------------------------------------------------------------- 1 reuse
def test_1_finished_run_is_not_reused_under_another_configuration(tmp_path, capsys):
    out = str(tmp_path)
    assert main([*SMOKE, "--out", out, "--set", "epochs=1"]) == 0
    sdir, rdir = tmp_path / "scifar-bias" / "smoke", run_dir_of(tmp_path)
    study_before, summary_before = (sdir / "study.json").read_text(), (rdir / SUMMARY_FILE).read_text()
    capsys.readouterr()
    assert main([*SMOKE, "--out", out, "--set", "epochs=2", "--set", "hidden=12"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "epochs: 1 → 2" in line and "hidden: 16 → 12" in line and "--restart" in line
    assert (sdir / "study.json").read_text() == study_before  # nothing claims the new settings
    assert (rdir / SUMMARY_FILE).read_text() == summary_before
    assert main([*SMOKE, "--out", out, "--set", "epochs=2", "--set", "hidden=12", "--restart"]) == 0
    summary, cfg = json.loads((rdir / SUMMARY_FILE).read_text()), json.loads((rdir / CONFIG_FILE).read_text())
    assert summary["epochs"] == 2 and (cfg["epochs"], cfg["hidden"]) == (2, 12)
    assert summary["fingerprint"] == RunConfig.from_dict(cfg).fingerprint
    assert json.loads((sdir / "study.json").read_text())["overrides"][:2] == ["epochs=2", "hidden=12"]


def test_1_interrupted_run_resumes_only_under_its_configuration(tmp_path):
    cfg = scifar_runs("smoke", rows=["baseline"])[0]
    with pytest.raises(Kill):
        run(cfg, tmp_path, callbacks=[kill_at_epoch(2)])
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["fingerprint"] == cfg.fingerprint
    with pytest.raises(ConfigMismatch, match=r"epochs: 3 → 60; lr: 0\.03 → 0\.0001"):
        run(cfg.replace(lr=1e-4, epochs=60), tmp_path)
    assert RunConfig.from_json((tmp_path / CONFIG_FILE).read_text()) == cfg  # still what the run used
    # a Trainer met with another configuration's checkpoint refuses too
    torch.manual_seed(0)
    model, data = bias_ablation.build(cfg)
    with pytest.raises(ConfigMismatch, match="lr: 0.03 → 0.001"):
        Trainer(cfg.replace(lr=1e-3), model, data, tmp_path).fit()
    # what is not fingerprinted (progress bar, a launcher's thread count) does not block resuming
    summary = run(cfg.replace(progress=False, threads=2), tmp_path)
    assert summary["status"] == "finished" and summary["fingerprint"] == cfg.fingerprint
    assert [e["event"] for e in read_jsonl(tmp_path / "events.jsonl")] == ["resume"]


# --------------------------------------------------------------------------- 2 one writer
def test_2_a_second_writer_is_refused_and_sigterm_leaves_a_resumable_run(tmp_path, capsys):
    args = [*SMOKE, "--out", str(tmp_path), "--set", "epochs=400"]
    proc = subprocess.Popen([sys.executable, "-m", "studies", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    sdir, rdir = tmp_path / "scifar-bias" / "smoke", run_dir_of(tmp_path)
    try:
        wait_for(lambda: (rdir / CHECKPOINT_FILE).exists() and (rdir / LOCK_FILE).exists()
                 and (rdir / LOCK_FILE).read_text().strip() == str(proc.pid), proc=proc)
        capsys.readouterr()
        assert main(args) == 2
        line = one_line_error(capsys.readouterr().err)
        assert f"process {proc.pid} is writing this study directory" in line
        with pytest.raises(Exception, match=f"process {proc.pid} is writing this run directory"):
            run(RunConfig.from_json((rdir / CONFIG_FILE).read_text()), rdir)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "terminated (SIGTERM); checkpoints are kept" in one_line_error(err)
    cfg = RunConfig.from_json((rdir / CONFIG_FILE).read_text())
    assert check_reuse(rdir, cfg) == "partial"  # the checkpoint is whole and of this configuration
    assert (sdir / LOCK_FILE).read_text() == "" and (rdir / LOCK_FILE).read_text() == ""  # released


# --------------------------------------------------------------------------- 3 numeric input
RUN = ["run", "scifar-bias", "--preset", "smoke", "--rows", "baseline"]


@pytest.mark.parametrize("args, message", [
    (["transfer", "somewhere", "--eval-size", "0"], "argument --eval-size: expected an integer ≥ 1; got 0"),
    (["transfer", "somewhere", "--eval-size", "-5"], "argument --eval-size: expected an integer ≥ 1; got -5"),
    (["transfer", "somewhere", "--seeds", "0"], "argument --seeds: expected an integer ≥ 1"),
    ([*RUN, "--seeds", "0"], "argument --seeds: expected an integer ≥ 1"),
    ([*RUN, "--workers", "0"], "argument --workers: expected an integer ≥ 1"),
    ([*RUN, "--set", "max_steps=0"], "max_steps must be ≥ 1; got 0"),
    ([*RUN, "--set", "gate_stats_size=0"], "gate_stats_size must be ≥ 1; got 0"),
    ([*RUN, "--set", "eval_size=-1"], "eval_size must be ≥ 1; got -1"),
    ([*RUN, "--set", "lr=Infinity"], "lr must be a finite number; got inf"),
    ([*RUN, "--set", "weight_decay=nan"], "weight_decay must be a finite number"),
    ([*RUN, "--set", "seed=-3"], "seed must be in 0.."),
])
def test_3_numbers_are_checked_before_anything_is_written(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_3_evaluation_sets_cannot_be_empty():
    from studies.gate_ablation import synthetic_task
    from studies.transfer_study import evaluator

    data, _ = synthetic_task(RunConfig(task="adding", seq_len=5, eval_size=8))
    for bad in (0, -5, True):
        with pytest.raises(ConfigError, match="eval_size must be an integer ≥ 1"):
            evaluator(data, bad)
    score = evaluator(data, 3)
    assert score(nn.Sequential(nn.Flatten(), nn.Linear(10, 1)))["mse"] > 0


# --------------------------------------------------------------------------- 4 hardware bounds
@pytest.mark.parametrize("field, value, message", [
    ("coupling_max", math.inf, "coupling_max must be a finite number"),
    ("coupling_max", 1e300, "coupling_max must be ≤ 1e+06"),
    ("coupling_max", 0.0, "coupling_max must be > 0"),
    ("hw_dt", math.inf, "hw_dt must be a finite number"),
    ("hw_dt", 1e300, "hw_dt must be ≤ 1"),
    ("chrono_tmax", 1.5, "chrono_tmax must be ≥ 2"),
])
def test_4_unbounded_hardware_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig(profile="soen-dendrite", **{field: value})


def test_4_a_model_built_with_nonfinite_weights_never_trains(tmp_path, monkeypatch):
    cfg = scifar_runs("smoke", rows=["baseline-hw"])[0]
    real = bias_ablation.build

    def poisoned(c):
        model, data = real(c)
        with torch.no_grad():
            model.head.weight.fill_(math.nan)
        return model, data

    monkeypatch.setattr(bias_ablation, "build", poisoned)
    with pytest.raises(ConfigError, match="non-finite .* parameters; check the hardware settings"):
        run(cfg, tmp_path)
    assert not (tmp_path / CHECKPOINT_FILE).exists()


# --------------------------------------------------------------------------- 5 divergence
def tiny(seed=3, **kw):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (64,), generator=g)
    x = torch.randn(64, 6, 1, generator=g)
    split = lambda a, b: ArraySplit(x[a:b], y[a:b])  # noqa: E731
    data = TaskData(train=split(0, 32), val=split(32, 48), test=split(48, 64), num_outputs=3, seq_len=6)
    torch.manual_seed(seed)
    from gates import GatedGRU

    model = SequenceModel(GatedGRU(1, 4, batch_first=True), 4, 3)
    cfg = RunConfig(**{**dict(study="test", row="tiny", hidden=4, epochs=2, batch_size=8, lr=1e-2, lr_min=1e-4,
                              progress=False, log_every=1, gate_stats=False, threads=1), **kw})
    return cfg, model, data


class ScaleAt(nn.Module):
    """The ``at``-th training forward's output times ``factor``: a loss blow-up at that step."""

    def __init__(self, inner, at, factor):
        super().__init__()
        self.inner, self.at, self.factor, self.calls = inner, at, factor, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                return out * self.factor
        return out


@pytest.mark.parametrize("at", [1, 2])
def test_5_an_exploding_loss_is_caught_from_the_first_step(tmp_path, at):
    cfg, model, data = tiny(nonfinite_policy="stop")
    summary = Trainer(cfg, ScaleAt(model, at, 1e6), data, tmp_path).fit()
    assert summary["status"] == "diverged" and summary["steps"] == at - 1
    assert summary["reason"].startswith("exploding loss") and f"at step {at}" in summary["reason"]
    assert [e["event"] for e in read_jsonl(tmp_path / "events.jsonl")] == ["nonfinite", "stop"]


def test_5_nonfinite_weights_after_a_step_are_a_divergence(tmp_path):
    cfg, model, data = tiny(nonfinite_policy="stop", max_steps=1, epochs=1)
    trainer = Trainer(cfg, model, data, tmp_path)

    def overflow(optimizer, args, kwargs):  # an update that overflows while loss and gradients were finite
        with torch.no_grad():
            model.rnn.weight_hh_l0[0, 0] = math.inf

    trainer.optimizer.register_step_post_hook(overflow)
    summary = trainer.fit()
    assert summary["status"] == "diverged" and summary["reason"] == "non-finite parameters after step 1"
    state = load_checkpoint(tmp_path / CHECKPOINT_FILE)["model"]
    assert all(torch.isfinite(v).all() for v in state.values())  # the last good state is kept
    assert all(math.isfinite(v) for v in summary["final"].values() if isinstance(v, float))
    with pytest.raises(ConfigError, match="lr must be ≤ 1e"):
        RunConfig(lr=1e39)


def test_5_a_blow_up_makes_run_exit_3_and_the_table_say_diverged(tmp_path, capsys):
    rc = main(["run", "gate-ablation", "--preset", "smoke", "--rows", "copy-UR", "--out", str(tmp_path),
               "--set", "lr=1e30"])
    captured = capsys.readouterr()
    assert rc == 3, captured.err
    summary = json.loads((run_dir_of(tmp_path, "copy-UR", study="gate-ablation") / SUMMARY_FILE).read_text())
    assert summary["status"] == "diverged" and summary["rollbacks"] == 3
    assert "run copy-UR-s0 diverged:" in captured.err
    row = next(ln for ln in captured.out.splitlines() if ln.startswith("| copy-UR |"))
    assert "| diverged |" in row
    assert grid.format_value(math.inf) == "inf" and grid.format_value(-math.inf) == "-inf"
    assert mean_std([1.0, math.inf])[0] == math.inf  # an infinite seed is not dropped from the mean


# --------------------------------------------------------------------------- 6 one-line errors
@pytest.fixture
def killed_run(tmp_path):
    cfg = scifar_runs("smoke", rows=["baseline"])[0]
    rdir = tmp_path / "run"
    with pytest.raises(Kill):
        run(cfg, rdir, callbacks=[kill_at_epoch(2)])
    return rdir


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_6_bad_checkpoints_are_named_without_a_traceback(killed_run, tmp_path, capsys):
    ckpt = killed_run / CHECKPOINT_FILE
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    assert main(["resume", str(killed_run)]) == 2
    assert f"{ckpt}: corrupt or truncated checkpoint" in one_line_error(capsys.readouterr().err)
    marker = tmp_path / "PWNED"
    torch.save({"format": 2, "model": _Evil(marker)}, ckpt)
    assert main(["resume", str(killed_run)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"{ckpt}: refused" in line and "weights_only" not in line and not marker.exists()
    ckpt.write_bytes(pickle.dumps([1, 2]))
    assert main(["resume", str(killed_run)]) == 2
    assert str(ckpt) in one_line_error(capsys.readouterr().err)


def test_6_corrupt_json_names_the_file(killed_run, capsys):
    cfg_file = killed_run / CONFIG_FILE
    cfg_file.write_text('{"row": "baseline", ')
    assert main(["resume", str(killed_run)]) == 2
    assert f"{cfg_file}: not valid JSON (line 1" in one_line_error(capsys.readouterr().err)
    sdir = killed_run.parent / "study"
    write_json_atomic(sdir / "study.json", {"study": "scifar-bias", "preset": "smoke", "runs": ["baseline-s0"]})
    broken = sdir / "runs" / "baseline-s0" / SUMMARY_FILE
    broken.parent.mkdir(parents=True)
    broken.write_text("")
    assert main(["summarize", str(sdir)]) == 2
    assert f"{broken}: not valid JSON" in one_line_error(capsys.readouterr().err)


def test_6_unwritable_places_are_one_line_errors(tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("")
    assert main([*SMOKE, "--out", str(tmp_path / "a-file" / "out")]) == 2
    assert "a-file" in one_line_error(capsys.readouterr().err)
    assert main([*SMOKE, "--out", str(tmp_path / ("x" * 300))]) == 2
    assert "File name too long" in one_line_error(capsys.readouterr().err)
    real_replace = os.replace

    def disk_full(src, dst):
        if str(dst).endswith(CHECKPOINT_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", disk_full)
    assert main([*SMOKE, "--out", str(tmp_path / "full")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.endswith(f"{run_dir_of(tmp_path / 'full') / CHECKPOINT_FILE}: No space left on device")


def test_6_ctrl_c_says_how_to_resume_and_debug_shows_tracebacks(tmp_path, capsys, monkeypatch):
    real_end = Trainer.end_epoch

    def interrupt_after_epoch_1(self, stats, t0):
        real_end(self, stats, t0)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "end_epoch", interrupt_after_epoch_1)
    assert main([*SMOKE, "--out", str(tmp_path)]) == 130
    assert "interrupted; checkpoints are kept: run the same command again" in one_line_error(capsys.readouterr().err)
    monkeypatch.undo()
    assert main([*SMOKE, "--out", str(tmp_path)]) == 0
    assert [e["event"] for e in read_jsonl(run_dir_of(tmp_path) / "events.jsonl")] == ["resume"]
    with pytest.raises(Exception, match="has no config.json"):
        main(["resume", str(tmp_path / "nothing"), "--debug"])


# --------------------------------------------------------------------------- 7 names and seeds
def test_7_set_seed_is_honoured(tmp_path, capsys):
    assert main([*SMOKE, "--out", str(tmp_path), "--set", "seed=7", "--set", "epochs=1"]) == 0
    cfg = json.loads((run_dir_of(tmp_path, seed=7) / CONFIG_FILE).read_text())
    assert cfg["seed"] == 7 and not run_dir_of(tmp_path, seed=0).exists()
    assert json.loads((tmp_path / "scifar-bias" / "smoke" / "study.json").read_text())["seeds"] == [7]
    capsys.readouterr()
    assert main([*SMOKE, "--out", str(tmp_path), "--set", "seed=7", "--seeds", "2"]) == 2
    assert "either --seeds N" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("row", ["../../../../ESCAPED", "a|b", "x" * 101, "", ".hidden", "with space"])
def test_7_row_names_are_safe(tmp_path, capsys, row):
    with pytest.raises(ConfigError, match="not a valid name"):
        RunConfig(row=row)
    assert main([*SMOKE, "--out", str(tmp_path / "out"), "--set", f"row={row}"]) == 2
    one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and not list(tmp_path.parent.glob("ESCAPED*"))
    assert grid.markdown_cell("error: a|b\nc") == "error: a\\|b c"


# --------------------------------------------------------------------------- 8 signals
def test_8_sigterm_stops_the_process_launchers_workers(tmp_path):
    args = ["run", "gate-ablation", "--preset", "smoke", "--rows", "copy-std,adding-std", "--launcher", "process",
            "--workers", "2", "--out", str(tmp_path), "--set", "epochs=3000", "--no-report"]
    proc = subprocess.Popen([sys.executable, "-m", "studies", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    rdirs = [run_dir_of(tmp_path, r, study="gate-ablation") for r in ("copy-std", "adding-std")]

    def workers():
        pids = [(d / LOCK_FILE).read_text().strip() if (d / LOCK_FILE).exists() else "" for d in rdirs]
        return [int(p) for p in pids if p.isdigit()]

    try:
        wait_for(lambda: len(workers()) == 2 and all((d / CHECKPOINT_FILE).exists() for d in rdirs), proc=proc)
        pids = workers()
        assert proc.pid not in pids and all(alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    one_line_error(err)
    wait_for(lambda: not any(alive(p) for p in pids), timeout=30)
    for d in rdirs:
        assert check_reuse(d, RunConfig.from_json((d / CONFIG_FILE).read_text())) == "partial"


# --------------------------------------------------------------------------- 9 smaller items
def test_9_software_rows_show_no_j_max(tmp_path):
    configs = [RunConfig(row="soft", coupling_max=0.3), RunConfig(row="hw", profile="soen-dendrite", coupling_max=0.3),
               RunConfig(row="hw-default", profile="soen-dendrite")]
    write_json_atomic(tmp_path / "study.json", {"study": "custom", "preset": "x", "runs": [c.run_id for c in configs]})
    for c in configs:
        write_json_atomic(grid.run_dir(tmp_path, c) / CONFIG_FILE, c.to_dict())
    table = {r["row"]: r for r in grid.results_table(tmp_path)}
    assert table["soft"]["J_max"] == "-" and table["hw"]["J_max"] == 0.3 and table["hw-default"]["J_max"] == 0.5


def test_9_an_image_folder_with_eleven_classes_fails_at_load(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv(cifar.CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "data"
    for split in ("train", "test"):
        for c in range(11):
            (root / split / f"class{c:02d}").mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((32, 32, 3), 20 * c + i, np.uint8)).save(root / split / f"class{c:02d}" / f"{i}.png")
    cfg = RunConfig(task="scifar", data_dir=str(root), image_size=4, val_size=11, hidden=4)
    with pytest.raises(DataError, match=r"11 classes \(class00, .*\); the s-CIFAR study needs the 10"):
        bias_ablation.image_task(cfg)
    assert main([*SMOKE, "--out", str(tmp_path / "out"), "--data-dir", str(root), "--set", "task=scifar",
                 "--set", "val_size=11", "--set", "train_subset=None", "--set", "test_subset=None"]) == 2
    assert "11 classes" in one_line_error(capsys.readouterr().err)
    assert not (run_dir_of(tmp_path / "out") / CHECKPOINT_FILE).exists()


def test_9_a_mistyped_data_dir_is_never_created(tmp_path, capsys, monkeypatch):
    typo = tmp_path / "dtaa"
    assert main([*SMOKE, "--out", str(tmp_path / "out"), "--data-dir", str(typo)]) == 2
    assert f"--data-dir {typo}: no such file or folder" in one_line_error(capsys.readouterr().err)
    monkeypatch.setenv("SOENSIM_DATA_DIR", str(typo))
    assert main([*SMOKE, "--out", str(tmp_path / "out")]) == 2
    assert "$SOENSIM_DATA_DIR" in one_line_error(capsys.readouterr().err)
    assert not typo.exists()
    # the library downloads into a folder it creates, and removes it again when that fails
    monkeypatch.setattr(cifar, "OFFICIAL_URL", (tmp_path / "no-server" / "x.tgz").as_uri())
    with pytest.raises(FileNotFoundError, match="Downloading"):
        cifar.load_cifar10(typo, "train")
    assert not typo.exists()
