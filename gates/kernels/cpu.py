"""Build, load and call the C++ CPU kernels (``gru_cpu.cpp``, ``lstm_cpu.cpp``, ``rnn_cpu.cpp``).

The extension is compiled on first use with ``torch.utils.cpp_extension.load``
(ninja, 45-65 s on two busy cores) into ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) under a folder named after the torch and Python
versions, so a cached build is never loaded into a different torch. Later
processes reuse the cached library. It registers the ops
``torch.ops.soensim_rnn.{gru,lstm}_{forward,backward}`` (mode flags from
:data:`gates.kernels.modes.MODES`).

If the build fails (no compiler, no ninja, ...) a warning is issued once and
:func:`available` returns False; ``gates.kernels`` then falls back to the
generic torch-ops implementation. Set ``SOENSIM_GRU_BACKEND=generic`` to skip
the build entirely.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from .modes import KernelMode

__all__ = [
    "available",
    "load",
    "build_info",
    "empty_pooled",
    "empty_cache",
    "pool_stats",
    "CppImpl",
    "SOURCES",
    "EXT_NAME",
]

_HERE = Path(__file__).parent
#: The translation units of the extension; ``rnn_cpu.h`` holds their shared pieces.
SOURCES = tuple(_HERE / name for name in ("rnn_cpu.cpp", "gru_cpu.cpp", "lstm_cpu.cpp"))
HEADER = _HERE / "rnn_cpu.h"
EXT_NAME = "soensim_rnn_cpu"
# -O3 only: the float element loops are multi-versioned inside the source
# (x86-64-v4 / v3 / baseline picked at load time), so no -march=native is needed
# (measured: no faster) and a cached build stays valid on another x86-64 machine.
# -fopenmp lets the element loops of a step use torch's OpenMP threads (the
# libgomp torch has loaded); if that build fails, a serial build is used, and a
# marker file stops later processes from retrying the OpenMP one.
BUILD_VARIANTS = (
    ("omp", {"extra_cflags": ["-O3", "-fopenmp"], "extra_ldflags": ["-fopenmp"]}),
    ("serial", {"extra_cflags": ["-O3"], "extra_ldflags": []}),
)

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {"loaded": False, "error": None, "path": None, "seconds": None, "flags": None}


def _build_directory() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions"
    )
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", torch.__version__)
    return Path(root) / f"{EXT_NAME}-torch{tag}-py{sys.version_info[0]}{sys.version_info[1]}"


def _disabled() -> bool:
    return os.environ.get("SOENSIM_GRU_BACKEND", "").strip().lower() == "generic"


def load(verbose: bool = False) -> bool:
    """Compile (first time) and load the extension; True when its ops are usable."""
    if _state["loaded"]:
        return True
    if _state["error"] is not None or _disabled():
        return False
    with _lock:
        if _state["loaded"]:
            return True
        if _state["error"] is not None:
            return False
        t0 = time.perf_counter()
        try:
            from torch.utils.cpp_extension import load as _load_ext

            build_dir = _build_directory()
            build_dir.mkdir(parents=True, exist_ok=True)
            path, errors = None, []
            digest = _digest()
            for tag, flags in BUILD_VARIANTS:
                failed_marker = build_dir / f"{tag}.failed"
                if tag != BUILD_VARIANTS[-1][0] and _marker_matches(failed_marker, digest):
                    continue
                variant_dir = build_dir / tag
                variant_dir.mkdir(exist_ok=True)
                _log.info("building/loading %s (%s) in %s", EXT_NAME, tag, variant_dir)
                try:
                    path = _load_ext(
                        name=f"{EXT_NAME}_{tag}",
                        sources=[str(p) for p in SOURCES],
                        build_directory=str(variant_dir),
                        is_python_module=False,
                        verbose=verbose,
                        **flags,
                    )
                    _state["flags"] = flags["extra_cflags"]
                    break
                except Exception as exc:  # try the next variant
                    errors.append(exc)
                    try:
                        failed_marker.write_text(f"{digest}\n{_summary(exc)}\n")
                    except OSError:
                        pass
            if path is None:
                raise errors[-1] if errors else RuntimeError("no build variant left to try")
            torch.ops.soensim_rnn.gru_forward  # noqa: B018  (raises if not registered)
        except Exception as exc:  # any build or load failure -> generic fallback
            _state["error"] = exc
            warnings.warn(
                f"soensim: could not build the C++ recurrence kernels ({_summary(exc)}); "
                "falling back to the generic torch implementation (slower on CPU). "
                "gates.kernels.cpu.build_info() has the details.",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        _state.update(loaded=True, path=path, seconds=time.perf_counter() - t0)
        return True


def _digest() -> str:
    """Hash of the sources and the header: a failed build is remembered for this code only."""
    h = hashlib.sha256()
    for p in (*SOURCES, HEADER):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _marker_matches(marker: Path, digest: str) -> bool:
    """True when ``marker`` records a failed build of this very source."""
    try:
        return marker.read_text().split("\n", 1)[0] == digest
    except OSError:
        return False


def _summary(exc: BaseException) -> str:
    """The first compiler error line of a build failure, else the last line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln:
            return ln[:300]
    return f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}"


def available() -> bool:
    """True when the C++ kernel is (or can be) built and loaded."""
    return load()


def build_info() -> dict:
    """Where the library is, how long loading it took, or why it failed."""
    return {
        "loaded": _state["loaded"],
        "path": _state["path"],
        "load_seconds": _state["seconds"],
        "cflags": _state["flags"],
        "error": None if _state["error"] is None else repr(_state["error"]),
        "disabled_by_env": _disabled(),
    }


def empty_pooled(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized contiguous CPU tensor from the kernel's buffer pool."""
    return torch.ops.soensim_rnn.empty_pooled(list(shape), dtype)


def pool_stats() -> dict:
    """Buffer-pool counters: bytes/blocks held for reuse, hits, misses, limit."""
    if not load():
        return {}
    cached, blocks, hits, misses, limit = torch.ops.soensim_rnn.pool_stats()
    return {
        "cached_bytes": cached,
        "cached_blocks": blocks,
        "hits": hits,
        "misses": misses,
        "limit_bytes": limit,
    }


def empty_cache() -> None:
    """Return the buffers the pool holds for reuse to the OS."""
    if _state["loaded"]:
        torch.ops.soensim_rnn.pool_clear()


class CppImpl:
    """Forward/backward loops in compiled code (CPU, float32/float64); the interface of
    :class:`gates.kernels.generic.GenericImpl`."""

    name = "cpp"

    @staticmethod
    def gru_forward(gi, h0, w_hh, b_hh, spec: KernelMode, M: int, save: bool):
        out, saved = torch.ops.soensim_rnn.gru_forward(gi, h0, w_hh, b_hh, *spec.flags, M, save)
        return out, saved

    @staticmethod
    def gru_backward(grad_out, grad_hT, h0, w_hh, out, saved, spec: KernelMode, M: int):
        d_gi, d_h0, d_w, d_b = torch.ops.soensim_rnn.gru_backward(
            grad_out, grad_hT, h0, w_hh, out, saved, *spec.flags, M)
        return d_gi, d_h0, d_w, d_b

    @staticmethod
    def lstm_forward(gi, h0, c0, w_hh, b_hh, spec: KernelMode, M: int, save: bool):
        out, c_T, saved = torch.ops.soensim_rnn.lstm_forward(gi, h0, c0, w_hh, b_hh, *spec.flags, M, save)
        return out, c_T, saved

    @staticmethod
    def lstm_backward(grad_out, grad_hT, grad_cT, h0, c0, w_hh, out, saved, spec: KernelMode, M: int):
        return tuple(torch.ops.soensim_rnn.lstm_backward(
            grad_out, grad_hT, grad_cT, h0, c0, w_hh, out, saved, *spec.flags, M))
