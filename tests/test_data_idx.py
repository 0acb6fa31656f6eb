"""IDX reading/writing and MNIST: the real canonical files, the embedded subset, corrupt copies."""

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdkit.data import idx as idx_mod
from kdkit.data import load_dataset, read_idx, write_idx
from kdkit.data.idx import EMBEDDED_MNIST_SMALL_MD5, embedded_dir, idx_bytes, parse_idx
from kdkit.errors import DataError


def _real_root() -> Path | None:
    """$KDKIT_DATA, else the shared/data directory beside the repository."""
    env = os.environ.get("KDKIT_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Never let a test write a cache next to the shared (read-only in spirit) data.
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "kdkit-cache"))


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    root = _real_root()
    if root is None or not (root / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("real MNIST not found: set KDKIT_DATA (or provide ../shared/data/mnist beside the repo)")
    return root / "mnist"


# ---------------------------------------------------------------- IDX format


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(["u1", "i1", ">i2", ">i4", ">f4", ">f8", "<i4", "<f8"]),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_idx_roundtrip_any_dtype_and_shape(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    out = parse_idx(idx_bytes(arr), "mem")
    assert out.shape == arr.shape
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable and out.flags.c_contiguous


def test_write_idx_gzip_is_reproducible_and_readable(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    a = write_idx(tmp_path / "a.gz", arr)
    b = write_idx(tmp_path / "b.gz", arr)
    assert a.read_bytes()[:2] == b"\x1f\x8b"
    assert a.read_bytes() == b.read_bytes()  # mtime 0, no file name in the gzip header
    np.testing.assert_array_equal(read_idx(a), arr)
    raw = write_idx(tmp_path / "raw", arr)
    assert raw.read_bytes()[:4] == bytes([0, 0, 0x08, 3])
    np.testing.assert_array_equal(read_idx(raw), arr)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\x00\x00", "at least a 4-byte IDX header"),
        (b"\x12\x34\x08\x01" + b"\x00" * 8, "bad IDX magic"),
        (b"\x00\x00\x07\x01" + b"\x00" * 8, "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "5 payload bytes expected, 3 found"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abcd", "has trailing bytes"),
    ],
)
def test_parse_idx_rejects_malformed_headers(data, needle):
    with pytest.raises(DataError, match=needle) as exc:
        parse_idx(data, "some/file.idx")
    assert "some/file.idx" in str(exc.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "nope.gz")


# ---------------------------------------------------------------- real MNIST


def test_real_mnist_train_and_test(mnist_dir):
    train = load_dataset("mnist", "train", root=mnist_dir.parent)
    test = load_dataset("mnist", "test", root=mnist_dir.parent)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.dtype == np.int64 and train.labels.shape == (60000,)
    assert int((train.labels == 0).sum()) == 5923
    assert int((test.labels == 0).sum()) == 980
    assert train.classes == [str(d) for d in range(10)]
    assert train.name == "mnist/train" and test.name == "mnist/test"
    assert train.images.flags.c_contiguous and train.images.flags.writeable
    # The decoded pixels re-serialised with their IDX header reproduce the canonical uncompressed file.
    assert (
        hashlib.md5(idx_bytes(train.images.reshape(-1, 28, 28))).hexdigest()
        == "6bbc9ace898e44ae57da46a324031adb"
    )
    assert (
        hashlib.md5(idx_bytes(train.labels.astype(np.uint8))).hexdigest()
        == "a25bea736e30d166cdddb491f175f624"
    )


def test_mnist_root_from_env_and_decompressed_files(mnist_dir, tmp_path, monkeypatch):
    # torchvision layout MNIST/raw with decompressed files is found too.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    monkeypatch.setenv("KDKIT_DATA", str(tmp_path))
    ds = load_dataset("mnist", "test")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert int((ds.labels == 0).sum()) == 980


def _copy_mnist_test(mnist_dir: Path, dest: Path) -> Path:
    d = dest / "mnist"
    d.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(mnist_dir / name, d / name)
    return d


def test_truncated_idx_payload_is_reported_with_byte_counts(mnist_dir, tmp_path):
    d = _copy_mnist_test(mnist_dir, tmp_path)
    raw = gzip.decompress((d / "t10k-images-idx3-ubyte.gz").read_bytes())
    cut = raw[: len(raw) - 1000]  # a valid gzip stream around a short IDX payload
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(cut, compresslevel=1))
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", "test", root=tmp_path)
    msg = str(exc.value)
    assert str(d / "t10k-images-idx3-ubyte.gz") in msg
    assert "7840000 payload bytes expected, 7839000 found" in msg


def test_truncated_gzip_is_reported(mnist_dir, tmp_path):
    d = _copy_mnist_test(mnist_dir, tmp_path)
    f = d / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:500_000])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as exc:
        load_dataset("mnist", "test", root=tmp_path)
    assert str(f) in str(exc.value)


def test_corrupt_gzip_is_reported(mnist_dir, tmp_path):
    d = _copy_mnist_test(mnist_dir, tmp_path)
    f = d / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(f.read_bytes())
    data[100:400] = bytes(300)  # zero a stretch of the deflate stream
    f.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt or truncated gzip") as exc:
        load_dataset("mnist", "test", root=tmp_path)
    assert str(f) in str(exc.value)


def test_mnist_label_count_mismatch(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="expected 5 labels"):
        load_dataset("mnist", "test", root=tmp_path)
    write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((4, 27, 28), np.uint8))
    with pytest.raises(DataError, match=r"shape \(N, 28, 28\)"):
        load_dataset("mnist", "test", root=tmp_path)


# ---------------------------------------------------------------- embedded subset


def test_mnist_small_sizes_balance_and_origin(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKIT_DATA", str(tmp_path / "empty"))  # the root is ignored for embedded data
    train = load_dataset("mnist-small", "train")
    test = load_dataset("mnist-small", "test", root="/nonexistent")
    assert train.images.shape == (10000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    assert np.bincount(train.labels, minlength=10).tolist() == [1000] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [200] * 10
    assert train.name == "mnist-small/train" and train.classes == [str(d) for d in range(10)]
    total = sum(len(embedded_dir().joinpath(n).read_bytes()) for n in EMBEDDED_MNIST_SMALL_MD5)
    assert total <= 3 * 1024 * 1024


def test_mnist_small_images_come_from_canonical_splits(mnist_dir):
    small = load_dataset("mnist-small", "test")
    full = load_dataset("mnist", "test", root=mnist_dir.parent)
    # Every embedded image is a canonical test image with the same label (checked via a hash table).
    lookup = {full.images[i].tobytes(): full.labels[i] for i in range(len(full))}
    hits = [lookup.get(img.tobytes()) for img in small.images]
    assert all(h is not None for h in hits)
    assert np.array_equal(np.array(hits), small.labels)


def test_mnist_small_md5_is_verified(monkeypatch):
    monkeypatch.setitem(EMBEDDED_MNIST_SMALL_MD5, "t10k-labels-idx1-ubyte.gz", "0" * 32)
    with pytest.raises(DataError, match="embedded file is corrupt: expected md5 0{32}"):
        load_dataset("mnist-small", "test")
    # the real constant matches the shipped bytes
    monkeypatch.undo()
    for name, md5 in idx_mod.EMBEDDED_MNIST_SMALL_MD5.items():
        assert hashlib.md5(embedded_dir().joinpath(name).read_bytes()).hexdigest() == md5
