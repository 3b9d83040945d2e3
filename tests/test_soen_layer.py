"""SOENLayer: a recurrent layer of SOEN dendrites under a hardware profile."""
import math

import pytest
import torch
from torch import nn

from soensim import HardwareProfile
from soensim.constraints import check
from soensim.dynamics import soen_step
from soensim.layouts import layout
from soensim.soen_layer import SOENLayer

DT = 2e-9  # τ/dt from 5 to 500 steps under soen-dendrite (τ ∈ [10 ns, 1 µs])


def layer64(**kw):
    kw.setdefault("dt", DT)
    return SOENLayer(2, 12, kw.pop("profile", "soen-dendrite"), seed=kw.pop("seed", 0), dtype=torch.float64, **kw)


def inputs(t=10, b=3, seed=0):
    return torch.rand(t, b, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_gru_like_signature_and_shapes():
    layer = layer64()
    x = inputs()
    y, h = layer(x)
    assert y.shape == (10, 3, 12) and h.shape == (1, 3, 12)
    assert torch.equal(y[-1], h[0])
    bf = layer64(batch_first=True)
    y2, h2 = bf(x.transpose(0, 1), hx=torch.zeros(1, 3, 12, dtype=torch.float64))
    assert y2.shape == (3, 10, 12) and torch.allclose(y2.transpose(0, 1), y)
    y3, _ = layer(x[5:], hx=h[0] * 0 + y[4])  # continuing from a state is the same recurrence
    assert torch.allclose(y3, y[5:])
    with pytest.raises(ValueError, match="I=2"):
        layer(torch.zeros(4, 1, 3, dtype=torch.float64))


def test_step_is_the_dynamics_exponential_euler_step():
    layer = layer64()
    x = inputs(t=4)
    y, _ = layer(x)
    p = layer.cell.params()
    s = torch.zeros(3, 12, dtype=torch.float64)
    for k in range(4):
        s = soen_step(s, x[k] @ layer.W_in.T, p, DT)
        assert torch.allclose(y[k], s, atol=1e-14)


def test_time_constants_are_the_profiles_and_frozen():
    profile = HardwareProfile.preset("soen-dendrite")
    layer = layer64(seed=3)
    assert torch.allclose(layer.tau, profile.unit_taus(12, 3), rtol=1e-12)
    assert "log_tau" not in dict(layer.named_parameters(recurse=True)) and not any(
        "tau" in n for n, p in layer.named_parameters())
    # the gain γ₊/γ₋ is the same for every unit
    assert torch.allclose(layer.cell.params().gain, torch.ones(12, dtype=torch.float64))


def test_couplings_bounded_and_roles_follow_the_profile():
    layer = layer64(input_scale=5.0, recurrent_scale=5.0)  # asks for |w| > J_max
    assert layer.J.abs().max() <= 0.5 and layer.W_in.abs().max() <= 0.5
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=10.0)
    for _ in range(3):
        opt.zero_grad()
        layer(inputs())[0].sum().backward()
        opt.step()
    assert layer.J.abs().max() <= 0.5 and layer.W_in.abs().max() <= 0.5
    assert not [v for v in check(layer, layer.profile, rules=["coupling_bound"])]
    trainable = {n.split(".")[-1] if "original" not in n else n.split(".")[-2] for n, p in layer.named_parameters()
                 if p.requires_grad}
    assert trainable == {"i_b", "phi_offset", "J", "J_in"}  # soen-dendrite: weights, flux offsets, bias currents
    fixed = layer64(profile=HardwareProfile.preset("soen-dendrite").replace(trainable=frozenset({"flux_offset"})))
    assert {n for n, p in fixed.named_parameters() if p.requires_grad} == {"cell.phi_offset"}
    fresh = layer64()
    assert not check(fresh, fresh.profile)  # starts inside every rule, the excitatory flux window included
    assert fresh.s_max.shape == (12,) and float(fresh.s_max[0]) == pytest.approx(1.8 - 1.06435066)
    assert 0.1 < float(fresh.phi_th[0]) < 0.25


def test_layout_names_the_tensors_and_the_flux_budget_holds_in_training():
    layer = layer64()
    lay = layout(layer)
    assert (lay.core, lay.hidden, dict(lay.blocks), lay.mechanism, lay.mode) == ("soen", 12, {"unit": slice(0, 12)},
                                                                               "soen", None)
    assert {p.name: p.role for p in lay.params} == {"cell.J_in": "weights", "cell.J": "weights",
                                                    "cell.phi_offset": "flux_offset", "cell.i_b": "bias_current"}
    assert layer.weight_names() == ("cell.J_in", "cell.J")
    budget = layer.profile.flux_budget
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=10.0)
    for _ in range(3):
        opt.zero_grad()
        (-layer(inputs())[0].sum()).backward()  # push every coupling up
        opt.step()
    rows = (layer.W_in.abs().sum(1) + layer.J.abs().sum(1)).detach()
    assert float(rows.max()) <= budget * (1 + 1e-9)
    assert check(layer, layer.profile, rules=["flux_budget", "coupling_bound"]) == []


def test_quantized_profile_puts_couplings_on_the_grid():
    layer = layer64(profile="soen-fabricated")
    grid = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64)
    for w in (layer.J, layer.W_in):
        assert ((w.detach().reshape(-1, 1) - grid).abs().min(1).values < 1e-12).all()
    assert not check(layer, layer.profile, rules=["quantization_levels", "coupling_bound"])


def test_profile_errors():
    with pytest.raises(ValueError, match="fabricated"):
        SOENLayer(2, 4, "software")
    with pytest.raises(ValueError, match="dt"):
        SOENLayer(2, 4, dt=-1.0)
    with pytest.raises(ValueError, match="substeps"):
        layer64()(inputs(), substeps=0)


def test_exponential_euler_converges_to_dopri5_at_first_order():
    layer = layer64()
    x = inputs(t=6, b=2, seed=1)
    with torch.no_grad():
        ref, _ = layer.simulate(x, method="dopri5", rtol=1e-9, atol=1e-11)
        ks = [1, 2, 4, 8, 16]
        errs = [float((layer(x, substeps=k)[0] - ref).abs().max()) for k in ks]
    assert errs[0] > 1e-4  # the step error is visible at dt = 2 ns
    orders = [math.log2(a / b) for a, b in zip(errs[:-1], errs[1:], strict=True)]
    assert all(0.8 < o < 1.2 for o in orders), (errs, orders)
    lx, ly = [math.log(k) for k in ks], [math.log(e) for e in errs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    slope = -sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
    assert 0.8 < slope < 1.2


def test_gradients_finite():
    layer = layer64()
    x = inputs(t=20, b=4)
    y, _ = layer(x)
    (y ** 2).sum().backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(float(g.abs().max()) > 0 for g in grads.values())


def test_noise_is_seeded():
    layer = layer64()
    layer.flux_noise, layer.state_noise = 0.05, 0.01
    x = inputs()
    a, b = layer(x)[0], layer(x)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, layer(x, noise=False)[0])
    layer.noise_seed = 1
    assert not torch.allclose(a, layer(x)[0])


def adding_batch(n: int, T: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Adding task: (value, marker) pairs, one marker in each half; the target is the sum of the marked values."""
    v = torch.rand(n, T, generator=gen)
    m = torch.zeros(n, T)
    m[torch.arange(n), torch.randint(0, T // 2, (n,), generator=gen)] = 1
    m[torch.arange(n), torch.randint(T // 2, T, (n,), generator=gen)] = 1
    return torch.stack([v, m], -1), (v * m).sum(1, keepdim=True)


def test_trains_on_the_adding_task():
    """Well below the best constant predictor (the mean, MSE ≈ 1/6) on held-out sequences.

    The soen-dendrite flux budget (Σ_j |W_ij| ≤ 0.43 per unit) is lifted here: under it the layer
    stays at the constant predictor's error in this training budget (the solution found without it
    has row sums near 5), so the test measures the layer's dynamics and gradients, not the budget."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    T, B = 20, 64
    profile = HardwareProfile.preset("soen-dendrite").replace(flux_budget=None)
    layer = SOENLayer(2, 24, profile, dt=DT, seed=0, batch_first=True)
    head = nn.Linear(24, 1)
    params = [p for p in list(layer.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(300):
            x, y = adding_batch(B, T, gen)
            out, _ = layer(x)
            loss = ((head(out[:, -1]) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
        x_test, y_test = adding_batch(1000, T, torch.Generator().manual_seed(1))
        with torch.no_grad():
            test_mse = float(((head(layer(x_test)[0][:, -1]) - y_test) ** 2).mean())
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert last < 0.25
    constant_mse = float(((y_test - y_test.mean()) ** 2).mean())  # the best constant prediction
    assert constant_mse == pytest.approx(1 / 6, abs=0.02)
    assert test_mse < 0.5 * constant_mse, (test_mse, constant_mse)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    from soensim.transfer import to_continuous

    layer = layer64()
    x = inputs(t=8)
    y_cpu, _ = layer(x)
    gpu = layer64().cuda()
    y_gpu, _ = gpu(x.cuda())
    assert torch.allclose(y_gpu.cpu(), y_cpu, atol=1e-10)
    gpu.flux_noise = 0.05
    y_noisy, _ = gpu(x.cuda())
    y_noisy.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.requires_grad)
    gru = nn.GRU(2, 5).double()
    cont = to_continuous(gru).cuda()
    assert torch.allclose(cont.run(x.cuda())[0].cpu(), gru(x)[0], atol=1e-10)
