"""Gating mechanisms (papers/002 Table 1, papers/000 SST) as one registry.

A mechanism says how the decay gate (GRU update gate, LSTM forget gate) is formed
and initialised. Names:

========  ===================================================================
``-``     sigmoid gates, decay-gate bias +1
``C``     chrono init: b_f ~ log U[1, T_max - 1] (LSTM also b_i = -b_f); T_max = hidden size
          unless ``chrono_tmax`` is given
``O``     cumax decay gate f = cumsum(softmax(.)); LSTM input gate 1 - cumax(.)
``U``     uniform gate initialisation (UGI): b_f = logit(u), u ~ U[1/d, 1 - 1/d]
``R``     refine gate: g = 2 r f + (1 - 2 r) f^2, input tied to 1 - g, standard init
``OM``    ON-LSTM master gates (cumax) with downsize factor C, main gates standard
``UM``    master gates with sigmoid + UGI instead of cumax
``OR``    cumax main gate + refine gate
``UR``    UGI main gate + refine gate, refine bias = -b_f at init (papers/002 appendix A)
``SST``   squared sigmoid-tanh: every sigmoid gate is sigmoid(x)^2 and the candidate is
          tanh(x)*|tanh(x)| (the tanh is squared, its sign kept); LSTM output h = o * tanh(c)
========  ===================================================================

Extra row blocks: the GRU has no independent input gate to repurpose, so GRU refine
variants add an H-row ``refine`` block; the LSTM refine variants reuse the ``input``
block (input tied to 1 - g) and keep the standard parameter count. Master variants add
``master_forget`` and ``master_input`` blocks of H/C rows each.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Core = Literal["gru", "lstm"]

#: Row blocks of each core, in torch's order.
BASE_BLOCKS: dict[str, tuple[str, ...]] = {
    "gru": ("reset", "update", "candidate"),
    "lstm": ("input", "forget", "cell", "output"),
}
DECAY_BLOCK = {"gru": "update", "lstm": "forget"}
ALIASES = {"r": "reset", "z": "update", "n": "candidate", "i": "input", "f": "forget", "g": "cell", "o": "output"}


@dataclass(frozen=True)
class Mechanism:
    """One gating variant. ``core`` is set by :meth:`for_core` when a layer binds it."""

    name: str
    description: str
    activation: Literal["sigmoid", "cumax", "sst"]
    init: Literal["standard", "chrono", "ugi", "zero"]
    refine: bool = False
    master: Literal["cumax", "sigmoid"] | None = None
    core: Core = "gru"

    def for_core(self, core: Core) -> "Mechanism":
        if core not in BASE_BLOCKS:
            raise ValueError(f"core must be one of {sorted(BASE_BLOCKS)}; got {core!r}")
        return dataclasses.replace(self, core=core)

    @property
    def leaky(self) -> bool:
        """True when the decay gate is an elementwise function of a per-unit bias."""
        return self.activation != "cumax" and self.master is None

    @property
    def fused_mode(self) -> str | None:
        """Mode of :func:`gates.kernels.fused_gru_recurrence` implementing this GRU mechanism."""
        if self.master is not None or self.activation == "cumax":
            return None
        if self.activation == "sst":
            return None if self.refine else "sst"
        return "refine" if self.refine else "sigmoid"

    @property
    def decay_block(self) -> str:
        return DECAY_BLOCK[self.core]

    def block_rows(self, hidden_size: int, chunk: int = 16) -> dict[str, int]:
        """Row count of every block, in order (the layer's ``gate_blocks`` is built from it)."""
        rows = {b: hidden_size for b in BASE_BLOCKS[self.core]}
        if self.refine and self.core == "gru":
            rows["refine"] = hidden_size
        if self.master is not None:
            if chunk < 1 or hidden_size % chunk:
                raise ValueError(
                    f"master_chunk (C) must divide hidden_size for master gates ({self.name}); "
                    f"got hidden_size={hidden_size}, master_chunk={chunk}"
                )
            rows["master_forget"] = rows["master_input"] = hidden_size // chunk
        return rows

    @property
    def refine_block(self) -> str | None:
        if not self.refine:
            return None
        return "refine" if self.core == "gru" else "input"

    def gate(self, pre: Tensor) -> Tensor:
        """Activation of the decay gate (and of the other [0, 1] gates for SST)."""
        if self.activation == "cumax":
            return cumax(pre)
        return squared_sigmoid(pre) if self.activation == "sst" else torch.sigmoid(pre)

    def bias_for_decay(self, z: Tensor) -> dict[str, Tensor]:
        """Biases that make the effective decay gate equal ``z`` when other pre-activations are 0."""
        if not self.leaky:
            raise ValueError(f"gate {self.name!r} has no per-unit decay bias (cumax/master gates mix units)")
        z = torch.as_tensor(z)
        if self.activation == "sst":
            return {self.decay_block: torch.logit(z.sqrt())}
        out = {self.decay_block: torch.logit(z)}
        if self.refine:  # r = 1/2 gives g = f
            out[self.refine_block] = torch.zeros_like(z)  # type: ignore[index]
        return out

    def decay_for_bias(self, b: Tensor) -> Tensor:
        """Inverse of :meth:`bias_for_decay` for the decay block."""
        return self.gate(b) if self.leaky else torch.full_like(b, math.nan)

    def init_biases(self, bias: dict[str, Tensor], generator: torch.Generator | None = None,
                    chrono_tmax: float | None = None) -> set[str]:
        """Write initial values into the given bias row views (in place); returns the blocks written."""
        f = self.decay_block
        h = bias[f].numel()
        written = {f}
        with torch.no_grad():
            if self.init == "standard":
                bias[f].fill_(1.0)
            elif self.init == "zero":
                bias[f].zero_()
            elif self.init == "ugi":
                bias[f].copy_(ugi_bias(h, generator))
            elif self.init == "chrono":
                bias[f].copy_(chrono_bias(h, chrono_tmax or float(h), generator))
                if self.core == "lstm" and not self.refine:
                    bias["input"].copy_(-bias[f])
                    written.add("input")
            if self.refine:
                rb = self.refine_block
                assert rb is not None
                bias[rb].copy_(-bias[f] if self.init == "ugi" else torch.zeros_like(bias[f]))
                written.add(rb)
            if self.master is not None:
                m = bias["master_forget"].numel()
                if self.master == "sigmoid":
                    b = ugi_bias(m, generator)
                    bias["master_forget"].copy_(b)
                    bias["master_input"].copy_(-b)
                else:
                    bias["master_forget"].zero_()
                    bias["master_input"].zero_()
                written |= {"master_forget", "master_input"}
        return written


def squared_sigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x).square()


def signed_squared_tanh(x: Tensor) -> Tensor:
    """SST candidate: tanh(x)·|tanh(x)|, a squared tanh that keeps the sign."""
    t = torch.tanh(x)
    return t * t.abs()


def cumax(x: Tensor, dim: int = -1) -> Tensor:
    """cumsum(softmax(x)) along ``dim``: monotone non-decreasing, in [0, 1], last entry 1."""
    return torch.cumsum(torch.softmax(x, dim=dim), dim=dim)


def refine(f: Tensor, r: Tensor) -> Tensor:
    """Refined gate g = 2 r f + (1 - 2 r) f^2, between f^2 (r = 0) and 1 - (1 - f)^2 (r = 1)."""
    return 2 * r * f + (1 - 2 * r) * f * f


def ugi_bias(n: int, generator: torch.Generator | None = None) -> Tensor:
    """UGI: logit(u), u ~ U[1/n, 1 - 1/n] (papers/002 appendix A)."""
    lo = 1.0 / n if n > 2 else 0.25
    u = lo + (1 - 2 * lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.logit(u).float()


def chrono_bias(n: int, tmax: float, generator: torch.Generator | None = None) -> Tensor:
    """Chrono: log U[1, T_max - 1] (Tallec & Ollivier)."""
    if tmax <= 2:
        raise ValueError(f"chrono_tmax must be > 2 steps; got {tmax}")
    t = 1 + (tmax - 2) * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.log(t).float()


def _m(name: str, description: str, **kw) -> Mechanism:
    return Mechanism(name=name, description=description, **kw)


#: The registry: name -> mechanism (bind to a core with ``for_core``).
GATES: dict[str, Mechanism] = {
    m.name: m
    for m in (
        _m("-", "sigmoid gates, decay bias +1", activation="sigmoid", init="standard"),
        _m("C", "chrono initialisation", activation="sigmoid", init="chrono"),
        _m("O", "cumax (ordered) decay gate", activation="cumax", init="zero"),
        _m("U", "uniform gate initialisation", activation="sigmoid", init="ugi"),
        _m("R", "refine gate, standard init", activation="sigmoid", init="standard", refine=True),
        _m("OM", "ON-LSTM cumax master gates", activation="sigmoid", init="standard", master="cumax"),
        _m("UM", "sigmoid+UGI master gates", activation="sigmoid", init="standard", master="sigmoid"),
        _m("OR", "cumax main gate + refine gate", activation="cumax", init="zero", refine=True),
        _m("UR", "UGI main gate + refine gate", activation="sigmoid", init="ugi", refine=True),
        _m("SST", "squared sigmoid-tanh gates", activation="sst", init="standard"),
    )
}


def get_mechanism(name: str, core: Core = "gru") -> Mechanism:
    """Registry lookup; an unknown name lists the known ones."""
    if name not in GATES:
        raise ValueError(f"gate must be one of {list(GATES)}; got {name!r}")
    return GATES[name].for_core(core)


def block_name(name: str) -> str:
    """Full block name for a short alias (r, z, n, i, f, g, o)."""
    return ALIASES.get(name, name)


__all__ = [
    "ALIASES", "BASE_BLOCKS", "GATES", "Mechanism", "block_name", "chrono_bias", "cumax", "get_mechanism",
    "refine", "signed_squared_tanh", "squared_sigmoid", "ugi_bias",
]
