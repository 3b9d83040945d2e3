import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studies import data
from studies.tasks import AddingTask, CopyTask, get_task

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOENSIM_CACHE", str(tmp_path / "cache"))


def _batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]


def _write_official(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / data.OFFICIAL_DIR
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate(data.TRAIN_BATCHES + data.TEST_BATCHES):
        arr, labels = _batch(20, i)
        batches[name] = (arr, labels)
        d = {b"batch_label": name.encode(), b"labels": labels, b"data": arr,
             b"filenames": [f"img{j}.png".encode() for j in range(20)]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    return batches


def _expected(batches, names):
    imgs = np.concatenate([batches[n][0] for n in names]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return imgs, np.concatenate([batches[n][1] for n in names])


def test_official_folder_and_archive_round_trip(tmp_path):
    batches = _write_official(tmp_path / "a")
    x, y = data.load_cifar10(tmp_path / "a", "train", download=False)
    ex, ey = _expected(batches, data.TRAIN_BATCHES)
    assert x.shape == (100, 32, 32, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)
    # the same files as the official .tar.gz
    (tmp_path / "b").mkdir()
    with tarfile.open(tmp_path / "b" / data.OFFICIAL_ARCHIVE, "w:gz") as tar:
        tar.add(tmp_path / "a" / data.OFFICIAL_DIR, arcname=data.OFFICIAL_DIR)
    xt, yt = data.load_cifar10(tmp_path / "b", "test", download=False)
    ex, ey = _expected(batches, data.TEST_BATCHES)
    np.testing.assert_array_equal(xt, ex)
    np.testing.assert_array_equal(yt, ey)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_tar_classes_sorted_and_pixels_exact(tmp_path):
    classes = ["cat", "airplane", "dog"]  # alphabetical order gives labels airplane=0, cat=1, dog=2
    imgs = {}
    path = tmp_path / "imgs.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for c in classes:
                for j in range(2):
                    arr = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    imgs[(split, c, j)] = arr
                    raw = _png(arr)
                    info = tarfile.TarInfo(f"root/{split}/{c}/{j:04d}.png")
                    info.size = len(raw)
                    tar.addfile(info, io.BytesIO(raw))
    x, y = data.load_cifar10(tmp_path, "train", download=False)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(x[2], imgs[("train", "cat", 0)])
    np.testing.assert_array_equal(x[5], imgs[("train", "dog", 1)])
    # and as an extracted folder tree
    for (split, c, j), arr in imgs.items():
        d = tmp_path / "tree" / split / c
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{j}.png").write_bytes(_png(arr))
    xf, yf = data.load_cifar10(tmp_path / "tree", "test", download=False)
    np.testing.assert_array_equal(xf[0], imgs[("test", "airplane", 0)])
    assert yf.tolist() == [0, 0, 1, 1, 2, 2]


def test_cache_hit_returns_identical_arrays_without_reading_source(tmp_path, monkeypatch):
    _write_official(tmp_path)
    x1, y1 = data.load_cifar10(tmp_path, "train", download=False)
    assert list((tmp_path / "cache").glob("*.npz"))
    monkeypatch.setitem(data.READERS, "official-dir", lambda *_: pytest.fail("source read despite cache"))
    x2, y2 = data.load_cifar10(tmp_path, "train", download=False)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / data.OFFICIAL_DIR
    _write_official(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(data.DataError, match=r"refusing to load global (posix|os)\.system"):
        data.load_cifar10(tmp_path, "train", download=False)
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(data.DataError, match="builtins.eval"):
        data.load_batch(pickle.dumps(eval), "x")


def test_wrong_contents_and_corrupt_archive_name_the_file(tmp_path):
    with pytest.raises(data.DataError, match=r"'data' must be a uint8 array of shape \(N, 3072\)"):
        data.load_batch(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}), "bad")
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        tar.add(__file__, arcname="train/a/x.png")
    bad = tmp_path / "sub"
    bad.mkdir()
    (bad / "cifar.tar.gz").write_bytes(good.read_bytes()[:40])
    with pytest.raises(data.DataError, match=r"cifar\.tar\.gz: corrupt or truncated archive"):
        data.load_cifar10(bad, "train", download=False)


def test_missing_data_names_folder_and_formats(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_cifar10(tmp_path / "nowhere", "train", download=False)
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "cifar-10-batches-py" in msg and "SOENSIM_DATA_DIR" in msg


def test_sequences_and_permutation():
    imgs = RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    g = data.to_sequences(imgs, "gray")
    assert g.shape == (4, 1024, 1)
    ref = (imgs[1, 0, 5].astype(np.float32) / 255) @ data.LUMA  # row 0, column 5 is step 5
    assert g[1, 5, 0] == pytest.approx(ref, rel=1e-6)
    rgb = data.to_sequences(imgs, "rgb")
    np.testing.assert_allclose(rgb[2, 32 + 3], imgs[2, 1, 3] / 255, rtol=1e-6)  # row 1, col 3
    p = data.bit_reversal_permutation(1024)
    assert sorted(p.tolist()) == list(range(1024))
    np.testing.assert_array_equal(p[p], np.arange(1024))
    assert p[1] == 512 and p[2] == 256 and p[3] == 768
    np.testing.assert_array_equal(data.to_sequences(imgs, "gray", permute=True), g[:, p])
    with pytest.raises(ValueError, match="power of two"):
        data.bit_reversal_permutation(1000)


def test_stratified_split_and_subset():
    labels = np.repeat(np.arange(10), [100, 90, 80, 70, 60, 50, 40, 30, 20, 10])
    tr, va = data.stratified_split(labels, 0.1, seed=1)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va]).tolist() == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    tr2, va2 = data.stratified_split(labels, 0.1, seed=1)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, data.stratified_split(labels, 0.1, seed=2)[1])
    sub = data.stratified_subset(labels, 5, seed=0)
    assert np.bincount(labels[sub]).tolist() == [5] * 10
    with pytest.raises(ValueError, match="val_fraction"):
        data.stratified_split(labels, 1.0, 0)


def test_digits():
    x, y = data.load_digits()
    assert x.shape == (1797, 8, 8) and x.min() >= 0 and x.max() <= 1 and set(y.tolist()) == set(range(10))


def test_copy_task():
    t = CopyTask(30)
    g = torch.Generator().manual_seed(0)
    x, y = t.sample(16, g)
    assert x.shape == (16, 50, 10) and y.shape == (16, 10)
    tokens = x.argmax(-1)
    torch.testing.assert_close(tokens[:, :10] - 1, y)
    assert (tokens[:, 10:40] == 0).all() and (tokens[:, 40:] == 9).all()
    assert y.min() >= 0 and y.max() <= 7
    x2, y2 = t.sample(16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # uniform prediction over the 8 symbols scores exactly the documented baseline
    ce = torch.nn.functional.cross_entropy(torch.zeros(160, 8), y.reshape(-1))
    assert ce.item() == pytest.approx(t.chance_loss)


def test_adding_task():
    t = get_task("adding", 40)
    x, y = t.sample(2000, torch.Generator().manual_seed(1))
    assert x.shape == (2000, 40, 2)
    marks = x[..., 1]
    assert (marks.sum(1) == 2).all() and (marks[:, :20].sum(1) == 1).all()
    torch.testing.assert_close(y[:, 0], (x[..., 0] * marks).sum(1))
    # predicting 1 gives MSE ≈ 1/6
    assert ((y - 1) ** 2).mean().item() == pytest.approx(AddingTask.chance_loss, rel=0.1)
    with pytest.raises(ValueError, match="task must be one of"):
        get_task("parity", 10)


@pytest.mark.skipif(not (Path(os.environ.get("SOENSIM_DATA_DIR", "/nonexistent")) / "cifar10-jpeg.tar.gz").exists(),
                    reason="shared CIFAR-10 copy not present")
def test_shared_cifar_copy():
    x, y = data.load_cifar10(os.environ["SOENSIM_DATA_DIR"], "test", download=False)
    assert x.shape == (10000, 32, 32, 3) and np.bincount(y).tolist() == [1000] * 10
