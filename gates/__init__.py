"""Gating mechanisms and drop-in recurrent layers (GRU and LSTM cores)."""
from .layers import GatedGRU, GatedLSTM, build_layer
from .mechanisms import GATES, Mechanism, get_mechanism

__all__ = ["GATES", "GatedGRU", "GatedLSTM", "Mechanism", "build_layer", "get_mechanism"]
