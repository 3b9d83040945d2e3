"""The official CIFAR-10 python batches: restricted unpickling and format checks.

The official batches are pickles. :class:`RestrictedUnpickler` resolves only the globals
that NumPy array reconstruction needs (``numpy[._]core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``) plus ``_codecs.encode`` — which Python 3 writes for
every ``bytes`` object at protocol 2 — replaced by a stand-in that only turns a ``str``
into latin-1 bytes. Any other global raises :class:`UnsafePickleError` naming it, before
anything is called. :func:`load_batch` then checks the loaded dict (``data`` uint8
(N, 3072), ``labels`` N ints in 0..9).
"""
from __future__ import annotations

import io
import pickle
from typing import Any, Callable

import numpy as np

from .errors import DataError


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle asked for a global outside :attr:`RestrictedUnpickler.ALLOWED`."""


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


__all__ = ["RestrictedUnpickler", "UnsafePickleError", "load_batch", "restricted_loads"]
