"""CIFAR-10 on disk: the accepted formats, finding them, download, decoding and the cache.

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
    written atomically; a folder created for it is removed again if the download fails)
    unless ``download=False``; if that fails too, a :class:`FileNotFoundError` names the
    folder, the accepted formats and how to point at data (``--data-dir`` or
    ``$SOENSIM_DATA_DIR``).

Reading
    Archives are read in one pass with :mod:`tarfile` (nothing is extracted to disk);
    images are decoded with Pillow (``Image.open`` on the bytes, JPEG, PNG or BMP only)
    and must be 32×32; the official batches go through :mod:`studies.cifar_batches`.

Labels
    Official batches carry their labels. In an image folder the classes are sorted
    alphabetically; for CIFAR-10's class names that is the official index order
    (:data:`CLASSES`). Within a class, images are ordered by file path.

Cache
    Decoding the 60,000 JPEGs of the image-folder copy takes seconds, so both splits are
    decoded in one pass and stored as an uncompressed ``.npz`` (uint8 images N×32×32×3,
    int64 labels, the class names), written atomically. Directory: ``cache_dir`` argument,
    else ``$SOENSIM_CACHE``, else ``<data folder>/.soensim-cache`` when writable, else
    ``~/.cache/soensim``. The key is the source's name, size and modification time (for a
    folder: file count, total size and newest mtime) plus a format version; a changed source
    is decoded again. Cache files are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import sys
import tarfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .cifar_batches import load_batch
from .errors import DataError
from .files import atomic_write

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
IMAGE_FORMATS = ("JPEG", "PNG", "BMP")  # what Pillow may try on the bytes
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
FORMATS = (f"{OFFICIAL_DIR}/ (official python release, extracted)",
           f"{OFFICIAL_ARCHIVE} (official archive, md5 {OFFICIAL_MD5})",
           "train/<class>/*.jpg|png + test/<class>/*.jpg|png (image-folder tree)",
           "*.tar / *.tar.gz / *.tgz holding either layout (e.g. cifar10-jpeg.tar.gz)")
SPLITS = ("train", "test")


# =========================================================================== tar archives
@dataclasses.dataclass
class TarContents:
    """Every regular file's name (in archive order) and the bytes of the wanted ones."""

    names: list[str]
    files: list[tuple[str, bytes]]


def read_tar(path: str | os.PathLike, want: Callable[[str], bool] = lambda name: True,
             expected: str = "a tar archive") -> TarContents:
    """One streaming pass over a tar (plain, gzip, bzip2 or xz): all regular-file names, and
    the bytes of those for which ``want(name)`` is true. Corrupt or truncated archives raise
    :class:`DataError` naming ``path`` and ``expected``."""
    path = Path(path)
    names: list[str] = []
    files: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if member.isfile():
                    names.append(member.name)
                    if want(member.name):
                        fh = tar.extractfile(member)
                        files.append((member.name, fh.read() if fh is not None else b""))
    except FileNotFoundError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # zlib/lzma errors are OSError/ValueError
        raise DataError(f"{path}: corrupt or truncated archive, expected {expected} "
                        f"({type(exc).__name__}: {exc})") from exc
    return TarContents(names, files)


# =========================================================================== images
def decode_image(raw: bytes, source: str, shape: tuple[int, int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, BMP) to uint8 RGB of ``shape``; errors name ``source``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as im:
            arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # Pillow raises many kinds for a bad file: all mean "not readable"
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

    def base(name: str) -> str:
        return name.rsplit("/", 1)[-1]

    tar = read_tar(path, lambda n: _split_class(n) is not None or base(n) in official,
                   expected="a tar of train/<class>/*.jpg|png and test/<class>/... images")
    batches = {base(n): raw for n, raw in tar.files if base(n) in official}
    if batches and not any(_split_class(n) for n, _ in tar.files):
        return _official({w: load_batch(raw, f"{path}:{w}") for w, raw in batches.items()}, path)
    items = [(*sc, name, raw) for name, raw in tar.files if (sc := _split_class(name))]
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


# =========================================================================== finding and downloading
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


def download_cifar10(dest_dir: str | os.PathLike, *, url: str | None = None, md5: str | None = None,
                     timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download the official archive into ``dest_dir`` and return its path.

    The file appears only complete and with the published md5 (:func:`studies.files.atomic_write`);
    a mismatch raises :class:`DataError`. ``url``/``md5`` default to
    :data:`OFFICIAL_URL`/:data:`OFFICIAL_MD5`.
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

    return atomic_write(dest, write)


def _download_into(root: Path) -> None:
    """Download into ``root``; a folder created for it is removed again on failure."""
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_cifar10(root)
    except Exception as exc:  # offline, read-only folder, md5 mismatch, ...
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        raise _not_found(root, f"Downloading {OFFICIAL_URL} failed ({type(exc).__name__}: {exc}).") from exc


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


def _read_cache(path: Path, signature: str, splits: Sequence[str]
                ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]] | None:
    """``({split: (images, labels)}, classes)`` from a cache file, or None (absent, stale or
    damaged: a damaged one is warned about and will be rewritten)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["signature"]) != signature:
                return None
            out = {s: (z[f"{s}_images"], z[f"{s}_labels"].astype(np.int64, copy=False)) for s in splits}
            classes = tuple(z["classes"].tolist())
    except FileNotFoundError:
        return None
    except Exception as exc:  # truncated zip, missing member, bad header: ignored and rewritten
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=4)
        return None
    if any(im.dtype != np.uint8 or im.shape[1:] != IMAGE_SHAPE or lb.shape != im.shape[:1] for im, lb in out.values()):
        return None
    return out, classes


def _write_cache(dirs: list[Path], name: str, signature: str, decoded: Decoded) -> Path | None:
    arrays = {f"{s}_{k}": a for s, (im, lb) in decoded.splits.items() for k, a in (("images", im), ("labels", lb))}
    for d in dirs:
        try:
            return atomic_write(d / name, lambda fh: np.savez(fh, signature=np.array(signature),
                                                              classes=np.array(decoded.classes), **arrays))
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
    malformed file, named in the message), :class:`~studies.cifar_batches.UnsafePickleError`
    (a pickle asking for a forbidden global).
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
        _download_into(root)
        found = find_cifar_source(root)
        if found is None:
            raise _not_found(root, "The downloaded archive was not recognised.")
    kind, source = found
    base: dict[str, Any] = {"source": str(source), "format": kind, "cache": None, "from_cache": False}
    signature = name = None
    dirs: list[Path] = []
    if cache:
        signature = _signature(kind, source)
        name = _cache_name(source, signature)
        dirs = _cache_dirs(root if root.is_dir() else root.parent, cache_dir)
        for d in dirs:
            hit = _read_cache(d / name, signature, splits)
            if hit is not None:
                arrays, classes = hit
                info = {**base, "classes": classes, "cache": str(d / name), "from_cache": True,
                        "seconds": time.perf_counter() - t0}
                return {s: LoadedSplit(*arrays[s], dict(info)) for s in splits}
    log.info("decoding CIFAR-10 from %s (%s)", source, kind)
    decoded = READERS[kind](source)
    if cache and name is not None and signature is not None:
        written = _write_cache(dirs, name, signature, decoded)
        base["cache"] = str(written) if written else None
    info = {**base, "classes": decoded.classes, "seconds": time.perf_counter() - t0}
    return {s: LoadedSplit(*decoded.splits[s], dict(info)) for s in splits}


__all__ = [
    "ARCHIVE_SUFFIXES", "CACHE_ENV", "CACHE_SUBDIR", "CLASSES", "DATA_ENV", "DEFAULT_DATA_DIR", "Decoded", "FORMATS",
    "IMAGE_SHAPE", "LoadedSplit", "OFFICIAL_ARCHIVE", "OFFICIAL_DIR", "OFFICIAL_MD5", "OFFICIAL_URL", "READERS",
    "SPLITS", "TEST_BATCHES", "TRAIN_BATCHES", "TarContents", "count_images", "decode_image", "download_cifar10",
    "find_cifar_source", "load_cifar10", "load_cifar10_splits", "read_image_archive", "read_image_folder",
    "read_official_archive", "read_official_dir", "read_tar", "resolve_data_dir",
]
