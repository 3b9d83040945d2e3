"""Study grids: unique ids, overrides, skip-finished/resume, launchers."""
import importlib.util
import json

import pytest

from studies import grid
from studies.bias_ablation import runs as scifar_runs
from studies.train import CHECKPOINT_FILE, SUMMARY_FILE, ConfigError, RunConfig, read_jsonl, run

SOFT = ["baseline", "ablated"]


def smoke(tmp_path, rows=SOFT, seeds=1, overrides=()):
    configs = scifar_runs("smoke", seeds=seeds, rows=rows, overrides=["epochs=1", *overrides])
    return configs, tmp_path / "study"


def test_grid_ids_rows_seeds_and_overrides():
    configs = scifar_runs("smoke", seeds=2, rows=SOFT, overrides=["hidden=12", "lr=0.01"])
    assert [c.run_id for c in configs] == ["baseline-s0", "baseline-s1", "ablated-s0", "ablated-s1"]
    assert {c.hidden for c in configs} == {12} and {c.lr for c in configs} == {0.01}
    assert configs[2].bias_mode == "frozen-zero" and configs[0].bias_mode == "learnable"
    with pytest.raises(ValueError, match="known rows"):
        scifar_runs("smoke", rows=["nope"])
    with pytest.raises(ConfigError, match="known keys"):
        scifar_runs("smoke", overrides=["hiden=3"])
    with pytest.raises(ValueError, match="known presets"):
        scifar_runs("huge")
    with pytest.raises(ValueError, match="duplicate run id"):
        grid.check_unique([RunConfig(row="a"), RunConfig(row="a")])


def test_run_grid_skips_finished_and_resumes_partial(tmp_path):
    configs, sdir = smoke(tmp_path)
    first = grid.run_grid(configs, sdir, study="scifar-bias", preset="smoke")
    assert [s["status"] for s in first] == ["finished", "finished"]
    info = grid.read_study_file(sdir)
    assert info["runs"] == ["baseline-s0", "ablated-s0"] and info["preset"] == "smoke"

    # a finished run is not touched again
    done = sdir / "runs" / "baseline-s0" / SUMMARY_FILE
    stamp = done.stat().st_mtime_ns
    # an interrupted one (checkpoint, no summary) is resumed from its checkpoint
    partial = sdir / "runs" / "ablated-s0"
    (partial / SUMMARY_FILE).unlink()
    again = grid.run_grid(configs, sdir, study="scifar-bias", preset="smoke")
    assert done.stat().st_mtime_ns == stamp
    assert again[0] == first[0]
    assert [e["event"] for e in read_jsonl(partial / "events.jsonl")] == ["resume"]
    assert again[1]["final"]["test_acc"] == first[1]["final"]["test_acc"]

    table = grid.results_table(sdir)
    assert [r["row"] for r in table] == SOFT and all(r["status"] == "finished" for r in table)
    md, csv_path = grid.write_results(sdir)
    assert "| baseline |" in md.read_text() and csv_path.read_text().startswith("row,")


def test_errors_are_recorded_and_the_grid_goes_on(tmp_path):
    configs, sdir = smoke(tmp_path)
    bad = configs[0].replace(row="broken", task="no-such-task")
    out = grid.run_grid([bad, configs[1]], sdir, study="scifar-bias")
    assert out[0]["status"] == "error" and "no-such-task" in out[0]["error"]
    assert out[1]["status"] == "finished"
    assert (sdir / "runs" / "broken-s0" / grid.ERROR_FILE).exists()
    table = {r["row"]: r for r in grid.results_table(sdir)}
    assert table["broken"]["status"] == "error" and "no-such-task" in table["broken"]["error"]


def test_run_returns_existing_summary(tmp_path):
    cfg = scifar_runs("smoke", rows=["baseline"], overrides=["epochs=1"])[0]
    first = run(cfg, tmp_path)
    (tmp_path / CHECKPOINT_FILE).unlink()  # proof that nothing is retrained
    assert run(cfg, tmp_path) == first


def test_process_launcher(tmp_path, monkeypatch):
    # spawned workers need not wait for (or race to build) the C++ GRU kernel
    monkeypatch.setenv("SOENSIM_GRU_BACKEND", "generic")
    configs, sdir = smoke(tmp_path, seeds=2, rows=["baseline"])
    out = grid.run_grid(configs, sdir, launcher="process", workers=2, study="scifar-bias")
    assert [s["status"] for s in out] == ["finished", "finished"]
    local = grid.run_grid(configs, tmp_path / "local", launcher="local", study="scifar-bias")
    # same numbers whichever launcher ran them
    assert [s["final"]["test_acc"] for s in out] == [s["final"]["test_acc"] for s in local]


def test_unknown_launcher():
    with pytest.raises(ValueError, match="known launchers"):
        grid.get_launcher("slurm")


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_missing_gives_clear_error(tmp_path):
    configs, sdir = smoke(tmp_path, rows=["baseline"])
    with pytest.raises(RuntimeError, match=r"soensim\[ray\]"):
        grid.run_grid(configs, sdir, launcher="ray")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (optional extra)")
def test_ray_launcher(tmp_path):
    configs, sdir = smoke(tmp_path, seeds=2, rows=["baseline"])
    out = grid.run_grid(configs, sdir, launcher="ray", workers=2, study="scifar-bias")
    assert [s["status"] for s in out] == ["finished", "finished"]
    assert json.loads((sdir / "study.json").read_text())["runs"] == ["baseline-s0", "baseline-s1"]


def test_a_run_in_a_fresh_process_starts_from_the_same_weights(tmp_path):
    """A spawned worker imports the study module inside run(); the import must not shift the seeded
    initialisation (it did: the first run of every process-launcher worker started from other weights)."""
    import subprocess
    import sys

    cfg = scifar_runs("smoke", rows=["ablated"], overrides=["epochs=1", "max_steps=1"])[0]
    here = run(cfg, tmp_path / "here", resume=False)
    code = ("import json, sys; from studies.grid import _run_entry; from studies.config import RunConfig; "
            "_run_entry(json.loads(sys.argv[1]), sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, json.dumps(cfg.to_dict()), str(tmp_path / "fresh")], check=True)
    first = [read_jsonl(tmp_path / d / "epochs.jsonl")[0] for d in ("here", "fresh")]
    assert here["status"] == "finished"
    for key in ("val_loss", "w_iz_norm", "w_hz_norm"):
        assert first[0][key] == first[1][key], key


def test_calls_with_other_rows_add_to_the_study_and_other_settings_replace_it(tmp_path):
    sdir = tmp_path / "study"
    extra = {"overrides": ["epochs=1"]}
    for rows in (["baseline"], ["ablated"], ["baseline"]):
        configs = scifar_runs("smoke", rows=rows, overrides=["epochs=1"])
        grid.run_grid(configs, sdir, study="scifar-bias", preset="smoke", extra=extra)
    info = grid.read_study_file(sdir)
    assert info["runs"] == ["baseline-s0", "ablated-s0"] and info["rows"] == ["baseline", "ablated"]
    assert [r["row"] for r in grid.results_table(sdir)] == ["baseline", "ablated"]
    configs = scifar_runs("smoke", seeds=2, rows=["ablated"], overrides=["epochs=1"])
    grid.run_grid(configs, sdir, study="scifar-bias", preset="smoke", extra=extra)
    assert grid.read_study_file(sdir)["seeds"] == [0, 1]
    other = scifar_runs("smoke", rows=["chrono"], overrides=["epochs=1", "lr=0.01"])
    grid.run_grid(other, sdir, study="scifar-bias", preset="smoke", extra={"overrides": ["epochs=1", "lr=0.01"]})
    assert grid.read_study_file(sdir)["runs"] == ["chrono-s0"]  # other settings: a new grid


def test_importing_the_studies_draws_no_random_numbers():
    import subprocess
    import sys

    code = ("import torch; torch.manual_seed(0); before = torch.get_rng_state().clone(); "
            "import studies.bias_ablation, studies.gate_ablation, studies.sst_lowdata, studies.transfer_study; "
            "assert torch.equal(before, torch.get_rng_state()), 'an import drew random numbers'")
    subprocess.run([sys.executable, "-c", code], check=True)
