"""The state of a training phase: where it is, its running epoch sums, and its checkpoint save/load.

A state checkpoint holds the model, objective, optimizer and weight-average tensors under the prefixes
`model.`, `objective.`, `optimizer.`, `ema.`, the epoch sums under `sums.`, and the RNG streams; its metadata
holds the position (epoch, batch, step, samples), the history and the scheduler. Resuming from it continues
the phase bit for bit as if it had never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdkit import distributed
from kdkit.checkpoint import prefixed, unprefixed
from kdkit.errors import KdkitError
from kdkit.optim import WeightEma
from kdkit.resume import (
    CheckpointPolicy,
    load_latest_state,
    load_optimizer_state,
    optimizer_state,
    save_state,
    set_rng_state,
)


class NonFiniteLossError(KdkitError):
    """A loss term became NaN or infinite during training."""


@dataclass
class EpochSums:
    """Running sums of one epoch, kept on the device (no host sync per step).

    `seen` counts samples (the loss is a mean per sample); `counted` counts what train accuracy is a share of:
    samples, or scored tokens for a per-token task.
    """

    loss: Tensor
    correct: Tensor
    counted: Tensor
    parts: dict[str, Tensor]
    seen: int = 0
    skipped: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> EpochSums:
        """Return empty sums on the device."""
        long = torch.zeros((), dtype=torch.long, device=device)
        return cls(torch.zeros((), device=device), long, long.clone(), {})

    def add(self, loss: Tensor, n: int, correct: Tensor, counted: Tensor, parts: dict[str, Tensor]) -> None:
        """Add one step of `n` samples: its mean loss, accuracy counts and term values."""
        self.seen += n
        self.loss += loss.detach() * n
        self.correct += correct
        self.counted += counted
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0) + v * n

    def running(self) -> tuple[float, float]:
        """Return the epoch's mean loss and train accuracy so far (one host sync)."""
        return float(self.loss) / max(self.seen, 1), float(self.correct) / max(int(self.counted), 1)

    def record(self) -> dict[str, float]:
        """Return the epoch's means: loss, train_accuracy and `loss.<term>` of every term."""
        seen = max(self.seen, 1)
        return {
            "loss": float(self.loss) / seen,
            "train_accuracy": float(self.correct) / max(int(self.counted), 1),
            **{f"loss.{k}": float(v) / seen for k, v in self.parts.items()},
        }

    def reduce_across_ranks(self) -> None:
        """Sum the epoch over every rank of a data-parallel job (one collective)."""
        keys = sorted(self.parts)
        agg = torch.stack(
            [
                self.loss.double(),
                self.correct.double(),
                torch.tensor(float(self.seen), dtype=torch.float64),
            ]
            + [torch.as_tensor(self.parts[k]).double() for k in keys]
            + [self.counted.double()]
        )
        distributed.all_reduce_sum(agg)
        self.loss, self.correct, self.seen = agg[0], agg[1], int(agg[2])
        self.parts = {k: agg[3 + j] for j, k in enumerate(keys)}
        self.counted = agg[-1]

    def tensors(self) -> dict[str, Tensor]:
        """Return the sums as checkpoint tensors."""
        out = {
            "sums.loss": self.loss,
            "sums.correct": self.correct,
            **{f"sums.part.{k}": v for k, v in self.parts.items()},
        }
        # Written only when it differs from `seen` (per-token tasks): sample-level states keep their names.
        if int(self.counted) != self.seen:
            out["sums.counted"] = self.counted
        return out

    @classmethod
    def restore(cls, tensors: dict[str, Tensor], meta: dict[str, Any], device: torch.device) -> EpochSums:
        """Return the sums saved by `tensors()` with the position metadata `seen`, `skipped`."""
        parts = {
            k[len("sums.part.") :]: v.to(device) for k, v in tensors.items() if k.startswith("sums.part.")
        }
        counted = tensors.get("sums.counted", torch.tensor(meta["seen"], dtype=torch.long))
        return cls(
            tensors["sums.loss"].to(device),
            tensors["sums.correct"].to(device),
            counted.to(device),
            parts,
            meta["seen"],
            meta.get("skipped", 0),
        )


class NonFiniteGuard:
    """Remember, on the device, the first step at which each loss term went non-finite; raise when asked."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.first_bad: dict[str, Tensor] = {}

    def track(self, parts: dict[str, Tensor], step: int) -> None:
        """Record the terms of `step` (no host sync)."""
        for k, v in parts.items():
            fb = self.first_bad.get(k)
            if fb is None:
                fb = self.first_bad[k] = torch.full((), -1, dtype=torch.long, device=v.device)
            self.first_bad[k] = torch.where((fb < 0) & ~torch.isfinite(v), step, fb)

    def check(self) -> None:
        """Raise NonFiniteLossError naming the first step and its terms, if any term went non-finite."""
        steps = {k: int(v) for k, v in self.first_bad.items()}
        bad = {k: s for k, s in steps.items() if s >= 0}
        if bad:
            first = min(bad.values())
            terms = sorted(k for k, s in bad.items() if s == first)
            raise NonFiniteLossError(
                f"phase {self.phase!r}: loss term(s) {terms} became non-finite at step {first}; "
                "lower the learning rate, set train.grad_clip, or check the inputs"
            )


@dataclass
class Trained:
    """Everything a state checkpoint saves besides the position: model, objective, optimizer, average."""

    model: nn.Module
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler (state_dict / load_state_dict)
    ema: WeightEma | None = None


@dataclass
class TrainState:
    """Where a phase is: epoch and batch to run next, steps and samples done, history, elapsed time, sums."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    samples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds_before: float = 0.0
    sums: EpochSums | None = None

    @classmethod
    def load(
        cls, policy: CheckpointPolicy, phase: str, trained: Trained, device: torch.device
    ) -> TrainState | None:
        """Restore the newest saved state of a phase into `trained`; return its position (None: no state)."""
        loaded = load_latest_state(policy, phase)
        if loaded is None:
            return None
        tensors, meta = loaded
        trained.model.load_state_dict(unprefixed("model.", tensors))
        trained.objective.load_state_dict(unprefixed("objective.", tensors))
        load_optimizer_state(trained.optimizer, unprefixed("optimizer.", tensors), meta["optimizer"])
        if trained.ema is not None:
            if "ema" not in meta:
                raise KdkitError(
                    f"phase {phase!r}: the saved state has no weight average but train.ema_decay is set"
                )
            trained.ema.load(unprefixed("ema.", tensors), meta["ema"])
        trained.scheduler.load_state_dict(meta["scheduler"])
        state = cls(
            epoch=meta["epoch"],
            batch=meta["batch"],
            step=meta["step"],
            samples=meta["samples"],
            history=meta["history"],
            seconds_before=meta["train_seconds"],
        )
        if state.batch:
            state.sums = EpochSums.restore(tensors, meta, device)
        set_rng_state(unprefixed("rng.", tensors), meta["rng"])
        return state

    def save(
        self,
        policy: CheckpointPolicy,
        phase: str,
        trained: Trained,
        epoch: int,
        batch: int,
        sums: EpochSums | None,
        train_seconds: float,
    ) -> None:
        """Write the state at (epoch, batch to run next) with the current step, samples and history."""
        opt_t, opt_m = optimizer_state(trained.optimizer)
        tensors = {
            **prefixed("model.", trained.model.state_dict()),
            **prefixed("objective.", trained.objective.state_dict()),
            **prefixed("optimizer.", opt_t),
            **(sums.tensors() if sums else {}),
        }
        ema = trained.ema
        if ema is not None:
            ema_t, ema_m = ema.state()
            tensors.update(prefixed("ema.", ema_t))
        meta = {
            "epoch": epoch,
            "batch": batch,
            "samples": self.samples,
            "seen": sums.seen if sums else 0,
            "skipped": sums.skipped if sums else 0,
            "history": self.history,
            "optimizer": opt_m,
            "scheduler": trained.scheduler.state_dict(),
            "train_seconds": train_seconds,
            **({"ema": ema_m} if ema is not None else {}),
        }
        save_state(policy, phase, self.step, tensors, meta)
