"""The kernel modes of the fused recurrences: one table for every backend (C++, generic, Triton).

A mode is four flags — the activation of the [0, 1] gates, the candidate's activation, a
refine gate, master gates — and the same flags hold on both cores. :data:`MODES` is the table; :meth:`KernelMode.blocks`,
:meth:`KernelMode.rows` and :meth:`KernelMode.activations` say, per core, which row blocks
``gi``/``w_hh``/``b_hh`` hold (in the order of :meth:`gates.mechanisms.Mechanism.block_rows`)
and which nonlinearity each block goes through. A mechanism names its mode with
``Mechanism.fused_mode``.

==================  ==========  ==================  ======  ========  ==============================
mode                activation  candidate           refine  master    mechanisms
==================  ==========  ==================  ======  ========  ==============================
``sigmoid``         sigmoid     tanh                no      —         ``-``, ``C``, ``U``
``refine``          sigmoid     tanh                yes     —         ``R``, ``UR``
``sst``             sst         tanh                no      —         ``SST``
``sst_candidate``   sst         tanh·|tanh|         no      —         ``SSTN``
``cumax``           cumax       tanh                no      —         ``O``
``cumax_refine``    cumax       tanh                yes     —         ``OR``
``master_cumax``    sigmoid     tanh                no      cumax     ``OM``
``master_sigmoid``  sigmoid     tanh                no      sigmoid   ``UM``
==================  ==========  ==================  ======  ========  ==============================

Step semantics, with ``a_k`` the pre-activation of block k (``gi_k + gh_k``, ``gh = h W_hh^T
+ b_hh``) and P the plain gate (sigmoid; sigmoid² in the activation ``sst``, modes ``sst`` and
``sst_candidate``):

* decay gate f = sigmoid(a), sigmoid(a)² (``sst*``) or cumax(a) = cumsum(softmax(a)) over the
  H units (``cumax*``), on the GRU ``update`` / LSTM ``forget`` block;
* input gate: GRU tied, i = 1 - g; LSTM ``input`` block: P(a), or 1 - cumax(a) in mode
  ``cumax``; with a refine gate the LSTM ``input`` block holds the refine gate instead
  and i = 1 - g;
* refine gate p = sigmoid(a_refine), g = 2 p f + (1 - 2 p) f² (else g = f) — Gu et al. 2020,
  "Improving the Gating Mechanism of Recurrent Neural Networks", arXiv:1910.09890, eq. 16;
* master gates on M = H / C units (unit j uses master unit j // C): ``master_cumax``
  f̃ = cumax(a_mf), ĩ = 1 - cumax(a_mi); ``master_sigmoid`` f̃ = sigmoid(a_mf),
  ĩ = sigmoid(a_mi); ω = f̃ ĩ, effective g ← g ω + (f̃ - ω), i ← i ω + (ĩ - ω) (ibid. eq. 19-23);
* GRU (torch.nn.GRU form): r = P(a_reset), n = cand(gi_n + r gh_n), h' = g h + i n;
  LSTM: c' = g c + i cand(a_cell), h' = P(a_output) tanh(c');
* cand = tanh, or tanh·|tanh| in mode ``sst_candidate``. Mode ``sst`` is the squared sigmoid-tanh
  of "Contrast-Enhanced Gating in GRUs for Robust Low-Data Sequence Learning": sigmoid² in the
  gates (GRU reset and update; LSTM input, forget and output), candidate and cell output tanh.
  ``sst_candidate`` also squares the candidate with its sign kept; tanh·|tanh| has slope 0 at 0,
  so a candidate pre-activation near 0 passes almost no gradient.

Activation names used by :meth:`KernelMode.activations`: ``sigmoid``, ``sigmoid_squared``,
``tanh``, ``signed_squared_tanh``, ``cumax``, ``one_minus_cumax``.

The compiled kernels (C++, Triton) take the flags as three integers (:attr:`KernelMode.flags`); the
candidate's activation is a bit of the activation code (:data:`SQUARED_CANDIDATE_BIT`), so every mode
shares one op signature.

Saved for backward (every backend the same): per step and batch row, one vector of
``rows + H`` values — in each block's columns the block's base activation (the sigmoid
value, softmax for cumax blocks, tanh for the candidate; squares and cumsums are recomputed),
then H more: GRU ``gh_candidate`` (W_hn h + b_hn), LSTM the new cell state c'.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch

__all__ = [
    "ACTIVATION_IDS",
    "CORES",
    "KernelMode",
    "MASTER_IDS",
    "MODES",
    "SQUARED_CANDIDATE_BIT",
    "check_inputs",
    "master_units",
    "mode_spec",
]

CORES = ("gru", "lstm")
#: Integer codes of the flags, as the compiled kernels take them.
ACTIVATION_IDS: Mapping[str, int] = {"sigmoid": 0, "sst": 1, "cumax": 2}
#: Or'ed into the activation code when the candidate is tanh·|tanh| (``sst_candidate``: 1 | 4 = 5).
SQUARED_CANDIDATE_BIT = 4
MASTER_IDS: Mapping[str | None, int] = {None: 0, "cumax": 1, "sigmoid": 2}

_CORE_BLOCKS = {
    "gru": ("reset", "update", "candidate"),
    "lstm": ("input", "forget", "cell", "output"),
}


@dataclass(frozen=True)
class KernelMode:
    """A fused-recurrence mode: gate activation, candidate activation, refine gate, master gates
    (module docstring)."""

    name: str
    activation: Literal["sigmoid", "sst", "cumax"]
    candidate: Literal["tanh", "signed_squared_tanh"]
    refine: bool
    master: Literal["cumax", "sigmoid"] | None
    description: str

    @property
    def squared_gates(self) -> bool:
        """The [0, 1] gates are sigmoid² (activation ``sst``: modes ``sst`` and ``sst_candidate``)."""
        return self.activation == "sst"

    @property
    def squared_candidate(self) -> bool:
        """The candidate is tanh·|tanh| (mode ``sst_candidate``)."""
        return self.candidate == "signed_squared_tanh"

    @property
    def flags(self) -> tuple[int, bool, int]:
        """``(activation code, refine, master id)`` for the compiled kernels: the code is
        :data:`ACTIVATION_IDS` ``[activation]``, plus :data:`SQUARED_CANDIDATE_BIT` for a tanh·|tanh|
        candidate."""
        bit = SQUARED_CANDIDATE_BIT if self.squared_candidate else 0
        return ACTIVATION_IDS[self.activation] | bit, self.refine, MASTER_IDS[self.master]

    def main_blocks(self, core: str) -> int:
        """Number of H-row blocks before the master blocks (GRU 3, or 4 with a refine gate; LSTM 4)."""
        _check_core(core)
        return 4 if core == "lstm" or self.refine else 3

    def blocks(self, core: str) -> tuple[str, ...]:
        """Row-block names in order, e.g. GRU refine ``(reset, update, candidate, refine)``."""
        _check_core(core)
        names = _CORE_BLOCKS[core]
        if self.refine and core == "gru":
            names += ("refine",)
        if self.master is not None:
            names += ("master_forget", "master_input")
        return names

    def rows(self, core: str, hidden: int, chunk: int = 16) -> dict[str, int]:
        """Rows of every block (H, and H/C for master blocks), in order."""
        m = master_units(hidden, chunk) if self.master is not None else 0
        return {b: (m if b.startswith("master_") else hidden) for b in self.blocks(core)}

    def activations(self, core: str) -> dict[str, str]:
        """The nonlinearity of every block (names in the module docstring)."""
        plain = "sigmoid_squared" if self.squared_gates else "sigmoid"
        decay = {"sigmoid": "sigmoid", "sst": "sigmoid_squared", "cumax": "cumax"}[self.activation]
        cand = self.candidate
        if core == "gru":
            acts = {"reset": plain, "update": decay, "candidate": cand}
            if self.refine:
                acts["refine"] = "sigmoid"
        else:
            _check_core(core)
            if self.refine:
                inp = "sigmoid"  # the refine gate; the input gate is tied to 1 - g
            else:
                inp = "one_minus_cumax" if self.activation == "cumax" else plain
            acts = {"input": inp, "forget": decay, "cell": cand, "output": plain}
        if self.master == "cumax":
            acts.update(master_forget="cumax", master_input="one_minus_cumax")
        elif self.master == "sigmoid":
            acts.update(master_forget="sigmoid", master_input="sigmoid")
        return acts


def _mode(name, activation, refine, master, description, candidate="tanh") -> KernelMode:
    return KernelMode(name, activation, candidate, refine, master, description)


#: The modes, by name (the names ``Mechanism.fused_mode`` returns).
MODES: Mapping[str, KernelMode] = {
    m.name: m
    for m in (
        _mode("sigmoid", "sigmoid", False, None, "sigmoid gates, tanh candidate (torch.nn.GRU / nn.LSTM)"),
        _mode("refine", "sigmoid", True, None, "refine gate: g = 2 p f + (1 - 2 p) f^2, input 1 - g"),
        _mode("sst", "sst", False, None, "gates sigmoid^2, candidate tanh (squared sigmoid-tanh)"),
        _mode("sst_candidate", "sst", False, None, "gates sigmoid^2, candidate tanh*|tanh|",
              candidate="signed_squared_tanh"),
        _mode("cumax", "cumax", False, None, "cumax decay gate (LSTM input 1 - cumax; GRU input 1 - f)"),
        _mode("cumax_refine", "cumax", True, None, "cumax decay gate + refine gate, input 1 - g"),
        _mode("master_cumax", "sigmoid", False, "cumax", "sigmoid main gates, cumax master gates (ON-LSTM)"),
        _mode("master_sigmoid", "sigmoid", False, "sigmoid", "sigmoid main gates, sigmoid master gates"),
    )
}


def _check_core(core: str) -> None:
    if core not in CORES:
        raise ValueError(f"core: expected one of {', '.join(CORES)}, got {core!r}")


def mode_spec(mode: str) -> KernelMode:
    """Look a mode up by name; an unknown name lists the known ones."""
    try:
        return MODES[mode]
    except (KeyError, TypeError):
        raise ValueError(f"mode: unknown recurrence mode {mode!r}; known modes: {', '.join(MODES)}") from None


def master_units(hidden: int, chunk: int) -> int:
    """M = H / C master units; C (the downsize factor) must divide H."""
    if not isinstance(chunk, int) or chunk < 1 or hidden % chunk:
        raise ValueError(f"chunk: the master downsize factor C must be a positive int dividing H={hidden}, "
                         f"got {chunk!r}")
    return hidden // chunk


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _infer_master(spec: KernelMode, core: str, w_hh: torch.Tensor, chunk: int | None) -> int:
    """Master units M from ``w_hh``'s rows (or from ``chunk`` when given); 0 without master gates."""
    H = w_hh.shape[1]
    NB = spec.main_blocks(core)
    label = f"{core} mode {spec.name!r} (blocks {', '.join(spec.blocks(core))})"
    if spec.master is None:
        if w_hh.shape[0] != NB * H:
            raise ValueError(f"w_hh: expected shape (G*H, H) = ({NB}*H, H) for {label}, got {_shape(w_hh)}")
        return 0
    extra = w_hh.shape[0] - NB * H
    if chunk is not None:
        m = master_units(H, chunk)
        if extra != 2 * m:
            raise ValueError(f"w_hh: expected shape ({NB}*H + 2*H/C, H) = ({NB * H + 2 * m}, {H}) for {label} "
                             f"with C={chunk}, got {_shape(w_hh)}")
        return m
    if extra <= 0 or extra % 2 or H % (extra // 2):
        raise ValueError(f"w_hh: expected shape ({NB}*H + 2*H/C, H) with C dividing H={H} for {label}, "
                         f"got {_shape(w_hh)}")
    return extra // 2


def check_inputs(core: str, gi, state: tuple, w_hh, b_hh, mode: str,
                 chunk: int | None = None) -> tuple[int, int, int, int, KernelMode]:
    """Validate the arguments of a fused recurrence; return ``(T, B, H, M, spec)``.

    ``state`` is ``(h0,)`` (GRU) or ``(h0, c0)`` (LSTM). M is the number of master units
    (0 without master gates), taken from ``w_hh``'s rows unless ``chunk`` is given.
    Errors name the argument and the expected shape.
    """
    _check_core(core)
    spec = mode_spec(mode)
    names = ("h0", "c0")[: len(state)]
    for name, t in (("gi", gi), *zip(names, state, strict=True), ("w_hh", w_hh), ("b_hh", b_hh)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if w_hh.dim() != 2:
        raise ValueError(f"w_hh: expected a 2-D (rows, H) tensor, got shape {_shape(w_hh)}")
    M = _infer_master(spec, core, w_hh, chunk)
    H, R = w_hh.shape[1], w_hh.shape[0]
    if gi.dim() != 3 or gi.shape[2] != R:
        raise ValueError(f"gi: expected shape (T, B, G*H) = (T, B, {R}) for mode {mode!r} with H={H}, "
                         f"got {_shape(gi)}")
    T, B = gi.shape[0], gi.shape[1]
    for name, t in zip(names, state, strict=True):
        if _shape(t) != (B, H):
            raise ValueError(f"{name}: expected shape (B, H) = ({B}, {H}), got {_shape(t)}")
    if _shape(b_hh) != (R,):
        raise ValueError(f"b_hh: expected shape (G*H,) = ({R},) for mode {mode!r}, got {_shape(b_hh)}")
    for name, t in (*zip(names, state, strict=True), ("w_hh", w_hh), ("b_hh", b_hh)):
        if t.dtype != gi.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} differs from gi's dtype {gi.dtype}")
        if t.device != gi.device:
            raise ValueError(f"{name}: device {t.device} differs from gi's device {gi.device}")
    if not gi.dtype.is_floating_point:
        raise TypeError(f"gi: expected a floating-point dtype, got {gi.dtype}")
    return T, B, H, M, spec
