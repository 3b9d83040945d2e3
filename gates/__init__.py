"""Gating mechanisms and drop-in recurrent layers (GRU and LSTM cores).

- :mod:`gates.mechanisms` — the registry :data:`GATES` (-, C, O, U, R, OM, UM, OR, UR, SST, SSTN);
- :mod:`gates.functional` — reference step/sequence functions (the ground truth);
- :mod:`gates.layers` — :class:`GatedGRU`, :class:`GatedLSTM` (nn.GRU/nn.LSTM drop-ins that
  declare their :func:`soensim.layout`);
- :mod:`gates.batched` — :func:`forward_models`: M layers of one shape and mode in one batched
  recurrence (the model dimension of the fused kernels);
- :mod:`gates.conversion` — :func:`from_torch`/:func:`convert`: torch's nn.GRU/nn.LSTM into
  the equivalent gates layers (so parametrizations are honoured);
- :mod:`gates.init` — initialisers for any GRU/LSTM-like layer;
- :mod:`gates.stats` — opt-in gate statistics (:class:`GateRecorder`);
- :mod:`gates.kernels` — fused recurrences used by the layers when available.
"""
from .conversion import convert, from_torch
from .layers import GatedGRU, GatedLSTM, build_layer
from .mechanisms import GATES, Mechanism, get_mechanism
from .stats import GateRecorder

__all__ = ["GATES", "GateRecorder", "GatedGRU", "GatedLSTM", "Mechanism", "build_layer", "convert", "from_torch",
           "get_mechanism"]
