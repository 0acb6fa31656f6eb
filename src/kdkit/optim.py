"""Optimisers and learning-rate schedules built from a TrainConfig."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from kdkit.config import TrainConfig


def build_optimizer(
    params: Iterable[nn.Parameter], cfg: TrainConfig, backbone: Iterable[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """Return SGD (momentum, optional Nesterov) or AdamW with the configured lr and weight decay.

    `backbone` (a subset of `params`) gets a group of its own when the config scales or freezes it (see
    `build_scheduler`); otherwise there is one group.
    """
    params = [p for p in params if p.requires_grad]
    groups: list[Any] = params
    if separate_backbone(cfg):
        ids = {id(p) for p in backbone}
        groups = [
            {"params": [p for p in params if id(p) not in ids]},  # head and objective adapters
            {"params": [p for p in params if id(p) in ids]},
        ]
    if cfg.optimizer == "sgd":
        kw = {"lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov and cfg.momentum > 0}
        if fused_kernel(params):
            return FusedSGD(groups, weight_decay=cfg.weight_decay, **kw)
        return torch.optim.SGD(groups, weight_decay=cfg.weight_decay, foreach=True, **kw)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **adamw_kernel(params))


def separate_backbone(cfg: TrainConfig) -> bool:
    """Return True when the backbone's learning rate differs from the head's (fine-tuning)."""
    return cfg.backbone_lr_scale != 1.0 or cfg.freeze_backbone_epochs > 0


class FusedSGD(torch.optim.SGD):
    """SGD with PyTorch's fused update, made safe for parameters whose gradients start later.

    PyTorch's fused SGD (torch 2.13) makes the momentum buffers at its first step and fails once a parameter
    that had no gradient then gets one (an objective term that starts later, as FSP's second stage does). Here
    every buffer exists from the start, as zeros, and again after a state is loaded: with no dampening (kdkit
    uses none) the first update of a buffer, momentum * 0 + gradient, is the gradient, exactly what PyTorch's
    SGD sets it to. benchmarks/optimizer_step.py (RESULTS.md) measured the fused step 1.1x to 1.9x faster than
    the multi-tensor one over kdkit's students, 1.7x over the MNIST 800-800 student.
    """

    def __init__(self, params: list[Any], **kw: Any) -> None:
        super().__init__(params, fused=True, dampening=0.0, **kw)
        self._make_buffers()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state (a snapshot may lack buffers of parameters that had no gradient yet)."""
        super().load_state_dict(state_dict)
        self._make_buffers()

    def _make_buffers(self) -> None:
        for group in self.param_groups:
            if group["momentum"] == 0:
                continue
            for p in group["params"]:
                st = self.state[p]
                if st.get("momentum_buffer") is None:
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def fused_kernel(params: list[nn.Parameter]) -> bool:
    """Return True when PyTorch has fused optimizer kernels for every parameter (floating point, CPU or CUDA)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def adamw_kernel(params: list[nn.Parameter]) -> dict[str, bool]:
    """Return the AdamW option that picks its fastest update: the fused kernel where PyTorch has one.

    PyTorch's default on CPU is the per-parameter loop. benchmarks/optimizer_step.py (RESULTS.md) measured
    one AdamW step over the MNIST 800-800 student at 0.64 ms fused, 4.2 ms multi-tensor (foreach) and 2.7 ms
    per-parameter (1 thread); end to end, AdamW training of that student ran 1.21x faster fused. Unlike fused
    SGD, fused AdamW creates the state of a parameter whenever its first gradient comes. Fused kernels exist
    for floating-point parameters on CPU and CUDA; elsewhere the multi-tensor update is used.
    """
    return {"fused": True} if fused_kernel(params) else {"foreach": True}


def lr_factor(step: int, total: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Return the multiplier of the base lr at an optimizer step (warm-up times the schedule)."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    f = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    t = min(step, total) / max(total, 1)
    if cfg.schedule == "step":
        f *= cfg.gamma ** bisect.bisect_right(cfg.milestones, t)
    elif cfg.schedule == "cosine":
        f *= 0.5 * (1.0 + math.cos(math.pi * t))
    elif cfg.schedule == "onecycle":
        # Linear ramp to the peak over the first 30%, then cosine down to 1/1000 of it (Smith & Topin).
        if t < 0.3:
            f *= 0.04 + 0.96 * t / 0.3
        else:
            f *= 1e-3 + (1 - 1e-3) * 0.5 * (1.0 + math.cos(math.pi * (t - 0.3) / 0.7))
    return f


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Return a per-step LambdaLR implementing the configured schedule (its state is just the step count)."""
    total = max(1, cfg.epochs * steps_per_epoch)

    def head(step: int) -> float:
        return lr_factor(step, total, cfg, steps_per_epoch)

    if len(optimizer.param_groups) == 1:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, head)
    frozen = int(round(cfg.freeze_backbone_epochs * steps_per_epoch))

    def backbone(step: int) -> float:
        return 0.0 if step < frozen else cfg.backbone_lr_scale * head(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [head, backbone])


class WeightEma:
    """Exponential moving average of a model's weights, for the phase to validate and return.

    Every floating-point entry of the model's state (parameters and buffers such as batch-norm statistics)
    is averaged in place, one fused lerp per step; integer buffers (batch counts) are copied. The decay is
    warmed up as min(decay, (1 + n) / (10 + n)) after n updates, so that the average forgets its random
    initialisation early in training (as TensorFlow's ExponentialMovingAverage and timm's ModelEmaV3 do).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        state = model.state_dict()
        self.names = list(state)
        self._live = [
            state[k] for k in self.names
        ]  # the model's own tensors (state_dict() detaches, no copy)
        self.shadow = {k: v.detach().clone() for k, v in state.items()}
        self._float = [i for i, v in enumerate(self._live) if v.is_floating_point()]
        self._other = [i for i, v in enumerate(self._live) if not v.is_floating_point()]

    def current_decay(self) -> float:
        """Return the decay the next update uses."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights."""
        d = self.current_decay()
        shadow = [self.shadow[self.names[i]] for i in self._float]
        live = [self._live[i] for i in self._float]
        if shadow:
            torch._foreach_lerp_(shadow, live, 1.0 - d)
        for i in self._other:
            self.shadow[self.names[i]].copy_(self._live[i])
        self.updates += 1

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return the averaged tensors and the update count, for a checkpoint."""
        return dict(self.shadow), {"updates": self.updates, "decay": self.decay}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore the average written by state()."""
        missing = set(self.names) - set(tensors)
        if missing:
            raise KeyError(f"ema state lacks {sorted(missing)[:3]}")
        for k in self.names:
            self.shadow[k].copy_(tensors[k])
        self.updates = int(meta["updates"])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into a model of the same architecture."""
        model.load_state_dict(self.shadow)
