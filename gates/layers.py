"""Drop-in recurrent layers with any gating mechanism: ``GatedGRU`` and ``GatedLSTM``.

They follow ``torch.nn.GRU``/``torch.nn.LSTM``: same constructor arguments, parameter
names (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``),
``batch_first``, ``h0`` and return values. Rows are grouped in named blocks
(:meth:`gate_blocks`): torch's order first, then mechanism extras.

Paths (``implementation``):

* ``"torch"`` — torch's own GRU/LSTM kernel (oneDNN/cuDNN); standard gate ``-`` only;
* ``"fused"`` — :func:`gates.kernels.fused_gru_recurrence` (GRU core, sigmoid/refine/SST);
* ``"reference"`` — :mod:`gates.functional`, plain autograd, every mechanism;
* ``"auto"`` (default) — the fastest path available for the mechanism.

Parameters are fetched by attribute access on every forward, so
``torch.nn.utils.parametrize`` transforms (see :func:`soensim.constraints.constrain`)
are honoured on every path.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from . import functional as F
from .mechanisms import Core, Mechanism, get_mechanism

try:
    from .kernels import available_modes, fused_gru_recurrence
except ImportError:  # pragma: no cover - kernels are part of the package
    fused_gru_recurrence = None

    def available_modes() -> tuple[str, ...]:
        return ()

IMPLEMENTATIONS = ("auto", "torch", "fused", "reference")


class _GatedRNN(nn.Module):
    core: Core

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, gate: str = "-", *,
                 chrono_tmax: float | None = None, master_chunk: int = 16, orthogonal_hh: bool = False,
                 implementation: str = "auto", seed: int | None = None) -> None:
        super().__init__()
        for label, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{label} must be an int ≥ 1; got {v!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, dropout
        self.gate, self.implementation = gate, implementation
        self.mechanism: Mechanism = get_mechanism(gate, self.core)
        self.decay_gate = self.mechanism.decay_block
        self._rows = self.mechanism.block_rows(hidden_size, master_chunk)
        self.master_chunk = master_chunk
        if implementation == "torch" and gate != "-":
            raise ValueError(f"implementation='torch' supports gate '-' only; got gate={gate!r}")
        if implementation == "fused" and (self.core != "gru" or self.mechanism.fused_mode is None):
            raise ValueError(f"implementation='fused' needs a GRU core with gate in -, C, U, R, UR, SST; got {self.core} {gate!r}")
        rows = sum(self._rows.values())
        for k in range(num_layers):
            in_k = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(rows, in_k)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(rows, hidden_size)))
            if bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(rows)))
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(rows)))
        self.reset_parameters(chrono_tmax=chrono_tmax, orthogonal_hh=orthogonal_hh, seed=seed)

    # ------------------------------------------------------------------ layout
    def gate_blocks(self) -> dict[str, slice]:
        """Rows of each named block in the stacked gate dimension (same for every layer)."""
        out, start = {}, 0
        for name, n in self._rows.items():
            out[name] = slice(start, start + n)
            start += n
        return out

    def layer_params(self, k: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(w_ih, w_hh, b_ih, b_hh) of layer ``k``, fetched now (honours parametrizations)."""
        g = lambda n: getattr(self, f"{n}_l{k}") if self.bias or not n.startswith("bias") else None  # noqa: E731
        return g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh")

    def reset_parameters(self, *, chrono_tmax: float | None = None, orthogonal_hh: bool = False,
                         seed: int | None = None) -> None:
        """torch's uniform(±1/√H) init, then the mechanism's bias init (values in ``bias_ih`` only)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        bound = 1.0 / math.sqrt(self.hidden_size)
        blocks = self.gate_blocks()
        with torch.no_grad():
            for k in range(self.num_layers):
                for p in (getattr(self, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                          if hasattr(self, f"{n}_l{k}")):
                    p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
                if orthogonal_hh:
                    w = getattr(self, f"weight_hh_l{k}")
                    for sl in blocks.values():
                        nn.init.orthogonal_(w[sl], generator=gen)
                if self.bias:
                    b_ih, b_hh = getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}")
                    written = self.mechanism.init_biases({n: b_ih[sl] for n, sl in blocks.items()}, gen, chrono_tmax)
                    for n in written:
                        b_hh[blocks[n]].zero_()

    # ------------------------------------------------------------------ paths
    def resolved_implementation(self) -> str:
        """The path ``forward`` takes for the current settings."""
        if self.implementation != "auto":
            return self.implementation
        on_cuda = self.weight_hh_l0.is_cuda
        if self.gate == "-" and (on_cuda or self.core == "lstm"):
            return "torch"  # cuDNN / oneDNN
        if self.core == "gru" and self.mechanism.fused_mode in available_modes():
            return "fused"  # on CPU the fused loop beats torch.nn.GRU (see docs/benchmarks.md)
        return "torch" if self.gate == "-" else "reference"

    def _check_input(self, x: Tensor) -> tuple[Tensor, bool]:
        if x.dim() not in (2, 3):
            raise ValueError(f"input must be (T, B, {self.input_size}) (or batch_first / unbatched 2-D); got shape {tuple(x.shape)}")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input feature size must be input_size={self.input_size}; got {x.shape[-1]}")
        return x, unbatched

    def _zeros(self, x: Tensor) -> Tensor:
        return x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)

    def _check_state(self, h: Tensor, x: Tensor, label: str) -> Tensor:
        if h.dim() == 2:
            h = h.unsqueeze(1)
        expected = (self.num_layers, x.shape[1], self.hidden_size)
        if tuple(h.shape) != expected:
            raise ValueError(f"{label} must have shape {expected} (num_layers, batch, hidden_size); got {tuple(h.shape)}")
        return h

    def _finish(self, out: Tensor, unbatched: bool) -> Tensor:
        if unbatched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out

    def _flat(self) -> list[Tensor]:
        flat = []
        for k in range(self.num_layers):
            flat += [p for p in self.layer_params(k) if p is not None]
        return flat

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, gate={self.gate!r}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.batch_first:
            s += ", batch_first=True"
        return s


class GatedGRU(_GatedRNN):
    """GRU with a selectable gating mechanism; a drop-in for ``torch.nn.GRU``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout: as ``nn.GRU``.
        gate: a name from :data:`gates.mechanisms.GATES`.
        chrono_tmax: T_max of chrono init (steps); default the hidden size.
        master_chunk: downsize factor C of master gates (must divide hidden_size).
        orthogonal_hh: orthogonal init of each recurrent block (papers/001).
        implementation: ``auto``, ``torch``, ``fused`` or ``reference``.
        seed: seeds the initialisation (otherwise torch's global RNG).

    Shapes: x (T, B, I) or (B, T, I) with ``batch_first``; h0 (L, B, H).
    Returns ``(output (T, B, H), h_n (L, B, H))``.
    """

    core = "gru"

    def forward(self, x: Tensor, h0: Tensor | None = None, *,
                record: list[list[Tensor]] | None = None) -> tuple[Tensor, Tensor]:
        x, unbatched = self._check_input(x)
        h0 = self._zeros(x) if h0 is None else self._check_state(h0, x, "h0")
        path = "reference" if record is not None else self.resolved_implementation()
        if path == "torch":
            out, hn = torch._VF.gru(x, h0, self._flat(), self.bias, self.num_layers,
                                    self.dropout, self.training, False, False)
            return self._finish(out, unbatched), (hn.squeeze(1) if unbatched else hn)
        layer_in, finals = x, []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_params(k)
            if path == "fused":
                gi = torch.nn.functional.linear(layer_in, w_ih, b_ih)
                if b_hh is None:
                    b_hh = w_hh.new_zeros(w_hh.shape[0])
                out, h = fused_gru_recurrence(gi, h0[k], w_hh, b_hh, self.mechanism.fused_mode)
            else:
                steps: list[Tensor] | None = [] if record is not None else None
                out, h = F.gru_sequence(self.mechanism, layer_in, h0[k], w_ih, w_hh, b_ih, b_hh, self._rows, steps)
                if record is not None:
                    record.append(steps)  # type: ignore[arg-type]
            finals.append(h)
            layer_in = out
            if self.dropout and self.training and k < self.num_layers - 1:
                layer_in = torch.nn.functional.dropout(layer_in, self.dropout, True)
        hn = torch.stack(finals)
        return self._finish(layer_in, unbatched), (hn.squeeze(1) if unbatched else hn)


class GatedLSTM(_GatedRNN):
    """LSTM with a selectable gating mechanism; a drop-in for ``torch.nn.LSTM``.

    Arguments as :class:`GatedGRU`. Returns ``(output, (h_n, c_n))``. The standard gate
    runs on torch's LSTM kernel; the variants run the reference recurrence.
    """

    core = "lstm"

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None, *,
                record: list[list[Tensor]] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x, unbatched = self._check_input(x)
        if state is None:
            h0 = c0 = self._zeros(x)
        else:
            h0, c0 = self._check_state(state[0], x, "h0"), self._check_state(state[1], x, "c0")
        path = "reference" if record is not None else self.resolved_implementation()
        if path == "fused":
            raise ValueError("implementation='fused' is GRU-only")
        if path == "torch":
            out, hn, cn = torch._VF.lstm(x, (h0, c0), self._flat(), self.bias, self.num_layers,
                                         self.dropout, self.training, False, False)
        else:
            layer_in, hs, cs = x, [], []
            for k in range(self.num_layers):
                w_ih, w_hh, b_ih, b_hh = self.layer_params(k)
                steps: list[Tensor] | None = [] if record is not None else None
                out, h, c = F.lstm_sequence(self.mechanism, layer_in, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh,
                                            self._rows, steps)
                if record is not None:
                    record.append(steps)  # type: ignore[arg-type]
                hs.append(h)
                cs.append(c)
                layer_in = out
                if self.dropout and self.training and k < self.num_layers - 1:
                    layer_in = torch.nn.functional.dropout(layer_in, self.dropout, True)
            out, hn, cn = layer_in, torch.stack(hs), torch.stack(cs)
        if unbatched:
            return out.squeeze(1), (hn.squeeze(1), cn.squeeze(1))
        return self._finish(out, False), (hn, cn)


def build_layer(cell: str, *args: Any, **kwargs: Any) -> _GatedRNN:
    """``GatedGRU`` for ``cell="gru"``, ``GatedLSTM`` for ``"lstm"``."""
    classes = {"gru": GatedGRU, "lstm": GatedLSTM}
    if cell not in classes:
        raise ValueError(f"cell must be one of {sorted(classes)}; got {cell!r}")
    return classes[cell](*args, **kwargs)


__all__ = ["GatedGRU", "GatedLSTM", "IMPLEMENTATIONS", "build_layer"]
