"""The registry of loss terms: every term declared once, built by build_objective, checked at config time."""

import inspect

import pytest
import torch
from pydantic import Field
from torch import nn

from kdkit import losses as L
from kdkit.config import TermConfig, build_config
from kdkit.errors import ConfigError
from kdkit.objective import Objective, Term
from kdkit.objective_builder import build_objective, reads_teacher_features
from kdkit.taps import Tap
from kdkit.terms import (
    TERMS,
    FactorTransferTerm,
    TermSpec,
    register,
    response_names,
    term_spec,
    unregister,
)
from kdkit.terms.registry import Options

N = 16  # batch of the dry run and of the comparisons


class TinyCNN(nn.Module):
    """Two conv blocks, global pooling and a classifier: maps, pre-activations and a pooled embedding."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))).flatten(1))


def _pair(s: str, t: str) -> dict:
    return {"student": s, "teacher": t}


# Per term: the config entry (paths, options other than the defaults where a term has options) and the
# value expected from the plain function of kdkit.losses on the same tensors (S/T: student/teacher tensors).
CASES = {
    "kd": ({"options": {"temperature": 2.0}}, lambda S, T, y, m: L.kd(S["logits"], T["logits"], 2.0)),
    "logit_mse": ({}, lambda S, T, y, m: L.logit_mse(S["logits"], T["logits"])),
    "kd_mse_mix": (
        {"options": {"temperature": 3.0, "mix": 0.25}},
        lambda S, T, y, m: L.kd_mse_mix(S["logits"], T["logits"], 3.0, 0.25),
    ),
    "dkd": (
        {"options": {"alpha": 0.5, "beta": 2.0}},
        lambda S, T, y, m: L.dkd(S["logits"], T["logits"], y, alpha=0.5, beta=2.0),
    ),
    "dist": ({"options": {"gamma": 2.0}}, lambda S, T, y, m: L.dist(S["logits"], T["logits"], gamma=2.0)),
    "ce": ({"options": {"label_smoothing": 0.1}}, lambda S, T, y, m: L.cross_entropy(S["logits"], y, 0.1)),
    # Per-token divergences (logits (..., V) with labels (...), -100 not scored) on per-sample logits here.
    "forward_kl": (
        {"options": {"temperature": 2.0}},
        lambda S, T, y, m: L.forward_kl(S["logits"], T["logits"], y, temperature=2.0),
    ),
    "reverse_kl": ({}, lambda S, T, y, m: L.reverse_kl(S["logits"], T["logits"], y)),
    "gkd_jsd": (
        {"options": {"beta": 0.3}},
        lambda S, T, y, m: L.generalized_jsd(S["logits"], T["logits"], y, beta=0.3),
    ),
    "skew_kl": (
        {"options": {"alpha": 0.2}},
        lambda S, T, y, m: L.skew_kl(S["logits"], T["logits"], y, alpha=0.2),
    ),
    "skew_reverse_kl": (
        {"options": {"alpha": 0.2, "temperature": 3.0}},
        lambda S, T, y, m: L.skew_reverse_kl(S["logits"], T["logits"], y, temperature=3.0, alpha=0.2),
    ),
    "total_variation": ({}, lambda S, T, y, m: L.total_variation(S["logits"], T["logits"], y)),
    "fitnet": (_pair("relu2", "relu2"), lambda S, T, y, m: L.fitnet(S["relu2"], T["relu2"])),
    "attention_transfer": (
        {**_pair("relu1", "relu2"), "options": {"p": 1.0}},
        lambda S, T, y, m: L.attention_transfer(S["relu1"], T["relu2"], p=1.0),
    ),
    "activation_boundary": (
        {**_pair("conv2", "conv2"), "options": {"margin": 0.5}},
        lambda S, T, y, m: L.activation_boundary(S["conv2"], T["conv2"], margin=0.5),
    ),
    "similarity_preserving": (
        _pair("relu2", "relu1"),
        lambda S, T, y, m: L.similarity_preserving(S["relu2"], T["relu1"]),
    ),
    "nst": (_pair("relu2", "relu2"), lambda S, T, y, m: L.nst(S["relu2"], T["relu2"])),
    "pkt": (_pair("pool", "pool"), lambda S, T, y, m: L.pkt(S["pool"].flatten(1), T["pool"].flatten(1))),
    "rkd": (
        {**_pair("pool", "pool"), "options": {"angle_weight": 10.0}},
        lambda S, T, y, m: L.rkd(S["pool"].flatten(1), T["pool"].flatten(1), angle_weight=10.0),
    ),
    "correlation_congruence": (
        {**_pair("pool", "relu2"), "options": {"kernel": "gaussian"}},
        lambda S, T, y, m: L.correlation_congruence(S["pool"].flatten(1), T["relu2"].flatten(1), "gaussian"),
    ),
    "fsp": (
        {"student": ["conv1", "relu1", "relu2"], "teacher": ["conv1", "relu1", "relu2"]},
        lambda S, T, y, m: L.fsp([S["conv1"], S["relu1"], S["relu2"]], [T["conv1"], T["relu1"], T["relu2"]]),
    ),
    "vid": ({**_pair("relu1", "relu2"), "options": {"mid_channels": 4}}, None),
    "crd": ({**_pair("pool", "pool"), "options": {"nce_k": 8, "feat_dim": 16}}, None),
    "factor_transfer": (
        {**_pair("relu1", "relu2"), "options": {"paraphraser_epochs": 1}},
        lambda S, T, y, m: L.factor_transfer(
            m.translator(S["relu1"]), m.paraphraser(T["relu2"], is_factor=True)
        ),
    ),
    "ofd": (
        _pair("conv2", "conv2"),
        lambda S, T, y, m: L.ofd(m.connector(S["conv2"]), T["conv2"], L.ofd_margin(T["conv2"])),
    ),
}


def _vid_reference(S, T, y, m):
    # A fresh VIDLoss with the built module's weights: the plain module of kdkit.losses.
    ref = L.VIDLoss(8, 4, 8)
    ref.load_state_dict(m.state_dict())
    return ref(S["relu1"], T["relu2"])


def _crd_reference(S, T, y, m):
    ref = L.CRDLoss(8, 8, 64, feat_dim=16, nce_k=8)
    ref.load_state_dict(m.crd.state_dict())
    torch.manual_seed(7)  # the negatives drawn from the memory bank
    return ref(S["pool"].flatten(1), T["pool"].flatten(1), torch.arange(N))


REFERENCES = {"vid": _vid_reference, "crd": _crd_reference}


def _tensors(model, paths, x):
    with Tap(model, paths) as tap:
        logits = model(x)
        return {"logits": logits, **tap.outputs}


def test_every_registered_term_has_a_case_here():
    assert set(CASES) == set(TERMS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_term_builds_and_equals_its_plain_function(name):
    torch.manual_seed(0)
    student, teacher = TinyCNN(8), TinyCNN(8).eval()
    entry, expected = CASES[name]
    tc = TermConfig(loss=name, weight=2.0, **entry)
    x, y = torch.randn(N, 3, 8, 8), torch.randint(0, 10, (N,))
    obj = build_objective([tc], student, teacher, x, y, n_data=64)
    assert obj.terms[0].name == name and obj.terms[0].inputs[0].startswith("student")
    assert len(obj.adapters) == (1 if TERMS[name].stateful else 0)
    module = obj.adapters["term0"] if TERMS[name].stateful else None
    obj.eval()
    paths = obj.student_paths()
    with torch.no_grad():
        S, T = _tensors(student, paths, x), _tensors(teacher, obj.teacher_paths(), x)
        named = {
            "student.logits": S["logits"],
            "teacher.logits": T["logits"],
            "labels": y,
            "index": torch.arange(N),
            **{f"student:{k}": v for k, v in S.items()},
            **{f"teacher:{k}": v for k, v in T.items()},
        }
        torch.manual_seed(7)
        total, parts = obj(named)
        want = (expected or REFERENCES[name])(S, T, y, module)
    torch.testing.assert_close(total, 2.0 * want)
    assert list(parts) == [name] and float(parts[name]) != 0.0


def test_option_defaults_are_those_of_the_plain_functions():
    # An options model repeats the defaults of the function or module it configures: they must not drift.
    targets = {n: s.fn for n, s in TERMS.items() if s.fn is not None}
    targets.update({"vid": L.VIDLoss, "crd": L.CRDLoss, "factor_transfer": FactorTransferTerm})
    checked = 0
    for name, target in targets.items():
        params = inspect.signature(target).parameters
        for option, field in TERMS[name].options.model_fields.items():
            if name == "vid" and option == "mid_channels":
                continue  # None: the teacher's channel count, decided by the term's build
            assert option in params, f"{name}: option {option!r} is not a parameter of {target}"
            assert field.default == params[option].default, f"{name}.{option}"
            checked += 1
    assert checked >= 25


@pytest.mark.parametrize(
    "term, fragments",
    [
        (
            {"loss": "kd", "options": {"temprature": 2}},
            ["unknown option 'temprature' of loss 'kd'", "temperature"],
        ),
        (
            {"loss": "kd", "options": {"temperature": 0}},
            ["option 'temperature' of loss 'kd'", "greater than 0"],
        ),
        (
            {"loss": "dkd", "options": {"beta": -1}},
            ["option 'beta' of loss 'dkd'", "greater than or equal to 0"],
        ),
        (
            {"loss": "crd", "student": "a", "teacher": "b", "options": {"nce_k": "many"}},
            ["option 'nce_k' of loss 'crd'", "valid integer"],
        ),
        (
            {"loss": "correlation_congruence", "student": "a", "teacher": "b", "options": {"kernel": "rbf"}},
            ["option 'kernel' of loss 'correlation_congruence'", "'repdistiller' or 'gaussian'"],
        ),
        ({"loss": "nst", "student": "a", "teacher": "b", "options": {"p": 2}}, ["nst takes no options"]),
    ],
)
def test_unknown_and_bad_options_are_refused_when_the_config_is_validated(term, fragments):
    raw = {"teacher": {"model": {"name": "mlp"}}, "student": {"model": {"name": "mlp"}}}
    with pytest.raises(ConfigError) as e:
        build_config({**raw, "distill": {"terms": [{"loss": "ce"}, term]}})
    msg = str(e.value)
    assert "distill.terms.1.options: " in msg
    for fragment in fragments:
        assert fragment in msg


def test_options_are_kept_as_given_and_converted():
    tc = TermConfig(loss="crd", student="a", teacher="b", options={"nce_k": 256})
    assert tc.options == {"nce_k": 256}  # defaults are not written into the config
    assert TermConfig(loss="kd", options={"temperature": 4}).options == {"temperature": 4.0}


def test_unknown_loss_lists_the_known_ones():
    raw = {"teacher": {"model": {"name": "mlp"}}, "student": {"model": {"name": "mlp"}}}
    with pytest.raises(ConfigError) as e:
        build_config({**raw, "distill": {"terms": [{"loss": "kdd"}]}})
    msg = str(e.value)
    assert "distill.terms.0.loss: " in msg and "unknown loss 'kdd'" in msg
    assert all(repr(name) in msg for name in TERMS)
    with pytest.raises(KeyError, match="unknown loss 'kdd'; known: .*'fitnet'"):
        term_spec("kdd")


def test_response_losses_come_from_the_registry():
    assert response_names() == ["kd", "logit_mse", "kd_mse_mix"]
    raw = {"teacher": {"model": {"name": "mlp"}}, "student": {"model": {"name": "mlp"}}}
    for section in ({"distill": {"loss": "dkd"}}, {"compress": {"distill": {"loss": "dkd"}}}):
        with pytest.raises(ConfigError) as e:
            build_config({**raw, **section})
        assert "distill.loss: " in str(e.value) and "'dkd' is not a response loss" in str(e.value)
        assert "['kd', 'logit_mse', 'kd_mse_mix']" in str(e.value)
    obj = Objective.response("kd_mse_mix", alpha=0.6, beta=0.4, temperature=3.0, mix=0.2)
    assert [(t.name, t.weight, t.kwargs) for t in obj.terms] == [
        ("kd_mse_mix", 0.6, {"temperature": 3.0, "mix": 0.2}),
        ("ce", 0.4, {"label_smoothing": 0.0}),
    ]
    assert Objective.response("logit_mse").terms[0].kwargs == {}
    with pytest.raises(KeyError, match="'dkd' is not a response loss"):
        Objective.response("dkd")


def test_term_from_name_reads_the_registry_and_checks_options():
    term = Term.from_name("dkd", 0.5, beta=2.0)
    assert term.fn is L.dkd and term.inputs == ("student.logits", "teacher.logits", "labels")
    assert term.kwargs == {"beta": 2.0}
    with pytest.raises(ValueError, match="unknown option 'betta' of loss 'dkd'"):
        Term.from_name("dkd", betta=2.0)
    with pytest.raises(KeyError, match="reads module outputs"):
        Term.from_name("fitnet")


def test_soft_target_kd_is_a_plain_function_but_no_term():
    # It reads teacher probabilities, a tensor no step provides (ensembles give log-mean-probabilities
    # as logits, which `kd` reads): it stays a function of kdkit.losses and is not a registered term.
    assert "soft_target_kd" not in TERMS and callable(L.soft_target_kd)
    with pytest.raises(KeyError, match="unknown loss 'soft_target_kd'"):
        Term.from_name("soft_target_kd")
    raw = {"teacher": {"model": {"name": "mlp"}}, "student": {"model": {"name": "mlp"}}}
    with pytest.raises(ConfigError, match="'soft_target_kd' is not a response loss"):
        build_config({**raw, "distill": {"loss": "soft_target_kd"}})


def test_reads_teacher_features():
    logits = [TermConfig(loss="kd"), TermConfig(loss="ce"), TermConfig(loss="dkd")]
    assert not reads_teacher_features(logits)
    assert reads_teacher_features([*logits, TermConfig(loss="pkt", student="a", teacher="b")])
    assert reads_teacher_features([TermConfig(loss="fsp", student=["a", "b"], teacher=["a", "b"])])
    assert [n for n, s in TERMS.items() if not s.reads_teacher_features] == [
        "kd",
        "logit_mse",
        "kd_mse_mix",
        "dkd",
        "dist",
        "ce",
        "forward_kl",
        "reverse_kl",
        "gkd_jsd",
        "skew_kl",
        "skew_reverse_kl",
        "total_variation",
    ]


class ScaledL1Options(Options):
    scale: float = Field(1.0, gt=0)


def scaled_l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return scale * (student_logits - teacher_logits).abs().mean()


@pytest.fixture
def toy_term():
    spec = register(
        TermSpec(
            name="scaled_l1",
            kind="logits",
            description="scaled L1 between logits",
            reference="",
            fn=scaled_l1,
            options=ScaledL1Options,
        )
    )
    yield spec
    if "scaled_l1" in TERMS:
        unregister("scaled_l1")


def test_a_new_term_is_one_spec_registered_through_the_public_api(toy_term):
    torch.manual_seed(0)
    student, teacher = TinyCNN(8), TinyCNN(8).eval()
    x, y = torch.randn(N, 3, 8, 8), torch.randint(0, 10, (N,))
    tc = TermConfig(loss="scaled_l1", options={"scale": 3})
    obj = build_objective([tc, TermConfig(loss="ce")], student, teacher, x, y)
    with torch.no_grad():
        s, t = student(x), teacher(x)
        total, parts = obj({"student.logits": s, "teacher.logits": t, "labels": y})
    torch.testing.assert_close(parts["scaled_l1"], 3 * (s - t).abs().mean())
    torch.testing.assert_close(total, parts["scaled_l1"] + L.cross_entropy(s, y))
    with pytest.raises(ValueError, match="option 'scale' of loss 'scaled_l1'"):
        TermConfig(loss="scaled_l1", options={"scale": -1})
    with pytest.raises(ValueError, match="already registered"):
        register(toy_term)
    assert unregister("scaled_l1") is toy_term
    with pytest.raises(ValueError, match="unknown loss 'scaled_l1'"):
        TermConfig(loss="scaled_l1")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"fn": None}, "exactly one of fn"),
        ({"kind": "maps"}, "kind 'maps'"),
        ({"name": "bad name"}, "must be an identifier"),
        ({"response": True, "kind": "logits_labels"}, "student and teacher logits only"),
        ({"fn": None, "build": lambda s, t, o, c: nn.Identity(), "kind": "logits"}, "one feature per side"),
    ],
)
def test_malformed_specs_are_refused(kwargs, fragment):
    base = {"name": "x", "kind": "logits", "description": "x", "reference": "", "fn": scaled_l1}
    with pytest.raises(ValueError, match=fragment):
        TermSpec(**{**base, **kwargs})
