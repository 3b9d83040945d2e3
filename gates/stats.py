"""Opt-in gate statistics: the per-unit gate histograms of Gu et al. 2020 (arXiv:1910.09890, Fig. 4)
and the W_hz growth of Malandain 2026, "Ablation of Gate Biases in GRUs for s-CIFAR-10".

:class:`GateRecorder` is a context manager: while it is active, the gates layers inside
the module it was given take the reference path and report every step's gate
activations, which it accumulates as per-unit sums (memory O(H), not O(T·B·H)). Outside
it nothing is attached — no hooks, the fast path runs unchanged::

    with GateRecorder(model) as rec:
        model(x)                      # any number of calls (e.g. a validation set)
    s = rec.stats()                   # {"rnn.l0": {"decay_gate": (H,), "timescale_steps": (H,), ...}}

Recorded per cell ``l{k}`` of every :class:`~gates.layers.GatedGRU`/``GatedLSTM`` found:

* ``decay_gate`` — the effective decay gate (GRU update, LSTM forget; after refine/master
  gates) per unit, averaged over time and batch (Gu et al. appendix D.1);
* ``timescale_steps`` — the characteristic time scale 1/(1 - g) of that mean gate, in steps
  (Gu et al. appendix B.2);
* ``input_gate`` and the mechanism's other gates where present: ``reset`` (GRU), ``output``
  (LSTM), ``main`` (the decay gate before refine/master), ``refine``, ``master_forget``,
  ``master_input`` (H/C units);
* ``steps`` — the number of (step × batch) samples averaged;
* weight norms: ``W_h_decay``/``W_x_decay`` (Frobenius norms of the decay rows of W_hh and
  W_ih: W_hz, W_xz for a GRU) and ``W_h_decay_rows``/``W_x_decay_rows`` (per-unit row norms);
  the rows are the layout's decay block (:func:`soensim.layout`).

The recorder reads the reference path, so it records unidirectional layers without projection.

Values are tensors; plotting lives in ``studies.plots``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from soensim.layouts import Cell, layout, tensor

from .layers import _GatedRNN


def _gated_layers(module: nn.Module) -> list[tuple[str, _GatedRNN]]:
    found = [(name, m) for name, m in module.named_modules() if isinstance(m, _GatedRNN)]
    if not found:
        raise ValueError(f"{type(module).__name__} contains no GatedGRU/GatedLSTM layer to record")
    for name, m in found:
        if m.bidirectional or m.proj_size:
            raise ValueError(f"layer {name or type(m).__name__!r}: gate statistics need the reference path, which "
                             "runs unidirectional layers without proj_size")
    return found


class GateRecorder:
    """Accumulates per-unit mean gate activations of the gates layers in ``module`` while active.

    Args:
        module: a GatedGRU/GatedLSTM or any module containing some.

    Use as a context manager (``with GateRecorder(m) as rec: ...``) or call :meth:`start`/
    :meth:`stop`. Statistics accumulate over every forward call while active; :meth:`reset`
    clears them. Recording does not change outputs or gradients (the reference path is exact),
    only speed.
    """

    def __init__(self, module: nn.Module) -> None:
        self.layers = _gated_layers(module)
        self._sums: dict[str, dict[str, Tensor]] = {}
        self._counts: dict[str, int] = {}
        self._active = False

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "GateRecorder":
        for name, layer in self.layers:
            if layer._gate_recorder is not None and layer._gate_recorder is not self:
                raise RuntimeError(f"layer {name or type(layer).__name__!r} is already recorded by another GateRecorder")
        for _, layer in self.layers:
            layer._gate_recorder = self
        self._active = True
        return self

    def stop(self) -> None:
        for _, layer in self.layers:
            if layer._gate_recorder is self:
                layer._gate_recorder = None
        self._active = False

    def __enter__(self) -> "GateRecorder":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def active(self) -> bool:
        return self._active

    def reset(self) -> None:
        """Forget the accumulated statistics."""
        self._sums.clear()
        self._counts.clear()

    # ---------------------------------------------------------------- recording
    def _key(self, layer: nn.Module, k: int) -> str:
        for name, m in self.layers:
            if m is layer:
                return _key(name, layout(m).cells[k])
        raise KeyError("layer not recorded")  # pragma: no cover

    def _callback(self, layer: nn.Module, k: int):
        key = self._key(layer, k)
        sums = self._sums.setdefault(key, {})

        def on_step(gates: dict[str, Tensor]) -> None:
            with torch.no_grad():
                for name, g in gates.items():
                    s = g.detach().reshape(-1, g.shape[-1]).sum(0, dtype=torch.float64)
                    sums[name] = s if name not in sums else sums[name] + s
                g = gates["decay_gate"]
                self._counts[key] = self._counts.get(key, 0) + g.numel() // g.shape[-1]

        return on_step

    # ---------------------------------------------------------------- results
    def stats(self) -> dict[str, dict[str, Tensor]]:
        """Per recorded layer: mean gates (float64, per unit), ``timescale_steps``, ``steps`` and weight norms."""
        out: dict[str, dict[str, Tensor]] = {}
        for name, layer in self.layers:
            for cell, norms in _norm_tensors(layer):
                key = _key(name, cell)
                n = self._counts.get(key, 0)
                entry: dict[str, Tensor] = {}
                if n:
                    entry = {g: s / n for g, s in self._sums[key].items()}
                    entry["timescale_steps"] = _timescale(entry["decay_gate"])
                entry["steps"] = torch.tensor(n)
                entry.update(norms)
                out[key] = entry
        return out


def _key(name: str, cell: Cell) -> str:
    return f"{name}.{cell.tag}" if name else cell.tag


def _timescale(g: Tensor) -> Tensor:
    return 1.0 / (1.0 - g).clamp_min(torch.finfo(g.dtype).tiny)


def _decay_rows(layer: nn.Module) -> list[tuple[Cell, Tensor, Tensor]]:
    """(cell, decay rows of W_hh, decay rows of W_ih) of every cell (effective values, detached)."""
    lay = layout(layer)
    sl = lay.block(lay.decay_block)
    return [(c, tensor(layer, c.weight_hh)[sl].detach(), tensor(layer, c.weight_ih)[sl].detach()) for c in lay.cells]


@torch.no_grad()
def _norm_tensors(layer: nn.Module) -> list[tuple[Cell, dict[str, Tensor]]]:
    out = []
    for c, w_h, w_x in _decay_rows(layer):
        w_h, w_x = w_h.double(), w_x.double()
        out.append((c, {"W_h_decay": w_h.norm(), "W_x_decay": w_x.norm(),
                        "W_h_decay_rows": w_h.norm(dim=1), "W_x_decay_rows": w_x.norm(dim=1)}))
    return out


@torch.no_grad()
def gate_means(layer: nn.Module, x: Tensor, h0: Any = None, k: int = 0) -> dict[str, Tensor]:
    """Per-unit effective decay gate of layer ``k`` of a gates layer, averaged over time and batch.

    ``x`` is laid out as the layer expects (``batch_first`` honoured), ``h0`` as its ``hx``.
    Returns ``{"decay_gate": (H,), "timescale_steps": (H,)}`` in the layer's dtype, with the
    time scale 1/(1 - g) of the mean gate. One no-grad pass; the layer is left as it was.
    """
    if not isinstance(layer, _GatedRNN):
        raise ValueError(f"layer must be a GatedGRU/GatedLSTM; got {type(layer).__name__}")
    with GateRecorder(layer) as rec:
        layer(x, h0)
    s = rec.stats()[f"l{k}"]
    dtype = next(layer.parameters()).dtype
    g = s["decay_gate"].to(dtype)
    return {"decay_gate": g, "timescale_steps": _timescale(g)}


@torch.no_grad()
def decay_weight_norms(layer: nn.Module) -> dict[str, float]:
    """Frobenius norms of the decay-gate rows of W_hh and W_ih (W_hz, W_xz for a GRU) per cell.

    Keys ``W_h_decay_{tag}`` and ``W_x_decay_{tag}`` with the cell's tag (``l0``, ``l0_reverse``,
    ...; ``cell`` for GRUCell/LSTMCell). Works on every GRU/LSTM layer :func:`soensim.layout` describes.
    """
    out = {}
    for c, w_h, w_x in _decay_rows(layer):
        out[f"W_h_decay_{c.tag}"] = w_h.norm().item()
        out[f"W_x_decay_{c.tag}"] = w_x.norm().item()
    return out


__all__ = ["GateRecorder", "decay_weight_norms", "gate_means"]
