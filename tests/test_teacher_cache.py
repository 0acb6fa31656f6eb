"""Teacher output cache: exact values, augmentation-consistent draws, keys, corruption, resumable builds."""

import json

import pytest
import torch
import yaml
from torch import nn

from kdkit.cli import main
from kdkit.config import build_config
from kdkit.data.loader import Augment, InMemoryLoader, apply_params
from kdkit.errors import CheckpointError
from kdkit.experiment import run_experiment
from kdkit.models import create
from kdkit.teacher import FrozenTeacher
from kdkit.teacher_cache import CacheSpec, TeacherCache, cache_key, disk_bytes, draws_for

AUG = Augment(jitter=2, flip=True)


def _setup(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=g)
    torch.manual_seed(seed)
    teacher = FrozenTeacher(create("mlp", num_classes=4, in_channels=1, image_size=8, hidden=[16]))
    loader = InMemoryLoader(images, labels, 10, mean=[0.5], std=[0.25])
    return images, labels, teacher, loader.normalize


def _cache(tmp_path, teacher, images, labels, spec, seed=3):
    key = cache_key(teacher.model, images, labels, AUG, spec, seed, "fp32", ([0.5], [0.25]))
    return TeacherCache(tmp_path / key, key, spec)


def test_cached_logits_equal_the_teacher_on_each_fixed_draw(tmp_path):
    images, labels, teacher, norm = _setup()
    spec = CacheSpec(draws=3, shard_size=20)
    cache = _cache(tmp_path, teacher, images, labels, spec)
    draws = draws_for(len(images), AUG, spec, 3)
    cache.build(teacher, images, draws, AUG, norm, batch_size=7)
    logits = cache.load(4)
    assert logits.shape == (50, 3, 4)
    for k in range(3):
        idx = torch.arange(50)
        views = apply_params(images, AUG, draws[idx, torch.full_like(idx, k)])
        torch.testing.assert_close(logits[:, k], teacher(norm(views)).half().float())
    manifest = json.loads(cache.manifest_path.read_text())
    assert [s["file"] for s in manifest["shards"]] == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    assert disk_bytes(50, 3, 4, None) == 50 * 3 * 4 * 2


def test_loader_serves_each_image_one_of_its_draws_with_the_matching_logits(tmp_path):
    images, labels, teacher, norm = _setup()
    spec = CacheSpec(draws=4)
    cache = _cache(tmp_path, teacher, images, labels, spec)
    draws = draws_for(len(images), AUG, spec, 3)
    cache.build(teacher, images, draws, AUG, norm)
    loader = InMemoryLoader(
        images,
        labels,
        16,
        shuffle=True,
        augment=AUG,
        mean=[0.5],
        std=[0.25],
        draws=draws,
        draw_extras={"teacher.logits": cache.load(4)},
    )
    used = set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        for b in loader:
            # The view the student sees is exactly the one the teacher labelled.
            torch.testing.assert_close(b.extras["teacher.logits"], teacher(b.x).half().float())
            used |= {int(i) for i in b.index}
    assert used == set(range(50))


def test_key_changes_with_teacher_data_and_augmentation():
    images, labels, teacher, _ = _setup()
    spec = CacheSpec(draws=2)
    base = cache_key(teacher.model, images, labels, AUG, spec, 0, "fp32", ([0.5], [0.25]))
    other_teacher = _setup(seed=1)[2]
    assert cache_key(other_teacher.model, images, labels, AUG, spec, 0, "fp32", ([0.5], [0.25])) != base
    images2 = images.clone()
    images2[0, 0, 0, 0] ^= 1
    assert cache_key(teacher.model, images2, labels, AUG, spec, 0, "fp32", ([0.5], [0.25])) != base
    assert (
        cache_key(teacher.model, images, labels, Augment(jitter=1), spec, 0, "fp32", ([0.5], [0.25])) != base
    )
    assert (
        cache_key(teacher.model, images, labels, AUG, CacheSpec(draws=3), 0, "fp32", ([0.5], [0.25])) != base
    )
    assert cache_key(teacher.model, images, labels, AUG, spec, 0, "fp32", ([0.5], [0.25])) == base


def test_interrupted_build_resumes_and_corruption_is_refused(tmp_path):
    images, labels, teacher, norm = _setup()
    spec = CacheSpec(draws=1, shard_size=20)
    cache = _cache(tmp_path, teacher, images, labels, spec)
    cache.build(teacher, images, None, Augment(), norm, shards=range(1), write_manifest=False)  # "killed"
    assert not cache.complete()
    first = cache.directory / "shard-00000.safetensors"
    stamp = first.stat().st_mtime_ns
    cache.build(teacher, images, None, Augment(), norm)
    assert cache.complete() and first.stat().st_mtime_ns == stamp  # the finished shard was reused
    shard = cache.directory / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        cache.load(4)


def test_topk_keeps_the_top_values_exactly(tmp_path):
    images, labels, teacher, norm = _setup()
    full = _cache(tmp_path / "a", teacher, images, labels, CacheSpec())
    full.build(teacher, images, None, Augment(), norm)
    dense = full.load(4)
    exact = _cache(tmp_path / "b", teacher, images, labels, CacheSpec(topk=4))
    exact.build(teacher, images, None, Augment(), norm)
    torch.testing.assert_close(exact.load(4), dense)  # k = C is lossless
    approx = _cache(tmp_path / "c", teacher, images, labels, CacheSpec(topk=2))
    approx.build(teacher, images, None, Augment(), norm)
    got = approx.load(4)
    top = dense.topk(2, dim=-1)
    torch.testing.assert_close(got.gather(-1, top.indices), top.values)
    left_out = torch.ones_like(got, dtype=torch.bool).scatter_(-1, top.indices, False)
    # Left-out classes get the weakest kept logit minus log(C - k): never more mass than a kept class.
    fill = top.values[..., 1:] - torch.log(torch.tensor(2.0))
    torch.testing.assert_close(got[left_out], fill.expand_as(got)[left_out], rtol=1e-3, atol=1e-3)


def test_run_with_cached_teacher_and_the_cache_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "cache"))
    raw = {
        "data": {"dataset": "mnist-small", "val_size": 500, "train_limit": 2000},
        "teacher": {"model": {"name": "mlp", "hidden": [64]}, "train": {"epochs": 2}},
        "student": {
            "model": {"name": "mlp", "hidden": [32]},
            "train": {"epochs": 2, "augment": {"jitter": 1}},
        },
        "distill": {"teacher_outputs": "cache", "cache": {"draws": 2}},
        "phases": ["teacher", "distill"],
        "runtime": {"progress": False, "tensorboard": False},
    }
    s = run_experiment(build_config(raw), tmp_path / "run")
    assert (
        s["models"]["student_kd"]["teacher_outputs"] == "cache"
        and s["models"]["student_kd"]["accuracy"] > 0.6
    )
    assert "teacher cache built" in capsys.readouterr().err
    caches = list((tmp_path / "cache" / "teacher-outputs").iterdir())
    assert len(caches) == 1 and (caches[0] / "manifest.json").exists()
    # `kdkit cache` with the saved teacher finds the very same cache and builds nothing.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {**raw, "teacher": {**raw["teacher"], "checkpoint": str(tmp_path / "run/checkpoints/teacher")}}
        )
    )
    assert main(["cache", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "teacher cache ready: (1500, 2, 10)" in err and "built" not in err
    # Feature terms cannot be served from a logit cache: refused before training.
    bad = {
        **raw,
        "distill": {
            **raw["distill"],
            "terms": [{"loss": "fitnet", "student": "features.fc1", "teacher": "features.fc1"}],
        },
    }
    assert main(["run", str(_write(tmp_path / "bad.yaml", bad)), "--run-dir", str(tmp_path / "r2")]) == 2
    assert "read teacher features" in capsys.readouterr().err


def _write(path, doc):
    path.write_text(yaml.safe_dump(doc))
    return path


def test_key_covers_batchnorm_teachers_including_their_scalar_buffers():
    # A conv teacher with BatchNorm carries a 0-dim `num_batches_tracked` buffer; the key must hash it too.
    images, labels, _, _ = _setup()
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    conv(torch.zeros(2, *images.shape[1:]))
    spec = CacheSpec(draws=2)
    base = cache_key(conv, images, labels, AUG, spec, 0, "fp32", ([0.5], [0.25]))
    assert cache_key(conv, images, labels, AUG, spec, 0, "fp32", ([0.5], [0.25])) == base
    conv[1].num_batches_tracked += 1
    assert cache_key(conv, images, labels, AUG, spec, 0, "fp32", ([0.5], [0.25])) != base
