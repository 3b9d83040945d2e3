"""Build, load and call the C++ CPU kernel (``gru_cpu.cpp``).

The extension is compiled on first use with ``torch.utils.cpp_extension.load``
(ninja, about 10 s) into ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) under a folder named after the torch and Python
versions, so a cached build is never loaded into a different torch. Later
processes reuse the cached library. It registers the ops
``torch.ops.soensim_gru.{forward,backward}``.

If the build fails (no compiler, no ninja, ...) a warning is issued once and
:func:`available` returns False; ``gates.kernels`` then falls back to the
generic torch-ops implementation. Set ``SOENSIM_GRU_BACKEND=generic`` to skip
the build entirely.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

__all__ = ["available", "load", "build_info", "CppImpl", "SOURCE", "EXT_NAME"]

SOURCE = Path(__file__).with_name("gru_cpu.cpp")
EXT_NAME = "soensim_gru_cpu"
# -O3 only: the float element loops are multi-versioned inside the source
# (x86-64-v4 / v3 / baseline picked at load time), so no -march=native is needed
# and a cached build stays valid on another x86-64 machine.
EXTRA_CFLAGS = ["-O3"]

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {"loaded": False, "error": None, "path": None, "seconds": None}


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
            _log.info("building/loading %s in %s", EXT_NAME, build_dir)
            path = _load_ext(
                name=EXT_NAME,
                sources=[str(SOURCE)],
                extra_cflags=EXTRA_CFLAGS,
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=verbose,
            )
            torch.ops.soensim_gru.forward  # noqa: B018  (raises if not registered)
        except Exception as exc:  # any build or load failure -> generic fallback
            _state["error"] = exc
            warnings.warn(
                f"soensim: could not build the C++ GRU kernel ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); "
                "falling back to the generic torch implementation (slower on CPU).",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        _state.update(loaded=True, path=path, seconds=time.perf_counter() - t0)
        return True


def available() -> bool:
    """True when the C++ kernel is (or can be) built and loaded."""
    return load()


def build_info() -> dict:
    """Where the library is, how long loading it took, or why it failed."""
    return {
        "loaded": _state["loaded"],
        "path": _state["path"],
        "load_seconds": _state["seconds"],
        "error": None if _state["error"] is None else repr(_state["error"]),
        "disabled_by_env": _disabled(),
    }


class CppImpl:
    """Forward/backward loops in compiled code (CPU, float32/float64)."""

    name = "cpp"

    @staticmethod
    def forward(gi, h0, w_hh, b_hh, mode_id: int, save: bool):
        out, saved = torch.ops.soensim_gru.forward(gi, h0, w_hh, b_hh, mode_id, save)
        return out, saved

    @staticmethod
    def backward(grad_out, grad_hT, h0, w_hh, out, saved, mode_id: int):
        d_gi, d_h0, d_w, d_b = torch.ops.soensim_gru.backward(
            grad_out, grad_hT, h0, w_hh, out, saved, mode_id
        )
        return d_gi, d_h0, d_w, d_b
