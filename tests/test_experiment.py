"""End to end: the CLI on real MNIST, run-directory safety, class omission and bias adjustment."""

import json

import pytest
import torch
import yaml

from kdkit.class_bias import adjust_class_bias
from kdkit.cli import main
from kdkit.config import build_config
from kdkit.errors import ConfigError, RunDirError
from kdkit.experiment import run_experiment
from kdkit.model_io import load_model
from kdkit.models import create
from kdkit.run_dir import prepare_run_dir

SMALL = {
    "name": "tiny",
    "data": {"dataset": "mnist", "val_size": 2000, "train_limit": 12000},
    "teacher": {
        "model": {"name": "mlp", "hidden": [256, 256], "dropout": 0.2},
        "train": {"epochs": 6, "batch_size": 128, "lr": 0.1},
    },
    "student": {
        "model": {"name": "mlp", "hidden": [64]},
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.1},
    },
    "distill": {"temperature": 4.0, "alpha": 0.9, "beta": 0.1},
    "runtime": {"progress": False, "log_every": 20},
}


def test_cli_run_on_real_mnist_writes_a_complete_run_dir(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("KDKIT_DATA", str(data_root))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--run-dir", str(run), "--set", "seed=1"]) == 0

    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "student_scratch", "student_kd"}
    for rec in summary["models"].values():
        for key in ("accuracy", "errors", "val_accuracy", "params", "size_mb", "train_seconds"):
            assert key in rec
        assert rec["test_size"] == 10000
        assert rec["errors"] == round((1 - rec["accuracy"]) * 10000)
        assert sum(rec["errors_per_class"]) == rec["errors"]
    t = summary["models"]["teacher"]
    assert t["accuracy"] > 0.95, t  # 6 epochs of a 256-256 MLP on 10k real images: ~96%
    assert summary["models"]["student_kd"]["accuracy"] > 0.90
    assert t["params"] == 784 * 256 + 256 + 256 * 256 + 256 + 2570
    # The resolved config (every default, plus the override) is saved with the run.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        saved["seed"] == 1
        and saved["distill"]["temperature"] == 4.0
        and saved["runtime"]["precision"] == "auto"
    )
    # Metrics: per-log and per-epoch records for each phase, and TensorBoard event files.
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in recs} == {"teacher", "student_scratch", "student_kd"}
    assert any("val_accuracy" in r for r in recs) and any("samples_per_second" in r for r in recs)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # The table is printed.
    err = capsys.readouterr().err
    assert "student (distilled)" in err and "errors" in err

    # A saved checkpoint evaluates to exactly the summary's numbers through `kdkit eval`.
    ckpt = run / "checkpoints" / "student_kd.safetensors"
    assert main(["eval", str(ckpt)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["errors"] == summary["models"]["student_kd"]["errors"] and out["total"] == 10000
    model, meta = load_model(ckpt)
    assert meta["role"] == "student_kd" and meta["classes"][3] == "3"

    # Re-running into the same directory is refused without --overwrite, and nothing is touched.
    before = (run / "summary.json").read_bytes()
    assert main(["run", str(cfg), "--run-dir", str(run)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (run / "summary.json").read_bytes() == before

    # Distilling from the saved teacher checkpoint (single phase) reproduces the teacher's numbers.
    run2 = tmp_path / "run2"
    teacher_ckpt = run / "checkpoints" / "teacher.safetensors"
    assert (
        main(
            [
                "distill",
                str(cfg),
                "--teacher",
                str(teacher_ckpt),
                "--run-dir",
                str(run2),
                "--set",
                "student.train.epochs=1",
            ]
        )
        == 0
    )
    s2 = json.loads((run2 / "summary.json").read_text())
    assert s2["models"]["teacher"]["errors"] == t["errors"]
    assert set(s2["models"]) == {"teacher", "student_kd"}


def test_cli_errors_exit_2_with_field_path(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, "distill": {"temprature": 2}}))
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "distill.temprature" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg.write_text(yaml.safe_dump({**SMALL, "student": {"model": {"name": "mlp", "hiden": [3]}}}))
    assert (
        main(["run", str(cfg), "--run-dir", str(tmp_path / "r2"), "--set", "data.dataset=mnist-small"]) == 2
    )
    err = capsys.readouterr().err
    assert "student.model" in err and "hiden" in err
    with pytest.raises(SystemExit) as e:
        main(["run"])
    assert e.value.code == 2


def test_run_dir_safety(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        prepare_run_dir(d)
    with pytest.raises(RunDirError, match="did not write"):
        prepare_run_dir(d, overwrite=True)
    assert (d / "notes.txt").read_text() == "mine"
    k = tmp_path / "k"
    (k / "checkpoints").mkdir(parents=True)
    (k / "summary.json").write_text("{}")
    prepare_run_dir(k, overwrite=True)
    assert k.is_dir() and not any(k.iterdir())


def test_omit_classes_and_class_bias_on_embedded_data(tmp_path):
    raw = {
        **SMALL,
        "data": {"dataset": "mnist-small", "val_size": 500},
        "distill": {"omit_classes": [3], "class_bias": {3: 2.5}},
        "phases": ["teacher", "distill"],
    }
    raw["teacher"] = {**raw["teacher"], "train": {"epochs": 1, "batch_size": 128}}
    raw["student"] = {**raw["student"], "train": {"epochs": 1, "batch_size": 128}}
    summary = run_experiment(build_config(raw), tmp_path / "run")
    kd = summary["models"]["student_kd"]
    assert kd["omitted_classes"] == [3]
    # mnist-small is class-balanced (about 1,000 per class): omitting the 3s drops about a tenth.
    assert 9500 - 1000 <= kd["transfer_size"] <= 9500 - 900
    assert kd["before_class_bias"]["errors_per_class"][3] >= kd["errors_per_class"][3]
    model, meta = load_model(tmp_path / "run" / "checkpoints" / "student_kd")
    assert meta["metrics"]["class_bias"] == {"3": 2.5}


def test_adjust_class_bias_adds_exactly():
    m = create("mlp", num_classes=4, in_channels=1, image_size=4, hidden=[3])
    before = m.classifier.bias.detach().clone()
    adjust_class_bias(m, {1: 3.5})
    torch.testing.assert_close(m.classifier.bias.detach(), before + torch.tensor([0, 3.5, 0, 0]))
    with pytest.raises(ConfigError, match="out of range"):
        adjust_class_bias(m, {7: 1.0})


def test_distill_without_teacher_is_refused(tmp_path):
    cfg = build_config({**SMALL, "phases": ["distill"]})
    with pytest.raises(ConfigError, match="needs a teacher"):
        run_experiment(cfg, tmp_path / "r")


def test_test_limit_keeps_evenly_spaced_test_images(data_root):
    from kdkit.config import DataConfig
    from kdkit.data import load_dataset
    from kdkit.data.bundle import load_data

    full = load_dataset("mnist-small", "test")
    bundle = load_data(DataConfig(dataset="mnist-small", val_size=100, test_limit=7), seed=0)
    step = (len(full) - 1) / 6
    keep = [round(i * step) for i in range(7)]
    assert len(bundle.test) == 7 and keep[0] == 0 and keep[-1] == len(full) - 1
    assert bundle.test.labels.tolist() == full.labels[keep].tolist()
    assert (bundle.test.images == full.images[keep]).all()


def test_teacher_trained_on_the_validation_images_is_flagged(tmp_path):
    """A student seeded differently from its teacher.checkpoint gets another val split, part of which the teacher
    trained on: its validation figures would be inflated. kdkit counts those images, warns, and
    data.split_seed keeps one split across seeds."""
    import io

    from rich.console import Console

    from kdkit import data as kdata
    from kdkit.data.bundle import load_data, val_images_trained_on

    base = {
        **SMALL,
        "data": {"dataset": "mnist-small", "val_size": 1000},
        "phases": ["teacher"],
        "teacher": {**SMALL["teacher"], "train": {"epochs": 1, "batch_size": 256}},
        "student": {**SMALL["student"], "train": {"epochs": 1, "batch_size": 256}},
    }
    run_experiment(build_config(base), tmp_path / "teacher")
    ckpt = tmp_path / "teacher" / "checkpoints" / "teacher.safetensors"
    _, meta = load_model(ckpt)
    assert meta["data_split"] == {
        "dataset": "mnist-small",
        "images": 10000,
        "val_size": 1000,
        "split_seed": 0,
    }

    # The recorded split is drawn again from the labels alone: the same validation images as the run's.
    full = kdata.load_dataset("mnist-small", "train")
    mask = kdata.val_mask(full.labels, full.num_classes, 1000, 0)
    _, val = kdata.split_train_val(full, 1000, 0)
    assert mask.sum() == 1000 and (full.labels[mask] == val.labels).all()
    assert (full.images[mask] == val.images).all()

    def distil(seed: int, **data: object) -> tuple[dict, str]:
        raw = {
            **base,
            "seed": seed,
            "data": {**base["data"], **data},
            "phases": ["distill"],
            "teacher": {**base["teacher"], "checkpoint": str(ckpt)},
        }
        out = io.StringIO()
        runs = len(list(tmp_path.glob("student-*")))
        summary = run_experiment(
            build_config(raw), tmp_path / f"student-{runs}", console=Console(file=out, width=10_000)
        )
        return summary["models"]["teacher"], out.getvalue()

    same, said = distil(0)
    assert same["val_images_trained_on"] == 0 and "warning" not in said
    other, said = distil(1)
    # Seed 1 draws another 1,000 of the 10,000: about 90% of them were in the teacher's training set.
    bundle = load_data(build_config({**base, "seed": 1}).data, 1)
    expected = int((bundle.val_of_full & ~mask).sum())
    assert 800 <= other["val_images_trained_on"] == expected < 1000
    assert f"was trained on {expected:,} of this run's 1,000 validation images" in said
    assert "data.val_size=1000 and data.split_seed=0" in said
    fixed, said = distil(1, split_seed=0)
    assert fixed["val_images_trained_on"] == 0 and "warning" not in said

    # A teacher trained on every image has seen every validation image; a foreign split cannot be judged.
    assert val_images_trained_on(bundle, {**meta["data_split"], "val_size": 0}) == 1000
    assert val_images_trained_on(bundle, {**meta["data_split"], "dataset": "cifar10"}) is None
    assert val_images_trained_on(bundle, None) is None
    assert (
        val_images_trained_on(bundle, {"dataset": "mnist-small", "images": 10000}) is None
    )  # not kdkit's record

    # A teacher trained on every training image: the advice is not to pick its split (there is none unseen).
    run_experiment(build_config({**base, "data": {**base["data"], "val_size": 0}}), tmp_path / "teacher-all")
    ckpt = tmp_path / "teacher-all" / "checkpoints" / "teacher.safetensors"
    whole, said = distil(0)
    assert whole["val_images_trained_on"] == 1000
    assert "trained on the whole training set, so no validation split of it is unseen" in said
