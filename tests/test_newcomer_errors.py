"""A newcomer's realistic mistakes end in a clear error or warning naming the field, never a traceback or a
broken promise (issue 28). Each case failed before its fix."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from kdkit.cli import build_parser, main
from kdkit.config import DataConfig, build_config
from kdkit.config.base import LMDataConfig, SplitFolders, TextAugmentConfig, TextDataConfig
from kdkit.config.reference import config_keys, config_markdown
from kdkit.errors import CheckpointError, ConfigError
from kdkit.experiment import plan_experiment
from kdkit.objective import Objective
from kdkit.teacher_quality import chance_level_warning, chance_threshold

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


# ------------------------------------------------------------ 3. kdkit eval at the recorded image size; --data-root


def _shapes_folder(root: Path) -> None:
    """Write a two-class ImageFolder (bright / dark 24x24 images with noise) below root/shapes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 20)):
        for label, base in (("bright", 190), ("dark", 60)):
            d = root / "shapes" / split / label
            d.mkdir(parents=True)
            for i in range(n):
                px = np.clip(base + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i}.png")


def test_eval_uses_the_checkpoints_image_size_and_data_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KDKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # imagefolder:shapes is found only below --data-root
    root = tmp_path / "data"
    _shapes_folder(root)
    cfg = {
        **BASE,
        "data": {"dataset": "imagefolder:shapes", "val_size": 8, "image_size": 16},
        "teacher": {"model": MLP, "train": {"epochs": 3, "batch_size": 16, "lr": 0.05}},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", "cfg.yaml", "--set", f"data.root={root}", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())["models"]["teacher"]
    ckpt = run / "checkpoints" / "teacher.safetensors"
    assert json.loads(ckpt.with_suffix(".json").read_text())["image_size"] == 16

    # The folder holds 24x24 images: eval decodes them at the 16x16 the model was trained on.
    assert main(["eval", str(ckpt), "--data-root", str(root)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["total"] == 40 and out["errors"] == summary["errors"]
    assert out["accuracy"] == pytest.approx(summary["accuracy"]) and out["accuracy"] >= 0.9


def test_every_command_whose_footer_advertises_data_root_accepts_it():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    advertised = {name for name, p in sub.choices.items() if "--data-root" in (p.epilog or "")}
    assert advertised >= {"run", "train", "distill", "eval", "compress", "cache", "sweep"}
    for name in advertised:
        assert "--data-root" in sub.choices[name]._option_string_actions, name


def test_train_with_data_root_finds_an_imagefolder_below_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KDKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    _shapes_folder(tmp_path / "data")
    cfg = {**BASE, "data": {"dataset": "imagefolder:shapes", "val_size": 8}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "cfg.yaml", "--plan"]) == 2  # not in the working directory, no data root
    assert "'imagefolder:shapes' (split 'train') not found" in capsys.readouterr().err
    assert main(["train", "cfg.yaml", "--plan", "--data-root", str(tmp_path / "data")]) == 0
    assert "teacher" in capsys.readouterr().out


def test_data_root_reaches_the_config_of_run(tmp_path, capsys):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(BASE))
    cfg = tmp_path / "cfg.yaml"
    assert main(["run", str(cfg), "--data-root", str(tmp_path / "nowhere"), "--plan"]) == 0
    capsys.readouterr()
    # mnist-small is embedded, so the plan succeeds; a data set that needs files reports the given root.
    args = [
        "run",
        str(cfg),
        "--data-root",
        str(tmp_path / "nowhere"),
        "--plan",
        "--set",
        "data.dataset=mnist",
    ]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"Data root {tmp_path / 'nowhere'} comes from the root argument" in err


# ------------------------------------------------------------ 5. a teacher at chance level is flagged


def test_chance_threshold_numbers():
    # 10 classes on 500 images: 0.1 + 3 * sqrt(0.1 * 0.9 / 500) = 0.14025
    assert chance_threshold(10, 500) == pytest.approx(0.1 + 3 * (0.09 / 500) ** 0.5)
    assert chance_threshold(10, 500) == pytest.approx(0.140249, abs=1e-6)
    rec = {"val_accuracy": 0.14, "accuracy": 0.1402, "test_size": 500}
    assert "at chance level for 10 classes" in chance_level_warning("teacher", rec, 10, 500)
    assert chance_level_warning("teacher", {**rec, "accuracy": 0.141}, 10, 500) is None
    assert chance_level_warning("teacher", {**rec, "val_accuracy": 0.9}, 10, 500) is None
    assert chance_level_warning("teacher", {}, 10, 500) is None  # no figures: nothing to judge


def _distill_run(tmp_path, teacher_lr, capsys):
    teacher = {"model": {"name": "mlp", "hidden": [32]}, "train": {"epochs": 1, "lr": teacher_lr}}
    cfg = {**BASE, "teacher": teacher, "phases": ["teacher", "distill"]}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / f"run-{teacher_lr}"
    assert main(["run", str(tmp_path / "cfg.yaml"), "--run-dir", str(run)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    return json.loads((run / "summary.json").read_text())["models"], err


def test_a_diverged_teacher_is_flagged_before_distilling(tmp_path, capsys):
    models, err = _distill_run(tmp_path, 50.0, capsys)
    teacher, student = models["teacher"], models["student_kd"]
    assert teacher["accuracy"] <= chance_threshold(10, teacher["test_size"])  # lr 50 diverged
    assert teacher["val_accuracy"] <= chance_threshold(10, 500)
    assert "warning: [student_kd] teacher 'teacher' is at chance level for 10 classes" in err
    assert len(student["warnings"]) == 1 and "at chance level" in student["warnings"][0]
    assert "warnings" not in teacher


def test_a_trained_teacher_is_not_flagged(tmp_path, capsys):
    models, err = _distill_run(tmp_path, 0.1, capsys)
    assert models["teacher"]["accuracy"] > 0.8
    assert "at chance level" not in err and "warnings" not in models["student_kd"]


# ------------------------------------------------------------ 6. the config, documented where a user looks

ROOT = Path(__file__).resolve().parents[1]


def test_config_defaults_prints_every_key_of_a_section_from_the_models(capsys):
    assert main(["config", "--defaults", "--section", "data"]) == 0
    out = capsys.readouterr().out
    keys = [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")]
    expected = ["data"]
    for name in DataConfig.model_fields:
        expected.append(f"data.{name}")
        if name == "splits":  # a nested section lists its own keys right after it
            expected += [f"data.splits.{sub}" for sub in SplitFolders.model_fields]
        if name == "lm":
            expected += [f"data.lm.{sub}" for sub in LMDataConfig.model_fields]
        if name == "text":
            for sub in TextDataConfig.model_fields:
                expected.append(f"data.text.{sub}")
                if sub == "augment":
                    expected += [f"data.text.augment.{a}" for a in TextAugmentConfig.model_fields]
    assert keys == expected
    assert 'data.dataset: str, length >= 1 = "mnist-small"' in out
    assert "data.val_size: float, >= 0 = 0.1" in out
    assert "data.image_size: int | null, >= 8 = null" in out
    # Every key has a description (type and default come from the model, the text from its Field).
    assert all(k.description for k in config_keys())


def test_config_defaults_shows_a_sections_own_defaults_not_its_class_defaults(capsys):
    assert main(["config", "--defaults", "--section", "distill"]) == 0
    out = capsys.readouterr().out
    assert "distill.temperature: float, > 0 = 4.0" in out
    # distill.ensemble.augment defaults to jitter 2 (AugmentConfig's own default is 0).
    assert "distill.ensemble.augment.jitter: int, >= 0, <= 64 = 2" in out
    assert main(["config", "--defaults", "--section", "strat"]) == 2
    assert "Did you mean 'strategy'?" in capsys.readouterr().err


def test_every_config_key_is_documented_once_per_section():
    documented = {k.key for k in config_keys()}
    assert len(documented) == len(config_keys())
    for key in (
        "distill.temperature",
        "student.train.lr",
        "runtime.precision",
        "teacher.ensemble[].checkpoint",
    ):
        assert key in documented
    assert "student.model.<option>" in documented and "student.model.num_classes" not in documented


@pytest.mark.parametrize(
    ("override", "suggestion", "section"),
    [
        ("distill.temprature=3", "did you mean distill.temperature?", " --section distill"),
        ("student.train.augment.jiter=1", "did you mean student.train.augment.jitter?", " --section student"),
        ("datta.root=x", "did you mean data?", ""),
    ],
)
def test_unknown_keys_suggest_the_nearest_key_and_the_reference(override, suggestion, section):
    with pytest.raises(ConfigError) as err:
        build_config(BASE, [override])
    line = str(err.value).splitlines()[1]
    assert suggestion in line
    assert f"every valid key: `kdkit config --defaults{section}`, or docs/CONFIG.md" in line


def test_docs_config_md_is_up_to_date_with_the_models(capsys):
    written = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert written == config_markdown(), (
        "docs/CONFIG.md is stale: run `kdkit config --defaults --markdown > docs/CONFIG.md`"
    )
    assert main(["config", "--defaults", "--markdown"]) == 0
    assert capsys.readouterr().out == written
    assert "mean and standard deviation of the **training split**" in written
    assert "`kdkit eval` decodes the data at that size" in written
    assert "| `distill.temperature` | float, > 0 | 4.0 |" in written
    assert "(docs/CONFIG.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_staleness_check_sees_a_changed_description(monkeypatch):
    before = config_markdown()
    field = DataConfig.model_fields["val_size"]
    monkeypatch.setattr(field, "description", "changed")
    assert config_markdown() != before
