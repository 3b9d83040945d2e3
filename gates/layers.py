"""Drop-in recurrent layers with any gating mechanism: ``GatedGRU`` and ``GatedLSTM``.

They follow ``torch.nn.GRU``/``torch.nn.LSTM``: the same leading constructor arguments
(``input_size, hidden_size, num_layers, bias, batch_first, dropout``), parameter names
(``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``), input layouts
(time-major, ``batch_first``, unbatched 2-D), initial states and return values. Rows of
the stacked gate dimension are grouped in named blocks (:meth:`gate_blocks`): torch's
order first, then the mechanism's extras (see :mod:`gates.mechanisms`).

Initialisation: every parameter uniform in ±1/√H (as torch), then the mechanism's bias
initialisation written into ``bias_ih`` with the matching ``bias_hh`` rows zero (the gate
sees the sum of both). Options: ``orthogonal_hh`` (orthogonal W_hh per block, papers/001),
``chrono_tmax``, ``master_chunk`` (C), ``seed``.

Paths (``implementation``):

* ``"torch"`` — torch's own GRU/LSTM kernel (``torch._VF.gru``/``lstm``: oneDNN on CPU,
  cuDNN on CUDA); standard gate ``-`` only;
* ``"fused"`` — :func:`gates.kernels.fused_gru_recurrence` (GRU core; modes sigmoid, refine,
  sst: gates -, C, U, R, UR, SST);
* ``"reference"`` — :mod:`gates.functional`, plain autograd, every mechanism;
* ``"auto"`` (default) — GRU ``-``: cuDNN on CUDA; on the CPU the compiled fused loop when
  the kernel's C++ backend is available (it beats nn.GRU there, DESIGN §6), else torch's
  kernel. LSTM ``-``: torch. Other mechanisms: fused if the GRU kernel has their mode,
  else reference.

While a :class:`gates.stats.GateRecorder` is active on a layer, it takes the reference path
and reports every step's gates; otherwise the forward path has no hooks.

Parameters are fetched by attribute access on every forward, so
``torch.nn.utils.parametrize`` transforms (:func:`soensim.constraints.constrain`) are
honoured on every path.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from . import functional as F
from .mechanisms import DEFAULT_MASTER_CHUNK, Core, Mechanism, get_mechanism

from .kernels import available_modes, backend_for, fused_gru_recurrence, input_projection

IMPLEMENTATIONS = ("auto", "torch", "fused", "reference")


def _has_fused(mode: str | None) -> bool:
    return mode is not None and mode in available_modes()


class _GatedRNN(nn.Module):
    core: Core

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 gate: str = "-", chrono_tmax: float | None = None, master_chunk: int = DEFAULT_MASTER_CHUNK,
                 orthogonal_hh: bool = False, implementation: str = "auto", seed: int | None = None,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for label, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{label} must be an int ≥ 1; got {v!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        if bidirectional:
            raise ValueError(f"{type(self).__name__} is unidirectional (bidirectional=True is not supported)")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = False
        self.gate = gate
        self.mechanism: Mechanism = get_mechanism(gate, self.core)
        self.decay_gate = self.mechanism.decay_block
        self.master_chunk = master_chunk
        self._rows = self.mechanism.block_rows(hidden_size, master_chunk)
        self.chrono_tmax, self.orthogonal_hh, self.seed = chrono_tmax, orthogonal_hh, seed
        self.implementation = implementation
        self._check_implementation(implementation)
        self._gate_recorder: Any = None  # set only while a gates.stats.GateRecorder is active
        rows = sum(self._rows.values())
        factory = {"device": device, "dtype": dtype}
        for k in range(num_layers):
            in_k = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(rows, in_k, **factory)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(rows, hidden_size, **factory)))
            if bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(rows, **factory)))
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(rows, **factory)))
        self.reset_parameters()

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
        if self.bias:
            b_ih, b_hh = getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}")
        else:
            b_ih = b_hh = None
        return getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}"), b_ih, b_hh

    def flatten_parameters(self) -> None:
        """No-op, for code written against torch.nn.RNNBase (weights are read on every forward)."""

    def reset_parameters(self, *, chrono_tmax: float | None = None, orthogonal_hh: bool | None = None,
                         seed: int | None = None) -> None:
        """torch's uniform(±1/√H) init, then the mechanism's bias init (values in ``bias_ih`` only).

        Arguments default to those given to the constructor; ``seed`` seeds a private generator
        (otherwise torch's global RNG is used, like torch's layers).
        """
        tmax = self.chrono_tmax if chrono_tmax is None else chrono_tmax
        ortho = self.orthogonal_hh if orthogonal_hh is None else orthogonal_hh
        seed = self.seed if seed is None else seed
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        bound = 1.0 / math.sqrt(self.hidden_size)
        blocks = self.gate_blocks()
        with torch.no_grad():
            for k in range(self.num_layers):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    p = getattr(self, f"{name}_l{k}", None)
                    if p is not None:
                        p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * (2 * bound) - bound)
                if ortho:
                    w = getattr(self, f"weight_hh_l{k}")
                    for sl in blocks.values():
                        q = torch.empty(sl.stop - sl.start, self.hidden_size, dtype=torch.float64)
                        nn.init.orthogonal_(q, generator=gen)
                        w[sl] = q.to(w)
                if self.bias:
                    b_ih, b_hh = getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}")
                    views = {n: torch.zeros(sl.stop - sl.start, dtype=torch.float64) for n, sl in blocks.items()}
                    written = self.mechanism.init_biases(views, gen, tmax)
                    for n in written:
                        b_ih[blocks[n]] = views[n].to(b_ih)
                        b_hh[blocks[n]] = 0.0

    # ------------------------------------------------------------------ paths
    def _check_implementation(self, impl: str) -> None:
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {impl!r}")
        if impl == "torch" and self.gate != "-":
            raise ValueError(f"implementation='torch' supports gate '-' only; got gate={self.gate!r}")
        if impl == "fused":
            if self.core != "gru" or self.mechanism.fused_mode is None:
                raise ValueError("implementation='fused' needs a GRU core with gate in -, C, U, R, UR, SST; "
                                 f"got {self.core} {self.gate!r}")

    def _param(self) -> Tensor:
        return next(self.parameters())  # the raw parameter: device/dtype without running a transform

    def resolved_implementation(self) -> str:
        """The path ``forward`` takes for the current settings (``auto`` resolved)."""
        impl = self.implementation
        if impl != "auto":
            self._check_implementation(impl)
            return impl
        mode = self.mechanism.fused_mode if self.core == "gru" else None
        if self.gate == "-":
            p = self._param()
            if self.core == "gru" and p.device.type == "cpu" and _has_fused(mode) and backend_for(p.device, p.dtype) == "cpp":
                return "fused"  # compiled CPU loop: faster than torch.nn.GRU (DESIGN §6)
            return "torch"
        return "fused" if _has_fused(mode) else "reference"

    def _check_input(self, x: Tensor) -> tuple[Tensor, bool]:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a Tensor; got {type(x).__name__} (packed sequences are not supported)")
        if x.dim() not in (2, 3):
            raise ValueError(f"input must be (T, B, {self.input_size}), (B, T, {self.input_size}) with batch_first, "
                             f"or unbatched (T, {self.input_size}); got shape {tuple(x.shape)}")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input feature size must be input_size={self.input_size}; got {x.shape[-1]}")
        return x, unbatched

    def _state(self, h: Tensor | None, x: Tensor, unbatched: bool, label: str) -> Tensor:
        if h is None:
            return x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)
        if unbatched and h.dim() == 2:
            h = h.unsqueeze(1)
        expected = (self.num_layers, x.shape[1], self.hidden_size)
        if tuple(h.shape) != expected:
            want = (self.num_layers, self.hidden_size) if unbatched else expected
            raise ValueError(f"{label} must have shape {want} (num_layers, batch, hidden_size); got {tuple(h.shape)}")
        return h

    def _finish(self, out: Tensor, unbatched: bool) -> Tensor:
        if unbatched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out

    def _flat(self) -> list[Tensor]:
        flat: list[Tensor] = []
        for k in range(self.num_layers):
            flat += [p for p in self.layer_params(k) if p is not None]
        return flat

    def _between_layers(self, out: Tensor, k: int) -> Tensor:
        if self.dropout and self.training and k < self.num_layers - 1:
            return torch.nn.functional.dropout(out, self.dropout, True)
        return out

    def _on_step(self, k: int) -> F.StepCallback | None:
        rec = self._gate_recorder
        return None if rec is None else rec._callback(self, k)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, gate={self.gate!r}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.mechanism.master is not None:
            s += f", master_chunk={self.master_chunk}"
        if self.implementation != "auto":
            s += f", implementation={self.implementation!r}"
        return s


class GatedGRU(_GatedRNN):
    """GRU with a selectable gating mechanism; a drop-in for ``torch.nn.GRU``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout: as ``nn.GRU``
            (``bidirectional`` is accepted for signature compatibility and must be False).
        gate: a name from :data:`gates.mechanisms.GATES` (default ``"-"``, the standard GRU).
        chrono_tmax: T_max of chrono init in steps (default ``CHRONO_TMAX_PER_UNIT · hidden_size``).
        master_chunk: downsize factor C of master gates (must divide ``hidden_size``).
        orthogonal_hh: orthogonal init of each recurrent block (papers/001).
        implementation: ``"auto"``, ``"torch"``, ``"fused"`` or ``"reference"`` (module docstring).
        seed: seeds the initialisation (otherwise torch's global RNG).
        device, dtype: of the parameters.

    Shapes: input (T, B, I), (B, T, I) with ``batch_first`` or unbatched (T, I); ``hx``
    (L, B, H) or (L, H) unbatched. Returns ``(output, h_n)`` like ``nn.GRU``.
    """

    core = "gru"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: A002
        x, unbatched = self._check_input(input)
        h0 = self._state(hx, x, unbatched, "h0")
        path = "reference" if self._gate_recorder is not None else self.resolved_implementation()
        if path == "torch":
            out, hn = torch._VF.gru(x, h0, self._flat(), self.bias, self.num_layers, self.dropout,
                                    self.training, False, False)
        else:
            layer_in, finals = x, []
            for k in range(self.num_layers):
                w_ih, w_hh, b_ih, b_hh = self.layer_params(k)
                if path == "fused":
                    gi = input_projection(layer_in, w_ih, b_ih)
                    out, h = fused_gru_recurrence(gi, h0[k], w_hh, b_hh, self.mechanism.fused_mode)
                else:
                    out, h = F.gru_sequence(self.mechanism, layer_in, h0[k], w_ih, w_hh, b_ih, b_hh, self._rows,
                                            self._on_step(k))
                finals.append(h)
                layer_in = self._between_layers(out, k)
            out, hn = layer_in, torch.stack(finals)
        return self._finish(out, unbatched), (hn.squeeze(1) if unbatched else hn)


class GatedLSTM(_GatedRNN):
    """LSTM with a selectable gating mechanism; a drop-in for ``torch.nn.LSTM`` (no ``proj_size``).

    Arguments as :class:`GatedGRU`. ``hx`` is ``(h0, c0)``; returns ``(output, (h_n, c_n))``.
    The standard gate runs on torch's LSTM kernel; the variants on the reference recurrence.
    """

    core = "lstm"

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None  # noqa: A002
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x, unbatched = self._check_input(input)
        if hx is None:
            h0 = c0 = self._state(None, x, unbatched, "h0")
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError("hx must be a tuple (h0, c0) for an LSTM")
            h0, c0 = self._state(hx[0], x, unbatched, "h0"), self._state(hx[1], x, unbatched, "c0")
        path = "reference" if self._gate_recorder is not None else self.resolved_implementation()
        if path == "torch":
            out, hn, cn = torch._VF.lstm(x, (h0, c0), self._flat(), self.bias, self.num_layers, self.dropout,
                                         self.training, False, False)
        else:
            layer_in, hs, cs = x, [], []
            for k in range(self.num_layers):
                w_ih, w_hh, b_ih, b_hh = self.layer_params(k)
                out, h, c = F.lstm_sequence(self.mechanism, layer_in, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh,
                                            self._rows, self._on_step(k))
                hs.append(h)
                cs.append(c)
                layer_in = self._between_layers(out, k)
            out, hn, cn = layer_in, torch.stack(hs), torch.stack(cs)
        if unbatched:
            return out.squeeze(1), (hn.squeeze(1), cn.squeeze(1))
        return self._finish(out, False), (hn, cn)


def build_layer(cell: str, *args: Any, **kwargs: Any) -> _GatedRNN:
    """``GatedGRU`` for ``cell="gru"``, ``GatedLSTM`` for ``"lstm"``; other arguments passed on."""
    classes = {"gru": GatedGRU, "lstm": GatedLSTM}
    if cell not in classes:
        raise ValueError(f"cell must be one of {sorted(classes)}; got {cell!r}")
    return classes[cell](*args, **kwargs)


__all__ = ["GatedGRU", "GatedLSTM", "IMPLEMENTATIONS", "build_layer"]
