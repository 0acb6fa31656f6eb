"""OFD (Heo et al. 2019, overhaul of feature distillation): margins, partial L2, connector, a term in a run."""

import json
import math

import pytest
import torch

from kdkit.checkpoint import load_checkpoint
from kdkit.config import TermConfig, build_config
from kdkit.errors import ConfigError
from kdkit.experiment import run_experiment
from kdkit.losses import OFDLoss, ofd, ofd_margin
from kdkit.models import create
from kdkit.objective_builder import build_objective
from kdkit.taps import Tap

PRE = "layer3.-1.relu_out:input"


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (1.0, 2.0), (-2.0, 0.5), (0.7, 0.3)])
def test_margin_is_the_mean_of_the_negative_responses(mean, std):
    torch.manual_seed(0)
    x = mean + std * torch.randn(400_000, 1)
    got = float(ofd_margin(x)[0])
    want = float(x[x < 0].mean())  # E[x | x < 0], measured
    assert got < 0 and abs(got - want) < 0.01 * std
    if mean == 0.0:  # closed form for a centred Gaussian: -s * sqrt(2 / pi)
        assert abs(got + math.sqrt(2 / math.pi)) < 0.01


def test_margin_is_minus_three_std_where_negative_responses_are_rare_and_per_channel_on_maps():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 4, 4) * torch.tensor([1.0, 2.0, 0.1]).view(1, 3, 1, 1)
    x[:, 2] += 1.0  # channel 2: mean 10 std above 0, cdf(-10) < 0.001
    m = ofd_margin(x)
    assert m.shape == (3,)
    std2 = float(x[:, 2].std())
    assert float(m[2]) == pytest.approx(-3 * std2, rel=1e-5)
    # Channels 0 and 1 are centred: -s * sqrt(2/pi) with their measured s (positions and batch pooled).
    for c in (0, 1):
        s = float(x[:, c].std())
        assert float(m[c]) == pytest.approx(-s * math.sqrt(2 / math.pi), rel=0.12)
    with pytest.raises(ValueError, match="pre-activations"):
        ofd_margin(torch.randn(1, 3))


def test_partial_l2_counts_only_where_the_target_is_positive_or_the_student_above_it():
    margin = torch.tensor([-0.5, -1.0])
    t = torch.tensor([[2.0, -3.0], [-0.2, 1.0]])  # after the margin ReLU: [[2, -1], [-0.2, 1]]
    s = torch.tensor([[1.0, -2.0], [0.3, 4.0]])
    # (0,0): target 2 > 0 -> (1-2)^2 = 1;  (0,1): target -1, student -2 below it -> not counted;
    # (1,0): target max(-0.2, -0.5) = -0.2, student 0.3 above it -> 0.25;  (1,1): target 1 > 0 -> 9.
    assert float(ofd(s, t, margin)) == pytest.approx((1 + 0.25 + 9) / (2 * 1000))
    # A scalar margin is the same for every channel: at -2.5 the target of (0,1) is -2.5, now below the
    # student's -2, so that element counts, (-2 + 2.5)^2 = 0.25.
    assert float(ofd(s, t, -2.5)) == pytest.approx((1 + 0.25 + 0.25 + 9) / 2000)
    with pytest.raises(ValueError, match="margins for 2 teacher channels"):
        ofd(s, t, torch.tensor([-1.0, -1.0, -1.0]))
    with pytest.raises(ValueError, match="connected to the teacher's channels"):
        ofd(torch.zeros(2, 3), t, margin)


def test_maps_of_other_sizes_are_pooled_after_the_margin_relu_and_gradients_skip_the_teacher():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 4, 4, requires_grad=True)
    t = torch.randn(2, 4, 8, 8, requires_grad=True)
    m = torch.full((4,), -0.3)
    loss = ofd(s, t, m)
    target = torch.nn.functional.avg_pool2d(torch.maximum(t.detach(), m.view(1, 4, 1, 1)), 2)
    want = ((s - target).pow(2) * ((s > target) | (target > 0))).sum() / 2000
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_ofd_module_connects_the_student_to_the_teacher_channels_and_trains():
    torch.manual_seed(0)
    s = torch.randn(32, 8, 4, 4)
    # The teacher's feature is a linear map of the student's, so a connector can learn it.
    t = torch.einsum("oc,bchw->bohw", torch.randn(16, 8) / 3, s) - 0.3
    loss = OFDLoss.from_features(s, t)
    conv, bn = loss.connector
    assert conv.weight.shape == (16, 8, 1, 1) and conv.bias is None and isinstance(bn, torch.nn.BatchNorm2d)
    torch.testing.assert_close(loss.margin, ofd_margin(t))
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / 16), rel=0.15)
    opt = torch.optim.Adam(loss.parameters(), lr=0.02)
    first = float(loss(s, t).detach())
    for _ in range(100):
        opt.zero_grad()
        v = loss(s, t)
        v.backward()
        opt.step()
    # The connector learns to map the student onto the margin-ReLU'd teacher.
    assert float(v.detach()) < 0.2 * first
    flat = OFDLoss.from_features(torch.randn(8, 5), torch.randn(8, 7))
    assert isinstance(flat.connector[1], torch.nn.BatchNorm1d) and flat.margin.shape == (7,)
    assert float(flat(torch.randn(8, 5), torch.randn(8, 7)).detach()) > 0
    with pytest.raises(ValueError, match="same kind on both sides"):
        OFDLoss.from_features(torch.randn(8, 5), torch.randn(8, 7, 2, 2))


def test_ofd_term_measures_the_margin_on_the_teacher_and_equals_the_loss():
    torch.manual_seed(0)
    student, teacher = create("resnet8"), create("resnet20").eval()
    x = torch.randn(16, 3, 32, 32)
    terms = [TermConfig(loss="ofd", student=PRE, teacher=PRE)]
    obj = build_objective(terms, student, teacher, x, torch.randint(0, 10, (16,)))
    module = obj.adapters["term0"]
    assert isinstance(module, OFDLoss)
    with Tap(teacher, [PRE]) as tt, torch.no_grad():
        teacher(x)
        t_pre = tt.outputs[PRE]
    torch.testing.assert_close(module.margin, ofd_margin(t_pre))
    with Tap(student, [PRE]) as st:
        student(x)
        s_pre = st.outputs[PRE]
    total, parts = obj({f"student:{PRE}": s_pre, f"teacher:{PRE}": t_pre})
    torch.testing.assert_close(total, ofd(module.connector(s_pre), t_pre, module.margin))
    assert float(total.detach()) > 0


@pytest.mark.parametrize(
    "term,fragment",
    [
        ({"loss": "ofd", "student": PRE, "teacher": "fc"}, "same kind on both sides"),
        ({"loss": "ofd", "student": PRE}, "set both `student` and `teacher`"),
    ],
)
def test_bad_ofd_terms_are_config_errors_naming_the_term(term, fragment):
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="distill.terms\\[0\\]") as exc:
        build_objective(
            [TermConfig(**term)],
            create("resnet8"),
            create("resnet8").eval(),
            torch.randn(4, 3, 32, 32),
            torch.zeros(4, dtype=torch.long),
        )
    assert fragment in str(exc.value)


def test_ofd_options_are_refused_when_the_config_is_validated():
    # Options are checked by the term's options model at config time, before any model is built.
    term = {"loss": "ofd", "student": PRE, "teacher": PRE, "options": {"margin": 1}}
    raw = {"teacher": {"model": {"name": "resnet8"}}, "student": {"model": {"name": "resnet8"}}}
    with pytest.raises(ConfigError) as exc:
        build_config({**raw, "distill": {"terms": [term]}})
    assert "distill.terms.0.options" in str(exc.value) and "ofd takes no options" in str(exc.value)
    assert "'margin'" in str(exc.value)


def test_ofd_in_a_run_on_mlp_pre_activations_saves_its_margin_and_connector(tmp_path):
    raw = {
        "data": {"dataset": "mnist-small", "val_size": 200, "train_limit": 1200},
        "teacher": {"model": {"name": "mlp", "hidden": [96, 64]}, "train": {"epochs": 2, "batch_size": 100}},
        "student": {"model": {"name": "mlp", "hidden": [48, 32]}, "train": {"epochs": 2, "batch_size": 100}},
        "distill": {
            "terms": [
                {"loss": "ce"},
                {"loss": "ofd", "student": "features.fc2", "teacher": "features.fc2"},
            ]
        },
        "phases": ["teacher", "distill"],
        "runtime": {"progress": False, "tensorboard": False, "precision": "fp32"},
    }
    run_experiment(build_config(raw), tmp_path / "run")
    state, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "student_kd-objective")
    assert meta["kind"] == "objective"
    assert state["adapters.term1.margin"].shape == (64,) and (state["adapters.term1.margin"] < 0).all()
    assert state["adapters.term1.connector.0.weight"].shape == (64, 32)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ends = [r for r in lines if r["phase"] == "student_kd" and "train_accuracy" in r and "lr" not in r]
    assert len(ends) == 2 and 0 < ends[1]["loss.ofd"] < ends[0]["loss.ofd"]
