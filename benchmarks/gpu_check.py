"""One prepared check of the Triton fused recurrences on a GPU: tests, timings against cuDNN, batched training.

Runs in at most ~8 minutes on one H200 and needs no network::

    python benchmarks/gpu_check.py --out runs/gpu_check                 # on the GPU machine
    python benchmarks/gpu_check.py --out runs/gpu_check --data-dir .device/data   # real CIFAR-10
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check      # same code path, CPU interpreter, tiny

Sections (each recorded in ``gpu_check.json`` and ``gpu_check.md`` under ``--out``):

1. ``tests``: ``pytest -m cuda`` over tests/test_triton.py, test_batched.py and test_packed.py in a subprocess
   (TF32/bf16 tolerances of the kernels, batched layers and a pack against its runs alone, on the device).
2. ``timings``: one training step of one layer — the input projection GEMM, the recurrence, backward from
   ``out.sum()`` — for every kernel mode on both cores (each gate runs its mode's kernel; the gates per
   mode are listed), against ``torch.nn.GRU``/``torch.nn.LSTM`` (cuDNN), at B 50 T 1024 H 181 and
   B 128 T 1024 H 512. Master modes use H/C units with C = 16 (H 176 at the first shape: 181 is prime).
3. ``batched``: M = 10 models in one launch against 10 sequential cuDNN runs of the same shape.
4. ``training``: a few epochs of 10 s-CIFAR rows of the bias ablation (grayscale 32×32 → 1024 steps, H 181,
   10-way head; software baseline and ablation, hardware pairs under soen-dendrite at each flux budget)
   trained by the study code with the ``batched`` launcher (all rows in one launch per step) and with the
   ``local`` one (row after row), compared in wall time and final metrics; synthetic images unless ``--data-dir``.
5. ``targets``: standard GRU ≥ 1× cuDNN, every variant ≤ 1.5× cuDNN's standard time, 10 rows in one
   launch ≥ 3× faster than 10 sequential cuDNN runs.

float32 runs with TF32 products on both sides (cuDNN's default). ``--budget-s`` bounds the wall time:
sections that would start after it are recorded as skipped. Exit status 1 when the CUDA tests fail.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
FULL = {"shapes": [(50, 1024, 181), (128, 1024, 512)], "batched": (10, 50, 1024, 181), "master_chunk": 16,
        "train": {"rows": 10, "side": 32, "H": 181, "B": 50, "images": 2000, "val": 500, "epochs": 2}}
TINY = {"shapes": [(3, 2, 16), (2, 2, 24)], "batched": (2, 3, 2, 16), "master_chunk": 4,
        "train": {"rows": 4, "side": 2, "H": 16, "B": 4, "images": 20, "val": 10, "epochs": 2}}
TARGETS = {"standard_vs_cudnn": 1.0, "variant_vs_cudnn": 1.5, "batched_speedup": 3.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes")
    p.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 folder (official formats); else random data")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per contender, median reported (dry run: 1)")
    p.add_argument("--budget-s", type=float, default=450.0, help="start no section after this many seconds")
    p.add_argument("--skip-tests", action="store_true", help="do not run the pytest section")
    return p.parse_args(argv)


class Clock:
    """Wall time since the start and the section budget."""

    def __init__(self, budget_s: float) -> None:
        self.t0, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()


# --------------------------------------------------------------------------- 1. tests
def run_cuda_tests(timeout_s: float) -> dict:
    """The tests marked ``cuda`` (kernels, batched layers, a pack against its runs alone) in a subprocess;
    counts from its summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_triton.py",
           "tests/test_batched.py", "tests/test_packed.py"]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout_s, 10))
        text, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout_s:.0f} s", -1
    summary = " ".join(text.strip().splitlines()[-1:])
    counts = {w: int(n) for n, w in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    missing = "No module named pytest" in text
    ok = missing or (rc in (0, 5) and not counts.get("failed") and not counts.get("error") and not counts.get("errors"))
    return {"command": " ".join(cmd[1:]), "returncode": rc, "ok": ok, "counts": counts,
            "skipped": "pytest is not installed" if missing else None,
            "seconds": round(time.perf_counter() - t0, 1), "tail": text[-3000:]}


# --------------------------------------------------------------------------- helpers
def attempt(row: dict, fn: Callable[[], dict]) -> dict:
    """``row`` updated with ``fn()``, or with the error it raised (one failing contender loses only its row)."""
    try:
        row.update(fn())
    except Exception as e:  # recorded in the report; the check goes on
        row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        print(f"  error: {row['error']}", flush=True)
    return row


def median_time(fn: Callable[[], None], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run (which compiles)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def modes_and_gates() -> dict[str, list[str]]:
    from gates.mechanisms import GATES

    out: dict[str, list[str]] = {}
    for name, m in GATES.items():
        out.setdefault(m.fused_mode, []).append(name)
    return out


def layer_params(core: str, gate: str, I: int, H: int, device, dtype, seed: int = 0, chunk: int = 16):
    """(w_ih, b_ih, w_hh, b_hh) of a fresh GatedGRU/GatedLSTM (its own initialisation), leaf tensors."""
    from gates.layers import build_layer

    layer = build_layer(core, I, H, gate=gate, master_chunk=chunk, seed=seed, implementation="reference")
    names = ("weight_ih_l0", "bias_ih_l0", "weight_hh_l0", "bias_hh_l0")
    return [getattr(layer, n).detach().to(device, dtype).clone().requires_grad_() for n in names], layer


def recurrence(core: str):
    from gates.kernels import triton_gru, triton_lstm

    if core == "gru":
        return lambda gi, w, b, mode: triton_gru.triton_gru_recurrence(gi, None, w, b, mode)[0]
    return lambda gi, w, b, mode: triton_lstm.triton_lstm_recurrence(gi, None, None, w, b, mode)[0]


def triton_step(core: str, mode: str, x, params) -> Callable[[], None]:
    """One forward + backward of the input projection and the fused recurrence (x (T, B, I), or M models)."""
    import torch

    run = recurrence(core)
    w_ih, b_ih, w_hh, b_hh = params

    def step() -> None:
        for p in params:
            p.grad = None
        if w_ih.dim() == 3:  # M models: gi (M, T, B, R)
            gi = torch.einsum("tbi,mri->mtbr", x, w_ih) + b_ih[:, None, None]
        else:
            gi = torch.nn.functional.linear(x, w_ih, b_ih)
        run(gi, w_hh, b_hh, mode).sum().backward()

    return step


def cudnn_step(core: str, x, H: int) -> Callable[[], None]:
    import torch

    rnn = (torch.nn.GRU if core == "gru" else torch.nn.LSTM)(x.shape[-1], H).to(x.device, x.dtype)

    def step() -> None:
        rnn.zero_grad(set_to_none=True)
        rnn(x)[0].sum().backward()

    return step


# --------------------------------------------------------------------------- 2./3. timings
def time_modes(shapes, chunk: int, repeats, device, dtype, sync, clock: Clock) -> list[dict]:
    import torch

    rows = []
    for B, T, H in shapes:
        x = torch.randn(T, B, 1, device=device, dtype=dtype)
        for core in ("gru", "lstm"):
            if clock.left() <= 0:
                rows.append({"B": B, "T": T, "H": H, "core": core, "skipped": "time budget"})
                continue
            base = attempt({}, lambda core=core, x=x, H=H: {"s": median_time(cudnn_step(core, x, H), repeats, sync)})
            for mode, gate_names in modes_and_gates().items():
                master = mode.startswith("master")
                h = H - H % chunk if master else H
                row = {"B": B, "T": T, "H": h, "core": core, "mode": mode, "gates": gate_names,
                       "master_chunk": chunk if master else None, "cudnn_standard_s": base.get("s")}
                if clock.left() <= 0:
                    rows.append(dict(row, skipped="time budget"))
                    continue

                def run(core=core, gate=gate_names[0], mode=mode, h=h, x=x, base=base):
                    params, _ = layer_params(core, gate, 1, h, device, dtype, chunk=chunk)
                    t = median_time(triton_step(core, mode, x, params), repeats, sync)
                    return {"triton_s": t, "ratio_vs_cudnn": t / base["s"] if "s" in base else None}

                rows.append(attempt(row, run))
                if "triton_s" in row and row["ratio_vs_cudnn"] is not None:
                    print(f"  {core} {mode:15s} B{B} T{T} H{h}: triton {row['triton_s'] * 1e3:8.2f} ms, "
                          f"cuDNN {base['s'] * 1e3:8.2f} ms, ratio {row['ratio_vs_cudnn']:5.2f}", flush=True)
    return rows


def time_batched(spec, repeats, device, dtype, sync, clock: Clock) -> list[dict]:
    import torch

    M, B, T, H = spec
    x = torch.randn(T, B, 1, device=device, dtype=dtype)
    rows = []
    for core in ("gru", "lstm"):
        if clock.left() <= 0:
            rows.append({"core": core, "M": M, "skipped": "time budget"})
            continue

        def run(core=core):
            stacked = [torch.stack(ps).detach().requires_grad_() for ps in
                       zip(*(layer_params(core, "-", 1, H, device, dtype, seed=k)[0] for k in range(M)), strict=True)]
            one = median_time(triton_step(core, "sigmoid", x, stacked), repeats, sync)
            steps = [cudnn_step(core, x, H) for _ in range(M)]
            seq = median_time(lambda: [s() for s in steps], repeats, sync)
            return {"triton_one_launch_s": one, "cudnn_sequential_s": seq, "speedup": seq / one}

        row = attempt({"core": core, "M": M, "B": B, "T": T, "H": H}, run)
        rows.append(row)
        if "speedup" in row:
            print(f"  {core} M={M}: one launch {row['triton_one_launch_s'] * 1e3:.1f} ms, {M} cuDNN runs "
                  f"{row['cudnn_sequential_s'] * 1e3:.1f} ms, speedup {row['speedup']:.2f}", flush=True)
    return rows


# --------------------------------------------------------------------------- 4. batched training
def train_rows(cfg: dict, data_dir: Path | None, device: str, out: Path, clock: Clock) -> dict:
    """The first ``rows`` rows of the bias ablation's medium preset (software pair, then hardware pairs at
    each flux budget) at full s-CIFAR size, trained by the study code twice: the ``batched`` launcher (one
    Triton launch per step for every row) and the ``local`` one (row after row: cuDNN for the standard
    gate). Same configurations, so the final metrics agree to float tolerance; the wall times compare."""
    from studies import grid
    from studies.bias_ablation import row_names, runs

    overrides = [f"image_size={cfg['side']}", f"hidden={cfg['H']}", f"batch_size={cfg['B']}",
                 f"train_subset={cfg['images']}", f"val_size={cfg['val']}", f"test_subset={cfg['val']}",
                 f"epochs={cfg['epochs']}", f"device={device}", "progress=false", "gate_stats=false",
                 "task=" + ("scifar" if data_dir else "fake-images")]
    if data_dir:
        overrides.append(f"data_dir={data_dir}")
    configs = runs("medium", seeds=1, rows=row_names("medium")[:cfg["rows"]], overrides=overrides)
    result = {"rows": [c.row for c in configs], "H": cfg["H"], "T": cfg["side"] ** 2, "batch": cfg["B"],
              "images": cfg["images"], "epochs": cfg["epochs"],
              "data": f"CIFAR-10 from {data_dir}" if data_dir else "synthetic images (fake-images)"}
    for launcher in ("batched", "local"):
        if clock.left() <= 0:
            result[launcher] = {"skipped": "time budget"}
            continue
        t0 = time.perf_counter()
        summaries = grid.run_grid(configs, out / f"train-{launcher}", launcher=launcher, study="scifar-bias",
                                  restart=True)
        result[launcher] = {"wall_s": time.perf_counter() - t0,
                            "status": [s["status"] for s in summaries],
                            "final_test_acc": [s.get("final", {}).get("test_acc") for s in summaries],
                            "final_train_loss": [s.get("final", {}).get("train_loss") for s in summaries]}
        print(f"  {launcher}: {result[launcher]['wall_s']:.1f} s, test acc {result[launcher]['final_test_acc']}",
              flush=True)
    if "wall_s" in result["batched"] and "wall_s" in result.get("local", {}):
        pairs = [(a, b) for a, b in zip(result["batched"]["final_train_loss"], result["local"]["final_train_loss"],
                                        strict=True) if a is not None and b is not None]
        result["speedup"] = result["local"]["wall_s"] / result["batched"]["wall_s"]
        result["max_train_loss_diff"] = max((abs(a - b) for a, b in pairs), default=None)
    return result


# --------------------------------------------------------------------------- 5. report
def evaluate_targets(timings: list[dict], batched: list[dict]) -> dict:
    done = [r for r in timings if "triton_s" in r]
    out = {}
    std = [r for r in done if r["mode"] == "sigmoid" and r["core"] == "gru"]
    if std:
        worst = max(r["ratio_vs_cudnn"] for r in std)
        out["standard_gru_vs_cudnn"] = {"worst_ratio": worst, "met": worst <= TARGETS["standard_vs_cudnn"]}
    var = [r for r in done if r["mode"] != "sigmoid"]
    if var:
        worst = max(var, key=lambda r: r["ratio_vs_cudnn"])
        out["variants_vs_cudnn"] = {"worst_ratio": worst["ratio_vs_cudnn"], "worst": f"{worst['core']} {worst['mode']}",
                                    "met": worst["ratio_vs_cudnn"] <= TARGETS["variant_vs_cudnn"]}
    sp = [r["speedup"] for r in batched if "speedup" in r]
    if sp:
        out["batched_speedup"] = {"worst": min(sp), "met": min(sp) >= TARGETS["batched_speedup"]}
    return out


def markdown(report: dict) -> str:
    env, lines = report["environment"], ["# Triton GPU check", ""]
    lines += [f"- device: {env['device']}; torch {env['torch']}, triton {env['triton']}, cuDNN {env['cudnn']}",
              f"- mode: {'dry run (CPU interpreter, tiny sizes)' if report['dry_run'] else 'GPU'}; "
              f"float32 with TF32 products; {report['elapsed_s']:.0f} s", ""]
    t = report.get("tests")
    if t:
        lines += ["## CUDA tests", "", f"`{t['command']}`: {t['skipped'] or t['counts']} (return code "
                  f"{t['returncode']}, {t['seconds']} s)", ""]
        if not t["ok"]:
            lines += ["```", t["tail"][-1500:], "```", ""]
    lines += ["## Forward + backward vs cuDNN", "",
              "| B | T | H | core | mode (gates) | triton ms | cuDNN standard ms | ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in report["timings"]:
        if "triton_s" in r:
            lines.append(f"| {r['B']} | {r['T']} | {r['H']} | {r['core']} | {r['mode']} ({' '.join(r['gates'])}) | "
                         f"{r['triton_s'] * 1e3:.2f} | {r['cudnn_standard_s'] * 1e3:.2f} | {r['ratio_vs_cudnn']:.2f} |")
        else:
            why = r.get("error") or r.get("skipped")
            lines.append(f"| {r['B']} | {r['T']} | {r['H']} | {r['core']} | {r.get('mode', '')} | {why} | | |")
    lines += ["", "## M models in one launch vs sequential cuDNN runs", "",
              "| core | M | one launch ms | sequential cuDNN ms | speedup |", "|---|---|---|---|---|"]
    for r in report["batched"]:
        if "speedup" in r:
            lines.append(f"| {r['core']} | {r['M']} | {r['triton_one_launch_s'] * 1e3:.1f} | "
                         f"{r['cudnn_sequential_s'] * 1e3:.1f} | {r['speedup']:.2f} |")
    tr = report.get("training", {})
    lines += ["", "## Batched s-CIFAR training", ""]
    if "error" in tr:
        lines.append(f"failed: {tr['error']}")
    elif "rows" in tr:
        lines += [f"{len(tr['rows'])} rows of the bias ablation (medium preset: {', '.join(tr['rows'])}), H {tr['H']}, "
                  f"T {tr['T']}, batch {tr['batch']}, {tr['images']} images ({tr['data']}), {tr['epochs']} epochs, "
                  "trained by `python -m studies run` code with each launcher.", "",
                  "| launcher | wall s | final test acc per row |", "|---|---|---|"]
        for launcher in ("batched", "local"):
            r = tr.get(launcher, {})
            accs = " ".join("-" if a is None else f"{a:.3f}" for a in r.get("final_test_acc", []))
            lines.append(f"| {launcher} | {r['wall_s']:.1f} | {accs} |" if "wall_s" in r
                         else f"| {launcher} | {r.get('skipped', '')} | |")
        if "speedup" in tr:
            lines += ["", f"batched vs local: {tr['speedup']:.2f}× faster; largest final train-loss difference "
                          f"{tr['max_train_loss_diff']:.2e}."]
    lines += ["", "## Targets", ""]
    for name, v in report["targets"].items():
        lines.append(f"- {name}: {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
    sys.path.insert(0, str(ROOT))
    try:
        import torch
        import triton

        import gates.kernels.triton_gru  # noqa: F401  (the project and its dependencies import)
    except ImportError as e:
        print(f"cannot import what the check needs: {e}", file=sys.stderr)
        return 3

    clock = Clock(args.budget_s)
    sizes = TINY if args.dry_run else FULL
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.set_float32_matmul_precision("high")  # TF32 products in the kernels, as cuDNN's default
    dtype = torch.float32
    report: dict = {"dry_run": args.dry_run, "environment": {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or 'interpreter'})",
        "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None}}
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_tests:
        print("1. CUDA tests", flush=True)
        report["tests"] = run_cuda_tests(timeout_s=min(240.0, clock.left()))
        print(f"  {report['tests']['counts']} in {report['tests']['seconds']} s", flush=True)
    print("2. timings vs cuDNN", flush=True)
    repeats = 1 if args.dry_run else args.repeats
    report["timings"] = time_modes(sizes["shapes"], sizes["master_chunk"], repeats, device, dtype, sync, clock)
    print("3. M models in one launch", flush=True)
    report["batched"] = time_batched(sizes["batched"], repeats, device, dtype, sync, clock)
    print("4. batched training", flush=True)
    report["training"] = attempt({}, lambda: train_rows(sizes["train"], args.data_dir, device, args.out, clock))
    from gates.kernels import triton_common

    report["launch_configs"] = triton_common.chosen_configs()
    report["targets"] = evaluate_targets(report["timings"], report["batched"])
    report["elapsed_s"] = clock.elapsed()
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {args.out / 'gpu_check.json'} and gpu_check.md in {clock.elapsed():.0f} s", flush=True)
    bad = [r for r in report["timings"] if "triton_s" in r and not math.isfinite(r["triton_s"])]
    return 1 if (report.get("tests") and not report["tests"]["ok"]) or bad else 0


if __name__ == "__main__":
    sys.exit(main())
