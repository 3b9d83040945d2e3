"""Benchmark the fused GRU recurrences (and, when available, the gated layers) against torch.nn.GRU.

Examples::

    python benchmarks/bench_gates.py                          # kernel level, both shapes, CPU
    python benchmarks/bench_gates.py --shapes scifar --repeats 9
    python benchmarks/bench_gates.py --level layer --gates - R UR SST
    python benchmarks/bench_gates.py --device cuda --json runs/bench.json

Every contender does what a training step of one recurrent layer does: the input
projection ``x W_ih^T + b_ih`` (one GEMM, autograd), the recurrence, and a
backward pass from ``out.sum() + h_T.sum()`` (``--loss last`` uses ``h_T`` only,
as a classifier on the last state does). Timings are the median (and min) of
``--repeats`` runs after ``--warmup`` runs; contenders are interleaved round-robin
so that each ratio compares runs taken under the same machine load. "speedup" is
median(nn.GRU) / median(contender): above 1 means faster than nn.GRU.

Levels:
  kernel  ``gates.kernels.fused_gru_recurrence`` for each mode (and backend), with
          the input projection from ``gates.kernels.input_projection`` (or
          ``F.linear`` with ``--plain-projection``).
  layer   ``gates.layers.GatedGRU(I, H, gate=g, batch_first=True)`` for each gate
          name (needs gates.layers; chrono gets ``chrono_tmax=T``; gate names from
          ``gates.mechanisms.GATES`` unless ``--gates``), nn.GRU batch_first too.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

SHAPES: dict[str, dict[str, int]] = {
    "scifar": {"B": 50, "T": 1024, "H": 181, "I": 1},
    "large": {"B": 128, "T": 1024, "H": 512, "I": 1},
    "small": {"B": 16, "T": 128, "H": 64, "I": 4},  # quick smoke run
}
DEFAULT_GATES = ["-", "C", "U", "R", "UR", "SST", "O", "OR", "OM", "UM"]


@dataclass
class Result:
    shape: str
    level: str
    name: str
    forward_s: float
    forward_min_s: float
    step_s: float
    step_min_s: float
    speedup_vs_gru: float | None = None
    ratio_vs_sigmoid: float | None = None
    note: str = ""
    samples_forward: list[float] = field(default_factory=list)
    samples_step: list[float] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loss(out: torch.Tensor, h: torch.Tensor, kind: str) -> torch.Tensor:
    h = h.reshape(-1)
    return h.sum() if kind == "last" else out.sum() + h.sum()


# --------------------------------------------------------------------- contenders
def make_nn_gru(shape, device, dtype, loss_kind, batch_first=False):
    B, T, H, I = shape["B"], shape["T"], shape["H"], shape["I"]
    gru = torch.nn.GRU(I, H, batch_first=batch_first).to(device, dtype)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), device=device, dtype=dtype)

    def fwd():
        return gru(x)

    def step():
        out, h = gru(x)
        _loss(out, h, loss_kind).backward()

    return fwd, step


def make_kernel(shape, device, dtype, loss_kind, mode, backend, plain_projection):
    from gates.kernels import fused_gru_recurrence, input_projection, mode_spec

    B, T, H, I = shape["B"], shape["T"], shape["H"], shape["I"]
    G = mode_spec(mode).gates
    g = torch.Generator().manual_seed(0)
    k = H**-0.5

    def param(*size):
        return ((torch.rand(*size, generator=g) * 2 - 1) * k).to(device, dtype).requires_grad_()

    w_ih, b_ih, w_hh, b_hh = param(G * H, I), param(G * H), param(G * H, H), param(G * H)
    x = torch.randn(T, B, I, generator=g).to(device, dtype)
    project = F.linear if plain_projection else input_projection

    def fwd():
        gi = project(x, w_ih, b_ih)
        return fused_gru_recurrence(gi, None, w_hh, b_hh, mode, backend=backend)

    def step():
        out, h = fwd()
        _loss(out, h, loss_kind).backward()

    return fwd, step


def _gate_names(requested):
    if requested:
        return list(requested)
    for mod_name, attr in (
        ("gates.layers", "available_gates"),
        ("gates.mechanisms", "available_gates"),
        ("gates.mechanisms", "GATES"),
        ("gates.mechanisms", "REGISTRY"),
    ):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        obj = getattr(mod, attr, None)
        if obj is None:
            continue
        names = obj() if callable(obj) else obj
        return list(names)
    return list(DEFAULT_GATES)


def make_layer(shape, device, dtype, loss_kind, gate, implementation=None):
    layers = importlib.import_module("gates.layers")
    B, T, H, I = shape["B"], shape["T"], shape["H"], shape["I"]
    params = inspect.signature(layers.GatedGRU).parameters
    kwargs = {"batch_first": True}
    if gate == "C":
        for name in ("chrono_tmax", "t_max"):
            if name in params:
                kwargs[name] = T
                break
    if implementation is not None:
        kwargs["implementation"] = implementation
    torch.manual_seed(0)
    layer = layers.GatedGRU(I, H, gate=gate, **kwargs).to(device, dtype)
    x = torch.randn(B, T, I, device=device, dtype=dtype)

    def fwd():
        return layer(x)

    def step():
        out, h = layer(x)
        _loss(out, h, loss_kind).backward()

    return fwd, step


# --------------------------------------------------------------------- timing
def _time(fn: Callable[[], object], device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_shape(shape_name, args, device, dtype) -> list[Result]:
    shape = SHAPES[shape_name]
    contenders: dict[str, tuple] = {}
    notes: dict[str, str] = {}
    refs: dict[str, str] = {}  # contender -> the "standard" contender it is compared with
    batch_first = args.level == "layer"
    contenders["nn.GRU"] = make_nn_gru(shape, device, dtype, args.loss, batch_first)
    if args.level == "kernel":
        from gates.kernels import available_modes, backend_for

        modes = args.modes or list(available_modes())
        backends = args.backends or [backend_for(device, dtype)]
        for be in backends:
            for mode in modes:
                name = mode if len(backends) == 1 else f"{mode}[{be}]"
                contenders[name] = make_kernel(
                    shape, device, dtype, args.loss, mode, be, args.plain_projection
                )
                notes[name] = f"backend={be}"
                refs[name] = "sigmoid" if len(backends) == 1 else f"sigmoid[{be}]"
    else:
        try:
            importlib.import_module("gates.layers")
        except ImportError as exc:
            raise SystemExit(f"--level layer needs gates.layers ({exc})") from None
        for gate in _gate_names(args.gates):
            try:
                contenders[f"gate {gate}"] = make_layer(
                    shape, device, dtype, args.loss, gate, args.implementation
                )
                refs[f"gate {gate}"] = "gate -"
            except Exception as exc:  # a gate the layer does not support yet
                print(f"# skipping gate {gate!r}: {type(exc).__name__}: {exc}", file=sys.stderr)

    fwd_t = {n: [] for n in contenders}
    step_t = {n: [] for n in contenders}
    for i in range(args.warmup + args.repeats):
        for name, (fwd, step) in contenders.items():
            with torch.enable_grad():
                tf = _time(fwd, device)
                ts = _time(step, device)
            if i >= args.warmup:
                fwd_t[name].append(tf)
                step_t[name].append(ts)
        if args.verbose:
            print(f"# {shape_name}: round {i + 1}/{args.warmup + args.repeats}", file=sys.stderr)

    results = []
    base = statistics.median(step_t["nn.GRU"])
    for name in contenders:
        med = statistics.median(step_t[name])
        ref_name = refs.get(name) if refs.get(name) in step_t else None
        results.append(
            Result(
                shape=shape_name,
                level=args.level,
                name=name,
                forward_s=statistics.median(fwd_t[name]),
                forward_min_s=min(fwd_t[name]),
                step_s=med,
                step_min_s=min(step_t[name]),
                speedup_vs_gru=base / med,
                ratio_vs_sigmoid=(
                    med / statistics.median(step_t[ref_name])
                    if ref_name
                    else None
                ),
                note=notes.get(name, ""),
                samples_forward=fwd_t[name],
                samples_step=step_t[name],
            )
        )
    return results


def markdown(results: list[Result], header: str) -> str:
    ref = "gate -" if any(r.level == "layer" for r in results) else "sigmoid"
    lines = [
        header,
        "",
        f"| shape | contender | forward s (min) | fwd+bwd s (min) | speedup vs nn.GRU | time / {ref} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        sp = f"{r.speedup_vs_gru:.2f}x" if r.speedup_vs_gru else ""
        rs = f"{r.ratio_vs_sigmoid:.2f}" if r.ratio_vs_sigmoid else ""
        lines.append(
            f"| {r.shape} | {r.name} | {r.forward_s:.3f} ({r.forward_min_s:.3f}) | "
            f"{r.step_s:.3f} ({r.step_min_s:.3f}) | {sp} | {rs} |"
        )
    return "\n".join(lines)


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--level", choices=["kernel", "layer"], default="kernel")
    p.add_argument(
        "--shapes", nargs="+", choices=sorted(SHAPES), default=["scifar", "large"],
        help="scifar: B=50 T=1024 H=181 I=1; large: B=128 T=1024 H=512 I=1; small: smoke test",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per contender (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (includes the C++ build)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--modes", nargs="+", default=None, help="kernel modes (default: all)")
    p.add_argument(
        "--backends", nargs="+", choices=["cpp", "generic"], default=None,
        help="kernel backends (default: the one backend_for(device) picks)",
    )
    p.add_argument("--gates", nargs="+", default=None, help="layer level: gate names (default: all known)")
    p.add_argument("--implementation", default=None,
                   help="layer level: GatedGRU(implementation=...) (default: the layer's own default)")
    p.add_argument("--loss", choices=["full", "last"], default="full",
                   help="full: out.sum()+h_T.sum(); last: h_T.sum() only")
    p.add_argument("--plain-projection", action="store_true",
                   help="kernel level: F.linear for the input projection instead of the pooled one")
    p.add_argument("--json", type=Path, default=None, help="also write results here (atomically)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    results: list[Result] = []
    t0 = time.perf_counter()
    for shape_name in args.shapes:
        results.extend(run_shape(shape_name, args, device, dtype))
    header = (
        f"level={args.level} device={device} dtype={args.dtype} threads={torch.get_num_threads()} "
        f"torch={torch.__version__} repeats={args.repeats} loss={args.loss} "
        f"(median of repeats, min in parentheses; load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})"
    )
    print(markdown(results, header))
    if args.json:
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "loadavg": os.getloadavg()},
            "shapes": {s: SHAPES[s] for s in args.shapes},
            "wall_s": time.perf_counter() - t0,
            "results": [asdict(r) for r in results],
        }
        write_json_atomic(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
