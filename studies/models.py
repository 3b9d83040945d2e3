"""Sequence models of the studies: one recurrent layer and a head.

- papers/001: GRU → linear head on the last hidden state. With one input,
  H = 181 and 10 classes this is 101,732 parameters (both PyTorch bias vectors kept).
- papers/002: GRU/LSTM → per-step ReLU layer of ``head_hidden`` (256) → linear;
  classification reads the last step, the copy task the last ``readout`` steps.
  (The head is applied only where its output is used: the result is the same.)

The recurrent layer comes from :mod:`gates` (``GatedGRU``/``GatedLSTM``, any gate
mechanism). Hardware constraints come from :mod:`soensim.constraints`. Both
dependencies are reached only through the functions in the "wiring" section
below; without :mod:`gates`, the standard ``-`` GRU falls back to ``torch.nn.GRU``
with the same initialization.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor, nn

from .train import RunConfig


class MissingPiece(RuntimeError):
    """A study needs a part of the project that is not available in this install."""


# --------------------------------------------------------------------------- model
class SequenceModel(nn.Module):
    """``rnn`` (batch_first, nn.GRU-like call ``rnn(x) -> (y, h)``) followed by a head.

    ``readout``: number of final steps the head is applied to. 1 → output (B, O);
    k > 1 → (B, k, O) (copy task).
    """

    def __init__(self, rnn: nn.Module, hidden: int, num_outputs: int, head: str = "linear",
                 head_hidden: int = 256, readout: int = 1, cell: str = "gru"):
        super().__init__()
        self.rnn = rnn
        self.readout = readout
        self.cell = cell
        if head == "linear":
            self.head = nn.Linear(hidden, num_outputs)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(hidden, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_outputs))
        else:
            raise ValueError(f"head must be 'linear' or 'mlp'; got {head!r}")

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.rnn(x)
        if self.readout == 1:
            return self.head(y[:, -1])
        return self.head(y[:, -self.readout:])

    # ---------------------------------------------------------------- diagnostics
    def diagnostics(self) -> dict[str, float]:
        """Norms the studies track per epoch (papers/001: W_hz growth)."""
        return recurrent_diagnostics(self.rnn, self.cell)

    def gate_statistics(self, x: Tensor) -> dict[str, list[float]]:
        """Per-unit gate activations averaged over batch and time (papers/002 Fig. 4)."""
        return gate_statistics(self.rnn, x, self.cell)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _weight(rnn: nn.Module, name: str) -> Tensor | None:
    w = getattr(rnn, f"{name}_l0", None)
    if w is None:
        w = getattr(rnn, name, None)
    return w if isinstance(w, Tensor) else None


def decay_rows(rnn: nn.Module, cell: str = "gru") -> tuple[Tensor | slice, str]:
    """Rows of the stacked gate dimension that hold the decay gate (GRU ``z``, LSTM ``f``)
    and its tag. Layers following the gates contract say so through ``gate_blocks()`` and
    ``decay_gate``; torch.nn.GRU (r, z, n) and torch.nn.LSTM (i, f, g, o) put it second."""
    w_hh = _weight(rnn, "weight_hh")
    H = w_hh.shape[1]
    blocks_fn, decay = getattr(rnn, "gate_blocks", None), getattr(rnn, "decay_gate", None)
    if callable(blocks_fn) and decay is not None:
        blocks = blocks_fn()
        if isinstance(blocks, dict):
            idx = blocks[decay]
            rows = idx if isinstance(idx, slice) else torch.as_tensor(list(idx), dtype=torch.long)
        else:
            k = list(blocks).index(decay)
            rows = slice(k * H, (k + 1) * H)
        return rows, str(decay)
    return slice(H, 2 * H), ("z" if cell == "gru" else "f")


def recurrent_diagnostics(rnn: nn.Module, cell: str = "gru") -> dict[str, float]:
    """Per-epoch diagnostics of the recurrent layer (effective values, after any constraint):

    ``w_hz_norm`` — Frobenius norm of the decay-gate rows of W_hh (GRU update gate ``z``;
    ``w_hf_norm`` for an LSTM's forget gate), the quantity papers/001 sees grow in the
    ablated model; ``w_iz_norm`` the same rows of W_ih; ``w_max_abs`` the largest |weight|;
    ``b_z_mean`` the mean effective decay-gate bias (``bias_ih + bias_hh`` rows).
    """
    w_hh, w_ih = _weight(rnn, "weight_hh"), _weight(rnn, "weight_ih")
    if w_hh is None:
        return {}
    with torch.no_grad():
        rows, tag = decay_rows(rnn, cell)
        out = {f"w_h{tag}_norm": float(w_hh[rows].norm())}
        if w_ih is not None:
            out[f"w_i{tag}_norm"] = float(w_ih[rows].norm())
            out["w_max_abs"] = float(torch.maximum(w_hh.abs().max(), w_ih.abs().max()))
        b = None
        for name in ("bias_ih", "bias_hh"):
            v = _weight(rnn, name)
            if v is not None:
                b = v[rows] if b is None else b + v[rows]
        if b is not None:
            out[f"b_{tag}_mean"] = float(b.mean())
    return out


# --------------------------------------------------------------------------- builders
def build_model(cfg: RunConfig, input_size: int, num_outputs: int, seq_len: int, readout: int = 1) -> SequenceModel:
    """The recurrent layer (+ hardware constraints when ``cfg.profile`` is set) and the head."""
    rnn = make_recurrent(cfg, input_size, seq_len)
    if cfg.profile is not None:
        rnn = apply_hardware(rnn, cfg, seq_len)
    return SequenceModel(rnn, cfg.hidden, num_outputs, cfg.head, cfg.head_hidden, readout, cfg.cell)


def hardware_dt(cfg: RunConfig, seq_len: int) -> float:
    """Seconds of physical time per sequence step.

    ``cfg.hw_dt`` if given; otherwise one image lasts 1024 steps of the profile
    (the full s-CIFAR sequence), so a 1024-step sequence uses ``profile.dt`` and a
    downsampled 64-step one uses ``16·profile.dt``: the ratio of the profile's time
    constants to the duration of one example is the same at every resolution.
    """
    if cfg.hw_dt is not None:
        return cfg.hw_dt
    from soensim import HardwareProfile

    profile = HardwareProfile.preset(cfg.profile)
    return profile.dt * 1024 / seq_len


def orthogonal_blocks_(w_hh: Tensor, hidden: int) -> None:
    """Orthogonal init of each H×H gate block of ``w_hh`` (papers/001)."""
    with torch.no_grad():
        for k in range(w_hh.shape[0] // hidden):
            nn.init.orthogonal_(w_hh[k * hidden:(k + 1) * hidden])


# =========================================================================== wiring
# Everything below reaches into packages written alongside this one. Each function
# is the single place a study touches that package; when an API changes, change it here.

def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def make_recurrent(cfg: RunConfig, input_size: int, seq_len: int) -> nn.Module:
    """One recurrent layer for ``cfg`` (cell, gate, hidden, bias_mode, init), batch_first.

    Uses ``gates.layers.GatedGRU``/``GatedLSTM`` when the gates package provides them;
    otherwise only the standard GRU (``gate='-'``) is available, as ``torch.nn.GRU``.
    """
    layers = _optional("gates.layers")
    if layers is not None and hasattr(layers, "GatedGRU"):
        return _gated_layer(layers, cfg, input_size, seq_len)
    if cfg.cell == "gru" and cfg.gate == "-":
        return _torch_gru(cfg, input_size)
    raise MissingPiece(f"cell={cfg.cell!r} gate={cfg.gate!r} needs gates.layers.GatedGRU/GatedLSTM, "
                       "which this install does not provide; only the standard GRU ('-') falls back to torch.nn.GRU")


def _gated_layer(layers: Any, cfg: RunConfig, input_size: int, seq_len: int) -> nn.Module:
    cls = layers.GatedGRU if cfg.cell == "gru" else layers.GatedLSTM
    kwargs: dict[str, Any] = {"batch_first": True}
    if cfg.gate == "C":
        kwargs["t_max"] = cfg.chrono_tmax if cfg.chrono_tmax is not None else seq_len
    rnn = cls(input_size, cfg.hidden, gate=cfg.gate, **kwargs)
    if cfg.gate == "-" and cfg.cell == "gru":
        _set_update_reset_bias(rnn, cfg.update_bias_init)
    if cfg.orthogonal_hh:
        orthogonal_blocks_(_weight(rnn, "weight_hh"), cfg.hidden)
    if cfg.bias_mode == "frozen-zero":
        _freeze_zero(rnn)
    return rnn


def _torch_gru(cfg: RunConfig, input_size: int) -> nn.GRU:
    rnn = nn.GRU(input_size, cfg.hidden, batch_first=True)
    if cfg.orthogonal_hh:
        orthogonal_blocks_(rnn.weight_hh_l0, cfg.hidden)
    _set_update_reset_bias(rnn, cfg.update_bias_init)
    if cfg.bias_mode == "frozen-zero":
        _freeze_zero(rnn)
    return rnn


def _set_update_reset_bias(rnn: nn.Module, value: float) -> None:
    """b_r = b_z = ``value`` put in ``bias_ih`` only; the matching ``bias_hh`` rows are 0."""
    b_ih, b_hh = _weight(rnn, "bias_ih"), _weight(rnn, "bias_hh")
    H = _weight(rnn, "weight_hh").shape[1]
    with torch.no_grad():
        b_ih[: 2 * H] = value
        if b_hh is not None:
            b_hh[: 2 * H] = 0.0


def _freeze_zero(rnn: nn.Module) -> None:
    """Update and reset biases fixed at 0, candidate bias trainable (papers/001 ablation)."""
    init = _optional("gates.init")
    if init is not None and hasattr(init, "freeze_biases"):
        init.freeze_biases(rnn, gates=("r", "z"), value=0.0)
        return
    # Fallback for torch.nn.GRU: zero the rows and their gradients. AdamW's decoupled
    # decay keeps a zero at zero, so the value cannot drift.
    H = rnn.weight_hh_l0.shape[1]
    mask = torch.ones(3 * H)
    mask[: 2 * H] = 0.0
    for name in ("bias_ih_l0", "bias_hh_l0"):
        p = getattr(rnn, name)
        with torch.no_grad():
            p[: 2 * H] = 0.0
        p.register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype))


def gate_statistics(rnn: nn.Module, x: Tensor, cell: str = "gru") -> dict[str, list[float]]:
    """Per-unit update (GRU) / forget (LSTM) gate activation averaged over batch and time.

    Uses ``gates.stats`` when present; otherwise recomputes the gates of a
    ``torch.nn.GRU`` step by step.
    """
    stats = _optional("gates.stats")
    if stats is not None and hasattr(stats, "gate_means"):
        return {k: (v.tolist() if isinstance(v, Tensor) else list(v)) for k, v in stats.gate_means(rnn, x).items()}
    if isinstance(rnn, nn.GRU):
        return _torch_gru_gate_means(rnn, x)
    return {}


def _torch_gru_gate_means(rnn: nn.GRU, x: Tensor) -> dict[str, list[float]]:
    H = rnn.hidden_size
    gi = x @ rnn.weight_ih_l0.T + rnn.bias_ih_l0  # (B, T, 3H)
    h = x.new_zeros(x.shape[0], H)
    z_sum = torch.zeros(H, dtype=x.dtype, device=x.device)
    r_sum = torch.zeros_like(z_sum)
    for t in range(x.shape[1]):
        gh = h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
        r = torch.sigmoid(gi[:, t, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, t, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[:, t, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        z_sum += z.mean(0)
        r_sum += r.mean(0)
    T = max(1, x.shape[1])
    return {"update_gate": (z_sum / T).tolist(), "reset_gate": (r_sum / T).tolist()}


def apply_hardware(rnn: nn.Module, cfg: RunConfig, seq_len: int) -> nn.Module:
    """Constrain the recurrent layer to ``cfg.profile`` via ``soensim.constraints.constrain``.

    Biases: the update-gate bias is frozen (``hw_bias``: ``profile`` → the profile's τ values
    at :func:`hardware_dt`; ``zero`` → 0; ``init`` → the mechanism's initial draw); the
    reset bias follows the profile (frozen at ``profile.reset_bias`` unless trainable).
    Weights: |W| ≤ ``cfg.coupling_max`` (default: the profile's ``coupling_max``). The head
    is a software readout and stays unconstrained.
    """
    constraints = _optional("soensim.constraints")
    if constraints is None or not hasattr(constraints, "constrain"):
        raise MissingPiece(f"profile={cfg.profile!r} needs soensim.constraints.constrain, "
                           "which this install does not provide")
    from soensim import HardwareProfile

    profile = HardwareProfile.preset(cfg.profile)
    if cfg.coupling_max is not None:
        profile = profile.replace(coupling_max=cfg.coupling_max)
    dt = hardware_dt(cfg, seq_len)
    H = cfg.hidden
    if cfg.hw_bias == "zero":
        bias = torch.zeros(H)
    elif cfg.hw_bias == "init":
        rows, _ = decay_rows(rnn, cfg.cell)
        b_ih, b_hh = _weight(rnn, "bias_ih"), _weight(rnn, "bias_hh")
        bias = (b_ih[rows] + (b_hh[rows] if b_hh is not None else 0)).detach().clone()
    else:
        bias = None  # the profile's own τ values
    constraints.constrain(rnn, profile, dt=dt, seed=cfg.seed, update_bias=bias)
    return rnn


__all__ = ["MissingPiece", "SequenceModel", "apply_hardware", "build_model", "count_parameters", "decay_rows",
           "gate_statistics",
           "hardware_dt", "make_recurrent", "orthogonal_blocks_", "recurrent_diagnostics"]
