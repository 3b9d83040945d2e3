"""soensim: hardware-aware simulation and training of physical recurrent networks."""
from .constraints import check, constrain, unconstrain
from .profiles import PRESETS, HardwareProfile, ProfileError
from .simulate import SOLVERS, simulate
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

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "SOLVERS", "HardwareProfile", "ProfileError", "bias_to_tau", "check", "constrain", "decay",
    "from_seconds", "gate_timescale_steps", "one_minus_decay", "simulate", "soen_time_unit", "tau_to_bias",
    "timescale_steps", "to_seconds", "unconstrain",
]
