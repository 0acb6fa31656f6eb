"""Config mistakes fail before any phase trains, and before the run directory is made (kdkit.preflight)."""

import random

import numpy as np
import pytest
import torch

from kdkit.checkpoint import save_checkpoint
from kdkit.config import build_config
from kdkit.engine import Engine
from kdkit.errors import CheckpointError, ConfigError, KdkitError, ModelError
from kdkit.experiment import load_data, run_experiment
from kdkit.models import create
from kdkit.preflight import preflight

MLP2 = {"name": "mlp", "hidden": [32, 32]}
BASE = {
    "name": "pre",
    "data": {"dataset": "mnist-small", "val_size": 500},
    "teacher": {"model": MLP2, "train": {"epochs": 1}},
    "student": {"model": {"name": "mlp", "hidden": [16, 16]}, "train": {"epochs": 1}},
    "runtime": {"progress": False},
}
FITNET_FC2 = {"loss": "fitnet", "student": "features.fc2", "teacher": "features.fc2"}


def _cfg(**sections):
    return build_config({**BASE, **sections})


@pytest.fixture
def no_training(monkeypatch):
    """Make any phase that starts training fail the test: every mistake must be caught before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a phase started training before the mistake was reported")

    monkeypatch.setattr(Engine, "fit", refuse)


def _model_checkpoint(path, num_classes=10, kind="model"):
    m = create("mlp", num_classes=num_classes, in_channels=1, image_size=28, hidden=[8])
    meta = {"kind": kind, "model": {"name": "mlp", "hidden": [8]}, "num_classes": num_classes}
    save_checkpoint(path, m.state_dict(), {**meta, "in_channels": 1, "image_size": 28})
    return str(path)


CASES = {
    "student model name": (
        {"student": {"model": {"name": "mlpp"}}},
        ConfigError,
        r"student.model: unknown model 'mlpp'\. Did you mean 'mlp'",
    ),
    "student model option": (
        {"student": {"model": {"name": "mlp", "hiden": [8]}}},
        ConfigError,
        r"student.model: .*hiden",
    ),
    "ensemble member model": (
        {"teacher": {"ensemble": [{"model": MLP2}, {"model": {"name": "resnet9"}}]}},
        ConfigError,
        r"teacher.ensemble\[1\].model: unknown model 'resnet9'",
    ),
    "omitted class out of range": (
        {"distill": {"omit_classes": [3, 11]}},
        ConfigError,
        r"distill.omit_classes: class ids \[11\] are out of range; expected ids in \[0, 9\]",
    ),
    "every class omitted": (
        {"distill": {"omit_classes": list(range(10))}},
        ConfigError,
        r"removes every one of the 10 classes",
    ),
    "class bias out of range": (
        {"distill": {"class_bias": {3: 1.0, 10: 3.5}}},
        ConfigError,
        r"distill.class_bias: class ids \[10\] are out of range",
    ),
    "unknown loss": (
        {"distill": {"terms": [{"loss": "kd"}, {"loss": "kdd"}]}},
        ConfigError,
        r"distill\.terms\.1\.loss: .*unknown loss 'kdd'",  # refused when the config is validated
    ),
    "student module path": (
        {"distill": {"terms": [{"loss": "kd"}, {**FITNET_FC2, "student": "features.fc9"}]}},
        ConfigError,
        r"student \(MLP\) has no module 'features.fc9'",
    ),
    "loss option": (
        {
            "distill": {
                "terms": [
                    {
                        "loss": "similarity_preserving",
                        "student": "features.fc2",
                        "teacher": "features.fc2",
                        "options": {"gamma": 2},
                    }
                ]
            }
        },
        ConfigError,
        r"distill\.terms\.0\.options: .*unknown option 'gamma' of loss 'similarity_preserving'",
    ),
    # takd: the assistant (one hidden layer) teaches the student, and has no features.fc2 to read.
    "path of the assistant as teacher": (
        {
            "strategy": {"kind": "takd", "assistant": {"model": {"name": "mlp", "hidden": [24]}}},
            "distill": {"terms": [{"loss": "kd"}, {**FITNET_FC2, "student": "features.fc1"}]},
        },
        ConfigError,
        r"teacher \(MLP\) has no module 'features.fc2'",
    ),
    "mutual peer model": (
        {"strategy": {"kind": "mutual", "peers": [MLP2, {"name": "mlpx"}]}},
        ConfigError,
        r"strategy.peers\[1\]: unknown model 'mlpx'",
    ),
    "ensemble checkpoint missing": (
        {"teacher": {"ensemble": [{"model": MLP2}, "nowhere/teacher"]}},
        CheckpointError,
        r"checkpoint metadata 'nowhere/teacher.json' is missing",
    ),
    "student checkpoint": (
        {"student": {"model": MLP2, "checkpoint": "somewhere/student"}},
        ConfigError,
        r"student: .*checkpoint is not used here",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mistakes_fail_before_training_and_before_the_run_dir(case, tmp_path, no_training):
    sections, error, message = CASES[case]
    run_dir = tmp_path / "run"
    with pytest.raises(error, match=message):
        run_experiment(_cfg(**sections), run_dir)
    assert not run_dir.exists()


def test_checkpoints_are_checked_before_training(tmp_path, no_training):
    four = _model_checkpoint(tmp_path / "four", num_classes=4)
    objective = _model_checkpoint(tmp_path / "objective", kind="objective")
    member = {"teacher": {"ensemble": [{"model": MLP2}, four]}}
    with pytest.raises(ModelError, match=r"teacher.ensemble\[1\].checkpoint .*four' predicts 4 classes"):
        run_experiment(_cfg(**member), tmp_path / "a")
    assistant = {"strategy": {"kind": "takd", "assistant": {"model": MLP2, "checkpoint": objective}}}
    with pytest.raises(CheckpointError, match=r"objective' is a 'objective' checkpoint, not a model"):
        run_experiment(_cfg(**assistant), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_compress_libraries_are_reported_before_training(tmp_path, monkeypatch, no_training):
    import sys

    for name in [m for m in sys.modules if m == "kdkit.compress" or m.startswith("kdkit.compress.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it fails
    with pytest.raises(
        KdkitError, match=r"kdkit.compress needs 'onnxruntime': pip install 'kdkit\[compress\]'"
    ):
        run_experiment(_cfg(compress={"prune_target": 0.3}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "sections",
    [
        {"distill": {"terms": [{"loss": "kd"}, FITNET_FC2], "omit_classes": [3], "class_bias": {3: 3.5}}},
        {
            "strategy": {"kind": "born_again", "generations": 2},
            "distill": {"terms": [{"loss": "kd"}, FITNET_FC2]},
        },
        {
            "strategy": {"kind": "takd", "assistant": {"model": {"name": "mlp", "hidden": [24, 24]}}},
            "distill": {
                "terms": [{"loss": "kd"}, {"loss": "rkd", "student": "features", "teacher": "features"}]
            },
        },
        {"strategy": {"kind": "mutual", "peers": [MLP2, {"name": "mlp", "hidden": [8]}]}},
    ],
    ids=["offline", "born_again", "takd", "mutual"],
)
def test_valid_configs_pass_and_leave_the_random_state_alone(sections, tmp_path):
    cfg = _cfg(**sections)
    bundle = load_data(cfg.data, cfg.seed)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    preflight(cfg, bundle)
    # The checks built models and drew a batch; the next draws are those of a run without them.
    after = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    assert after[:2] == expected[:2]
    torch.testing.assert_close(after[2], expected[2], rtol=0, atol=0)
