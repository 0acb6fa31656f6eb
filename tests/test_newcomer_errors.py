"""A newcomer's realistic mistakes end in a clear error or warning naming the field, never a traceback or a
broken promise (issue 28). Each case failed before its fix."""

import pytest
import yaml

from kdkit.cli import main
from kdkit.config import build_config
from kdkit.errors import CheckpointError, ConfigError
from kdkit.experiment import plan_experiment
from kdkit.objective import Objective

MLP = {"name": "mlp", "hidden": [16]}
BASE = {
    "name": "newcomer",
    "data": {"dataset": "mnist-small", "val_size": 500},
    "teacher": {"model": {"name": "mlp", "hidden": [32]}, "train": {"epochs": 1}},
    "student": {"model": MLP, "train": {"epochs": 1}},
    "runtime": {"progress": False, "tensorboard": False},
}


def _cfg(**sections):
    return build_config({**BASE, **sections})


# ------------------------------------------------------------ 1. num_classes & co. in a model's options


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("student", "num_classes", 10), ("teacher", "in_channels", 1), ("student", "image_size", 28)],
)
def test_data_decided_argument_in_model_options_is_a_config_error(section, key, value):
    model = {**BASE[section]["model"], key: value}
    cfg = _cfg(**{section: {**BASE[section], "model": model}})
    with pytest.raises(ConfigError) as err:  # was: TypeError "got multiple values for keyword argument"
        plan_experiment(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{section}.model.{key}: ")
    assert "the data set decides it" in msg


def test_unknown_model_option_no_longer_lists_data_decided_arguments_as_accepted():
    with pytest.raises(ConfigError) as err:
        plan_experiment(_cfg(student={"model": {**MLP, "hiden": [8]}}))
    msg = str(err.value)
    assert "has no option 'hiden'" in msg and "Did you mean 'hidden'" in msg
    assert "(plus num_classes" not in msg and "are not options" in msg


# ------------------------------------------------------------ 2. Objective.response validates its arguments


@pytest.mark.parametrize(
    ("kwargs", "line"),
    [
        ({"loss": "logit_mse", "temperature": -1}, "temperature: Input should be greater than 0 (got -1)"),
        ({"alpha": -0.5}, "alpha: Input should be greater than or equal to 0 (got -0.5)"),
        ({"beta": -1}, "beta: Input should be greater than or equal to 0 (got -1)"),
        ({"loss": "kd_mse_mix", "mix": 3}, "mix: Input should be less than or equal to 1 (got 3)"),
        ({"temperature": -1}, "temperature: Input should be greater than 0 (got -1)"),
    ],
)
def test_objective_response_checks_its_arguments_at_construction(kwargs, line):
    with pytest.raises(ValueError) as err:
        Objective.response(**kwargs)
    assert str(err.value).splitlines() == ["invalid arguments (Objective.response):", f"  {line}"]


def test_objective_response_messages_match_the_config_path():
    """The YAML path (distill.temperature) and the Python path share the rule and the wording."""
    with pytest.raises(ConfigError) as yaml_err:
        _cfg(distill={"temperature": -1})
    with pytest.raises(ValueError) as py_err:
        Objective.response(temperature=-1)
    yaml_line = str(yaml_err.value).splitlines()[1].strip()
    py_line = str(py_err.value).splitlines()[1].strip()
    assert yaml_line == "distill." + py_line


def test_objective_response_still_builds_valid_recipes():
    obj = Objective.response(loss="kd", alpha=0.9, beta=0.1, temperature=4.0)
    assert [(t.name, t.weight, t.kwargs) for t in obj.terms] == [
        ("kd", 0.9, {"temperature": 4.0}),
        ("ce", 0.1, {"label_smoothing": 0.0}),
    ]


# ------------------------------------------------------------ 4. a missing teacher.checkpoint


@pytest.mark.parametrize("given", ["runs/nowhere/teacher.safetensors", "runs/nowhere/teacher"])
def test_missing_teacher_checkpoint_names_the_field_and_the_path_as_given(given):
    cfg = _cfg(teacher={"model": MLP, "checkpoint": given}, phases=["distill"])
    with pytest.raises(CheckpointError) as err:
        plan_experiment(cfg)
    msg = str(err.value)
    assert msg.startswith(f"teacher.checkpoint: checkpoint {given!r} does not exist")
    assert "teacher.json' is missing" not in msg  # the file the user never wrote is not the subject


def test_missing_teacher_checkpoint_through_the_cli(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    assert main(["distill", str(cfg), "--teacher", "x/t.safetensors", "--plan"]) == 2
    err = capsys.readouterr().err
    assert "teacher.checkpoint: checkpoint 'x/t.safetensors' does not exist" in " ".join(err.split())
