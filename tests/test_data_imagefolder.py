"""ImageFolder data: the real cifar10-jpg and flowers archives, synthetic folders/tars, the decode cache."""

import io
import os
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdkit.data import CIFAR10_CLASSES, DataCacheWarning, load_dataset
from kdkit.data import sources as sources_mod
from kdkit.errors import DataError


def _real_root() -> Path | None:
    """$KDKIT_DATA, else the shared/data directory beside the repository."""
    env = os.environ.get("KDKIT_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return root if root.is_dir() else None


def _need(name: str) -> Path:
    root = _real_root()
    if root is None or not (root / name).is_file():
        pytest.skip(f"{name} not found: set KDKIT_DATA (or provide ../shared/data beside the repo)")
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Never let a test write a cache next to the shared data.
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "kdkit-cache"))


@pytest.fixture(scope="module")
def cifar_jpg_test(tmp_path_factory):
    """The real cifar10-jpg test split, decoded once into a module-private cache."""
    root = _need("cifar10-jpg.tar.gz")
    cache = tmp_path_factory.mktemp("cifar-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDKIT_CACHE", str(cache))
        t0 = time.perf_counter()
        ds = load_dataset("cifar10-jpg", "test", root=root)
        cold = time.perf_counter() - t0
    return ds, cold, cache, root


# ---------------------------------------------------------------- real archives


def test_cifar10_jpg_test_split(cifar_jpg_test):
    ds, cold, _, _ = cifar_jpg_test
    assert ds.images.shape == (10000, 3, 32, 32) and ds.images.dtype == np.uint8
    assert ds.images.flags.c_contiguous
    assert ds.classes == CIFAR10_CLASSES
    assert np.bincount(ds.labels, minlength=10).tolist() == [1000] * 10
    assert ds.name == "cifar10-jpg/test"
    # Channel means of the canonical CIFAR-10 test set (RGB order, CHW layout); JPEG moves them < 1e-3.
    np.testing.assert_allclose(ds.images.mean(axis=(0, 2, 3)) / 255, [0.4942, 0.4851, 0.4504], atol=2e-3)
    assert cold < 30


def test_cifar10_jpg_second_load_is_served_from_cache(cifar_jpg_test, monkeypatch):
    ds, cold, cache, root = cifar_jpg_test
    files = list(cache.glob("cifar10-jpg_test-*.npz"))
    assert len(files) == 1 and files[0].stat().st_size > ds.images.nbytes
    monkeypatch.setenv("KDKIT_CACHE", str(cache))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(sources_mod, "decode_all", no_decoding)
    monkeypatch.setattr(sources_mod, "scan_archive", no_decoding)
    t0 = time.perf_counter()
    again = load_dataset("cifar10-jpg", "test", root=root)
    warm = time.perf_counter() - t0
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.labels, ds.labels)
    assert again.classes == ds.classes and again.name == ds.name
    assert warm < cold / 5


def test_flowers_val_needs_image_size(tmp_path):
    root = _need("flowers-112.tar.gz")
    spec = f"imagefolder:{root / 'flowers-112.tar.gz'}"
    with pytest.raises(
        DataError, match=r"images differ in size: .*flowers-112/val/daisy/.*jpg is \d+x112 but .*jpg"
    ) as exc:
        load_dataset(spec, "val", cache=False)
    assert "image_size=" in str(exc.value)
    ds = load_dataset(spec, "val", image_size=64)
    assert ds.images.shape == (736, 3, 64, 64)
    assert ds.classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert ds.name == "imagefolder:flowers-112/val"
    with pytest.raises(DataError, match="no split directory 'test'.*found directories train, val"):
        load_dataset(spec, "test", image_size=64, cache=False)


def test_truncated_real_archive(tmp_path):
    root = _need("cifar10-jpg.tar.gz")
    cut = tmp_path / "cifar10-jpg.tar.gz"
    with open(root / "cifar10-jpg.tar.gz", "rb") as f:
        cut.write_bytes(f.read(2_000_000))
    with pytest.raises(DataError, match="corrupt or truncated archive") as exc:
        load_dataset("cifar10-jpg", "test", root=tmp_path)
    assert str(cut) in str(exc.value)


def test_corrupt_gzip_archive(tmp_path):
    root = _need("cifar10-jpg.tar.gz")
    bad = tmp_path / "cifar10-jpg.tar.gz"
    with open(root / "cifar10-jpg.tar.gz", "rb") as f:
        data = bytearray(f.read(3_000_000))
    data[1_000_000:1_000_400] = bytes(400)
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt (or truncated )?archive") as exc:
        load_dataset("cifar10-jpg", "test", root=tmp_path)
    assert str(bad) in str(exc.value)


# ---------------------------------------------------------------- synthetic folders


def _jpeg(color, size=(8, 8), fmt="JPEG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def _make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w" if path.suffix == ".tar" else "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


SPLIT_TREE = {
    "train/cat/b.jpg": _jpeg((250, 0, 0)),
    "train/cat/a.png": _jpeg((240, 10, 0), fmt="PNG"),
    "train/dog/x.jpg": _jpeg((0, 0, 250)),
    "train/dog/.hidden.jpg": b"not an image",
    "train/dog/notes.txt": b"ignored",
    "val/cat/c.jpg": _jpeg((250, 0, 0)),
    "val/dog/d.jpg": _jpeg(128, mode="L"),
}


@pytest.mark.parametrize("kind", ["dir", "tar", "tar-with-wrapper"])
def test_split_layouts(tmp_path, kind):
    if kind == "dir":
        src = _write_tree(tmp_path / "pets", SPLIT_TREE)
    elif kind == "tar":
        src = _make_tar(tmp_path / "pets.tar.gz", SPLIT_TREE)
    else:
        src = _make_tar(tmp_path / "pets.tgz", {f"pets/{k}": v for k, v in SPLIT_TREE.items()})
    train = load_dataset(f"imagefolder:{src}", "train")
    assert train.classes == ["cat", "dog"]
    assert train.labels.tolist() == [0, 0, 1]  # classes sorted, files sorted: a.png, b.jpg, x.jpg
    assert train.images.shape == (3, 3, 8, 8)
    assert train.images[0, 0].min() > 200 and train.images[2, 2].min() > 200  # red cat, blue dog
    val = load_dataset(f"imagefolder:{src}", "val")
    assert val.labels.tolist() == [0, 1]
    assert np.all(np.abs(val.images[1].astype(int) - 128) <= 2)  # grayscale -> 3 equal channels
    with pytest.raises(DataError, match="no split directory 'test'.*found directories train, val"):
        load_dataset(f"imagefolder:{src}", "test")


def test_class_dirs_directly_are_the_training_split_and_relative_paths(tmp_path, monkeypatch):
    _write_tree(tmp_path / "data" / "flat", {"b/1.jpg": _jpeg((0, 255, 0)), "a/2.jpg": _jpeg((255, 0, 0))})
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("imagefolder:data/flat", "train", root=tmp_path / "elsewhere")
    assert ds.classes == ["a", "b"] and ds.labels.tolist() == [0, 1]
    # Any other split of a folder without split directories would be its training images again.
    with pytest.raises(DataError, match="no split directory 'anything'.*data.test_size"):
        load_dataset("imagefolder:data/flat", "anything", root=tmp_path / "elsewhere")
    monkeypatch.chdir("/")
    ds2 = load_dataset("imagefolder:flat", "train", root=tmp_path / "data")  # found below the data root
    np.testing.assert_array_equal(ds.images, ds2.images)


def test_image_size_resizes_shorter_side_and_center_crops(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    _write_tree(
        tmp_path / "f", {"c/wide.png": buf.getvalue(), "c/square.png": _jpeg((0, 255, 0), (30, 30), "PNG")}
    )
    ds = load_dataset(f"imagefolder:{tmp_path / 'f'}", image_size=10)
    assert ds.images.shape == (2, 3, 10, 10)
    wide = ds.images[1]  # sorted: square.png, wide.png
    assert wide[0, :, 0].min() > 240 and wide[2, :, 9].min() > 240  # crop keeps red left, blue right
    assert (ds.images[0, 1] == 255).all()


def test_corrupt_jpeg_inside_tar_is_named(tmp_path):
    good = _jpeg((1, 2, 3))
    archive = _make_tar(
        tmp_path / "bad.tar", {"a/ok.jpg": good, "a/broken.jpg": good[: len(good) // 2], "b/ok.jpg": good}
    )
    with pytest.raises(DataError, match=r"bad\.tar:a/broken\.jpg: cannot decode image"):
        load_dataset(f"imagefolder:{archive}")
    archive = _make_tar(tmp_path / "bad2.tar.gz", {"a/x.jpg": b"\xff\xd8\xff garbage", "b/y.jpg": good})
    with pytest.raises(DataError, match=r"bad2\.tar\.gz:a/x\.jpg"):
        load_dataset(f"imagefolder:{archive}")


@pytest.mark.parametrize("name", ["../evil/x.jpg", "/abs/x.jpg", "a/../../x.jpg"])
def test_unsafe_member_names_are_refused(tmp_path, name):
    archive = _make_tar(tmp_path / "evil.tar.gz", {"c/ok.jpg": _jpeg(0), name: _jpeg(0)})
    with pytest.raises(DataError, match="unsafe archive member"):
        load_dataset(f"imagefolder:{archive}")


def test_corrupt_tar_header_is_not_a_silent_end_of_archive(tmp_path):
    # tarfile stops quietly at a bad header; the loader must not return the members before it.
    data = _jpeg(0)
    archive = tmp_path / "hdr.tar"
    _make_tar(archive, {"a/1.jpg": data, "a/2.jpg": data, "b/3.jpg": data})
    raw = bytearray(archive.read_bytes())
    second_header = 512 + (len(data) + 511) // 512 * 512
    raw[second_header : second_header + 100] = b"x" * 100
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"invalid tar header at byte {second_header}") as exc:
        load_dataset(f"imagefolder:{archive}")
    assert str(archive) in str(exc.value)


def test_links_in_archives_are_skipped(tmp_path):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        data = _jpeg(0)
        info = tarfile.TarInfo("c/real.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("c/link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    with pytest.warns(UserWarning, match="ignored 1 non-regular"):
        ds = load_dataset(f"imagefolder:{archive}", cache=False)
    assert len(ds) == 1


def test_missing_and_malformed_folders(tmp_path):
    with pytest.raises(DataError, match="not found") as exc:
        load_dataset("imagefolder:nothing-here", root=tmp_path)
    assert str(tmp_path) in str(exc.value)
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(DataError, match="expected a directory or a .tar"):
        load_dataset(f"imagefolder:{tmp_path / 'plain.txt'}")
    _write_tree(tmp_path / "flatimgs", {"1.jpg": _jpeg(0)})
    with pytest.raises(DataError, match="no class directories"):
        load_dataset(f"imagefolder:{tmp_path / 'flatimgs'}")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("imagefolder:")


# ---------------------------------------------------------------- cache behaviour


def test_cache_invalidated_when_source_changes(tmp_path):
    src = _write_tree(tmp_path / "f", {"a/1.png": _jpeg((10, 10, 10), fmt="PNG")})
    first = load_dataset(f"imagefolder:{src}")
    assert first.images[0, 0, 0, 0] == 10
    Image.new("RGB", (8, 8), (200, 200, 200)).save(src / "a" / "1.png")
    os.utime(src / "a" / "1.png", ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    assert load_dataset(f"imagefolder:{src}").images[0, 0, 0, 0] == 200
    assert len(list((tmp_path / "kdkit-cache").glob("*.npz"))) == 2


def test_corrupt_cache_file_is_rebuilt_with_warning(tmp_path):
    src = _write_tree(tmp_path / "f", {"a/1.png": _jpeg((10, 20, 30), fmt="PNG")})
    good = load_dataset(f"imagefolder:{src}")
    (cache_file,) = (tmp_path / "kdkit-cache").glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with pytest.warns(DataCacheWarning, match="ignoring corrupt dataset cache file"):
        again = load_dataset(f"imagefolder:{src}")
    np.testing.assert_array_equal(again.images, good.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: the third load is clean
        load_dataset(f"imagefolder:{src}")


def test_unwritable_cache_dir_warns_and_loads(tmp_path, monkeypatch):
    src = _write_tree(tmp_path / "f", {"a/1.png": _jpeg((10, 20, 30), fmt="PNG")})
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("KDKIT_CACHE", str(blocker / "cache"))
    with pytest.warns(DataCacheWarning, match="continuing without caching"):
        ds = load_dataset(f"imagefolder:{src}")
    assert ds.images.shape == (1, 3, 8, 8)
    # read-only data root and no KDKIT_CACHE: nothing beside the data; the user's own cache is used instead
    monkeypatch.delenv("KDKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ro = tmp_path / "ro"
    _write_tree(ro, {"f/a/1.png": _jpeg(0, fmt="PNG")})
    ro.chmod(0o555)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_dataset("imagefolder:f", root=ro)
        assert not (ro / ".kdkit-cache").exists()
        assert len(list((tmp_path / "xdg" / "kdkit" / "decoded").glob("*.npz"))) == 1
    finally:
        ro.chmod(0o755)


def test_cache_false_writes_nothing(tmp_path):
    src = _write_tree(tmp_path / "f", {"a/1.png": _jpeg(0, fmt="PNG")})
    load_dataset(f"imagefolder:{src}", cache=False)
    assert not (tmp_path / "kdkit-cache").exists()
