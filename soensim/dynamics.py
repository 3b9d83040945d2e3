"""Continuous-time models: leaky units and the SOEN dendrite, as vector fields.

One place to import them from; each idea lives in its own module:

* :mod:`soensim.driven` — :class:`DrivenSystem`, the interface (vector field under a held
  drive, discrete update) every model implements, and :class:`Discretization`;
* :mod:`soensim.leaky` — ``dh/dt = (n - h)/τ``: :class:`LeakyIntegrator` and the GRU-style
  :class:`LeakyGatedUnit`;
* :mod:`soensim.source` — the SQUID rate ``g(φ, i)`` (:func:`source_function`);
* :mod:`soensim.dendrite` — the SOEN dendrite ``ds/dt = γ₊·g(φ, i_b - s) - γ₋·s``
  (:class:`SOENDendrite`).

Functional core first: every model is a set of pure functions on tensors
(``*_vector_field(y, drive, params)`` and ``*_step(y, drive, params, dt)``) plus a thin
:class:`torch.nn.Module` that holds the parameters and calls them.

**Units.** Times (``tau``, ``dt``, ``tau0``) are in **seconds** and the models integrate in
seconds. Nothing depends on that choice except that all times given to one model share a
unit: pass ``tau0=1.0`` and times in τ₀ units to work in the SOEN's dimensionless time. The
flux φ is in units of Φ0 and currents (``i_b``, the state ``s``) in units of the junction
critical current I_c.

**Shapes.** States are ``(B, N)`` (batch, units). A *drive* is what a model holds constant
over one step of width ``dt`` (zero-order hold): the target ``n`` of a
:class:`LeakyIntegrator`, the input projections of a :class:`LeakyGatedUnit`, the external
flux of a :class:`SOENDendrite`. ``model.drive(inputs)`` maps a raw input sequence
``(T, B, D)`` to drives ``(T, B, K)``; :func:`soensim.simulate` runs a model over it with any
solver of :data:`soensim.SOLVERS`.
"""
from .dendrite import SOENDendrite, SOENParams, dendrite_constants, soen_flux, soen_step, soen_vector_field
from .driven import Discretization, DrivenSystem
from .leaky import (
    CandidateParams,
    LeakyGatedUnit,
    LeakyIntegrator,
    candidate,
    candidate_drive,
    gated_step,
    gated_vector_field,
    gru_update,
    leaky_step,
    leaky_vector_field,
)
from .source import SOURCE_FIT, SourceFit, source_function, source_threshold

__all__ = [
    "CandidateParams",
    "Discretization",
    "DrivenSystem",
    "LeakyGatedUnit",
    "LeakyIntegrator",
    "SOENDendrite",
    "SOENParams",
    "SOURCE_FIT",
    "SourceFit",
    "candidate",
    "candidate_drive",
    "dendrite_constants",
    "gated_step",
    "gated_vector_field",
    "gru_update",
    "leaky_step",
    "leaky_vector_field",
    "soen_flux",
    "soen_step",
    "soen_vector_field",
    "source_function",
    "source_threshold",
]
