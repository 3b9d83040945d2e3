"""studies.data: image → sequence conversion, the one normalisation, stratified splits, digits."""
import numpy as np
import pytest
import torch

from studies import data


# --------------------------------------------------------------------------- sequences
def test_to_sequences_gray_rgb_scan_order_and_normalisation():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    g = data.to_sequences(imgs, "gray")
    assert g.shape == (3, 1024, 1) and g.dtype == np.float32
    r, c = 7, 19  # step r*32 + c is pixel (r, c)
    luma = (0.299 * imgs[1, r, c, 0] + 0.587 * imgs[1, r, c, 1] + 0.114 * imgs[1, r, c, 2]) / 255
    assert g[1, r * 32 + c, 0] == pytest.approx(luma, rel=1e-6)
    assert 0 <= g.min() and g.max() <= 1
    rgb = data.to_sequences(imgs, "rgb")
    assert rgb.shape == (3, 1024, 3)
    np.testing.assert_allclose(rgb[2, r * 32 + c], imgs[2, r, c] / 255, rtol=1e-6)
    p = data.bit_reversal_permutation(1024)
    np.testing.assert_array_equal(data.to_sequences(imgs, "rgb", permute=True), rgb[:, p])
    mean, std = data.sequence_stats(rgb)
    assert mean.shape == std.shape == (3,)
    z = data.standardize(torch.from_numpy(rgb))[0].numpy()
    np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.reshape(-1, 3).std(0), 1, atol=1e-4)
    t = data.to_sequences(torch.from_numpy(imgs), "gray", chunk=2)  # tensors in → tensor out; chunking
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), g)
    digits = rng.random((2, 8, 8)).astype(np.float32)  # single-channel float in [0, 1]
    np.testing.assert_array_equal(data.to_sequences(digits)[..., 0], digits.reshape(2, 64))
    with pytest.raises(ValueError, match="mode"):
        data.to_sequences(imgs, "hsv")
    with pytest.raises(ValueError, match="uint8"):
        data.to_sequences(imgs.astype(np.int32))
    with pytest.raises(ValueError, match="rgb"):
        data.to_sequences(digits, "rgb")
    # downsampling: 2×2 block means of the luma, then the row-major scan
    small = data.to_sequences(imgs, "gray", size=16)
    assert small.shape == (3, 256, 1)
    np.testing.assert_allclose(small[1, 5 * 16 + 9, 0], g[1].reshape(32, 32)[10:12, 18:20].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="divide"):
        data.to_sequences(imgs, size=5)


def test_bit_reversal_is_an_involutive_permutation():
    assert data.bit_reversal_permutation(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    for n in (1, 2, 64, 1024):
        p = data.bit_reversal_permutation(n)
        assert sorted(p.tolist()) == list(range(n))
        np.testing.assert_array_equal(p[p], np.arange(n))
    bits = 10
    p = data.bit_reversal_permutation(1 << bits)
    assert all(p[i] == int(format(i, f"0{bits}b")[::-1], 2) for i in range(1 << bits))
    assert np.abs(np.diff(p)).min() >= 256  # neighbours end up far apart
    with pytest.raises(ValueError, match="power of two"):
        data.bit_reversal_permutation(1000)


# --------------------------------------------------------------------------- splits
def test_stratified_split_proportions_and_determinism():
    labels = np.repeat(np.arange(10), [103, 97, 80, 75, 64, 50, 41, 33, 25, 12])
    rng = np.random.default_rng(5)
    labels = labels[rng.permutation(len(labels))]
    tr, va = data.stratified_split(labels, 0.15, seed=1)
    assert len(np.intersect1d(tr, va)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(labels)))
    assert len(va) == round(0.15 * len(labels))
    share = np.bincount(labels) * 0.15
    got = np.bincount(labels[va], minlength=10)
    assert np.all((got == np.floor(share)) | (got == np.ceil(share)))
    np.testing.assert_array_equal(va, data.stratified_split(labels, 0.15, seed=1)[1])
    np.testing.assert_array_equal(va, data.stratified_split(torch.from_numpy(labels), 0.15, seed=1)[1])
    assert not np.array_equal(va, data.stratified_split(labels, 0.15, seed=2)[1])
    tr0, va0 = data.stratified_split(labels, 0.0, seed=0)
    assert len(va0) == 0 and len(tr0) == len(labels) and va0.dtype == np.int64
    with pytest.raises(ValueError, match="val_fraction"):
        data.stratified_split(labels, 1.0, 0)


def test_stratified_subset_per_class_and_fraction():
    labels = np.repeat(np.arange(4), [30, 20, 10, 40])
    sub = data.stratified_subset(labels, 5, seed=0)
    assert np.bincount(labels[sub]).tolist() == [5] * 4 and len(set(sub)) == 20
    np.testing.assert_array_equal(sub, data.stratified_subset(labels, 5, seed=0))
    half = data.stratified_subset(labels, 0.5, seed=3)
    assert np.bincount(labels[half]).tolist() == [15, 10, 5, 20]
    with pytest.raises(ValueError, match="smallest class"):
        data.stratified_subset(labels, 11, seed=0)
    with pytest.raises(ValueError, match="fractional"):
        data.stratified_subset(labels, 1.5, seed=0)



def test_digits_as_sequences():
    x, y = data.load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() == 1
    assert sorted(set(y.tolist())) == list(range(10))
    seqs = data.to_sequences(x)
    assert seqs.shape == (1797, 64, 1)
    idx = 5
    np.testing.assert_array_equal(seqs[idx, :, 0].reshape(8, 8), x[idx])  # row-major
    perm = data.to_sequences(x, permute=True)
    np.testing.assert_array_equal(perm, seqs[:, data.bit_reversal_permutation(64)])


def test_standardize_uses_the_training_population_statistics():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(50, 7, 2, generator=g) * torch.tensor([1.0, 5.0]) + torch.tensor([0.0, 3.0])
    other = torch.rand(20, 7, 2, generator=g)
    z_train, z_other = data.standardize(train, other)
    flat = train.double().reshape(-1, 2)
    mean, std = flat.mean(0), flat.std(0, unbiased=False)  # population std: divisor N
    torch.testing.assert_close(z_train.double(), (train.double() - mean) / std, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_other.double(), (other.double() - mean) / std, rtol=1e-5, atol=1e-5)
    assert float(z_train.reshape(-1, 2).double().std(0, unbiased=False).sub(1).abs().max()) < 1e-5
    assert z_train.is_contiguous() and z_other.dtype == torch.float32
    const = torch.full((4, 3, 1), 2.0)  # zero spread: floored, no division by zero
    assert torch.equal(data.standardize(const)[0], torch.zeros_like(const))
