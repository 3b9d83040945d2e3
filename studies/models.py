"""Sequence models of the studies: one recurrent layer and a head.

- Malandain 2026, "Ablation of Gate Biases in GRUs for s-CIFAR-10": GRU → linear head on the
  last hidden state. With one input, H = 181 and 10 classes this is 101,732 parameters
  (both PyTorch bias vectors kept).
- Gu et al. 2020, "Improving the Gating Mechanism of Recurrent Neural Networks"
  (arXiv:1910.09890): GRU/LSTM → per-step ReLU layer of ``head_hidden`` (256) → linear;
  classification reads the last step, the copy task the last ``readout`` steps.
  (The head is applied only where its output is used: the result is the same.)

The recurrent layer is a :class:`gates.GatedGRU`/:class:`gates.GatedLSTM` (any gate
mechanism), read through its :func:`soensim.layout`; frozen biases come from
:func:`soensim.constraints.freeze_biases`, hardware constraints from
:func:`soensim.constraints.constrain`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gates import GatedGRU, GatedLSTM, build_layer
from gates import init as gate_init
from gates import stats as gate_stats
from soensim import HardwareProfile
from soensim.constraints import ConstraintReport, constrain, freeze_biases
from soensim.layouts import layout, tensor

from .config import RunConfig
from .errors import ConfigError


# --------------------------------------------------------------------------- model
class SequenceModel(nn.Module):
    """``rnn`` (batch_first, nn.GRU-like call ``rnn(x) -> (y, h)``) followed by a head.

    ``readout``: number of final steps the head is applied to. 1 → output (B, O);
    k > 1 → (B, k, O) (copy task).
    """

    def __init__(self, rnn: nn.Module, hidden: int, num_outputs: int, head: str = "linear",
                 head_hidden: int = 256, readout: int = 1):
        super().__init__()
        self.rnn = rnn
        self.readout = readout
        if head == "linear":
            self.head = nn.Linear(hidden, num_outputs)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(hidden, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_outputs))
        else:
            raise ValueError(f"head must be 'linear' or 'mlp'; got {head!r}")

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.rnn(x)
        return self.read(y)

    def read(self, y: Tensor) -> Tensor:
        """The head on the recurrent layer's output ``y`` (B, T, H): (B, O), or (B, k, O) for ``readout`` k > 1."""
        if self.readout == 1:
            return self.head(y[:, -1])
        return self.head(y[:, -self.readout:])

    # ---------------------------------------------------------------- diagnostics
    def diagnostics(self) -> dict[str, float]:
        """Norms the studies track per epoch (the W_hz growth of the bias ablation)."""
        return recurrent_diagnostics(self.rnn)

    def gate_statistics(self, x: Tensor) -> dict[str, list[float]]:
        """Per-unit gate activations averaged over batch and time (Gu et al. Fig. 4)."""
        return gate_statistics(self.rnn, x)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def decay_rows(rnn: nn.Module) -> slice:
    """Rows of the stacked gate dimension holding the decay gate (GRU update ``z``, LSTM
    forget ``f``) of any GRU/LSTM layer, from its layout."""
    lay = layout(rnn)
    return lay.block(lay.decay_block)


def _first_decay_bias(rnn: nn.Module) -> Tensor | None:
    """Effective decay-gate bias ``bias_ih + bias_hh`` of the first cell (None without biases)."""
    cell = layout(rnn).cells[0]
    if not cell.biases:
        return None
    rows = decay_rows(rnn)
    return sum(tensor(rnn, b)[rows] for b in cell.biases)  # type: ignore[return-value]


def recurrent_diagnostics(rnn: nn.Module) -> dict[str, float]:
    """Per-epoch diagnostics of the first cell of a GRU/LSTM layer, effective values after any constraint:

    ``w_hz_norm`` — Frobenius norm of the decay-gate rows of W_hh (GRU update gate; named
    ``w_hf_norm`` for an LSTM's forget gate), the quantity the bias ablation sees grow in the
    ablated model; ``w_iz_norm`` the same rows of W_ih; ``w_max_abs`` the largest |weight|
    of W_hh and W_ih; ``b_z_mean`` the mean effective decay-gate bias (``bias_ih + bias_hh`` rows).
    """
    lay = layout(rnn)
    cell = lay.cells[0]
    tag = "z" if lay.core == "gru" else "f"
    norms = gate_stats.decay_weight_norms(rnn)
    out = {f"w_h{tag}_norm": norms[f"W_h_decay_{cell.tag}"], f"w_i{tag}_norm": norms[f"W_x_decay_{cell.tag}"]}
    with torch.no_grad():
        w_hh, w_ih = tensor(rnn, cell.weight_hh), tensor(rnn, cell.weight_ih)
        out["w_max_abs"] = float(torch.maximum(w_hh.abs().max(), w_ih.abs().max()))
        bias = _first_decay_bias(rnn)
        if bias is not None:
            out[f"b_{tag}_mean"] = float(bias.mean())
    return out


# --------------------------------------------------------------------------- builders
def build_model(cfg: RunConfig, input_size: int, num_outputs: int, seq_len: int, readout: int = 1) -> SequenceModel:
    """The recurrent layer (+ hardware constraints when ``cfg.profile`` is set) and the head.

    Under a profile the constrained layer is checked at once (:func:`profile_violations`): a
    row whose configuration breaks its profile raises :class:`~studies.errors.ConfigError`
    naming the rule, before any training."""
    rnn = make_recurrent(cfg, input_size, seq_len)
    try:
        report = apply_hardware(rnn, cfg, seq_len) if cfg.profile is not None else None
    except ValueError as exc:  # a layer the profile cannot realise (e.g. a gate without a leaky decay)
        raise ConfigError(f"row {cfg.row!r} cannot run under profile {run_profile(cfg).name!r}: {exc}") from None
    model = SequenceModel(rnn, cfg.hidden, num_outputs, cfg.head, cfg.head_hidden, readout)
    model.constraint_report = report  # what constrain() did (None in software), for inspection
    broken = profile_violations(model)
    if broken:
        first = broken[0]
        raise ConfigError(f"row {cfg.row!r} breaks profile {run_profile(cfg).name!r} at initialisation: rule "
                          f"{first['rule']} on {first['parameter']} (worst {first['value']:.4g}, limit "
                          f"{first['limit']}){f' and {len(broken) - 1} more' if len(broken) > 1 else ''}")
    return model


def profile_violations(model: nn.Module) -> list[dict[str, Any]]:
    """The broken rules of ``model`` against the profile it was built under
    (:meth:`~soensim.constraints.ConstraintReport.check` of ``model.constraint_report``) as
    JSON-ready records ``{rule, parameter, value, limit, message}``; empty when every rule
    holds or the model is software."""
    report = getattr(model, "constraint_report", None)
    if report is None:
        return []
    return [{"rule": v.rule, "parameter": v.parameter, "value": v.value, "limit": v.limit, "message": v.message}
            for v in report.check()]


def hardware_dt(cfg: RunConfig, seq_len: int) -> float:
    """Seconds of physical time per sequence step.

    ``cfg.hw_dt`` if given; otherwise one image lasts 1024 steps of the profile
    (the full s-CIFAR sequence), so a 1024-step sequence uses ``profile.dt`` and a
    downsampled 64-step one uses ``16·profile.dt``: the ratio of the profile's time
    constants to the duration of one example is the same at every resolution.
    """
    if cfg.hw_dt is not None:
        return cfg.hw_dt
    return run_profile(cfg).dt * 1024 / seq_len


def run_profile(cfg: RunConfig) -> HardwareProfile:
    """The hardware profile a run trains under: ``cfg.profile`` with the run's overrides
    (``coupling_max``; ``bias_mode="frozen-zero"`` freezes the reset bias at 0)."""
    profile = HardwareProfile.resolve(cfg.profile)
    if cfg.coupling_max is not None:
        profile = profile.replace(coupling_max=cfg.coupling_max)
    if cfg.bias_mode == "frozen-zero":
        profile = profile.replace(reset_bias=0.0, trainable=profile.trainable - {"reset_bias"})
    return profile


def make_recurrent(cfg: RunConfig, input_size: int, seq_len: int) -> nn.Module:
    """One batch_first recurrent layer for ``cfg``: ``cell``, ``gate``, ``hidden``, orthogonal
    W_hh blocks (``orthogonal_hh``), chrono T_max (``chrono_tmax``, default the sequence
    length), and for the standard gate ``-`` of a GRU b_z = b_r = ``update_bias_init`` (the bias
    ablation's init); ``reset_bias_init`` (when set) then gives every GRU mechanism the same b_r,
    so that rows differ only in the mechanism under test; ``bias_mode="frozen-zero"`` then sets b_z = b_r = 0 with b_n trainable. In
    software they are frozen here (:func:`soensim.constraints.freeze_biases`: neither the gradient
    nor AdamW's weight decay moves them); under a profile :func:`apply_hardware` freezes them.
    """
    tmax = cfg.chrono_tmax if cfg.chrono_tmax is not None else float(seq_len)
    rnn = build_layer(cfg.cell, input_size, cfg.hidden, batch_first=True, gate=cfg.gate, chrono_tmax=tmax,
                      orthogonal_hh=cfg.orthogonal_hh)
    lay = layout(rnn)
    gated = (lay.reset_block, lay.decay_block)  # GRU r, z
    if lay.core == "gru" and cfg.gate == "-":
        for block in gated:
            gate_init.set_bias(rnn, block, cfg.update_bias_init)
    if lay.core == "gru" and cfg.reset_bias_init is not None:
        gate_init.set_bias(rnn, lay.reset_block, cfg.reset_bias_init)
    if cfg.bias_mode == "frozen-zero":
        if lay.core != "gru":
            raise ValueError("bias_mode='frozen-zero' (b_z = b_r = 0) is defined for GRU cells")
        if cfg.profile is None:
            freeze_biases(rnn, {block: 0.0 for block in gated})
        else:
            for block in gated:
                gate_init.set_bias(rnn, block, 0.0)
    return rnn


def gate_statistics(rnn: nn.Module, x: Tensor, cell: str = "gru") -> dict[str, list[float]]:
    """Per-unit effective decay gate averaged over batch and time (``decay_gate``) and its
    time scale in steps, via :func:`gates.stats.gate_means`; empty for other layers."""
    if not isinstance(rnn, (GatedGRU, GatedLSTM)):
        return {}
    return {k: v.tolist() for k, v in gate_stats.gate_means(rnn, x).items()}


def hardware_update_bias(rnn: nn.Module, cfg: RunConfig, seq_len: int) -> Tensor | None:
    """Decay-gate biases a hardware row freezes instead of the profile's design values
    (float64, one per unit, at the step :func:`hardware_dt`), by ``cfg.hw_bias``:

    - ``"profile"`` → None: ``constrain`` maps the profile's τ values (log-uniform over its
      range, or its fabricated set) through the layout's ``decay``;
    - ``"tau-min"`` → every unit at the profile's shortest τ (the least memory the hardware
      offers: the hardware form of the b_z = 0 ablation);
    - ``"chrono"`` → chrono's distribution of time scales (Tallec & Ollivier 2018: uniform
      over [1, T_max] steps) restricted to the fabricable range: τ ~ U[τ_min, min(τ_max,
      T_max·Δt)], seeded by ``cfg.seed``;
    - ``"zero"`` → zeros (τ = Δt / ln 2 for a sigmoid gate), ``"init"`` → the layer's own
      initial draw: both usually outside a profile's range, so the row fails at start.
    """
    if cfg.hw_bias == "profile":
        return None
    rows = decay_rows(rnn)
    n = rows.stop - rows.start
    if cfg.hw_bias == "zero":
        return torch.zeros(n, dtype=torch.float64)
    if cfg.hw_bias == "init":
        return _first_decay_bias(rnn).detach().double().clone()  # type: ignore[union-attr]
    profile, dt = run_profile(cfg), hardware_dt(cfg, seq_len)
    lo, hi = _fabricable_taus(profile)
    if cfg.hw_bias == "tau-min":
        tau = torch.full((n,), lo, dtype=torch.float64)
    else:
        tmax = cfg.chrono_tmax if cfg.chrono_tmax is not None else float(seq_len)
        top = max(lo, min(hi, tmax * dt))
        gen = torch.Generator().manual_seed(CHRONO_STREAM + cfg.seed)
        tau = lo + (top - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
    lay = layout(rnn)
    return lay.decay.bias_for_tau(tau, dt)[lay.decay_block]


#: Offset of the seed that draws ``hw_bias="chrono"`` time constants (apart from the weights' stream).
CHRONO_STREAM = 7_000


def _fabricable_taus(profile: HardwareProfile) -> tuple[float, float]:
    """(τ_min, τ_max) in seconds that ``profile`` can fabricate."""
    if profile.tau_range is not None:
        return float(profile.tau_range[0]), float(profile.tau_range[1])
    if profile.tau_values:
        return float(min(profile.tau_values)), float(max(profile.tau_values))
    raise ConfigError(f"hw_bias needs a profile with fabricated time constants; {profile.name!r} has none")


def apply_hardware(rnn: nn.Module, cfg: RunConfig, seq_len: int) -> ConstraintReport:
    """Constrain the recurrent layer to ``cfg.profile`` with :func:`soensim.constraints.constrain`.

    The update-gate bias is frozen at the profile's τ values (for the cell at
    :func:`hardware_dt`, seeded by ``cfg.seed``) or at :func:`hardware_update_bias`; the
    reset bias follows the profile (frozen at ``profile.reset_bias`` unless trainable; with
    ``bias_mode="frozen-zero"`` frozen at 0); weights |W| ≤ ``cfg.coupling_max`` (default: the
    profile's ``coupling_max``). The head is a software read-out and stays unconstrained.
    """
    return constrain(rnn, run_profile(cfg), dt=hardware_dt(cfg, seq_len), seed=cfg.seed,
                     update_bias=hardware_update_bias(rnn, cfg, seq_len))


__all__ = ["SequenceModel", "apply_hardware", "build_model", "count_parameters", "decay_rows", "gate_statistics",
           "hardware_dt", "hardware_update_bias", "make_recurrent", "profile_violations", "recurrent_diagnostics", "run_profile"]
