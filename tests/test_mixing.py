"""mixup and CutMix (issue 30): fixed per-image draws, mixed targets, the teacher sees the student's image."""

import json

import pytest
import torch
import yaml

from kdkit.cli import main
from kdkit.config import build_config
from kdkit.data.loader import Augment, InMemoryLoader, apply_params, augment_draws, sample_params
from kdkit.data.mixing import CUTMIX, MIXUP
from kdkit.errors import ConfigError
from kdkit.strategies import make_plan
from kdkit.tasks import ClassificationTask


def _images(n=12, size=8):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_mixup_blends_each_image_with_its_partner_by_its_weight():
    x = _images()
    aug = Augment(mixup=0.4)
    params = sample_params(len(x), aug, torch.Generator().manual_seed(1), torch.arange(len(x)), (8, 8))
    assert (params.mix.mode == MIXUP).all() and sorted(params.mix.partner.tolist()) == list(range(12))
    out = apply_params(x, aug, params, x)
    lam = params.mix.lam.view(-1, 1, 1, 1)
    expected = (lam * x.float() + (1 - lam) * x[params.mix.partner].float()).round().to(torch.uint8)
    assert torch.equal(out, expected) and 0 < params.mix.lam.min() <= params.mix.lam.max() < 1


def test_cutmix_pastes_the_partners_box_and_its_weight_is_the_kept_area():
    x = _images(size=16)
    aug = Augment(cutmix=1.0)
    params = sample_params(len(x), aug, torch.Generator().manual_seed(2), torch.arange(len(x)), (16, 16))
    out = apply_params(x, aug, params, x)
    for i in range(len(x)):
        y0, y1, x0, x1 = params.mix.box[i].tolist()
        partner = x[params.mix.partner[i]]
        assert params.mix.mode[i] == CUTMIX
        assert torch.equal(out[i, :, y0:y1, x0:x1], partner[:, y0:y1, x0:x1])
        mask = torch.ones(16, 16, dtype=torch.bool)
        mask[y0:y1, x0:x1] = False
        assert torch.equal(out[i][:, mask], x[i][:, mask])
        assert float(params.mix.lam[i]) == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 256)


def test_both_on_gives_each_image_one_of_the_two():
    params = sample_params(
        400, Augment(mixup=0.2, cutmix=1.0), torch.Generator().manual_seed(3), torch.arange(50), (8, 8)
    )
    share = float((params.mix.mode == CUTMIX).float().mean())
    assert 0.4 < share < 0.6 and set(params.mix.partner.tolist()) <= set(range(50))


def test_the_loader_yields_mixed_targets_and_the_same_batches_for_the_same_seed():
    x = _images(40)
    labels = torch.arange(40) % 4
    loader = InMemoryLoader(
        x, labels, 10, shuffle=True, seed=5, augment=Augment(flip=True, mixup=0.5), num_classes=4
    )
    batches = [(b.x.clone(), b.y.clone()) for b in loader]
    again = [(b.x, b.y) for b in loader]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    for _, y in batches:
        assert y.shape == (10, 4) and torch.allclose(y.sum(1), torch.ones(10))
        assert (y.max(1).values >= 0.5).all()  # the own class's weight, lam or 1 - lam, whichever is larger
    task = ClassificationTask()
    logits = batches[0][1] * 10  # a model predicting the dominant class of each target
    correct, counted = task.accuracy_counts(logits, batches[0][1])
    assert int(correct) == int(counted) == 10


def test_fixed_draws_make_the_view_the_teacher_cache_labels():
    x = _images(20)
    aug = Augment(jitter=1, cutmix=1.0)
    draws = augment_draws(20, 3, aug, seed=9, size=(8, 8))
    assert draws.mix.partner.shape == (20, 3)
    # The cache computes the teacher's output on apply_params(images[i], draws[i, k], images): the loader
    # serving draw k of image i must show exactly that image.
    fake_logits = torch.arange(20 * 3, dtype=torch.float32).view(20, 3, 1).expand(20, 3, 2).contiguous()
    loader = InMemoryLoader(
        x,
        torch.zeros(20, dtype=torch.long),
        5,
        shuffle=True,
        augment=aug,
        draws=draws,
        draw_extras={"teacher.logits": fake_logits},
        num_classes=2,
    )
    for batch in loader:
        code = batch["teacher.logits"][:, 0].long()  # encodes (image, draw)
        i, k = code // 3, code % 3
        assert torch.equal(i, batch.index)
        expected = apply_params(x[i], aug, draws[i, k], x)
        assert torch.equal(loader.normalize(expected), batch.x)


def _cfg(**distill_train):
    return {
        "name": "mix",
        "data": {"dataset": "mnist-small", "val_size": 200, "train_limit": 1000},
        "teacher": {"model": {"name": "mlp", "hidden": [64]}, "train": {"epochs": 4, "batch_size": 50}},
        "student": {"model": {"name": "mlp", "hidden": [32]}, "train": {"epochs": 1}},
        "distill": {"train": {"epochs": 3, "batch_size": 50, **distill_train}},
        "runtime": {"progress": False, "tensorboard": False},
    }


def test_a_run_distils_with_mixup_through_the_cache_and_keys_the_cache_by_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "cache"))
    for name, augment in (("plain", {"jitter": 1}), ("mixed", {"jitter": 1, "mixup": 0.4})):
        cfg = _cfg(augment=augment)
        cfg["distill"].update({"teacher_outputs": "cache", "cache": {"draws": 2}})
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["run", str(tmp_path / f"{name}.yaml"), "--run-dir", str(tmp_path / name)]) == 0
        models = json.loads((tmp_path / name / "summary.json").read_text())["models"]
        assert models["student_kd"]["accuracy"] > 0.4  # chance: 0.1
    assert len(list((tmp_path / "cache" / "teacher-outputs").iterdir())) == 2  # one cache per augmentation


@pytest.mark.parametrize(
    ("distill", "message"),
    [
        (
            {"terms": [{"loss": "dkd"}], "train": {"epochs": 1, "augment": {"cutmix": 1.0}}},
            r"loss term 0 \('dkd'\) reads class ids, but mixup/cutmix",
        ),
        (
            {"ensemble": {"mode": "relabel", "augment": {"mixup": 0.2}}},
            "mixup/cutmix make no relabelled copies",
        ),
    ],
)
def test_mixing_where_targets_cannot_mix_is_refused_before_training(distill, message):
    raw = _cfg()
    raw["distill"] = distill
    if "ensemble" in distill:
        raw["teacher"] = {"ensemble": [{"model": {"name": "mlp", "hidden": [8]}}] * 2}
    with pytest.raises((ConfigError, ValueError), match=message):
        make_plan(build_config(raw))
