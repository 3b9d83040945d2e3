"""The batched launcher (studies.packed): runs trained as one batched model leave exactly the run
directories they leave when trained alone (on the CPU, bit for bit): logs, summaries and weights."""
from __future__ import annotations

import json

import pytest
import torch

from studies import grid, packed
from studies.bias_ablation import runs as scifar_runs
from studies.errors import ConfigError
from studies.train import Trainer, load_checkpoint, prepare, read_jsonl

TIMING = {"elapsed_s"}


def configs(rows, seeds=1, overrides=()):
    return scifar_runs("smoke", seeds=seeds, rows=rows, overrides=["epochs=2", *overrides])


def contents(rdir):
    """What a run leaves, without wall times: epoch, step and event logs, the summary, the weights."""
    def drop(rec):
        return {k: v for k, v in rec.items() if k not in TIMING}

    summary = json.loads((rdir / "summary.json").read_text())
    return {"epochs": [drop(r) for r in read_jsonl(rdir / "epochs.jsonl")],
            "steps": read_jsonl(rdir / "steps.jsonl"),
            "events": read_jsonl(rdir / "events.jsonl") if (rdir / "events.jsonl").exists() else [],
            "summary": {k: (drop(v) if isinstance(v, dict) else v) for k, v in summary.items() if k not in TIMING},
            "weights": load_checkpoint(rdir / "checkpoint.pt")["model"]}


def assert_same_runs(a_dir, b_dir, run_ids):
    for rid in run_ids:
        a, b = contents(a_dir / "runs" / rid), contents(b_dir / "runs" / rid)
        for key in ("epochs", "steps", "events", "summary"):
            assert a[key] == b[key], (rid, key)
        assert a["weights"].keys() == b["weights"].keys()
        for name, w in a["weights"].items():
            assert torch.equal(w, b["weights"][name]), (rid, name)


def test_a_pack_leaves_each_run_as_it_trains_alone(tmp_path):
    """Software, frozen-bias and hardware rows (one kernel mode) and two seeds share one pack; the
    refine row has another mode and trains alone."""
    grid_cfgs = configs(["baseline", "ablated", "ablated-hw", "gate-R"], seeds=2)
    alone = grid.run_grid(grid_cfgs, tmp_path / "alone", launcher="local", study="scifar-bias")
    sizes = []
    fit = packed.fit_pack
    packed.fit_pack = lambda trainers, resume=True: sizes.append(len(trainers)) or fit(trainers, resume)
    try:
        together = grid.run_grid(grid_cfgs, tmp_path / "pack", launcher="batched", study="scifar-bias")
    finally:
        packed.fit_pack = fit
    assert sorted(sizes) == [2, 6]
    assert [s["status"] for s in together] == ["finished"] * 8
    assert [s["final"]["test_acc"] for s in together] == [s["final"]["test_acc"] for s in alone]
    assert_same_runs(tmp_path / "alone", tmp_path / "pack", [c.run_id for c in grid_cfgs])


def test_pack_keys_group_by_layer_shape_and_batches(tmp_path):
    cfgs = configs(["baseline", "chrono", "gate-R"]) + configs(["baseline"], overrides=["hidden=12"])
    cfgs[-1] = cfgs[-1].replace(row="narrow")
    keys = [packed.pack_key(prepare(c, tmp_path / c.run_id)) for c in cfgs]
    assert keys[0] == keys[1]  # chrono: another initialisation of the same kernel mode
    assert keys[2] != keys[0] and keys[3] != keys[0]
    other_batch = prepare(cfgs[0].replace(row="b16", batch_size=16), tmp_path / "b16")
    assert packed.pack_key(other_batch) != keys[0]


def test_a_diverging_run_leaves_the_pack_and_rolls_back_as_alone(tmp_path):
    """A run whose loss explodes rolls back (smaller learning rate) on its own; the others are untouched."""
    base = configs(["baseline"], seeds=2)
    wild = base[1].replace(row="wild", lr=30.0, divergence_factor=1.5, max_rollbacks=2)
    cfgs = [base[0], wild]
    alone = grid.run_grid(cfgs, tmp_path / "alone", launcher="local", study="scifar-bias")
    assert alone[1]["rollbacks"] >= 1  # the case this test is about
    together = grid.run_grid(cfgs, tmp_path / "pack", launcher="batched", study="scifar-bias")
    assert [s["status"] for s in together] == [s["status"] for s in alone]
    assert_same_runs(tmp_path / "alone", tmp_path / "pack", [c.run_id for c in cfgs])


def test_runs_resumed_at_different_epochs_share_a_pack(tmp_path):
    cfgs = configs(["baseline", "ablated"], overrides=["epochs=3"])
    alone = tmp_path / "alone"
    grid.run_grid(cfgs, alone, launcher="local", study="scifar-bias")

    class Stop(Exception):
        pass

    def stop_in_epoch_2(trainer, record):
        if record["epoch"] == 2:
            raise Stop

    sdir = tmp_path / "pack"
    rdir = grid.run_dir(sdir, cfgs[0])
    interrupted = prepare(cfgs[0], rdir, callbacks=[stop_in_epoch_2])
    assert isinstance(interrupted, Trainer)
    with pytest.raises(Stop):
        interrupted.fit()
    out = grid.run_grid(cfgs, sdir, launcher="batched", study="scifar-bias")
    assert [s["status"] for s in out] == ["finished", "finished"]
    assert [e["event"] for e in read_jsonl(rdir / "events.jsonl")] == ["resume"]
    for rid in ("baseline-s0", "ablated-s0"):
        a, b = contents(alone / "runs" / rid), contents(sdir / "runs" / rid)
        assert a["summary"]["final"] == b["summary"]["final"] and a["steps"] == b["steps"]


def test_failures_are_recorded_per_run_and_workers_are_refused(tmp_path):
    cfgs = configs(["baseline", "ablated"])
    bad = cfgs[0].replace(row="broken", task="no-such-task")
    out = grid.run_grid([bad, *cfgs], tmp_path / "s", launcher="batched", study="scifar-bias")
    assert out[0]["status"] == "error" and "no-such-task" in out[0]["error"]
    assert [s["status"] for s in out[1:]] == ["finished", "finished"]
    with pytest.raises(ConfigError, match="workers"):
        grid.run_grid(cfgs, tmp_path / "w", launcher="batched", workers=2, study="scifar-bias")


def test_a_failing_batched_step_is_recorded_for_every_run_of_the_pack(tmp_path, monkeypatch):
    def broken(models, xs):
        raise RuntimeError("kernel launch failed")

    monkeypatch.setattr(packed, "_outputs", broken)
    out = grid.run_grid(configs(["baseline", "ablated"]), tmp_path / "s", launcher="batched", study="scifar-bias")
    assert [s["status"] for s in out] == ["error", "error"]
    assert all("kernel launch failed" in s["error"] for s in out)
    assert (tmp_path / "s" / "runs" / "ablated-s0" / grid.ERROR_FILE).exists()


def test_the_cli_runs_a_study_with_the_batched_launcher(tmp_path, capsys):
    from studies.cli import main

    args = ["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path), "--rows", "baseline,ablated",
            "--set", "epochs=1", "--launcher", "batched"]
    assert main(args) == 0
    assert "2/2 runs finished" in capsys.readouterr().err
    assert (tmp_path / "scifar-bias" / "smoke" / "results.md").exists()
    args[args.index("--out") + 1] = str(tmp_path / "other")
    assert main([*args, "--workers", "2"]) == 2  # one clear line, exit code 2
    assert "launcher 'batched'" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_pack_on_cuda_matches_the_runs_alone_to_float_tolerance(tmp_path):
    """On CUDA a pack runs Triton (also for gate '-', which trains alone on cuDNN): same runs to float tolerance."""
    cfgs = configs(["baseline", "ablated", "ablated-hw"], overrides=["device=cuda"])
    alone = grid.run_grid(cfgs, tmp_path / "alone", launcher="local", study="scifar-bias")
    together = grid.run_grid(cfgs, tmp_path / "pack", launcher="batched", study="scifar-bias")
    assert [s["status"] for s in together] == ["finished"] * 3
    for a, b in zip(alone, together, strict=True):
        assert b["device"].startswith("cuda")
        assert b["final"]["train_loss"] == pytest.approx(a["final"]["train_loss"], rel=1e-2)
        assert b["final"]["val_loss"] == pytest.approx(a["final"]["val_loss"], rel=1e-2)
