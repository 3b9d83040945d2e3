"""soensim-study CLI: list, run (smoke, synthetic data), override validation, resume, plot, summarize."""
import json
import math
import subprocess
import sys

import pytest
from test_plots import assert_png_drawn

from studies.bias_ablation import runs as scifar_runs
from studies.cli import main
from studies.train import CHECKPOINT_FILE, SUMMARY_FILE, read_jsonl, run

ROWS = "baseline,ablated,chrono,baseline-hw,ablated-hw,chrono-hw,gate-U,gate-R,gate-UR,gate-SST"  # every smoke row


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("scifar-bias", "gate-ablation", "sst-lowdata"):
        assert name in out
    assert "smoke" in out and "quick" in out and "full" in out
    assert "baseline-hw" in out


def test_run_smoke_writes_tables_and_plots(tmp_path, capsys):
    rc = main(["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path), "--rows", ROWS])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    sdir = tmp_path / "scifar-bias" / "smoke"
    assert "| baseline |" in captured.out
    for name in ("study.json", "results.md", "results.csv"):
        assert (sdir / name).exists(), name
    for png in ("test_accuracy.png", "train_loss.png", "w_hz_norm.png", "gate_histograms.png", "loss_spikes.png"):
        assert_png_drawn(sdir / "plots" / png)
    summaries = {r: json.loads((sdir / "runs" / f"{r}-s0" / SUMMARY_FILE).read_text()) for r in ROWS.split(",")}
    assert all(s["status"] == "finished" for s in summaries.values())
    # the synthetic images are learnable: the software baseline beats chance clearly
    assert summaries["baseline"]["best"]["val_acc"] > 0.3
    assert summaries["baseline"]["final"]["train_loss"] < math.log(10)
    # the hardware rows ran under the profile: weights inside J_max = 0.5
    assert summaries["baseline-hw"]["final"]["w_max_abs"] <= 0.5

    # a second invocation skips every finished run
    stamp = (sdir / "runs" / "baseline-s0" / SUMMARY_FILE).stat().st_mtime_ns
    assert main(["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path), "--rows", ROWS]) == 0
    assert (sdir / "runs" / "baseline-s0" / SUMMARY_FILE).stat().st_mtime_ns == stamp

    assert main(["summarize", str(sdir)]) == 0
    assert "ablated-hw" in capsys.readouterr().out
    (sdir / "plots" / "test_accuracy.png").unlink()
    assert main(["plot", str(sdir)]) == 0
    assert (sdir / "plots" / "test_accuracy.png").exists()

    # the finished software and hardware runs go back into continuous time
    runs = [str(sdir / "runs" / f"{r}-s0") for r in ("baseline", "baseline-hw")]
    assert main(["transfer", *runs, "--out", str(tmp_path / "tr"), "--seeds", "1", "--eval-size", "16"]) == 0
    table = (tmp_path / "tr" / "transfer.md").read_text()
    assert "| baseline-hw |" in table and "hardware" in table
    assert_png_drawn(tmp_path / "tr" / "plots" / "robustness_tau_spread.png")


def test_override_validation(tmp_path, capsys):
    rc = main(["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path), "--set", "hiden=4"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown config keys ['hiden']" in err and "hidden" in err and "lr_min" in err
    assert main(["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path), "--set", "hidden=four"]) == 2
    assert "hidden" in capsys.readouterr().err
    assert main(["run", "no-such-study", "--out", str(tmp_path)]) == 2
    assert "known studies" in capsys.readouterr().err
    assert main(["run", "scifar-bias", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "known presets" in capsys.readouterr().err
    assert main(["run", "scifar-bias", "--preset", "smoke", "--rows", "nope", "--out", str(tmp_path)]) == 2
    assert "known rows" in capsys.readouterr().err
    assert not (tmp_path / "scifar-bias").exists()


def test_data_dir_and_set_reach_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("SOENSIM_DATA_DIR", str(tmp_path / "env-data"))
    for folder in ("env-data", "flag"):  # a data folder must exist (a mistyped one is an error)
        (tmp_path / folder).mkdir()
    assert main(["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path), "--rows", "baseline",
                 "--set", "hidden=6", "--seeds", "2", "--no-report"]) == 0
    for seed in (0, 1):
        cfg = json.loads((tmp_path / "scifar-bias" / "smoke" / "runs" / f"baseline-s{seed}" / "config.json").read_text())
        assert cfg["hidden"] == 6 and cfg["seed"] == seed
        assert cfg["data_dir"] == str((tmp_path / "env-data").resolve())
    assert main(["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path / "b"), "--rows", "baseline",
                 "--data-dir", str(tmp_path / "flag"), "--no-report"]) == 0
    cfg = json.loads((tmp_path / "b" / "scifar-bias" / "smoke" / "runs" / "baseline-s0" / "config.json").read_text())
    assert cfg["data_dir"] == str((tmp_path / "flag").resolve())


def test_smoke_on_a_cifar_image_folder(tmp_path, monkeypatch):
    """scifar (not the in-memory fake task) through studies.data, on a tiny image-folder tree."""
    from PIL import Image

    from studies.bias_ablation import fake_images

    monkeypatch.setenv("SOENSIM_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for split, n, seed in (("train", 200, 1), ("test", 100, 2)):
        images, labels = fake_images(n, seed=seed)
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:04d}.png")
    rc = main(["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path / "out"), "--rows", "baseline",
               "--data-dir", str(root), "--set", "task=scifar", "--no-report"])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "scifar-bias" / "smoke" / "runs" / "baseline-s0" / SUMMARY_FILE)
                         .read_text())
    assert summary["status"] == "finished"
    assert summary["data"]["source"].startswith("CIFAR-10 from") and summary["data"]["test"] == 60
    assert summary["best"]["val_acc"] > 0.3  # the class patterns survive PNG round trip and loading


class Kill(Exception):
    pass


def test_resume_command(tmp_path, capsys):
    cfg = scifar_runs("smoke", rows=["baseline"])[0]
    ref = run(cfg, tmp_path / "ref")

    def kill(trainer, record):
        if record["epoch"] == 2:
            raise Kill

    with pytest.raises(Kill):
        run(cfg, tmp_path / "cut", callbacks=[kill])
    assert not (tmp_path / "cut" / SUMMARY_FILE).exists() and (tmp_path / "cut" / CHECKPOINT_FILE).exists()
    assert main(["resume", str(tmp_path / "cut")]) == 0
    assert "finished" in capsys.readouterr().out
    resumed = json.loads((tmp_path / "cut" / SUMMARY_FILE).read_text())
    assert resumed["final"]["test_acc"] == ref["final"]["test_acc"]
    assert resumed["final"]["train_loss"] == ref["final"]["train_loss"]
    assert [e["event"] for e in read_jsonl(tmp_path / "cut" / "events.jsonl")] == ["resume"]
    assert main(["resume", str(tmp_path / "nothing")]) == 2


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "studies", "list"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "scifar-bias" in proc.stdout
