"""Drop-in recurrent layers with any gating mechanism: ``GatedGRU`` and ``GatedLSTM``.

They follow ``torch.nn.GRU``/``torch.nn.LSTM``: the same leading constructor arguments
(``input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional``, LSTM
``proj_size``), parameter names (``weight_ih_l{k}[_reverse]``, ``weight_hh_…``, ``bias_ih_…``,
``bias_hh_…``, ``weight_hr_…``), input layouts (time-major, ``batch_first``, unbatched 2-D),
initial states and return values. Rows of the stacked gate dimension are grouped in named
blocks, declared by :meth:`layout` (the :func:`soensim.layout` contract): torch's order
first, then the mechanism's extras (see :mod:`gates.mechanisms`).

Initialisation: every parameter uniform in ±1/√H (as torch), then the mechanism's bias
initialisation written into ``bias_ih`` with the matching ``bias_hh`` rows zero (the gate
sees the sum of both). Options: ``orthogonal_hh`` (orthogonal W_hh per block, as in
Malandain 2026, "Ablation of Gate Biases in GRUs for s-CIFAR-10"), ``chrono_tmax``,
``master_chunk`` (C), ``seed``.

Paths (``implementation``):

* ``"torch"`` — torch's own GRU/LSTM kernel (``torch.gru``/``torch.lstm``: oneDNN on CPU,
  cuDNN on CUDA); standard gate ``-`` only, and the only path for ``bidirectional=True``
  and ``proj_size > 0``;
* ``"fused"`` — the fused recurrence of the core (:data:`FUSED_RECURRENCES`, from
  :mod:`gates.kernels`) in the mechanism's kernel mode, where the kernels have that mode;
* ``"triton"`` — the Triton kernels of :mod:`gates.kernels` (:data:`TRITON_RECURRENCES`; CUDA, or
  the CPU under ``TRITON_INTERPRET=1``), every mode on both cores; needs the ``triton`` extra;
* ``"reference"`` — :mod:`gates.functional`, plain autograd, every mechanism;
* ``"auto"`` (default) — on CUDA with triton installed, every gate but ``-`` runs on Triton;
  gate ``-``: on the CPU the fused loop when the kernels' compiled
  backend is available (it beats nn.GRU there, see ``docs/benchmarks.md``), else torch's
  kernel (cuDNN on CUDA). Other mechanisms: fused when the kernels have their mode, else
  reference.

While a :class:`gates.stats.GateRecorder` is active on a layer, it takes the reference path
and reports every step's gates; otherwise the forward path has no hooks.

Parameters are fetched by attribute access on every forward, so
``torch.nn.utils.parametrize`` transforms (:func:`soensim.constrain`,
:func:`soensim.constraints.freeze_biases`) are honoured on every path.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from soensim.layouts import Cell, Layout, gate_layout, rnn_cells

from . import functional as F
from .kernels import available_modes, backend_for, fused_gru_recurrence, fused_lstm_recurrence, input_projection
from .mechanisms import DEFAULT_MASTER_CHUNK, Core, Mechanism, get_mechanism

IMPLEMENTATIONS = ("auto", "torch", "fused", "triton", "reference")

#: A layer's recurrent state: GRU ``(h,)``, LSTM ``(h, c)``; each (B, H) per cell or (L·D, B, H) stacked.
State = tuple[Tensor, ...]


def _fused_gru(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, mode: str) -> tuple[Tensor, State]:
    out, h = fused_gru_recurrence(gi, state[0], w_hh, b_hh, mode)
    return out, (h,)


def _fused_lstm(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, mode: str) -> tuple[Tensor, State]:
    out, h, c = fused_lstm_recurrence(gi, state[0], state[1], w_hh, b_hh, mode)
    return out, (h, c)


#: Fused recurrence of each core: ``(gi (T, B, G), state, w_hh, b_hh, mode) -> (out (T, B, H), state)``,
#: with ``gi = x W_ih^T + b_ih`` from :func:`gates.kernels.input_projection`.
FUSED_RECURRENCES: dict[str, Callable[[Tensor, State, Tensor, Tensor | None, str], tuple[Tensor, State]]] = {
    "gru": _fused_gru,
    "lstm": _fused_lstm,
}


def triton_available(device: Any) -> bool:
    """Triton is installed and its kernels run on ``device`` here (CUDA; the CPU under ``TRITON_INTERPRET=1``)."""
    try:
        from .kernels import triton_common
    except ImportError:
        return False
    return torch.device(device).type == triton_common.kernel_device()


def _triton_gru(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, mode: str) -> tuple[Tensor, State]:
    from .kernels.triton_gru import triton_gru_recurrence

    out, h = triton_gru_recurrence(gi, state[0], w_hh, b_hh, mode)
    return out, (h,)


def _triton_lstm(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, mode: str) -> tuple[Tensor, State]:
    from .kernels.triton_lstm import triton_lstm_recurrence

    out, h, c = triton_lstm_recurrence(gi, state[0], state[1], w_hh, b_hh, mode)
    return out, (h, c)


#: Triton recurrence of each core, same call as :data:`FUSED_RECURRENCES` (imported on first use).
TRITON_RECURRENCES = {"gru": _triton_gru, "lstm": _triton_lstm}
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_available(core: str, mode: str) -> bool:
    """True when :mod:`gates.kernels` runs kernel ``mode`` on ``core`` fused."""
    return core in FUSED_RECURRENCES and mode in available_modes(core)


class _GatedRNN(nn.Module):
    core: Core

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0, *,
                 gate: str = "-", chrono_tmax: float | None = None, master_chunk: int = DEFAULT_MASTER_CHUNK,
                 orthogonal_hh: bool = False, implementation: str = "auto", seed: int | None = None,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for label, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{label} must be an int ≥ 1; got {v!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or not 0 <= proj_size < hidden_size:
            raise ValueError(f"proj_size must be an int in [0, hidden_size={hidden_size}); got {proj_size!r}")
        if proj_size and self.core != "lstm":
            raise ValueError("proj_size is an LSTM option (torch.nn.LSTM); a GRU has no projection")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bool(bidirectional), proj_size
        self.gate = gate
        self.mechanism: Mechanism = get_mechanism(gate, self.core)
        self.master_chunk = master_chunk
        self._rows = self.mechanism.block_rows(hidden_size, master_chunk)
        self.chrono_tmax, self.orthogonal_hh, self.seed = chrono_tmax, orthogonal_hh, seed
        self.implementation = implementation
        self._gate_recorder: Any = None  # set only while a gates.stats.GateRecorder is active
        directions = 2 if self.bidirectional else 1
        self._cells: tuple[Cell, ...] = rnn_cells(self, num_layers, directions, bias, proj_size > 0)
        rows = sum(self._rows.values())
        out = proj_size or hidden_size
        factory = {"device": device, "dtype": dtype}
        for c in self._cells:  # torch's parameter order: w_ih, w_hh, b_ih, b_hh, w_hr per cell
            in_k = input_size if c.layer == 0 else out * directions
            shapes = [(c.weight_ih, (rows, in_k)), (c.weight_hh, (rows, out)), (c.bias_ih, (rows,)),
                      (c.bias_hh, (rows,)), (c.weight_hr, (proj_size, hidden_size))]
            for name, shape in shapes:
                if name is not None:
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self._check_implementation(implementation)  # after the parameters: triton checks their device
        self.reset_parameters()

    # ------------------------------------------------------------------ layout
    def layout(self) -> Layout:
        """The :class:`soensim.layouts.Layout` of this layer: blocks, cells, roles, mechanism."""
        m = self.mechanism
        return gate_layout(self.core, self.hidden_size, self._rows, self._cells, mechanism=self.gate,
                           leaky=m.leaky, mode=m.fused_mode, decay=m if m.leaky else None,
                           refine_block=m.refine_block)

    def _cell_params(self, c: Cell) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(w_ih, w_hh, b_ih, b_hh) of cell ``c``, fetched now (honours parametrizations)."""
        b_ih = getattr(self, c.bias_ih) if c.bias_ih else None
        b_hh = getattr(self, c.bias_hh) if c.bias_hh else None
        return getattr(self, c.weight_ih), getattr(self, c.weight_hh), b_ih, b_hh

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
        blocks = self.layout().blocks
        with torch.no_grad():
            for c in self._cells:
                for name in (c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh, c.weight_hr):
                    if name is not None:
                        p = getattr(self, name)
                        p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * (2 * bound) - bound)
                if ortho:
                    w = getattr(self, c.weight_hh)
                    for sl in blocks.values():
                        q = torch.empty(sl.stop - sl.start, w.shape[1], dtype=torch.float64)
                        nn.init.orthogonal_(q, generator=gen)
                        w[sl] = q.to(w)
                if self.bias:
                    b_ih, b_hh = getattr(self, c.bias_ih), getattr(self, c.bias_hh)
                    views = {n: torch.zeros(sl.stop - sl.start, dtype=torch.float64) for n, sl in blocks.items()}
                    for n in self.mechanism.init_biases(views, gen, tmax):
                        b_ih[blocks[n]] = views[n].to(b_ih)
                        b_hh[blocks[n]] = 0.0

    # ------------------------------------------------------------------ paths
    def _check_implementation(self, impl: str) -> None:
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {impl!r}")
        if (self.bidirectional or self.proj_size) and (self.gate != "-" or impl not in ("auto", "torch")):
            raise ValueError("bidirectional=True and proj_size > 0 run on implementation='torch' (gate '-') only; "
                             f"got gate={self.gate!r}, implementation={impl!r}")
        if impl == "torch" and self.gate != "-":
            raise ValueError(f"implementation='torch' supports gate '-' only; got gate={self.gate!r}")
        if impl == "triton" and (self.bidirectional or self.proj_size or not triton_available(self._param().device)):
            raise ValueError("implementation='triton' needs triton installed, a CUDA device (or the CPU under "
                             "TRITON_INTERPRET=1), one direction and no projection")
        mode = self.mechanism.fused_mode
        if impl == "fused" and not fused_available(self.core, mode):
            cores = "/".join(c.upper() for c in FUSED_RECURRENCES)
            raise ValueError(f"implementation='fused' needs a {cores} core with a fused kernel mode "
                             f"{available_modes(self.core)}; got {self.core} gate {self.gate!r} (mode {mode!r})")

    def _param(self) -> Tensor:
        return next(self.parameters())  # the raw parameter: device/dtype without running a transform

    def resolved_implementation(self) -> str:
        """The path ``forward`` takes for the current settings (``auto`` resolved)."""
        impl = self.implementation
        if impl != "auto":
            self._check_implementation(impl)
            return impl
        p = self._param()
        if (self.gate != "-" and p.device.type == "cuda" and p.dtype in _TRITON_DTYPES
                and not (self.bidirectional or self.proj_size) and triton_available(p.device)):
            return "triton"  # every mechanism cuDNN cannot run
        fused = fused_available(self.core, self.mechanism.fused_mode)
        if self.gate == "-":
            if (fused and not (self.bidirectional or self.proj_size) and p.device.type == "cpu"
                    and backend_for(p.device, p.dtype) == "cpp"):
                return "fused"  # compiled CPU loop: faster than torch.nn.GRU (docs/benchmarks.md)
            return "torch"
        return "fused" if fused else "reference"

    def _path(self) -> str:
        if self._gate_recorder is None:
            return self.resolved_implementation()
        self._check_implementation("reference")
        return "reference"

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

    def _state(self, h: Tensor | None, x: Tensor, unbatched: bool, label: str, size: int) -> Tensor:
        """Initial state (L·D, B, size) from ``hx`` (zeros when None)."""
        expected = (len(self._cells), x.shape[1], size)
        if h is None:
            return x.new_zeros(expected)
        if unbatched and h.dim() == 2:
            h = h.unsqueeze(1)
        if tuple(h.shape) != expected:
            want = (expected[0], size) if unbatched else expected
            raise ValueError(f"{label} must have shape {want} (num_layers × directions, batch, {size}); "
                             f"got {tuple(h.shape)}")
        return h

    def _finish(self, out: Tensor, unbatched: bool) -> Tensor:
        if unbatched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out

    def _flat(self) -> list[Tensor]:
        """Every cell's tensors in torch's flat-weights order (w_ih, w_hh, b_ih, b_hh, w_hr)."""
        names = (n for c in self._cells for n in (c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh, c.weight_hr))
        return [getattr(self, n) for n in names if n is not None]

    def _between_layers(self, out: Tensor, k: int) -> Tensor:
        if self.dropout and self.training and k < self.num_layers - 1:
            return torch.nn.functional.dropout(out, self.dropout, True)
        return out

    def _on_step(self, k: int) -> F.StepCallback | None:
        rec = self._gate_recorder
        return None if rec is None else rec._callback(self, k)

    def _torch(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def _reference(self, x: Tensor, state: State, params: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
                   on_step: F.StepCallback | None) -> tuple[Tensor, State]:
        raise NotImplementedError

    def _run(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """All cells over the time-major input ``x`` (T, B, I) from ``state`` (each (L·D, B, ·))."""
        path = self._path()
        if path == "torch":
            return self._torch(x, state)
        layer_in, finals = x, []
        for k, c in enumerate(self._cells):  # one direction: cell k is layer k
            params = self._cell_params(c)
            s = tuple(t[k] for t in state)
            if path in ("fused", "triton"):
                gi = input_projection(layer_in, params[0], params[2])
                table = FUSED_RECURRENCES if path == "fused" else TRITON_RECURRENCES
                out, s = table[self.core](gi, s, params[1], params[3], self.mechanism.fused_mode)
            else:
                out, s = self._reference(layer_in, s, params, self._on_step(k))
            finals.append(s)
            layer_in = self._between_layers(out, k)
        return layer_in, tuple(torch.stack(f) for f in zip(*finals, strict=True))

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
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.mechanism.master is not None:
            s += f", master_chunk={self.master_chunk}"
        if self.implementation != "auto":
            s += f", implementation={self.implementation!r}"
        return s


class GatedGRU(_GatedRNN):
    """GRU with a selectable gating mechanism; a drop-in for ``torch.nn.GRU``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as
            ``nn.GRU`` (``bidirectional`` on the torch path only, gate ``-``).
        gate: a name from :data:`gates.mechanisms.GATES` (default ``"-"``, the standard GRU).
        chrono_tmax: T_max of chrono init in steps (default ``CHRONO_TMAX_PER_UNIT · hidden_size``).
        master_chunk: downsize factor C of master gates (must divide ``hidden_size``).
        orthogonal_hh: orthogonal init of each recurrent block.
        implementation: ``"auto"``, ``"torch"``, ``"fused"`` or ``"reference"`` (module docstring).
        seed: seeds the initialisation (otherwise torch's global RNG).
        device, dtype: of the parameters.

    Shapes: input (T, B, I), (B, T, I) with ``batch_first`` or unbatched (T, I); ``hx``
    (L·D, B, H) or (L·D, H) unbatched (D = 2 when bidirectional). Returns ``(output, h_n)``
    like ``nn.GRU``; output (T, B, D·H).
    """

    core = "gru"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: A002
        x, unbatched = self._check_input(input)
        out, (hn,) = self._run(x, (self._state(hx, x, unbatched, "h0", self.hidden_size),))
        return self._finish(out, unbatched), (hn.squeeze(1) if unbatched else hn)

    def _torch(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        out, hn = torch.gru(x, state[0], self._flat(), self.bias, self.num_layers, self.dropout, self.training,
                            self.bidirectional, False)
        return out, (hn,)

    def _reference(self, x: Tensor, state: State, params: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
                   on_step: F.StepCallback | None) -> tuple[Tensor, State]:
        out, h = F.gru_sequence(self.mechanism, x, state[0], *params, self._rows, on_step)
        return out, (h,)


class GatedLSTM(_GatedRNN):
    """LSTM with a selectable gating mechanism; a drop-in for ``torch.nn.LSTM``.

    Arguments as :class:`GatedGRU`, plus ``proj_size`` (as ``nn.LSTM``; torch path only,
    gate ``-``). ``hx`` is ``(h0, c0)`` with h0 (L·D, B, proj_size or H) and c0 (L·D, B, H);
    returns ``(output, (h_n, c_n))``.
    """

    core = "lstm"

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None  # noqa: A002
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x, unbatched = self._check_input(input)
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError("hx must be a tuple (h0, c0) for an LSTM")
        h0, c0 = (None, None) if hx is None else hx
        state = (self._state(h0, x, unbatched, "h0", self.proj_size or self.hidden_size),
                 self._state(c0, x, unbatched, "c0", self.hidden_size))
        out, (hn, cn) = self._run(x, state)
        if unbatched:
            return out.squeeze(1), (hn.squeeze(1), cn.squeeze(1))
        return self._finish(out, False), (hn, cn)

    def _torch(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        out, hn, cn = torch.lstm(x, state, self._flat(), self.bias, self.num_layers, self.dropout, self.training,
                                 self.bidirectional, False)
        return out, (hn, cn)

    def _reference(self, x: Tensor, state: State, params: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
                   on_step: F.StepCallback | None) -> tuple[Tensor, State]:
        out, h, c = F.lstm_sequence(self.mechanism, x, state[0], state[1], *params, self._rows, on_step)
        return out, (h, c)


def build_layer(cell: str, *args: Any, **kwargs: Any) -> _GatedRNN:
    """``GatedGRU`` for ``cell="gru"``, ``GatedLSTM`` for ``"lstm"``; other arguments passed on."""
    classes = {"gru": GatedGRU, "lstm": GatedLSTM}
    if cell not in classes:
        raise ValueError(f"cell must be one of {sorted(classes)}; got {cell!r}")
    return classes[cell](*args, **kwargs)


__all__ = ["FUSED_RECURRENCES", "GatedGRU", "GatedLSTM", "IMPLEMENTATIONS", "TRITON_RECURRENCES", "build_layer",
           "fused_available", "triton_available"]
