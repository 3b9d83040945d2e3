"""Convert ``torch.nn.GRU``/``torch.nn.LSTM`` into the equivalent gates layers.

torch's recurrent layers keep a cached list of flattened weights, so their forward does not
see a ``torch.nn.utils.parametrize`` transform on one of their tensors (such as
:func:`soensim.constrain` or :func:`soensim.constraints.freeze_biases` apply). The gates
layers read every tensor on every forward. :func:`from_torch` builds the equivalent
:class:`~gates.layers.GatedGRU`/:class:`~gates.layers.GatedLSTM` — gate ``-``,
``implementation="torch"`` (the same torch kernel runs), the same options and copies of the
parameters — and :func:`convert` swaps every ``nn.GRU``/``nn.LSTM`` inside a model::

    model = gates.convert(model)          # before building the optimizer: parameters are new objects
    soensim.constrain(model, profile)

Outputs, final states and gradients equal those of the original layer.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers import GatedGRU, GatedLSTM, _GatedRNN

#: torch's classes and the gates layer each becomes.
TORCH_TO_GATED: dict[type[nn.Module], type[_GatedRNN]] = {nn.GRU: GatedGRU, nn.LSTM: GatedLSTM}


def from_torch(module: nn.GRU | nn.LSTM) -> GatedGRU | GatedLSTM:
    """The :class:`GatedGRU`/:class:`GatedLSTM` equal to ``module``: same sizes, ``num_layers``,
    ``bias``, ``batch_first``, ``dropout``, ``bidirectional``, ``proj_size`` (LSTM), device, dtype,
    training mode and ``requires_grad`` flags, with copies of its parameters. torch's global RNG
    is left as it was.

    Raises:
        TypeError: ``module`` is not a ``torch.nn.GRU``/``nn.LSTM`` (a subclass may change the
            forward pass, so it is refused too).
        ValueError: ``module`` is parametrized (torch's layer ignores its parametrizations, so
            there is no single set of weights to copy): remove them first.
    """
    if isinstance(module, tuple(TORCH_TO_GATED)) and parametrize.is_parametrized(module):
        raise ValueError("from_torch: the layer is parametrized, which torch's nn.GRU/nn.LSTM forward ignores: remove "
                         "the parametrizations (parametrize.remove_parametrizations) before converting")
    cls = TORCH_TO_GATED.get(type(module))
    if cls is None:
        what = " (a subclass may change the forward pass)" if isinstance(module, tuple(TORCH_TO_GATED)) else ""
        raise TypeError(f"from_torch converts torch.nn.GRU and torch.nn.LSTM; got {type(module).__name__}{what}")
    first = next(module.parameters())
    options = {"num_layers": module.num_layers, "bias": module.bias, "batch_first": module.batch_first,
               "dropout": float(module.dropout), "bidirectional": module.bidirectional}
    if isinstance(module, nn.LSTM):
        options["proj_size"] = module.proj_size
    with torch.random.fork_rng(devices=[]):  # the initial draw is overwritten: keep the caller's RNG stream
        layer = cls(module.input_size, module.hidden_size, **options, gate="-", implementation="torch",
                    device=first.device, dtype=first.dtype)
    source = dict(module.named_parameters(recurse=False))
    target = dict(layer.named_parameters(recurse=False))
    if source.keys() != target.keys():  # pragma: no cover - torch's naming is the layers' naming
        raise RuntimeError(f"parameter names differ: {sorted(source)} vs {sorted(target)}")
    with torch.no_grad():
        for name, p in source.items():
            target[name].copy_(p)
            target[name].requires_grad_(p.requires_grad)
    return layer.train(module.training)


def convert(model: nn.Module) -> nn.Module:
    """Replace every ``torch.nn.GRU``/``nn.LSTM`` inside ``model`` by :func:`from_torch` of it, in
    place (a layer used in several places becomes one gates layer used there). Returns ``model``,
    or the converted layer when ``model`` itself is an ``nn.GRU``/``nn.LSTM``.

    Build the optimizer after converting: the converted layers hold new parameter tensors.
    """
    if isinstance(model, tuple(TORCH_TO_GATED)):
        return from_torch(model)  # type: ignore[arg-type]
    converted: dict[int, nn.Module] = {}
    found = [(path, m) for path, m in model.named_modules(remove_duplicate=False)
             if isinstance(m, tuple(TORCH_TO_GATED))]
    for path, m in found:
        if id(m) not in converted:
            converted[id(m)] = from_torch(m)  # type: ignore[arg-type]
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, converted[id(m)])
    return model


__all__ = ["TORCH_TO_GATED", "convert", "from_torch"]
