"""soensim: hardware-aware simulation and training of physical recurrent networks.

The top level gathers the public entry points: the τ ↔ bias mapping (:mod:`soensim.timescales`),
hardware profiles and constraints, the layer contract (:func:`layout`), the continuous-time
models (:mod:`soensim.dynamics`) with the solver registry (:func:`simulate`, :data:`SOLVERS`),
the SOEN layer, the transfer of a trained GRU back to continuous time, and the export of a
trained network as a hardware specification (:func:`export`, :func:`load_export`).
"""
from .constraints import check, constrain, unconstrain
from .continuous_gru import ContinuousGRU, ContinuousLayer
from .dynamics import Discretization, DrivenSystem, LeakyGatedUnit, LeakyIntegrator, SOENDendrite
from .layouts import Layout, find_layers, layout
from .profiles import PRESETS, HardwareProfile, ProfileError
from .soen_layer import SOENLayer
from .solvers import SOLVERS, get_solver, simulate
from .specification import export, load_export
from .timescales import (
    bias_to_tau,
    decay,
    from_seconds,
    gate_timescale_steps,
    one_minus_decay,
    soen_time_unit,
    tau_to_bias,
    timescale_steps,
    to_seconds,
)
from .transfer import to_continuous, transfer_model

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "SOLVERS", "ContinuousGRU", "ContinuousLayer", "Discretization", "DrivenSystem", "HardwareProfile",
    "Layout", "LeakyGatedUnit", "LeakyIntegrator", "ProfileError", "SOENDendrite", "SOENLayer", "bias_to_tau",
    "check", "constrain", "decay", "export", "find_layers", "from_seconds", "gate_timescale_steps", "get_solver", "layout", "load_export",
    "one_minus_decay", "simulate", "soen_time_unit", "tau_to_bias", "timescale_steps", "to_continuous",
    "to_seconds", "transfer_model", "unconstrain",
]
