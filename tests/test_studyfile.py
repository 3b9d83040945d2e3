"""Studies from TOML files: the example file through the CLI, every CLI feature, and bad files."""
import csv
import json
import shutil
from pathlib import Path

import pytest
from test_plots import assert_png_drawn

from studies import studyfile
from studies.cli import main
from studies.errors import ConfigError
from studies.registry import STUDIES, get_study
from studies.train import EPOCHS_FILE, SUMMARY_FILE, read_jsonl

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "my_study.toml"


@pytest.fixture(autouse=True)
def _forget_file_studies():
    """Each test starts with the built-in registry (file studies register themselves)."""
    before = dict(STUDIES)
    yield
    STUDIES.clear()
    STUDIES.update(before)


def test_example_study_file_runs_through_the_cli(tmp_path, capsys):
    rc = main(["run", str(EXAMPLE), "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    sdir = tmp_path / "my-study" / "default"
    info = json.loads((sdir / "study.json").read_text())
    assert info["study"] == "my-study" and info["preset"] == "default" and info["runs"] == ["GRU-s0", "SST-s0"]
    assert info["study_file"] == str(EXAMPLE)
    assert "| GRU |" in out.out and "| SST |" in out.out
    # the runs are what the file says: base fields, each row's gate, built by the digits study
    for row, gate in (("GRU", "-"), ("SST", "SST")):
        cfg = json.loads((sdir / "runs" / f"{row}-s0" / "config.json").read_text())
        assert (cfg["study"], cfg["row"], cfg["gate"], cfg["task"], cfg["hidden"], cfg["epochs"], cfg["train_size"]) \
            == ("sst-lowdata", row, gate, "digits", 16, 10, 500)
    # the table's numbers are the runs' own (final test accuracy of each row)
    with open(sdir / "results.csv") as f:
        table = {r["row"]: r for r in csv.DictReader(f)}
    for row in ("GRU", "SST"):
        summary = json.loads((sdir / "runs" / f"{row}-s0" / SUMMARY_FILE).read_text())
        assert summary["status"] == "finished" and summary["epochs"] == 10
        assert float(table[row]["final_test"]) == pytest.approx(summary["final"]["test_acc"])
        assert float(table[row]["best_val"]) == pytest.approx(summary["best"]["val_acc"])
        # both rows learn the digits: far above chance (0.1), loss well below its initial value
        assert summary["best"]["val_acc"] > 0.25
        initial = read_jsonl(sdir / "runs" / f"{row}-s0" / EPOCHS_FILE)[0]["val_loss"]
        assert summary["final"]["train_loss"] < 0.85 * initial
    for png in ("train_loss.png", "test_accuracy.png", "gate_histograms.png"):
        assert_png_drawn(sdir / "plots" / png)

    # resume: the same command skips the finished runs
    stamp = (sdir / "runs" / "GRU-s0" / SUMMARY_FILE).stat().st_mtime_ns
    assert main(["run", str(EXAMPLE), "--out", str(tmp_path), "--no-report"]) == 0
    assert (sdir / "runs" / "GRU-s0" / SUMMARY_FILE).stat().st_mtime_ns == stamp
    # a changed command never mixes results: --set changes the fingerprint
    assert main(["run", str(EXAMPLE), "--out", str(tmp_path), "--set", "hidden=9"]) == 2
    assert "hidden: 16 → 9" in capsys.readouterr().err

    # summarize and plot reload the file from study.json, with the registry forgotten
    STUDIES.pop("my-study", None)
    assert main(["summarize", str(sdir)]) == 0
    assert "| SST |" in capsys.readouterr().out
    (sdir / "plots" / "train_loss.png").unlink()
    STUDIES.pop("my-study", None)
    assert main(["plot", str(sdir)]) == 0
    assert_png_drawn(sdir / "plots" / "train_loss.png")
    # one run resumes from its own directory (built by the study its config names)
    assert main(["resume", str(sdir / "runs" / "SST-s0")]) == 0


def test_rows_seeds_set_and_process_launcher_apply(tmp_path, capsys):
    rc = main(["run", str(EXAMPLE), "--out", str(tmp_path), "--rows", "SST", "--seeds", "2", "--set", "epochs=1",
               "--launcher", "process", "--workers", "1", "--no-report"])
    assert rc == 0, capsys.readouterr().err
    runs = tmp_path / "my-study" / "default" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["SST-s0", "SST-s1"]
    for seed in (0, 1):
        summary = json.loads((runs / f"SST-s{seed}" / SUMMARY_FILE).read_text())
        assert summary["status"] == "finished" and summary["epochs"] == 1 and summary["seed"] == seed


def test_study_module_interface_and_registration(tmp_path):
    mod = studyfile.load(EXAMPLE)
    assert get_study("my-study") is mod
    assert mod.PRESETS["default"]["seeds"] == 1 and mod.row_names("default") == ["GRU", "SST"]
    assert mod.notes("default").startswith("Example study file")
    configs = mod.runs("default", seeds=2, overrides=["lr=1e-3"])
    assert [c.run_id for c in configs] == ["GRU-s0", "GRU-s1", "SST-s0", "SST-s1"]
    assert {c.study for c in configs} == {"sst-lowdata"} and {c.lr for c in configs} == {1e-3}
    with pytest.raises(ConfigError, match="unknown rows"):
        mod.runs("default", rows=["LSTM"])


def _write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = '[base]\ntask = "digits"\nhidden = 8\n\n[rows.a]\ngate = "-"\n'


@pytest.mark.parametrize("text, match", [
    ('descripton = "x"\n' + BASE, r"s.toml, line 1: unknown key 'descripton'; a study file has the keys"),
    (BASE + "hiden = 4\n", r"s.toml, line 7: \[rows.a\] unknown config key 'hiden'; known keys"),
    (BASE.replace("hidden = 8", "hidden = 0"), r"s.toml, line 3: \[base\] hidden must be ≥ 1; got 0"),
    (BASE.replace('gate = "-"', 'gate = "nope"'), r"line 6: \[rows.a\] gate must be one of"),
    (BASE + "lr = 1e-6\n", r"line 5: \[rows.a\] lr_min must be in \[0, lr=1e-06\]"),
    (BASE + "seed = 3\n", r"line 7: \[rows.a\] seed cannot be set in a study file: seeds are chosen by seeds = N"),
    (BASE + "[rows.b]\nrow = 'c'\n", r"line 8: \[rows.b\] row cannot be set in a study file"),
    ("seeds = 0\n" + BASE, r"line 1: seeds must be an integer ≥ 1; got 0"),
    ('[base]\ntask = "digits"\n', "rows must be a table"),
    ("rows = {}\n", "a study needs at least one row"),
    ("[rows]\na = 3\n", r"rows.a must be a table"),
    (BASE.replace('"digits"', '"mnist"'), r"line 2: \[base\] task must be one of \['adding', 'copy', 'digits'"),
    ('builds = "nope"\n' + BASE, r"line 1: builds must name a registered study"),
    ('name = "transfer"\n' + BASE, "study name 'transfer' is taken by a built-in study"),
    ('name = "a b"\n' + BASE, "line 1: study name 'a b' is not a valid name"),
    (BASE + '[rows."x y"]\ngate = "-"\n', r"line 7: \[rows.x y\] row 'x y' is not a valid name"),
    (BASE + "hidden = [1 2]\n", r"not valid TOML \(.*line 7"),
    (BASE + 'profile = "chip.toml"\n', r"line 7: \[rows.a\] profile: .*chip.toml: No such file"),
])
def test_bad_study_files_fail_before_anything_runs(tmp_path, capsys, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        studyfile.load(path)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(path) in err
    assert not out.exists()  # nothing was written


def test_profile_paths_are_relative_to_the_study_file(tmp_path):
    from soensim import HardwareProfile

    chip = HardwareProfile.preset("soen-dendrite").replace(name="chip", coupling_max=0.3)
    (tmp_path / "chips").mkdir()
    chip.save(tmp_path / "chips" / "chip.toml")
    path = _write(tmp_path, BASE + 'profile = "chips/chip.toml"\n[rows.sw]\ngate = "-"\n')
    cfg_hw, cfg_sw = studyfile.load(path).runs("default")
    assert cfg_hw.profile == chip.to_dict() and cfg_hw.profile_name == "chip" and cfg_sw.profile is None


def test_missing_study_file_is_one_line(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert "nope.toml: No such file or directory" in err and len(err.strip().splitlines()) == 1


def test_example_file_is_copied_as_a_user_would(tmp_path, capsys):
    """A copy elsewhere, run from its own name: the study is named by the file's name key."""
    copy = tmp_path / "elsewhere.toml"
    shutil.copy(EXAMPLE, copy)
    assert studyfile.load(copy).NAME == "my-study"
    copy.write_text(EXAMPLE.read_text().replace('name = "my-study"\n', ""))
    assert studyfile.load(copy).NAME == "elsewhere"
