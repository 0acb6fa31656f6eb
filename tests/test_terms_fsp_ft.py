"""FSP over lists of layers and factor transfer (paraphraser stage, then frozen) as `distill.terms`."""

import json

import pytest
import torch
import torch.nn.functional as F

from kdkit.checkpoint import load_checkpoint
from kdkit.config import TermConfig, TrainConfig, build_config
from kdkit.data.loader import InMemoryLoader
from kdkit.engine import Engine
from kdkit.errors import ConfigError
from kdkit.experiment import run_experiment
from kdkit.losses import Paraphraser, factor_transfer, fsp
from kdkit.metrics import MetricsLogger
from kdkit.models import create
from kdkit.objective_builder import build_objective
from kdkit.pretrain import run_pretraining
from kdkit.runtime import resolve_runtime
from kdkit.taps import Tap
from kdkit.teacher import FrozenTeacher
from kdkit.terms import FactorTransferTerm

STAGES = ["relu", "layer1", "layer2", "layer3"]


def _build(terms, student, teacher, n=8, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, 3, 32, 32)
    obj = build_objective([TermConfig(**t) for t in terms], student, teacher, x, torch.randint(0, 10, (n,)))
    return obj, x


def test_fsp_term_reads_lists_of_layers_and_equals_the_loss():
    torch.manual_seed(0)
    student, teacher = create("resnet8"), create("resnet20").eval()
    obj, x = _build([{"loss": "fsp", "student": STAGES, "teacher": STAGES}], student, teacher)
    assert obj.student_paths() == STAGES and obj.teacher_paths() == STAGES and len(obj.adapters) == 0
    with Tap(student, STAGES) as st, Tap(teacher, STAGES) as tt:
        student(x)
        with torch.no_grad():
            teacher(x)
        tensors = {
            **{f"student:{k}": v for k, v in st.outputs.items()},
            **{f"teacher:{k}": v for k, v in tt.outputs.items()},
        }
        s_maps = [st.outputs[p] for p in STAGES]
        t_maps = [tt.outputs[p] for p in STAGES]
    total, parts = obj(tensors)
    torch.testing.assert_close(total, fsp(s_maps, t_maps))
    # The pair (layer1 32x32, layer2 16x16): the larger map is average-pooled to 16x16 before G = top @ bot^T / HW.
    bot, top = F.adaptive_avg_pool2d(s_maps[1], (16, 16)), s_maps[2]
    g = torch.einsum("bchw,bdhw->bdc", bot, top) / 256
    bot_t, top_t = F.adaptive_avg_pool2d(t_maps[1], (16, 16)), t_maps[2]
    g_t = torch.einsum("bchw,bdhw->bdc", bot_t, top_t) / 256
    assert g.shape == (8, 32, 16)
    single = fsp(s_maps[1:3], t_maps[1:3])
    torch.testing.assert_close(single, (g - g_t).pow(2).mean())
    assert float(total.detach()) > float(single.detach()) > 0
    total.backward()
    assert student.conv1.weight.grad.abs().sum() > 0


def test_fsp_with_unequal_channels_names_both_layers_and_the_reason():
    # resnet8x4 is 32/64/128/256 wide, resnet8 16/16/32/64: FSP matrices cannot be compared.
    with pytest.raises(ConfigError) as e:
        _build(
            [{"loss": "ce"}, {"loss": "fsp", "student": STAGES, "teacher": STAGES}],
            create("resnet8"),
            create("resnet8x4"),
        )
    msg = str(e.value)
    assert "distill.terms[1]" in msg and "equal channel counts" in msg
    assert "student 'relu' has 16 channels" in msg and "teacher 'relu' has 32" in msg
    assert "RepDistiller" in msg and "no learned projection" in msg


@pytest.mark.parametrize(
    "term, fragment",
    [
        ({"loss": "fsp", "student": "layer1", "teacher": "layer1"}, "list of at least 2 module paths"),
        ({"loss": "fsp", "student": ["layer1"], "teacher": ["layer1"]}, "list of at least 2 module paths"),
        ({"loss": "fsp", "student": ["layer1", "layer2"], "teacher": STAGES}, "same length"),
        ({"loss": "attention_transfer", "student": STAGES, "teacher": "layer3"}, "one module path per side"),
        (
            {"loss": "fsp", "student": ["layer1", "fc"], "teacher": ["layer1", "fc"]},
            "feature maps (N, C, H, W)",
        ),
    ],
)
def test_bad_fsp_terms_fail_before_training(term, fragment):
    with pytest.raises(ConfigError) as e:
        _build([term], create("resnet8"), create("resnet20"))
    assert fragment in str(e.value) and "distill.terms[0]" in str(e.value)


@pytest.mark.parametrize(
    "term, fragment",
    [
        ({"loss": "fsp", "options": {"p": 2}}, "unknown option 'p' of loss 'fsp' (fsp takes no options)"),
        ({"options": {"paraphraser_epochs": 0}}, "paraphraser_epochs must be a whole number"),
        ({"options": {"paraphraser_epochs": 1.5}}, "paraphraser_epochs must be a whole number"),
        ({"options": {"paraphraser_lr": -1}}, "paraphraser_lr must be a positive"),
        ({"options": {"p": 3}}, "p must be 1"),
        ({"options": {"rate": 0.5}}, "unknown option 'rate' of loss 'factor_transfer' (it takes k, p,"),
    ],
)
def test_bad_fsp_and_factor_transfer_options_fail_when_the_config_is_validated(term, fragment):
    term = {"loss": "factor_transfer", "student": "layer3", "teacher": "layer3", **term}
    raw = {"teacher": {"model": {"name": "resnet20"}}, "student": {"model": {"name": "resnet8"}}}
    with pytest.raises(ConfigError) as e:
        build_config({**raw, "distill": {"terms": [{"loss": "ce"}, term]}})
    assert "distill.terms.1.options: " in str(e.value) and fragment in str(e.value)


def test_factor_transfer_term_built_in_python_checks_its_options():
    with pytest.raises(ValueError, match="paraphraser_epochs must be a whole number"):
        FactorTransferTerm(16, 64, "layer3", paraphraser_epochs=0)
    with pytest.raises(ValueError, match="p must be 1"):
        FactorTransferTerm(16, 64, "layer3", p=3)


def test_paraphraser_stage_trains_then_the_student_term_uses_it_frozen():
    torch.manual_seed(0)
    student, teacher = create("resnet8"), create("resnet20")
    frozen = FrozenTeacher(teacher)
    term = {
        "loss": "factor_transfer",
        "weight": 2.0,
        "student": "layer2",
        "teacher": "layer3",
        "options": {"paraphraser_epochs": 3, "paraphraser_lr": 0.01},
    }
    obj, x = _build([term], student, teacher, n=16)
    ft = obj.adapters["term0"]
    assert isinstance(ft, FactorTransferTerm) and isinstance(ft.paraphraser, Paraphraser)
    assert ft.paraphraser.encoder[0].in_channels == 64 and ft.translator.encoder[0].in_channels == 32
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,))
    engine = Engine(resolve_runtime("fp32", None, False), MetricsLogger(None), progress=False)
    tcfg = TrainConfig(epochs=9, batch_size=16, lr=0.1, weight_decay=0.0)
    probe = (images[:16].float() / 255 - 0.5) / 0.25
    records = run_pretraining(
        obj,
        engine,
        frozen,
        lambda: InMemoryLoader(images, labels, 16, shuffle=True, seed=0, mean=[0.5] * 3, std=[0.25] * 3),
        tcfg,
        None,
        "student_kd",
        probe,
    )
    (rec,) = records
    assert rec["term"] == "term0" and rec["stage"] == "paraphraser" and len(rec["history"]) == 3
    # The reconstruction loss falls during the stage, on the training batches and on the probe batch.
    losses = [h["loss.reconstruction"] for h in rec["history"]]
    assert losses[-1] < losses[0] and rec["probe_loss_after"] < 0.9 * rec["probe_loss_before"]
    assert not any(m._forward_hooks for m in teacher.modules())  # the stage's tap is gone
    # Then the paraphraser is frozen: eval mode even when the objective trains, no trainable parameters.
    obj.train()
    assert not ft.paraphraser.training and ft.translator.training
    assert not any(p.requires_grad for p in ft.paraphraser.parameters())
    before = {k: v.clone() for k, v in ft.paraphraser.state_dict().items()}
    with Tap(student, ["layer2"]) as st, Tap(teacher, ["layer3"]) as tt:
        student(x)
        with torch.no_grad():
            teacher(x)
        s_feat, t_feat = st.outputs["layer2"], tt.outputs["layer3"]
        total, _ = obj({"student:layer2": s_feat, "teacher:layer3": t_feat})
    with torch.no_grad():
        expect = 2.0 * factor_transfer(ft.translator(s_feat), ft.paraphraser(t_feat, is_factor=True), p=1)
    torch.testing.assert_close(total.detach(), expect)
    opt = torch.optim.SGD([*student.parameters(), *obj.parameters()], lr=0.1)
    total.backward()
    assert all(p.grad is None for p in ft.paraphraser.parameters())
    assert ft.translator.encoder[0].weight.grad.abs().sum() > 0 and student.conv1.weight.grad.abs().sum() > 0
    opt.step()
    for k, v in ft.paraphraser.state_dict().items():
        torch.testing.assert_close(v, before[k])


def _ft_run_config(train_limit=600):
    return build_config(
        {
            "data": {"dataset": "mnist-small", "val_size": 100, "train_limit": train_limit},
            "teacher": {"model": {"name": "resnet8"}, "train": {"epochs": 0}},
            "student": {"model": {"name": "resnet8"}, "train": {"epochs": 1, "batch_size": 100}},
            "distill": {
                "terms": [
                    {"loss": "ce"},
                    {
                        "loss": "factor_transfer",
                        "weight": 200.0,
                        "student": "layer3",
                        "teacher": "layer3",
                        "options": {"paraphraser_epochs": 3, "paraphraser_lr": 0.01},
                    },
                ]
            },
            "phases": ["teacher", "distill"],
            "runtime": {"progress": False, "tensorboard": False, "precision": "fp32"},
        }
    )


def test_factor_transfer_run_pretrains_the_paraphraser_then_distills_with_it_frozen(tmp_path):
    run = tmp_path / "run"
    summary = run_experiment(_ft_run_config(), run)
    rec = summary["models"]["student_kd"]
    (stage,) = rec["pretraining"]
    assert stage["epochs"] == 3 and [h["epoch"] for h in stage["history"]] == [1, 2, 3]
    assert stage["probe_loss_after"] < stage["probe_loss_before"]
    assert stage["history"][-1]["loss.reconstruction"] < stage["history"][0]["loss.reconstruction"]
    # 500 training images, batch 100, 1 epoch: the stage's steps are not counted as the student's.
    assert rec["steps"] == 5
    ckpt = run / "checkpoints"
    saved, _ = load_checkpoint(ckpt / "student_kd-objective")
    states = sorted(ckpt.glob("student_kd-term1-paraphraser-state-*.json"))
    assert states, sorted(p.name for p in ckpt.iterdir())
    stage_state, meta = load_checkpoint(states[-1].with_suffix(""))
    assert meta["epoch"] == 3
    para = {k[len("model.") :]: v for k, v in stage_state.items() if k.startswith("model.paraphraser.")}
    assert para
    for k, v in para.items():  # distillation left the pre-trained paraphraser exactly as the stage ended it
        torch.testing.assert_close(saved[f"adapters.term1.{k}"], v)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["phase"] == "student_kd-term1-paraphraser" and "loss.reconstruction" in r for r in lines)
    assert any(r["phase"] == "student_kd" and "loss.factor_transfer" in r for r in lines)

    # Resuming after the stage finished loads it (no retraining) and distils to the same student.
    for p in ckpt.glob("student_kd*"):
        if "paraphraser" not in p.name:
            p.unlink()
    again = run_experiment(_ft_run_config(), run, resume=True)
    (stage2,) = again["models"]["student_kd"]["pretraining"]
    assert stage2["probe_loss_after"] == pytest.approx(stage["probe_loss_after"], rel=1e-6)
    assert stage2["history"] == stage["history"]  # elapsed_seconds included: loaded, not trained again
    assert again["models"]["student_kd"]["accuracy"] == rec["accuracy"]
