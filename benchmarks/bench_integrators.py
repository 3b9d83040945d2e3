"""Exact (zero-order-hold) integrator vs torchdiffeq dopri5 on the same leaky-unit model.

Examples::

    python benchmarks/bench_integrators.py                         # 1000 units x 1000 steps, float64, CPU
    python benchmarks/bench_integrators.py --repeats 5 --dtype float32
    python benchmarks/bench_integrators.py --device cuda --json runs/bench_integrators.json

The model is :class:`soensim.dynamics.LeakyIntegrator` (``dh/dt = (n(t) - h)/τ``) with the
fabricated time constants of the ``soen-dendrite`` profile (τ log-spaced over
10 ns – 1 µs) at its step Δt = 0.1 ns, driven by a seeded random target held over each
step. Both methods go through :func:`soensim.simulate`: ``"exact"`` is the closed
form ``h' = z·h + (1 - z)·n``; ``"dopri5"`` integrates every step as its own
initial-value problem at ``--rtol``/``--atol``. Timings are the median (and min) of
``--repeats`` runs after one warm-up, the two methods interleaved so both see the same
machine load; "speedup" is median(dopri5) / median(exact). The script also prints the
largest difference between the two trajectories (should be at the solver tolerance).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from soensim.dynamics import LeakyIntegrator
from soensim.profiles import HardwareProfile
from soensim.solvers import simulate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=1000, help="number of leaky units N (default 1000)")
    ap.add_argument("--steps", type=int, default=1000, help="number of input steps T (default 1000)")
    ap.add_argument("--batch", type=int, default=1, help="batch size B (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (default 3)")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", default="dopri5", help="ODE method to compare against (default dopri5)")
    ap.add_argument("--rtol", type=float, default=1e-7)
    ap.add_argument("--atol", type=float, default=1e-9)
    ap.add_argument(
        "--first-step",
        type=float,
        default=None,
        help="first step of the ODE method as a fraction of dt (e.g. 1.0: try the whole held step first); "
        "default: torchdiffeq's initial-step heuristic",
    )
    ap.add_argument("--profile", default="soen-dendrite", help="hardware profile giving tau and dt")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    profile = HardwareProfile.preset(args.profile)
    tau = profile.unit_taus(args.units, seed=0)
    model = LeakyIntegrator(tau, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.steps, args.batch, args.units, generator=gen, dtype=torch.float64).to(device, dtype)
    dt = profile.dt

    def run_exact():
        return simulate(model, x, dt, "exact")

    ode_options = {} if args.first_step is None else {"first_step": args.first_step}

    def run_ode():
        return simulate(model, x, dt, args.method, rtol=args.rtol, atol=args.atol, **ode_options)

    times: dict[str, list[float]] = {"exact": [], args.method: []}
    with torch.no_grad():
        ref_exact, ref_ode = run_exact(), run_ode()  # warm-up, and the trajectories compared below
        for _ in range(args.repeats):
            for name, fn in (("exact", run_exact), (args.method, run_ode)):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "units": args.units,
        "steps": args.steps,
        "batch": args.batch,
        "dtype": args.dtype,
        "device": str(device),
        "profile": args.profile,
        "dt_s": dt,
        "tau_range_s": [float(tau.min()), float(tau.max())],
        "method": args.method,
        "rtol": args.rtol,
        "atol": args.atol,
        "first_step": args.first_step,
        "exact_median_s": med["exact"],
        "exact_min_s": min(times["exact"]),
        "ode_median_s": med[args.method],
        "ode_min_s": min(times[args.method]),
        "speedup": med[args.method] / med["exact"],
        "max_abs_diff": float((ref_exact - ref_ode).abs().max()),
        "max_abs_state": float(ref_exact.abs().max()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
    print(
        f"leaky unit, {args.units} units x {args.steps} steps x batch {args.batch}, {args.dtype} on {device} "
        f"({torch.get_num_threads()} threads), tau {result['tau_range_s'][0]:.3g}-{result['tau_range_s'][1]:.3g} s, "
        f"dt {dt:.3g} s"
    )
    print(f"  exact   : median {med['exact'] * 1e3:9.2f} ms   min {result['exact_min_s'] * 1e3:9.2f} ms")
    print(
        f"  {args.method:<8}: median {med[args.method] * 1e3:9.2f} ms   min {result['ode_min_s'] * 1e3:9.2f} ms"
        f"   (rtol {args.rtol:g}, atol {args.atol:g}, first_step "
        f"{'heuristic' if args.first_step is None else f'{args.first_step:g}*dt'})"
    )
    print(f"  speedup (median {args.method} / median exact): {result['speedup']:.1f}x  (target >= 100x)")
    print(f"  max |exact - {args.method}| = {result['max_abs_diff']:.2e}  (max |h| = {result['max_abs_state']:.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
