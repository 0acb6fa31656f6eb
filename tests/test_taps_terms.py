"""Taps by module path, adapters from observed shapes, objectives built from `distill.terms`."""

import pytest
import torch

from kdkit.adapters import ConvAdapter, LinearAdapter
from kdkit.config import TermConfig, build_config
from kdkit.errors import ConfigError, ModelError
from kdkit.experiment import run_experiment
from kdkit.losses import activation_boundary, fitnet, kd
from kdkit.model_io import load_model
from kdkit.models import create
from kdkit.objective import Term
from kdkit.objective_builder import build_objective
from kdkit.taps import Tap


def test_tap_reads_outputs_by_path_and_removes_cleanly():
    m = create("resnet8", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    with Tap(m, ["layer2", "layer3.0"]) as tap:
        out = m(x)
        assert tap.outputs["layer2"].shape == (2, 32, 16, 16)
        assert tap.outputs["layer3.0"].shape == (2, 64, 8, 8)
    assert all(not mod._forward_hooks for mod in m.modules())
    torch.testing.assert_close(m(x), out)


def test_wrong_path_lists_nearest_names():
    m = create("resnet8", num_classes=10)
    with pytest.raises(ModelError) as e:
        Tap(m, ["layer3.0", "layr2"])
    assert "'layr2'" in str(e.value) and "layer2" in str(e.value)
    assert all(not mod._forward_hooks for mod in m.modules())  # nothing half-hooked


def test_input_taps_read_pre_activations_even_of_in_place_modules():
    torch.manual_seed(0)
    m = create("resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    block = m.layer3[0]
    paths = [
        "layer3.0:input",
        "layer3.0.relu_out:input",
        "layer3.0.relu_out",
        "layer3.0.relu:input",
        "layer3.0.bn1",
    ]
    with Tap(m, paths) as tap:
        m(x)
        out = dict(tap.outputs)
    pre, post = out["layer3.0.relu_out:input"], out["layer3.0.relu_out"]
    # The block's sum before its last ReLU, recomputed from the block's input: negative values included, and
    # the ReLU of it is the block's output.
    with torch.no_grad():
        x_in = out["layer3.0:input"]
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x_in)))))
        torch.testing.assert_close(pre, branch + block.downsample(x_in))
    assert (pre < 0).any() and torch.equal(torch.relu(pre), post)
    # block.relu is nn.ReLU(inplace=True): the input tap copies what it receives, while bn1's output tensor
    # is the very tensor that ReLU then overwrites (an output tap before an in-place op sees its result).
    relu_in = out["layer3.0.relu:input"]
    assert (relu_in < 0).any() and torch.equal(torch.relu(relu_in), out["layer3.0.bn1"])
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    with pytest.raises(ModelError, match="no module 'layer3.0.relu_ot'"):
        Tap(m, ["layer3.0.relu_ot:input"])


def test_activation_boundary_pushes_pre_activations_past_the_margin():
    t = torch.tensor([[2.0, 0.5, -1.0, 0.0, -3.0]])
    s = torch.tensor([[1.5, 3.0, -2.0, 0.2, -0.5]], requires_grad=True)
    # Teacher active (2.0, 0.5): the student's 1.5 and 3.0 are past the margin 1, no loss.
    # Teacher inactive (-1, 0, -3): student above -1 -> 0.2 gives (0.2 + 1)^2 = 1.44, -0.5 gives 0.25; -2 none.
    loss = activation_boundary(s, t, margin=1.0)
    assert loss.item() == pytest.approx((1.44 + 0.25) / 5)
    loss.backward()
    assert s.grad[0].tolist() == pytest.approx([0.0, 0.0, 0.0, 2 * 1.2 / 5, 2 * 0.5 / 5])  # pushed down only
    # A student active where the teacher is, below the margin: pushed up. margin 0 is the plain sign match.
    assert activation_boundary(torch.tensor([0.4]), torch.tensor([2.0]), margin=1.0).item() == pytest.approx(
        0.36
    )
    assert activation_boundary(torch.tensor([0.4]), torch.tensor([2.0]), margin=0.0).item() == 0.0
    with pytest.raises(ValueError, match="equal shapes"):
        activation_boundary(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="margin"):
        activation_boundary(torch.zeros(2), torch.zeros(2), margin=-1.0)


def test_activation_boundary_term_on_pre_activations_gets_the_connector():
    torch.manual_seed(0)
    student, teacher = create("resnet8", num_classes=10), create("resnet8x4", num_classes=10)
    path = "layer3.0.relu_out:input"
    obj, x = _terms_objective(
        [{"loss": "activation_boundary", "student": path, "teacher": path, "options": {"margin": 0.5}}],
        student,
        teacher,
    )
    adapter = obj.adapters["term0"]  # the paper's connector: 1x1 conv + BN to the teacher's width
    assert isinstance(adapter, ConvAdapter) and (adapter.conv.in_channels, adapter.conv.out_channels) == (
        64,
        256,
    )
    with Tap(student, [path]) as st, Tap(teacher, [path]) as tt:
        student(x), teacher(x)
        tensors = {
            "student.logits": torch.zeros(8, 10),
            "teacher.logits": torch.zeros(8, 10),
            f"student:{path}": st.outputs[path],
            f"teacher:{path}": tt.outputs[path].detach(),
        }
    total, _ = obj(tensors)
    torch.testing.assert_close(
        total, activation_boundary(adapter(tensors[f"student:{path}"]), tensors[f"teacher:{path}"], 0.5)
    )
    total.backward()
    assert adapter.conv.weight.grad.abs().sum() > 0


def test_negative_indices_count_blocks_from_the_end_at_any_depth():
    from kdkit.taps import resolve_module

    for name, blocks in (("resnet8", 1), ("resnet20", 3)):
        m = create(name, num_classes=10)
        assert resolve_module(m, "layer3.-1") is m.layer3[blocks - 1]
        assert resolve_module(m, "layer2.-1.relu_out") is m.layer2[blocks - 1].relu_out
        assert resolve_module(m, f"layer1.-{blocks}") is m.layer1[0]
        with pytest.raises(ModelError, match=f"no module 'layer1.-{blocks + 1}'"):
            resolve_module(m, f"layer1.-{blocks + 1}")
    with pytest.raises(ModelError, match="no module 'conv1.-1'"):  # conv1 is no Sequential
        resolve_module(m, "conv1.-1")
    x = torch.randn(2, 3, 32, 32)
    with Tap(m, ["layer3.-1", "layer3.2"]) as tap:
        m(x)
        assert torch.equal(tap.outputs["layer3.-1"], tap.outputs["layer3.2"])


def test_term_windows_and_warmup():
    t = Term("x", kd, ("a", "b"), start_epoch=1, stop_epoch=3, warmup_epochs=2)
    assert [t.factor(e) for e in (0.5, 1.0, 2.0, 2.99, 3.0)] == [0.0, 0.0, 0.5, pytest.approx(0.995), 0.0]


def _terms_objective(terms, student, teacher, n=8):
    x = torch.randn(n, 3, 32, 32)
    return build_objective(
        [TermConfig(**t) for t in terms], student, teacher, x, torch.randint(0, 10, (n,))
    ), x


def test_fitnet_builds_a_conv_adapter_from_observed_shapes_and_trains_it():
    torch.manual_seed(0)
    student, teacher = create("resnet8", num_classes=10), create("resnet8x4", num_classes=10)
    obj, x = _terms_objective(
        [
            {"loss": "fitnet", "student": "layer2", "teacher": "layer3"},
            {"loss": "kd", "weight": 0.5, "options": {"temperature": 4}},
        ],
        student,
        teacher,
    )
    adapter = obj.adapters["term0"]
    assert isinstance(adapter, ConvAdapter)
    assert adapter.conv.in_channels == 32 and adapter.conv.out_channels == 256 and adapter.out_size == (8, 8)
    assert obj.student_paths() == ["layer2"] and obj.teacher_paths() == ["layer3"]
    # The objective's value equals the hand-assembled terms.
    with Tap(student, ["layer2"]) as st, Tap(teacher, ["layer3"]) as tt:
        s_logits, t_logits = student(x), teacher(x).detach()
        tensors = {
            "student.logits": s_logits,
            "teacher.logits": t_logits,
            "student:layer2": st.outputs["layer2"],
            "teacher:layer3": tt.outputs["layer3"].detach(),
        }
    total, parts = obj(tensors)
    expect = fitnet(adapter(st_out := tensors["student:layer2"]), tensors["teacher:layer3"]) + 0.5 * kd(
        s_logits, t_logits, 4
    )
    torch.testing.assert_close(total, expect)
    total.backward()
    assert adapter.conv.weight.grad is not None and st_out.requires_grad


def test_linear_adapter_for_flat_features_and_none_is_refused():
    s = create("mlp", in_channels=3, image_size=32, hidden=[32])
    t = create("mlp", in_channels=3, image_size=32, hidden=[64])
    obj, _ = _terms_objective(
        [{"loss": "fitnet", "student": "features.fc1", "teacher": "features.fc1"}], s, t
    )
    assert isinstance(obj.adapters["term0"], LinearAdapter)
    with pytest.raises(ConfigError) as e:
        _terms_objective(
            [{"loss": "fitnet", "student": "features.fc1", "teacher": "features.fc1", "adapter": "none"}],
            s,
            t,
        )
    assert "distill.terms[0]" in str(e.value) and "(8, 32)" in str(e.value) and "(8, 64)" in str(e.value)


@pytest.mark.parametrize(
    "term, fragment",
    [
        ({"loss": "fitnet", "student": "layer9", "teacher": "layer3"}, "nearest"),
        ({"loss": "fitnet", "student": "layer2"}, "set both `student` and `teacher`"),
        ({"loss": "kd", "student": "layer2"}, "reads logits"),
    ],
)
def test_bad_terms_fail_before_training(term, fragment):
    with pytest.raises(ConfigError) as e:
        _terms_objective([term], create("resnet8"), create("resnet8x4"))
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "term, path, fragment",
    [
        ({"loss": "nope"}, "distill.terms.0.loss", "unknown loss 'nope'"),
        (
            {"loss": "dist", "options": {"betta": 2.0}},
            "distill.terms.0.options",
            "unknown option 'betta' of loss 'dist'",
        ),
    ],
)
def test_bad_loss_names_and_options_fail_when_the_config_is_validated(term, path, fragment):
    raw = {"teacher": {"model": {"name": "resnet8x4"}}, "student": {"model": {"name": "resnet8"}}}
    with pytest.raises(ConfigError) as e:
        build_config({**raw, "distill": {"terms": [term]}})
    assert f"{path}: " in str(e.value) and fragment in str(e.value)


def test_attention_transfer_across_different_spatial_sizes_needs_no_adapter():
    obj, _ = _terms_objective(
        [{"loss": "attention_transfer", "student": "layer2", "teacher": "layer3"}],
        create("resnet8"),
        create("resnet8x4"),
    )
    assert len(obj.adapters) == 0


def test_class_count_mismatch_is_reported_before_training():
    with pytest.raises(ModelError, match="same classes"):
        _terms_objective(
            [{"loss": "kd"}], create("resnet8", num_classes=10), create("resnet8", num_classes=100)
        )


def test_run_with_feature_terms_saves_adapters_apart_from_the_student(tmp_path):
    raw = {
        "data": {"dataset": "mnist-small", "val_size": 500, "train_limit": 2000},
        "teacher": {"model": {"name": "mlp", "hidden": [64, 64]}, "train": {"epochs": 1}},
        "student": {"model": {"name": "mlp", "hidden": [32]}, "train": {"epochs": 2}},
        "distill": {
            "terms": [
                {"loss": "ce", "weight": 0.1},
                {"loss": "kd", "weight": 0.9, "options": {"temperature": 4}},
                {
                    "loss": "fitnet",
                    "weight": 1.0,
                    "student": "features.fc1",
                    "teacher": "features.fc2",
                    "stop_epoch": 1,
                },
                {"loss": "rkd", "weight": 0.1, "student": "features.act1", "teacher": "features.act2"},
                {"loss": "dist", "weight": 0.5, "options": {"gamma": 2}},
            ]
        },
        "phases": ["teacher", "distill"],
        "runtime": {"progress": False, "tensorboard": False},
    }
    summary = run_experiment(build_config(raw), tmp_path / "run")
    kd_rec = summary["models"]["student_kd"]
    assert kd_rec["teacher_outputs"] == "online" and kd_rec["accuracy"] > 0.5
    ckpt = tmp_path / "run" / "checkpoints"
    student, _ = load_model(ckpt / "student_kd")
    assert not any(isinstance(m, (ConvAdapter, LinearAdapter)) for m in student.modules())
    from kdkit.checkpoint import load_checkpoint

    adapters, meta = load_checkpoint(ckpt / "student_kd-objective")
    assert meta["kind"] == "objective" and adapters["adapters.term2.proj.weight"].shape == (64, 32)
    # The FitNets hint term is active in epoch 1 only (stop_epoch: 1), as in its two-stage schedule.
    import json

    epochs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ends = [r for r in epochs if r["phase"] == "student_kd" and "train_accuracy" in r and "lr" not in r]
    assert "loss.fitnet" in ends[0] and "loss.fitnet" not in ends[1] and "loss.rkd" in ends[1]
    assert all(0 < r["loss.dist"] < 2 + 2 * 2 for r in ends)  # 1 - Pearson <= 2 per part; gamma 2


def test_vid_and_crd_terms_train_their_modules_inside_a_run(tmp_path):
    raw = {
        "data": {"dataset": "mnist-small", "val_size": 200, "train_limit": 1200},
        "teacher": {"model": {"name": "resnet8"}, "train": {"epochs": 1, "batch_size": 100}},
        "student": {"model": {"name": "resnet8"}, "train": {"epochs": 1, "batch_size": 100}},
        "distill": {
            "terms": [
                {"loss": "ce"},
                {"loss": "vid", "student": "layer2", "teacher": "layer3"},
                {
                    "loss": "crd",
                    "weight": 0.8,
                    "student": "avgpool",
                    "teacher": "avgpool",
                    "options": {"nce_k": 256},
                },
                {
                    "loss": "activation_boundary",
                    "weight": 0.5,
                    "student": "layer3.0.relu_out:input",
                    "teacher": "layer3.0.relu_out:input",
                },
            ]
        },
        "phases": ["teacher", "distill"],
        "runtime": {"progress": False, "tensorboard": False, "precision": "fp32"},
    }
    summary = run_experiment(build_config(raw), tmp_path / "run")
    assert summary["models"]["student_kd"]["steps"] == 10
    from kdkit.checkpoint import load_checkpoint

    state, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "student_kd-objective")
    # VID's learned variance and CRD's memory bank (one row per transfer image) are saved with the run.
    assert any(k.startswith("adapters.term1.") and "scale" in k for k in state)
    bank = [v for k, v in state.items() if k.startswith("adapters.term2.") and "memory" in k]
    assert bank and all(b.shape[0] == 1000 for b in bank)
    # Pre-activation taps (":input") work inside a run: the AB term was computed and logged every epoch.
    import json

    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ab = [
        r["loss.activation_boundary"]
        for r in lines
        if r["phase"] == "student_kd" and "loss.activation_boundary" in r
    ]
    assert ab and all(v > 0 for v in ab)
