"""Quantization-aware training: int8 rounding emulated as ONNX Runtime's QDQ model computes it."""

import copy

import pytest
import torch
from torch import nn

from kdkit.compress import export_onnx, ort_session, quantize_onnx, run_onnx
from kdkit.compress.qat import ActivationFakeQuant, QatError, QuantizationAware, WeightFakeQuant
from kdkit.models import create

torch.set_num_threads(1)


def _calibration(loader, n):
    return [b.x for b, _ in zip(loader, range(n))]


def _int8_logits(model, calib, x, tmp_path):
    fp32 = export_onnx(model, x[:4], tmp_path / "m.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "m8.onnx", calib, max_batches=len(calib))
    return torch.from_numpy(run_onnx(ort_session(int8), x))


def test_emulated_int8_mlp_computes_what_onnx_runtime_computes(tmp_path, mnist_mlp):
    model, train_loader, test_loader = mnist_mlp
    calib = _calibration(train_loader, 4)
    x = next(iter(test_loader)).x
    ort = _int8_logits(model, calib, x, tmp_path)
    qa = QuantizationAware(copy.deepcopy(model))
    assert qa.calibrate(calib, 10) == 4
    with torch.no_grad():
        emulated, flt = qa.model.eval()(x), model(x)
    # The float model is off by the rounding (0.04 on average here); the emulation by float noise only,
    # plus one output step (logit range / 255) where a value sits on a rounding boundary.
    step = (qa.observers["output"].hi - qa.observers["output"].lo).item() / 255
    assert (flt - ort).abs().mean() > 20 * (emulated - ort).abs().mean()
    assert (emulated - ort).abs().max() <= 1.01 * step
    assert torch.equal(emulated.argmax(1), ort.argmax(1))


def test_emulated_int8_resnet_is_close_to_onnx_runtime(tmp_path):
    # BatchNorm is folded into the convolutions by ONNX Runtime: per-channel rounding is unchanged by that.
    torch.manual_seed(0)
    model = create("resnet8", num_classes=10, in_channels=3).eval()
    with torch.no_grad():  # BN statistics that are not the identity, so folding changes the weights
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    calib = [torch.randn(16, 3, 16, 16) for _ in range(3)]
    x = torch.randn(64, 3, 16, 16)
    ort = _int8_logits(model, calib, x, tmp_path)
    qa = QuantizationAware(copy.deepcopy(model))
    qa.calibrate(calib, 3)
    with torch.no_grad():
        emulated, flt = qa.model.eval()(x), model(x)
    # In steps of the uint8 logits: the emulation gives ONNX Runtime's very value for about half the logits
    # (the float model for almost none) and is within one step for 9 in 10. Not exact: the inputs of
    # residual additions are rounded by ONNX Runtime but not emulated.
    step = (qa.observers["output"].hi - qa.observers["output"].lo).item() / 255
    emu_off, flt_off = (emulated - ort).abs() / step, (flt - ort).abs() / step
    assert (emu_off < 0.01).float().mean() > 0.3 > 0.05 > (flt_off < 0.01).float().mean()
    assert (emu_off <= 1.01).float().mean() > 0.9 > 0.7 > (flt_off <= 1.01).float().mean()


def test_weights_round_per_channel_and_gradients_pass_straight_through():
    w = torch.tensor([[0.5, -1.0, 0.26], [0.0, 0.0, 0.0], [3.0, 1.0, -0.01]], requires_grad=True)
    q = WeightFakeQuant()(w)
    # ONNX Runtime's symmetric int8: scale max|w| / 127 per row, values in [-127, 127].
    for row in (0, 2):
        scale = w[row].abs().max().item() / 127
        assert torch.allclose(q[row], torch.round(w[row].detach() / scale) * scale)
    assert q[0, 1].item() == -1.0 and q[2, 0].item() == 3.0  # the extremes are exact
    assert torch.equal(q[1], torch.zeros(3))  # a channel of zeros stays zero
    assert q[2, 2].item() == 0.0  # -0.01 is below half a step (3 / 254)
    (q * torch.arange(9.0).view(3, 3)).sum().backward()
    assert torch.equal(w.grad, torch.arange(9.0).view(3, 3))


def test_activation_ranges_calibrate_then_follow_training_batches():
    obs = ActivationFakeQuant()
    obs(torch.tensor([0.5, 2.0]), training=False)
    obs(torch.tensor([-1.0, 1.0]), training=False)
    assert (obs.lo.item(), obs.hi.item()) == (-1.0, 2.0)  # min and max over every calibration batch
    x = torch.tensor([0.05, 0.72, 1.31, -2.0])
    obs.mode = "train"
    y = obs(x, training=False)  # eval: the range stays, values round to the uint8 grid
    assert (obs.lo.item(), obs.hi.item()) == (-1.0, 2.0)
    scale, zero = obs.scale_zero_point()
    assert scale.item() == pytest.approx(3.0 / 255) and zero.item() == 85
    # 4.25, 61.2 and 111.35 steps round to 4, 61 and 111; -2.0 is below the range and clips to -85 steps.
    assert torch.allclose(y, torch.tensor([4.0, 61.0, 111.0, -85.0]) * scale, atol=1e-6)
    obs(torch.tensor([0.0, 12.0]), training=True)  # training: a moving average towards each batch
    assert obs.hi.item() == pytest.approx(2.0 + 0.01 * 10.0)
    assert obs.lo.item() == pytest.approx(-1.0 + 0.01 * 1.0)
    # Values beyond the range clip to its top, as uint8 does: (255 - zero point) steps.
    scale, zero = obs.scale_zero_point()
    assert obs(torch.tensor([100.0]), training=False).item() == pytest.approx(
        (255 - zero.item()) * scale.item()
    )
    assert (255 - zero.item()) * scale.item() == pytest.approx(obs.hi.item(), abs=scale.item())


def test_training_updates_float_weights_and_remove_gives_back_a_plain_model(mnist_mlp):
    model, train_loader, _ = mnist_mlp
    model = copy.deepcopy(model).train()
    keys = set(model.state_dict())
    qa = QuantizationAware(model)
    qa.calibrate(_calibration(train_loader, 2), 2)
    ranges = qa.ranges()
    assert set(ranges) == {"features.fc1:input", "classifier:input", "output"}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = next(iter(train_loader))
    before = model.features.fc1.parametrizations.weight.original.detach().clone()
    loss = nn.functional.cross_entropy(model(batch.x), batch.y)
    loss.backward()
    opt.step()
    after = model.features.fc1.parametrizations.weight.original.detach()
    assert not torch.equal(before, after)  # the float weights behind the rounding train
    assert qa.ranges()["classifier:input"] != ranges["classifier:input"]  # training moved the range
    plain = qa.remove()
    assert set(plain.state_dict()) == keys
    assert torch.equal(plain.features.fc1.weight, after)  # the float weights, not their rounding
    with torch.no_grad():
        x = batch.x[:8]
        ref = plain.classifier(plain.features(plain.flatten(x)))
        assert torch.equal(plain(x), ref)  # no hook left


def test_max_norm_bounds_the_trained_weight_under_rounding():
    torch.manual_seed(0)
    model = create("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[32], max_norm=0.5)
    QuantizationAware(model)
    model.constrain_()
    w = model.features.fc1.parametrizations.weight.original
    assert w.norm(dim=1).max().item() <= 0.5 + 1e-6


def test_models_without_layers_or_with_parametrized_weights_are_refused():
    with pytest.raises(QatError, match="no Conv2d or Linear"):
        QuantizationAware(nn.Sequential(nn.ReLU()))
    model = create("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[8])
    QuantizationAware(model)
    with pytest.raises(QatError, match="already parametrized"):
        QuantizationAware(model)
    fresh = create("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[8])
    with pytest.raises(QatError, match="no batches"):
        QuantizationAware(fresh).calibrate([], 4)
