"""Back to continuous time: a trained GRU-core layer as a :class:`~soensim.continuous_gru.ContinuousGRU`.

The layer is read through the layer contract (:func:`soensim.layout`): the rows of its
reset, update (decay), candidate and — for refine mechanisms — refine blocks, stacked in the
kernel order of :data:`~soensim.continuous_gru.MODE_BLOCKS`, and the mechanism from
``layout.leaky`` and ``layout.mode``. Effective values are read (constraints and
parametrizations applied); the layer is not modified. Accepted: every GRU-core layer with a
per-unit leaky mechanism — torch.nn.GRU / nn.GRUCell and the gates layers with the
``sigmoid``, ``refine`` or ``sst`` kernel modes; cumax/master mechanisms mix units and are
refused, as are LSTM cores, stacked and bidirectional layers.

Example::

    cont = to_continuous(gru, dt=1.0)          # float64 copy of the weights
    y, h_n = cont.run(x)                        # exact integrator == gru(x.double())
    y2, _ = cont.run(x, method="dopri5", rtol=1e-10, atol=1e-12)   # same, to tolerance
    model_ct = transfer_model(model, dt=1.0)    # every GRU-core layer of a model swapped
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .continuous_gru import MODE_BLOCKS, ContinuousGRU, ContinuousLayer
from .layouts import Layout, has_layout, layout, tensor


# =============================================================================
# Reading a trained layer
# =============================================================================
def _gru_layout(layer: nn.Module) -> Layout:
    """The layout of a one-layer, unidirectional GRU-core layer with a leaky mechanism."""
    try:
        lay = layout(layer)
    except TypeError as err:
        raise ValueError(f"to_continuous needs a GRU-core layer: {err}") from err
    if lay.core != "gru":
        raise ValueError(f"{type(layer).__name__} is an {lay.core.upper()} core; to_continuous needs a GRU core")
    if any(c.direction for c in lay.cells):
        raise ValueError("to_continuous: bidirectional layers have no causal continuous-time form")
    if len(lay.cells) != 1:
        raise ValueError("to_continuous: convert one layer at a time (num_layers must be 1)")
    if not lay.leaky or lay.mode not in MODE_BLOCKS:
        raise ValueError(f"gate mechanism {lay.mechanism!r} (kernel mode {lay.mode!r}) is not a per-unit leaky "
                         f"integration (cumax/master gates mix units); to_continuous supports the kernel modes "
                         f"{sorted(MODE_BLOCKS)}")
    return lay


def _kernel_rows(lay: Layout) -> Tensor:
    """Row indices of the layout's blocks in the kernel order of its (leaky) mode: reset, update,
    candidate[, refine]; ValueError when the layout's blocks are not exactly those."""
    by_function = (lay.reset_block, lay.decay_block, lay.candidate_block, lay.refine_block)
    names = [n for n in by_function[: len(MODE_BLOCKS[lay.mode])] if n is not None]
    if sorted(names) != sorted(lay.blocks) or len(names) != len(MODE_BLOCKS[lay.mode]):
        raise ValueError(f"kernel mode {lay.mode!r} needs the blocks {MODE_BLOCKS[lay.mode]} "
                         f"(reset, decay, candidate[, refine]); the layout has {list(lay.blocks)}")
    return torch.cat([torch.arange(lay.blocks[n].start, lay.blocks[n].stop) for n in names])


def layer_weights(layer: nn.Module) -> dict[str, Any]:
    """Effective weights of a one-layer, unidirectional GRU-core layer, rows in kernel order.

    Returns ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (detached copies,
    constraints applied; zeros for a layer without biases), the kernel ``mode`` and the
    layer's ``batch_first``.

    Raises:
        ValueError: not a GRU core, a mechanism that is not a per-unit leaky integration,
            several layers, bidirectional.
    """
    lay = _gru_layout(layer)
    cell = lay.cells[0]
    idx = _kernel_rows(lay)
    with torch.no_grad():
        w_ih = tensor(layer, cell.weight_ih).detach()
        w_hh = tensor(layer, cell.weight_hh).detach()

        def bias(name: str | None) -> Tensor:
            return w_hh.new_zeros(w_hh.shape[0]) if name is None else tensor(layer, name).detach()

        b_ih, b_hh = bias(cell.bias_ih), bias(cell.bias_hh)
        w_ih, w_hh, b_ih, b_hh = (t[idx.to(t.device)].clone() for t in (w_ih, w_hh, b_ih, b_hh))
    return {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh, "mode": lay.mode,
            "batch_first": bool(getattr(layer, "batch_first", False))}


# =============================================================================
# Entry points
# =============================================================================
def to_continuous(layer: nn.Module, dt: float = 1.0, *, hold: str = "gates", dtype: torch.dtype = torch.float64,
                  batch_first: bool | None = None, requires_grad: bool = False) -> ContinuousGRU:
    """The continuous-time model of a trained GRU-core layer (see the module docstring).

    Args:
        layer: torch.nn.GRU / nn.GRUCell (one layer, unidirectional) or a gates layer
            (GatedGRU) with a leaky mechanism (kernel mode ``sigmoid``, ``refine`` or ``sst``).
            Effective (constrained) values are read; the layer is not modified.
        dt: the training step in the unit the continuous model should use (seconds for a
            hardware profile — e.g. :func:`studies.models.hardware_dt` — or 1 for steps).
        hold: ``"gates"`` (exact reproduction of the discrete layer) or ``"input"``.
        dtype: parameter dtype of the continuous model (float64 by default).
        batch_first: default: the layer's own (False for GRUCell).
        requires_grad: make the continuous model's weights trainable.

    Raises:
        ValueError: not a GRU core (LSTM, RNN), a cumax/master mechanism, several layers,
            bidirectional.
    """
    spec = layer_weights(layer)
    return ContinuousGRU(spec["weight_ih"], spec["weight_hh"], spec["bias_ih"], spec["bias_hh"], dt, spec["mode"],
                         batch_first=spec["batch_first"] if batch_first is None else batch_first, hold=hold,
                         dtype=dtype, requires_grad=requires_grad)


def is_gru_core(m: nn.Module) -> bool:
    """True for the GRU-core layers :func:`to_continuous` reads (its mechanism and shape unchecked)."""
    return has_layout(m) and layout(m).core == "gru"


def transfer_model(model: nn.Module, dt: float | Callable[[str, nn.Module], float] = 1.0, method: str = "exact",
                   *, hold: str = "gates", dtype: torch.dtype = torch.float64, **run_kwargs: Any) -> nn.Module:
    """A deep copy of ``model`` whose GRU-core layers are replaced by :class:`ContinuousLayer` s.

    ``dt`` is a number or a function ``(qualified name, layer) -> dt``. The rest of the
    model (heads, embeddings) is kept as it is. A model that is itself a GRU layer comes
    back as a :class:`ContinuousLayer`.
    """
    def dt_for(name: str, m: nn.Module) -> float:
        return float(dt(name, m)) if callable(dt) else float(dt)

    if is_gru_core(model):
        return to_continuous(model, dt_for("", model), hold=hold, dtype=dtype).as_layer(method, **run_kwargs)
    new = copy.deepcopy(model)
    replaced = 0
    for name, m in list(new.named_modules()):
        for cname, child in list(m.named_children()):
            if is_gru_core(child):
                qual = f"{name}.{cname}" if name else cname
                cont = to_continuous(child, dt_for(qual, child), hold=hold, dtype=dtype)
                setattr(m, cname, cont.as_layer(method, **run_kwargs))
                replaced += 1
    if not replaced:
        raise ValueError(f"transfer_model: {type(model).__name__} contains no GRU-core layer")
    return new


def continuous_modules(model: nn.Module) -> list[ContinuousGRU]:
    """Every :class:`ContinuousGRU` inside ``model`` (itself included)."""
    return [m for m in model.modules() if isinstance(m, ContinuousGRU)]


def max_abs_diff(a: Sequence[Tensor] | Tensor, b: Sequence[Tensor] | Tensor) -> float:
    """Largest absolute difference between two tensors (or matching sequences of them), in float64."""
    if isinstance(a, Tensor):
        a, b = [a], [b]  # type: ignore[list-item]
    return max(float((x.detach().double() - y.detach().double()).abs().max()) if x.numel() else 0.0
               for x, y in zip(a, b, strict=True))


__all__ = [
    "ContinuousGRU",
    "ContinuousLayer",
    "continuous_modules",
    "is_gru_core",
    "layer_weights",
    "max_abs_diff",
    "to_continuous",
    "transfer_model",
]
