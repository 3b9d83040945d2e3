"""The configuration of one run: :class:`RunConfig`, ``key=value`` overrides, validation
and the fingerprint that decides whether recorded results may be reused.

Every field is checked for type, finiteness and range when a config is made (from
Python, JSON or ``--set``); a mistake raises :class:`~studies.errors.ConfigError` naming
the field, its allowed values and what was given.

Fingerprint
    :attr:`RunConfig.fingerprint` is a SHA-256 of the canonical JSON of every field except
    :data:`NOT_FINGERPRINTED` (``progress``: the progress bar; ``threads``: the CPU threads
    a launcher gives a run; ``tensorboard``: the optional TensorBoard log). Run directories
    record it (``checkpoint.pt``, ``summary.json``); results are reused or resumed only
    under an equal fingerprint.

Profiles from files
    ``profile`` is a preset name or a profile file (``.json``/``.toml``, see
    :meth:`soensim.HardwareProfile.load`). A file is read when the config is made and its
    validated content (:meth:`~soensim.HardwareProfile.to_dict`) replaces the path in the
    config: the recorded ``config.json`` holds the profile itself, and the fingerprint
    changes whenever the file's content does (never with its name or place alone).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import ConfigError

#: Fields that do not enter :attr:`RunConfig.fingerprint`: they change neither what is
#: computed nor what is logged.
NOT_FINGERPRINTED = ("progress", "threads", "tensorboard")
#: Row and study names: they become folder names and table cells.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")
OPTIMIZER_NAMES = ("adamw", "adam")
SCHEDULES = ("cosine", "cosine-epoch", "constant")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, flat so that ``--set key=value`` can reach every field.

    Identity: ``study``, ``row`` (letters, digits and ``. _ + = -``, at most 100
    characters), ``seed`` (0 .. 2⁶³ − 1).
    Task/data: ``task`` (see the study modules), ``data_dir`` (None: ``$SOENSIM_DATA_DIR``),
    ``image_size`` (side after resizing; sequence length = side² for image tasks),
    ``channels`` (1 grayscale, 3 RGB), ``permute`` (bit-reversal pixel order),
    ``train_subset``/``test_subset`` (stratified subsets, None = all), ``val_size``
    (seeded stratified validation split carved from train), ``seq_len`` (copy/adding N),
    ``steps_per_epoch``/``eval_size`` (streamed synthetic tasks), ``train_size`` (low-data
    studies: training examples per run).
    Model: ``cell`` (gru/lstm), ``gate`` (mechanism name, see ``gates.GATES``), ``hidden``,
    ``head`` (``linear`` on the last hidden state, as in Malandain 2026; ``mlp``: per-step
    ReLU ``head_hidden`` then linear, as in Gu et al. 2020, arXiv:1910.09890),
    ``bias_mode`` (``learnable``: the mechanism's own init, trainable; ``frozen-zero``:
    update/reset biases fixed at 0, candidate bias trainable — the ablation of Malandain
    2026), ``update_bias_init`` (the ``-`` gate's b_z = b_r init), ``reset_bias_init`` (a GRU's b_r for
    every mechanism, None = the mechanism's own; a profile that freezes b_r overrides it), ``orthogonal_hh``,
    ``chrono_tmax`` (None: the sequence length; ≥ 2).
    Hardware: ``profile`` (a :class:`soensim.HardwareProfile` preset name, or a profile file
    whose content is recorded in its place as a dict of fields — see the module docstring;
    None = software),
    ``coupling_max`` (|W| bound, None = the profile's; in (0, 1e6]), ``hw_dt`` (seconds per
    sequence step, in (0, 1]; None = ``profile.dt * 1024 / sequence length``: one image
    always lasts 1024 profile steps), ``hw_bias`` (what the update-gate bias is frozen at: ``profile``
    τ values, ``tau-min`` = every unit at the profile's shortest τ, ``chrono`` = chrono's uniform
    time scales inside the fabricable range, ``zero``, or ``init`` = the mechanism's own initial
    draw; see :func:`studies.models.hardware_update_bias`).
    Optimization: ``optimizer`` (adamw/adam), ``lr`` (≤ 1e30), ``lr_min`` (cosine floor, ≤ lr),
    ``weight_decay`` (AdamW only), ``schedule`` (cosine: per step; cosine-epoch: per epoch;
    constant), ``epochs``, ``batch_size``, ``clip_norm`` (None: no clipping), ``max_steps``
    (stop after this many optimizer steps in all; None: no limit).
    Safety: ``nonfinite_policy`` (what a divergence does: ``stop`` the run, or ``rollback``
    to the last checkpoint with the learning rate times ``rollback_lr_factor``, at most
    ``max_rollbacks`` times), ``divergence_factor`` (a step whose loss exceeds this many
    times the median of the previous losses — or the initial model's loss at step 1 — is a
    divergence, like a non-finite loss; None: only non-finite values count),
    ``spike_factor``/``spike_window``/``spike_min_history`` (a step is a loss spike when
    its loss exceeds ``spike_factor`` × the median of the previous ``spike_window``
    losses, once ``spike_min_history`` are known; spikes are counted, not acted on).
    Runtime: ``log_every`` (per-step record sampling), ``gate_stats``/``gate_stats_size``,
    ``eval_batch_size``, ``progress`` (tqdm), ``device`` (auto/cpu/cuda), ``threads``
    (torch CPU threads during the run, None = leave as is; small recurrent models run
    fastest on one thread, and a 2-thread OpenMP team stalls badly on a busy machine),
    ``tensorboard`` (also log to ``RUN_DIR/tensorboard``, :mod:`studies.tensorboard_log`).

    All floats must be finite; counts are ≥ 1 unless stated.
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
    reset_bias_init: float | None = None
    orthogonal_hh: bool = True
    chrono_tmax: float | None = None
    # hardware
    profile: str | dict[str, Any] | None = None
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
    divergence_factor: float | None = 1e4
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
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), _FIELD_TYPES[f.name]))
        _validate(self)

    # -------------------------------------------------------------- round trip
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run configuration is a JSON object of fields; got {type(data).__name__}")
        _check_keys(data)
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "RunConfig":
        """A validated copy; unknown keys raise :class:`ConfigError` listing the known ones."""
        _check_keys(changes)
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: Mapping[str, str] | Sequence[str]) -> "RunConfig":
        """Apply ``key=value`` strings (or a key→string mapping) as typed by the field.

        Values parse as JSON where possible (``null``, ``true``, ``3``, ``1e-3``), otherwise as
        a plain string; ``none``/``None`` also mean None for optional fields.
        """
        return self.replace(**parse_overrides(overrides))

    @property
    def profile_name(self) -> str | None:
        """The profile's name for tables: the preset name or the file profile's ``name`` (None in software)."""
        return self.profile.get("name", "custom") if isinstance(self.profile, dict) else self.profile

    @property
    def run_id(self) -> str:
        return f"{self.row}-s{self.seed}"

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the fields that define the run (see the module docstring)."""
        return fingerprint(self.to_dict())


def fingerprint(fields: Mapping[str, Any]) -> str:
    """:attr:`RunConfig.fingerprint` of a config dict."""
    kept = {k: v for k, v in fields.items() if k not in NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def config_diff(recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """``["epochs: 2 → 6", ...]`` for the fingerprinted fields that differ."""
    keys = sorted((set(recorded) | set(requested)) - set(NOT_FINGERPRINTED))
    missing = object()
    out = []
    for k in keys:
        a, b = recorded.get(k, missing), requested.get(k, missing)
        if a != b:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            out.append(f"{k}: {show(a)} → {show(b)}")
    return out


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
    _check_keys(dict(items))
    return {k: (_parse_value(k, v) if isinstance(v, str) else v) for k, v in items}


def _check_keys(data: Mapping[str, Any]) -> None:
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known keys: {sorted(_FIELD_TYPES)}")


def _parse_value(key: str, text: str) -> Any:
    if text in ("none", "None", "null"):
        return None
    base = _base_type(_FIELD_TYPES[key])
    if base is str:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if base is bool and text.lower() in ("true", "false", "yes", "no", "on", "off"):
            return text.lower() in ("true", "yes", "on")
        if base is float:
            try:
                return float(text)  # Python spellings too ("inf", "nan"), so that the range check names them
            except ValueError:
                pass
        raise ConfigError(f"{key}: cannot parse {text!r} as {base.__name__}") from None


def _base_type(tp: Any) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _coerce_profile(value: Any) -> str | dict[str, Any] | None:
    """``profile``: None, a preset name (kept), or a profile file / mapping of fields (→ its
    validated :meth:`~soensim.HardwareProfile.to_dict`)."""
    from soensim.profiles import PRESETS, HardwareProfile, ProfileError

    if value is None or (isinstance(value, str) and value in PRESETS):
        return value
    try:
        return HardwareProfile.resolve(value).to_dict()
    except ProfileError as exc:
        raise ConfigError(f"profile: {exc}") from None
    except OSError as exc:  # a profile file that cannot be read
        raise ConfigError(f"profile: {exc.filename or value}: {exc.strerror or exc}") from None


def _coerce(name: str, value: Any, tp: Any) -> Any:
    if name == "profile":
        return _coerce_profile(value)
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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number; got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number; got {value!r}")
        return float(value)
    if base is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string; got {value!r}")
    return value


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}; got {value!r}")


def _at_least(cfg: RunConfig, names: Sequence[str], low: float, strict: bool = False) -> None:
    for name in names:
        v = getattr(cfg, name)
        if v is not None and (v <= low if strict else v < low):
            raise ConfigError(f"{name} must be {'>' if strict else '≥'} {low:g}; got {v}")


def _validate(cfg: RunConfig) -> None:
    for name in ("study", "row"):
        if not NAME_PATTERN.fullmatch(getattr(cfg, name)):
            raise ConfigError(f"{name} {getattr(cfg, name)!r} is not a valid name: use 1 to 100 letters, digits "
                              "and . _ + = - (starting with a letter or digit); no '/', '|' or spaces")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed must be in 0..{MAX_SEED}; got {cfg.seed}")
    _choice("optimizer", cfg.optimizer, OPTIMIZER_NAMES)
    _choice("schedule", cfg.schedule, SCHEDULES)
    _choice("nonfinite_policy", cfg.nonfinite_policy, ("stop", "rollback"))
    _choice("bias_mode", cfg.bias_mode, ("learnable", "frozen-zero"))
    _choice("hw_bias", cfg.hw_bias, ("profile", "tau-min", "chrono", "zero", "init"))
    _choice("head", cfg.head, ("linear", "mlp"))
    _choice("device", cfg.device, ("auto", "cpu", "cuda"))
    _choice("cell", cfg.cell, ("gru", "lstm"))
    _choice("channels", cfg.channels, (1, 3))
    from gates import GATES

    _choice("gate", cfg.gate, sorted(GATES))
    _at_least(cfg, ("epochs", "batch_size", "hidden", "log_every", "eval_batch_size", "spike_window", "image_size",
                    "seq_len", "steps_per_epoch", "eval_size", "head_hidden", "gate_stats_size", "max_steps",
                    "threads", "train_subset", "test_subset", "train_size"), 1)
    _at_least(cfg, ("val_size", "max_rollbacks", "spike_min_history", "weight_decay", "lr_min"), 0)
    _at_least(cfg, ("lr", "spike_factor", "clip_norm", "coupling_max", "hw_dt"), 0, strict=True)
    _at_least(cfg, ("divergence_factor",), 1, strict=True)
    _at_least(cfg, ("chrono_tmax",), 2)
    for name, high, why in (("lr", 1e30, "far beyond any useful rate; larger ones overflow float32 optimizer steps"),
                            ("coupling_max", 1e6, "a larger bound constrains nothing"),
                            ("hw_dt", 1.0, "seconds per step; the profiles' time constants are nanoseconds")):
        v = getattr(cfg, name)
        if v is not None and v > high:
            raise ConfigError(f"{name} must be ≤ {high:g} ({why}); got {v}")
    if not cfg.lr_min <= cfg.lr:
        raise ConfigError(f"lr_min must be in [0, lr={cfg.lr}]; got {cfg.lr_min}")
    if not 0 < cfg.rollback_lr_factor <= 1:
        raise ConfigError(f"rollback_lr_factor must be in (0, 1]; got {cfg.rollback_lr_factor}")


_FIELD_TYPES: dict[str, Any] = {f.name: typing.get_type_hints(RunConfig)[f.name] for f in dataclasses.fields(RunConfig)}

__all__ = ["NAME_PATTERN", "NOT_FINGERPRINTED", "OPTIMIZER_NAMES", "RunConfig", "SCHEDULES", "config_diff",
           "fingerprint", "parse_overrides"]
