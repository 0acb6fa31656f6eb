"""Fuzzing the config: whatever YAML or --set a user writes, the answer is a config or a ConfigError."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdkit.cli import main
from kdkit.config import ExperimentConfig, build_config, load_config
from kdkit.errors import ConfigError

KEYS = [
    "name",
    "seed",
    "data",
    "teacher",
    "student",
    "distill",
    "runtime",
    "phases",
    "model",
    "train",
    "epochs",
    "lr",
    "batch_size",
    "temperature",
    "alpha",
    "beta",
    "terms",
    "loss",
    "augment",
    "jitter",
    "dataset",
    "val_size",
    "precision",
    "hidden",
    "schedule",
    "milestones",
    "omit_classes",
    "class_bias",
    "compress",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["mlp", "kd", "sgd", "cosine", "bf16", "nan", "-1"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers()), children, max_size=5
        ),
    ),
    max_leaves=25,
)
BASE = {"teacher": {"model": {"name": "mlp"}}, "student": {"model": {"name": "mlp"}}}
path = st.lists(st.sampled_from(KEYS), min_size=1, max_size=4).map(".".join)
override = st.one_of(
    st.tuples(path, st.text(max_size=15)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=25),
)


def _check(raw, overrides=()):
    try:
        cfg = build_config(raw, list(overrides))
    except ConfigError as exc:
        msg = str(exc)
        assert msg and "Traceback" not in msg
        return
    assert isinstance(cfg, ExperimentConfig)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_document_is_a_config_or_a_config_error(doc):
    _check(doc)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_any_sections_over_a_valid_base(sections):
    _check({**BASE, **sections})


@settings(max_examples=300, deadline=None)
@given(st.lists(override, max_size=4))
def test_any_overrides(overrides):
    _check(BASE, overrides)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_file_text_through_the_cli_exits_0_or_2(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    try:
        load_config(p)
        valid = True
    except ConfigError:
        valid = False
    if not valid:
        # The CLI turns every config error into a message and exit status 2, never a traceback.
        assert main(["run", str(p), "--run-dir", str(tmp_path / "never")]) == 2
        assert not (tmp_path / "never").exists()


def test_invalid_yaml_types_and_keys_through_the_cli(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    for doc, fragment in [
        (
            {**BASE, "teacher": {"model": {"name": "mlp"}, "train": {"epochs": "many"}}},
            "teacher.train.epochs",
        ),
        ({**BASE, "distill": {"terms": [{"loss": "kd", "wieght": 2}]}}, "distill.terms.0.wieght"),
        ({**BASE, "phases": ["teacher", "teacher"]}, "phases"),
        ({**BASE, "data": {"val_size": -1}}, "data.val_size"),
    ]:
        p.write_text(yaml.safe_dump(doc))
        assert main(["run", str(p), "--run-dir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err
