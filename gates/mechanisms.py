"""Gating mechanisms as one registry: Gu et al. 2020, "Improving the Gating Mechanism of Recurrent
Neural Networks" (arXiv:1910.09890; Table 1 and appendix B.5), and the squared sigmoid-tanh (SST) of
"Contrast-Enhanced Gating in GRUs for Robust Low-Data Sequence Learning".

A mechanism says how the *decay gate* (GRU update gate ``z``, LSTM forget gate ``f``)
and its tied or independent input gate are formed from the pre-activations of the
stacked row blocks, and how the biases are initialised. :data:`GATES` maps a name to
a :class:`Mechanism`; :func:`get_mechanism` binds it to a core (``"gru"``/``"lstm"``).

========  ==========================================================================
``-``     sigmoid gates; decay-gate bias +1 (LSTM forget bias, GRU update bias)
``C``     chrono: b_f ~ log U[1, T_max - 1]; LSTM also b_i = -b_f (Gu et al. eq. 17-18)
``O``     cumax decay gate f = cumsum(softmax(a_f)); LSTM input i = 1 - cumax(a_i),
          GRU input tied 1 - f; cumax biases 0
``U``     UGI: b_f = logit(u), u ~ U[1/d, 1 - 1/d], d = hidden size; LSTM also b_i = -b_f
``R``     refine gate r: g = 2 r f + (1 - 2 r) f², input tied to 1 - g; b_f = +1, b_r = 0
``OM``    ON-LSTM: sigmoid main gates (b_f = +1) and cumax master gates of H/C units
``UM``    as OM with sigmoid master gates initialised by UGI (b_mf = logit(u), b_mi = -b_mf)
``OR``    cumax main gate + refine gate, input tied to 1 - g; biases 0
``UR``    UGI main gate + refine gate, refine bias b_r = -b_f at init (Gu et al. app. A)
``SST``   squared sigmoid-tanh: the gates are sigmoid(a)² (GRU reset and update;
          LSTM input, forget and output), the candidate and the LSTM cell output
          stay tanh; b_f = +1
``SSTN``  SST with the candidate squared too: tanh(a)·|tanh(a)| (sign kept; slope
          0 at a = 0, so the candidate gets almost no gradient near 0); b_f = +1
========  ==========================================================================

Row blocks (torch order first, then extras; the layer's :func:`soensim.layout`):

* GRU: ``reset, update, candidate`` (nn.GRU's r, z, n). The GRU has no independent
  input gate to repurpose, so the refine variants (R, OR, UR) add an H-row ``refine``
  block after ``candidate`` — the order :func:`gates.kernels.fused_gru_recurrence`
  expects for mode ``"refine"`` (r, z, n, rho). A refine GRU therefore has
  H·(I + H + 2) more parameters than nn.GRU.
* LSTM: ``input, forget, cell, output`` (nn.LSTM's i, f, g, o). Refine variants reuse
  the ``input`` block for the refine gate (the input gate is tied to 1 - g), so their
  parameter count equals nn.LSTM's.
* Master variants (OM, UM) add ``master_forget`` and ``master_input`` blocks of H/C rows
  each (C = ``master_chunk``, default 16, must divide H); unit j uses master unit j // C.

Master gates (Gu et al. eq. 19-23): with main gates f, i (GRU: i = 1 - f) and master
gates f̃, ĩ (OM: cumax and 1 - cumax; UM: sigmoids), ω = f̃·ĩ, the effective gates are
f̂ = f·ω + (f̃ - ω) and î = i·ω + (ĩ - ω).

``leaky`` mechanisms (-, C, U, R, UR, SST, SSTN) have a per-unit decay bias: with every other
pre-activation zero their effective decay gate is an elementwise function of it, so a
physical time constant maps to a bias (:meth:`Mechanism.bias_for_tau`: a leaky mechanism is the
``decay`` of its layer's :func:`soensim.layout`). cumax mixes units and master gates share values
across a chunk: those are not leaky.

``fused_mode`` names the kernel mode of a mechanism, the same on both cores: ``sigmoid`` (-, C, U),
``refine`` (R, UR), ``sst`` (SST), ``sst_candidate`` (SSTN), ``cumax`` (O), ``cumax_refine`` (OR), ``master_cumax`` (OM),
``master_sigmoid`` (UM); a layer runs it fused when :mod:`gates.kernels` has it.

Chrono T_max: Gu et al. §3 set T_max proportional to the hidden size when it is not
tuned but give no constant; soensim uses ``T_max = CHRONO_TMAX_PER_UNIT · H`` with
:data:`CHRONO_TMAX_PER_UNIT` = 1 (at least 3), unless ``chrono_tmax`` is given.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import torch
from torch import Tensor

from soensim.layouts import TORCH_BLOCKS
from soensim.timescales import bias_to_tau, tau_to_bias

Core = Literal["gru", "lstm"]

#: The block whose bias sets a unit's time constant.
DECAY_BLOCK: dict[str, str] = {"gru": "update", "lstm": "forget"}
#: Default downsize factor C of master gates (Gu et al. appendix D: 16 for synthetic/image tasks).
DEFAULT_MASTER_CHUNK = 16
#: T_max = CHRONO_TMAX_PER_UNIT × hidden size when ``chrono_tmax`` is not given (Gu et al. §3).
CHRONO_TMAX_PER_UNIT = 1.0
#: The "+1" of the standard forget/update-gate initialisation.
STANDARD_DECAY_BIAS = 1.0


# --------------------------------------------------------------------------- activations
def squared_sigmoid(x: Tensor) -> Tensor:
    """SST/SSTN gate activation sigmoid(x)², in (0, 1)."""
    return torch.sigmoid(x).square()


def signed_squared_tanh(x: Tensor) -> Tensor:
    """SSTN candidate tanh(x)·|tanh(x)|: the tanh squared with its sign kept, in (-1, 1)."""
    t = torch.tanh(x)
    return t * t.abs()


def cumax(x: Tensor, dim: int = -1) -> Tensor:
    """cumsum(softmax(x)) along ``dim``: non-decreasing, in [0, 1], last entry 1."""
    return torch.cumsum(torch.softmax(x, dim=dim), dim=dim)


def refine(f: Tensor, r: Tensor) -> Tensor:
    """Refined gate g = 2 r f + (1 - 2 r) f² = r·(1 - (1 - f)²) + (1 - r)·f².

    r interpolates between the lower band f² (r = 0) and the upper band 1 - (1 - f)²
    (r = 1); r = 1/2 gives g = f (Gu et al. eq. 16).
    """
    return 2 * r * f + (1 - 2 * r) * f * f


# --------------------------------------------------------------------------- bias draws
def ugi_bias(n: int, generator: torch.Generator | None = None, d: int | None = None) -> Tensor:
    """UGI biases logit(u), u ~ U[1/d, 1 - 1/d] (Gu et al. eq. 9, appendix A), float64 (n,).

    ``d`` is the hidden size that sets the bounds (default ``n``); for d ≤ 2 the bounds
    would be empty and U[1/4, 3/4] is used instead.
    """
    d = n if d is None else d
    if n < 1:
        raise ValueError(f"n must be ≥ 1; got {n}")
    lo = 1.0 / d if d > 2 else 0.25
    u = lo + (1 - 2 * lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.logit(u)


def chrono_bias(n: int, tmax: float, generator: torch.Generator | None = None) -> Tensor:
    """Chrono biases log(T), T ~ U[1, T_max - 1] (Tallec & Ollivier 2018; Gu et al. eq. 17), float64 (n,)."""
    if not tmax >= 2:
        raise ValueError(f"chrono_tmax must be ≥ 2 steps (T ~ U[1, T_max - 1]); got {tmax}")
    t = 1 + (tmax - 2) * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.log(t)


def default_chrono_tmax(hidden_size: int) -> float:
    """T_max used when none is given: ``max(CHRONO_TMAX_PER_UNIT · hidden_size, 3)``."""
    return max(CHRONO_TMAX_PER_UNIT * hidden_size, 3.0)


def _standard(n: int, generator: torch.Generator | None, tmax: float) -> Tensor:
    return torch.full((n,), STANDARD_DECAY_BIAS, dtype=torch.float64)


def _zero(n: int, generator: torch.Generator | None, tmax: float) -> Tensor:
    return torch.zeros(n, dtype=torch.float64)


#: Decay-gate bias initialisers: name -> ``fn(n, generator, tmax) -> float64 (n,)``.
BIAS_INITS: dict[str, Callable[[int, torch.Generator | None, float], Tensor]] = {
    "standard": _standard,
    "chrono": lambda n, gen, tmax: chrono_bias(n, tmax, gen),
    "ugi": lambda n, gen, tmax: ugi_bias(n, gen),
    "zero": _zero,
}


# --------------------------------------------------------------------------- mechanism
@dataclass(frozen=True)
class Mechanism:
    """One gating variant (see the module docstring). Immutable.

    Attributes:
        name, description: registry key and one line.
        activation: decay-gate activation: ``sigmoid``, ``cumax`` or ``sst`` (sigmoid², and
            sigmoid² in the other [0, 1] gates too, refine and master gates excepted).
        candidate_activation: the candidate's activation: ``tanh`` or ``signed_squared_tanh``
            (:func:`signed_squared_tanh`, SSTN).
        init: decay-gate bias initialiser, a key of :data:`BIAS_INITS`.
        refine: an auxiliary refine gate modulates the decay gate; input tied to 1 - g.
        master: auxiliary master gates, ``"cumax"`` (ON-LSTM) or ``"sigmoid"`` (UGI), or None.
        core: ``"gru"`` or ``"lstm"``; set by :meth:`for_core`.
    """

    name: str
    description: str
    activation: Literal["sigmoid", "cumax", "sst"]
    init: Literal["standard", "chrono", "ugi", "zero"]
    refine: bool = False
    master: Literal["cumax", "sigmoid"] | None = None
    candidate_activation: Literal["tanh", "signed_squared_tanh"] = "tanh"
    core: Core = "gru"

    def for_core(self, core: Core) -> "Mechanism":
        """The same mechanism bound to ``core``."""
        if core not in TORCH_BLOCKS:
            raise ValueError(f"core must be one of {sorted(TORCH_BLOCKS)}; got {core!r}")
        return dataclasses.replace(self, core=core)

    # ---------------------------------------------------------------- properties
    @property
    def leaky(self) -> bool:
        """True when the decay gate is an elementwise function of a per-unit bias."""
        return self.activation != "cumax" and self.master is None

    @property
    def fused_mode(self) -> str:
        """Kernel mode of this mechanism (the same on both cores; table in the module docstring)."""
        if self.master is not None:
            return f"master_{self.master}"
        if self.refine:
            return "refine" if self.activation == "sigmoid" else f"{self.activation}_refine"
        return f"{self.activation}_candidate" if self.squared_candidate else self.activation

    @property
    def squared_gates(self) -> bool:
        """The [0, 1] gates are sigmoid² (SST, SSTN)."""
        return self.activation == "sst"

    @property
    def squared_candidate(self) -> bool:
        """The candidate is tanh·|tanh| (SSTN)."""
        return self.candidate_activation == "signed_squared_tanh"

    @property
    def decay_block(self) -> str:
        """Block whose bias sets the time constant: ``update`` (GRU) or ``forget`` (LSTM)."""
        return DECAY_BLOCK[self.core]

    @property
    def refine_block(self) -> str | None:
        """Block holding the refine gate: its own ``refine`` block (GRU) or ``input`` (LSTM)."""
        if not self.refine:
            return None
        return "refine" if self.core == "gru" else "input"

    @property
    def extra_blocks(self) -> tuple[str, ...]:
        """Blocks added to the core's torch blocks (GRU refine block; master blocks)."""
        extra: tuple[str, ...] = ("refine",) if self.refine and self.core == "gru" else ()
        if self.master is not None:
            extra += ("master_forget", "master_input")
        return extra

    def block_rows(self, hidden_size: int, chunk: int = DEFAULT_MASTER_CHUNK) -> dict[str, int]:
        """Row count of every block, in order (the layer's layout is built from it).

        Raises ValueError for master mechanisms when ``chunk`` (C) does not divide ``hidden_size``.
        """
        rows = {b: hidden_size for b in TORCH_BLOCKS[self.core]}
        if self.refine and self.core == "gru":
            rows["refine"] = hidden_size
        if self.master is not None:
            if not isinstance(chunk, int) or chunk < 1 or hidden_size % chunk:
                raise ValueError(
                    f"master_chunk (downsize factor C) must be a positive int dividing hidden_size for "
                    f"master gates ({self.name!r}); got hidden_size={hidden_size}, master_chunk={chunk!r}"
                )
            rows["master_forget"] = rows["master_input"] = hidden_size // chunk
            if self.master == "cumax" and hidden_size // chunk == 1:
                warnings.warn(
                    f"gate {self.name!r} with hidden_size={hidden_size}, master_chunk={chunk} has one master unit: "
                    "cumax over one unit is constantly 1 (master input gate 0), so the state never changes; "
                    "use a smaller master_chunk", UserWarning, stacklevel=3)
        return rows

    # ---------------------------------------------------------------- activations
    def gate(self, pre: Tensor) -> Tensor:
        """Activation of the main decay gate (cumax along the last dim, sigmoid or sigmoid²)."""
        if self.activation == "cumax":
            return cumax(pre)
        return squared_sigmoid(pre) if self.squared_gates else torch.sigmoid(pre)

    def plain_gate(self, pre: Tensor) -> Tensor:
        """Activation of the other [0, 1] gates (reset, LSTM input and output): sigmoid, or sigmoid² for SST/SSTN."""
        return squared_sigmoid(pre) if self.squared_gates else torch.sigmoid(pre)

    def candidate(self, pre: Tensor) -> Tensor:
        """Candidate nonlinearity: tanh, or tanh·|tanh| for SSTN."""
        return signed_squared_tanh(pre) if self.squared_candidate else torch.tanh(pre)

    # ---------------------------------------------------------------- physics mapping
    def _require_leaky(self) -> None:
        if not self.leaky:
            raise ValueError(
                f"gate {self.name!r} has no per-unit decay bias (cumax/master gates mix units); "
                "leaky gates: " + ", ".join(n for n, m in GATES.items() if m.leaky)
            )

    def bias_for_decay(self, z: Tensor | float) -> dict[str, Tensor]:
        """Biases that make the effective decay gate equal ``z`` when every other pre-activation is 0.

        ``{decay_block: logit(z)}`` for sigmoid gates, ``{decay_block: logit(√z)}`` for SST/SSTN
        (sigmoid² = z), and for refine gates also ``{refine_block: 0}`` (r = 1/2 gives g = f).
        Float input gives float64. Raises ValueError for non-leaky mechanisms.
        """
        self._require_leaky()
        z = torch.as_tensor(z, dtype=torch.float64) if not isinstance(z, Tensor) else z
        out = {self.decay_block: torch.logit(z.sqrt() if self.squared_gates else z)}
        if self.refine:
            out[self.refine_block] = torch.zeros_like(z)  # type: ignore[index]
        return out

    def bias_for_tau(self, tau: Tensor | float, dt: Tensor | float) -> dict[str, Tensor]:
        """:meth:`bias_for_decay` of ``z = exp(-dt/tau)`` (``tau``, ``dt`` in one time unit), float64,
        computed without forming z: ``tau_to_bias(tau, dt)``; SST/SSTN ``tau_to_bias(2 tau, dt)`` since
        √z = exp(-dt/(2 tau))."""
        self._require_leaky()
        tau = torch.as_tensor(tau, dtype=torch.float64).double()
        b = tau_to_bias(2 * tau if self.squared_gates else tau, dt)
        out = {self.decay_block: b}
        if self.refine:
            out[self.refine_block] = torch.zeros_like(b)  # type: ignore[index]
        return out

    def tau_for_bias(self, bias: Tensor, dt: Tensor | float) -> Tensor:
        """Inverse of :meth:`bias_for_tau` on the decay block: the time constant (unit of ``dt``,
        float64) of a unit whose decay bias is ``bias`` (refine bias 0 assumed)."""
        self._require_leaky()
        tau = bias_to_tau(torch.as_tensor(bias).double(), dt)
        return tau / 2 if self.squared_gates else tau

    def decay_for_bias(self, b: Tensor) -> Tensor:
        """Inverse of :meth:`bias_for_decay` on the decay block: the decay gate at rest for bias ``b``
        (refine bias 0 assumed)."""
        self._require_leaky()
        return self.gate(b)

    # ---------------------------------------------------------------- initialisation
    def init_biases(self, bias: Mapping[str, Tensor], generator: torch.Generator | None = None,
                    chrono_tmax: float | None = None) -> set[str]:
        """Write initial values into the given bias row views (in place); returns the blocks written.

        ``bias`` maps every block name to a view of the rows of ``bias_ih`` (the caller zeroes
        the matching ``bias_hh`` rows of the returned blocks). Decay block: :data:`BIAS_INITS`
        ``[self.init]``; LSTM without refine and with chrono/UGI: input = -decay; refine block:
        -b_f for UGI (UR), else 0; master blocks: 0 (cumax) or UGI with b_mi = -b_mf (sigmoid).
        """
        f = self.decay_block
        h = bias[f].numel()
        tmax = default_chrono_tmax(h) if chrono_tmax is None else float(chrono_tmax)
        written = {f}
        b_f = BIAS_INITS[self.init](h, generator, tmax)
        with torch.no_grad():
            bias[f].copy_(b_f)
            if self.core == "lstm" and not self.refine and self.init in ("chrono", "ugi"):
                bias["input"].copy_(-b_f)  # approximately tied gates at init (Gu et al. eq. 18)
                written.add("input")
            if self.refine:
                rb = self.refine_block
                assert rb is not None
                bias[rb].copy_(-b_f if self.init == "ugi" else torch.zeros_like(b_f))
                written.add(rb)
            if self.master is not None:
                m = bias["master_forget"].numel()
                if self.master == "sigmoid":
                    b = ugi_bias(m, generator, d=h)
                    bias["master_forget"].copy_(b)
                    bias["master_input"].copy_(-b)
                else:
                    bias["master_forget"].zero_()
                    bias["master_input"].zero_()
                written |= {"master_forget", "master_input"}
        return written


def _m(name: str, description: str, **kw) -> Mechanism:
    return Mechanism(name=name, description=description, **kw)


#: The registry: name -> mechanism (GRU-bound; :func:`get_mechanism` binds another core).
GATES: dict[str, Mechanism] = {
    m.name: m
    for m in (
        _m("-", "standard sigmoid gates, decay-gate bias +1", activation="sigmoid", init="standard"),
        _m("C", "chrono initialisation b_f ~ log U[1, T_max - 1]", activation="sigmoid", init="chrono"),
        _m("O", "cumax (ordered) decay gate", activation="cumax", init="zero"),
        _m("U", "uniform gate initialisation (UGI)", activation="sigmoid", init="ugi"),
        _m("R", "refine gate, standard initialisation", activation="sigmoid", init="standard", refine=True),
        _m("OM", "ON-LSTM: sigmoid main gates, cumax master gates", activation="sigmoid", init="standard",
           master="cumax"),
        _m("UM", "sigmoid main gates, sigmoid master gates with UGI", activation="sigmoid", init="standard",
           master="sigmoid"),
        _m("OR", "cumax main gate + refine gate", activation="cumax", init="zero", refine=True),
        _m("UR", "UGI main gate + refine gate (refine bias -b_f)", activation="sigmoid", init="ugi", refine=True),
        _m("SST", "squared sigmoid-tanh: sigmoid^2 gates, tanh candidate", activation="sst", init="standard"),
        _m("SSTN", "SST with the candidate squared too (tanh*|tanh|)", activation="sst", init="standard",
           candidate_activation="signed_squared_tanh"),
    )
}


def get_mechanism(name: str, core: Core = "gru") -> Mechanism:
    """Registry lookup bound to ``core``; an unknown name lists the known ones."""
    if name not in GATES:
        raise ValueError(f"gate must be one of {list(GATES)}; got {name!r}")
    return GATES[name].for_core(core)


__all__ = [
    "BIAS_INITS", "CHRONO_TMAX_PER_UNIT", "DECAY_BLOCK", "DEFAULT_MASTER_CHUNK", "GATES",
    "Mechanism", "STANDARD_DECAY_BIAS", "chrono_bias", "cumax", "default_chrono_tmax",
    "get_mechanism", "refine", "signed_squared_tanh", "squared_sigmoid", "ugi_bias",
]
