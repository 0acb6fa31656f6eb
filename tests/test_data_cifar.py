"""CIFAR python batches: fake canonical dirs and archives, the restricted unpickler, validation."""

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kdkit.data import CIFAR10_CLASSES, CIFAR100_CLASSES, load_dataset
from kdkit.data.cifar import RestrictedUnpickler, unpickle_batch
from kdkit.errors import DataError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "kdkit-cache"))


def _batch(n: int, seed: int, num_classes: int = 10, label_key: bytes = b"labels") -> dict:
    """A dict shaped like a canonical batch as read with encoding="bytes" (bytes keys, list labels)."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        label_key: rng.integers(0, num_classes, size=n).tolist(),
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def _dump(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)  # the canonical batches are protocol-2 pickles


def make_cifar10(root: Path, n: int = 6) -> dict[str, dict]:
    """Write a fake cifar-10-batches-py/ (5 train batches, test batch, meta) under root."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = {f"data_batch_{i}": _batch(n, i) for i in range(1, 6)}
    batches["test_batch"] = _batch(n, 99)
    for name, b in batches.items():
        (d / name).write_bytes(_dump(b))
    (d / "batches.meta").write_bytes(
        _dump(
            {
                b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                b"num_vis": 3072,
                b"num_cases_per_batch": n,
            }
        )
    )
    return batches


def _tar_dir(src: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=src.name)
    return archive


def _expected(batches: list[dict], key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.array(b[key]) for b in batches])
    return x, y


def test_fake_cifar10_directory_loads_canonical_layout(tmp_path):
    batches = make_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    x, y = _expected([batches[f"data_batch_{i}"] for i in range(1, 6)])
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images, x)
    np.testing.assert_array_equal(train.labels, y)
    assert train.labels.dtype == np.int64
    # channel-first rows: the first 1024 bytes of a row are the red plane
    np.testing.assert_array_equal(train.images[0, 0].ravel(), batches["data_batch_1"][b"data"][0, :1024])
    assert train.classes == CIFAR10_CLASSES and train.name == "cifar10/train"
    np.testing.assert_array_equal(test.images, _expected([batches["test_batch"]])[0])


def test_fake_cifar10_archive_loads_without_extracting(tmp_path):
    src = tmp_path / "src"
    batches = make_cifar10(src)
    root = tmp_path / "root"
    root.mkdir()
    _tar_dir(src / "cifar-10-batches-py", root / "cifar-10-python.tar.gz")
    test = load_dataset("cifar10", "test", root=root)
    np.testing.assert_array_equal(test.images, _expected([batches["test_batch"]])[0])
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]  # nothing extracted
    # The decoded archive is cached; a second load reads the cache file.
    cache_files = list((tmp_path / "kdkit-cache").glob("cifar10_test-*.npz"))
    assert len(cache_files) == 1
    again = load_dataset("cifar10", "test", root=root)
    np.testing.assert_array_equal(again.images, test.images)
    assert again.classes == CIFAR10_CLASSES


def test_fake_cifar100_uses_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    train = _batch(7, 1, num_classes=100, label_key=b"fine_labels")
    train[b"coarse_labels"] = [0] * 7
    (d / "train").write_bytes(_dump(train))
    (d / "test").write_bytes(_dump(_batch(3, 2, num_classes=100, label_key=b"fine_labels")))
    (d / "meta").write_bytes(_dump({b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES]}))
    ds = load_dataset("cifar100", "train", root=tmp_path)
    assert ds.images.shape == (7, 3, 32, 32)
    np.testing.assert_array_equal(ds.labels, train[b"fine_labels"])
    assert len(ds.classes) == 100 and ds.classes[0] == "apple" and ds.classes[-1] == "worm"


def test_str_keys_and_protocol_4_copies_also_load(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    b = {k.decode(): v for k, v in _batch(4, 5).items()}
    (d / "test_batch").write_bytes(pickle.dumps(b, protocol=4))
    ds = load_dataset("cifar10", "test", root=tmp_path)  # no meta file: canonical names are used
    assert ds.images.shape == (4, 3, 32, 32) and ds.classes == CIFAR10_CLASSES


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = _dump({b"data": _Evil(f"touch {marker}"), b"labels": [0]})

    # The payload is live: plain pickle would run it (checked on a separate marker).
    probe = tmp_path / "probe"
    pickle.loads(_dump(_Evil(f"touch {probe}")))
    assert probe.exists()

    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(payload)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt)\.system from .*data_batch_1"):
        load_dataset("cifar10", "train", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(V__import__('os').system('true')\ntR.",
        b"csubprocess\nPopen\n(Vtrue\ntR.",
        b"cnumpy\nload\n(Vx\ntR.",
        b"cbuiltins\ngetattr\n.",
    ],
)
def test_restricted_unpickler_refuses_other_globals(payload):
    with pytest.raises(DataError, match="refusing to unpickle"):
        RestrictedUnpickler(io.BytesIO(payload), "crafted").load()


def test_malicious_pickle_inside_archive(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    (src / "test_batch").write_bytes(_dump({b"data": _Evil(f"touch {marker}"), b"labels": [0]}))
    _tar_dir(src, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda b: b.update({b"data": b[b"data"][:, :3000]}), "rows of 3072 bytes"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.int16)}), "rows of 3072 bytes"),
        (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "expected 4 labels"),
        (lambda b: b.update({b"labels": [0, 1, 2, 10]}), r"labels must lie in \[0, 9\]"),
        (lambda b: b.pop(b"data"), "missing key 'data'"),
    ],
)
def test_batch_validation(tmp_path, mutate, needle):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    b = _batch(4, 3)
    mutate(b)
    (d / "test_batch").write_bytes(_dump(b))
    with pytest.raises(DataError, match=needle) as exc:
        load_dataset("cifar10", "test", root=tmp_path)
    assert "test_batch" in str(exc.value)


def test_garbage_and_non_dict_batches(tmp_path):
    with pytest.raises(DataError, match="not a valid CIFAR python batch"):
        unpickle_batch(b"\x80\x02}q\x00(", "cut")
    with pytest.raises(DataError, match="expected a pickled dict, found list"):
        unpickle_batch(_dump([1, 2]), "list")


def test_archive_missing_member_and_truncated_archive(tmp_path):
    src = tmp_path / "src"
    make_cifar10(src)
    (src / "cifar-10-batches-py" / "data_batch_3").unlink()
    archive = _tar_dir(src / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_3"):
        load_dataset("cifar10", "train", root=tmp_path)
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DataError, match="corrupt or truncated archive") as exc:
        load_dataset("cifar10", "test", root=tmp_path, cache=False)
    assert str(archive) in str(exc.value)


def test_missing_cifar_lists_files_and_dirs(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("cifar100", "test", root=tmp_path)
    msg = str(exc.value)
    assert "cifar-100-python/{test}" in msg and "cifar-100-python.tar.gz" in msg
    for d in (tmp_path, tmp_path / "cifar100", tmp_path / "cifar-100"):
        assert f"  {d}\n" in msg
    assert "download=True" in msg and "KDKIT_DATA" in msg
