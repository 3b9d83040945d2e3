"""Trainer: one run of one configuration, resumable, seeded, with divergence handling.

A run is described by a frozen :class:`RunConfig` (JSON round trip, overrides
validated against its fields). :class:`Trainer` trains a model on a
:class:`TaskData` and writes everything into one run directory:

    RUN_DIR/
      config.json     the RunConfig (written first, atomically)
      checkpoint.pt   last good state: end of the last finished epoch
                      (epoch 0 = the initial state); torch.save, atomic,
                      loadable with ``torch.load(..., weights_only=True)``
      steps.jsonl     sampled per-step records: step, epoch, loss, grad_norm, lr
      epochs.jsonl    one record per epoch (epoch 0 = the initial model, no train_*
                      keys): train/val/test loss and metric, lr, W_hz norm and other
                      model diagnostics, spike count, cumulative elapsed seconds
      gates.jsonl     gate statistics (per-unit mean activations) at epoch ends,
                      epoch 0 = before training
      events.jsonl    spike / nonfinite / rollback / resume / stop events
      summary.json    written last, atomically; its presence marks the run done

Resuming (``Trainer.fit(resume=True)``, the default) reloads ``checkpoint.pt``,
drops the log records written after it, and continues; the shuffling generator,
the global torch RNG, the optimizer, the schedule and the spike detector are all
in the checkpoint, so a resumed run ends with the same numbers as an
uninterrupted one (on CPU; cuDNN kernels are not bitwise deterministic).

Non-finite loss or gradient norm is never skipped silently: it is recorded, then
``nonfinite_policy="stop"`` ends the run with status ``"diverged"`` and
``"rollback"`` reloads the last good checkpoint, multiplies the learning rate by
``rollback_lr_factor`` and continues (at most ``max_rollbacks`` times).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
import typing
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
STEPS_FILE = "steps.jsonl"
EPOCHS_FILE = "epochs.jsonl"
GATES_FILE = "gates.jsonl"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type/range."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, flat so that ``--set key=value`` can reach every field.

    Identity: ``study``, ``row``, ``seed``.
    Task/data: ``task`` (see the study modules), ``data_dir`` (None: ``$SOENSIM_DATA_DIR``),
    ``image_size`` (side after resizing; sequence length = side² for image tasks),
    ``channels`` (1 grayscale, 3 RGB), ``permute`` (bit-reversal pixel order),
    ``train_subset``/``test_subset`` (stratified subsets, None = all), ``val_size``
    (seeded stratified validation split carved from train), ``seq_len`` (copy/adding N),
    ``steps_per_epoch``/``eval_size`` (streamed synthetic tasks), ``train_size`` (low-data
    studies: training examples per run).
    Model: ``cell`` (gru/lstm), ``gate`` (mechanism name, see ``gates``), ``hidden``,
    ``head`` (``linear`` on the last hidden state, papers/001; ``mlp``: per-step ReLU
    ``head_hidden`` then linear, papers/002), ``bias_mode`` (``learnable``: the mechanism's
    own init, trainable; ``frozen-zero``: update/reset biases fixed at 0, candidate bias
    trainable — the papers/001 ablation), ``update_bias_init`` (the ``-`` gate's b_z = b_r
    init), ``orthogonal_hh``, ``chrono_tmax`` (None: the sequence length).
    Hardware: ``profile`` (a :class:`soensim.HardwareProfile` preset name, None = software),
    ``coupling_max`` (|W| bound, None = the profile's), ``hw_dt`` (seconds per sequence step,
    None = ``profile.dt * 1024 / sequence length``: one image always lasts 1024 profile steps),
    ``hw_bias`` (what the update-gate bias is frozen at: ``profile`` τ values, ``zero``, or
    ``init`` = the mechanism's own initial draw, e.g. chrono).
    Optimization: ``optimizer`` (adamw/adam), ``lr``, ``lr_min`` (cosine floor),
    ``weight_decay`` (AdamW only), ``schedule`` (cosine: per step; cosine-epoch: per epoch;
    constant), ``epochs``, ``batch_size``, ``clip_norm`` (None: no clipping), ``max_steps``
    (stop after this many optimizer steps in all).
    Safety: ``nonfinite_policy`` (stop/rollback), ``rollback_lr_factor``, ``max_rollbacks``,
    ``spike_factor``/``spike_window``/``spike_min_history`` (a step is a loss spike when its
    loss exceeds ``spike_factor`` × the median of the previous ``spike_window`` losses, once
    ``spike_min_history`` are known).
    Runtime: ``log_every`` (per-step record sampling), ``gate_stats``/``gate_stats_size``,
    ``eval_batch_size``, ``progress`` (tqdm), ``device`` (auto/cpu/cuda), ``threads``
    (torch CPU threads during the run, None = leave as is; small recurrent models run
    fastest on one thread, and a 2-thread OpenMP team stalls badly on a busy machine).
    """

    study: str = "custom"
    row: str = "run"
    seed: int = 0
    # task / data
    task: str = "scifar"
    data_dir: str | None = None
    image_size: int = 32
    channels: int = 1
    permute: bool = False
    train_subset: int | None = None
    val_size: int = 5000
    test_subset: int | None = None
    seq_len: int = 100
    steps_per_epoch: int = 100
    eval_size: int = 1000
    train_size: int | None = None
    # model
    cell: str = "gru"
    gate: str = "-"
    hidden: int = 181
    head: str = "linear"
    head_hidden: int = 256
    bias_mode: str = "learnable"
    update_bias_init: float = 1.0
    orthogonal_hh: bool = True
    chrono_tmax: float | None = None
    # hardware
    profile: str | None = None
    coupling_max: float | None = None
    hw_dt: float | None = None
    hw_bias: str = "profile"
    # optimization
    optimizer: str = "adamw"
    lr: float = 5e-4
    lr_min: float = 1e-5
    weight_decay: float = 0.01
    schedule: str = "cosine"
    epochs: int = 40
    batch_size: int = 50
    clip_norm: float | None = 1.0
    max_steps: int | None = None
    # safety
    nonfinite_policy: str = "rollback"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    spike_factor: float = 3.0
    spike_window: int = 100
    spike_min_history: int = 20
    # runtime
    log_every: int = 10
    gate_stats: bool = True
    gate_stats_size: int = 256
    eval_batch_size: int = 500
    progress: bool = True
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), _FIELD_TYPES[f.name]))
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("nonfinite_policy", self.nonfinite_policy, ("stop", "rollback"))
        _choice("bias_mode", self.bias_mode, ("learnable", "frozen-zero"))
        _choice("hw_bias", self.hw_bias, ("profile", "zero", "init"))
        _choice("head", self.head, ("linear", "mlp"))
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        for name in ("epochs", "batch_size", "hidden", "log_every", "eval_batch_size", "spike_window",
                     "image_size", "channels", "seq_len", "steps_per_epoch", "eval_size", "head_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1; got {getattr(self, name)}")
        for name in ("lr", "spike_factor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0; got {getattr(self, name)}")
        if not 0 <= self.lr_min <= self.lr:
            raise ConfigError(f"lr_min must be in [0, lr={self.lr}]; got {self.lr_min}")
        if not 0 < self.rollback_lr_factor <= 1:
            raise ConfigError(f"rollback_lr_factor must be in (0, 1]; got {self.rollback_lr_factor}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0 or None; got {self.clip_norm}")
        if self.val_size < 0 or self.max_rollbacks < 0 or self.spike_min_history < 0:
            raise ConfigError("val_size, max_rollbacks and spike_min_history must be ≥ 0")

    # -------------------------------------------------------------- round trip
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        unknown = sorted(set(data) - set(_FIELD_TYPES))
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys: {sorted(_FIELD_TYPES)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "RunConfig":
        """A validated copy; unknown keys raise :class:`ConfigError` listing the known ones."""
        unknown = sorted(set(changes) - set(_FIELD_TYPES))
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys: {sorted(_FIELD_TYPES)}")
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: Mapping[str, str] | Sequence[str]) -> "RunConfig":
        """Apply ``key=value`` strings (or a key→string mapping) as typed by the field.

        Values parse as JSON where possible (``null``, ``true``, ``3``, ``1e-3``), otherwise as
        a plain string; ``none``/``None`` also mean None for optional fields.
        """
        return self.replace(**parse_overrides(overrides))

    @property
    def run_id(self) -> str:
        return f"{self.row}-s{self.seed}"


def parse_overrides(overrides: Mapping[str, str] | Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "hidden=64"]`` → ``{"lr": 0.001, "hidden": 64}``, keys validated."""
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            if "=" not in text:
                raise ConfigError(f"override {text!r} is not key=value")
            k, v = text.split("=", 1)
            items.append((k.strip(), v.strip()))
    unknown = sorted({k for k, _ in items} - set(_FIELD_TYPES))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known keys: {sorted(_FIELD_TYPES)}")
    out: dict[str, Any] = {}
    for k, v in items:
        out[k] = _parse_value(k, v) if isinstance(v, str) else v
    return out


def _parse_value(key: str, text: str) -> Any:
    if text in ("none", "None", "null"):
        return None
    tp = _FIELD_TYPES[key]
    base = _base_type(tp)
    if base is str:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if base is bool and text.lower() in ("true", "false", "yes", "no", "on", "off"):
            return text.lower() in ("true", "yes", "on")
        raise ConfigError(f"{key}: cannot parse {text!r} as {base.__name__}") from None


def _base_type(tp: Any) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _coerce(name: str, value: Any, tp: Any) -> Any:
    optional = type(None) in typing.get_args(tp)
    base = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} may not be None")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true/false; got {value!r}")
    if base is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{name} must be an integer; got {value!r}")
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"{name} must be a number; got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string; got {value!r}")
        return value
    return value


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}; got {value!r}")


# --------------------------------------------------------------------------- data
class ArraySplit:
    """A fixed set of examples held as tensors; batches are drawn without replacement.

    ``x``: (N, T, C) inputs (any dtype; ``transform`` is applied per batch, e.g. uint8 →
    float), ``y``: (N,) or (N, K) targets.
    """

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor] | None = None):
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
            x = self.x[idx]
            yield (self.transform(x) if self.transform else x), self.y[idx]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """First ``n`` inputs (transformed), for gate statistics."""
        x = self.x[:n]
        return self.transform(x) if self.transform else x


class StreamSplit:
    """Fresh examples every batch (copy/adding tasks): ``sampler(batch_size, generator) -> (x, y)``."""

    def __init__(self, sampler: Callable[[int, torch.Generator], tuple[Tensor, Tensor]], batches_per_epoch: int):
        self.sampler, self.batches_per_epoch = sampler, batches_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def num_batches(self, batch_size: int) -> int:
        return self.batches_per_epoch

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        for _ in range(self.batches_per_epoch):
            yield self.sampler(batch_size, gen)


@dataclass
class TaskData:
    """Train/validation/test splits plus what the model's output means.

    ``objective``: ``"classify"`` (cross-entropy; outputs (B, C) or (B, K, C) against
    targets (B,) or (B, K)) or ``"regress"`` (mean squared error).
    ``info``: free-form facts recorded in the summary (sizes, sequence length, data copy).
    """

    train: ArraySplit | StreamSplit
    val: ArraySplit | None
    test: ArraySplit | None
    objective: str = "classify"
    num_outputs: int = 10
    input_size: int = 1
    seq_len: int = 1
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class _Objective:
    def __init__(self, loss: Callable[[Tensor, Tensor], Tensor], metric: str,
                 metric_sum: Callable[[Tensor, Tensor], tuple[float, int]], higher_is_better: bool):
        self.loss, self.metric, self.metric_sum, self.higher_is_better = loss, metric, metric_sum, higher_is_better


def _ce(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _acc_sum(out: Tensor, y: Tensor) -> tuple[float, int]:
    pred = out.argmax(-1)
    return float((pred == y).sum()), y.numel()


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(out.reshape(y.shape), y)


def _sq_sum(out: Tensor, y: Tensor) -> tuple[float, int]:
    return float(((out.reshape(y.shape) - y) ** 2).sum()), y.numel()


#: Objective registry: name → loss, the reported metric and whether higher is better.
OBJECTIVES: dict[str, _Objective] = {
    "classify": _Objective(_ce, "acc", _acc_sum, True),
    "regress": _Objective(_mse, "mse", _sq_sum, False),
}


# --------------------------------------------------------------------------- schedule
class CosineToFloor:
    """``lr(t) = floor + (base - floor)·(1 + cos(π t/T))/2``, times a rollback scale.

    ``t`` counts optimizer steps (``per="step"``) or finished epochs (``per="epoch"``).
    State (``t``, ``scale``) round-trips through ``state_dict`` as plain numbers.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base: float, floor: float, total: int, per: str = "step",
                 constant: bool = False):
        self.optimizer, self.base, self.floor = optimizer, base, floor
        self.total, self.per, self.constant = max(1, total), per, constant
        self.t, self.scale = 0, 1.0
        self._apply()

    def lr(self) -> float:
        if self.constant:
            return self.base * self.scale
        frac = min(self.t, self.total) / self.total
        return (self.floor + (self.base - self.floor) * 0.5 * (1 + math.cos(math.pi * frac))) * self.scale

    def _apply(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr()

    def step(self) -> None:
        if self.per == "step":
            self.t += 1
            self._apply()

    def epoch_end(self) -> None:
        if self.per == "epoch":
            self.t += 1
            self._apply()

    def set_scale(self, scale: float) -> None:
        self.scale = scale
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "scale": self.scale}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.t, self.scale = int(state["t"]), float(state["scale"])
        self._apply()


SCHEDULES = ("cosine", "cosine-epoch", "constant")
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr),
}


# --------------------------------------------------------------------------- spikes
class SpikeDetector:
    """Loss spike ("BPTT cliff") detector: ``loss > factor × median(previous window losses)``.

    Every finite loss enters the history (spikes too, so a lasting jump stops counting
    after about half a window). Non-finite losses are the trainer's business, not spikes.
    """

    def __init__(self, factor: float = 3.0, window: int = 100, min_history: int = 20):
        self.factor, self.window, self.min_history = factor, window, max(1, min_history)
        self.history: deque[float] = deque(maxlen=window)
        self.count = 0
        self.last_median = math.nan

    def update(self, loss: float) -> bool:
        """Feed one loss; True when it is a spike (``last_median`` holds the reference)."""
        if not math.isfinite(loss):
            return False
        spike = False
        if len(self.history) >= self.min_history:
            self.last_median = statistics.median(self.history)
            spike = loss > self.factor * self.last_median
        self.history.append(loss)
        self.count += int(spike)
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"history": torch.tensor(list(self.history), dtype=torch.float64), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = deque((float(v) for v in state["history"]), maxlen=self.window)
        self.count = int(state["count"])


# --------------------------------------------------------------------------- io helpers
def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and ``os.replace``."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain types only).

    Kept on the CPU by default: RNG states must be CPU tensors, and ``load_state_dict`` of
    the model and optimizer moves their tensors to the parameters' device."""
    return torch.load(path, map_location=map_location, weights_only=True)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line from a killed process
                continue
    return out


def _rewrite_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    if not path.exists():
        return
    lines = [json.dumps(r, default=_json_default) for r in read_jsonl(path) if keep(r)]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def _json_default(o: Any) -> Any:
    if isinstance(o, Tensor):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- trainer
class Diverged(RuntimeError):
    """Raised internally when a non-finite loss/gradient is met and must be handled."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available")
    return torch.device(name)


StepCallback = Callable[["Trainer", dict[str, Any]], None]


class Trainer:
    """Train ``model`` on ``data`` under ``cfg``, logging into ``run_dir``.

    ``callbacks`` are called after every optimizer step with the step record
    (``step``, ``epoch``, ``loss``, ``grad_norm``, ``lr``); an exception raised there
    propagates (tests use this to simulate a kill). The model may define
    ``diagnostics() -> dict[str, float]`` (e.g. the W_hz norm) and
    ``gate_statistics(x) -> dict[str, list[float]]``; both are logged at epoch ends.
    """

    def __init__(self, cfg: RunConfig, model: nn.Module, data: TaskData, run_dir: str | os.PathLike,
                 callbacks: Sequence[StepCallback] = ()):
        if data.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {data.objective!r}; known: {sorted(OBJECTIVES)}")
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.objective = OBJECTIVES[data.objective]
        self.callbacks = list(callbacks)
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZERS[cfg.optimizer](params, cfg)
        steps_per_epoch = data.train.num_batches(cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        per_epoch = cfg.schedule == "cosine-epoch"
        self.scheduler = CosineToFloor(self.optimizer, cfg.lr, cfg.lr_min, cfg.epochs if per_epoch else total,
                                       per="epoch" if per_epoch else "step", constant=cfg.schedule == "constant")
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        self.spikes = SpikeDetector(cfg.spike_factor, cfg.spike_window, cfg.spike_min_history)
        self.epoch = 0
        self.step = 0
        self.rollbacks = 0
        self.nonfinite = 0
        self.elapsed = 0.0
        self.best: dict[str, Any] = {}
        self.status = "running"

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": self.shuffle_gen.get_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "spikes": self.spikes.state_dict(),
            "rng": rng,
            "epoch": self.epoch,
            "step": self.step,
            "rollbacks": self.rollbacks,
            "nonfinite": self.nonfinite,
            "elapsed": self.elapsed,
            "best": dict(self.best),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.spikes.load_state_dict(state["spikes"])
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle_gen.set_state(state["rng"]["shuffle"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.rollbacks, self.nonfinite = int(state["rollbacks"]), int(state["nonfinite"])
        self.elapsed = float(state["elapsed"])
        self.best = dict(state["best"])

    def save_checkpoint(self) -> None:
        torch_save_atomic(self.state_dict(), self.run_dir / CHECKPOINT_FILE)

    # ------------------------------------------------------------------ logging
    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        with open(self.run_dir / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")

    def event(self, kind: str, **fields: Any) -> None:
        self._append(EVENTS_FILE, {"event": kind, "step": self.step, "epoch": self.epoch, **fields})

    def _truncate_logs(self) -> None:
        """Drop records written after the checkpoint now being resumed from."""
        step, epoch = self.step, self.epoch
        _rewrite_jsonl(self.run_dir / STEPS_FILE, lambda r: r.get("step", 0) <= step)
        # spikes after the checkpoint will be seen again (or not) when those steps are redone
        _rewrite_jsonl(self.run_dir / EVENTS_FILE, lambda r: r.get("event") != "spike" or r.get("step", 0) <= step)
        _rewrite_jsonl(self.run_dir / EPOCHS_FILE, lambda r: r.get("epoch", 0) <= epoch)
        _rewrite_jsonl(self.run_dir / GATES_FILE, lambda r: r.get("epoch", 0) <= epoch)

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self, split: ArraySplit | None) -> dict[str, float]:
        if split is None or len(split) == 0:
            return {}
        self.model.eval()
        loss_sum, metric_sum, count, examples = 0.0, 0.0, 0, 0
        try:
            for x, y in split.batches(self.cfg.eval_batch_size):
                x, y = x.to(self.device), y.to(self.device)
                out = self.model(x)
                loss_sum += float(self.objective.loss(out, y)) * len(x)
                m, c = self.objective.metric_sum(out, y)
                metric_sum, count, examples = metric_sum + m, count + c, examples + len(x)
        finally:
            self.model.train()
        return {"loss": loss_sum / max(1, examples), self.objective.metric: metric_sum / max(1, count)}

    def _diagnostics(self) -> dict[str, float]:
        fn = getattr(self.model, "diagnostics", None)
        return {k: float(v) for k, v in fn().items()} if callable(fn) else {}

    def _gate_stats(self) -> None:
        fn = getattr(self.model, "gate_statistics", None)
        if not (self.cfg.gate_stats and callable(fn)):
            return
        split = self.data.val if self.data.val is not None and len(self.data.val) else self.data.test
        if split is None or not hasattr(split, "sample"):
            return
        x = split.sample(self.cfg.gate_stats_size).to(self.device)
        self.model.eval()
        try:
            with torch.no_grad():
                stats = fn(x)
        finally:
            self.model.train()
        if stats:
            self._append(GATES_FILE, {"epoch": self.epoch, "step": self.step,
                                      **{k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in stats.items()}})

    # ------------------------------------------------------------------ training
    def _train_step(self, x: Tensor, y: Tensor) -> tuple[float, float, Tensor]:
        cfg = self.cfg
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(x)
        loss = self.objective.loss(out, y)
        loss_v = float(loss.detach())
        if not math.isfinite(loss_v):
            raise Diverged(f"non-finite loss {loss_v} at step {self.step + 1}")
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.clip_norm is not None:
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm))
        else:
            gnorm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
        if not math.isfinite(gnorm):
            raise Diverged(f"non-finite gradient norm {gnorm} at step {self.step + 1}")
        self.optimizer.step()
        self.scheduler.step()
        return loss_v, gnorm, out.detach()

    def _run_epoch(self) -> dict[str, Any]:
        cfg = self.cfg
        n_batches = self.data.train.num_batches(cfg.batch_size)
        bar = _progress(n_batches, f"{cfg.run_id} ep {self.epoch + 1}/{cfg.epochs}", cfg.progress)
        loss_sum, metric_sum, count, seen, spikes = 0.0, 0.0, 0, 0, 0
        try:
            for x, y in self.data.train.batches(cfg.batch_size, self.shuffle_gen):
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    break
                lr = self.optimizer.param_groups[0]["lr"]
                loss_v, gnorm, out = self._train_step(x, y)
                self.step += 1
                loss_sum += loss_v * len(x)
                seen += len(x)
                m, c = self.objective.metric_sum(out, y.to(out.device))
                metric_sum, count = metric_sum + m, count + c
                spike = self.spikes.update(loss_v)
                record = {"step": self.step, "epoch": self.epoch + 1, "loss": loss_v, "grad_norm": gnorm, "lr": lr}
                if spike:
                    spikes += 1
                    self.event("spike", loss=loss_v, median=self.spikes.last_median)
                if spike or self.step % cfg.log_every == 0 or self.step == 1:
                    self._append(STEPS_FILE, {**record, "spike": spike})
                for cb in self.callbacks:
                    cb(self, record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_v:.4f}")
        finally:
            if bar is not None:
                bar.close()
        return {"train_loss": loss_sum / max(1, seen), f"train_{self.objective.metric}": metric_sum / max(1, count),
                "spikes": spikes}

    def _end_epoch(self, train_stats: dict[str, Any], t0: float) -> None:
        """Evaluate, log the epoch record and gate statistics, checkpoint. Epoch 0 (no
        ``train_stats``) records the initial model, so curves start before training."""
        if train_stats:
            self.epoch += 1
            self.scheduler.epoch_end()
        record: dict[str, Any] = {"epoch": self.epoch, "step": self.step, **train_stats}
        for name, split in (("val", self.data.val), ("test", self.data.test)):
            for k, v in self.evaluate(split).items():
                record[f"{name}_{k}"] = v
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record.update(self._diagnostics())
        self._update_best(record)
        self.elapsed += time.perf_counter() - t0
        record["elapsed_s"] = self.elapsed
        record["spikes_total"] = self.spikes.count
        self._append(EPOCHS_FILE, record)
        self._gate_stats()
        self.save_checkpoint()

    def _update_best(self, record: Mapping[str, Any]) -> None:
        metric = self.objective.metric
        key = f"val_{metric}" if f"val_{metric}" in record else f"test_{metric}"
        if key not in record:
            return
        value = record[key]
        better = (value > self.best.get("value", -math.inf)) if self.objective.higher_is_better else \
            (value < self.best.get("value", math.inf))
        if better:
            self.best = {"epoch": self.epoch, "key": key, "value": value,
                         **{k: v for k, v in record.items() if k.startswith(("val_", "test_"))}}

    def _rollback(self, err: Diverged) -> bool:
        """Reload the last good checkpoint with a smaller learning rate; False when out of rollbacks."""
        if self.cfg.nonfinite_policy != "rollback" or self.rollbacks >= self.cfg.max_rollbacks:
            return False
        rollbacks, nonfinite, scale = self.rollbacks + 1, self.nonfinite, self.scheduler.scale
        bad_step = self.step + 1
        self.load_state_dict(load_checkpoint(self.run_dir / CHECKPOINT_FILE))
        self.rollbacks, self.nonfinite = rollbacks, nonfinite
        self.scheduler.set_scale(scale * self.cfg.rollback_lr_factor)
        self._truncate_logs()
        self.event("rollback", from_step=bad_step, lr_scale=self.scheduler.scale, reason=str(err))
        self.save_checkpoint()
        return True

    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train to the end (or divergence); returns the summary (also in summary.json)."""
        with _threads(self.cfg.threads):
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = self.run_dir / CHECKPOINT_FILE
        if resume and ckpt.exists():
            self.load_state_dict(load_checkpoint(ckpt))
            self._truncate_logs()
            self.event("resume")
        else:
            for name in (STEPS_FILE, EPOCHS_FILE, GATES_FILE, EVENTS_FILE, SUMMARY_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
            write_json_atomic(self.run_dir / CONFIG_FILE, cfg.to_dict())
            torch.manual_seed(cfg.seed)
            self._end_epoch({}, time.perf_counter())
        self.model.train()
        while self.epoch < cfg.epochs and not (cfg.max_steps is not None and self.step >= cfg.max_steps):
            t0 = time.perf_counter()
            try:
                stats = self._run_epoch()
            except Diverged as err:
                self.nonfinite += 1
                self.event("nonfinite", reason=str(err), policy=cfg.nonfinite_policy)
                self.elapsed += time.perf_counter() - t0
                if self._rollback(err):
                    continue
                self.status = "diverged"
                self.event("stop", reason=str(err))
                break
            self._end_epoch(stats, t0)
        if self.status == "running":
            self.status = "finished"
        return self.write_summary()

    def write_summary(self) -> dict[str, Any]:
        epochs = read_jsonl(self.run_dir / EPOCHS_FILE)
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        summary = {
            "run_id": self.cfg.run_id,
            "study": self.cfg.study,
            "row": self.cfg.row,
            "seed": self.cfg.seed,
            "status": self.status,
            "epochs": self.epoch,
            "steps": self.step,
            "metric": self.objective.metric,
            "final": epochs[-1] if epochs else {},
            "best": self.best,
            "spikes": self.spikes.count,
            "nonfinite": self.nonfinite,
            "rollbacks": self.rollbacks,
            "lr_scale": self.scheduler.scale,
            "params": n_params,
            "trainable_params": n_train,
            "elapsed_s": self.elapsed,
            "data": self.data.info,
            "device": str(self.device),
            "torch": torch.__version__,
        }
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        return summary


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (None: unchanged), restoring the previous count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


# --------------------------------------------------------------------------- one run
def run(cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = True,
        callbacks: Sequence[StepCallback] = ()) -> dict[str, Any]:
    """Build the model and data for ``cfg`` through its study and train it in ``run_dir``.

    A finished run (``summary.json`` present) is not retrained; its summary is returned.
    """
    from .registry import get_study

    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    if resume and summary_path.exists():
        return json.loads(summary_path.read_text(encoding="utf-8"))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / CHECKPOINT_FILE).exists():  # the config is on disk even if building fails
        write_json_atomic(run_dir / CONFIG_FILE, cfg.to_dict())
    with _threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model, data = get_study(cfg.study).build(cfg)
        return Trainer(cfg, model, data, run_dir, callbacks).fit(resume=resume)


def resume(run_dir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its config.json and checkpoint."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir} has no {CONFIG_FILE}; is it a run directory?")
    cfg = RunConfig.from_json(cfg_path.read_text(encoding="utf-8"))
    if overrides:
        cfg = cfg.replace(**overrides)
    return run(cfg, run_dir, resume=True)


_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)
_FIELD_TYPES.pop("__post_init__", None)
_FIELD_TYPES = {f.name: _FIELD_TYPES[f.name] for f in dataclasses.fields(RunConfig)}

__all__ = [
    "ArraySplit", "ConfigError", "CosineToFloor", "OBJECTIVES", "OPTIMIZERS", "RunConfig", "SCHEDULES",
    "SpikeDetector", "StreamSplit", "TaskData", "Trainer", "load_checkpoint", "parse_overrides", "read_jsonl",
    "resume", "run", "torch_save_atomic", "write_json_atomic", "write_text_atomic",
]
