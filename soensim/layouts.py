"""The layer contract: what each parameter of a recurrent layer is, and which rows are which gate.

:func:`layout` returns a :class:`Layout` for any recurrent layer — ``torch.nn.GRU``,
``nn.LSTM``, ``nn.GRUCell``, ``nn.LSTMCell`` (one adapter here) and every layer that
declares its own through a ``layout()`` method (``gates.GatedGRU``/``GatedLSTM``,
:class:`soensim.soen_layer.SOENLayer`). Every reader — constraints, rules, transfer,
gate initialisation and statistics, the study models — asks this contract; none parses
parameter names or matches gate names itself.

A layout holds

* ``blocks`` — the named row blocks of the stacked gate dimension (the same for every
  cell of the layer), in row order: GRU ``reset, update, candidate`` (torch's r, z, n),
  LSTM ``input, forget, cell, output`` (i, f, g, o), then a mechanism's extras
  (``refine``, ``master_forget``, ``master_input``);
* ``cells`` — one :class:`Cell` per layer × direction with the attribute names of its
  tensors;
* ``params`` — every parameter tensor with its role (:data:`soensim.profiles.ROLES`)
  and, for bias vectors, the role of each block (:attr:`Layout.block_roles`);
* the mechanism — its name, whether it is a per-unit leaky integration, its fused kernel
  mode, and ``decay``: the map between time constants and decay-block biases.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterator, Literal, Mapping, Protocol, runtime_checkable

from torch import Tensor, nn

from .profiles import ROLES
from .timescales import bias_to_tau, tau_to_bias

Core = Literal["gru", "lstm", "soen"]
Kind = Literal["input", "recurrent", "projection", "bias_ih", "bias_hh", "unit"]

#: Row blocks of torch's cells, in torch's order.
TORCH_BLOCKS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "gru": ("reset", "update", "candidate"),
    "lstm": ("input", "forget", "cell", "output"),
})
#: Short block names accepted wherever a block is named (torch's letters).
ALIASES: Mapping[str, str] = MappingProxyType({
    "r": "reset", "z": "update", "n": "candidate", "i": "input", "f": "forget", "g": "cell", "o": "output",
})
#: Role of each block's bias rows. Blocks not named here (LSTM input/output gates, master
#: gates) carry no hardware role and stay free under every profile.
BLOCK_ROLES: Mapping[str, str] = MappingProxyType({
    "update": "update_bias", "forget": "update_bias", "refine": "update_bias",
    "reset": "reset_bias", "candidate": "candidate_bias", "cell": "candidate_bias",
})


@runtime_checkable
class Decay(Protocol):
    """The map between a unit's time constant and the biases of its decay gate.

    ``bias_for_tau(tau, dt)`` gives ``{block: bias}`` (float64, one entry per unit) that
    make the gate at rest (every other pre-activation 0) decay as ``exp(-dt/tau)``;
    ``tau_for_bias(b, dt)`` inverts it on the decay block.
    """

    def bias_for_tau(self, tau: Tensor, dt: float) -> dict[str, Tensor]: ...

    def tau_for_bias(self, bias: Tensor, dt: float) -> Tensor: ...


@dataclass(frozen=True)
class SigmoidDecay:
    """A sigmoid decay gate ``z = sigmoid(b)`` on ``block`` (torch's GRU ``update``, LSTM ``forget``)."""

    block: str

    def bias_for_tau(self, tau: Tensor, dt: float) -> dict[str, Tensor]:
        return {self.block: tau_to_bias(tau.double(), dt)}

    def tau_for_bias(self, bias: Tensor, dt: float) -> Tensor:
        return bias_to_tau(bias.double(), dt)


@dataclass(frozen=True)
class Param:
    """One parameter tensor: its attribute path on the layer, its role and what it connects.

    ``role`` is one of :data:`~soensim.profiles.ROLES`, or None for a stacked bias vector
    whose rows carry the roles of their blocks (:attr:`Layout.block_roles`)."""

    name: str
    role: str | None
    kind: Kind
    cell: int = 0


@dataclass(frozen=True)
class Cell:
    """One recurrent cell (layer ``layer``, direction ``direction``) and its tensors' names."""

    layer: int
    direction: int
    suffix: str
    weight_ih: str
    weight_hh: str
    bias_ih: str | None = None
    bias_hh: str | None = None
    weight_hr: str | None = None

    @property
    def weights(self) -> tuple[str, ...]:
        """Coupling matrices of the cell: input, recurrent and (LSTM) projection weights."""
        return tuple(w for w in (self.weight_ih, self.weight_hh, self.weight_hr) if w is not None)

    @property
    def biases(self) -> tuple[str, ...]:
        """The cell's bias vectors present (``bias_ih``, ``bias_hh``); the gate sees their sum."""
        return tuple(b for b in (self.bias_ih, self.bias_hh) if b is not None)

    @property
    def tag(self) -> str:
        return self.suffix.lstrip("_") or "cell"


@dataclass(frozen=True)
class Layout:
    """Typed, immutable description of one recurrent layer (see the module docstring).

    Attributes:
        core: ``"gru"``, ``"lstm"`` or ``"soen"``.
        hidden: units per cell (rows of each main block).
        blocks: block name → rows of the stacked gate dimension, in row order.
        cells: one :class:`Cell` per layer × direction, in torch's order.
        params: every parameter tensor with its role.
        mechanism: name of the gating mechanism (``"-"`` for torch's cells).
        leaky: each unit's decay gate is an elementwise function of its own bias (a
            physical time constant maps to a bias).
        mode: the fused kernel mode (``gates.kernels``) of this mechanism on this core, or None.
        decay: the τ ↔ bias map of the decay gate (None when not leaky).
        decay_block, reset_block, candidate_block, refine_block: the blocks by function.
    """

    core: Core
    hidden: int
    blocks: Mapping[str, slice]
    cells: tuple[Cell, ...]
    params: tuple[Param, ...]
    mechanism: str = "-"
    leaky: bool = True
    mode: str | None = None
    decay: Decay | None = None
    decay_block: str | None = None
    reset_block: str | None = None
    candidate_block: str | None = None
    refine_block: str | None = None
    block_roles: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", MappingProxyType(dict(self.blocks)))
        roles = {b: r for b, r in BLOCK_ROLES.items() if b in self.blocks}
        if self.refine_block is not None:
            roles[self.refine_block] = "update_bias"
        object.__setattr__(self, "block_roles", MappingProxyType(roles))
        bad = [p.role for p in self.params if p.role is not None and p.role not in ROLES]
        if bad:
            raise ValueError(f"layout roles must be among {ROLES}; got {bad}")

    @property
    def rows(self) -> int:
        """Rows of the stacked gate dimension (sum over blocks)."""
        return sum(s.stop - s.start for s in self.blocks.values())

    def block(self, name: str) -> slice:
        """Rows of block ``name`` (full name or torch letter); an unknown name lists the known ones."""
        full = ALIASES.get(name, name)
        if full not in self.blocks:
            raise ValueError(f"block must be one of {list(self.blocks)} (or torch letters r,z,n / i,f,g,o); got {name!r}")
        return self.blocks[full]

    def named(self, name: str) -> str:
        """Full name of block ``name`` (validated)."""
        self.block(name)
        return ALIASES.get(name, name)

    def with_role(self, role: str | None) -> Iterator[Param]:
        """Parameters of ``role`` (None: the stacked bias vectors), in layout order."""
        return (p for p in self.params if p.role == role)

    def blocks_of_role(self, role: str) -> tuple[str, ...]:
        """Bias blocks carrying ``role`` (e.g. ``update_bias`` → the decay and refine blocks)."""
        return tuple(b for b, r in self.block_roles.items() if r == role)


def gate_layout(core: Literal["gru", "lstm"], hidden: int, block_rows: Mapping[str, int], cells: tuple[Cell, ...], *,
                mechanism: str = "-", leaky: bool = True, mode: str | None = None, decay: Decay | None = None,
                refine_block: str | None = None) -> Layout:
    """The layout of a GRU/LSTM-core layer from its blocks' row counts (in row order) and cells."""
    blocks, start = {}, 0
    for name, n in block_rows.items():
        blocks[name] = slice(start, start + n)
        start += n
    params: list[Param] = []
    for k, c in enumerate(cells):
        params += [Param(c.weight_ih, "weights", "input", k), Param(c.weight_hh, "weights", "recurrent", k)]
        if c.weight_hr is not None:
            params.append(Param(c.weight_hr, "weights", "projection", k))
        # a bias vector holds one role per block: Layout.block_roles says which rows
        params += [Param(b, None, kind, k) for b, kind in ((c.bias_ih, "bias_ih"), (c.bias_hh, "bias_hh"))
                   if b is not None]
    decay_block = "update" if core == "gru" else "forget"
    if leaky and decay is None:
        decay = SigmoidDecay(decay_block)
    return Layout(core, hidden, blocks, cells, tuple(params), mechanism, leaky, mode, decay if leaky else None,
                  decay_block, "reset" if core == "gru" else None, "candidate" if core == "gru" else "cell",
                  refine_block)


def rnn_cells(module: nn.Module, num_layers: int = 1, directions: int = 1, bias: bool = True,
              projection: bool = False) -> tuple[Cell, ...]:
    """Cells named as torch names them: ``weight_ih_l{k}[_reverse]`` etc.; cells (no layer index) for
    ``nn.GRUCell``/``nn.LSTMCell``-style modules (``num_layers=0``)."""
    if num_layers == 0:
        return (Cell(0, 0, "", "weight_ih", "weight_hh", "bias_ih" if bias else None, "bias_hh" if bias else None),)
    out = []
    for k in range(num_layers):
        for d in range(directions):
            s = f"_l{k}" + ("_reverse" if d else "")
            out.append(Cell(k, d, s, "weight_ih" + s, "weight_hh" + s, ("bias_ih" + s) if bias else None,
                            ("bias_hh" + s) if bias else None, ("weight_hr" + s) if projection else None))
    return tuple(out)


def _torch_layout(m: nn.Module) -> Layout:
    core: Literal["gru", "lstm"] = "gru" if isinstance(m, (nn.GRU, nn.GRUCell)) else "lstm"
    h = int(m.hidden_size)
    if isinstance(m, nn.RNNBase):
        cells = rnn_cells(m, m.num_layers, 2 if m.bidirectional else 1, m.bias, bool(getattr(m, "proj_size", 0)))
    else:
        cells = rnn_cells(m, 0, bias=m.bias)
    rows = {b: h for b in TORCH_BLOCKS[core]}
    return gate_layout(core, h, rows, cells, mode="sigmoid" if core == "gru" else None)


#: torch's own recurrent classes that the adapter describes.
TORCH_LAYERS = (nn.GRU, nn.LSTM, nn.GRUCell, nn.LSTMCell)


def has_layout(m: nn.Module) -> bool:
    """True for layers :func:`layout` describes."""
    return isinstance(m, TORCH_LAYERS) or callable(getattr(m, "layout", None))


def layout(layer: nn.Module) -> Layout:
    """The :class:`Layout` of ``layer``.

    Raises:
        TypeError: ``layer`` is neither one of torch's GRU/LSTM layers or cells nor declares ``layout()``;
            ``nn.RNN``/``nn.RNNCell`` have no gate to hold a time constant.
    """
    declared = getattr(layer, "layout", None)
    if callable(declared):
        out = declared()
        if not isinstance(out, Layout):
            raise TypeError(f"{type(layer).__name__}.layout() must return a soensim Layout; got {type(out).__name__}")
        return out
    if isinstance(layer, TORCH_LAYERS):
        return _torch_layout(layer)
    if isinstance(layer, (nn.RNN, nn.RNNCell)):
        raise TypeError(f"{type(layer).__name__} has no gate to hold a time constant; "
                        "use nn.GRU/nn.LSTM or a gates layer (GatedGRU/GatedLSTM)")
    raise TypeError(f"{type(layer).__name__} is not a recurrent layer soensim knows: torch.nn.GRU/LSTM/GRUCell/"
                    "LSTMCell, or a module with a layout() method (GatedGRU, GatedLSTM, SOENLayer)")


def find_layers(model: nn.Module) -> list[tuple[str, nn.Module, Layout]]:
    """Every recurrent layer inside ``model`` (itself included) as ``(name, module, layout)``,
    in module order; the children of a layer found are not searched.

    Raises:
        TypeError: an ``nn.RNN``/``nn.RNNCell`` inside ``model`` (no gate to hold a time constant).
    """
    found: list[tuple[str, nn.Module, Layout]] = []
    claimed: list[str] = []
    for name, m in model.named_modules():
        if any(c == "" or name == c or name.startswith(c + ".") for c in claimed):
            continue
        if isinstance(m, (nn.RNN, nn.RNNCell)) or has_layout(m):
            found.append((name, m, layout(m)))
            claimed.append(name)
    return found


def tensor(layer: nn.Module, path: str) -> Tensor:
    """The (effective, when parametrized) tensor at attribute path ``path`` of ``layer``."""
    obj = layer
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


def owner(layer: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module holding ``path`` and the attribute name there (``"cell.J"`` → ``(layer.cell, "J")``)."""
    *mods, name = path.split(".")
    obj = layer
    for part in mods:
        obj = getattr(obj, part)
    return obj, name


__all__ = ["ALIASES", "BLOCK_ROLES", "Cell", "Decay", "Layout", "Param", "SigmoidDecay", "TORCH_BLOCKS",
           "TORCH_LAYERS", "find_layers", "gate_layout", "has_layout", "layout", "owner", "rnn_cells", "tensor"]
