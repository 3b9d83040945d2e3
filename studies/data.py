"""Study data as sequences: image → sequence conversion, the one normalisation, stratified
splits, and scikit-learn's digits. (CIFAR-10 on disk: :mod:`studies.cifar`.)

Sequences
    :func:`to_sequences` flattens images row-major (left-to-right, top-to-bottom; step
    ``r·W + c`` is pixel (r, c)) into float32 (N, H·W, 1) grayscale — ITU-R BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B`` of the [0, 1]-scaled channels, kept in float (no rounding
    to 8 bits) — or (N, H·W, 3) RGB, optionally downsampled first by averaging blocks
    (``size``). ``permute=True`` reorders the positions by the bit-reversal permutation
    (the "permuted" pixel tasks of Gu et al. 2020, arXiv:1910.09890, App. D).

Normalisation
    Every study standardises its sequences the same way, :func:`standardize`: per channel,
    ``(x − mean) / std`` with the mean and the *population* standard deviation (divisor N,
    the statistics of the training split itself rather than an estimate for a larger
    population) of all values of the training split (:func:`sequence_stats`, accumulated
    in float64, std floored at 1e-6).

Splits
    :func:`stratified_split` and :func:`stratified_subset`: seeded, class-stratified, with
    largest-remainder rounding of per-class shares.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


# =========================================================================== sequences
def bit_reversal_permutation(n: int) -> np.ndarray:
    """``p[i]`` = the integer whose log2(n)-bit binary form is i's reversed (the "permuted"
    pixel tasks of Gu et al. 2020, arXiv:1910.09890, App. D). ``n`` must be a power of two; ``p`` is then an
    involution (``p[p] == arange(n)``), so reordering by it and undoing it are the same."""
    bits = int(n).bit_length() - 1
    if n < 1 or 1 << bits != n:
        raise ValueError(f"n must be a power of two; got {n}")
    idx = np.arange(n, dtype=np.int64)
    out = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        out |= ((idx >> b) & 1) << (bits - 1 - b)
    return out


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    if images.ndim == 3:
        return images[..., None]
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return images
    raise ValueError(f"images must be (N, H, W, 3), (N, H, W, 1) or (N, H, W); got shape {images.shape}")


def to_sequences(images: np.ndarray | Tensor, mode: str = "gray", permute: bool = False, *,
                 size: int | None = None, chunk: int = 4096) -> np.ndarray | Tensor:
    """Images → float32 sequences, row-major (step ``r·W + c`` is pixel (r, c)).

    ``images``: (N, H, W, 3) RGB or (N, H, W[, 1]) single-channel, uint8 (scaled by 1/255) or
    float already in [0, 1]. ``mode="gray"`` → (N, H·W, 1): BT.601 luma of RGB input
    (:data:`LUMA`), the channel itself for single-channel input; ``mode="rgb"`` → (N, H·W, 3).
    ``size``: first downsample to size × size by averaging (H/size) × (W/size) blocks
    (``torch.nn.functional.avg_pool2d``; size must divide H and W); the sequences are then
    (N, size², C). ``permute``: reorder the positions by :func:`bit_reversal_permutation`
    (their number a power of two). A torch tensor in gives a tensor out. Works in chunks of
    ``chunk`` images to bound memory.
    """
    as_tensor = isinstance(images, Tensor)
    arr = _as_nhwc(images.cpu().numpy() if as_tensor else np.asarray(images))
    if mode not in ("gray", "rgb"):
        raise ValueError(f"mode must be 'gray' or 'rgb'; got {mode!r}")
    if mode == "rgb" and arr.shape[-1] != 3:
        raise ValueError("mode='rgb' needs 3-channel images")
    if arr.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif arr.dtype.kind == "f":
        scale = 1.0
    else:
        raise ValueError(f"images must be uint8 (0..255) or float in [0, 1]; got {arr.dtype}")
    n, h, w, c = arr.shape
    side = (h, w) if size is None else (size, size)
    if size is not None and (size < 1 or h % size or w % size):
        raise ValueError(f"size {size} must divide the image sides {h} and {w}")
    out_c = 1 if mode == "gray" else 3
    perm = bit_reversal_permutation(side[0] * side[1]) if permute else None
    out = np.empty((n, side[0] * side[1], out_c), dtype=np.float32)
    for i in range(0, n, chunk):
        x = arr[i:i + chunk].astype(np.float32) * np.float32(scale)
        if mode == "gray" and c == 3:
            x = x @ LUMA
        x = x.reshape(len(x), h * w, out_c)
        if size is not None and side != (h, w):
            grid = torch.from_numpy(x).reshape(len(x), h, w, out_c).permute(0, 3, 1, 2)
            pooled = torch.nn.functional.avg_pool2d(grid, (h // size, w // size))
            x = pooled.permute(0, 2, 3, 1).reshape(len(x), size * size, out_c).numpy()
        if perm is not None:
            x = x[:, perm]
        out[i:i + chunk] = x
    return torch.from_numpy(out) if as_tensor else out


def sequence_stats(seqs: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population standard deviation (divisor N; float32, floored at
    1e-6) of all values of (N, T, C) sequences, accumulated in float64."""
    x = seqs.cpu().numpy() if isinstance(seqs, Tensor) else np.asarray(seqs)
    c = x.shape[-1]
    total = np.zeros(c)
    sq = np.zeros(c)
    count = 0
    for i in range(0, len(x), 4096):
        part = x[i:i + 4096].reshape(-1, c).astype(np.float64)
        total += part.sum(0)
        sq += (part ** 2).sum(0)
        count += len(part)
    if count == 0:
        raise ValueError("no data to compute statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)



def standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    """The normalisation of every study: ``(x − mean) / std`` per channel for ``train`` and
    each of ``others``, with the mean and population standard deviation of ``train``
    (:func:`sequence_stats`). Sequences are (N, T, C) float tensors; returns contiguous
    tensors in the order given."""
    mean, std = (torch.from_numpy(v) for v in sequence_stats(train))
    return [((x - mean) / std).contiguous() for x in (train, *others)]


# =========================================================================== splits
def _largest_remainder(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Per-class takes proportional to ``counts`` summing to round(fraction · total); each is
    the floor or ceiling of its exact share (ties go to the lower class index)."""
    exact = counts * fraction
    take = np.floor(exact).astype(np.int64)
    rest = int(round(float(counts.sum()) * fraction)) - int(take.sum())
    if rest > 0:
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:rest]] += 1
    return np.minimum(take, counts)


def stratified_split(labels: np.ndarray | Tensor, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, class-stratified split of ``range(len(labels))``: (train_idx, val_idx), sorted int64.

    The validation set holds round(val_fraction · N) examples, each class contributing the
    floor or ceiling of ``val_fraction`` × its count (largest remainders get the ceiling).
    Members are drawn with ``numpy.random.default_rng(seed)``, class by class in label order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    classes, counts = np.unique(y, return_counts=True)
    takes = _largest_remainder(counts, val_fraction)
    rng = np.random.default_rng(seed)
    train, val = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c, k in zip(classes, takes, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_subset(labels: np.ndarray | Tensor, size: int | float, seed: int) -> np.ndarray:
    """Seeded class-stratified subset (sorted int64 indices into ``labels``).

    ``size`` an int: that many examples of every class (at most the smallest class's count);
    a float in (0, 1]: that fraction of every class (largest-remainder rounding, as
    :func:`stratified_split`).
    """
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    classes, counts = np.unique(y, return_counts=True)
    if isinstance(size, (bool, np.bool_)):
        raise TypeError("size must be an int (per class) or a float fraction, not a bool")
    if isinstance(size, (int, np.integer)):
        if size < 0 or (len(counts) and size > counts.min()):
            raise ValueError(f"per_class must be in 0..{counts.min() if len(counts) else 0} "
                             f"(the smallest class); got {size}")
        takes = np.full(len(classes), int(size))
    else:
        if not 0.0 < float(size) <= 1.0:
            raise ValueError(f"a fractional subset must be in (0, 1]; got {size}")
        takes = _largest_remainder(counts, float(size))
    rng = np.random.default_rng(seed)
    out = [np.zeros(0, np.int64)]
    for c, k in zip(classes, takes, strict=True):
        out.append(rng.permutation(np.flatnonzero(y == c))[:k])
    return np.sort(np.concatenate(out))



# =========================================================================== digits
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits (bundled, no download): images (1797, 8, 8) float32
    in [0, 1] (pixel / 16) and labels (1797,) int64."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)




__all__ = ["LUMA", "bit_reversal_permutation", "load_digits", "sequence_stats", "standardize", "stratified_split",
           "stratified_subset", "to_sequences"]
