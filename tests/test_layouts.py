"""The layer contract names the rows the kernels use.

With every weight zero a gate depends on its biases only, so one step is affine in the
previous state: GRU ``h1 = g·h0 + (1 - g)·n``, LSTM ``c1 = f̂·c0 + î·ĝ``. The slope is the
effective decay gate as the kernel computes it, measured without reading any row layout;
the tests perturb the rows :func:`soensim.layout` names and watch which activation moves.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import soensim
from gates import GATES, GatedGRU, GatedLSTM
from soensim.layouts import Layout, layout, tensor

F64 = torch.float64
B, I, H = 3, 2, 16


def _zero_weights(layer: nn.Module, lay: Layout) -> None:
    with torch.no_grad():
        for cell in lay.cells:
            for w in cell.weights:
                tensor(layer, w).zero_()


def _step(layer: nn.Module, lay: Layout, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(slope, intercept) of the new decaying state (GRU h, LSTM c) in the old one, per unit."""
    x = torch.randn(1, B, I, dtype=F64, generator=torch.Generator().manual_seed(0))

    def new_state(s: torch.Tensor) -> torch.Tensor:
        if lay.core == "gru":
            return layer(x, s)[1][0]
        return layer(x, (torch.zeros_like(s), s))[1][1][0]

    zero = new_state(torch.zeros_like(state))
    return (new_state(state) - zero) / state[0], zero


def _layers() -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = [("nn.GRU", nn.GRU(I, H, dtype=F64)), ("nn.LSTM", nn.LSTM(I, H, dtype=F64))]
    for g in GATES:
        out += [(f"GatedGRU[{g}]", GatedGRU(I, H, gate=g, master_chunk=4, seed=1, dtype=F64)),
                (f"GatedLSTM[{g}]", GatedLSTM(I, H, gate=g, master_chunk=4, seed=1, dtype=F64))]
    return out


LAYERS = _layers()


def _modulates_decay(lay: Layout, block: str) -> bool:
    return block in lay.blocks_of_role("update_bias") or block.startswith("master")


@pytest.mark.parametrize("name, layer", LAYERS, ids=[n for n, _ in LAYERS])
def test_named_decay_rows_move_the_decay_gate_and_nothing_else(name: str, layer: nn.Module) -> None:
    lay = layout(layer)
    _zero_weights(layer, lay)
    state = torch.full((1, B, H), 0.5, dtype=F64)
    slope0, drive0 = _step(layer, lay, state)
    (cell,) = lay.cells
    b_ih = tensor(layer, cell.bias_ih)
    for block, rows in lay.blocks.items():
        # a ramp, not a constant: cumax is invariant to a shift of all its pre-activations
        delta = torch.linspace(0.3, 1.1, rows.stop - rows.start, dtype=F64)
        with torch.no_grad():
            b_ih[rows] += delta
        slope, drive = _step(layer, lay, state)
        with torch.no_grad():
            b_ih[rows] -= delta
        if block == lay.decay_block:
            assert not torch.allclose(slope, slope0), f"{name}: the named decay rows do not move the decay gate"
            if lay.core == "gru" and not any(b.startswith("master") for b in lay.blocks):
                # input tied to 1 - g: the candidate n = intercept / (1 - g) does not depend on the decay rows
                keep = torch.minimum(1 - slope, 1 - slope0) > 1e-6  # cumax: the last unit never forgets
                torch.testing.assert_close((drive / (1 - slope))[keep], (drive0 / (1 - slope0))[keep])
        elif not _modulates_decay(lay, block):
            torch.testing.assert_close(slope, slope0, rtol=0, atol=1e-15,
                                       msg=f"{name}: block {block!r} moved the decay gate")


LEAKY = [(n, m) for n, m in LAYERS if layout(m).leaky]


@pytest.mark.parametrize("name, layer", LEAKY, ids=[n for n, _ in LEAKY])
def test_decay_biases_realise_the_time_constant(name: str, layer: nn.Module) -> None:
    """``layout.decay.bias_for_tau`` written into the named rows gives the kernel's decay exp(-dt/τ)."""
    lay = layout(layer)
    _zero_weights(layer, lay)
    tau = torch.logspace(0, 3, H, dtype=F64)
    (cell,) = lay.cells
    with torch.no_grad():
        for b in cell.biases:
            tensor(layer, b).zero_()
        for block, value in lay.decay.bias_for_tau(tau, 1.0).items():
            tensor(layer, cell.bias_ih)[lay.blocks[block]] = value
    slope, _ = _step(layer, lay, torch.full((1, B, H), 0.5, dtype=F64))
    torch.testing.assert_close(slope, torch.exp(-1.0 / tau).expand_as(slope), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lay.decay.tau_for_bias(tensor(layer, cell.bias_ih)[lay.blocks[lay.decay_block]], 1.0),
                               tau, rtol=1e-9, atol=0)


def test_soen_layer_flux_offset_rows_are_per_unit() -> None:
    layer = soensim.SOENLayer(I, H, dtype=F64)
    lay = layout(layer)
    assert lay.core == "soen"
    _zero_weights(layer, lay)
    (offset,) = lay.with_role("flux_offset")
    x = torch.randn(1, B, I, dtype=F64)
    base = layer(x)[0]
    with torch.no_grad():
        tensor(layer, offset.name)[5] += 0.05
    moved = (layer(x)[0] - base).abs().amax(dim=(0, 1))
    assert moved[5] > 0
    assert torch.count_nonzero(moved) == 1


def test_layout_is_immutable_and_names_roles() -> None:
    lay = layout(nn.GRU(I, H, num_layers=2, bidirectional=True))
    assert [c.suffix for c in lay.cells] == ["_l0", "_l0_reverse", "_l1", "_l1_reverse"]
    assert dict(lay.block_roles) == {"reset": "reset_bias", "update": "update_bias", "candidate": "candidate_bias"}
    assert lay.block("z") == slice(H, 2 * H)
    with pytest.raises(ValueError, match="block must be one of"):
        lay.block("forget")
    with pytest.raises(TypeError):
        lay.blocks["update"] = slice(0, 1)  # type: ignore[index]
    with pytest.raises(AttributeError):
        lay.hidden = 3  # type: ignore[misc]


def test_unknown_layers_are_refused_with_the_known_ones() -> None:
    with pytest.raises(TypeError, match="no gate to hold a time constant"):
        layout(nn.RNN(2, 3))
    with pytest.raises(TypeError, match="GatedGRU, GatedLSTM, SOENLayer"):
        layout(nn.Linear(2, 3))
