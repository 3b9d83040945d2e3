"""Hardware constraints as removable transforms, and named rules that check them.

* :mod:`~soensim.constraints.transforms` — pure functions (bound, quantize, flux, fan-in)
  and the parametrizations built on them;
* :mod:`~soensim.constraints.apply` — :func:`constrain` / :func:`unconstrain` a model to a
  :class:`~soensim.profiles.HardwareProfile`, and :func:`freeze_biases`, the one way to
  freeze bias rows;
* :mod:`~soensim.constraints.rules` — :func:`check` and the named rules in :data:`RULES`.

Every layer is read through the layer contract (:func:`soensim.layout`).
"""
from .apply import AppliedTransform, ConstraintReport, FrozenBiases, constrain, freeze_biases, unconstrain
from .rules import FAN_IN_LIMIT, RULES, SPREAD_SIGMAS, CheckContext, Violation, check
from .transforms import (
    BoundedWeight,
    FrozenRows,
    QuantizedWeight,
    bounded,
    bounded_inverse,
    excitatory_flux,
    fan_in,
    flux_window_excess,
    quantize,
    quantize_ste,
)

__all__ = [
    "AppliedTransform",
    "BoundedWeight",
    "CheckContext",
    "ConstraintReport",
    "FAN_IN_LIMIT",
    "FrozenBiases",
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
    "freeze_biases",
    "quantize",
    "quantize_ste",
    "unconstrain",
]
