"""Config mistakes fail before any phase trains, and before the run directory is made (kdkit.preflight)."""

import random

import numpy as np
import pytest
import torch

from kdkit.checkpoint import save_checkpoint
from kdkit.config import build_config
from kdkit.data.bundle import load_data
from kdkit.engine import Engine
from kdkit.errors import CheckpointError, ConfigError, KdkitError, ModelError
from kdkit.experiment import run_experiment
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
        r"teacher\.ensemble\[1\]\.checkpoint: checkpoint 'nowhere/teacher' does not exist",
    ),
    "student checkpoint": (
        {"student": {"model": MLP2, "checkpoint": "somewhere/student"}},
        ConfigError,
        r"student: .*checkpoint is not used here",
    ),
}

LABELED = {"dataset": "mnist-small", "val_size": 500, "labeled_fraction": 0.5}
ENSEMBLE = {"ensemble": [{"model": MLP2}, {"model": {"name": "mlp", "hidden": [24]}}]}
# Rules that live in the planner (kdkit.strategies): they used to be checked by strategy code, some only
# once their phase started (teacher outputs that cannot serve the terms or the transfer set, an ensemble
# member with nothing to load or train, a relabelled set that would silently ignore omitted classes).
PLAN_CASES = {
    "joint with custom terms": (
        {"strategy": {"kind": "joint"}, "distill": {"terms": [{"loss": "kd"}]}},
        r"distill.terms: strategy.kind 'joint' trains with a response loss",
    ),
    "mutual with stored teacher outputs": (
        {"strategy": {"kind": "mutual"}, "distill": {"teacher_outputs": "precompute"}},
        r"distill.teacher_outputs: 'precompute' stores fixed outputs, but under strategy.kind 'mutual'",
    ),
    "joint with omitted classes": (
        {"strategy": {"kind": "joint"}, "distill": {"omit_classes": [3]}},
        r"distill.omit_classes / distill.class_bias apply to a student distilled from a fixed teacher",
    ),
    "joint teacher without gradient": (
        {"strategy": {"kind": "joint", "stop_teacher_gradient": True, "teacher_ce_weight": 0}},
        r"strategy.teacher_ce_weight: 0 with stop_teacher_gradient",
    ),
    "ensemble outside offline": (
        {"teacher": ENSEMBLE, "strategy": {"kind": "born_again"}},
        r"teacher.ensemble: strategy.kind 'born_again' trains or copies one teacher",
    ),
    "unlabeled data outside offline": (
        {"data": LABELED, "strategy": {"kind": "mutual"}},
        r"data.labeled_fraction / data.labeled_count: unlabeled transfer sets are taught offline",
    ),
    "compress without a distilled student pair": (
        {"strategy": {"kind": "mutual"}, "compress": {"prune_target": 0.3}},
        r"compress: it re-distills student_kd from the teacher checkpoint; strategy.kind 'mutual'",
    ),
    "distill without a teacher": (
        {"phases": ["scratch", "distill"]},
        r"phases: 'distill' needs a teacher: add 'teacher' to phases or set teacher.checkpoint",
    ),
    "ensemble member with nothing to load or train": (
        {"teacher": ENSEMBLE, "phases": ["scratch", "distill"]},
        r"teacher.ensemble\[0\] has no checkpoint and 'teacher' is not in phases",
    ),
    "precomputed outputs for feature terms": (
        {"distill": {"teacher_outputs": "precompute", "terms": [{"loss": "kd"}, FITNET_FC2]}},
        r"distill.teacher_outputs: 'precompute' keeps teacher logits only, but distill.terms read teacher features",
    ),
    "cached outputs for feature terms": (
        {"distill": {"teacher_outputs": "cache", "terms": [FITNET_FC2]}},
        r"distill.teacher_outputs: 'cache' keeps teacher logits only",
    ),
    "precomputed outputs of an augmented transfer set": (
        {"distill": {"teacher_outputs": "precompute", "train": {"epochs": 1, "augment": {"jitter": 2}}}},
        r"'precompute' keeps one teacher output per image, but the transfer set is augmented",
    ),
    "feature terms on fixed teacher logits": (
        {"data": LABELED, "distill": {"terms": [{"loss": "kd"}, FITNET_FC2]}},
        r"distill.terms read teacher features, but this strategy fixes the teacher's logits per image",
    ),
    "a label term on unlabeled images": (
        {"data": LABELED, "distill": {"terms": [{"loss": "kd"}, {"loss": "dkd"}]}},
        r"distill.terms: loss term 1 \('dkd'\) reads labels, which unlabeled images do not have",
    ),
    "relabelled copies with omitted classes": (
        {"teacher": ENSEMBLE, "distill": {"ensemble": {"mode": "relabel"}, "omit_classes": [3]}},
        r"distill.omit_classes cannot be combined with distill.ensemble.mode 'relabel'",
    ),
}
CASES.update({name: (sections, ConfigError, message) for name, (sections, message) in PLAN_CASES.items()})


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


def test_ensemble_member_with_other_class_names_is_refused_before_training(tmp_path, no_training):
    m = create("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[8])
    meta = {"kind": "model", "model": {"name": "mlp", "hidden": [8]}, "num_classes": 10, "in_channels": 1}
    names = [f"class{i}" for i in range(10)]  # ten classes, but not the digits
    save_checkpoint(tmp_path / "other", m.state_dict(), {**meta, "image_size": 28, "classes": names})
    cfg = _cfg(teacher={"ensemble": [{"model": MLP2}, str(tmp_path / "other")]})
    with pytest.raises(
        ModelError, match=r"teacher.ensemble\[1\].checkpoint .*predicts 10 classes \(class0, "
    ):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


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
