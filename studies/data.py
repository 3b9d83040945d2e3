"""Datasets: CIFAR-10 in its official and image-folder formats, sklearn digits, sequentialisation.

CIFAR-10 is read from, in this order of preference, inside ``data_dir`` (or
``$SOENSIM_DATA_DIR``):

1. ``cifar-10-batches-py/`` — the official python release, extracted;
2. ``cifar-10-python.tar.gz`` — the official archive (md5 ``c58f3010…``);
3. an image-folder tree ``train/<class>/*.jpg|png`` + ``test/<class>/…``;
4. an image-folder archive ``*.tar`` / ``*.tar.gz`` / ``*.tgz`` with that layout
   (e.g. ``cifar10-jpeg.tar.gz``).

Classes of an image folder are sorted alphabetically, which gives the official label
indices. Pickles are read by :class:`RestrictedUnpickler`, which builds NumPy arrays and
plain containers and refuses every other global. Decoded arrays are cached as ``.npz``
(atomically) in ``$SOENSIM_CACHE`` or ``~/.cache/soensim``; the cache key holds
the source's path, size and modification time; both splits are decoded in one pass.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_ARCHIVE = "cifar-10-python.tar.gz"
OFFICIAL_DIR = "cifar-10-batches-py"
DATA_ENV, CACHE_ENV = "SOENSIM_DATA_DIR", "SOENSIM_CACHE"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
FORMATS = (f"{OFFICIAL_DIR}/ (official, extracted)", f"{OFFICIAL_ARCHIVE} (official archive)",
           "train/<class>/*.jpg|png and test/<class>/... (image folder)",
           "*.tar / *.tar.gz / *.tgz holding that image-folder layout")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


class DataError(ValueError):
    """A data file is corrupt or not in the expected format."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the official CIFAR batches: NumPy arrays and builtins containers only."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: CIFAR batches hold only arrays, "
                                     "lists and strings")


def load_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one official batch: (images (N, 32, 32, 3) uint8, labels (N,) int64)."""
    try:
        d = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{source}: {exc}") from exc
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(f"{source}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(d, dict):
        raise DataError(f"{source}: expected a dict with 'data' and 'labels'; got {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, 3072)")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"{source}: 'labels' must be N ints in 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _official_splits(found: dict[str, tuple[np.ndarray, np.ndarray]], source: Path) -> dict:
    missing = [w for w in TRAIN_BATCHES + TEST_BATCHES if w not in found]
    if missing:
        raise DataError(f"{source}: missing official batch files {missing}")
    out = {}
    for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        parts = [found[w] for w in names]
        out[split] = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return out


def _read_official_dir(folder: Path) -> dict:
    return _official_splits({f.name: load_batch(f.read_bytes(), str(f)) for f in folder.iterdir()
                             if f.name in TRAIN_BATCHES + TEST_BATCHES}, folder)


def _read_official_archive(path: Path) -> dict:
    found = {}
    for name, raw in _tar_members(path):
        base = name.rsplit("/", 1)[-1]
        if base in TRAIN_BATCHES + TEST_BATCHES:
            found[base] = load_batch(raw, f"{path}:{name}")
    return _official_splits(found, path)


def _tar_members(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    fh = tar.extractfile(member)
                    if fh is not None:
                        yield member.name, fh.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated archive, expected a tar(.gz) of CIFAR-10 ({exc})") from exc


def _decode_image(raw: bytes, source: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"{source}: not a readable image ({exc})") from exc
    if arr.shape != (32, 32, 3):
        raise DataError(f"{source}: expected a 32x32 RGB image; got shape {arr.shape}")
    return arr


def _class_of(rel: str, split: str) -> str | None:
    parts = rel.replace("\\", "/").split("/")
    for i in range(len(parts) - 2):
        if parts[i] == split and parts[-1].lower().endswith(IMAGE_SUFFIXES):
            return parts[i + 1]
    return None


Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def _collect(items: Iterator[tuple[str, bytes]], source: str) -> Splits:
    by_split: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {"train": {}, "test": {}}
    for name, raw in items:
        for split, by_class in by_split.items():
            cls = _class_of(name, split)
            if cls is not None:
                by_class.setdefault(cls, []).append((name, _decode_image(raw, f"{source}:{name}")))
    out: Splits = {}
    for split, by_class in by_split.items():
        if not by_class:
            raise DataError(f"{source}: no images under {split}/<class>/ (expected .jpg/.png files)")
        images, labels = [], []
        for label, cls in enumerate(sorted(by_class)):
            for _, arr in sorted(by_class[cls], key=lambda t: t[0]):
                images.append(arr)
                labels.append(label)
        out[split] = np.stack(images), np.asarray(labels, dtype=np.int64)
    return out


def _read_folder(root: Path) -> Splits:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return _collect(((str(p.relative_to(root)), p.read_bytes()) for p in files), str(root))


def _read_image_archive(path: Path) -> Splits:
    return _collect(_tar_members(path), str(path))


def find_cifar_source(data_dir: str | os.PathLike) -> tuple[str, Path] | None:
    """(format, path) of the first CIFAR-10 source found in ``data_dir``, or None."""
    root = Path(data_dir)
    if (root / OFFICIAL_DIR).is_dir():
        return "official-dir", root / OFFICIAL_DIR
    if root.name == OFFICIAL_DIR and (root / "test_batch").exists():
        return "official-dir", root
    if (root / OFFICIAL_ARCHIVE).is_file():
        return "official-archive", root / OFFICIAL_ARCHIVE
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder", root
    for pattern in ("*.tar.gz", "*.tgz", "*.tar"):
        for p in sorted(root.glob(pattern)):
            if p.name != OFFICIAL_ARCHIVE:
                return "image-archive", p
    return None


READERS = {
    "official-dir": _read_official_dir,
    "official-archive": _read_official_archive,
    "folder": _read_folder,
    "image-archive": _read_image_archive,
}


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$SOENSIM_CACHE`` or ``~/.cache/soensim``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "soensim")


def _cache_path(kind: str, source: Path) -> Path:
    st = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{kind}".encode()).hexdigest()[:16]
    return cache_dir() / f"cifar10-{key}.npz"


def download_official(data_dir: str | os.PathLike, timeout: float = 20.0) -> Path:
    """Download the official archive into ``data_dir`` (md5-verified, atomic)."""
    dest = Path(data_dir) / OFFICIAL_ARCHIVE
    md5 = hashlib.md5()

    def write(fh):
        with urllib.request.urlopen(OFFICIAL_URL, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                md5.update(chunk)
                fh.write(chunk)
        if md5.hexdigest() != OFFICIAL_MD5:
            raise DataError(f"{OFFICIAL_URL}: md5 {md5.hexdigest()} != published {OFFICIAL_MD5}")

    _atomic_write_bytes(dest, write)
    return dest


def load_cifar10(data_dir: str | os.PathLike | None = None, split: str = "train", *, download: bool = True,
                 cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` ("train" | "test") as (images (N, 32, 32, 3) uint8, labels (N,) int64)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    root = Path(data_dir or os.environ.get(DATA_ENV) or Path.cwd() / "data")
    found = find_cifar_source(root) if root.is_dir() else None
    if found is None and download:
        try:
            root.mkdir(parents=True, exist_ok=True)
            download_official(root)
            found = find_cifar_source(root)
        except (OSError, DataError):
            found = None
    if found is None:
        raise FileNotFoundError(
            f"no CIFAR-10 found in {root}. Accepted formats: {'; '.join(FORMATS)}. "
            f"Point at it with --data-dir or ${DATA_ENV}" + ("" if download else " (download=False)"))
    kind, source = found
    cpath = _cache_path(kind, source) if cache else None
    if cpath is not None and cpath.is_file():
        with np.load(cpath) as z:
            return z[f"{split}_images"], z[f"{split}_labels"]
    splits = READERS[kind](source)
    if cpath is not None:
        arrays = {f"{k}_{n}": a for k, (im, lb) in splits.items() for n, a in (("images", im), ("labels", lb))}
        _atomic_write_bytes(cpath, lambda fh: np.savez(fh, **arrays))
    return splits[split]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: (images (1797, 8, 8) float32 in [0, 1], labels int64)."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def to_sequences(images: np.ndarray, mode: str = "gray", permute: bool = False) -> np.ndarray:
    """Images (N, S, S, 3) uint8 → float32 sequences in [0, 1], row-major (left-right, top-bottom).

    ``mode="gray"``: (N, S*S, 1) BT.601 luma; ``"rgb"``: (N, S*S, 3). ``permute`` applies the
    bit-reversal permutation of the pixel positions (S*S must be a power of two).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3); got shape {images.shape}")
    x = images.astype(np.float32) / 255.0
    if mode == "gray":
        x = (x @ LUMA)[..., None]
    elif mode != "rgb":
        raise ValueError(f"mode must be 'gray' or 'rgb'; got {mode!r}")
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return x[:, bit_reversal_permutation(x.shape[1])] if permute else x


def bit_reversal_permutation(n: int) -> np.ndarray:
    """Indices i → reverse of i's log2(n)-bit binary form; an involution (papers/002 pMNIST/pCIFAR)."""
    bits = n.bit_length() - 1
    if n < 1 or 1 << bits != n:
        raise ValueError(f"n must be a power of two; got {n}")
    idx = np.arange(n)
    out = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        out |= ((idx >> b) & 1) << (bits - 1 - b)
    return out


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: (train_idx, val_idx), each class contributing round(fraction·count)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(val_fraction * len(idx)))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Seeded subset with ``per_class`` examples of every class (sorted indices)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if per_class > len(idx):
            raise ValueError(f"per_class must be ≤ {len(idx)} (class {c}); got {per_class}")
        out.append(rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(out))


__all__ = ["CLASSES", "DataError", "FORMATS", "RestrictedUnpickler", "bit_reversal_permutation", "download_official",
           "find_cifar_source", "load_batch", "load_cifar10", "load_digits", "stratified_split", "stratified_subset",
           "to_sequences"]
