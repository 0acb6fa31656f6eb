"""Training state for exact resume: weights, optimizer, scheduler, RNG streams, loader position, sums.

A state checkpoint is `<dir>/<phase>-state-<step>.{safetensors,json}`; the JSON is written last, so a
state whose JSON exists is complete. Only the newest `keep` states of a phase are kept.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.checkpoint import load_checkpoint, prefixed, save_checkpoint
from kdkit.errors import CheckpointError


@dataclass
class CheckpointPolicy:
    """Where and how often a phase writes its training state, and whether it resumes from it."""

    directory: Path
    every_steps: int | None = None
    keep: int = 2
    resume: bool = False


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Return the torch, numpy and python RNG states as (tensors, JSON values)."""
    np_state = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy.keys": torch.from_numpy(np_state[1].astype(np.int64))}
    py = random.getstate()
    meta = {
        "numpy": {
            "algo": np_state[0],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": [py[0], list(py[1]), py[2]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Restore RNG states captured by `rng_state`."""
    torch.set_rng_state(tensors["torch"].to(torch.uint8))
    n = meta["numpy"]
    np.random.set_state(
        (n["algo"], tensors["numpy.keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able values."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{idx}.{name}"] = v
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    """Restore an optimizer from `optimizer_state` output."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, vals in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    _match_param_layouts(opt)


def _match_param_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's memory layout (strides).

    Checkpoints store contiguous tensors, so a channels_last conv weight's momentum comes back in NCHW.
    Mixed layouts take another elementwise kernel (no fused multiply-add) and the update differs in the
    last bit: the resumed run would drift from the uninterrupted one.
    """
    for param, st in opt.state.items():
        for name, value in st.items():
            if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                st[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def state_path(directory: Path, phase: str, step: int) -> Path:
    """Return the base path of a phase's state checkpoint at a step."""
    return directory / f"{phase}-state-{step:09d}"


def list_states(directory: Path, phase: str) -> list[tuple[int, Path]]:
    """Return the complete state checkpoints of a phase as (step, base path), oldest first."""
    pat = re.compile(rf"^{re.escape(phase)}-state-(\d{{9}})\.json$")
    found = []
    if directory.is_dir():
        for p in directory.iterdir():
            m = pat.match(p.name)
            if m and p.with_suffix(".safetensors").exists():
                found.append((int(m.group(1)), p.with_suffix("")))
    return sorted(found)


def save_state(
    policy: CheckpointPolicy,
    phase: str,
    step: int,
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
) -> Path:
    """Write a complete training state atomically, then drop this phase's states beyond the newest `keep`."""
    rng_t, rng_m = rng_state()
    path = state_path(policy.directory, phase, step)
    save_checkpoint(
        path,
        {**tensors, **prefixed("rng.", rng_t)},
        {"kind": "train-state", "phase": phase, "step": step, "rng": rng_m, **meta},
    )
    for _, old in list_states(policy.directory, phase)[: -policy.keep]:
        # The JSON goes first: a state without its JSON is never taken for a complete one.
        old.with_suffix(".json").unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return path


def load_latest_state(
    policy: CheckpointPolicy, phase: str
) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """Return (tensors, meta) of the newest readable state of a phase, or None when there is none."""
    errors = []
    for _, base in reversed(list_states(policy.directory, phase)):
        try:
            tensors, meta = load_checkpoint(base)
        except CheckpointError as exc:  # a damaged newest state: fall back to the one before
            errors.append(str(exc))
            continue
        return tensors, meta
    if errors:
        raise CheckpointError(f"no readable training state for phase {phase!r}: " + "; ".join(errors))
    return None
