"""SOENLayer: a recurrent layer of SOEN dendrites under a hardware profile."""
import math

import pytest
import torch
from torch import nn

from soensim import HardwareProfile
from soensim.constraints import check
from soensim.dynamics import soen_step
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
    y2, h2 = bf(x.transpose(0, 1), h0=torch.zeros(1, 3, 12, dtype=torch.float64))
    assert y2.shape == (3, 10, 12) and torch.allclose(y2.transpose(0, 1), y)
    y3, _ = layer(x[5:], h0=h[0] * 0 + y[4])  # continuing from a state is the same recurrence
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
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(0.8 < o < 1.2 for o in orders), (errs, orders)
    lx, ly = [math.log(k) for k in ks], [math.log(e) for e in errs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    slope = -sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
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


def test_trains_on_the_adding_task():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    T, B = 30, 64
    layer = SOENLayer(2, 24, "soen-dendrite", dt=DT, seed=0, batch_first=True)
    head = nn.Linear(24, 1)
    params = [p for p in list(layer.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(60):
            v = torch.rand(B, T, generator=gen)
            m = torch.zeros(B, T)
            m[torch.arange(B), torch.randint(0, T // 2, (B,), generator=gen)] = 1
            m[torch.arange(B), torch.randint(T // 2, T, (B,), generator=gen)] = 1
            y = (v * m).sum(1, keepdim=True)
            out, _ = layer(torch.stack([v, m], -1))
            loss = ((head(out[:, -1]) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert last < 0.25


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
