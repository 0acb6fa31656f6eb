"""Structured pruning: remove whole channels (conv) and neurons (linear) with torch-pruning.

Unstructured (masked) sparsity leaves every tensor its dense size and runs no faster on a CPU; removing
channels makes each layer physically smaller, so the saved model, its ONNX graph and its latency all
shrink. torch-pruning traces the model into a dependency graph, so coupled layers (a conv, its BN, the
next conv's input, and every layer tied to the same residual sum) lose the same channels together.

The target is a fraction of the model's FLOPs (multiply-accumulates) or parameters to remove. A
uniform per-layer channel ratio is searched by bisection until the measured count meets the target:
FLOPs of a conv scale roughly with the square of the kept width, so "prune 50% of the channels"
would remove about 75% of the FLOPs, never what was asked.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn

from kdkit.checkpoint import load_checkpoint, save_checkpoint
from kdkit.errors import CheckpointError, ModelError
from kdkit.model_io import rebuild_model
from kdkit.models import get_classifier

PruneBy = Literal["flops", "params"]

# Bisection over the channel ratio stops when the achieved fraction is this close to the goal; the
# step between neighbouring channel counts is usually coarser, so the closest reachable point wins.
_SEARCH_TOL = 0.002
_SEARCH_ITERS = 16
# Never search past this channel ratio: a layer needs at least one channel to pass anything on.
_MAX_CHANNEL_RATIO = 0.98


@dataclass
class PruneReport:
    """What pruning removed: counts before/after, the channel ratio found, and layer widths."""

    by: str
    target: float
    achieved: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channel_ratios: list[float] = field(default_factory=list)
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-serialisable dict."""
        return asdict(self)


def count_macs_params(model: nn.Module, example_input: Tensor) -> tuple[int, int]:
    """Return (multiply-accumulates, parameters) of one forward pass on example_input (batch as given)."""
    was_training = model.training
    model.eval()  # a forward in train mode would update BN running statistics
    param = next(model.parameters(), None)
    if param is not None:
        example_input = example_input.to(param.device)
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, example_input)
    finally:
        model.train(was_training)
    return int(macs), int(params)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Return the output width (channels or features) of every Conv and Linear layer by module path."""
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = m.out_features
        elif isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
    return out


def _prune_uniform(
    model: nn.Module,
    example_input: Tensor,
    ratio: float,
    ignored: Sequence[nn.Module],
    round_to: int | None = None,
) -> nn.Module:
    """Prune `ratio` of the channels of every prunable group of `model` in place (magnitude, L2)."""
    pruner = tp.pruner.BasePruner(
        model,
        example_input,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=list(ignored),
        round_to=round_to,
    )
    pruner.step()
    return model


def _metric(model: nn.Module, example_input: Tensor, by: PruneBy) -> int:
    macs, params = count_macs_params(model, example_input)
    return macs if by == "flops" else params


def _search_ratio(
    model: nn.Module,
    example_input: Tensor,
    goal: float,
    by: PruneBy,
    keep_paths: Sequence[str],
    round_to: int | None = None,
) -> tuple[nn.Module, float]:
    """Return (pruned copy, channel ratio) whose metric is closest to `goal`; `keep_paths` keep their width."""
    lo, hi = 0.0, _MAX_CHANNEL_RATIO
    best: tuple[float, nn.Module, float] | None = None
    for _ in range(_SEARCH_ITERS):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        # Layers are found again in each deep copy by module path.
        _prune_uniform(trial, example_input, mid, [trial.get_submodule(p) for p in keep_paths], round_to)
        value = _metric(trial, example_input, by)
        gap = abs(value - goal)
        if best is None or gap < best[0]:
            best = (gap, trial, mid)
        if gap <= _SEARCH_TOL * goal:
            break
        # The count falls monotonically as the ratio rises: bisect on which side of the goal we are.
        if value > goal:
            lo = mid
        else:
            hi = mid
    assert best is not None
    return best[1], best[2]


def prune_model(
    model: nn.Module,
    example_input: Tensor,
    target: float = 0.5,
    by: PruneBy = "flops",
    iterative_steps: int = 1,
    ignored: Sequence[nn.Module] | None = None,
    tolerance: float = 0.05,
    round_to: int | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Return (pruned copy, report) with about `target` of the FLOPs or params removed; input untouched.

    `iterative_steps` > 1 prunes in that many equal steps, re-ranking channels by magnitude after each.
    The classifier (and any `ignored` layer) keeps its output width, so the logits keep num_classes.
    `round_to` keeps channel counts multiples of it (SIMD-friendly widths) at the cost of a coarser target.
    A target that cannot be met within `tolerance` (e.g. most FLOPs sit in ignored layers) raises.
    """
    if by not in ("flops", "params"):
        raise ValueError(f"by must be 'flops' or 'params', got {by!r}")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target is the fraction of {by} to remove, in [0, 1); got {target!r}")
    if iterative_steps < 1:
        raise ValueError(f"iterative_steps must be >= 1, got {iterative_steps}")
    was_training = model.training
    work = copy.deepcopy(model).cpu().float().eval()
    # torch-pruning rewrites weights in place; a channels_last copy would come back with odd strides.
    work = work.to(memory_format=torch.contiguous_format)
    example_input = example_input.detach().cpu().float().contiguous()
    names = {id(m): n for n, m in model.named_modules()}
    head = get_classifier(model)
    classifier_path = names[id(head)]
    unknown = [type(m).__name__ for m in (ignored or []) if id(m) not in names]
    if unknown:
        raise ModelError(f"ignored layers {unknown} are not modules of the model being pruned")
    keep_paths = [classifier_path, *(names[id(m)] for m in (ignored or []))]
    num_classes = layer_widths(model).get(classifier_path)

    macs0, params0 = count_macs_params(work, example_input)
    base = macs0 if by == "flops" else params0
    widths0 = layer_widths(work)
    ratios: list[float] = []
    with warnings.catch_warnings():
        # torch-pruning warns about unwrapped parameters and the like for each trial copy.
        warnings.simplefilter("ignore")
        for step in range(1, iterative_steps + 1):
            goal = base * (1.0 - target * step / iterative_steps)
            if _metric(work, example_input, by) <= goal:
                ratios.append(0.0)
                continue
            work, ratio = _search_ratio(work, example_input, goal, by, keep_paths, round_to)
            ratios.append(round(ratio, 4))

    macs1, params1 = count_macs_params(work, example_input)
    achieved = 1.0 - (macs1 if by == "flops" else params1) / base
    if target > 0 and abs(achieved - target) > tolerance:
        raise ModelError(
            f"pruning could remove {achieved:.1%} of the {by} but the target is {target:.1%} "
            f"(tolerance {tolerance:.1%}); "
            + (
                f"round_to={round_to} allows only widths that are multiples of {round_to} (widths now "
                f"{sorted(set(layer_widths(work).values()))}): use a smaller round_to or none"
                if round_to
                else f"most of the {by} may sit in layers that cannot be pruned"
            )
        )
    if num_classes is not None and layer_widths(work).get(classifier_path) != num_classes:
        raise ModelError(f"pruning changed the classifier width of {classifier_path!r}")  # never expected
    work.train(was_training)
    report = PruneReport(
        by=by,
        target=target,
        achieved=round(achieved, 4),
        macs_before=macs0,
        macs_after=macs1,
        params_before=params0,
        params_after=params1,
        channel_ratios=ratios,
        widths_before=widths0,
        widths_after=layer_widths(work),
    )
    return work, report


def pruned_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Return the shape of every tensor in the model's state dict (what a pruned checkpoint must record)."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def resize_to_shapes(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Resize the layers of a freshly built model in place to the tensor shapes of a pruned checkpoint."""
    modules = dict(model.named_modules())
    touched: set[str] = set()
    for key, shape in shapes.items():
        path, _, attr = key.rpartition(".")
        m = modules.get(path)
        if m is None:
            raise CheckpointError(f"pruned checkpoint names tensor {key!r}, which the model does not have")
        current = getattr(m, attr, None)
        if not isinstance(current, Tensor):
            raise CheckpointError(f"pruned checkpoint names tensor {key!r}, which the model does not have")
        if list(current.shape) == list(shape):
            continue
        new = torch.empty(shape, dtype=current.dtype)
        if isinstance(current, nn.Parameter):
            setattr(m, attr, nn.Parameter(new, requires_grad=current.requires_grad))
        else:
            m.register_buffer(attr, new)
        touched.add(path)
    # Keep the layers' size attributes true to their weights, as torch-pruning does when it prunes.
    for path in touched:
        m = modules[path]
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.conv._ConvNd):
            m.out_channels = m.weight.shape[0]
            m.in_channels = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.num_features = m.weight.shape[0] if m.weight is not None else m.running_mean.shape[0]
    return model


def save_pruned_model(
    path: str | Path, model: nn.Module, source_meta: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """Write a pruned model as a kdkit checkpoint (kind "pruned_model") that records its tensor shapes.

    `source_meta` is the metadata of the unpruned model's checkpoint (architecture, data, normalisation).
    """
    keep = ("model", "num_classes", "in_channels", "image_size", "classes", "normalize", "dataset")
    meta = {k: source_meta[k] for k in keep if k in source_meta}
    # A distinct kind: loaders that rebuild the unpruned architecture refuse it instead of mis-loading it.
    meta.update(kind="pruned_model", role="pruned_student", shapes=pruned_shapes(model), **(extra or {}))
    return save_checkpoint(path, model.state_dict(), meta)


def load_pruned_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Return (model, metadata) rebuilt from a checkpoint written by save_pruned_model."""
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "pruned_model" or "shapes" not in meta:
        raise CheckpointError(
            f"{str(path)!r} is a {meta.get('kind', 'unknown')!r} checkpoint, not a pruned model checkpoint"
        )

    model = rebuild_model(meta, path)
    resize_to_shapes(model, meta["shapes"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{str(path)!r} does not match the shapes it records: {exc}") from None
    return model, meta
