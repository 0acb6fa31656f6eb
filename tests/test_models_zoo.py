"""RepDistiller CIFAR zoo beyond ResNets: WRN, VGG(-BN), MobileNetV2 (mobile_half), ShuffleNet V1/V2.

Parameter counts are checked against formulas written here from RepDistiller's layer definitions (an
independent re-statement, not the model code), and against the published figures where they exist.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdkit import models
from kdkit.errors import ModelError

# ------------------------------------------------------------------------ parameter-count formulas


def wrn_param_formula(depth: int, k: int, num_classes: int, in_channels: int = 3) -> int:
    """WRN-depth-k: conv3x3 stem, n pre-act blocks per stage (BN, conv3x3, BN, conv3x3, 1x1 shortcut
    when widths differ), final BN, Linear. No conv biases."""
    widths = [16, 16 * k, 32 * k, 64 * k]
    n = (depth - 4) // 6
    total = 9 * in_channels * widths[0]
    cin = widths[0]
    for cout in widths[1:]:
        for i in range(n):
            a = cin if i == 0 else cout
            total += 2 * a + 9 * a * cout + 2 * cout + 9 * cout * cout + (a * cout if a != cout else 0)
        cin = cout
    return total + 2 * widths[3] + widths[3] * num_classes + num_classes


VGG_CFGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def vgg_param_formula(name: str, num_classes: int, batch_norm: bool = True, in_channels: int = 3) -> int:
    """Every conv is 3x3 with bias (+ BN weight and bias); the head is Linear(512, num_classes)."""
    total, cin = 0, in_channels
    for group in VGG_CFGS[name]:
        for v in group:
            total += 9 * cin * v + v + (2 * v if batch_norm else 0)
            cin = v
    return total + 512 * num_classes + num_classes


def mobilenetv2_param_formula(num_classes: int, t: int = 6, w: float = 0.5, in_channels: int = 3) -> int:
    """Stem conv3x3-BN, inverted residuals (1x1 expand-BN, dw3x3-BN, 1x1 project-BN), 1x1 conv-BN to
    1280 (for w <= 1), Linear. No conv biases."""
    setting = [(1, 16, 1), (t, 24, 2), (t, 32, 3), (t, 64, 4), (t, 96, 3), (t, 160, 3), (t, 320, 1)]
    cin = int(32 * w)
    total = 9 * in_channels * cin + 2 * cin
    for e, c, n in setting:
        cout = int(c * w)
        for _ in range(n):
            h = cin * e
            total += cin * h + 2 * h + 9 * h + 2 * h + h * cout + 2 * cout
            cin = cout
    last = int(1280 * w) if w > 1.0 else 1280
    return total + cin * last + 2 * last + last * num_classes + num_classes


def shufflenetv1_param_formula(num_classes: int, in_channels: int = 3) -> int:
    """1x1 stem to 24 + BN; bottlenecks (1x1 group conv, dw3x3, 1x1 group conv, 3 BNs; the first 1x1
    after the stem is dense; a stage's first block outputs out - in channels, the shortcut the rest)."""
    total, cin, groups = 24 * in_channels + 48, 24, 3
    for out, n in zip((240, 480, 960), (4, 8, 4)):
        for i in range(n):
            o = out - (cin if i == 0 else 0)
            mid = o // 4
            g1 = 1 if cin == 24 else groups
            total += cin * mid // g1 + 2 * mid + 9 * mid + 2 * mid + mid * o // groups + 2 * o
            cin = out
    return total + 960 * num_classes + num_classes


def shufflenetv2_param_formula(num_classes: int, in_channels: int = 3) -> int:
    """1x1 stem to 24 + BN; per stage a DownBlock (left dw3x3-BN, 1x1-BN; right 1x1-BN, dw3x3-BN,
    1x1-BN, each to out/2) and BasicBlocks on half the channels (1x1-BN, dw3x3-BN, 1x1-BN); 1x1 conv
    464->1024 + BN; Linear."""
    total, cin = 24 * in_channels + 48, 24
    for out, n in zip((116, 232, 464), (3, 7, 3)):
        m = out // 2
        total += 9 * cin + 2 * cin + cin * m + 2 * m + cin * m + 2 * m + 9 * m + 2 * m + m * m + 2 * m
        h = out // 2
        total += n * (h * h + 2 * h + 9 * h + 2 * h + h * h + 2 * h)
        cin = out
    return total + 464 * 1024 + 2 * 1024 + 1024 * num_classes + num_classes


FORMULAS = {
    "wrn_16_1": lambda nc, c=3: wrn_param_formula(16, 1, nc, c),
    "wrn_16_2": lambda nc, c=3: wrn_param_formula(16, 2, nc, c),
    "wrn_40_1": lambda nc, c=3: wrn_param_formula(40, 1, nc, c),
    "wrn_40_2": lambda nc, c=3: wrn_param_formula(40, 2, nc, c),
    **{v: (lambda nc, c=3, _v=v: vgg_param_formula(_v, nc, in_channels=c)) for v in VGG_CFGS},
    "mobilenetv2": lambda nc, c=3: mobilenetv2_param_formula(nc, in_channels=c),
    "shufflenetv1": lambda nc, c=3: shufflenetv1_param_formula(nc, c),
    "shufflenetv2": lambda nc, c=3: shufflenetv2_param_formula(nc, c),
}

# num_classes=100 counts, equal to the formulas above (checked in test_formulas_match_table).
EXPECTED_100 = {
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,  # published
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,  # published
    "vgg8": 3_965_028,  # published (RepDistiller vgg8_bn)
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,  # published (RepDistiller vgg13_bn)
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,  # published as 0.81M
    "shufflenetv1": 949_258,  # published as 0.95M
    "shufflenetv2": 1_355_528,  # published as 1.36M
}
ZOO = list(EXPECTED_100)

# Module path of each family's first convolution (must take in_channels).
FIRST_CONV = {"wrn": "conv1", "vgg": "block0.0", "mobilenetv2": "conv1.0", "shufflenet": "conv1"}


def _family(name: str) -> str:
    return next(f for f in FIRST_CONV if name.startswith(f))


@functools.cache
def _model(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return models.create(name, num_classes=num_classes, in_channels=in_channels).eval()


def _outputs(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` with forward hooks on ``paths`` and return what each module produced."""
    seen: dict[str, torch.Tensor] = {}

    def grab(path: str):
        return lambda module, args, output: seen.__setitem__(path, output)

    handles = [model.get_submodule(p).register_forward_hook(grab(p)) for p in paths]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


# ------------------------------------------------------------------------------------------ counts


def test_formulas_match_table_and_published_figures() -> None:
    for name, expected in EXPECTED_100.items():
        assert FORMULAS[name](100) == expected, name
    published_exact = {"wrn_40_2": 2_255_156, "wrn_16_2": 703_284, "vgg13": 9_462_180, "vgg8": 3_965_028}
    for name, count in published_exact.items():
        assert EXPECTED_100[name] == count
    published_millions = {"mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36}
    for name, millions in published_millions.items():
        assert round(EXPECTED_100[name] / 1e6, 2) == millions


@pytest.mark.parametrize("name", ZOO)
def test_param_counts_exact(name: str) -> None:
    assert name in models.list_models()
    assert models.count_params(_model(name, 100)) == EXPECTED_100[name]
    assert models.count_params(_model(name, 10)) == FORMULAS[name](10)
    m1 = _model(name, 10, 1)
    assert models.count_params(m1) == FORMULAS[name](10, 1)
    assert m1.get_submodule(FIRST_CONV[_family(name)]).in_channels == 1


def test_vgg_plain_option_counts() -> None:
    plain = models.create("vgg8", num_classes=100, batch_norm=False)
    assert models.count_params(plain) == vgg_param_formula("vgg8", 100, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


# ------------------------------------------------------------------------------- forward and heads


@pytest.mark.parametrize("name", ZOO)
def test_forward_shapes_32_and_28(name: str) -> None:
    with torch.no_grad():
        assert _model(name, 100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        assert _model(name, 10, 1)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ZOO)
def test_classifier_is_last_linear_registered_once(name: str) -> None:
    model = _model(name, 100)
    head = model.classifier
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert isinstance(head, nn.Linear) and head is linears[-1] and len(linears) == 1
    assert models.get_classifier(model) is head and head.out_features == 100
    # The Linear appears under exactly one name (no "classifier.*" next to "fc.*"/"linear.*").
    assert sum(m is head for _, m in model.named_modules(remove_duplicate=False)) == 1
    sd = model.state_dict()
    assert sum(t.data_ptr() == head.weight.data_ptr() for t in sd.values()) == 1
    head_name = {"wrn": "fc", "vgg": "classifier", "mobilenetv2": "classifier", "shufflenet": "linear"}[
        _family(name)
    ]
    head_keys = [k for k in sd if k.split(".")[0] in ("fc", "classifier", "linear")]
    assert head_keys == [f"{head_name}.weight", f"{head_name}.bias"]
    assert sum(p is head.weight for _, p in model.named_parameters(remove_duplicate=False)) == 1


@pytest.mark.parametrize("name", ["wrn_16_1", "shufflenetv1", "shufflenetv2"])
def test_classifier_alias_assignment_replaces_head(name: str) -> None:
    model = models.create(name, num_classes=100)
    real = {"wrn": "fc", "shufflenet": "linear"}[_family(name)]
    new = nn.Linear(model.classifier.in_features, 7)
    model.classifier = new
    assert getattr(model, real) is new and model.classifier is new
    assert "classifier" not in dict(model.named_children())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


TAP_PATHS = {
    "wrn_40_2": [
        "conv1",
        "block1",
        "block2",
        "block3",
        "block2.layer.0.bn1",
        "block3.layer.0.bn1",
        "bn1",
        "relu",
    ],
    "vgg13": ["block0", "block1", "block4", "relu1", "relu4", "pool0", "pool4", "classifier"],
    "mobilenetv2": ["conv1", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "blocks.6.0.conv.7", "conv2"],
    "shufflenetv1": ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer3.3.relu_out", "linear"],
    "shufflenetv2": ["conv1", "layer1", "layer2.0", "layer3", "layer3.3.bn3", "conv2", "bn2", "linear"],
}


@pytest.mark.parametrize("name", list(TAP_PATHS))
def test_tap_paths_exist_and_see_tensors(name: str) -> None:
    model = _model(name, 100)
    with torch.no_grad():
        seen = _outputs(model, TAP_PATHS[name], torch.randn(2, 3, 32, 32))
    assert set(seen) == set(TAP_PATHS[name])
    assert all(isinstance(t, torch.Tensor) and t.shape[0] == 2 for t in seen.values())


def test_stage_feature_shapes_on_32x32() -> None:
    # RepDistiller's feature maps: WRN 32/16/8, VGG blocks 32/16/8/4/4, MobileNetV2 16..2, Shuffle 16/8/4.
    expect = {
        "wrn_40_2": {"block1": (32, 32, 32), "block2": (64, 16, 16), "block3": (128, 8, 8)},
        "vgg8": {
            "block0": (64, 32, 32),
            "block1": (128, 16, 16),
            "block3": (512, 4, 4),
            "block4": (512, 4, 4),
        },
        "mobilenetv2": {
            "conv1": (16, 16, 16),
            "blocks.2": (16, 8, 8),
            "blocks.4": (48, 4, 4),
            "conv2": (1280, 2, 2),
        },
        "shufflenetv1": {"layer1": (240, 16, 16), "layer2": (480, 8, 8), "layer3": (960, 4, 4)},
        "shufflenetv2": {
            "layer1": (116, 16, 16),
            "layer2": (232, 8, 8),
            "layer3": (464, 4, 4),
            "conv2": (1024, 4, 4),
        },
    }
    for name, paths in expect.items():
        model = _model(name, 100)
        with torch.no_grad():
            outs = _outputs(model, list(paths), torch.randn(2, 3, 32, 32))
        shapes = {p: tuple(t.shape[1:]) for p, t in outs.items()}
        assert shapes == paths, name


# Pool RepDistiller applies to the final map of a 32x32 input, and that map's size.
REPDISTILLER_POOL = {
    "wrn_16_2": (lambda t: F.avg_pool2d(t, 8), 8),
    "mobilenetv2": (nn.AvgPool2d(32 // 16, ceil_mode=True), 2),
    "shufflenetv1": (lambda t: F.avg_pool2d(t, 4), 4),
    "shufflenetv2": (lambda t: F.avg_pool2d(t, 4), 4),
    "vgg8": (nn.AdaptiveAvgPool2d((1, 1)), 4),  # adaptive in RepDistiller already
}


@pytest.mark.parametrize("name", list(REPDISTILLER_POOL))
def test_adaptive_pool_equals_repdistiller_pool_on_32x32(name: str) -> None:
    model = _model(name, 100)
    pool_path = "pool4" if name.startswith("vgg") else "avgpool"
    grabbed: dict[str, torch.Tensor] = {}
    h1 = model.get_submodule(pool_path).register_forward_pre_hook(
        lambda m, a: grabbed.__setitem__("map", a[0])
    )
    h2 = model.classifier.register_forward_pre_hook(lambda m, a: grabbed.__setitem__("vec", a[0]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    h1.remove()
    h2.remove()
    rd_pool, size = REPDISTILLER_POOL[name]
    assert grabbed["map"].shape[-2:] == (size, size)
    torch.testing.assert_close(grabbed["vec"], rd_pool(grabbed["map"]).flatten(1), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- taps see pre-activations (no in-place)


def test_bn_taps_see_preactivations() -> None:
    # RepDistiller's "preact" features are BN outputs followed by a ReLU; with in-place ReLUs a hook on
    # the BN would return the activated tensor. Here the hook keeps the negatives.
    cases = {
        "wrn_16_1": ("bn1", "relu"),
        "vgg8": ("block1", "relu1"),
        "mobilenetv2": ("conv2.1", "conv2"),
    }
    for name, (pre, post) in cases.items():
        model = models.create(name, num_classes=10).train()  # batch statistics: BN outputs are centred
        seen = _outputs(model, [pre, post], torch.randn(4, 3, 32, 32))
        assert (seen[pre] < 0).any(), name
        torch.testing.assert_close(seen[post], F.relu(seen[pre]))


def test_shufflenetv1_relu_out_prehook_gives_preact() -> None:
    model = _model("shufflenetv1", 100)
    got: dict[str, torch.Tensor] = {}
    block = model.get_submodule("layer1.3")
    h1 = block.relu_out.register_forward_pre_hook(lambda m, a: got.__setitem__("pre", a[0]))
    h2 = block.register_forward_hook(lambda m, a, o: got.__setitem__("out", o))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    h1.remove()
    h2.remove()
    assert (got["pre"] < 0).any()
    torch.testing.assert_close(got["out"], F.relu(got["pre"]))


# ------------------------------------------------------------------ RepDistiller state_dict layout, init


def test_repdistiller_state_dict_names() -> None:
    sd = _model("wrn_40_2", 100).state_dict()
    assert sd["block1.layer.0.convShortcut.weight"].shape == (32, 16, 1, 1)
    assert "block1.layer.1.convShortcut.weight" not in sd
    assert sd["block3.layer.5.conv2.weight"].shape == (128, 128, 3, 3)
    assert sd["bn1.running_var"].shape == (128,) and sd["fc.weight"].shape == (100, 128)
    sd = _model("vgg13", 100).state_dict()
    assert sd["block0.0.bias"].shape == (64,) and sd["block0.1.running_mean"].shape == (64,)
    assert sd["block0.3.weight"].shape == (64, 64, 3, 3) and "block0.5.weight" not in sd
    assert sd["classifier.weight"].shape == (100, 512)
    sd = _model("mobilenetv2", 100).state_dict()
    assert sd["blocks.0.0.conv.0.weight"].shape == (16, 16, 1, 1)
    assert sd["blocks.2.0.conv.3.weight"].shape == (72, 1, 3, 3)
    assert sd["conv2.0.weight"].shape == (1280, 160, 1, 1) and sd["classifier.weight"].shape == (100, 1280)
    sd = _model("shufflenetv1", 100).state_dict()
    assert sd["layer1.0.conv1.weight"].shape == (54, 24, 1, 1)
    assert sd["layer1.0.conv3.weight"].shape == (216, 18, 1, 1)
    assert sd["layer2.1.conv1.weight"].shape == (120, 160, 1, 1) and sd["linear.weight"].shape == (100, 960)
    sd = _model("shufflenetv2", 100).state_dict()
    assert sd["layer1.0.conv1.weight"].shape == (24, 1, 3, 3) and sd["layer1.0.conv5.weight"].shape == (
        58,
        58,
        1,
        1,
    )
    assert sd["layer1.1.conv1.weight"].shape == (58, 58, 1, 1) and sd["linear.weight"].shape == (100, 1024)


def test_mobilenetv2_loads_repdistiller_classifier_keys() -> None:
    src = models.create("mobilenetv2", num_classes=100)
    sd = src.state_dict()
    sd["classifier.0.weight"] = sd.pop("classifier.weight")  # RepDistiller's head is Sequential(Linear)
    sd["classifier.0.bias"] = sd.pop("classifier.bias")
    dst = models.create("mobilenetv2", num_classes=100)
    dst.load_state_dict(sd, strict=True)
    assert torch.equal(dst.classifier.weight, src.classifier.weight)


def test_repdistiller_initialisation() -> None:
    torch.manual_seed(0)
    wrn = models.create("wrn_40_2", num_classes=100)
    conv = wrn.get_submodule("block3.layer.1.conv1")  # 128 x 128 x 3 x 3: std sqrt(2 / (9 * 128))
    assert abs(conv.weight.std().item() / (2 / (9 * 128)) ** 0.5 - 1) < 0.05
    assert torch.all(wrn.fc.bias == 0) and torch.all(wrn.bn1.weight == 1) and torch.all(wrn.bn1.bias == 0)
    vgg = models.create("vgg8", num_classes=100)
    assert abs(vgg.classifier.weight.std().item() / 0.01 - 1) < 0.05 and torch.all(vgg.classifier.bias == 0)
    assert all(torch.all(m.bias == 0) for m in vgg.modules() if isinstance(m, nn.Conv2d))
    conv = vgg.get_submodule("block3.0")  # 512 x 256 x 3 x 3: std sqrt(2 / (9 * 512))
    assert abs(conv.weight.std().item() / (2 / (9 * 512)) ** 0.5 - 1) < 0.05
    mbv2 = models.create("mobilenetv2", num_classes=100)
    assert abs(mbv2.classifier.weight.std().item() / 0.01 - 1) < 0.05
    dw = mbv2.get_submodule("blocks.5.1.conv.3")  # depthwise 480 x 1 x 3 x 3: std sqrt(2 / (9 * 480))
    assert abs(dw.weight.std().item() / (2 / (9 * 480)) ** 0.5 - 1) < 0.05


# ------------------------------------------------------------------------------------------ options


def test_options_and_errors() -> None:
    assert models.create("wrn_16_1", drop_rate=0.3).block1.layer[0].drop_rate == 0.3
    full = models.create("mobilenetv2", num_classes=100, width_mult=1.0)
    assert models.count_params(full) == mobilenetv2_param_formula(100, w=1.0)
    with pytest.raises(ModelError, match="6n\\+4"):
        models.wrn.WideResNet(depth=18)
    with pytest.raises(ModelError, match="no option"):
        models.create("shufflenetv2", width_mult=0.5)
    with pytest.raises(ModelError, match="drop_rate"):
        models.create("wrn_40_2", drop_rate=1.5)
