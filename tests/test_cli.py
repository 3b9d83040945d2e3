"""soensim-study CLI: list, run (smoke, synthetic data), override validation, resume, plot, summarize,
profile files (--profile)."""
import csv
import json
import math
import subprocess
import sys

import pytest
from test_plots import assert_png_drawn

from soensim import HardwareProfile
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


# --------------------------------------------------------------------------- --profile FILE
CHIP = 'name = "my-chip"\ndt = 1e-10\ntau_range = [1e-8, 2e-7]\ntau_spread = 0.07\ncoupling_max = 0.3\n' \
       'weight_levels = 12\ntrainable = ["weights", "candidate_bias"]\n'


def test_profile_file_for_run_and_transfer(tmp_path, capsys):
    chip = tmp_path / "chip.toml"
    chip.write_text(CHIP)
    out = tmp_path / "out"
    args = ["run", "scifar-bias", "--preset", "smoke", "--out", str(out), "--rows", "baseline,baseline-hw",
            "--set", "epochs=1"]
    rc = main([*args, "--profile", str(chip)])
    assert rc == 0, capsys.readouterr().err
    sdir = out / "scifar-bias" / "smoke"
    hw = json.loads((sdir / "runs" / "baseline-hw-s0" / "config.json").read_text())
    sw = json.loads((sdir / "runs" / "baseline-s0" / "config.json").read_text())
    # the hardware row runs under the file's profile, recorded as its content; the software row stays software
    assert hw["profile"]["name"] == "my-chip" and hw["profile"]["coupling_max"] == 0.3
    assert hw["profile"]["tau_range"] == [1e-8, 2e-7] and sw["profile"] is None
    summary = json.loads((sdir / "runs" / "baseline-hw-s0" / SUMMARY_FILE).read_text())
    assert 0 < summary["final"]["w_max_abs"] <= 0.3 + 1e-7  # the file's J_max, not the preset's 0.5
    table = (sdir / "results.md").read_text()
    assert "| 0.3 |" in table  # J_max column read from the recorded profile
    assert json.loads((sdir / "study.json").read_text())["profile_file"] == str(chip.resolve())

    # the fingerprint follows the file's content: same content elsewhere reuses, edited content is refused
    moved = tmp_path / "moved.toml"
    moved.write_text(CHIP)
    assert main([*args, "--profile", str(moved), "--no-report"]) == 0
    moved.write_text(CHIP.replace("coupling_max = 0.3", "coupling_max = 0.25"))
    assert main([*args, "--profile", str(moved), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "profile:" in err and "0.25" in err and "--restart" in err

    # transfer: the chip's τ spread and weight levels become points of the sweeps
    runs = [str(sdir / "runs" / f"{r}-s0") for r in ("baseline", "baseline-hw")]
    assert main(["transfer", *runs, "--out", str(tmp_path / "tr"), "--seeds", "1", "--eval-size", "16",
                 "--profile", str(chip)]) == 0
    with open(tmp_path / "tr" / "transfer_rows.csv") as f:
        points = {(r["kind"], r["value"]) for r in csv.DictReader(f)}
    assert {("tau_spread", "0.07"), ("quantize", "12"), ("clip", "0.3"), ("tau_spread", "0.05")} <= points


def test_profile_sweeps_order_and_values(tmp_path):
    from studies.cli import _profile_sweeps
    from studies.transfer_study import SWEEPS

    chip = tmp_path / "chip.toml"
    chip.write_text(CHIP)
    sweeps = _profile_sweeps(str(chip))
    assert sweeps["tau_spread"] == (0.0, 0.05, 0.07, 0.1, 0.2)
    assert sweeps["quantize"] == (None, 64, 16, 12, 8) and sweeps["clip"] == (None, 1.0, 0.5, 0.3, 0.25)
    assert sweeps["flux_noise"] == SWEEPS["flux_noise"] and sweeps["state_noise"] == SWEEPS["state_noise"]


@pytest.mark.parametrize("text, match", [
    ("tau_spread = 1.5\n", r"chip.toml: tau_spread must be a finite number in \[0, 1\); got 1.5"),
    ("coupling_max = 0.3\nwires = 2\n", r"chip.toml: unknown profile fields \['wires'\]"),
])
def test_bad_profile_file_is_one_line_exit_2(tmp_path, capsys, text, match):
    import re

    chip = tmp_path / "chip.toml"
    chip.write_text(text)
    for argv in (["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path / "o"), "--profile", str(chip)],
                 ["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path / "o"), "--set",
                  f"profile={chip}"],
                 ["transfer", str(tmp_path), "--profile", str(chip)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and re.search(match, err), err
    assert not (tmp_path / "o").exists()


def test_profile_flag_mistakes(tmp_path, capsys):
    chip = tmp_path / "chip.toml"
    chip.write_text(CHIP)
    base = ["run", "scifar-bias", "--preset", "smoke", "--out", str(tmp_path / "o")]
    assert main([*base, "--rows", "baseline", "--profile", str(chip)]) == 2
    assert "all run in software" in capsys.readouterr().err
    assert main([*base, "--profile", str(chip), "--set", "profile=soen-dendrite"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*base, "--profile", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: No such file or directory" in capsys.readouterr().err
    assert main([*base, "--set", "profile=nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_profile_file_in_a_config_records_content(tmp_path):
    from studies.config import RunConfig

    chip = tmp_path / "chip.json"
    HardwareProfile.preset("soen-fabricated").replace(name="fab2", coupling_max=0.4).save(chip)
    cfg = RunConfig(profile=str(chip))
    assert cfg.profile == HardwareProfile.load(chip).to_dict() and cfg.profile_name == "fab2"
    assert RunConfig.from_json(cfg.to_json()) == cfg  # the recorded config needs no file
    assert RunConfig(profile=cfg.profile).fingerprint == cfg.fingerprint
    assert RunConfig(profile="soen-fabricated").profile == "soen-fabricated"  # presets stay names
    HardwareProfile.load(chip).replace(coupling_max=0.45).save(chip)
    assert RunConfig(profile=str(chip)).fingerprint != cfg.fingerprint
    assert RunConfig(tensorboard=True).fingerprint == RunConfig().fingerprint
