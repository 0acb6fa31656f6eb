"""Quantization-aware distillation: the student learns from the teacher with int8 rounding in its forward pass.

Post-training quantization (quantize.py) rounds a trained model once. Here a copy of the model trains
against the teacher through that rounding (a straight-through gradient), so its weights settle where
rounding costs little; the float weights it ends with are then exported and quantized by the same ONNX
Runtime path, calibrated on the same batches.

What is emulated is the int8 model `quantize_onnx` writes (ONNX Runtime static QDQ, MinMax calibration):
- the weights of every Conv2d and Linear: int8 per output channel, symmetric, the range [-127, 127] and the
  scale max|w| / 127, as ONNX Runtime computes them. Rounding per output channel is unchanged when a
  channel is scaled, so the BatchNorm that ONNX Runtime folds into a convolution rounds it the same way;
- the inputs of every Conv2d and Linear, and the logits: uint8 over [min(lo, 0), max(hi, 0)], the range
  ONNX Runtime gives a tensor whose calibration batches span [lo, hi]. The ranges are first measured on
  the calibration batches with the float model (as ONNX Runtime does), then follow each training batch
  with a moving average (rate 0.01), and stay fixed when the model is evaluated;
- not emulated: the rounding of the other tensors ONNX Runtime quantizes (the two inputs of a residual
  addition). The int8 model's accuracy is always measured on the ONNX Runtime model itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kdkit.errors import KdkitError

WEIGHT_QMIN, WEIGHT_QMAX = -127, 127  # int8, symmetric (ONNX Runtime's range for symmetric int8 weights)
ACT_QMIN, ACT_QMAX = 0, 255  # uint8 activations
RANGE_MOMENTUM = 0.01  # moving average of each training batch's min and max
_TINY = torch.finfo(torch.float32).tiny


class QatError(KdkitError):
    """A model cannot be trained with int8 rounding emulated."""


class WeightFakeQuant(nn.Module):
    """Parametrization: round a Conv2d/Linear weight to int8, per output channel, symmetric."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True  # off while ranges are calibrated on the float model

    def forward(self, w: Tensor) -> Tensor:
        if not self.enabled:
            return w
        absmax = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).float()
        # A channel of zeros keeps a tiny scale (every weight rounds to 0), like ONNX Runtime's scale of 1.
        scale = (absmax / WEIGHT_QMAX).clamp_min(_TINY)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, WEIGHT_QMIN, WEIGHT_QMAX).to(
            w.dtype
        )


class ActivationFakeQuant(nn.Module):
    """The range of one activation tensor and its uint8 rounding.

    mode "calibrate": widen the range to every batch seen, no rounding (ONNX Runtime's MinMax calibration).
    mode "train": in training mode, move the range towards each batch's min and max, then round; in eval
    mode, round with the range as it is.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self.mode = "calibrate"

    def scale_zero_point(self) -> tuple[Tensor, Tensor]:
        """Return ONNX Runtime's uint8 scale and zero point for the current range."""
        lo, hi = self.lo.clamp_max(0.0), self.hi.clamp_min(0.0)
        scale = ((hi - lo) / (ACT_QMAX - ACT_QMIN)).clamp_min(_TINY)
        zero = (ACT_QMIN - lo / scale).round().clamp(ACT_QMIN, ACT_QMAX).to(torch.int32)
        return scale, zero

    @torch.no_grad()
    def _observe(self, x: Tensor, momentum: float | None) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        if momentum is None:
            # torch.where keeps the first batch exact without a host sync on `seen`.
            self.lo.copy_(torch.where(self.seen, torch.minimum(self.lo, lo), lo))
            self.hi.copy_(torch.where(self.seen, torch.maximum(self.hi, hi), hi))
        else:
            self.lo.copy_(torch.where(self.seen, self.lo + momentum * (lo - self.lo), lo))
            self.hi.copy_(torch.where(self.seen, self.hi + momentum * (hi - self.hi), hi))
        self.seen.fill_(True)

    def forward(self, x: Tensor, training: bool) -> Tensor:
        if self.mode == "calibrate":
            self._observe(x, None)
            return x
        if training:
            self._observe(x, RANGE_MOMENTUM)
        scale, zero = self.scale_zero_point()
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, ACT_QMIN, ACT_QMAX).to(x.dtype)


class QuantizationAware:
    """Int8 rounding emulated in a model's forward pass, until `remove()` gives back the plain model.

    The weights of every Conv2d/Linear are parametrized (the optimizer trains the float weights behind
    them); forward hooks round their inputs and the model's output. `calibrate` must run first.
    """

    def __init__(self, model: nn.Module) -> None:
        layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not layers:
            raise QatError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
        taken = [name for name, m in layers if parametrize.is_parametrized(m)]
        if taken:
            raise QatError(
                f"layer(s) {taken} are already parametrized; quantization-aware training needs plain layers"
            )
        self.model = model
        # The ranges live beside the model, not in it (its state_dict holds no ranges), on the model's device.
        device = next(model.parameters()).device
        self.observers: dict[str, ActivationFakeQuant] = {}
        self._handles: list[Any] = []
        for name, layer in layers:
            parametrize.register_parametrization(layer, "weight", WeightFakeQuant())
            obs = self.observers[f"{name}:input"] = ActivationFakeQuant().to(device)
            self._handles.append(layer.register_forward_pre_hook(self._input_hook(obs)))
        out = self.observers["output"] = ActivationFakeQuant().to(device)
        self._handles.append(model.register_forward_hook(self._output_hook(out)))

    @staticmethod
    def _input_hook(obs: ActivationFakeQuant):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (obs(args[0], module.training), *args[1:])

        return hook

    @staticmethod
    def _output_hook(obs: ActivationFakeQuant):
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
            # Models returning more than logits (features, tuples) keep them as they are.
            return obs(out, module.training) if isinstance(out, Tensor) else out

        return hook

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Any], max_batches: int) -> int:
        """Measure every range on up to `max_batches` batches with the float model; return how many ran."""
        for obs in self.observers.values():
            obs.mode = "calibrate"
            obs.seen.fill_(False)
        was_training = self.model.training
        self.model.eval()
        dev = next(self.model.parameters()).device
        n = 0
        # ONNX Runtime calibrates the exported float graph: the weights are not rounded for this pass.
        self._round_weights(False)
        try:
            for batch in batches:
                if n >= max_batches:
                    break
                self.model(getattr(batch, "x", batch).to(dev))
                n += 1
        finally:
            self._round_weights(True)
            self.model.train(was_training)
        if n == 0:
            raise QatError("calibration got no batches: the calibration data set is empty")
        for obs in self.observers.values():
            obs.mode = "train"
        return n

    def _round_weights(self, on: bool) -> None:
        for m in self.model.modules():
            if parametrize.is_parametrized(m, "weight"):
                for p in m.parametrizations.weight:
                    if isinstance(p, WeightFakeQuant):
                        p.enabled = on

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Return each emulated activation's current (lo, hi)."""
        return {k: (float(o.lo), float(o.hi)) for k, o in self.observers.items()}

    def remove(self) -> nn.Module:
        """Remove the hooks and parametrizations; return the model with its trained float weights."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self.model.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        return self.model
