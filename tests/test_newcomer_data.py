"""Issue 28, a newcomer's own ImageFolder data: conditions that used to give silently wrong numbers are now
errors before training or explicit, printed choices (classes, splits, subset sizes, resolution)."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from rich.console import Console

from kdkit.checkpoint import save_checkpoint
from kdkit.cli import main
from kdkit.config import DataConfig, build_config
from kdkit.data.bundle import load_data
from kdkit.engine import Engine
from kdkit.errors import DataError, ModelError
from kdkit.experiment import run_experiment
from kdkit.models import create
from kdkit.preflight import preflight


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "kdkit-cache"))


def _png(value: int, size: int = 8) -> bytes:
    """A tiny PNG whose red channel is ``value`` and green channel the class marker: every image is unique."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value % 256, value // 256 * 40, 7)).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path, layout: dict[str, int], start: int = 0) -> Path:
    """Write ``layout`` ({'<split>/<class>': image count}) as PNGs with distinct pixel values below ``root``."""
    value = start
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / folder / f"{i:03d}.png").write_bytes(_png(value))
            value += 1
    return root


def _data(root: Path, **fields) -> DataConfig:
    return DataConfig(**{"dataset": f"imagefolder:{root}", "val_size": 0, **fields})


def _red(ds) -> list[int]:
    """The identifying pixel value of every image of a split."""
    return ds.images[:, 0, 0, 0].astype(int).tolist()


def test_class_missing_from_the_test_split_is_an_error_unless_allowed(tmp_path):
    root = _tree(
        tmp_path / "pets", {"train/ant": 2, "train/bee": 2, "train/cat": 2, "test/ant": 1, "test/cat": 1}
    )
    with pytest.raises(
        DataError, match=r"split 'test'.* no images of 1 of the 3 training classes: bee"
    ) as exc:
        load_data(_data(root), seed=0)
    assert "data.allow_missing_test_classes" in str(exc.value) and str(root) in str(exc.value)
    bundle = load_data(_data(root, allow_missing_test_classes=True), seed=0)
    # Labels follow the training class list: cat stays class 2 although the test split has two folders.
    assert bundle.test.classes == ["ant", "bee", "cat"]
    assert bundle.test.labels.tolist() == [0, 2]
    assert len(bundle.warnings) == 1 and "bee" in bundle.warnings[0]


def test_class_only_in_the_test_split_is_refused_before_training(tmp_path):
    root = _tree(
        tmp_path / "pets", {"train/ant": 2, "train/bee": 2, "test/ant": 1, "test/bee": 1, "test/zebra": 1}
    )
    with pytest.raises(
        DataError, match=r"split 'test'.*classes that the training split does not have: zebra"
    ):
        load_data(_data(root), seed=0)


def test_folder_without_splits_is_never_its_own_test_set(tmp_path):
    root = _tree(tmp_path / "flat", {"ant": 10, "bee": 10})
    with pytest.raises(
        DataError, match=r"no split directory 'test'.*every image is a training image.*test_size"
    ):
        load_data(_data(root), seed=0)
    bundle = load_data(_data(root, test_size=0.2, val_size=2), seed=0)
    assert np.bincount(bundle.test.labels).tolist() == [2, 2]  # held out per class
    assert len(bundle.train) + len(bundle.val) == 16
    assert not set(_red(bundle.test)) & set(_red(bundle.train) + _red(bundle.val))
    assert "held out" in bundle.test_source and "data.test_size=0.2" in bundle.test_source
    assert bundle.split["test_held_out"] == {"test_size": 0.2, "test_seed": 0}
    # The test set depends on data.test_seed only: runs of every seed are tested on the same images.
    assert _red(load_data(_data(root, test_size=0.2, val_size=2), seed=5).test) == _red(bundle.test)
    assert _red(load_data(_data(root, test_size=0.2, test_seed=1), seed=0).test) != _red(bundle.test)


def test_train_limit_draws_every_class_by_seed(tmp_path):
    layout = {f"train/c{k}": 6 for k in range(5)} | {f"test/c{k}": 2 for k in range(5)}
    root = _tree(tmp_path / "five", layout)
    bundle = load_data(_data(root, train_limit=10), seed=0)
    assert np.bincount(bundle.train.labels, minlength=5).tolist() == [2] * 5
    again = load_data(_data(root, train_limit=10), seed=0)
    other = load_data(_data(root, train_limit=10), seed=1)
    assert _red(again.train) == _red(bundle.train) and _red(other.train) != _red(bundle.train)
    assert bundle.split["train_limit"] == 10


def test_a_limit_that_leaves_classes_without_images_is_a_printed_warning(tmp_path):
    # test_limit keeps evenly spaced images, so a class-ordered test split stays balanced to within one image
    # per class; fewer images than classes cannot cover them all, and that is said.
    root = _tree(
        tmp_path / "five", {f"train/c{k}": 4 for k in range(5)} | {f"test/c{k}": 2 for k in range(5)}
    )
    balanced = load_data(_data(root, test_limit=5), seed=0)
    assert np.bincount(balanced.test.labels, minlength=5).tolist() == [1] * 5 and balanced.warnings == []
    bundle = load_data(_data(root, test_limit=3, train_limit=4), seed=0)
    test_warning = [w for w in bundle.warnings if "data.test_limit=3" in w]
    assert test_warning and "no images of 2 of the 5 classes: c1, c3" in test_warning[0]
    assert any("data.train_limit=4" in w and "1 of the 5 classes" in w for w in bundle.warnings)


def test_split_folders_are_named_and_checked(tmp_path):
    root = _tree(tmp_path / "flowers", {"train/daisy": 3, "train/rose": 3, "val/daisy": 1, "val/rose": 2})
    with pytest.raises(
        DataError, match=r"no split directory 'test' at top level; found directories train, val"
    ):
        load_data(_data(root), seed=0)
    bundle = load_data(_data(root, splits={"train": "train", "test": "val"}), seed=0)
    assert len(bundle.train) == 6 and bundle.test.labels.tolist() == [0, 1, 1]
    assert bundle.test_source == "test images from folder 'val'"
    with pytest.raises(
        DataError, match=r"no split directory 'holdout' at top level; found directories train, val"
    ):
        load_data(_data(root, splits={"test": "holdout"}), seed=0)
    with pytest.raises(ValueError, match="same folder 'train'"):
        _data(root, splits={"train": "train", "test": "train"})


@pytest.mark.parametrize("kind", ["dir", "tar"])
def test_empty_class_folder_is_refused_by_name(tmp_path, kind):
    root = _tree(tmp_path / "pets", {"train/ant": 2, "train/bee": 2, "test/ant": 1, "test/bee": 1})
    (root / "train" / "cat").mkdir()
    (root / "train" / "cat" / "notes.txt").write_text("images come later")
    source = root
    if kind == "tar":
        source = tmp_path / "pets.tar"
        with tarfile.open(source, "w") as tf:
            tf.add(root, arcname="pets")
    with pytest.raises(DataError, match=r"split 'train' has class folders without images at .*train: cat"):
        load_data(_data(source), seed=0)


def test_teacher_trained_at_another_resolution_is_refused_in_preflight(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a phase started training before the mistake was reported")

    monkeypatch.setattr(Engine, "fit", refuse)
    root = _tree(tmp_path / "pets", {"train/ant": 4, "train/bee": 4, "test/ant": 1, "test/bee": 1})
    teacher = create("resnet8", num_classes=2, in_channels=3, image_size=32)
    meta = {"kind": "model", "model": {"name": "resnet8"}, "num_classes": 2, "classes": ["ant", "bee"]}
    save_checkpoint(tmp_path / "teacher", teacher.state_dict(), {**meta, "in_channels": 3, "image_size": 32})
    cfg = build_config(
        {
            "data": {"dataset": f"imagefolder:{root}", "val_size": 0},
            "teacher": {"model": {"name": "resnet8"}, "checkpoint": str(tmp_path / "teacher")},
            "student": {"model": {"name": "resnet8"}},
            "phases": ["distill"],
        }
    )
    with pytest.raises(
        ModelError, match=r"trained on 32x32 images but this run's images are 8x8.*image_size: 32"
    ):
        preflight(cfg, load_data(cfg.data, cfg.seed))


def test_run_says_where_its_test_images_come_from_and_keeps_warnings(tmp_path):
    root = _tree(tmp_path / "flat", {"ant": 6, "bee": 6})
    cfg = build_config(
        {
            "name": "newcomer",
            "data": {"dataset": f"imagefolder:{root}", "val_size": 2, "test_size": 4, "test_limit": 1},
            "teacher": {"model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1, "batch_size": 4}},
            "student": {"model": {"name": "mlp", "hidden": [8]}},
            "phases": ["teacher"],
            "runtime": {"progress": False, "tensorboard": False},
        }
    )
    console = Console(file=io.StringIO(), width=300)
    summary = run_experiment(cfg, tmp_path / "run", console=console)
    out = console.file.getvalue()
    assert "4 held out of folder 'train'" in out and "warning: the test set (data.test_limit=1)" in out
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["data"] == summary["data"]
    assert "4 held out" in saved["data"]["test"]
    assert saved["data"]["warnings"] == [
        "the test set (data.test_limit=1) has no images of 1 of the 2 classes: bee"
    ]


def _teacher_config(tmp_path, root, meta_extra, **data):
    """A distill-only config whose teacher is a resnet8 checkpoint with the given metadata (8x8 images)."""
    teacher = create("resnet8", num_classes=2, in_channels=3, image_size=8)
    meta = {
        "kind": "model",
        "model": {"name": "resnet8"},
        "num_classes": 2,
        "in_channels": 3,
        "image_size": 8,
    }
    save_checkpoint(tmp_path / "teacher", teacher.state_dict(), {**meta, **meta_extra})
    return build_config(
        {
            "data": {"dataset": f"imagefolder:{root}", "val_size": 0, **data},
            "teacher": {"model": {"name": "resnet8"}, "checkpoint": str(tmp_path / "teacher")},
            "student": {"model": {"name": "resnet8"}},
            "phases": ["distill"],
        }
    )


def test_teacher_with_other_class_names_is_refused_in_preflight(tmp_path):
    root = _tree(tmp_path / "pets", {"train/ant": 4, "train/bee": 4, "test/ant": 1, "test/bee": 1})
    cfg = _teacher_config(tmp_path, root, {"classes": ["bee", "ant"]})
    with pytest.raises(ModelError, match=r"predicts the classes bee, ant but .* has ant, bee: its class ids"):
        preflight(cfg, load_data(cfg.data, cfg.seed))
    same = _teacher_config(tmp_path, root, {"classes": ["ant", "bee"]})
    preflight(same, load_data(same.data, same.seed))  # the same names in the same order pass


def test_teacher_trained_on_this_runs_held_out_test_images_is_refused(tmp_path):
    root = _tree(tmp_path / "flat", {"ant": 6, "bee": 6})
    dataset = f"imagefolder:{root}"
    whole = {"dataset": dataset, "images": 12, "val_size": 0, "split_seed": 0}  # trained on every image
    cfg = _teacher_config(tmp_path, root, {"classes": ["ant", "bee"], "data_split": whole}, test_size=4)
    with pytest.raises(ModelError, match=r"test hold-out none .* has trained on images this run tests on"):
        preflight(cfg, load_data(cfg.data, cfg.seed))
    held = {**whole, "images": 8, "test_held_out": {"test_size": 4.0, "test_seed": 0}}
    same = _teacher_config(tmp_path, root, {"classes": ["ant", "bee"], "data_split": held}, test_size=4)
    preflight(same, load_data(same.data, same.seed))  # the same hold-out passes


def test_kdkit_cache_runs_preflight_before_any_teacher_forward_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path / "pets", {"train/ant": 4, "train/bee": 4, "test/ant": 1, "test/bee": 1})
    teacher = create("resnet8", num_classes=2, in_channels=3, image_size=32)
    meta = {"kind": "model", "model": {"name": "resnet8"}, "num_classes": 2, "classes": ["ant", "bee"]}
    save_checkpoint(tmp_path / "teacher", teacher.state_dict(), {**meta, "in_channels": 3, "image_size": 32})
    cfg = {
        "data": {"dataset": f"imagefolder:{root}", "val_size": 0},
        "teacher": {"model": {"name": "resnet8"}, "checkpoint": str(tmp_path / "teacher")},
        "student": {"model": {"name": "resnet8"}},
        "distill": {"teacher_outputs": "cache"},
        "phases": ["distill"],
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cache", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err
    assert "trained on 32x32 images but this run's images are 8x8" in err
    assert not (tmp_path / "cache" / "teacher-outputs").exists()  # no teacher output computed or written
