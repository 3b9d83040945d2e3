"""Study statistics over seeds (studies.stats) and the baseline/ablated pairs (studies.ablation_pairs)."""
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from studies import ablation_pairs, grid
from studies.bias_ablation import runs as scifar_runs
from studies.stats import diff_ci, mean_ci, welch_p


def test_diff_ci_is_scipys_welch_interval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 0.02, 5).tolist(), rng.normal(0.45, 0.05, 3).tolist()
    want = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    diff, half = diff_ci(a, b)
    assert diff == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
    assert (diff - half, diff + half) == pytest.approx((want.low, want.high), abs=1e-12)
    assert welch_p(a, b) == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue, abs=1e-12)


def test_diff_ci_degenerate_inputs():
    assert math.isnan(diff_ci([0.5], [0.4, 0.3])[1]) and diff_ci([0.5], [0.4, 0.3])[0] == pytest.approx(0.15)
    assert math.isnan(diff_ci([0.5, 0.5], [0.4, 0.4])[1])  # no variance on either side
    assert all(math.isnan(v) for v in diff_ci([], [0.4]))
    assert math.isnan(mean_ci([0.3])[1]) and mean_ci([0.3])[0] == 0.3


@pytest.mark.filterwarnings("ignore:Precision loss occurred")  # smoke hardware seeds can tie exactly
def test_pairs_of_a_study(tmp_path):
    rows = ["baseline", "ablated", "baseline-hw", "ablated-hw", "chrono"]
    configs = scifar_runs("smoke", seeds=2, rows=rows, overrides=["epochs=1"])
    sdir = tmp_path / "study"
    assert all(s["status"] == "finished" for s in grid.run_grid(configs, sdir, study="scifar-bias"))
    finals = {}
    for r in grid.collect(sdir):
        s = json.loads((r["dir"] / "summary.json").read_text())
        finals.setdefault(r["config"].row, []).append(s["final"]["test_acc"])
    found = ablation_pairs.pairs(sdir)
    assert [(p["pair"], p["ablated_row"], p["limit"]) for p in found] == [
        ("baseline", "ablated", "software"), ("baseline-hw", "ablated-hw", "Σ|W| ≤ 0.431")]
    for p in found:
        base, abl = finals[p["pair"]], finals[p["ablated_row"]]
        assert p["baseline"][:2] == pytest.approx(mean_ci(base), nan_ok=True) and p["baseline"][2] == 2
        assert p["gap"][0] == pytest.approx(np.mean(base) - np.mean(abl))
        assert p["p"] == pytest.approx(welch_p(base, abl), nan_ok=True)
    header = grid.write_results(sdir)[0].read_text()
    assert "image_size=4" in header and "seq_len" not in header  # the header states the fields images use
    out = ablation_pairs.report(sdir)
    text = out["pairs_table"].read_text()
    assert "| baseline / ablated | software |" in text and "| baseline-hw / ablated-hw |" in text
    assert r"| Σ\|W\| ≤ 0.431 |" in text  # the limit's bars escaped: the row keeps its columns
    table_lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len({ln.replace(r"\|", "").count("|") for ln in table_lines}) == 1
    assert out["ablation_gap"].exists() and out["ablation_gap"].stat().st_size > 1000
