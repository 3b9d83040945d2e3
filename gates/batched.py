"""Several independent layers of one shape and mode run as one batched recurrence.

``forward_models(layers, inputs)`` runs M :class:`~gates.GatedGRU`/:class:`~gates.GatedLSTM`
layers, each over its own input. On the Triton path (CUDA) that is one launch per cell for all
M models, the kernels' model dimension (a batch of 50 fills only a few of a GPU's
multiprocessors; M models fill more): each model's effective parameters, after their
transforms (hardware constraints, frozen biases), are stacked on every call, so gradients
reach each model's own parameters. On the CPU the fused kernels run models one after
another anyway, so each layer runs its own call there (stacking would only copy).

Results equal running each layer on its own: bit for bit on the CPU, to float tolerance on
Triton (which also stands in for cuDNN's gate ``-``). Layers are packable when
:func:`batch_signature` agrees.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .layers import _TRITON_DTYPES, TRITON_RECURRENCES, _GatedRNN, fused_available, triton_available

__all__ = ["batch_signature", "batched_implementation", "forward_models"]


def batched_implementation(layer: _GatedRNN) -> str | None:
    """``"triton"`` (CUDA with triton installed, or ``implementation="triton"``), ``"fused"``
    (the fused CPU kernels) or None: the layer cannot run batched (a gate without a fused
    mode, the torch or reference implementation, two directions, a projection, dropout
    between layers, or an active :class:`~gates.stats.GateRecorder`)."""
    if (layer._gate_recorder is not None or layer.bidirectional or layer.proj_size
            or (layer.dropout and layer.num_layers > 1)):
        return None
    p, impl = layer._param(), layer.implementation
    if impl == "triton" or (impl == "auto" and p.device.type == "cuda" and p.dtype in _TRITON_DTYPES
                            and triton_available(p.device)):
        return "triton"
    if impl in ("auto", "fused") and fused_available(layer.core, layer.mechanism.fused_mode):
        return "fused"
    return None


def batch_signature(layer: Any) -> tuple | None:
    """What must agree for layers to run in one batched recurrence (core, kernel mode, sizes,
    device, dtype, path); None when ``layer`` cannot run batched."""
    if not isinstance(layer, _GatedRNN):
        return None
    path = batched_implementation(layer)
    if path is None:
        return None
    p = layer._param()
    chunk = layer.master_chunk if layer.mechanism.master is not None else None
    return (layer.core, layer.mechanism.fused_mode, chunk, layer.input_size, layer.hidden_size, layer.num_layers,
            layer.bias, layer.batch_first, str(p.device), p.dtype, path)


def forward_models(layers: Sequence[_GatedRNN], inputs: Sequence[Tensor],
                   hx: Sequence[Any] | None = None) -> list[tuple[Tensor, Any]]:
    """``[layer(x, h) for layer, x, h in zip(layers, inputs, hx)]`` in one batched recurrence per cell.

    Args:
        layers: M layers with equal :func:`batch_signature`.
        inputs: M inputs in the layers' convention ((T, B, I), or (B, T, I) with ``batch_first``),
            one shape for all.
        hx: None (zeros), or M initial states as the layers take them (LSTM: ``(h0, c0)``).

    Returns:
        M results as each layer returns them: ``(output, h_n)``, LSTM ``(output, (h_n, c_n))``.
    """
    layers = list(layers)
    if not layers or len(inputs) != len(layers) or (hx is not None and len(hx) != len(layers)):
        raise ValueError(f"forward_models: expected as many inputs (and initial states) as layers, at least one; "
                         f"got {len(layers)} layers, {len(inputs)} inputs"
                         + ("" if hx is None else f", {len(hx)} states"))
    sig = batch_signature(layers[0])
    if sig is None:
        raise ValueError(f"forward_models: {layers[0]!r} cannot run batched (see batched_implementation)")
    for m, layer in enumerate(layers[1:], 1):
        if batch_signature(layer) != sig:
            raise ValueError(f"forward_models: layer {m} differs from layer 0 in its batch signature "
                             f"{batch_signature(layer)} vs {sig}")
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) > 1:
        raise ValueError(f"forward_models: every input must have the same shape; got {sorted(shapes)}")
    if sig[-1] == "fused":  # the CPU kernels run the models one after another: each layer's own call, no copies
        return [layer(x) if hx is None else layer(x, hx[m]) for m, (layer, x) in enumerate(zip(layers, inputs, strict=True))]
    xs, states, unbatched = _inputs(layers, inputs, hx)
    recurrence = TRITON_RECURRENCES[layers[0].core]
    layer_in, finals = xs, []
    for k in range(layers[0].num_layers):
        params = [layer._cell_params(layer._cells[k]) for layer in layers]
        gi = _projections(layer_in, params)
        w_hh = torch.stack([p[1] for p in params])
        b_hh = torch.stack([p[3] for p in params]) if params[0][3] is not None else None
        out, s = recurrence(gi, tuple(t.select(1, k) for t in states), w_hh, b_hh, layers[0].mechanism.fused_mode)
        finals.append(s)
        layer_in = out
    # unbind, not indexing, to split per model: its backward stacks the M gradients once
    final = [torch.stack(f, dim=1).unbind(0) for f in zip(*finals, strict=True)]  # per state: M × (L, B, H)
    results = []
    for m, (layer, out) in enumerate(zip(layers, layer_in.unbind(0), strict=True)):
        s_m = tuple(t[m].squeeze(1) if unbatched else t[m] for t in final)
        results.append((layer._finish(out, unbatched), s_m[0] if layer.core == "gru" else s_m))
    return results


def _inputs(layers: list[_GatedRNN], inputs: Sequence[Tensor], hx: Sequence[Any] | None
            ) -> tuple[Tensor, tuple[Tensor, ...], bool]:
    """Time-major inputs (M, T, B, I) and initial states, each (M, L, B, H), checked as each layer checks them."""
    xs, states = [], []
    unbatched = False
    for m, layer in enumerate(layers):
        x, unbatched = layer._check_input(inputs[m])
        h = None if hx is None else hx[m]
        if layer.core == "gru":
            states.append((layer._state(h, x, unbatched, "h0", layer.hidden_size),))
        else:
            h0, c0 = (None, None) if h is None else h
            states.append((layer._state(h0, x, unbatched, "h0", layer.hidden_size),
                           layer._state(c0, x, unbatched, "c0", layer.hidden_size)))
        xs.append(x)
    return torch.stack(xs), tuple(torch.stack(s) for s in zip(*states, strict=True)), unbatched


def _projections(layer_in: Tensor, params: list[tuple]) -> Tensor:
    """``gi`` (M, T, B, R) = each model's ``x W_ih^T + b_ih``, in one batched GEMM."""
    M, T, B, _ = layer_in.shape
    w_ih = torch.stack([p[0] for p in params])  # (M, R, I)
    flat = layer_in.reshape(M, T * B, -1)
    if params[0][2] is None:
        gi = torch.bmm(flat, w_ih.transpose(1, 2))
    else:
        gi = torch.baddbmm(torch.stack([p[2] for p in params]).unsqueeze(1), flat, w_ih.transpose(1, 2))
    return gi.view(M, T, B, -1)
