"""benchmarks/gpu_check.py --dry-run: the GPU check's whole code path on the CPU (Triton interpreter, tiny sizes)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_writes_every_section(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["tests"]["ok"]
    assert report["tests"]["counts"].get("skipped", 0) > 0  # the cuda tests were collected (and skipped)
    timed = [t for t in report["timings"] if "triton_s" in t]
    from gates.mechanisms import GATES

    modes = {m.fused_mode for m in GATES.values()}
    assert {(t["core"], t["mode"], t["B"]) for t in timed} == {(c, m, b) for c in ("gru", "lstm") for m in modes
                                                              for b in (3, 2)}
    gates = sorted(g for t in timed if t["core"] == "gru" and t["B"] == 3 for g in t["gates"])
    assert gates == sorted(GATES)  # every gate is covered by its mode's kernel
    assert all(math.isfinite(t["triton_s"]) and t["triton_s"] > 0 and t["cudnn_standard_s"] > 0 for t in timed)
    assert [b["core"] for b in report["batched"]] == ["gru", "lstm"]
    assert all(b["speedup"] > 0 for b in report["batched"])
    training = report["training"]
    assert len(training["rows"]) == 4
    for launcher in ("batched", "local"):
        assert training[launcher]["status"] == ["finished"] * 4
        assert all(math.isfinite(v) for v in training[launcher]["final_train_loss"])
    assert training["max_train_loss_diff"] == 0.0  # the batched launcher leaves each run as it trains alone (CPU)
    assert set(report["targets"]) == {"standard_gru_vs_cudnn", "variants_vs_cudnn", "batched_speedup"}
    md = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## CUDA tests", "## Forward + backward vs cuDNN", "## M models in one launch",
                    "## Batched s-CIFAR training", "## Targets"):
        assert heading in md
