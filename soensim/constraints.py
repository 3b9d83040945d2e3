"""Hardware constraints as removable transforms, and named rules that check them.

:func:`constrain` walks a model, finds its gated recurrent layers and registers
``torch.nn.utils.parametrize`` transforms on their parameters so that training can
only reach what a :class:`~soensim.profiles.HardwareProfile` can realise:

* **fixed time constants** — when the profile fixes time constants
  (``tau_range``/``tau_values``) and ``"update_bias"`` is not a trainable role, the
  decay-gate bias rows (GRU ``z``/``update``, LSTM ``f``/``forget``) are frozen at the
  values implied by ``profile.unit_taus(H, seed + k, spread=spread)`` at step ``dt``:
  the bias that gives decay ``z = exp(-dt/tau)`` goes into the ``bias_ih`` rows and 0
  into the matching ``bias_hh`` rows (the two biases are summed, DESIGN §4). For gates
  layers the values come from ``mechanism.bias_for_decay(z)``, one entry per block it
  names (e.g. the refine block at 0 for R/UR, so that training it cannot shift τ);
  ``constrain(update_bias=...)`` freezes given values instead. ``k`` counts the
  recurrent cells (layer × direction) in model order, so stacked layers get distinct,
  reproducible unit time constants (cell 0 uses ``seed`` itself). With ``"update_bias"``
  not trainable but no fabricated time constants, those rows are frozen at 0
  (the papers/001 ablation, ``b_z`` fixed 0).
* **other frozen biases** — ``"reset_bias"`` not trainable: GRU reset rows frozen at
  ``profile.reset_bias``; ``"candidate_bias"`` not trainable: candidate rows (GRU
  ``n``/``candidate``, LSTM ``g``/``cell``) frozen at 0; ``"weights"`` not trainable: whole weight matrices
  frozen at their (bounded, quantized) value. LSTM input/output gate biases have no
  role in :data:`~soensim.profiles.ROLES` and stay free.
* **bounded couplings** — with ``profile.coupling_max`` every weight matrix of the
  recurrent layers (``weight_ih*``, ``weight_hh*``, ``weight_hr*``) is bounded by
  ``|w| ≤ J_max``. Biases are not couplings (they stand for bias currents and flux
  offsets) and are not bounded; neither are layers outside the recurrent cells
  (e.g. a linear read-out), which are software in the SOEN picture.
* **quantized couplings** — with ``profile.weight_levels`` = L the effective weights
  are snapped to the nearest of L evenly spaced levels in ``[-J_max, J_max]``; the
  gradient passes straight through the rounding. Both bounds hold exactly in the
  parameter's dtype (clamped to the largest representable value ≤ ``J_max``).

Design choices
--------------
*Bound by reparametrization, not projection.* The effective weight is
``w = J_max * tanh(raw / J_max)``. It can never violate the bound — whatever the
optimizer (Adam, AdamW with weight decay, SGD, closures, gradient accumulation) —
without hooks on any optimizer, it keeps a gradient everywhere, it is ≈ identity for
``|w| ≪ J_max``, and it is removable with the effective value left in place.
Projection after each step would need access to the optimizer (``constrain`` never
sees it) and would let a forward pass between steps run with out-of-bound weights.
The price: near the bound the gradient is scaled by ``1 - (w/J_max)²`` (weights
saturate softly; Adam-type optimizers largely normalise the scale away), and weight
decay acts on ``raw``. ``right_inverse`` first clips the
original weight into ``(-J_max, J_max)`` so that the effective weight starts equal to
the original one (within float rounding; out-of-bound entries start just inside).

*Frozen rows keep a buffer.* ``FrozenRows`` returns ``where(mask, value, raw)``: the
gradient to the frozen rows is exactly zero and the effective value is the buffer,
so neither the optimizer nor weight decay (which may still move ``raw``) can drift it.

*nn.GRU / nn.LSTM fast path.* ``torch.nn.RNNBase`` hands a cached list
``_flat_weights`` to its ATen/cuDNN kernels; parametrized attributes are recomputed
on every access, so that list would go stale (pytorch/pytorch#65688). On a
constrained RNN module (whose class parametrize has already replaced by a private,
per-instance subclass) ``_update_flat_weights`` — which ``forward`` calls first — is
overridden to re-read every weight through attribute access, evaluating each
transform exactly once per forward; ``_init_flat_weights`` (run by ``.to()``/``.cuda()``)
stores placeholders instead of flattening, so cuDNN's in-place weight flattening never
touches transformed tensors (on CUDA the kernel copies the weights per call instead).
A forward hook clears the list after each call so the module stays deep-copyable.
:func:`unconstrain` removes the parametrizations, which restores the original class
and with it torch's own behaviour.

Layers found: ``nn.GRU``, ``nn.LSTM``, ``nn.GRUCell``, ``nn.LSTMCell`` and any module
following the gates layer contract — ``gate_blocks()`` (gate names in row order of the
stacked gate dimension, or a mapping name → slice/rows), ``decay_gate`` (name of the
block whose bias sets the time constant), ``mechanism.bias_for_decay(z)`` (``{block:
bias}`` or one tensor; a non-leaky mechanism has ``leaky = False`` or raises) and
optionally ``mechanism.decay_for_bias(b)`` (to report τ), ``reset_gate`` and
``candidate_gate`` (default: the blocks named reset/r and candidate/n/cell/g) — with
parameters named ``weight_ih*``/``weight_hh*``/``bias_ih*``/``bias_hh*``. Children
of such a layer are not searched. ``nn.RNN``/``nn.RNNCell`` have no gate to hold a
time constant and are refused with an error.

:func:`check` reports :class:`Violation` s of the named rules in :data:`RULES` and works
on constrained and unconstrained models alike.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .profiles import HardwareProfile
from .timescales import bias_to_tau, decay, tau_to_bias

#: Relative τ deviation (in multiples of ``profile.tau_spread``) tolerated by the
#: time-constant range rule: fabrication spread is Gaussian, 5σ keeps false alarms
#: below one in a million units.
SPREAD_SIGMAS = 5.0

#: Design fan-in limit of a SOEN neuron without a collection coil (DESIGN §3.3);
#: used by the ``fan_in`` rule when ``check(..., max_fan_in=FAN_IN_LIMIT)`` is passed.
FAN_IN_LIMIT = 20


# =============================================================================
# Functional core: pure functions on tensors
# =============================================================================
@functools.lru_cache(maxsize=64)
def _inner_limit(j_max: float, dtype: torch.dtype) -> float:
    """Largest value of ``dtype`` that is ≤ ``j_max`` (float32(0.3) > 0.3, for example)."""
    t = torch.tensor(j_max, dtype=dtype)
    if t.item() > j_max:
        t = torch.nextafter(t, torch.zeros((), dtype=dtype))
    return t.item()


def bounded(raw: Tensor, j_max: float) -> Tensor:
    """Smooth bound ``j_max * tanh(raw / j_max)``; always within ``[-j_max, j_max]``, also
    after rounding to ``raw``'s dtype."""
    lim = _inner_limit(float(j_max), raw.dtype)
    return (j_max * torch.tanh(raw / j_max)).clamp(-lim, lim)


def bounded_inverse(w: Tensor, j_max: float) -> Tensor:
    """Raw value whose :func:`bounded` image is ``w`` (``w`` clipped just inside the bound first)."""
    eps = torch.finfo(w.dtype).eps if w.is_floating_point() else 1e-7
    u = (w.double() / j_max).clamp(-1 + 16 * eps, 1 - 16 * eps)
    return (j_max * torch.atanh(u)).to(w.dtype)


def quantize(w: Tensor, j_max: float, levels: int) -> Tensor:
    """Nearest of ``levels`` evenly spaced values in ``[-j_max, j_max]`` (no gradient rule)."""
    step = 2.0 * j_max / (levels - 1)
    k = torch.round((w + j_max) / step).clamp(0, levels - 1)
    lim = _inner_limit(float(j_max), w.dtype)
    return (k * step - j_max).clamp(-lim, lim)


class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor, j_max: float, levels: int) -> Tensor:  # type: ignore[override]
        return quantize(w, j_max, levels)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return grad, None, None


def quantize_ste(w: Tensor, j_max: float, levels: int) -> Tensor:
    """:func:`quantize` with a straight-through gradient (d out / d w = 1)."""
    return _QuantizeSTE.apply(w, j_max, levels)


def excitatory_flux(coupling: Tensor, s_max: float | Tensor) -> Tensor:
    """Worst-case excitatory flux per receiving unit, ``Σ_{J>0} J·s_max`` over each row.

    ``coupling`` is ``(receivers, senders)``; ``s_max`` the senders' maximal signal
    (a number or a ``(senders,)`` tensor).
    """
    s = torch.as_tensor(s_max, dtype=coupling.dtype, device=coupling.device)
    return (coupling.clamp_min(0) * s).sum(-1)


def flux_window_excess(coupling: Tensor, s_max: float | Tensor, phi_th: float | Tensor) -> Tensor:
    """Per-row excess of :func:`excitatory_flux` over the monotone window ``0.5 − φ_th``
    (DESIGN §3.3); ``> 0`` means the unit can be driven past φ = 0.5."""
    phi = torch.as_tensor(phi_th, dtype=coupling.dtype, device=coupling.device)
    return excitatory_flux(coupling, s_max) - (0.5 - phi)


def fan_in(coupling: Tensor, atol: float = 0.0) -> Tensor:
    """Number of connections per receiving unit: entries with ``|J| > atol`` in each row."""
    return (coupling.abs() > atol).sum(-1)


# =============================================================================
# Parametrizations (registered with torch.nn.utils.parametrize)
# =============================================================================
class BoundedWeight(nn.Module):
    """``w = bound * tanh(raw / bound)`` (see the module docstring for why)."""

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.bound = float(bound)

    def forward(self, raw: Tensor) -> Tensor:
        return bounded(raw, self.bound)

    def right_inverse(self, w: Tensor) -> Tensor:
        return bounded_inverse(w, self.bound)

    def extra_repr(self) -> str:
        return f"bound={self.bound:g}"


class QuantizedWeight(nn.Module):
    """Snap to ``levels`` evenly spaced values in ``[-bound, bound]``; straight-through gradient."""

    def __init__(self, bound: float, levels: int) -> None:
        super().__init__()
        self.bound = float(bound)
        self.levels = int(levels)

    def forward(self, w: Tensor) -> Tensor:
        return quantize_ste(w, self.bound, self.levels)

    def right_inverse(self, w: Tensor) -> Tensor:
        return w

    def extra_repr(self) -> str:
        return f"bound={self.bound:g}, levels={self.levels}"


class FrozenRows(nn.Module):
    """Entries where ``mask`` is set are replaced by the buffer ``value``; zero gradient there."""

    def __init__(self, mask: Tensor, value: Tensor) -> None:
        super().__init__()
        if mask.shape != value.shape or mask.dtype != torch.bool:
            raise ValueError("FrozenRows needs a bool mask and a value of the same shape")
        self.register_buffer("mask", mask)
        self.register_buffer("value", value)

    def forward(self, raw: Tensor) -> Tensor:
        return torch.where(self.mask, self.value, raw)

    def right_inverse(self, w: Tensor) -> Tensor:
        return torch.where(self.mask, self.value, w)

    def extra_repr(self) -> str:
        return f"frozen={int(self.mask.sum())}/{self.mask.numel()}"


_OUR_PARAMETRIZATIONS = (BoundedWeight, QuantizedWeight, FrozenRows)


# =============================================================================
# nn.RNNBase flat-weights handling
# =============================================================================
def _rnn_refresh_flat_weights(self: nn.RNNBase) -> None:
    # Replaces RNNBase._update_flat_weights on a constrained module's private class:
    # re-read each (transformed) weight exactly once, never flatten in place.
    names = self._flat_weights_names
    self._flat_weights = [getattr(self, n, None) for n in names]
    self._flat_weight_refs = [None] * len(names)


def _rnn_placeholder_flat_weights(self: nn.RNNBase) -> None:
    # Replaces RNNBase._init_flat_weights (called by __init__ and _apply): store no
    # transformed (non-leaf) tensors and skip cuDNN's in-place flattening.
    n = len(self._flat_weights_names)
    self._flat_weights = [None] * n
    self._flat_weight_refs = [None] * n


def _rnn_clear_after_forward(module: nn.Module, args: Any, output: Any) -> None:
    _rnn_placeholder_flat_weights(module)  # type: ignore[arg-type]


def _install_rnn_fast_path(module: nn.RNNBase) -> None:
    cls = type(module)
    if not parametrize.is_parametrized(module) or not cls.__name__.startswith("Parametrized"):
        raise RuntimeError("internal: RNN module is not parametrized")  # pragma: no cover
    cls._update_flat_weights = _rnn_refresh_flat_weights  # type: ignore[attr-defined]
    cls._init_flat_weights = _rnn_placeholder_flat_weights  # type: ignore[attr-defined]
    if not any(h is _rnn_clear_after_forward for h in module._forward_hooks.values()):
        try:
            module.register_forward_hook(_rnn_clear_after_forward, always_call=True)
        except TypeError:  # pragma: no cover - torch without always_call
            module.register_forward_hook(_rnn_clear_after_forward)
    _rnn_placeholder_flat_weights(module)


def _remove_rnn_fast_path(module: nn.Module) -> None:
    # Once the last parametrization is gone parametrize restores the original class (and
    # with it torch's flat-weights methods); while foreign ones remain, keep the handling.
    if parametrize.is_parametrized(module):
        return
    for key, hook in list(module._forward_hooks.items()):
        if hook is _rnn_clear_after_forward:
            del module._forward_hooks[key]
    if isinstance(module, nn.RNNBase):
        module._init_flat_weights()  # torch's own: real refs, cuDNN flattening


# =============================================================================
# Finding recurrent cells
# =============================================================================
_PARAM_RE = re.compile(r"^(weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)(.*)$")


class _Sigmoid:
    """Decay mechanism of torch's own cells: ``z = sigmoid(b)``."""

    name = "sigmoid"
    leaky = True

    def decay_biases(self, tau: Tensor, dt: float, decay_gate: str) -> dict[str, Tensor]:
        return {decay_gate: tau_to_bias(tau, dt)}

    def tau_for_bias(self, bias: Tensor, dt: float) -> Tensor | None:
        return bias_to_tau(bias, dt)


class _ContractMechanism:
    """Adapter around a gates mechanism: ``bias_for_decay(z)`` → ``{block: bias}`` (or one
    tensor for the decay block), optional ``decay_for_bias(b)`` and ``leaky``."""

    def __init__(self, mechanism: Any) -> None:
        self.mechanism = mechanism
        self.name = str(getattr(mechanism, "name", type(mechanism).__name__))
        self.leaky = bool(getattr(mechanism, "leaky", True)) and callable(getattr(mechanism, "bias_for_decay", None))

    def decay_biases(self, tau: Tensor, dt: float, decay_gate: str) -> dict[str, Tensor]:
        z = decay(tau, dt)
        try:
            out = self.mechanism.bias_for_decay(z)
        except (NotImplementedError, ValueError) as exc:
            raise ValueError(f"gate mechanism {self.name!r} is not leaky: {exc}") from exc
        if not isinstance(out, Mapping):
            out = {decay_gate: out}
        if decay_gate not in out:
            raise ValueError(f"gate mechanism {self.name!r}: bias_for_decay gave blocks {list(out)}, not the decay block {decay_gate!r}")
        return {str(k): torch.as_tensor(v, dtype=torch.float64).reshape(z.shape) for k, v in out.items()}

    def tau_for_bias(self, bias: Tensor, dt: float) -> Tensor | None:
        inv = getattr(self.mechanism, "decay_for_bias", None)
        if inv is None or not self.leaky:
            return None
        z = torch.as_tensor(inv(bias.double()), dtype=torch.float64)
        return -dt / torch.log(z)


@dataclass
class _Cell:
    """One recurrent cell (one layer × direction) with its gate-row layout."""

    module: nn.Module
    module_name: str
    kind: str  # "GRU", "LSTM", or the contract layer's class name
    suffix: str
    blocks: dict[str, Tensor]  # gate name -> row indices into the stacked gate dimension
    rows: int
    decay_gate: str | None
    reset_gate: str | None
    candidate_gate: str | None
    weights: list[str]
    bias_ih: str | None
    bias_hh: str | None
    mechanism: Any
    index: int = 0

    @property
    def label(self) -> str:
        tag = self.suffix.lstrip("_") or "cell"
        return f"{self.module_name or '<model>'}.{tag}"

    def qual(self, name: str) -> str:
        return f"{self.module_name}.{name}" if self.module_name else name

    @property
    def hidden(self) -> int:
        return int(self.blocks[self.decay_gate].numel()) if self.decay_gate else self.rows

    def design_biases(self, tau: Tensor, dt: float) -> dict[str, Tensor]:
        """Bias per block (float64) that realises decay exp(-dt/tau) in the decay gate."""
        out = self.mechanism.decay_biases(tau, dt, self.decay_gate)
        unknown = [b for b in out if b not in self.blocks]
        if unknown:
            raise ValueError(f"{self.label}: bias_for_decay names blocks {unknown} not in gate_blocks() {list(self.blocks)}")
        return out


_TORCH_BLOCKS: dict[type, tuple[str, tuple[str, ...], str, str | None, str]] = {
    nn.GRU: ("GRU", ("r", "z", "n"), "z", "r", "n"),
    nn.GRUCell: ("GRU", ("r", "z", "n"), "z", "r", "n"),
    nn.LSTM: ("LSTM", ("i", "f", "g", "o"), "f", None, "g"),
    nn.LSTMCell: ("LSTM", ("i", "f", "g", "o"), "f", None, "g"),
}


def _is_contract_layer(m: nn.Module) -> bool:
    return callable(getattr(m, "gate_blocks", None)) and hasattr(m, "decay_gate")


def _tensor_names(m: nn.Module) -> list[str]:
    """Direct parameter names of ``m``, parametrized ones included, in registration order."""
    names = [n for n, _ in m.named_parameters(recurse=False)]
    if parametrize.is_parametrized(m):
        names += [n for n in m.parametrizations.keys() if n not in names]  # type: ignore[union-attr]
    if isinstance(m, nn.RNNBase):  # keep torch's layer/direction order
        order = {n: i for i, n in enumerate(m._flat_weights_names)}
        names.sort(key=lambda n: order.get(n, len(order)))
    return names


def _normalize_blocks(spec: Any, rows: int, where: str) -> dict[str, Tensor]:
    if isinstance(spec, Mapping):
        out = {}
        for name, idx in spec.items():
            if isinstance(idx, slice):
                idx = range(*idx.indices(rows))
            elif isinstance(idx, tuple) and len(idx) == 2 and all(isinstance(i, int) for i in idx):
                idx = range(*idx)
            out[str(name)] = torch.as_tensor(list(idx) if isinstance(idx, range) else idx, dtype=torch.long).reshape(-1)
        return out
    names = [str(s) for s in spec]
    if not names or rows % len(names):
        raise ValueError(f"{where}: gate_blocks() {names} does not split {rows} gate rows evenly; return a mapping name -> rows")
    h = rows // len(names)
    return {n: torch.arange(i * h, (i + 1) * h) for i, n in enumerate(names)}


def _cells_of(m: nn.Module, name: str) -> list[_Cell]:
    names = _tensor_names(m)
    groups: dict[str, dict[str, str]] = {}
    for n in names:
        mt = _PARAM_RE.match(n)
        if mt:
            groups.setdefault(mt.group(2), {})[mt.group(1)] = n
    if not _is_contract_layer(m):  # torch's own cells (a contract layer may subclass them)
        kind, blocks_spec, dgate, rgate, cgate = next(v for k, v in _TORCH_BLOCKS.items() if isinstance(m, k))
        mech: Any = _Sigmoid()
    else:
        kind = type(m).__name__
        blocks_spec = m.gate_blocks()  # type: ignore[operator]
        dgate = getattr(m, "decay_gate", None)
        mechanism = getattr(m, "mechanism", None)
        mech = _ContractMechanism(mechanism) if mechanism is not None else _Sigmoid()
        bnames = list(blocks_spec.keys()) if isinstance(blocks_spec, Mapping) else [str(s) for s in blocks_spec]
        first = lambda *opts: next((o for o in opts if o in bnames), None)  # noqa: E731
        cgate = getattr(m, "candidate_gate", None) or first("candidate", "n", "cell", "g")
        gru_like = dgate in ("update", "z")
        rgate = getattr(m, "reset_gate", None) or (first("reset", "r") if gru_like else None)
    cells = []
    for suffix, g in groups.items():
        ref = g.get("bias_ih") or g.get("bias_hh") or g.get("weight_ih") or g.get("weight_hh")
        if ref is None:
            continue
        rows = int(getattr(m, ref).shape[0])
        blocks = _normalize_blocks(blocks_spec, rows, f"{name or type(m).__name__}")
        for gname in (dgate, rgate, cgate):
            if gname is not None and gname not in blocks:
                raise ValueError(f"{name}: gate {gname!r} is not one of gate_blocks() {list(blocks)}")
        weights = [g[k] for k in ("weight_ih", "weight_hh", "weight_hr") if k in g]
        cells.append(
            _Cell(m, name, kind, suffix, blocks, rows, dgate, rgate, cgate, weights, g.get("bias_ih"), g.get("bias_hh"), mech)
        )
    if not cells:
        raise ValueError(f"{name or type(m).__name__}: recurrent layer without weight_ih*/weight_hh*/bias_* parameters")
    return cells


def _find_cells(model: nn.Module) -> list[_Cell]:
    cells: list[_Cell] = []
    claimed: list[str] = []  # layers found; their children are not searched
    for name, m in model.named_modules():
        if any(c == "" or name == c or name.startswith(c + ".") for c in claimed):
            continue
        if isinstance(m, (nn.RNN, nn.RNNCell)):
            raise ValueError(
                f"{name or '<model>'}: {type(m).__name__} has no gate to hold a time constant; "
                "use nn.GRU/nn.LSTM or a gates layer (GatedGRU/GatedLSTM)"
            )
        if isinstance(m, tuple(_TORCH_BLOCKS)) or _is_contract_layer(m):
            cells.extend(_cells_of(m, name))
            claimed.append(name)
    for k, c in enumerate(cells):
        c.index = k
    return cells


def _couplings_of(model: nn.Module) -> list[tuple[str, nn.Module, Mapping[str, Tensor]]]:
    out = []
    for name, m in model.named_modules():
        fn = getattr(m, "couplings", None)
        if callable(fn) and not isinstance(m, tuple(_TORCH_BLOCKS)) and not _is_contract_layer(m):
            out.append((name, m, fn()))
    return out


def _require(model: Any, profile: Any, fn: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(profile, HardwareProfile):
        hint = " (use HardwareProfile.preset(name))" if isinstance(profile, str) else ""
        raise TypeError(f"{fn}: profile must be a soensim HardwareProfile{hint}; got {type(profile).__name__}")


def _dt(profile: HardwareProfile, dt: float | None) -> float:
    if dt is None:
        return profile.dt
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive number of seconds; got {dt!r}")
    return float(dt)


# =============================================================================
# constrain / unconstrain
# =============================================================================
@dataclass(frozen=True)
class AppliedTransform:
    """One transform registered on one parameter."""

    parameter: str
    kind: str  # "bounded", "quantized", "frozen_rows", "frozen"
    detail: str


@dataclass
class ConstraintReport:
    """What :func:`constrain` did; ``remove()`` undoes it (same as :func:`unconstrain`).

    ``taus``/``biases`` map each cell label (``"<module>.l0"``, ``"<module>.l0_reverse"``)
    to the design time constants (seconds) and the frozen decay-gate biases (float64).
    """

    model: nn.Module = field(repr=False)
    profile: HardwareProfile
    dt: float
    seed: int
    spread: bool
    layers: tuple[str, ...]
    transforms: tuple[AppliedTransform, ...] = field(repr=False)
    taus: dict[str, Tensor] = field(default_factory=dict, repr=False)
    biases: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def remove(self) -> list[str]:
        return unconstrain(self.model)

    def __str__(self) -> str:
        lines = [
            f"constraints from profile {self.profile.name!r} (dt={self.dt:g} s, seed={self.seed}, spread={self.spread})",
            f"layers: {', '.join(self.layers) or '-'}",
        ]
        lines += [f"  {t.parameter}: {t.kind} ({t.detail})" for t in self.transforms]
        return "\n".join(lines)


def _per_cell(update_bias: Tensor | float, cell: _Cell, n_cells: int) -> Tensor:
    b = torch.as_tensor(update_bias.detach() if isinstance(update_bias, Tensor) else update_bias, dtype=torch.float64).cpu()
    h = cell.hidden
    if b.dim() == 0:
        b = b.expand(h)
    elif b.dim() == 2 and b.shape[0] == n_cells:
        b = b[cell.index]
    if b.shape != (h,):
        raise ValueError(
            f"update_bias must be a number, an ({h},) tensor or ({n_cells}, {h}) (cells × units); got shape {tuple(b.shape)}"
        )
    if not torch.isfinite(b).all():
        raise ValueError("update_bias must be finite")
    return b.clone()


@dataclass
class _Freeze:
    mask: Tensor
    value: Tensor
    what: list[str]


def constrain(
    model: nn.Module,
    profile: HardwareProfile,
    *,
    seed: int = 0,
    dt: float | None = None,
    spread: bool = False,
    update_bias: Tensor | float | None = None,
) -> ConstraintReport:
    """Apply ``profile``'s hardware constraints to every recurrent layer of ``model`` in place.

    Args:
        model: any module containing nn.GRU/nn.LSTM/nn.GRUCell/nn.LSTMCell or gates layers.
        profile: the :class:`~soensim.profiles.HardwareProfile`.
        seed: seed of the unit time constants; cell ``k`` (layer × direction, model order)
            uses ``profile.unit_taus(H, seed + k, spread=spread)``.
        dt: step in seconds the biases are computed for (default ``profile.dt``).
        spread: draw each unit's τ with the profile's fabrication spread.
        update_bias: explicit decay-gate biases to freeze instead of the profile's τ values
            (a number, an ``(H,)`` tensor for every cell or ``(cells, H)``); frozen whatever
            the profile's roles — for ablations such as ``b_z`` fixed at 0 or at its initial draw.

    Returns:
        a :class:`ConstraintReport`; ``report.remove()`` or :func:`unconstrain` undoes it.

    Raises:
        TypeError: model/profile of the wrong type.
        ValueError: no recurrent layer; a layer already constrained/parametrized; a gate
            mechanism that is not leaky (cumax/master gates) or a layer without biases
            where time constants must be fixed; nn.RNN layers.
    """
    _require(model, profile, "constrain")
    step = _dt(profile, dt)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {seed!r}")
    cells = _find_cells(model)
    if not cells:
        raise ValueError(
            f"constrain: {type(model).__name__} has no recurrent layer (nn.GRU, nn.LSTM, nn.GRUCell, "
            "nn.LSTMCell or a gates layer exposing gate_blocks()/decay_gate)"
        )
    roles = profile.trainable
    explicit = update_bias is not None
    fix_tau = explicit or (profile.fixed_time_constants and "update_bias" not in roles)
    zero_update = not explicit and not profile.fixed_time_constants and "update_bias" not in roles
    j_max, levels = profile.coupling_max, profile.weight_levels

    # ---- plan everything first, so that an error leaves the model untouched
    freezes: dict[tuple[int, str], _Freeze] = {}
    plan_w: list[tuple[_Cell, str]] = []
    taus: dict[str, Tensor] = {}
    biases: dict[str, Tensor] = {}

    def freeze(cell: _Cell, pname: str | None, gate: str, value: Tensor | float, what: str) -> None:
        if pname is None:
            return
        t = getattr(cell.module, pname)
        f = freezes.get((id(cell.module), pname))
        if f is None:
            f = freezes[(id(cell.module), pname)] = _Freeze(
                torch.zeros(t.shape, dtype=torch.bool, device=t.device), t.detach().clone(), []
            )
        rows = cell.blocks[gate].to(t.device)
        f.mask[rows] = True
        f.value[rows] = torch.as_tensor(value, dtype=torch.float64).to(device=t.device, dtype=t.dtype)
        f.what.append(what)

    seen_modules: dict[int, nn.Module] = {}
    for cell in cells:
        where = cell.label
        seen_modules[id(cell.module)] = cell.module
        for pname in cell.weights + [n for n in (cell.bias_ih, cell.bias_hh) if n]:
            if parametrize.is_parametrized(cell.module, pname):
                ours = all(isinstance(p, _OUR_PARAMETRIZATIONS) for p in cell.module.parametrizations[pname])
                raise ValueError(
                    f"{cell.qual(pname)} is already "
                    + ("constrained; call unconstrain(model) first" if ours else "parametrized by another transform; remove it first")
                )
        has_bias = cell.bias_ih is not None or cell.bias_hh is not None
        if fix_tau or zero_update:
            if cell.decay_gate is None:
                raise ValueError(f"{where}: layer names no decay gate; cannot fix its time constants")
            if not cell.mechanism.leaky and not explicit:
                raise ValueError(
                    f"{where}: gate mechanism {cell.mechanism.name!r} is not a leaky (sigmoid-family) decay — "
                    "cumax/master gates have no per-unit time constant, so fixed time constants cannot be imposed; "
                    "use a sigmoid-family variant ('-', 'C', 'U', 'R', 'UR', 'SST') or a profile with 'update_bias' trainable"
                )
            if not has_bias:
                raise ValueError(f"{where}: layer has no biases (bias=False); cannot fix its time constants")
        if fix_tau:
            if explicit:
                b = _per_cell(update_bias, cell, len(cells))
                tau = cell.mechanism.tau_for_bias(b, step)
                design = {cell.decay_gate: b}
                tag = f"given bias ∈ [{b.min().item():.3g}, {b.max().item():.3g}]"
            else:
                tau = profile.unit_taus(cell.hidden, seed + cell.index, spread=spread)
                design = cell.design_biases(tau, step)
                tag = f"τ ∈ [{tau.min().item():.3g}, {tau.max().item():.3g}] s"
            for block, values in design.items():
                if not torch.isfinite(values).all():
                    raise ValueError(f"{where}: non-finite {block!r} bias for τ in [{tau.min():g}, {tau.max():g}] s at dt={step:g} s")
                lo, hi = values.min().item(), values.max().item()
                what = tag if block == cell.decay_gate else (f"{lo:.3g}" if lo == hi else f"{lo:.3g}…{hi:.3g}") + " (τ fixed)"
                freeze(cell, cell.bias_ih or cell.bias_hh, block, values, f"{block}: {what}")
                if cell.bias_ih is not None and cell.bias_hh is not None:
                    freeze(cell, cell.bias_hh, block, 0.0, f"{block}: 0")
            biases[cell.label] = design[cell.decay_gate]
            if tau is not None:
                taus[cell.label] = tau
        elif zero_update:
            for pname in (cell.bias_ih, cell.bias_hh):
                freeze(cell, pname, cell.decay_gate, 0.0, f"{cell.decay_gate}: 0")  # type: ignore[arg-type]
        if "reset_bias" not in roles and cell.reset_gate is not None:
            freeze(cell, cell.bias_ih or cell.bias_hh, cell.reset_gate, profile.reset_bias, f"{cell.reset_gate}: {profile.reset_bias:g}")
            if cell.bias_ih is not None and cell.bias_hh is not None:
                freeze(cell, cell.bias_hh, cell.reset_gate, 0.0, f"{cell.reset_gate}: 0")
        if "candidate_bias" not in roles and cell.candidate_gate is not None:
            for pname in (cell.bias_ih, cell.bias_hh):
                freeze(cell, pname, cell.candidate_gate, 0.0, f"{cell.candidate_gate}: 0")
        if j_max is not None or "weights" not in roles:
            plan_w += [(cell, w) for w in cell.weights]

    # ---- apply
    applied: list[AppliedTransform] = []
    by_module = {id(c.module): c for c in cells}
    for (mid, pname), f in freezes.items():
        cell = by_module[mid]
        parametrize.register_parametrization(cell.module, pname, FrozenRows(f.mask, f.value))
        applied.append(AppliedTransform(cell.qual(pname), "frozen_rows", "; ".join(f.what)))
    for cell, pname in plan_w:
        m = cell.module
        if j_max is not None:
            parametrize.register_parametrization(m, pname, BoundedWeight(j_max))
            applied.append(AppliedTransform(cell.qual(pname), "bounded", f"|w| ≤ {j_max:g} via tanh"))
            if levels is not None:
                parametrize.register_parametrization(m, pname, QuantizedWeight(j_max, levels))
                applied.append(AppliedTransform(cell.qual(pname), "quantized", f"{levels} levels in ±{j_max:g}"))
        if "weights" not in roles:
            with torch.no_grad():
                current = getattr(m, pname).detach().clone()
            mask = torch.ones(current.shape, dtype=torch.bool, device=current.device)
            parametrize.register_parametrization(m, pname, FrozenRows(mask, current))
            applied.append(AppliedTransform(cell.qual(pname), "frozen", "weights not trainable"))
    for m in seen_modules.values():
        if isinstance(m, nn.RNNBase) and parametrize.is_parametrized(m):
            _install_rnn_fast_path(m)
    layers = tuple(dict.fromkeys(c.module_name or "<model>" for c in cells))
    return ConstraintReport(model, profile, step, seed, spread, layers, tuple(applied), taus, biases)


def unconstrain(model: nn.Module) -> list[str]:
    """Remove every soensim transform, leaving the effective values as plain parameters.

    The parameter objects stay the same (their data becomes the effective value), so an
    existing optimizer keeps working. Returns the qualified names that were released.

    Raises:
        ValueError: a constrained tensor also carries a foreign parametrization.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"unconstrain: model must be a torch.nn.Module; got {type(model).__name__}")
    released: list[str] = []
    for mname, m in list(model.named_modules()):
        if not parametrize.is_parametrized(m):
            continue
        for pname in list(m.parametrizations.keys()):  # type: ignore[union-attr]
            plist = list(m.parametrizations[pname])  # type: ignore[index]
            ours = [isinstance(p, _OUR_PARAMETRIZATIONS) for p in plist]
            if not any(ours):
                continue
            if not all(ours):
                raise ValueError(f"{mname}.{pname} mixes soensim constraints with other parametrizations; remove those first")
            parametrize.remove_parametrizations(m, pname, leave_parametrized=True)
            released.append(f"{mname}.{pname}" if mname else pname)
        _remove_rnn_fast_path(m)
    return released


# =============================================================================
# check: named rules
# =============================================================================
@dataclass(frozen=True)
class Violation:
    """One broken rule on one parameter; ``value`` is the worst offending value."""

    parameter: str
    rule: str
    value: float
    limit: float | str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.parameter}: {self.message}"


@dataclass
class CheckContext:
    """Everything a rule needs: the profile, the step, the cells and coupling matrices."""

    profile: HardwareProfile
    dt: float
    seed: int
    spread: bool
    atol: float
    cells: list[_Cell]
    couplings: list[tuple[str, nn.Module, Mapping[str, Tensor]]]
    s_max: float | Tensor | None = None
    phi_th: float | Tensor | None = None
    max_fan_in: int | None = None
    update_bias: Tensor | float | None = None

    def value(self, cell: _Cell, pname: str) -> Tensor:
        with torch.no_grad():
            return getattr(cell.module, pname).detach()

    def decay_bias(self, cell: _Cell) -> Tensor:
        """Effective decay-gate bias (``bias_ih + bias_hh`` rows), float64."""
        rows = cell.blocks[cell.decay_gate]  # type: ignore[index]
        return self.rows_sum(cell, [p for p in (cell.bias_ih, cell.bias_hh) if p is not None], rows)

    def rows_sum(self, cell: _Cell, pnames: Sequence[str], rows: Tensor) -> Tensor:
        """Sum over ``pnames`` of the given rows, float64 on the CPU."""
        total = torch.zeros(rows.numel(), dtype=torch.float64)
        for p in pnames:
            v = self.value(cell, p)
            total += v[rows.to(v.device)].double().cpu()
        return total

    def weight_matrices(self) -> Iterator[tuple[str, Tensor, str, nn.Module]]:
        """(qualified name, effective matrix, role, owner) for every coupling matrix.

        role is ``"ih"``, ``"hh"``, ``"hr"`` for recurrent-layer weights and ``"J"`` for
        the matrices of modules exposing ``couplings()``."""
        for cell in self.cells:
            for w in cell.weights:
                yield cell.qual(w), self.value(cell, w), w[len("weight_") : len("weight_") + 2], cell.module
        for mname, m, mats in self.couplings:
            for k, J in mats.items():
                yield (f"{mname}.{k}" if mname else k), J.detach(), "J", m


Rule = Callable[[CheckContext], Iterable[Violation]]

#: Named rules: name -> function(CheckContext) -> violations. ``check(rules=[...])`` selects.
RULES: dict[str, Rule] = {}


def _rule(name: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn

    return deco


@_rule("coupling_bound")
def _coupling_bound(ctx: CheckContext) -> Iterator[Violation]:
    """Every coupling |w| ≤ profile.coupling_max (+atol)."""
    j = ctx.profile.coupling_max
    if j is None:
        return
    for name, w, _, _ in ctx.weight_matrices():
        a = w.abs()
        bad = a > j + ctx.atol
        if bad.any():
            worst = a.max().item()
            yield Violation(name, "coupling_bound", worst, j, f"{int(bad.sum())} of {w.numel()} weights exceed |J| ≤ {j:g} (max {worst:.4g})")


@_rule("quantization_levels")
def _quantization_levels(ctx: CheckContext) -> Iterator[Violation]:
    """Every coupling lies (within atol) on the profile's weight grid."""
    j, levels = ctx.profile.coupling_max, ctx.profile.weight_levels
    if j is None or levels is None:
        return
    for name, w, _, _ in ctx.weight_matrices():
        dist = (w - quantize(w, j, levels)).abs()
        bad = dist > ctx.atol
        if bad.any():
            worst = dist.max().item()
            yield Violation(
                name, "quantization_levels", worst, ctx.atol,
                f"{int(bad.sum())} of {w.numel()} weights are off the {levels}-level grid in ±{j:g} (max distance {worst:.3g})",
            )


def _expected_biases(ctx: CheckContext, cell: _Cell) -> dict[str, Tensor]:
    if ctx.update_bias is not None:
        return {cell.decay_gate: _per_cell(ctx.update_bias, cell, len(ctx.cells))}  # type: ignore[dict-item]
    tau = ctx.profile.unit_taus(cell.hidden, ctx.seed + cell.index, spread=ctx.spread)
    return cell.design_biases(tau, ctx.dt)


def _not_leaky(ctx: CheckContext, cell: _Cell, rule: str) -> Violation | None:
    if cell.decay_gate is None or not cell.mechanism.leaky:
        return Violation(
            cell.qual(cell.bias_ih or cell.module_name), rule, math.nan, "leaky decay gate",
            f"gate mechanism {cell.mechanism.name!r} has no per-unit leaky decay; fabricated time constants cannot be realised",
        )
    if cell.bias_ih is None and cell.bias_hh is None:
        return Violation(cell.label, rule, math.nan, "decay bias", "layer has no biases; its time constants cannot be set")
    return None


@_rule("frozen_time_constant")
def _frozen_time_constant(ctx: CheckContext) -> Iterator[Violation]:
    """Decay-gate bias equals the profile's design value (seeded per cell) when τ is fixed and
    not trainable, or the ``update_bias`` given to :func:`check`."""
    p = ctx.profile
    explicit = ctx.update_bias is not None
    if not explicit and (not p.fixed_time_constants or "update_bias" in p.trainable):
        return
    for cell in ctx.cells:
        bad = _not_leaky(ctx, cell, "frozen_time_constant")
        if bad and not (explicit and cell.decay_gate is not None and (cell.bias_ih or cell.bias_hh)):
            yield bad
            continue
        present = [q for q in (cell.bias_ih, cell.bias_hh) if q is not None]
        worst, parts = 0.0, []
        for block, want in _expected_biases(ctx, cell).items():
            err = (ctx.rows_sum(cell, present, cell.blocks[block]) - want).abs()
            off = err > ctx.atol
            if off.any():
                worst = max(worst, err.max().item())
                parts.append(f"{int(off.sum())} of {err.numel()} units of gate {block!r}")
        if parts:
            yield Violation(
                cell.qual(present[0]), "frozen_time_constant", worst, ctx.atol,
                f"{', '.join(parts)} (bias_ih + bias_hh) differ from the "
                + ("given update_bias (" if explicit else f"frozen design bias (seed {ctx.seed + cell.index}, ")
                + f"max |Δb| {worst:.3g})",
            )


@_rule("time_constant_range")
def _time_constant_range(ctx: CheckContext) -> Iterator[Violation]:
    """Decay-gate bias maps to a fabricable τ: inside [τ_min, τ_max] or at a fabricated value.

    With ``check(spread=True)`` the bands widen by ``SPREAD_SIGMAS * tau_spread`` (relative);
    the comparison is made in bias space and widened by ``atol``."""
    p = ctx.profile
    if not p.fixed_time_constants:
        return
    rel = SPREAD_SIGMAS * p.tau_spread if ctx.spread else 0.0
    if p.tau_range is not None:
        bands = [(p.tau_range[0] * (1 - rel), p.tau_range[1] * (1 + rel))]
        label = f"[{p.tau_range[0]:.3g}, {p.tau_range[1]:.3g}] s"
    else:
        bands = [(v * (1 - rel), v * (1 + rel)) for v in p.tau_values]  # type: ignore[union-attr]
        label = "{" + ", ".join(f"{v:.3g}" for v in p.tau_values) + "} s"  # type: ignore[union-attr]
    if rel:
        label += f" ± {SPREAD_SIGMAS:g}σ ({rel:.2g})"
    for cell in ctx.cells:
        bad = _not_leaky(ctx, cell, "time_constant_range")
        if bad:
            yield bad
            continue
        # Compare in bias space (works for any monotone bias_for_decay), widened by atol.
        b = ctx.decay_bias(cell)
        ok = torch.zeros_like(b, dtype=torch.bool)
        for lo, hi in bands:
            ends = cell.design_biases(torch.tensor([max(lo, 1e-300), hi], dtype=torch.float64), ctx.dt)[cell.decay_gate]  # type: ignore[index]
            blo, bhi = ends.min().item(), ends.max().item()
            ok |= (b >= blo - ctx.atol) & (b <= bhi + ctx.atol)
        if not ok.all():
            tau = cell.mechanism.tau_for_bias(b, ctx.dt)
            if tau is not None:
                t_bad = tau[~ok]
                # the worst offender: farthest (in log τ) from the allowed bands
                d = torch.stack([torch.where(t_bad < lo, (lo / t_bad).log(), (t_bad / hi).log()).clamp_min(0) for lo, hi in bands]).amin(0)
                worst = t_bad[d.argmax()].item()
                desc = f"τ = {worst:.3g} s"
            else:
                worst = b[~ok][0].item()
                desc = f"bias {worst:.4g}"
            yield Violation(
                cell.qual(cell.bias_ih or cell.bias_hh), "time_constant_range", worst, label,  # type: ignore[arg-type]
                f"{int((~ok).sum())} of {b.numel()} units of gate {cell.decay_gate!r} have a time constant outside {label} (worst {desc})",
            )


@_rule("frozen_bias")
def _frozen_bias(ctx: CheckContext) -> Iterator[Violation]:
    """Non-trainable reset/candidate (and τ-less update) biases hold their fixed values."""
    p = ctx.profile
    for cell in ctx.cells:
        targets: list[tuple[str, float]] = []
        if "reset_bias" not in p.trainable and cell.reset_gate is not None:
            targets.append((cell.reset_gate, p.reset_bias))
        if "candidate_bias" not in p.trainable and cell.candidate_gate is not None:
            targets.append((cell.candidate_gate, 0.0))
        if not p.fixed_time_constants and "update_bias" not in p.trainable and cell.decay_gate is not None:
            targets.append((cell.decay_gate, 0.0))
        if not targets or (cell.bias_ih is None and cell.bias_hh is None):
            continue
        for gate, want in targets:
            rows = cell.blocks[gate]
            # A GRU candidate's bias_hh sits inside r·(W_hn h + b_hn): both halves must be 0.
            # Elsewhere only the sum bias_ih + bias_hh acts.
            parts: list[list[str]]
            present = [q for q in (cell.bias_ih, cell.bias_hh) if q is not None]
            if gate == cell.candidate_gate and cell.reset_gate is not None:
                parts = [[q] for q in present]
            else:
                parts = [present]
            for group in parts:
                err = (ctx.rows_sum(cell, group, rows) - want).abs()
                off = err > ctx.atol
                if off.any():
                    worst = err.max().item()
                    yield Violation(
                        cell.qual(group[0]), "frozen_bias", worst, want,
                        f"{int(off.sum())} rows of gate {gate!r} ({' + '.join(group)}) differ from the fixed value "
                        f"{want:g} (max |Δ| {worst:.3g})",
                    )


@_rule("excitatory_flux_window")
def _excitatory_flux_window(ctx: CheckContext) -> Iterator[Violation]:
    """Σ_{J>0} J·s_max ≤ 0.5 − φ_th per receiving unit (recurrent ``weight_hh`` and SOEN couplings)."""
    for name, J, role, owner in ctx.weight_matrices():
        if role not in ("hh", "J"):
            continue  # input (external drive) and projection weights: sources not bounded by s_max
        s_max = ctx.s_max if ctx.s_max is not None else (getattr(owner, "s_max", None) if role == "J" else None)
        phi_th = ctx.phi_th if ctx.phi_th is not None else (getattr(owner, "phi_th", None) if role == "J" else None)
        if s_max is None or phi_th is None:
            continue
        excess = flux_window_excess(J.double(), s_max, phi_th)
        bad = excess > ctx.atol
        if bad.any():
            flux = excitatory_flux(J.double(), s_max)
            worst = flux.max().item()
            lim = float((0.5 - torch.as_tensor(phi_th, dtype=torch.float64)).min())
            yield Violation(
                name, "excitatory_flux_window", worst, lim,
                f"{int(bad.sum())} of {J.shape[0]} units can receive Σ_(J>0) J·s_max up to {worst:.4g} > 0.5 − φ_th = {lim:.4g}",
            )


@_rule("fan_in")
def _fan_in(ctx: CheckContext) -> Iterator[Violation]:
    """Connections per receiving unit ≤ max_fan_in (input + recurrent weights of a row together)."""
    limit = ctx.max_fan_in
    if limit is None:
        limit = getattr(ctx.profile, "max_fan_in", None)
    if limit is None:
        return
    rows: list[tuple[str, Tensor]] = []
    for cell in ctx.cells:
        mats = [ctx.value(cell, w) for w in cell.weights if not w.startswith("weight_hr")]
        if mats:
            counts = sum(fan_in(m, ctx.atol) for m in mats)
            rows.append((cell.qual(" + ".join(w for w in cell.weights if not w.startswith("weight_hr"))), counts))
    for mname, _m, mats in ctx.couplings:
        for k, J in mats.items():
            rows.append(((f"{mname}.{k}" if mname else k), fan_in(J.detach(), ctx.atol)))
    for name, counts in rows:
        bad = counts > limit
        if bad.any():
            worst = int(counts.max())
            yield Violation(name, "fan_in", float(worst), float(limit), f"{int(bad.sum())} units have fan-in above {limit} (max {worst})")


def check(
    model: nn.Module,
    profile: HardwareProfile,
    *,
    dt: float | None = None,
    seed: int = 0,
    spread: bool = False,
    atol: float = 1e-6,
    rules: Sequence[str] | None = None,
    s_max: float | Tensor | None = None,
    phi_th: float | Tensor | None = None,
    max_fan_in: int | None = None,
    update_bias: Tensor | float | None = None,
) -> list[Violation]:
    """Check ``model`` against ``profile``; returns the violations (empty when it complies).

    Works on constrained and unconstrained models (it reads effective values).
    ``seed``/``spread``/``dt`` must match the :func:`constrain` call for the
    ``frozen_time_constant`` rule. ``s_max``/``phi_th`` enable the
    ``excitatory_flux_window`` rule on recurrent ``weight_hh`` matrices (SOEN-native
    layers exposing ``couplings()`` may carry their own ``s_max``/``phi_th``
    attributes); ``max_fan_in`` (e.g. :data:`FAN_IN_LIMIT`) enables ``fan_in``;
    ``update_bias`` (as for :func:`constrain`) replaces the profile's design biases in
    ``frozen_time_constant``.
    ``rules`` selects rule names from :data:`RULES` (default: all).
    """
    _require(model, profile, "check")
    if rules is None:
        selected = list(RULES)
    else:
        if isinstance(rules, str):
            rules = [rules]
        unknown = [r for r in rules if r not in RULES]
        if unknown:
            raise ValueError(f"unknown rules {unknown}; known rules: {sorted(RULES)}")
        selected = list(rules)
    cells = _find_cells(model)
    couplings = _couplings_of(model)
    if not cells and not couplings:
        raise ValueError(f"check: {type(model).__name__} has no recurrent layer and no module exposing couplings()")
    ctx = CheckContext(profile, _dt(profile, dt), seed, spread, float(atol), cells, couplings, s_max, phi_th, max_fan_in, update_bias)
    out: list[Violation] = []
    for name in selected:
        out.extend(RULES[name](ctx))
    return out


__all__ = [
    "AppliedTransform",
    "BoundedWeight",
    "CheckContext",
    "ConstraintReport",
    "FAN_IN_LIMIT",
    "FrozenRows",
    "QuantizedWeight",
    "RULES",
    "SPREAD_SIGMAS",
    "Violation",
    "bounded",
    "bounded_inverse",
    "check",
    "constrain",
    "excitatory_flux",
    "fan_in",
    "flux_window_excess",
    "quantize",
    "quantize_ste",
    "unconstrain",
]
