"""A user's own model by Python path (issue 28): "package.module:Factory" in a config, no registration."""

import json
import textwrap

import pytest
import torch
import yaml

from kdkit.cli import main
from kdkit.errors import ModelError
from kdkit.models import create

MODULE = textwrap.dedent(
    """
    import torch.nn as nn

    class TinyCNN(nn.Module):
        def __init__(self, num_classes, in_channels=3, width=8):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(4), nn.Flatten())
            self.classifier = nn.Linear(width * 16, num_classes)

        def forward(self, x):
            return self.classifier(self.features(x))

    def tiny_mlp(num_classes, image_size, **hidden_options):
        return nn.Sequential(nn.Flatten(), nn.Linear(image_size * image_size, hidden_options.get("hidden", 16)),
                             nn.ReLU(), nn.Linear(hidden_options.get("hidden", 16), num_classes))

    def no_classes(width=4):
        return nn.Linear(width, 2)

    not_a_model = 3
    """
)


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "userpkg.models"


def test_a_class_by_path_gets_the_data_arguments_it_accepts_and_its_options(user_pkg):
    model = create(f"{user_pkg}:TinyCNN", num_classes=7, in_channels=1, image_size=28, width=4)
    assert model.classifier.out_features == 7 and model.features[0].in_channels == 1
    assert model.features[0].out_channels == 4
    mlp = create(f"{user_pkg}:tiny_mlp", num_classes=3, in_channels=1, image_size=12, hidden=5)
    assert mlp(torch.zeros(2, 1, 12, 12)).shape == (2, 3) and mlp[1].out_features == 5


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("nosuchpkg.models:Net", {}, "cannot import module 'nosuchpkg.models'"),
        ("{pkg}:TinyCN", {}, "has no attribute 'TinyCN'. Did you mean 'TinyCNN'?"),
        ("{pkg}:not_a_model", {}, "is a int, not a class or function"),
        ("{pkg}:TinyCNN", {"widht": 3}, "has no option 'widht'. Did you mean 'width'?"),
        ("{pkg}:no_classes", {}, "must accept a `num_classes` keyword argument"),
        ("nosuch:Net", {}, "cannot import module 'nosuch'"),
        ("not a path:x", {}, "unknown model source 'not a path'"),
    ],
)
def test_a_bad_model_path_names_what_is_wrong(user_pkg, name, options, message):
    with pytest.raises(ModelError) as err:
        create(name.format(pkg=user_pkg), num_classes=10, **options)
    assert message in str(err.value)


def test_a_run_trains_and_evaluates_a_model_named_by_path(user_pkg, tmp_path):
    cfg = {
        "name": "own-model",
        "data": {"dataset": "mnist-small", "val_size": 200, "train_limit": 1000},
        "teacher": {"model": {"name": f"{user_pkg}:TinyCNN", "width": 8}, "train": {"epochs": 1, "lr": 0.05}},
        "student": {"model": {"name": f"{user_pkg}:tiny_mlp", "hidden": 16}, "train": {"epochs": 1}},
        "runtime": {"progress": False, "tensorboard": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["run", str(path), "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "student_scratch", "student_kd"}
    assert main(["eval", str(run / "checkpoints" / "student_kd")]) == 0  # rebuilt from the recorded path


def test_a_misspelt_option_of_a_model_by_path_is_refused_before_training(user_pkg, tmp_path, capsys):
    cfg = {
        "name": "own-model",
        "data": {"dataset": "mnist-small", "val_size": 200, "train_limit": 1000},
        "teacher": {"model": {"name": f"{user_pkg}:TinyCNN", "widht": 8}, "train": {"epochs": 1}},
        "student": {"model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1}},
        "runtime": {"progress": False, "tensorboard": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert "teacher.model" in err and "'widht'" in err
    assert not (tmp_path / "run").exists()
