"""Benchmark the fused GRU and LSTM recurrences (and the gated layers) against torch.nn.GRU / nn.LSTM.

Examples::

    python benchmarks/bench_gates.py --level layer --threads 1 2   # every gate, both cores, both shapes
    python benchmarks/bench_gates.py --level layer --cores lstm --shapes small --repeats 2  # quick check
    python benchmarks/bench_gates.py --level layer --gates - R UR SST --markdown runs/bench.md
    python benchmarks/bench_gates.py --shapes scifar176 --modes sigmoid master_cumax master_sigmoid
    python benchmarks/bench_gates.py --device cuda --json runs/bench.json

Every contender does what a training step of one recurrent layer does: the input
projection ``x W_ih^T + b_ih`` (one GEMM, autograd), the recurrence, and a backward
pass from ``out.sum() + h_T.sum()`` (``--loss last`` uses ``h_T`` only, as a
classifier on the last state does). Timings are the median (and min) of ``--repeats``
runs after ``--warmup`` runs; the contenders of one core and shape are interleaved
round-robin so that each ratio compares runs taken under the same machine load (the
load average at the start of each case is recorded with it). A contender that fails
(a mode the compiled kernels lack, say) is reported and dropped.
"speedup" is median(torch module) / median(contender): above 1 means faster than
nn.GRU / nn.LSTM; "÷ standard" is median(contender) / median(the core's standard:
mode ``sigmoid`` or gate ``-``).

Levels:
  kernel  ``gates.kernels.fused_gru_recurrence`` / ``fused_lstm_recurrence`` for each
          mode (and backend), with the input projection from
          ``gates.kernels.input_projection`` (or ``F.linear`` with
          ``--plain-projection``). Master modes need ``--chunk`` (C) to divide H: at
          H = 181 (prime) they are skipped; shape ``scifar176`` times them.
  layer   ``gates.layers.GatedGRU`` / ``GatedLSTM(I, H, gate=g, batch_first=True)`` for
          each gate name (chrono gets ``chrono_tmax=T``; default gates :data:`GATES`), the
          torch module batch_first too. A master gate needs C (``--chunk``) to divide H;
          where it does not (H = 181 is prime), the master gates run at the largest
          multiple of C below H, next to a standard gate at that H ("gate - (H 176)"),
          and their "÷ standard" is taken against that one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from studies.files import write_text_atomic

SHAPES: dict[str, dict[str, int]] = {
    "scifar": {"B": 50, "T": 1024, "H": 181, "I": 1},
    "scifar176": {"B": 50, "T": 1024, "H": 176, "I": 1},  # H divisible by 16: master modes
    "large": {"B": 128, "T": 1024, "H": 512, "I": 1},
    "small": {"B": 16, "T": 128, "H": 64, "I": 4},  # quick smoke run
}
TORCH_MODULES = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
STANDARD = {"kernel": "sigmoid", "layer": "gate -"}
#: Layer level default: the standard gate, every variant of the gate-ablation study, and SSTN.
GATES = ("-", "C", "U", "R", "UR", "SST", "SSTN", "O", "OR", "OM", "UM")
MASTER_GATES = ("OM", "UM")


@dataclass
class Result:
    threads: int
    shape: str
    core: str
    level: str
    name: str
    forward_s: float
    forward_min_s: float
    step_s: float
    step_min_s: float
    speedup_vs_torch: float | None = None
    ratio_vs_standard: float | None = None
    note: str = ""
    loadavg: tuple[float, float, float] | None = None
    samples_forward: list[float] = field(default_factory=list)
    samples_step: list[float] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loss(out: torch.Tensor, h: torch.Tensor, kind: str) -> torch.Tensor:
    h = h.reshape(-1)
    return h.sum() if kind == "last" else out.sum() + h.sum()


# --------------------------------------------------------------------- contenders
def make_torch(core, shape, device, dtype, loss_kind, batch_first=False):
    B, T, H, I = shape["B"], shape["T"], shape["H"], shape["I"]
    module = TORCH_MODULES[core](I, H, batch_first=batch_first).to(device, dtype)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), device=device, dtype=dtype)

    def fwd():
        return module(x)

    def step():
        out, state = module(x)
        _loss(out, state[0] if core == "lstm" else state, loss_kind).backward()

    return fwd, step


def make_kernel(core, shape, device, dtype, loss_kind, mode, backend, plain_projection, chunk):
    from gates.kernels import fused_gru_recurrence, fused_lstm_recurrence, input_projection, mode_spec

    B, T, H, I = shape["B"], shape["T"], shape["H"], shape["I"]
    R = sum(mode_spec(mode).rows(core, H, chunk).values())  # raises when C does not divide H
    g = torch.Generator().manual_seed(0)
    k = H**-0.5

    def param(*size):
        return ((torch.rand(*size, generator=g) * 2 - 1) * k).to(device, dtype).requires_grad_()

    w_ih, b_ih, w_hh, b_hh = param(R, I), param(R), param(R, H), param(R)
    x = torch.randn(T, B, I, generator=g).to(device, dtype)
    project = F.linear if plain_projection else input_projection

    def fwd():
        gi = project(x, w_ih, b_ih)
        if core == "gru":
            return fused_gru_recurrence(gi, None, w_hh, b_hh, mode, backend=backend)
        return fused_lstm_recurrence(gi, None, None, w_hh, b_hh, mode, backend=backend)

    def step():
        res = fwd()
        _loss(res[0], res[1], loss_kind).backward()

    return fwd, step


def make_layer(core, shape, device, dtype, loss_kind, gate, implementation=None, chunk=16):
    from gates import layers

    B, T, H, I = shape["B"], shape["T"], shape["H"], shape["I"]
    kwargs = {"batch_first": True, "master_chunk": chunk}
    if gate == "C":
        kwargs["chrono_tmax"] = T
    if implementation is not None:
        kwargs["implementation"] = implementation
    torch.manual_seed(0)
    cls = layers.GatedGRU if core == "gru" else layers.GatedLSTM
    layer = cls(I, H, gate=gate, **kwargs).to(device, dtype)
    x = torch.randn(B, T, I, device=device, dtype=dtype)
    path = layer.resolved_implementation()

    def fwd():
        return layer(x)

    def step():
        out, state = layer(x)
        _loss(out, state[0] if core == "lstm" else state, loss_kind).backward()

    return (fwd, step), path


# --------------------------------------------------------------------- timing
def _time(fn: Callable[[], object], device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _contenders(core, shape, args, device, dtype):
    """``{name: (fwd, step)}``, notes per name, and the torch module's name."""
    torch_name = f"nn.{core.upper()}"
    contenders = {torch_name: make_torch(core, shape, device, dtype, args.loss, args.level == "layer")}
    notes: dict[str, str] = {}
    if args.level == "kernel":
        from gates.kernels import available_modes, backend_for

        backends = args.backends or [backend_for(device, dtype)]
        for be in backends:
            for mode in args.modes or available_modes(core):
                name = mode if len(backends) == 1 else f"{mode}[{be}]"
                try:
                    contenders[name] = make_kernel(core, shape, device, dtype, args.loss, mode, be,
                                                   args.plain_projection, args.chunk)
                except ValueError as exc:  # master modes when C does not divide H
                    print(f"# {core} {mode}: skipped ({exc})", file=sys.stderr)
                    continue
                notes[name] = f"backend={be}"
    else:
        gates = list(args.gates or GATES)
        masters = [g for g in gates if g in MASTER_GATES]
        plan = [(g, shape) for g in gates if g not in MASTER_GATES]
        if masters:  # master gates need C | H: at the largest such H, next to the standard gate there
            at = {**shape, "H": shape["H"] - shape["H"] % args.chunk}
            plan += ([] if at["H"] == shape["H"] else [("-", at)]) + [(g, at) for g in masters]
        for gate, at in plan:
            name = f"gate {gate}" + (f" (H {at['H']})" if at["H"] != shape["H"] else "")
            try:
                contenders[name], notes[name] = make_layer(
                    core, at, device, dtype, args.loss, gate, args.implementation, args.chunk)
            except Exception as exc:  # a gate this layer or shape does not support
                print(f"# skipping {core} gate {gate!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return contenders, notes, torch_name


def _standard_of(name: str, level: str) -> str:
    """The contender ``name`` is compared with: the standard at the same backend / hidden size."""
    standard = STANDARD[level]
    if "[" in name:  # several backends
        return f"{standard}[{name.split('[')[1]}"
    if " (H " in name:
        return f"{standard} ({name.split(' (')[1]}"
    return standard


def run_case(threads, shape_name, core, args, device, dtype) -> list[Result]:
    """Time every contender of one core at one shape, round-robin."""
    shape = SHAPES[shape_name]
    load = os.getloadavg()
    contenders, notes, torch_name = _contenders(core, shape, args, device, dtype)
    fwd_t = {n: [] for n in contenders}
    step_t = {n: [] for n in contenders}
    for i in range(args.warmup + args.repeats):  # round 0 is untimed and finds failing contenders
        for name, (fwd, step) in list(contenders.items()):
            try:
                with torch.enable_grad():
                    tf = _time(fwd, device) if args.forward else float("nan")
                    ts = _time(step, device)
            except RuntimeError as exc:  # e.g. a kernel mode the compiled extension lacks
                if i or name == torch_name:
                    raise
                print(f"# {core} {name}: dropped ({exc})", file=sys.stderr)
                del contenders[name], fwd_t[name], step_t[name]
                continue
            if i >= args.warmup:
                fwd_t[name].append(tf)
                step_t[name].append(ts)
        if args.verbose:
            print(f"# {threads} threads, {shape_name}, {core}: round {i + 1}/{args.warmup + args.repeats}",
                  file=sys.stderr)
    base = statistics.median(step_t[torch_name])
    results = []
    for name in contenders:
        med = statistics.median(step_t[name])
        ref = _standard_of(name, args.level) if name != torch_name else None
        results.append(Result(
            threads=threads, shape=shape_name, core=core, level=args.level, name=name,
            forward_s=statistics.median(fwd_t[name]), forward_min_s=min(fwd_t[name]),
            step_s=med, step_min_s=min(step_t[name]), speedup_vs_torch=base / med,
            ratio_vs_standard=med / statistics.median(step_t[ref]) if ref in step_t else None,
            note=notes.get(name, ""), loadavg=load, samples_forward=fwd_t[name], samples_step=step_t[name]))
    return results


def markdown(results: list[Result], header: str) -> str:
    ref = STANDARD[results[0].level] if results else "standard"
    lines = [
        header,
        "",
        f"| threads | shape | core | contender | forward s (min) | fwd+bwd s (min) | speed vs torch | "
        f"time ÷ {ref} | path | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        sp = f"{r.speedup_vs_torch:.2f}×" if r.speedup_vs_torch else ""
        rs = f"{r.ratio_vs_standard:.2f}" if r.ratio_vs_standard else ""
        fw = f"{r.forward_s:.3f} ({r.forward_min_s:.3f})" if r.forward_s == r.forward_s else ""
        load = f"{r.loadavg[0]:.2f}" if r.loadavg else ""
        lines.append(
            f"| {r.threads} | {r.shape} | {r.core} | {r.name} | {fw} | "
            f"{r.step_s:.3f} ({r.step_min_s:.3f}) | {sp} | {rs} | {r.note} | {load} |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--level", choices=["kernel", "layer"], default="kernel")
    p.add_argument("--cores", nargs="+", choices=["gru", "lstm"], default=["gru", "lstm"])
    p.add_argument(
        "--shapes", nargs="+", choices=sorted(SHAPES), default=["scifar", "large"],
        help="scifar: B=50 T=1024 H=181 I=1; scifar176: H=176; large: B=128 T=1024 H=512 I=1; small: smoke test",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per contender (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first, at least 1 (includes the C++ build)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="torch.set_num_threads, one run per value (default: torch's)")
    p.add_argument("--modes", nargs="+", default=None, help="kernel modes (default: all)")
    p.add_argument("--chunk", type=int, default=16, help="master downsize factor C (master modes)")
    p.add_argument(
        "--backends", nargs="+", choices=["cpp", "generic"], default=None,
        help="kernel backends (default: the one backend_for(device) picks)",
    )
    p.add_argument("--gates", nargs="+", default=None,
                   help=f"layer level: gate names (default: {' '.join(GATES)}; any of gates.mechanisms.GATES)")
    p.add_argument("--implementation", default=None,
                   help="layer level: implementation=... of the layers (default: the layer's own default)")
    p.add_argument("--loss", choices=["full", "last"], default="full",
                   help="full: out.sum()+h_T.sum(); last: h_T.sum() only")
    p.add_argument("--plain-projection", action="store_true",
                   help="kernel level: F.linear for the input projection instead of the pooled one")
    p.add_argument("--no-forward", dest="forward", action="store_false",
                   help="time forward + backward only (halves the run time)")
    p.add_argument("--json", type=Path, default=None, help="also write results here (atomically)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here (atomically)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1:
        p.error("--repeats and --warmup must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    dtype = getattr(torch, args.dtype)
    results: list[Result] = []
    t0 = time.perf_counter()
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for shape_name in args.shapes:
            for core in args.cores:
                results.extend(run_case(threads, shape_name, core, args, device, dtype))
    header = (
        f"level={args.level} device={device} dtype={args.dtype} torch={torch.__version__} "
        f"repeats={args.repeats} loss={args.loss} (median of repeats, min in parentheses; load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})"
    )
    table = markdown(results, header)
    print(table)
    if args.markdown:
        write_text_atomic(args.markdown, table + "\n")
    if args.json:
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "torch": torch.__version__,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "shapes": {s: SHAPES[s] for s in args.shapes},
            "wall_s": time.perf_counter() - t0,
            "results": [asdict(r) for r in results],
        }
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
