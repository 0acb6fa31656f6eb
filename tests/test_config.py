"""Config validation: unknown keys, wrong types, overrides, readable errors."""

import pytest
import yaml

from kdkit.config import build_config, load_config
from kdkit.errors import ConfigError

BASE = {
    "teacher": {"model": {"name": "mlp", "hidden": [32]}},
    "student": {"model": {"name": "mlp", "hidden": [16]}},
}


def test_defaults_and_roundtrip(tmp_path):
    cfg = build_config(BASE)
    assert cfg.distill.temperature == 4.0 and cfg.distill.alpha == 0.9
    assert cfg.phases == ["teacher", "scratch", "distill"]
    assert cfg.teacher.model.options() == {"hidden": [32]}
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again == cfg


def test_unknown_key_names_the_path():
    raw = {**BASE, "distill": {"temprature": 3}}
    with pytest.raises(ConfigError) as e:
        build_config(raw)
    assert "distill.temprature" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_names_field_and_value():
    raw = {**BASE, "student": {"model": {"name": "mlp"}, "train": {"lr": "fast"}}}
    with pytest.raises(ConfigError) as e:
        build_config(raw)
    msg = str(e.value)
    assert "student.train.lr" in msg and "'fast'" in msg


def test_enum_error_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        build_config({**BASE, "runtime": {"precision": "fp16"}})
    assert "runtime.precision" in str(e.value) and "bf16" in str(e.value)


def test_overrides_set_nested_values_as_yaml():
    cfg = build_config(
        BASE,
        [
            "teacher.train.epochs=3",
            "distill.temperature=20",
            "teacher.train.augment.jitter=2",
            "distill.omit_classes=[3]",
            "phases=[teacher, distill]",
        ],
    )
    assert cfg.teacher.train.epochs == 3
    assert cfg.distill.temperature == 20.0
    assert cfg.teacher.train.augment.jitter == 2
    assert cfg.distill.omit_classes == [3]
    assert cfg.phases == ["teacher", "distill"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("teacher.train.epochs", "key.path=value"),
        ("=3", "empty key path"),
        ("distill.alpha=[1", "not valid YAML"),
        ("teacher.model.name.x=1", "is a value"),
        ("distill.nope=1", "distill.nope"),
        ("distill.temperature=-1", "distill.temperature"),
    ],
)
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError) as e:
        build_config(BASE, [override])
    assert fragment in str(e.value)


def test_alpha_beta_both_zero_rejected():
    with pytest.raises(ConfigError, match="alpha and beta"):
        build_config({**BASE, "distill": {"alpha": 0, "beta": 0}})


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(p)
    p.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    p.write_text("student: {model: {name: mlp}}\n")
    with pytest.raises(ConfigError, match="teacher: Field required"):
        load_config(p)
