"""Tests for kdkit.models: registry, MLP/CNN, RepDistiller CIFAR ResNets, torchvision/timm adapters."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch
from torch import nn

import kdkit.models as models
from kdkit.errors import KdkitError, ModelError
from kdkit.models import registry
from kdkit.models.text import TEXT_MODELS

# ----------------------------------------------------------------------------- parameter counts


def _block_params(cin: int, cout: int) -> int:
    """BasicBlock: two 3x3 convs (no bias) + two BNs (weight+bias) + 1x1 conv+BN shortcut if shape changes."""
    params = 9 * cin * cout + 9 * cout * cout + 2 * (2 * cout)
    if cin != cout:
        params += cin * cout + 2 * cout
    return params


def resnet_param_formula(depth: int, widths: tuple[int, int, int, int], num_classes: int) -> int:
    """stem (3x3 conv from 3 channels + BN) + 3 stages of n=(depth-2)/6 blocks + fc (weight + bias)."""
    n = (depth - 2) // 6
    total = 9 * 3 * widths[0] + 2 * widths[0]
    prev = widths[0]
    for width in widths[1:]:
        total += _block_params(prev, width) + (n - 1) * _block_params(width, width)
        prev = width
    return total + widths[3] * num_classes + num_classes


CIFAR = (16, 16, 32, 64)
X4 = (32, 64, 128, 256)

# num_classes=100. The first four are the published RepDistiller counts; the others were derived
# with resnet_param_formula above (checked against it in test_param_formula_matches_table).
RESNET_PARAMS_100 = {
    "resnet8": (8, CIFAR, 83_892),
    "resnet14": (14, CIFAR, 181_108),
    "resnet20": (20, CIFAR, 278_324),
    "resnet32": (32, CIFAR, 472_756),
    "resnet44": (44, CIFAR, 667_188),
    "resnet56": (56, CIFAR, 861_620),
    "resnet110": (110, CIFAR, 1_736_564),
    "resnet8x4": (8, X4, 1_233_540),
    "resnet32x4": (32, X4, 7_433_860),
}


def test_param_formula_matches_table() -> None:
    for depth, widths, expected in RESNET_PARAMS_100.values():
        assert resnet_param_formula(depth, widths, 100) == expected


@pytest.mark.parametrize("name", sorted(RESNET_PARAMS_100))
def test_resnet_param_counts_exact(name: str) -> None:
    depth, widths, expected = RESNET_PARAMS_100[name]
    assert models.count_params(models.create(name, num_classes=100)) == expected
    # Only the fc layer depends on num_classes.
    assert models.count_params(models.create(name, num_classes=10)) == resnet_param_formula(depth, widths, 10)


def test_published_counts() -> None:
    published = {"resnet20": 278_324, "resnet56": 861_620, "resnet8x4": 1_233_540, "resnet32x4": 7_433_860}
    for name, count in published.items():
        assert models.count_params(models.create(name, num_classes=100)) == count


def test_mlp_param_count_mnist() -> None:
    model = models.create("mlp", in_channels=1, image_size=28, hidden=[800, 800])
    assert models.count_params(model) == (784 * 800 + 800) + (800 * 800 + 800) + (800 * 10 + 10)
    assert model.in_features == 784


def test_count_params_trainable_only_and_size() -> None:
    model = models.create("mlp", in_features=4, hidden=[3], num_classes=2)
    total = (4 * 3 + 3) + (3 * 2 + 2)
    assert models.count_params(model) == total
    model.features.fc1.weight.requires_grad_(False)
    assert models.count_params(model, trainable_only=True) == total - 12
    assert models.model_size_mb(model) == pytest.approx(total * 4 / 2**20)
    # Buffers count too: BN running stats (fp32) and num_batches_tracked (int64).
    bn = nn.BatchNorm2d(5)
    assert models.model_size_mb(bn) == pytest.approx((10 * 4 + 10 * 4 + 8) / 2**20)


# ----------------------------------------------------------------------------- structure / forward


def test_list_models() -> None:
    names = models.list_models()
    for name in ["mlp", "cnn", *RESNET_PARAMS_100]:
        assert name in names
    assert names.index("resnet8") < names.index("resnet14") < names.index("resnet110")  # natural order


TOKEN_MODELS = {"gpt"}  # read token ids, not images: tests/test_gpt.py


@pytest.mark.parametrize("name", [n for n in models.list_models() if n not in {*TEXT_MODELS, *TOKEN_MODELS}])
def test_forward_shape_cifar(name: str) -> None:
    model = models.create(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.out_features == 7


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_forward_shape_mnist(name: str) -> None:
    model = models.create(name, num_classes=10, in_channels=1, image_size=28).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet_layer_names_and_single_classifier() -> None:
    model = models.create("resnet20", num_classes=100)
    names = dict(model.named_modules())
    for path in ["conv1", "bn1", "layer1", "layer2", "layer3", "layer3.1", "layer3.2.conv2", "fc"]:
        assert path in names
    assert "layer4" not in names
    assert "layer1.0.downsample" not in names  # 16 -> 16, stride 1: identity shortcut
    assert isinstance(names["layer2.0.downsample.0"], nn.Conv2d)
    assert isinstance(names["layer2.0.downsample.1"], nn.BatchNorm2d)
    assert model.classifier is model.fc
    keys = list(model.state_dict())
    assert not any(k.startswith("classifier") for k in keys)
    assert "fc.weight" in keys and "fc.bias" in keys
    # Replacing the head through the alias must replace fc, not register a second child.
    model.classifier = nn.Linear(64, 5)
    assert model.fc.out_features == 5 and "classifier" not in dict(model.named_children())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_resnet_x4_has_shortcut_in_layer1_and_kaiming_init() -> None:
    torch.manual_seed(0)
    model = models.create("resnet8x4")
    assert isinstance(model.layer1[0].downsample, nn.Sequential)  # 32 -> 64 channels
    conv = model.layer3[0].conv2  # 256 -> 256, 3x3: fan_out = 256 * 9
    expected_std = (2.0 / (256 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.all(model.layer3[0].bn2.weight == 1) and torch.all(model.layer3[0].bn2.bias == 0)


def test_resnet_preactivation_hook_and_global_pool_matches_avgpool8() -> None:
    model = models.create("resnet8").eval()
    seen: dict[str, torch.Tensor] = {}
    model.layer3[0].relu_out.register_forward_pre_hook(
        lambda m, args: seen.setdefault("pre", args[0].clone())
    )
    feats: dict[str, torch.Tensor] = {}
    model.layer3.register_forward_hook(lambda m, args, out: feats.setdefault("l3", out))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
        assert (seen["pre"] < 0).any()  # pre-activation keeps negatives (RepDistiller's `preact`)
        # RepDistiller pools with AvgPool2d(8) on the 8x8 map; the adaptive pool must agree.
        pooled = nn.AvgPool2d(8)(feats["l3"]).flatten(1)
        torch.testing.assert_close(out, model.fc(pooled))


def test_resnet_bad_depth() -> None:
    with pytest.raises(ModelError, match="6n\\+2"):
        models.ResNet(21, CIFAR)


def test_cnn_options() -> None:
    model = models.create("cnn", channels=[8, 16], dropout=0.1, num_classes=3)
    assert len(model.features) == 2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ModelError, match="too small"):
        models.create("cnn", image_size=4, channels=[8, 8, 8])
    with pytest.raises(ModelError, match="channels"):
        models.create("cnn", channels=[])


# ----------------------------------------------------------------------------- max-norm


def test_max_norm_constraint() -> None:
    torch.manual_seed(0)
    max_norm = 2.0
    model = models.create("mlp", in_features=20, hidden=[16, 8], num_classes=3, max_norm=max_norm)
    fc1, fc2 = model.hidden_layers()
    with torch.no_grad():
        fc1.weight.normal_(0, 0.01)  # every row far below the bound
        fc2.weight.normal_(0, 0.01)
        fc2.weight[:4] *= 1000.0  # rows 0-3 far above the bound
        model.classifier.weight.fill_(10.0)
    small_before = fc1.weight.detach().clone()
    rows_below = fc2.weight[4:].detach().clone()
    head_before = model.classifier.weight.detach().clone()

    models.apply_constraints(model)

    for layer in (fc1, fc2):
        assert (layer.weight.norm(dim=1) <= max_norm + 1e-6).all()
    assert torch.equal(fc1.weight, small_before)  # untouched, bit for bit
    assert torch.equal(fc2.weight[4:], rows_below)
    torch.testing.assert_close(fc2.weight[:4].norm(dim=1), torch.full((4,), max_norm))
    # Only hidden units are constrained (Hinton et al. 2012); the output layer is free.
    assert torch.equal(model.classifier.weight, head_before)
    assert fc2.weight.is_leaf and fc2.weight.requires_grad  # in-place under no_grad: still a trainable leaf


def test_max_norm_off_and_models_without_constraints() -> None:
    model = models.create("mlp", in_features=4, hidden=[3], num_classes=2)
    with torch.no_grad():
        model.features.fc1.weight.fill_(100.0)
    models.apply_constraints(model)
    assert torch.all(model.features.fc1.weight == 100.0)
    models.apply_constraints(models.create("resnet8"))  # no constrain_ anywhere: no-op


def test_apply_constraints_calls_every_submodule() -> None:
    calls: list[str] = []

    class Constrained(nn.Module):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag

        def constrain_(self) -> None:
            calls.append(self.tag)

    models.apply_constraints(nn.Sequential(Constrained("a"), nn.Sequential(Constrained("b"))))
    assert calls == ["a", "b"]


# ----------------------------------------------------------------------------- errors


def test_unknown_model_suggests() -> None:
    with pytest.raises(ModelError) as info:
        models.create("resnet21")
    msg = str(info.value)
    assert "resnet21" in msg and "resnet20" in msg and "kdkit.models.list_models()" in msg
    assert isinstance(info.value, KdkitError)


def test_bad_kwarg_names_accepted_options() -> None:
    with pytest.raises(ModelError) as info:
        models.create("mlp", hiden=[10])
    msg = str(info.value)
    assert "hiden" in msg and "'hidden'" in msg and "max_norm" in msg and "dropout" in msg
    with pytest.raises(ModelError, match="depth"):
        models.create("resnet20", depth=32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": True}, "in_channels"),
        ({"image_size": "32"}, "image_size"),
        ({"activation": "rleu"}, "'relu'"),
        ({"dropout": 1.0}, "dropout"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"hidden": [10, 0]}, "hidden"),
    ],
)
def test_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        models.create("mlp", **kwargs)


def test_mlp_input_mismatch_is_clear() -> None:
    model = models.create("mlp", in_channels=1, image_size=28, hidden=[8])
    with pytest.raises(ModelError, match="784"):
        model(torch.randn(2, 3, 32, 32))


def test_unknown_source_prefix() -> None:
    with pytest.raises(ModelError, match="torchvision:<name>"):
        models.create("keras:resnet50")


# ----------------------------------------------------------------------------- registry


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.usefixtures("scratch_registry")
def test_register_custom_model() -> None:
    @models.register_model
    def tiny(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    @models.register_model("Tiny_Kw")
    def tiny_kw(**kwargs: Any) -> nn.Module:
        return nn.Linear(1, kwargs["num_classes"])

    assert "tiny" in models.list_models() and "tiny_kw" in models.list_models()
    tiny_model = models.create("tiny", num_classes=4, image_size=2, width=8)
    assert tiny_model(torch.randn(2, 3, 2, 2)).shape == (2, 4)
    assert models.create("TINY_KW", num_classes=3, anything=1).out_features == 3  # **kwargs: no check

    with pytest.raises(ModelError, match="already registered"):
        models.register_model("tiny")(lambda num_classes, in_channels, image_size: nn.Identity())
    with pytest.raises(ModelError, match="image_size"):
        models.register_model("bad")(lambda num_classes, in_channels: nn.Identity())
    with pytest.raises(ModelError, match="':'"):
        models.register_model("a:b")(tiny)


# ----------------------------------------------------------------------------- external


class _TinyNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _fake_timm(calls: list[tuple[str, dict[str, Any]]]) -> types.ModuleType:
    timm = types.ModuleType("timm")

    def create_model(name: str, **kwargs: Any) -> nn.Module:
        calls.append((name, kwargs))
        if name == "nope":
            raise RuntimeError("Unknown model (nope)")
        return _TinyNet(kwargs["num_classes"])

    timm.create_model = create_model  # type: ignore[attr-defined]
    return timm


def test_timm_created_without_pretrained(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setitem(sys.modules, "timm", _fake_timm(calls))
    model = models.create("timm:foo", num_classes=7)
    assert calls[0][0] == "foo"
    assert calls[0][1]["pretrained"] is False and calls[0][1]["num_classes"] == 7
    assert calls[0][1]["in_chans"] == 3
    # classifier is exposed without adding a second registration of the head.
    assert model.classifier is model.head
    assert not any(k.startswith("classifier") for k in model.state_dict())
    assert models.get_classifier(model) is model.head

    with pytest.raises(ModelError, match="nope"):
        models.create("timm:nope")
    with pytest.raises(ModelError, match="never"):
        models.create("timm:foo", pretrained=True)


def test_torchvision_created_without_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    tv = types.ModuleType("torchvision")
    tv_models = types.ModuleType("torchvision.models")

    def get_model(name: str, **kwargs: Any) -> nn.Module:
        calls.append((name, kwargs))
        return _TinyNet(kwargs["num_classes"])

    tv_models.get_model = get_model  # type: ignore[attr-defined]
    tv.models = tv_models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)

    model = models.create("torchvision:resnet18", num_classes=5)
    assert calls == [("resnet18", {"weights": None, "num_classes": 5})]
    assert model.classifier.out_features == 5
    with pytest.raises(ModelError, match="3 input channels"):
        models.create("torchvision:resnet18", in_channels=1)


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_missing_library(monkeypatch: pytest.MonkeyPatch, library: str) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # makes `import <library>` raise ImportError
    with pytest.raises(ModelError, match=r"kdkit\[vision\]"):
        models.create(f"{library}:resnet18")


def test_broken_library_import(monkeypatch: pytest.MonkeyPatch) -> None:
    class _Broken:
        """Meta-path finder simulating a wheel built for another torch (fails at import with OSError)."""

        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name == "timm":
                raise OSError("undefined symbol: _ZN3c10")
            return None

    monkeypatch.delitem(sys.modules, "timm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Broken(), *sys.meta_path])
    with pytest.raises(ModelError, match="failed to import"):
        models.create("timm:resnet18")


def test_get_classifier_fallback() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert models.get_classifier(net) is net[2]
    with pytest.raises(ModelError):
        models.get_classifier(nn.ReLU())
