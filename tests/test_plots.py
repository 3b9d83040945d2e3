"""studies.plots: the plotted data equals the logs it is drawn from, and saved PNGs hold a drawing."""
import json
import statistics

import numpy as np
import pytest
from PIL import Image

from studies import plots
from studies.config import RunConfig
from studies.files import write_json_atomic


def assert_png_drawn(path, min_size=(300, 200)):
    """``path`` is a PNG of at least ``min_size`` pixels with a drawing on it: more than 2 % of
    the pixels differ from the background and there are lines/text in several colours."""
    with Image.open(path) as im:
        assert im.format == "PNG", im.format
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
        rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
    background = rgb[0]
    drawn = np.any(rgb != background, axis=1).mean()
    colours = len(np.unique(rgb, axis=0))
    assert drawn > 0.02, f"{path}: only {drawn:.1%} of the pixels are drawn"
    assert colours >= 8, f"{path}: only {colours} colours"


EPOCHS = {  # run → test_acc per epoch 0..3
    "a-s0": [0.1, 0.3, 0.5, 0.6],
    "a-s1": [0.1, 0.2, 0.4, 0.8],
    "a-s2": [0.1, 0.25, 0.45, 0.7],
    "b-s0": [0.1, 0.15, 0.2, 0.3],
}
GATES = {"a": ([0.05, 0.5, 0.55, 0.95], [0.6, 0.62, 0.9, 0.99]), "b": ([0.5, 0.5, 0.5, 0.51], [0.1, 0.2, 0.3, 0.4])}
SPIKES = {"a-s0": 2, "a-s1": 4, "a-s2": 9, "b-s0": 1}


@pytest.fixture
def study(tmp_path):
    write_json_atomic(tmp_path / "study.json", {"study": "custom", "preset": "x", "runs": list(EPOCHS)})
    for rid, accs in EPOCHS.items():
        row, seed = rid.rsplit("-s", 1)
        rdir = tmp_path / "runs" / rid
        cfg = RunConfig(row=row, seed=int(seed))
        write_json_atomic(rdir / "config.json", cfg.to_dict())
        with open(rdir / "epochs.jsonl", "w") as fh:
            for e, acc in enumerate(accs):
                fh.write(json.dumps({"epoch": e, "test_acc": acc, "train_loss": 2.0 - e} if e else
                                    {"epoch": e, "test_acc": acc}) + "\n")
        first, last = GATES[row]
        with open(rdir / "gates.jsonl", "w") as fh:
            fh.write(json.dumps({"epoch": 0, "decay_gate": first}) + "\n")
            fh.write(json.dumps({"epoch": 3, "decay_gate": last}) + "\n")
        write_json_atomic(rdir / "summary.json", {"run_id": rid, "status": "finished", "spikes": SPIKES[rid],
                                                  "fingerprint": cfg.fingerprint})
    return tmp_path


def test_curves_plot_the_median_over_seeds_with_a_min_max_band(study):
    fig = plots.curves_figure(study, "test_acc", hline=0.1)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"a", "b", "baseline loss"}
    a_runs = [EPOCHS[f"a-s{s}"] for s in range(3)]
    assert list(lines["a"].get_xdata()) == [0, 1, 2, 3]
    assert list(lines["a"].get_ydata()) == pytest.approx([statistics.median(c) for c in zip(*a_runs, strict=True)])
    assert list(lines["b"].get_ydata()) == pytest.approx(EPOCHS["b-s0"])
    assert list(lines["baseline loss"].get_ydata()) == [0.1, 0.1]
    (band,) = ax.collections  # only the row with several seeds has a band
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(0.1) and ys.max() == pytest.approx(0.8)
    # a filter on rows, and a smoothed curve (running mean over 2 points)
    fig = plots.curves_figure(study, "test_acc", rows=lambda r: r == "b", smooth=2)
    (line,) = fig.axes[0].get_lines()
    b = EPOCHS["b-s0"]
    assert list(line.get_ydata()) == pytest.approx([b[0]] + [(x + y) / 2 for x, y in zip(b[:-1], b[1:], strict=True)])
    assert plots.curves_figure(study, "no_such_key") is None


def test_gate_histograms_count_the_first_and_last_records(study):
    fig = plots.gate_histograms_figure(study, bins=10)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["a: decay_gate", "b: decay_gate"]
    for ax, row in zip(fig.axes, ("a", "b"), strict=True):
        heights = [p.get_height() for p in ax.patches]
        first, last = GATES[row]
        want = list(np.histogram(first, bins=10, range=(0, 1))[0]) + list(np.histogram(last, bins=10, range=(0, 1))[0])
        assert heights == want


def test_bars_are_means_over_seeds(study):
    fig = plots.bars_figure(study, "spikes")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert [p.get_height() for p in ax.patches] == pytest.approx([(2 + 4 + 9) / 3, 1])


def test_xy_lines_and_saved_pngs(study, tmp_path):
    points = {"GRU": [(30.0, 0.45, 0.03), (100.0, 0.56, 0.01)], "SST": [(30.0, 0.38, 0.05), (100.0, 0.39, 0.02)]}
    fig = plots.xy_lines_figure(points, xlabel="n", ylabel="acc", title="t")
    bars = {c.get_label(): c for c in fig.axes[0].containers}  # one errorbar container per label
    assert set(bars) == {"GRU", "SST"} and fig.axes[0].get_xscale() == "log"
    data_line = bars["SST"].lines[0]
    assert list(data_line.get_xdata()) == [30.0, 100.0] and list(data_line.get_ydata()) == [0.38, 0.39]
    path = plots.save_figure(fig, tmp_path / "plots" / "xy.png")
    assert_png_drawn(path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["xy.png"]  # no temporary file left
    assert_png_drawn(plots.curves(study, "test_acc", "acc.png"))
    assert plots.curves(study, "no_such_key", "none.png") is None and not (study / "plots" / "none.png").exists()


def test_the_png_check_rejects_a_blank_image(tmp_path):
    Image.new("RGB", (600, 400), "white").save(tmp_path / "blank.png")
    with pytest.raises(AssertionError, match="drawn"):
        assert_png_drawn(tmp_path / "blank.png")
    Image.new("RGB", (40, 30), "white").save(tmp_path / "tiny.png")
    with pytest.raises(AssertionError):
        assert_png_drawn(tmp_path / "tiny.png")
