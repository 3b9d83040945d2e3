"""Study ``scifar-bias``: the s-CIFAR GRU gate-bias ablation of Malandain 2026
("Ablation of Gate Biases in GRUs for s-CIFAR-10") and its hardware extension.

Rows
----
Software (Malandain 2026):

- ``baseline``: standard GRU, b_z = b_r = +1 at init (in ``bias_ih`` only), all biases learnable;
- ``ablated``: b_z = b_r frozen at 0, b_n learnable;
- ``chrono``: chrono init of b_z (``log U[1, T_max - 1]``, T_max = sequence length), learnable.

Under a hardware profile (``soen-dendrite``: τ ∈ [10 ns, 1 µs], |W| ≤ J_max = 0.5 on the GRU's
input and recurrent weights, b_r frozen at 0, b_n trainable; the linear read-out stays software),
applied by :func:`soensim.constraints.constrain`:

- ``baseline-hw``: b_z frozen at the profile's physical τ (log-uniform over the range);
- ``ablated-hw``: b_z frozen at 0 (τ = Δt / ln 2): the ablation with no way to inflate W_hz
  past J_max;
- ``chrono-hw``: b_z frozen at its chrono draw (chrono as a choice of fabricated τ).

Gate variants (software; the mechanisms of Gu et al. 2020, arXiv:1910.09890, on the same GRU): ``gate-U``, ``gate-R``,
``gate-UR``, ``gate-SST``. (The ``-`` variant is ``baseline``.)

The full preset adds a J_max sweep: ``<row>-hw-J<j>`` for j in 0.1, 0.25, 1.0 besides the
profile's 0.5.

Time step under a profile: one pixel is one step; by default one image lasts 1024 profile
steps (``hw_dt = profile.dt · 1024 / T``), so the full 32×32 sequence uses Δt = 0.1 ns
(τ/Δt from 100 to 10,000 steps) and a 16×16 one Δt = 0.4 ns (25 to 2,500 steps): the
time constants keep the same ratio to the length of an image. ``--set hw_dt=SECONDS``
chooses another.

Images: grayscale (ITU-R BT.601 luma) unless ``channels=3``, downsampled by block averaging to
``image_size``, scanned row by row (left to right, top to bottom), scaled to [0, 1] and
standardized with the training split's mean and population standard deviation
(:func:`studies.data.standardize`, the normalisation of every study). The validation split is
a stratified draw of ``val_size`` images (as a per-class fraction) from the training set with a
fixed seed (0), the same for every run; ``train_subset``/``test_subset`` keep ``n // 10``
images per class, with the same fixed seed (:func:`studies.data.stratified_split` /
``stratified_subset``).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gates import get_mechanism
from soensim import HardwareProfile

from . import ablation_pairs, cifar, data, grid, plots
from .config import RunConfig
from .errors import ConfigError, DataError
from .models import build_model
from .taskdata import ArraySplit, TaskData

NAME = "scifar-bias"
DESCRIPTION = "s-CIFAR-10 GRU gate-bias ablation (Malandain 2026), software vs SOEN hardware profile, gate variants"
HW = "soen-dendrite"
SPLIT_SEED = 0
NUM_CLASSES = 10

SOFTWARE_ROWS: dict[str, dict[str, Any]] = {
    "baseline": {"gate": "-", "bias_mode": "learnable"},
    "ablated": {"gate": "-", "bias_mode": "frozen-zero"},
    "chrono": {"gate": "C"},
}
#: Under ``soen-dendrite`` every update-gate bias is frozen at a fabricable τ and b_r at the
#: profile's value (0); the hardware ablation is the least memory the hardware offers (τ_min).
HARDWARE_ROWS: dict[str, dict[str, Any]] = {
    "baseline-hw": {"gate": "-", "profile": HW, "hw_bias": "profile"},
    "ablated-hw": {"gate": "-", "profile": HW, "hw_bias": "tau-min"},
    "chrono-hw": {"gate": "C", "profile": HW, "hw_bias": "chrono"},
}
GATE_ROWS: dict[str, dict[str, Any]] = {f"gate-{g}": {"gate": g} for g in ("U", "R", "UR", "SST")}
J_SWEEP = (0.1, 0.25, 1.0)
#: Flux budgets of the medium preset, loose to tight (Σ_j |W_ij| per gate row; the GRU's
#: orthogonal W_hh rows start near 6.4 at H = 64): None = the per-weight bound alone,
#: then 8, 2 and the soen-dendrite preset's physical value (0.43, derived from the flux window).
BUDGETS: tuple[float | None, ...] = (None, 8.0, 2.0, HardwareProfile.preset(HW).flux_budget)
#: τ design sweep: the soen-dendrite range (10 ns – 1 µs, τ_max ≈ 10 images of 102.4 ns) scaled
#: by 0.1 and 10, so that τ_max is about 1, 10 and 100 images long, at budget 2 (a smaller scale
#: would put τ_min below the 0.4 ns step of a 16×16 image).
TAU_SCALES = (0.1, 10.0)
TAU_SWEEP_BUDGET = 2.0
#: Configuration fields the results header states (images: no sequence length or train_size).
HEADER_FIELDS = tuple(f for f in grid.HEADER_FIELDS if f not in ("seq_len", "train_size"))


def budget_profile(budget: float | None, tau_scale: float = 1.0) -> dict[str, Any]:
    """``soen-dendrite`` with ``flux_budget`` = ``budget`` (None: none) and its τ range scaled by
    ``tau_scale``, as the profile fields a row records (named after the changes)."""
    base = HardwareProfile.preset(HW)
    name = HW + ("-J" if budget is None else f"-B{budget:.3g}") + ("" if tau_scale == 1 else f"-tau{tau_scale:g}")
    lo, hi = base.tau_range  # type: ignore[misc]
    return base.replace(name=name, flux_budget=budget, tau_range=(lo * tau_scale, hi * tau_scale)).to_dict()


def _budget_label(budget: float | None) -> str:
    return "J" if budget is None else f"B{budget:.3g}"


def _budget_rows() -> dict[str, dict[str, Any]]:
    """Hardware baseline and ablation at every :data:`BUDGETS` level, then the τ design sweep."""
    rows = {}
    for budget in BUDGETS:
        for name in ("baseline-hw", "ablated-hw"):
            rows[f"{name}-{_budget_label(budget)}"] = {**HARDWARE_ROWS[name], "profile": budget_profile(budget)}
    for scale in TAU_SCALES:
        rows[f"baseline-hw-{_budget_label(TAU_SWEEP_BUDGET)}-tau{scale:g}"] = {
            **HARDWARE_ROWS["baseline-hw"], "profile": budget_profile(TAU_SWEEP_BUDGET, scale)}
    return rows


def _sweep() -> dict[str, dict[str, Any]]:
    rows = {}
    for name, spec in HARDWARE_ROWS.items():
        for j in J_SWEEP:
            rows[f"{name}-J{j:g}"] = {**spec, "coupling_max": j}
    return rows


def matched_hidden(gate: str, base: dict[str, Any]) -> int:
    """The largest hidden size at which the GRU with ``gate`` (and the preset's head) has at most
    the parameters of the standard GRU at ``base["hidden"]``: refine gates add a fourth block,
    so equal H is not an equal budget."""
    def count(g: str, h: int) -> int:  # one biased GRU layer (W_ih, W_hh, b_ih, b_hh) and the linear head
        rows = sum(get_mechanism(g, "gru").block_rows(h).values())
        return rows * (base["channels"] + h + 2) + h * NUM_CLASSES + NUM_CLASSES
    target = count("-", base["hidden"])
    h = base["hidden"]
    while h > 1 and count(gate, h) > target:
        h -= 1
    return h


def _matched_rows(base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``gate-R-pm`` / ``gate-UR-pm``: the refine rows at the baseline's parameter count."""
    return {f"gate-{g}-pm": {"gate": g, "hidden": matched_hidden(g, base)} for g in ("R", "UR")}


PAPER = dict(  # Malandain 2026 protocol; batch size from Gu et al. 2020 App. D (the former does not state it)
    task="scifar", image_size=32, channels=1, hidden=181, head="linear", optimizer="adamw", lr=5e-4, lr_min=1e-5,
    weight_decay=0.01, schedule="cosine-epoch", epochs=40, batch_size=50, clip_norm=1.0, orthogonal_hh=True,
    val_size=5000, update_bias_init=1.0, reset_bias_init=1.0,
)
#: The CPU-scale configuration at which the catch-up of Malandain 2026 shows (about 2.5 min per
#: row on one core): 16×16 grayscale, 20,000 training images, H = 64, 12 epochs, AdamW 5e-3 per step.
CPU_SCALE = {**PAPER, "image_size": 16, "hidden": 64, "epochs": 12, "lr": 5e-3, "schedule": "cosine",
             "val_size": 1000, "train_subset": 20000, "test_subset": 5000, "gate_stats_size": 128,
             "log_every": 10, "threads": 1}
_QUICK = {**PAPER, "image_size": 16, "hidden": 64, "epochs": 5, "lr": 5e-3, "schedule": "cosine",
          "val_size": 1000, "train_subset": 6000, "test_subset": 2000, "gate_stats_size": 128,
          "log_every": 5, "threads": 1}
_HW_NOTE = ("Hardware rows: soen-dendrite (τ ∈ [10 ns, 1 µs] frozen, b_r frozen at 0, |W| ≤ 0.5, "
            "flux budget Σ_j |W_ij| ≤ 0.43 per gate row unless the row names another), Δt = 0.4 ns per pixel "
            "(one image = 1024 × 0.1 ns); baseline-hw: τ log-uniform over the range; ablated-hw: every τ at "
            "τ_min; chrono-hw: τ uniform over [τ_min, min(τ_max, T·Δt)]. Every GRU row starts with b_r = +1 "
            "(software) and the baseline with b_z = +1; the read-out is software.")

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "base": {**PAPER, "task": "fake-images", "image_size": 4, "hidden": 16, "epochs": 3, "batch_size": 32,
                 "lr": 3e-2, "schedule": "cosine", "val_size": 40, "train_subset": 160, "test_subset": 60,
                 "eval_batch_size": 100, "gate_stats_size": 32, "log_every": 1, "progress": False, "threads": 1},
        "rows": {**SOFTWARE_ROWS, **HARDWARE_ROWS, **GATE_ROWS},
        "seeds": 1,
        "notes": "smoke: synthetic 4×4 images (16 steps), H=16, 3 epochs, lr 3e-2 — plumbing only.",
    },
    "demo": {
        "base": CPU_SCALE,
        "rows": {"baseline": SOFTWARE_ROWS["baseline"], "ablated": SOFTWARE_ROWS["ablated"],
                 **{k: v for k, v in _budget_rows().items() if k.endswith("-J")},
                 "baseline-hw": HARDWARE_ROWS["baseline-hw"], "ablated-hw": HARDWARE_ROWS["ablated-hw"]},
        "seeds": 1,
        "notes": ("demo (the README's main job): the medium configuration, one seed — CIFAR-10 grayscale 16×16 "
                  "(256 steps), 20,000 training images (stratified), 1,000 validation, 5,000 test, GRU H=64 + "
                  "linear head, AdamW lr 5e-3 cosine (per step) to 1e-5 over 12 epochs, batch 50, clip 1.0. "
                  "Software baseline and ablation, and the hardware pair at the per-weight bound alone (-J) "
                  "and at the physical flux budget. " + _HW_NOTE),
    },
    "medium": {
        "base": CPU_SCALE,
        "rows": {"baseline": SOFTWARE_ROWS["baseline"], "ablated": SOFTWARE_ROWS["ablated"], **_budget_rows()},
        "seeds": 3,
        "notes": ("medium: as demo, 3 seeds; hardware baseline and ablation at the per-weight bound alone (-J) "
                  "and at flux budgets 8, 2 and 0.43 (soen-dendrite's physical value); τ design sweep at budget 2 "
                  "with the range scaled by 0.1 and 10 (τ_max ≈ 1 and 100 images; the unscaled range is ≈ 10). " + _HW_NOTE),
    },
    "quick": {
        "base": _QUICK,
        "rows": {**SOFTWARE_ROWS, **HARDWARE_ROWS, **GATE_ROWS, **_matched_rows(_QUICK)},
        "seeds": 1,
        "notes": ("quick (plumbing at real data; too short for the catch-up — use demo or medium for the "
                  "finding): CIFAR-10 grayscale 16×16, 6,000 training images, 1,000 validation, 2,000 test, "
                  "GRU H=64 + linear head, AdamW lr 5e-3 cosine (per step) over 5 epochs, batch 50, 1 seed. "
                  + _HW_NOTE),
    },
    "full": {
        "base": dict(PAPER),
        "rows": {**SOFTWARE_ROWS, **HARDWARE_ROWS, **GATE_ROWS, **_matched_rows(PAPER), **_sweep()},
        "seeds": 1,
        "notes": ("full: the protocol of Malandain 2026 — grayscale 32×32 (1024 steps), GRU H=181 + linear head "
                  "(101,732 parameters), orthogonal W_hh, AdamW lr 5e-4 cosine (per epoch) to 1e-5 over "
                  "40 epochs, weight decay 0.01, batch 50, clip 1.0; 45,000/5,000 train/validation split. "
                  "Hardware: soen-dendrite at Δt = 0.1 ns per pixel, J_max sweep 0.1/0.25/0.5/1.0."),
    },
}


row_names, notes, runs = grid.preset_functions(NAME, PRESETS)


def build(cfg: RunConfig) -> tuple[nn.Module, TaskData]:
    data = image_task(cfg)
    return build_model(cfg, data.input_size, data.num_outputs, data.seq_len), data


# --------------------------------------------------------------------------- images
def image_sequences(images: np.ndarray, size: int, channels: int, permute: bool = False) -> Tensor:
    """Images (N, S, S, 3) uint8 → float sequences (N, size², channels) in [0, 1], by
    :func:`studies.data.to_sequences` (grayscale or RGB, ``size`` × ``size`` block averages,
    row-major scan, then ``permute``'s bit-reversal order); a ``channels`` or ``image_size``
    the images cannot give raises :class:`ConfigError` naming the field."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels}")
    side = images.shape[1]
    if side % size:
        raise ConfigError(f"image_size {size} must divide the image side {side}")
    return torch.from_numpy(data.to_sequences(images, "gray" if channels == 1 else "rgb", permute, size=size))


def fake_images(n: int, classes: int = 10, side: int = 32, seed: int = 1234,
                pattern_seed: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic RGB images (N, side, side, 3) uint8 and labels, as :func:`studies.cifar.load_cifar10`
    returns them: one smooth random pattern per class (fixed by ``pattern_seed``) plus noise
    (``seed``). Learnable in a few steps; for smoke tests without CIFAR.
    """
    protos = nn.functional.interpolate(torch.rand(classes, 3, 4, 4, generator=torch.Generator().manual_seed(pattern_seed)),
                                       size=(side, side), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    x = protos[y] + 0.15 * torch.randn(n, 3, side, side, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return images.contiguous().numpy(), y.numpy()


def split_indices(labels: np.ndarray, val_size: int, train_subset: int | None,
                  seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) indices: ``val_size`` examples (as a per-class
    fraction), then ``train_subset // classes`` per class of the rest (None: all of it)."""
    train, val = data.stratified_split(labels, val_size / len(labels), seed)
    if train_subset is not None:
        train = train[data.stratified_subset(labels[train], train_subset // len(np.unique(labels)), seed)]
    return train, val


def image_task(cfg: RunConfig) -> TaskData:
    """Train/val/test sequence splits for ``cfg.task`` in ``{"scifar", "fake-images"}``."""
    if cfg.task == "fake-images":
        tr_x, tr_y = fake_images(400, seed=1234)
        te_x, te_y = fake_images(200, seed=4321)
        source = "synthetic images (studies.bias_ablation.fake_images)"
    elif cfg.task == "scifar":
        tr_x, tr_y, te_x, te_y, source = _cifar10_arrays(cfg.data_dir)
    else:
        raise ConfigError(f"study {NAME} runs task 'scifar' or 'fake-images'; got {cfg.task!r}")
    train_idx, val_idx = split_indices(tr_y, cfg.val_size, cfg.train_subset)
    test_idx = np.arange(len(te_y))
    if cfg.test_subset is not None:
        test_idx = data.stratified_subset(te_y, cfg.test_subset // len(np.unique(te_y)), SPLIT_SEED)

    def seq(images: np.ndarray, idx: np.ndarray, chunk: int = 5000) -> Tensor:  # chunks bound the uint8 copy
        parts = [image_sequences(images[idx[i:i + chunk]], cfg.image_size, cfg.channels, cfg.permute)
                 for i in range(0, len(idx), chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, cfg.image_size ** 2, cfg.channels)

    x_train, x_val, x_test = data.standardize(seq(tr_x, train_idx), seq(tr_x, val_idx), seq(te_x, test_idx))
    label = lambda y, idx: torch.from_numpy(np.asarray(y)[idx]).long()  # noqa: E731
    train = ArraySplit(x_train, label(tr_y, train_idx))
    val = ArraySplit(x_val, label(tr_y, val_idx)) if len(val_idx) else None
    test = ArraySplit(x_test, label(te_y, test_idx))
    T = cfg.image_size ** 2
    return TaskData(train, val, test, objective="classify", num_outputs=NUM_CLASSES, input_size=cfg.channels,
                    seq_len=T, info={"source": source, "train": len(train), "val": len(val) if val else 0,
                                     "test": len(test), "seq_len": T, "channels": cfg.channels,
                                     "permute": cfg.permute})


def _cifar10_arrays(data_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """CIFAR-10 train and test images (N, 32, 32, 3) uint8 and labels via
    :func:`studies.cifar.load_cifar10_splits` (``data_dir`` None → ``$SOENSIM_DATA_DIR``),
    kept in memory per process so that a grid run in one process reads them once. A source
    with other than :data:`NUM_CLASSES` classes is refused here, before any training."""
    root = data_dir or os.environ.get(cifar.DATA_ENV)
    return _load_cifar10_cached(str(Path(root).resolve()) if root else None)


@functools.lru_cache(maxsize=2)
def _load_cifar10_cached(root: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    both = cifar.load_cifar10_splits(root)
    classes = both["train"].info["classes"]
    if len(classes) != NUM_CLASSES:
        raise DataError(f"{both['train'].info['source']}: {len(classes)} classes ({', '.join(map(str, classes))}); "
                        f"the s-CIFAR study needs the {NUM_CLASSES} CIFAR-10 classes")
    (tr_x, tr_y), (te_x, te_y) = both["train"], both["test"]
    return tr_x, tr_y, te_x, te_y, f"CIFAR-10 from {root or './data'}"


# --------------------------------------------------------------------------- report
def report(sdir: str | os.PathLike) -> dict[str, Path | None]:
    """Figures of Malandain 2026 (Figs. 1–2) plus W_hz growth, gate histograms, spike counts, and the
    baseline/ablated pairs (``pairs.md``, the gap against the hardware limit: :mod:`studies.ablation_pairs`)."""
    sdir = Path(sdir)
    return {
        "test_accuracy": plots.curves(sdir, "test_acc", "test_accuracy.png", ylabel="test accuracy",
                                      title="s-CIFAR test accuracy (Malandain 2026, Fig. 1)"),
        "train_loss": plots.curves(sdir, "train_loss", "train_loss.png", ylabel="training loss (epoch mean)",
                                   title="training loss (Malandain 2026, Fig. 2)"),
        "train_loss_steps": plots.curves(sdir, "loss", "train_loss_steps.png", source="steps", smooth=5,
                                         ylabel="training loss (sampled steps)", title="training loss per step"),
        "w_hz_norm": plots.curves(sdir, "w_hz_norm", "w_hz_norm.png", ylabel="‖W_hz‖_F",
                                  title="update-gate recurrent weight norm"),
        "update_bias": plots.curves(sdir, "b_z_mean", "update_bias.png", ylabel="mean b_z (b_ih + b_hh)",
                                    title="effective update-gate bias"),
        "gate_histograms": plots.gate_histograms(sdir),
        "loss_spikes": plots.bars(sdir, "spikes", "loss_spikes.png", ylabel="loss spikes",
                                  title="loss spikes (loss > k × running median)"),
        **ablation_pairs.report(sdir),
    }


__all__ = ["DESCRIPTION", "NAME", "PRESETS", "build", "fake_images", "image_task", "notes", "report",
           "row_names", "runs", "image_sequences", "split_indices"]
