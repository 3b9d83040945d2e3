"""studies.cifar and studies.cifar_batches: CIFAR-10 readers (official pickles, image folders and
archives), the restricted unpickler, the decoded-array cache, download.

Every file is built here in tmp_path; only ``test_shared_cifar_copy`` reads the shared copy.
"""
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studies import cifar, cifar_batches
from studies.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv(cifar.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(cifar.DATA_ENV, raising=False)


# --------------------------------------------------------------------------- file builders
def _batch(n, seed, cyclic=False):
    rng = np.random.default_rng(seed)
    labels = [i % 10 for i in range(n)] if cyclic else [int(v) for v in rng.integers(0, 10, n)]
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), labels


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the official files: byte strings as
    (SHORT_)BINSTRING and NumPy's reconstructor as ``numpy.core.multiarray``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"))

    def save_global(self, obj, name=None):
        name = name or obj.__qualname__
        module = "numpy.core.multiarray" if name == "_reconstruct" else obj.__module__
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str
    dispatch[type] = save_global
    dispatch[type(len)] = save_global


def _py2_dumps(obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_official(root, per_batch=20, dumps=lambda d: pickle.dumps(d, protocol=2), cyclic=False):
    """A fake cifar-10-batches-py/ in the official layout; returns {batch name: (data, labels)}."""
    folder = root / cifar.OFFICIAL_DIR
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate(cifar.TRAIN_BATCHES + cifar.TEST_BATCHES):
        arr, labels = _batch(per_batch, i, cyclic)
        batches[name] = (arr, labels)
        d = {b"batch_label": f"{name} of 5".encode(), b"labels": labels, b"data": arr,
             b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)]}
        (folder / name).write_bytes(dumps(d))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in cifar.CLASSES]}, 2))
    return batches


def official_archive(src_root, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src_root / cifar.OFFICIAL_DIR, arcname=cifar.OFFICIAL_DIR)
    return dest


def expected(batches, names):
    x = np.concatenate([batches[n][0] for n in names])
    return x, np.concatenate([batches[n][1] for n in names])


def _encode(arr, fmt="PNG", **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _smooth(seed, side=32):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    chans = [np.sin(6 * a * xx + 5 * b * yy + c) for a, b, c in rng.uniform(0.2, 1.0, (3, 3))]
    return ((np.stack(chans, -1) + 1) * 127.5).astype(np.uint8)


def image_items(classes=("cat", "airplane", "dog"), per_class=2, seed=0):
    """{(split, class, j): random uint8 image}; classes deliberately not in sorted order."""
    rng = np.random.default_rng(seed)
    return {(s, c, j): rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            for s in ("train", "test") for c in classes for j in range(per_class)}


def write_image_tar(path, files, mode="w:gz", fmt=tarfile.PAX_FORMAT):
    with tarfile.open(path, mode, format=fmt) as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            info.mtime = 1_600_000_000
            tar.addfile(info, io.BytesIO(raw))
    return path


# --------------------------------------------------------------------------- official format
def test_official_folder_round_trip_and_pixel_layout(tmp_path):
    batches = write_official(tmp_path)
    x, y = cifar.load_cifar10(tmp_path, "train", download=False)
    ex, ey = expected(batches, cifar.TRAIN_BATCHES)
    assert x.shape == (100, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    # official rows: 1024 red, then green, then blue values, each plane row-major
    for k, r, c, ch in [(0, 0, 0, 0), (7, 3, 30, 1), (99, 31, 5, 2)]:
        assert x[k, r, c, ch] == ex[k, ch * 1024 + r * 32 + c]
    np.testing.assert_array_equal(y, ey)
    xt, yt = cifar.load_cifar10(tmp_path / cifar.OFFICIAL_DIR, "test", download=False)  # the folder itself
    np.testing.assert_array_equal(xt.reshape(20, -1), cifar_batches.load_batch(
        (tmp_path / cifar.OFFICIAL_DIR / "test_batch").read_bytes(), "t")[0].reshape(20, -1))
    assert yt.tolist() == batches["test_batch"][1]


def test_official_archive_round_trip(tmp_path):
    batches = write_official(tmp_path / "src")
    official_archive(tmp_path / "src", tmp_path / "d" / cifar.OFFICIAL_ARCHIVE)
    loaded = cifar.load_cifar10(tmp_path / "d", "train", download=False)
    ex, ey = expected(batches, cifar.TRAIN_BATCHES)
    np.testing.assert_array_equal(loaded.images, ex.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(loaded.labels, ey)
    assert loaded.info["format"] == "official-archive" and loaded.info["classes"] == cifar.CLASSES
    # the same archive under another name is recognised by its contents
    renamed = tmp_path / "e" / "my-cifar.tar.gz"
    renamed.parent.mkdir()
    renamed.write_bytes((tmp_path / "d" / cifar.OFFICIAL_ARCHIVE).read_bytes())
    np.testing.assert_array_equal(cifar.load_cifar10(renamed, "test", download=False).labels,
                                  batches["test_batch"][1])


def test_python2_written_batches_load(tmp_path):
    """The official files were written by Python 2 (byte strings, numpy.core.multiarray)."""
    batches = write_official(tmp_path, dumps=_py2_dumps)
    raw = (tmp_path / cifar.OFFICIAL_DIR / "data_batch_1").read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    x, y = cifar.load_cifar10(tmp_path, "train", download=False)
    ex, ey = expected(batches, cifar.TRAIN_BATCHES)
    np.testing.assert_array_equal(x.transpose(0, 3, 1, 2).reshape(100, -1), ex)
    np.testing.assert_array_equal(y, ey)
    assert cifar_batches.restricted_loads(raw)[b"batch_label"] == b"data_batch_1 of 5"


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "PWNED"
    attacks = {
        r"(posix|nt|os)\.system": _Reduce(os.system, f"touch {marker}"),
        r"(builtins|__builtin__)\.eval": _Reduce(eval, f"open({str(marker)!r}, 'w').write('x')"),
        r"(builtins|__builtin__)\.exec": _Reduce(exec, f"open({str(marker)!r}, 'w').write('x')"),
        r"numpy\.load": _Reduce(np.load, str(marker)),  # NumPy, but not array reconstruction
    }
    for pattern, obj in attacks.items():
        raw = pickle.dumps({b"data": obj, b"labels": [0]}, protocol=protocol)
        with pytest.raises(cifar_batches.UnsafePickleError, match=f"src: refusing to load global {pattern}"):
            cifar_batches.load_batch(raw, "src")
        assert not marker.exists()
    # through the loader: the error names the offending file
    write_official(tmp_path / "d")
    bad = tmp_path / "d" / cifar.OFFICIAL_DIR / "data_batch_3"
    bad.write_bytes(pickle.dumps({b"data": attacks[r"(posix|nt|os)\.system"], b"labels": [0]}, protocol=protocol))
    with pytest.raises(cifar_batches.UnsafePickleError) as err:
        cifar.load_cifar10(tmp_path / "d", "train", download=False)
    assert str(bad) in str(err.value) and "system" in str(err.value)
    assert isinstance(err.value, DataError) and isinstance(err.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_codecs_encode_only_as_latin1_string_to_bytes():
    import codecs

    ok = pickle.dumps(b"\x00\xffabc", protocol=2)  # Python 3 writes _codecs.encode('...', 'latin1')
    assert b"_codecs" in ok and cifar_batches.restricted_loads(ok) == b"\x00\xffabc"
    for args in [("eJzLSM3JyQcABiwCFQ==", "base64"), (b"x", "latin1"), ("abc", "rot13")]:
        with pytest.raises(cifar_batches.UnsafePickleError, match="_codecs.encode"):
            cifar_batches.restricted_loads(pickle.dumps(_Reduce(codecs.encode, *args), protocol=2))


@pytest.mark.parametrize("payload, message", [
    ([1, 2, 3], "expected a dict with 'data' and 'labels'; got list"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, r"missing key\(s\) \['labels'\]"),
    ({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]},
     r"'data' must be a uint8 array of shape \(N, 3072\); got uint8 array of shape \(2, 10\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"'data' must be a uint8 array"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"'labels' must be N = 2 ints in 0\.\.9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"'labels' must be N = 2 ints"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0.5, 1.0]}, r"'labels' must be N = 2 ints"),
])
def test_batch_contents_are_validated(payload, message):
    with pytest.raises(DataError, match=f"^somefile: {message}"):
        cifar_batches.load_batch(pickle.dumps(payload, protocol=2), "somefile")


def test_str_keys_and_not_a_pickle():
    x, y = cifar_batches.load_batch(pickle.dumps({"data": np.full((1, 3072), 7, np.uint8), "labels": [3]}), "f")
    assert x.shape == (1, 32, 32, 3) and (x == 7).all() and y.tolist() == [3]
    with pytest.raises(DataError, match="^f: not a CIFAR-10 python batch"):
        cifar_batches.load_batch(b"this is not a pickle", "f")


# --------------------------------------------------------------------------- image folders
@pytest.mark.parametrize("layout", ["tree", "tar.gz", "tar", "gnu-tar"])
def test_image_folder_png_exact_and_classes_sorted(tmp_path, layout):
    items = image_items()
    files = {f"{s}/{c}/{j:04d}.png": _encode(a) for (s, c, j), a in items.items()}
    files["README.txt"] = b"not an image"
    files["train/cat/._0000.png"] = b"AppleDouble junk"
    if layout == "tree":
        for name, raw in files.items():
            (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "d" / name).write_bytes(raw)
        src = tmp_path / "d"
    else:
        (tmp_path / "d").mkdir()
        files = {f"cifar10/{k}": v for k, v in files.items()}  # a leading folder is fine
        mode, fmt = {"tar.gz": ("w:gz", tarfile.PAX_FORMAT), "tar": ("w", tarfile.USTAR_FORMAT),
                     "gnu-tar": ("w:gz", tarfile.GNU_FORMAT)}[layout]
        write_image_tar(tmp_path / "d" / f"images.{'tar' if mode == 'w' else 'tar.gz'}", files, mode, fmt)
        src = tmp_path / "d"
    x, y = cifar.load_cifar10(src, "train", download=False)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]  # airplane, cat, dog
    for k, (c, j) in enumerate([("airplane", 0), ("airplane", 1), ("cat", 0), ("cat", 1), ("dog", 0), ("dog", 1)]):
        np.testing.assert_array_equal(x[k], items[("train", c, j)])
    xt, yt = cifar.load_cifar10(src, "test", download=False)
    np.testing.assert_array_equal(xt[3], items[("test", "cat", 1)])
    assert cifar.load_cifar10(src, "test", download=False).info["classes"] == ("airplane", "cat", "dog")


def test_jpeg_decoding_matches_pillow(tmp_path):
    imgs = [_smooth(s) for s in range(4)]
    files = {f"train/c{k % 2}/{k}.jpg": _encode(a, "JPEG", quality=90) for k, a in enumerate(imgs)}
    gray = _smooth(9)[..., 0]
    files["test/c0/g.jpg"] = _encode(gray, "JPEG")  # one-component JPEG: Pillow's general path
    files["test/c1/p.jpg"] = _encode(imgs[0], "JPEG", progressive=True)
    write_image_tar(tmp_path / "jpg.tar.gz", files)
    x, y = cifar.load_cifar10(tmp_path, "train", download=False)
    assert y.tolist() == [0, 0, 1, 1]
    for k, name in enumerate(["train/c0/0.jpg", "train/c0/2.jpg", "train/c1/1.jpg", "train/c1/3.jpg"]):
        np.testing.assert_array_equal(x[k], np.asarray(Image.open(io.BytesIO(files[name])).convert("RGB")))
    assert np.abs(x[0].astype(int) - imgs[0]).mean() < 4  # lossy but close
    xt, _ = cifar.load_cifar10(tmp_path, "test", download=False)
    assert (xt[0, ..., 0] == xt[0, ..., 1]).all() and np.abs(xt[0, ..., 0].astype(int) - gray).mean() < 4
    np.testing.assert_array_equal(xt[1], np.asarray(Image.open(io.BytesIO(files["test/c1/p.jpg"])).convert("RGB")))


def test_bad_images_name_the_member(tmp_path):
    ok = _encode(np.zeros((32, 32, 3), np.uint8))
    for d in "abc":
        (tmp_path / d).mkdir()
    write_image_tar(tmp_path / "a" / "x.tar.gz",
                    {"train/c/0.png": ok, "test/c/0.png": ok, "test/c/1.png": _encode(np.zeros((16, 16, 3), np.uint8))})
    with pytest.raises(DataError, match=r"x\.tar\.gz:test/c/1\.png: expected a 32x32 RGB image"):
        cifar.load_cifar10(tmp_path / "a", "train", download=False)
    write_image_tar(tmp_path / "b" / "y.tar", {"train/c/0.png": ok, "test/c/0.jpg": b"\xff\xd8garbage"}, "w")
    with pytest.raises(DataError, match=r"y\.tar:test/c/0\.jpg: not a readable image"):
        cifar.load_cifar10(tmp_path / "b", "train", download=False)
    write_image_tar(tmp_path / "c" / "z.tar.gz", {"train/c/0.png": ok, "notes/readme.md": b"hi"})
    with pytest.raises(DataError, match=r"z\.tar\.gz: no images under test/<class>/"):
        cifar.load_cifar10(tmp_path / "c", "train", download=False)


def test_tar_reader_formats_and_member_selection(tmp_path):
    long_name = "train/" + "a_very_long_class_name_" * 6 + "/" + "file" * 30 + ".png"
    files = {long_name: b"x" * 700, "test/b/0.png": b"", "test/b/1.png": bytes(range(256)) * 3,
             "train/\u00e9t\u00e9/0.png": b"unicode name"}
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        for mode in ("w", "w:gz", "w:bz2", "w:xz"):
            path = write_image_tar(tmp_path / f"t{fmt}{mode[2:]}.tar", files, mode, fmt)
            got = cifar.read_tar(path)
            assert dict(got.files) == files and sorted(got.names) == sorted(files)
    # members the reader is not asked for are skipped, but listed
    got = cifar.read_tar(path, want=lambda n: n.endswith("1.png"))
    assert [n for n, _ in got.files] == ["test/b/1.png"] and len(got.names) == 4


def test_corrupt_archives_name_the_file(tmp_path):
    write_official(tmp_path / "src")
    good = official_archive(tmp_path / "src", tmp_path / "g" / cifar.OFFICIAL_ARCHIVE).read_bytes()
    for name, raw in [("truncated", good[: len(good) // 2]), ("garbage", b"\x1f\x8b" + b"\x00" * 100),
                      ("tiny", good[:40])]:
        d = tmp_path / name
        d.mkdir()
        (d / cifar.OFFICIAL_ARCHIVE).write_bytes(raw)
        with pytest.raises(DataError) as err:
            cifar.load_cifar10(d, "train", download=False)
        msg = str(err.value)
        assert msg.startswith(f"{d / cifar.OFFICIAL_ARCHIVE}: corrupt or truncated archive, expected the official")
    # a complete archive missing a batch
    (tmp_path / "src" / cifar.OFFICIAL_DIR / "test_batch").unlink()
    official_archive(tmp_path / "src", tmp_path / "m" / cifar.OFFICIAL_ARCHIVE)
    with pytest.raises(DataError, match=r"missing official batch file\(s\) \['test_batch'\]"):
        cifar.load_cifar10(tmp_path / "m", "train", download=False)


# --------------------------------------------------------------------------- finding / downloading
def test_missing_data_without_download(tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        cifar.load_cifar10(where, "train", download=False)
    msg = str(err.value)
    for needed in (str(where), cifar.OFFICIAL_DIR, cifar.OFFICIAL_ARCHIVE, "train/<class>/*.jpg|png", "*.tar.gz",
                   "--data-dir", cifar.DATA_ENV, "download=False"):
        assert needed in msg
    assert not where.exists()


def test_data_dir_from_environment(tmp_path, monkeypatch):
    batches = write_official(tmp_path / "env")
    monkeypatch.setenv(cifar.DATA_ENV, str(tmp_path / "env"))
    assert cifar.load_cifar10(split="test", download=False).labels.tolist() == batches["test_batch"][1]


def test_download_checks_md5_and_writes_atomically(tmp_path, monkeypatch):
    write_official(tmp_path / "src")
    archive = official_archive(tmp_path / "src", tmp_path / "server" / "cifar.tgz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "dl"
    dest.mkdir()
    with pytest.raises(DataError, match="md5 .* differs from the published 0{32}"):
        cifar.download_cifar10(dest, url=archive.as_uri(), md5="0" * 32)
    assert list(dest.iterdir()) == []  # nothing partial left behind
    # the loader downloads when nothing is there (URL and md5 patched to the local "server")
    monkeypatch.setattr(cifar, "OFFICIAL_URL", archive.as_uri())
    monkeypatch.setattr(cifar, "OFFICIAL_MD5", md5)
    got = cifar.load_cifar10(tmp_path / "fresh", "train")
    assert got.info["format"] == "official-archive" and len(got.labels) == 100
    assert (tmp_path / "fresh" / cifar.OFFICIAL_ARCHIVE).read_bytes() == archive.read_bytes()
    # a failed download ends in FileNotFoundError naming the folder and the reason
    monkeypatch.setattr(cifar, "OFFICIAL_URL", (tmp_path / "server" / "missing.tgz").as_uri())
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-10 data found in .*offline.*Downloading file:"):
        cifar.load_cifar10(tmp_path / "offline", "train")


# --------------------------------------------------------------------------- cache
def test_cache_hit_is_identical_and_skips_the_reader(tmp_path, monkeypatch):
    write_official(tmp_path / "src")
    official_archive(tmp_path / "src", tmp_path / "d" / cifar.OFFICIAL_ARCHIVE)
    first = cifar.load_cifar10(tmp_path / "d", "train", download=False)
    assert not first.info["from_cache"] and Path(first.info["cache"]).parent == tmp_path / "cache"
    monkeypatch.setitem(cifar.READERS, "official-archive", lambda *_: pytest.fail("decoded again despite the cache"))
    second = cifar.load_cifar10(tmp_path / "d", "train", download=False)
    test = cifar.load_cifar10(tmp_path / "d", "test", download=False)  # both splits were cached in one pass
    assert second.info["from_cache"] and test.info["from_cache"] and second.info["cache"] == first.info["cache"]
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.images.dtype == np.uint8 and second.labels.dtype == np.int64 and second.images.flags.writeable
    assert second.info["classes"] == cifar.CLASSES
    # a changed source (new mtime) is decoded again
    monkeypatch.undo()
    monkeypatch.setenv(cifar.CACHE_ENV, str(tmp_path / "cache"))
    os.utime(tmp_path / "d" / cifar.OFFICIAL_ARCHIVE, ns=(1, 1))
    assert not cifar.load_cifar10(tmp_path / "d", "train", download=False).info["from_cache"]


def test_cache_location_and_damaged_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar.CACHE_ENV)
    write_official(tmp_path / "d")
    first = cifar.load_cifar10(tmp_path / "d", "train", download=False)
    cache = Path(first.info["cache"])
    assert cache.parent == tmp_path / "d" / cifar.CACHE_SUBDIR and cache.suffix == ".npz"
    with np.load(cache, allow_pickle=False) as z:  # a plain npz: uint8 images, int64 labels
        assert z["train_images"].shape == (100, 32, 32, 3) and z["test_labels"].dtype == np.int64
    cache.write_bytes(cache.read_bytes()[:1000])  # damaged: warned about, ignored, rewritten
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = cifar.load_cifar10(tmp_path / "d", "train", download=False)
    assert not again.info["from_cache"]
    np.testing.assert_array_equal(again.images, first.images)
    assert cifar.load_cifar10(tmp_path / "d", "train", download=False).info["from_cache"]
    nocache = cifar.load_cifar10(tmp_path / "d", "train", download=False, cache=False)
    assert nocache.info["cache"] is None and not nocache.info["from_cache"]
    explicit = cifar.load_cifar10(tmp_path / "d", "test", download=False, cache_dir=tmp_path / "mine")
    assert Path(explicit.info["cache"]).parent == tmp_path / "mine"


def test_both_splits_decode_once_even_without_cache(tmp_path, monkeypatch):
    batches = write_official(tmp_path)
    calls = []
    reader = cifar.READERS["official-dir"]
    monkeypatch.setitem(cifar.READERS, "official-dir", lambda p: calls.append(p) or reader(p))
    both = cifar.load_cifar10_splits(tmp_path, download=False, cache=False)
    assert len(calls) == 1 and len(both["train"].labels) == 100
    assert both["test"].labels.tolist() == batches["test_batch"][1]
    cifar.load_cifar10_splits(tmp_path, download=False)  # decodes and writes the cache
    cached = cifar.load_cifar10_splits(tmp_path, download=False)
    assert len(calls) == 2 and cached["train"].info["from_cache"] and cached["test"].info["from_cache"]
    np.testing.assert_array_equal(cached["train"].images, both["train"].images)


def test_loaded_split_unpacks_and_pickles():
    s = cifar.LoadedSplit(np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.int64), {"a": 1})
    x, y = s
    assert x is s.images and y is s.labels and s[0] is x
    back = pickle.loads(pickle.dumps(s))
    assert back.info == {"a": 1} and np.array_equal(back.images, x)



# --------------------------------------------------------------------------- the shared copy (optional)
def _shared_archive():
    for d in (os.environ.get(cifar.DATA_ENV), REPO.parent / "shared" / "data"):
        if d and (Path(d) / "cifar10-jpeg.tar.gz").is_file():
            return Path(d) / "cifar10-jpeg.tar.gz"
    return None


SHARED = _shared_archive()


@pytest.mark.skipif(SHARED is None, reason="shared CIFAR-10 copy not present")
def test_shared_cifar_copy():
    """Counts only (one pass over the 19 MB archive, no decoding): 50,000/10,000, 5,000/1,000 per class."""
    counts = cifar.count_images(SHARED)
    assert counts["train"] == {c: 5000 for c in cifar.CLASSES}
    assert counts["test"] == {c: 1000 for c in cifar.CLASSES}
    assert cifar.find_cifar_source(SHARED.parent) == ("image-archive", SHARED)
