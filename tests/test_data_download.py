"""download() against a local HTTP server, and load_dataset(download=True)."""

import functools
import hashlib
import http.server
import os
import socket
import stat
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from kdkit.data import DATASET_FILES, download, load_dataset, write_idx
from kdkit.errors import DataError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve tmp_path/www on 127.0.0.1 (ephemeral port); yields (base_url, served_dir)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www))
    )
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "kdkit-cache"))


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_download_success_verifies_both_hashes(server, tmp_path):
    base, www = server
    payload = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)  # several chunks
    (www / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    got = download(
        base + "blob.bin",
        dest,
        md5=hashlib.md5(payload).hexdigest(),
        sha256=hashlib.sha256(payload).hexdigest().upper(),  # case-insensitive
    )
    assert got == dest and dest.read_bytes() == payload
    assert _leftovers(dest.parent) == ["blob.bin"]  # no temp file left
    # a directory destination takes the URL's file name
    assert download(base + "blob.bin", tmp_path / "out") == dest


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, www = server
    (www / "f.gz").write_bytes(b"payload")
    dest = tmp_path / "out" / "f.gz"
    with pytest.raises(DataError) as exc:
        download(base + "f.gz", dest, md5="0" * 32)
    msg = str(exc.value)
    assert base + "f.gz" in msg and "0" * 32 in msg and hashlib.md5(b"payload").hexdigest() in msg
    assert _leftovers(dest.parent) == []
    with pytest.raises(DataError, match="expected sha256"):
        download(base + "f.gz", dest, sha256="ab" * 32)
    assert _leftovers(dest.parent) == []


def test_checksum_mismatch_keeps_existing_file(server, tmp_path):
    base, www = server
    (www / "f").write_bytes(b"new")
    dest = tmp_path / "f"
    dest.write_bytes(b"old")
    with pytest.raises(DataError, match="checksum mismatch"):
        download(base + "f", dest, md5="0" * 32)
    assert dest.read_bytes() == b"old" and _leftovers(tmp_path) == ["f", "www"]


def test_http_404(server, tmp_path):
    base, _ = server
    with pytest.raises(DataError, match="HTTP 404") as exc:
        download(base + "missing.gz", tmp_path / "out" / "missing.gz")
    assert base + "missing.gz" in str(exc.value)
    assert _leftovers(tmp_path / "out") == []


def test_offline_is_a_clear_error(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # a port nobody listens on: connection refused, like a dead network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="cannot download .*no network") as exc:
        download(f"http://127.0.0.1:{port}/x.gz", tmp_path / "x.gz", timeout=5)
    assert str(tmp_path / "x.gz") in str(exc.value)
    assert _leftovers(tmp_path) == []


def test_load_mnist_with_download(server, tmp_path, monkeypatch):
    base, www = server
    rng = np.random.default_rng(1)
    arrays = {
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, size=12).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(www / name, arr)
        info = DATASET_FILES["mnist"]["files"][name]
        # first mirror dead (404), second one serves the file
        monkeypatch.setitem(info, "urls", [base + "nope/" + name, base + name])
        monkeypatch.setitem(info, "md5", hashlib.md5((www / name).read_bytes()).hexdigest())
    root = tmp_path / "data"
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", "test", root=root)
    ds = load_dataset("mnist", "test", root=root, download=True)
    assert ds.images.shape == (12, 1, 28, 28)
    np.testing.assert_array_equal(ds.images[:, 0], arrays["t10k-images-idx3-ubyte.gz"])
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(arrays)
    # present now: no network needed
    assert len(load_dataset("mnist", "test", root=root)) == 12


def test_load_download_all_mirrors_fail(server, tmp_path, monkeypatch):
    base, _ = server
    for name in DATASET_FILES["mnist"]["splits"]["test"]:
        monkeypatch.setitem(
            DATASET_FILES["mnist"]["files"][name], "urls", [base + "a/" + name, base + "b/" + name]
        )
    with pytest.raises(
        DataError, match="could not download t10k-images-idx3-ubyte.gz .*from any mirror"
    ) as exc:
        load_dataset("mnist", "test", root=tmp_path, download=True)
    assert str(exc.value).count("HTTP 404") == 2


def test_load_cifar10_with_download(server, tmp_path, monkeypatch):
    import pickle

    base, www = server
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    data = np.random.default_rng(2).integers(0, 256, size=(5, 3072), dtype=np.uint8)
    (src / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3, 4]}, protocol=2))
    with tarfile.open(www / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="cifar-10-batches-py")
    info = DATASET_FILES["cifar10"]["files"]["cifar-10-python.tar.gz"]
    monkeypatch.setitem(info, "urls", [base + "cifar-10-python.tar.gz"])
    monkeypatch.setitem(info, "md5", hashlib.md5((www / "cifar-10-python.tar.gz").read_bytes()).hexdigest())
    ds = load_dataset("cifar10", "test", root=tmp_path / "data", download=True)
    np.testing.assert_array_equal(ds.images.reshape(5, -1), data)
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()


def test_catalogue_holds_the_canonical_checksums():
    files = DATASET_FILES["mnist"]["files"]
    assert files["train-images-idx3-ubyte.gz"]["md5"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert files["train-labels-idx1-ubyte.gz"]["md5"] == "d53e105ee54ea40749a09fcbcd1e9432"
    assert files["t10k-images-idx3-ubyte.gz"]["md5"] == "9fb629c4189551a2d022fa330f9573f3"
    assert files["t10k-labels-idx1-ubyte.gz"]["md5"] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert files["train-images-idx3-ubyte.gz"]["urls"][0] == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
    )
    c10 = DATASET_FILES["cifar10"]["files"]["cifar-10-python.tar.gz"]
    assert c10["md5"] == "c58f30108f718f92721af3b95e74349a"
    assert c10["urls"] == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    c100 = DATASET_FILES["cifar100"]["files"]["cifar-100-python.tar.gz"]
    assert c100["md5"] == "eb9058c3a382ffc7106e4002c42a8d85"


def test_a_download_is_as_readable_as_a_plain_create(server, tmp_path):
    base, www = server
    (www / "blob.bin").write_bytes(b"abc")
    before = os.umask(0o027)
    try:
        dest = download(base + "blob.bin", tmp_path / "out")
    finally:
        os.umask(before)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640  # not mkstemp's 0o600
