"""data_root precedence, dataset names, splits and the not-found message."""

from pathlib import Path

import pytest

from kdkit.data import data_root, load_dataset
from kdkit.errors import DataError, KdkitError


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKIT_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_root(str(tmp_path / "s")) == tmp_path / "s"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("KDKIT_DATA")
    assert data_root() == Path.home() / ".cache" / "kdkit" / "data"
    monkeypatch.setenv("KDKIT_DATA", "")  # empty means unset
    assert data_root() == Path.home() / ".cache" / "kdkit" / "data"


def test_missing_mnist_message_lists_files_dirs_and_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKIT_DATA", str(tmp_path))
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", "train")
    msg = str(exc.value)
    assert isinstance(exc.value, KdkitError)
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte"):
        assert f in msg
    for d in (tmp_path / "mnist", tmp_path / "MNIST" / "raw", tmp_path):
        assert f"  {d}\n" in msg
    assert "KDKIT_DATA environment variable" in msg
    assert "set KDKIT_DATA" in msg and "root=" in msg and "download=True" in msg


def test_missing_cifar10_jpg_is_not_downloadable(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10-jpg", "test", root=tmp_path)
    msg = str(exc.value)
    assert "cifar10-jpg.tar.gz" in msg and f"  {tmp_path}\n" in msg and "the root argument" in msg
    assert "no public download" in msg


def test_missing_with_default_root(tmp_path, monkeypatch):
    monkeypatch.delenv("KDKIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"KDKIT_DATA is not set") as exc:
        load_dataset("cifar10", "test")
    assert str(tmp_path / ".cache" / "kdkit" / "data") in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "imagenet"}, "unknown dataset 'imagenet'; expected one of mnist, mnist-small"),
        ({"name": "mnist", "split": "val"}, "unknown split 'val'; expected one of train, test"),
        ({"name": "mnist-small", "image_size": 32}, "image_size=32 is only supported"),
        ({"name": "mnist-small", "image_size": 0}, "positive int"),
        ({"name": "cifar10-jpg", "split": "validation"}, "unknown split"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, needle):
    with pytest.raises(DataError, match=needle):
        load_dataset(root=tmp_path, **kwargs)


def test_native_image_size_is_accepted():
    assert load_dataset("mnist-small", "test", image_size=28).images.shape == (2000, 1, 28, 28)
