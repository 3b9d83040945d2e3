"""Datasets for the studies: CIFAR-10 (official and image-folder formats), scikit-learn digits,
image → sequence conversion, stratified splits and deterministic in-memory batch loaders.

Where CIFAR-10 is looked for
    :func:`load_cifar10` looks in ``data_dir``, else ``$SOENSIM_DATA_DIR``, else
    :data:`DEFAULT_DATA_DIR`, for (first match wins):

    1. ``cifar-10-batches-py/`` — the official python release, extracted (or ``data_dir`` is
       that folder);
    2. ``cifar-10-python.tar.gz`` — the official archive;
    3. ``train/<class>/*.jpg|png`` and ``test/<class>/...`` — an image-folder tree;
    4. ``*.tar``, ``*.tar.gz``, ``*.tgz`` holding either layout (names containing "cifar"
       first, e.g. ``cifar10-jpeg.tar.gz``). ``data_dir`` may also be such a file.

    If nothing is found the official archive is downloaded into that folder (md5-checked,
    written atomically) unless ``download=False``; if that fails too, a
    :class:`FileNotFoundError` names the folder, the accepted formats and how to point at
    data (``--data-dir`` or ``$SOENSIM_DATA_DIR``).

Labels
    Official batches carry their labels. In an image folder the classes are sorted
    alphabetically; for CIFAR-10's class names that is the official index order
    (:data:`CLASSES`). Within a class, images are ordered by file path.

Pickles
    The official batches are pickles. :class:`RestrictedUnpickler` resolves only the globals
    that NumPy array reconstruction needs (``numpy[._]core.multiarray._reconstruct``,
    ``numpy.ndarray``, ``numpy.dtype``) plus ``_codecs.encode`` — which Python 3 writes for
    every ``bytes`` object at protocol 2 — replaced by a stand-in that only turns a ``str``
    into latin-1 bytes. Any other global raises :class:`UnsafePickleError` naming it, before
    anything is called. The loaded dict is validated (``data`` uint8 (N, 3072), ``labels``
    N ints in 0..9).

Cache
    Decoding the 60,000 JPEGs of the image-folder copy takes seconds, so both splits are
    decoded in one pass and stored as an uncompressed ``.npz`` (uint8 images N×32×32×3,
    int64 labels, the class names), written atomically. Directory: ``cache_dir`` argument,
    else ``$SOENSIM_CACHE``, else ``<data folder>/.soensim-cache`` when writable, else
    ``~/.cache/soensim``. The key is the source's name, size and modification time (for a
    folder: file count, total size and newest mtime) plus a format version; a changed source
    is decoded again. Cache files are read with ``allow_pickle=False``.

Sequences
    :func:`to_sequences` flattens images row-major (left-to-right, top-to-bottom; step
    ``r·W + c`` is pixel (r, c)) into float32 (N, H·W, 1) grayscale — ITU-R BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B`` of the [0, 1]-scaled channels, kept in float (no rounding
    to 8 bits) — or (N, H·W, 3) RGB. ``permute=True`` reorders the positions by the
    bit-reversal permutation (papers/002 App. D). Normalisation is optional: pass ``mean``
    and ``std`` (per channel, e.g. from :func:`sequence_stats` of the training split);
    :func:`make_cifar_loaders` does so with the statistics of its final training split.
"""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import logging
import lzma
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import time
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_ARCHIVE = "cifar-10-python.tar.gz"
OFFICIAL_DIR = "cifar-10-batches-py"
DATA_ENV, CACHE_ENV = "SOENSIM_DATA_DIR", "SOENSIM_CACHE"
CACHE_SUBDIR = ".soensim-cache"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "soensim" / "data"
DOWNLOAD_TIMEOUT = 15.0  # seconds per socket operation
CACHE_VERSION = 1
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
IMAGE_SHAPE = (32, 32, 3)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
FORMATS = (f"{OFFICIAL_DIR}/ (official python release, extracted)",
           f"{OFFICIAL_ARCHIVE} (official archive, md5 {OFFICIAL_MD5})",
           "train/<class>/*.jpg|png + test/<class>/*.jpg|png (image-folder tree)",
           "*.tar / *.tar.gz / *.tgz holding either layout (e.g. cifar10-jpeg.tar.gz)")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
SPLITS = ("train", "test")


# =========================================================================== errors
class DataError(ValueError):
    """A data file is corrupt or not in the expected format; the message names the file."""


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle asked for a global outside :attr:`RestrictedUnpickler.ALLOWED`."""


# =========================================================================== official pickles
def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` in pickles: only ``str`` → latin-1 ``bytes``."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError("refusing _codecs.encode other than str → latin-1 bytes "
                                f"(got {type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy ≥ 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the official CIFAR-10 batches: NumPy arrays and plain containers only.

    ``find_class`` returns the objects below and raises :class:`UnsafePickleError` naming any
    other global — so ``os.system``, ``builtins.eval``, ``subprocess.*`` and the like are never
    resolved, let alone called.
    """

    ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),   # written by NumPy 1.x (the official files)
        ("numpy._core.multiarray", "_reconstruct"),  # written by NumPy 2.x
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python 3 bytes at protocol ≤ 2; see _latin1_encode
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in self.ALLOWED))
            raise UnsafePickleError(f"refusing to load global {module}.{name}: a CIFAR-10 batch needs only "
                                    f"{allowed}")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            return _latin1_encode
        return np.ndarray if name == "ndarray" else np.dtype

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a persistent id: CIFAR-10 batches have none")


def restricted_loads(raw: bytes) -> Any:
    """Unpickle ``raw`` with :class:`RestrictedUnpickler` (Python-2 strings stay ``bytes``)."""
    return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()


def load_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one official batch file: (images (N, 32, 32, 3) uint8, labels (N,) int64).

    ``source`` names the file in error messages. The pickle must be a dict with keys
    ``data`` (uint8 (N, 3072): 1024 red, 1024 green, 1024 blue values per image, each plane
    row-major) and ``labels`` (N ints in 0..9); keys may be ``bytes`` or ``str``.
    """
    try:
        obj = restricted_loads(raw)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except Exception as exc:  # truncated, not a pickle, or a pickle of something else
        raise DataError(f"{source}: not a CIFAR-10 python batch (expected a pickled dict with 'data' "
                        f"and 'labels'): {type(exc).__name__}: {exc}") from exc
    return _check_batch(obj, source)


def _check_batch(obj: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a dict with 'data' and 'labels'; got {type(obj).__name__}")
    d = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        raise DataError(f"{source}: missing key(s) {missing}; a CIFAR-10 batch has 'data' and 'labels' "
                        f"(found {sorted(map(str, d))})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, 3072); got {got}")
    try:
        labels = np.asarray(d["labels"])
    except Exception as exc:
        raise DataError(f"{source}: 'labels' must be N ints in 0..9 ({exc})") from exc
    n = data.shape[0]
    if labels.shape != (n,) or (n and labels.dtype.kind not in "iu") or (n and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{source}: 'labels' must be N = {n} ints in 0..9; got {labels.dtype} of shape "
                        f"{labels.shape}" + (f", range {labels.min()}..{labels.max()}"
                                             if labels.size and labels.dtype.kind in "iuf" else ""))
    images = np.ascontiguousarray(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


# =========================================================================== tar archives
@dataclasses.dataclass
class TarContents:
    """Every regular file's name (in archive order) and the bytes of the wanted ones."""

    names: list[str]
    files: list[tuple[str, bytes]]


class _Unsupported(Exception):
    """A tar feature the fast reader leaves to :mod:`tarfile`."""


def _open_compressed(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b":
        raw: Any = gzip.open(path, "rb")
    elif magic[:3] == b"BZh":
        raw = bz2.open(path, "rb")
    elif magic == b"\xfd7zXZ\x00":
        raw = lzma.open(path, "rb")
    else:
        raw = open(path, "rb")
    return io.BufferedReader(raw, 1 << 20)


def _read_exact(fh: io.BufferedIOBase, n: int) -> bytes:
    b = fh.read(n)
    if len(b) != n:
        raise EOFError(f"archive ends inside a member ({len(b)} of {n} bytes)")
    return b


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:
        raise _Unsupported("base-256 number")
    s = field.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def _pax_records(body: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(body) and body[pos:pos + 1] not in (b"", b"\0"):
        sp = body.index(b" ", pos)
        length = int(body[pos:sp])
        key, _, value = body[sp + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _read_tar_fast(path: Path, want: Callable[[str], bool]) -> TarContents:
    """Single pass over a (compressed) ustar/pax/GNU tar without :mod:`tarfile`'s per-member
    cost (~60 µs each, half of the whole read for 60k small JPEGs). Raises
    :class:`_Unsupported` for sparse files, global pax headers, base-256 sizes or a bad
    header checksum; the caller then re-reads with :mod:`tarfile`."""
    names: list[str] = []
    files: list[tuple[str, bytes]] = []
    pending: dict[str, str] = {}
    with _open_compressed(path) as fh:
        while True:
            hdr = fh.read(512)
            if len(hdr) == 0:
                break  # no end-of-archive blocks: accepted, as tarfile does
            if len(hdr) < 512:
                raise EOFError("archive ends inside a header")
            if hdr.count(0) == 512:
                break
            chk = _octal(hdr[148:156])
            if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                raise _Unsupported("header checksum")
            typ = hdr[156:157]
            name = hdr[:100].split(b"\0", 1)[0]
            if hdr[257:265] == b"ustar\x0000":  # POSIX ustar; GNU headers keep other fields there
                prefix = hdr[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            size = _octal(hdr[124:136])
            if typ in (b"x", b"L", b"K"):
                body = _read_exact(fh, (size + 511) & ~511)[:size]
                if typ == b"x":
                    pending.update(_pax_records(body))
                elif typ == b"L":
                    pending["path"] = body.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            if typ not in (b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"):
                raise _Unsupported(f"member type {typ!r}")
            text = pending.pop("path", None) or name.decode("utf-8", "surrogateescape")
            if "size" in pending:
                size = int(pending.pop("size"))
            pending.clear()
            if typ == b"\0" and text.endswith("/"):
                typ = b"5"  # a V7 directory
            if typ not in (b"0", b"\0", b"7"):
                size = 0  # links, devices, directories, fifos carry no data (as in tarfile)
            padded = (size + 511) & ~511
            if typ in (b"0", b"\0", b"7"):
                names.append(text)
                if want(text):
                    files.append((text, _read_exact(fh, padded)[:size]))
                    continue
            while padded:  # skip the body
                chunk = fh.read(min(padded, 1 << 20))
                if not chunk:
                    raise EOFError("archive ends inside a member")
                padded -= len(chunk)
    return TarContents(names, files)


def _read_tar_slow(path: Path, want: Callable[[str], bool]) -> TarContents:
    names: list[str] = []
    files: list[tuple[str, bytes]] = []
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if member.isfile():
                names.append(member.name)
                if want(member.name):
                    fh = tar.extractfile(member)
                    files.append((member.name, fh.read() if fh is not None else b""))
    return TarContents(names, files)


def read_tar(path: str | os.PathLike, want: Callable[[str], bool] = lambda name: True,
             expected: str = "a tar archive") -> TarContents:
    """One pass over a tar (plain, gzip, bzip2 or xz): all regular-file names, and the bytes
    of those for which ``want(name)`` is true. Corrupt or truncated archives raise
    :class:`DataError` naming ``path`` and ``expected``."""
    path = Path(path)
    try:
        try:
            return _read_tar_fast(path, want)
        except _Unsupported as why:
            log.debug("%s: %s; reading with tarfile", path, why)
            return _read_tar_slow(path, want)
    except FileNotFoundError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated archive, expected {expected} "
                        f"({type(exc).__name__}: {exc})") from exc


# =========================================================================== image decoding
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_fast_jpeg_ok = True


def _jpeg_frame(raw: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's frame header, walking the marker segments."""
    if raw[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(raw)
    while i + 4 <= n:
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if marker in _SOF:
            if i + 10 > n:
                return None
            return (int.from_bytes(raw[i + 5:i + 7], "big"), int.from_bytes(raw[i + 7:i + 9], "big"), raw[i + 9])
        i += 2 + int.from_bytes(raw[i + 2:i + 4], "big")
    return None


def _decode_jpeg_fast(raw: bytes, shape: tuple[int, int, int]) -> np.ndarray | None:
    """Pillow's own JPEG decoder run straight into a preallocated RGB image, skipping the
    file-object and plugin machinery of ``Image.open`` (about 3× faster for 32×32 images).
    Only for 3-component JPEGs of the expected size, where ``Image.open`` would use exactly
    this decoder and raw mode; None whenever anything differs (the caller then uses
    ``Image.open``)."""
    global _fast_jpeg_ok
    if not _fast_jpeg_ok:
        return None
    frame = _jpeg_frame(raw)
    if frame is None or frame != (shape[0], shape[1], 3):
        return None
    from PIL import Image

    try:
        decoder = Image._getdecoder("RGB", "jpeg", ("RGB", ""))
        im = Image.new("RGB", (shape[1], shape[0]))
        decoder.setimage(im.im, (0, 0, shape[1], shape[0]))
        try:
            consumed, err = decoder.decode(raw)
        finally:
            decoder.cleanup()
    except (AttributeError, TypeError):  # Pillow's internals changed: use the public path from now on
        _fast_jpeg_ok = False
        return None
    except Exception:
        return None
    if consumed >= 0 or err < 0:  # needs more data (truncated) or failed
        return None
    return np.asarray(im)


def decode_image(raw: bytes, source: str, shape: tuple[int, int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, BMP) to uint8 RGB of ``shape``; errors name ``source``."""
    arr = _decode_jpeg_fast(raw, shape)
    if arr is not None:
        return arr
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"{source}: not a readable image ({type(exc).__name__}: {exc})") from exc
    if arr.shape != shape:
        raise DataError(f"{source}: expected a {shape[1]}x{shape[0]} RGB image; got shape {arr.shape}")
    return arr


# =========================================================================== readers
@dataclasses.dataclass
class Decoded:
    """Both splits of a source: ``splits[split] = (images (N, 32, 32, 3) uint8, labels (N,) int64)``."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: tuple[str, ...]


def _official(found: dict[str, tuple[np.ndarray, np.ndarray]], source: Path) -> Decoded:
    missing = [w for w in TRAIN_BATCHES + TEST_BATCHES if w not in found]
    if missing:
        raise DataError(f"{source}: missing official batch file(s) {missing}; expected "
                        f"{', '.join(TRAIN_BATCHES + TEST_BATCHES)}")
    splits = {}
    for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        parts = [found[w] for w in names]
        splits[split] = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return Decoded(splits, CLASSES)


def read_official_dir(folder: str | os.PathLike) -> Decoded:
    """The extracted official release (``cifar-10-batches-py/``)."""
    folder = Path(folder)
    found = {}
    for w in TRAIN_BATCHES + TEST_BATCHES:
        f = folder / w
        if f.is_file():
            found[w] = load_batch(f.read_bytes(), str(f))
    return _official(found, folder)


def read_official_archive(path: str | os.PathLike) -> Decoded:
    """The official ``cifar-10-python.tar.gz`` (read in one pass, nothing extracted to disk)."""
    path = Path(path)
    wanted = set(TRAIN_BATCHES + TEST_BATCHES)
    tar = read_tar(path, lambda n: n.rsplit("/", 1)[-1] in wanted,
                   expected=f"the official CIFAR-10 archive ({OFFICIAL_DIR}/data_batch_1..5, test_batch)")
    found = {name.rsplit("/", 1)[-1]: load_batch(raw, f"{path}:{name}") for name, raw in tar.files}
    return _official(found, path)


def _split_class(name: str) -> tuple[str, str] | None:
    """(split, class) of an image path ``.../{train|test}/<class>/<file>``, else None."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-1].startswith(".") or "__MACOSX" in parts:
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-3], parts[-2]


def _assemble(items: Sequence[tuple[str, str, str, bytes]], source: str) -> Decoded:
    """Decode (split, class, name, bytes) items into label-sorted arrays."""
    classes = tuple(sorted({c for _, c, _, _ in items}))
    splits = {}
    for split in SPLITS:
        mine = sorted((classes.index(c), name, raw) for s, c, name, raw in items if s == split)
        if not mine:
            raise DataError(f"{source}: no images under {split}/<class>/ (expected "
                            f"{split}/<class>/*{'|'.join(IMAGE_SUFFIXES)})")
        images = np.empty((len(mine),) + IMAGE_SHAPE, dtype=np.uint8)
        for i, (_, name, raw) in enumerate(mine):
            images[i] = decode_image(raw, f"{source}:{name}")
        splits[split] = images, np.fromiter((lab for lab, _, _ in mine), dtype=np.int64, count=len(mine))
    return Decoded(splits, classes)


def read_image_folder(root: str | os.PathLike) -> Decoded:
    """An image-folder tree ``root/{train,test}/<class>/*.jpg|png``."""
    root = Path(root)
    items = []
    for split in SPLITS:
        base = root / split
        if not base.is_dir():
            raise DataError(f"{root}: no {split}/ folder (expected train/<class>/*.jpg|png and test/<class>/...)")
        for cdir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(cdir.iterdir()):
                if _split_class(f"{split}/{cdir.name}/{f.name}") and f.is_file():
                    items.append((split, cdir.name, f"{split}/{cdir.name}/{f.name}", f.read_bytes()))
    return _assemble(items, str(root))


def read_image_archive(path: str | os.PathLike) -> Decoded:
    """A tar(.gz) holding ``[prefix/]{train,test}/<class>/*.jpg|png``, read in one pass; an
    official archive under another name is recognised and read as such."""
    path = Path(path)
    official = set(TRAIN_BATCHES + TEST_BATCHES)
    base = lambda n: n.rsplit("/", 1)[-1]  # noqa: E731
    tar = read_tar(path, lambda n: _split_class(n) is not None or base(n) in official,
                   expected="a tar of train/<class>/*.jpg|png and test/<class>/... images")
    batches = {base(n): raw for n, raw in tar.files if base(n) in official}
    if batches and not any(_split_class(n) for n, _ in tar.files):
        return _official({w: load_batch(raw, f"{path}:{w}") for w, raw in batches.items()}, path)
    items = [(*_split_class(name), name, raw) for name, raw in tar.files if _split_class(name)]  # type: ignore[misc]
    if not items:
        raise DataError(f"{path}: no images under train/<class>/ or test/<class>/ "
                        f"(found {len(tar.names)} files, e.g. {tar.names[:3]})")
    return _assemble(items, str(path))


def count_images(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """``{split: {class: count}}`` of an image-folder tree or archive, without decoding."""
    path = Path(path)
    if path.is_dir():
        names = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
    else:
        names = read_tar(path, lambda n: False, expected="an image-folder archive").names
    out: dict[str, dict[str, int]] = {}
    for name in names:
        sc = _split_class(name)
        if sc:
            out.setdefault(sc[0], {}).setdefault(sc[1], 0)
            out[sc[0]][sc[1]] += 1
    return {s: dict(sorted(c.items())) for s, c in out.items()}


#: Source kind → reader (path → :class:`Decoded`).
READERS: dict[str, Callable[[Path], Decoded]] = {
    "official-dir": read_official_dir,
    "official-archive": read_official_archive,
    "folder": read_image_folder,
    "image-archive": read_image_archive,
}


# =========================================================================== finding the data
def _is_archive(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES)


def find_cifar_source(data_dir: str | os.PathLike) -> tuple[str, Path] | None:
    """(kind, path) of the first CIFAR-10 source in ``data_dir`` (see the module docstring), or None.
    ``kind`` is a key of :data:`READERS`."""
    root = Path(data_dir)
    if root.is_file():
        return ("official-archive" if root.name == OFFICIAL_ARCHIVE else "image-archive"), root
    if not root.is_dir():
        return None
    if (root / OFFICIAL_DIR).is_dir():
        return "official-dir", root / OFFICIAL_DIR
    if all((root / w).is_file() for w in ("data_batch_1", "test_batch")):
        return "official-dir", root
    if (root / OFFICIAL_ARCHIVE).is_file():
        return "official-archive", root / OFFICIAL_ARCHIVE
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder", root
    archives = sorted((p for p in root.iterdir() if _is_archive(p)),
                      key=lambda p: ("cifar" not in p.name.lower(), p.name))
    return ("image-archive", archives[0]) if archives else None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$SOENSIM_DATA_DIR``, else :data:`DEFAULT_DATA_DIR`."""
    return Path(data_dir or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser()


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_cifar10(dest_dir: str | os.PathLike, *, url: str | None = None, md5: str | None = None,
                     timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download the official archive into ``dest_dir`` and return its path.

    The file appears only complete and with the published md5 (written to a temporary file
    in the same folder, then renamed); a mismatch raises :class:`DataError`. ``url``/``md5``
    default to :data:`OFFICIAL_URL`/:data:`OFFICIAL_MD5`.
    """
    url, md5 = url or OFFICIAL_URL, md5 or OFFICIAL_MD5
    dest = Path(dest_dir) / OFFICIAL_ARCHIVE
    digest = hashlib.md5()
    print(f"soensim: downloading {url} → {dest}", file=sys.stderr)

    def write(fh: Any) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                digest.update(chunk)
                fh.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(f"{url}: md5 {digest.hexdigest()} differs from the published {md5}; "
                            "the download was discarded")

    _atomic_write(dest, write)
    return dest


download_official = download_cifar10  # earlier name


# =========================================================================== cache
def _signature(kind: str, source: Path) -> str:
    if source.is_file():
        st = source.stat()
        count, size, mtime = 1, st.st_size, st.st_mtime_ns
    else:
        count = size = mtime = 0
        tops = [source / s for s in SPLITS] if kind == "folder" else [source]
        for top in tops:
            for dirpath, _, fnames in os.walk(top):
                for f in fnames:
                    if kind == "official-dir" and f not in TRAIN_BATCHES + TEST_BATCHES:
                        continue
                    st = os.stat(os.path.join(dirpath, f))
                    count, size, mtime = count + 1, size + st.st_size, max(mtime, st.st_mtime_ns)
    return f"cifar10-v{CACHE_VERSION}|{kind}|{source.name}|{count}|{size}|{mtime}"


def _cache_dirs(data_folder: Path, cache_dir: str | os.PathLike | None) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir)]
    if os.environ.get(CACHE_ENV):
        return [Path(os.environ[CACHE_ENV])]
    return [data_folder / CACHE_SUBDIR, Path.home() / ".cache" / "soensim"]


def _cache_name(source: Path, signature: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name)[:60]
    return f"cifar10-{stem}-{hashlib.sha1(signature.encode()).hexdigest()[:16]}.npz"


def _npz_member(path: Path, zf: zipfile.ZipFile, key: str) -> np.ndarray:
    """One array of an uncompressed ``.npz`` read straight from the file with one
    ``np.fromfile`` (``np.load``'s zip stream is several times slower for 150 MB)."""
    info = zf.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(info) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad local header for {key}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if dtype.hasobject or fortran:
            raise ValueError(f"unexpected array layout for {key}")
        count = int(np.prod(shape))
        arr = np.fromfile(fh, dtype=dtype, count=count)
        if arr.size != count:
            raise ValueError(f"{key} is truncated")
        return arr.reshape(shape)


def _read_cache(path: Path, signature: str, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            if str(_npz_member(path, zf, "signature")) != signature:
                return None
            images, labels = _npz_member(path, zf, f"{split}_images"), _npz_member(path, zf, f"{split}_labels")
            classes = tuple(_npz_member(path, zf, "classes").tolist())
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged cache file is ignored and rewritten
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=4)
        return None
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE or labels.shape != images.shape[:1]:
        return None
    return images, labels.astype(np.int64, copy=False), classes


def _write_cache(dirs: list[Path], name: str, signature: str, decoded: Decoded) -> Path | None:
    arrays = {f"{s}_{k}": a for s, (im, lb) in decoded.splits.items() for k, a in (("images", im), ("labels", lb))}
    for d in dirs:
        try:
            _atomic_write(d / name, lambda fh: np.savez(fh, signature=np.array(signature),
                                                        classes=np.array(decoded.classes), **arrays))
            return d / name
        except OSError as exc:
            log.debug("cannot write cache in %s: %s", d, exc)
    warnings.warn(f"could not write the decoded-data cache in any of {[str(d) for d in dirs]}; "
                  f"set ${CACHE_ENV} to a writable folder", stacklevel=4)
    return None


# =========================================================================== loading
class LoadedSplit(tuple):
    """``(images, labels)`` — unpacks like a tuple — plus ``.info``: source, format, classes,
    cache file, ``from_cache`` and the seconds the load took."""

    images: np.ndarray
    labels: np.ndarray
    info: dict[str, Any]

    def __new__(cls, images: np.ndarray, labels: np.ndarray, info: dict[str, Any]) -> "LoadedSplit":
        self = super().__new__(cls, (images, labels))
        self.images, self.labels, self.info = images, labels, info
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.images, self.labels, self.info)


def _not_found(root: Path, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no CIFAR-10 data found in {root}. Accepted formats there: " + "; ".join(FORMATS) + ". "
        f"{reason} Put the data in {root}, or point at the folder that holds it with --data-dir DIR "
        f"or the environment variable {DATA_ENV}=DIR.")


def load_cifar10(data_dir: str | os.PathLike | None = None, split: str = "train", *, download: bool = True,
                 cache: bool = True, cache_dir: str | os.PathLike | None = None) -> LoadedSplit:
    """CIFAR-10 ``split`` ("train" | "test"): images (N, 32, 32, 3) uint8 and labels (N,) int64.

    Looks in ``data_dir`` (else ``$SOENSIM_DATA_DIR``, else :data:`DEFAULT_DATA_DIR`) as the
    module docstring describes; downloads the official archive there when nothing is found
    and ``download`` is true. Both splits are decoded and cached at once, so asking for the
    other split next reads the cache. ``cache=False`` neither reads nor writes the cache.
    Raises :class:`FileNotFoundError` (nothing found), :class:`DataError` (a corrupt or
    malformed file, named in the message), :class:`UnsafePickleError` (a pickle asking for a
    forbidden global).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    return _load(data_dir, (split,), download, cache, cache_dir)[split]


def load_cifar10_splits(data_dir: str | os.PathLike | None = None, *, download: bool = True, cache: bool = True,
                        cache_dir: str | os.PathLike | None = None) -> dict[str, LoadedSplit]:
    """``{"train": ..., "test": ...}`` as :func:`load_cifar10` gives them, decoding at most once
    (even with ``cache=False``)."""
    return _load(data_dir, SPLITS, download, cache, cache_dir)


def _load(data_dir: str | os.PathLike | None, splits: Sequence[str], download: bool, cache: bool,
          cache_dir: str | os.PathLike | None) -> dict[str, LoadedSplit]:
    t0 = time.perf_counter()
    root = resolve_data_dir(data_dir)
    found = find_cifar_source(root)
    if found is None:
        if not download:
            raise _not_found(root, "download=False, so the official archive was not fetched.")
        try:
            root.mkdir(parents=True, exist_ok=True)
            download_cifar10(root)
        except Exception as exc:  # offline, read-only folder, md5 mismatch, ...
            raise _not_found(root, f"Downloading {OFFICIAL_URL} failed ({type(exc).__name__}: {exc}).") from exc
        found = find_cifar_source(root)
        assert found is not None
    kind, source = found
    base: dict[str, Any] = {"source": str(source), "format": kind, "cache": None, "from_cache": False}
    signature = name = None
    dirs: list[Path] = []
    if cache:
        signature = _signature(kind, source)
        name = _cache_name(source, signature)
        dirs = _cache_dirs(root if root.is_dir() else root.parent, cache_dir)
        for d in dirs:
            hits = {}
            for split in splits:
                hit = _read_cache(d / name, signature, split)
                if hit is None:
                    break
                hits[split] = hit
            if len(hits) == len(splits):
                info = {**base, "classes": hits[splits[0]][2], "cache": str(d / name), "from_cache": True,
                        "seconds": time.perf_counter() - t0}
                return {s: LoadedSplit(h[0], h[1], dict(info)) for s, h in hits.items()}
    log.info("decoding CIFAR-10 from %s (%s)", source, kind)
    decoded = READERS[kind](source)
    if cache and name is not None and signature is not None:
        written = _write_cache(dirs, name, signature, decoded)
        base["cache"] = str(written) if written else None
    info = {**base, "classes": decoded.classes, "seconds": time.perf_counter() - t0}
    return {s: LoadedSplit(*decoded.splits[s], dict(info)) for s in splits}


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits (bundled, no download): images (1797, 8, 8) float32
    in [0, 1] (pixel / 16) and labels (1797,) int64."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


# =========================================================================== sequences
def bit_reversal_permutation(n: int) -> np.ndarray:
    """``p[i]`` = the integer whose log2(n)-bit binary form is i's reversed (papers/002
    App. D, "permuted" pixel tasks). ``n`` must be a power of two; ``p`` is then an
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
                 mean: Any = None, std: Any = None, chunk: int = 4096) -> np.ndarray | Tensor:
    """Images → float32 sequences, row-major (step ``r·W + c`` is pixel (r, c)).

    ``images``: (N, H, W, 3) RGB or (N, H, W[, 1]) single-channel, uint8 (scaled by 1/255) or
    float already in [0, 1]. ``mode="gray"`` → (N, H·W, 1): BT.601 luma of RGB input
    (:data:`LUMA`), the channel itself for single-channel input; ``mode="rgb"`` → (N, H·W, 3).
    ``permute``: reorder the H·W positions by :func:`bit_reversal_permutation` (H·W a power
    of two). ``mean``/``std`` (scalars or per-channel): return ``(x - mean) / std``. A torch
    tensor in gives a tensor out. Works in chunks of ``chunk`` images to bound memory.
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
    out_c = 1 if mode == "gray" else 3
    perm = bit_reversal_permutation(h * w) if permute else None
    m = None if mean is None else np.asarray(mean, dtype=np.float32).reshape(-1)
    s = None if std is None else np.asarray(std, dtype=np.float32).reshape(-1)
    out = np.empty((n, h * w, out_c), dtype=np.float32)
    for i in range(0, n, chunk):
        x = arr[i:i + chunk].astype(np.float32) * np.float32(scale)
        if mode == "gray" and c == 3:
            x = x @ LUMA
        x = x.reshape(len(x), h * w, out_c)
        if perm is not None:
            x = x[:, perm]
        if m is not None:
            x -= m
        if s is not None:
            x /= s
        out[i:i + chunk] = x
    return torch.from_numpy(out) if as_tensor else out


def sequence_stats(seqs: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float32, floored at 1e-6) of (N, T, C) sequences,
    accumulated in float64."""
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
    for c, k in zip(classes, takes):
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
    for c, k in zip(classes, takes):
        out.append(rng.permutation(np.flatnonzero(y == c))[:k])
    return np.sort(np.concatenate(out))


# =========================================================================== loaders
class SequenceDataset:
    """In-memory sequences ``x`` (N, T, C) float32 and labels ``y`` (N,) int64 (torch tensors)."""

    def __init__(self, x: np.ndarray | Tensor, y: np.ndarray | Tensor):
        self.x = torch.as_tensor(x)
        self.y = torch.as_tensor(y).long()
        if self.x.dim() != 3 or self.y.shape != self.x.shape[:1]:
            raise ValueError(f"x must be (N, T, C) and y (N,); got {tuple(self.x.shape)} and {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: Any) -> tuple[Tensor, Tensor]:
        return self.x[idx], self.y[idx]

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> "BatchLoader":
        return BatchLoader(self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)


class BatchLoader:
    """Deterministic mini-batches of a :class:`SequenceDataset` (no worker processes).

    With ``shuffle``, epoch ``e`` visits the examples in ``torch.randperm`` order from a
    ``torch.Generator`` seeded with a mix of ``seed`` and ``e``: each ``iter()`` uses the
    current :attr:`epoch` and advances it; :meth:`set_epoch` resumes. Without ``shuffle``
    the order is the dataset's.
    """

    def __init__(self, dataset: SequenceDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1; got {batch_size}")
        self.dataset, self.batch_size, self.shuffle, self.seed, self.drop_last = \
            dataset, batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2 ** 63))
        return torch.randperm(n, generator=g)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.order(self.epoch)
        self.epoch += 1
        return self._batches(order)

    def _batches(self, order: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.dataset.x[idx], self.dataset.y[idx]


@dataclasses.dataclass
class Loaders:
    """Train/validation/test loaders and what they hold (``info``: sizes, source, statistics)."""

    train: BatchLoader
    val: BatchLoader | None
    test: BatchLoader
    info: dict[str, Any]


def _finish(parts: dict[str, tuple[np.ndarray, np.ndarray]], mode: str, permute: bool, normalize: bool,
            batch_size: int, eval_batch_size: int | None, seed: int, info: dict[str, Any]) -> Loaders:
    seqs = {k: to_sequences(x, mode, permute) for k, (x, _) in parts.items()}
    if normalize:
        mean, std = sequence_stats(seqs["train"])
        for k in seqs:
            seqs[k] -= mean
            seqs[k] /= std
        info.update(mean=mean.tolist(), std=std.tolist())
    ds = {k: SequenceDataset(seqs[k], parts[k][1]) for k in parts}
    eb = eval_batch_size or max(batch_size, 500)
    val = ds["val"].loader(eb) if len(ds["val"]) else None
    info.update({k: len(v) for k, v in ds.items()}, seq_len=ds["train"].x.shape[1],
                input_size=ds["train"].x.shape[2], mode=mode, permute=permute, normalize=normalize)
    return Loaders(ds["train"].loader(batch_size, shuffle=True, seed=seed), val, ds["test"].loader(eb), info)


def make_cifar_loaders(data_dir: str | os.PathLike | None = None, mode: str = "gray", *, val_fraction: float = 0.1,
                       subset: int | float | None = None, eval_subset: int | float | None = None,
                       batch_size: int = 50, eval_batch_size: int | None = None, seed: int = 0, split_seed: int = 0,
                       permute: bool = False, normalize: bool = True, download: bool = True,
                       cache_dir: str | os.PathLike | None = None) -> Loaders:
    """s-CIFAR loaders: sequences (B, 1024, 1) (``mode="gray"``, papers/001) or (B, 1024, 3)
    (``"rgb"``, papers/002), labels (B,).

    The validation set is a stratified ``val_fraction`` of the official training set drawn
    with ``split_seed`` (so it does not change with ``seed`` or ``subset``); ``subset`` then
    keeps a stratified per-class count (int) or fraction (float) of the remaining training
    examples, and ``eval_subset`` of the validation and test sets, both with ``split_seed``.
    ``normalize``: standardise every split with the per-channel mean/std of the final
    training split (recorded in ``info``). The training loader shuffles with ``seed``
    (see :class:`BatchLoader`); validation and test are in order.
    """
    both = load_cifar10_splits(data_dir, download=download, cache_dir=cache_dir)
    tr, te = both["train"], both["test"]
    train_idx, val_idx = stratified_split(tr.labels, val_fraction, split_seed)
    test_idx = np.arange(len(te.labels))
    if subset is not None:
        train_idx = train_idx[stratified_subset(tr.labels[train_idx], subset, split_seed)]
    if eval_subset is not None:
        val_idx = val_idx[stratified_subset(tr.labels[val_idx], eval_subset, split_seed)] if len(val_idx) else val_idx
        test_idx = test_idx[stratified_subset(te.labels, eval_subset, split_seed)]
    parts = {"train": (tr.images[train_idx], tr.labels[train_idx]), "val": (tr.images[val_idx], tr.labels[val_idx]),
             "test": (te.images[test_idx], te.labels[test_idx])}
    info = {"dataset": "cifar10", "source": tr.info["source"], "format": tr.info["format"],
            "classes": list(tr.info["classes"]), "split_seed": split_seed, "seed": seed}
    return _finish(parts, mode, permute, normalize, batch_size, eval_batch_size, seed, info)


def make_digits_loaders(*, test_fraction: float = 0.25, val_fraction: float = 0.1,
                        subset: int | float | None = None, batch_size: int = 32, eval_batch_size: int | None = None,
                        seed: int = 0, split_seed: int = 0, permute: bool = False,
                        normalize: bool = True) -> Loaders:
    """scikit-learn digits as 64-step sequences (B, 64, 1) (8×8, row-major, pixel/16 in [0, 1])
    for the low-data SST study.

    A stratified test set (``test_fraction``, ``split_seed``) and validation set
    (``val_fraction`` of the rest, ``split_seed + 1``) are carved out first; ``subset`` keeps
    a per-class count or fraction of the remaining training pool (``split_seed``). The other
    arguments are as in :func:`make_cifar_loaders`.
    """
    images, labels = load_digits()
    rest, test_idx = stratified_split(labels, test_fraction, split_seed)
    pool_rel, val_rel = stratified_split(labels[rest], val_fraction, split_seed + 1)
    train_idx, val_idx = rest[pool_rel], rest[val_rel]
    if subset is not None:
        train_idx = train_idx[stratified_subset(labels[train_idx], subset, split_seed)]
    parts = {k: (images[i], labels[i]) for k, i in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    info = {"dataset": "digits", "source": "sklearn.datasets.load_digits", "classes": list(range(10)),
            "split_seed": split_seed, "seed": seed}
    return _finish(parts, "gray", permute, normalize, batch_size, eval_batch_size, seed, info)


__all__ = [
    "BatchLoader", "CLASSES", "DATA_ENV", "CACHE_ENV", "DEFAULT_DATA_DIR", "DataError", "Decoded", "FORMATS",
    "LUMA", "LoadedSplit", "Loaders", "OFFICIAL_ARCHIVE", "OFFICIAL_DIR", "OFFICIAL_MD5", "OFFICIAL_URL", "READERS",
    "RestrictedUnpickler", "SequenceDataset", "TEST_BATCHES", "TRAIN_BATCHES", "TarContents", "UnsafePickleError",
    "bit_reversal_permutation", "count_images", "decode_image", "download_cifar10", "download_official",
    "find_cifar_source", "load_batch", "load_cifar10", "load_cifar10_splits", "load_digits", "make_cifar_loaders",
    "make_digits_loaders",
    "read_image_archive", "read_image_folder", "read_official_archive", "read_official_dir", "read_tar",
    "resolve_data_dir", "restricted_loads", "sequence_stats", "stratified_split", "stratified_subset",
    "to_sequences",
]
