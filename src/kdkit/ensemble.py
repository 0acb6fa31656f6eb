"""A teacher ensemble is itself a teacher (Fukuda et al. 2017, "Efficient Knowledge Distillation from an
Ensemble of Teachers").

`EnsembleTeacher` returns one logit tensor per batch, so every loss, the precomputed and cached teacher
outputs and the engine treat it like a single teacher:

- ``average``: ``T * log(sum_i w_i * softmax(z_i / T))``. A KD loss at temperature T takes
  ``softmax(out / T)``, which is exactly the weighted mean of the teachers' softened probabilities
  (the log of a distribution is its own log-softmax). Computed with logsumexp, so no probability underflows.
- ``random``: the logits of one teacher per mini-batch, drawn with probabilities ``w`` from a generator seeded
  by (seed, epoch, batch). Its step provider (`kdkit.steps.TeacherStep`) calls `set_position(epoch, batch)`
  before every training step, so a run is reproducible and a resumed run draws the same teachers.

The third algorithm (every teacher labels the data and augmented copies of it) builds a transfer set rather
than a module: see `kdkit.transfer.relabel_transfer_set`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError, ModelError
from kdkit.teacher import FrozenTeacher

MODES = ("average", "random")


def _stable_seed(*parts: int) -> int:
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class EnsembleTeacher(nn.Module):
    """Frozen teachers combined into one teacher; members run in eval mode without autograd."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        *,
        mode: str = "average",
        temperature: float = 1.0,
        seed: int = 0,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(members) < 1:
            raise ModelError("an ensemble needs at least one teacher")
        if mode not in MODES:
            raise ModelError(f"ensemble mode {mode!r} is not a module mode; expected one of {MODES}")
        if temperature <= 0:
            raise ModelError(f"ensemble temperature must be > 0, got {temperature}")
        w = torch.ones(len(members)) if weights is None else torch.tensor([float(v) for v in weights])
        if len(w) != len(members) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ModelError(
                f"ensemble weights {w.tolist()} must be {len(members)} values >= 0 with a positive sum"
            )
        self.members = nn.ModuleList(
            m if isinstance(m, FrozenTeacher) else FrozenTeacher(m, dtype=dtype) for m in members
        )
        self.mode = mode
        self.seed = seed
        # Buffers, so that the weights and temperature are part of the state (and of teacher-cache keys).
        self.register_buffer("weights", w / w.sum())
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.position: tuple[int, int] = (0, 0)

    @property
    def model(self) -> EnsembleTeacher:
        """Return the module to hook or hash (the ensemble itself; `FrozenTeacher.model` for one teacher)."""
        return self

    def train(self, mode: bool = True) -> EnsembleTeacher:
        """Keep every member in eval mode whatever the caller asks."""
        for m in self.members:
            m.train(False)
        self.training = False
        return self

    def set_position(self, epoch: int, batch: int) -> None:
        """Tell a random-mode ensemble which training step comes next (its step provider calls this every step)."""
        self.position = (int(epoch), int(batch))

    def pick(self, epoch: int, batch: int) -> int:
        """Return the member that teaches the batch at (epoch, batch) in random mode."""
        gen = torch.Generator().manual_seed(_stable_seed(self.seed, epoch, batch))
        return int(torch.multinomial(self.weights.detach().float().cpu(), 1, generator=gen))

    def picks(self, epochs: int, batches_per_epoch: int, start_epoch: int = 0) -> list[int]:
        """Return how many batches each member teaches over the given epochs (random mode)."""
        counts = [0] * len(self.members)
        for e in range(start_epoch, epochs):
            for b in range(batches_per_epoch):
                counts[self.pick(e, b)] += 1
        return counts

    def member_logits(self, *inputs: Tensor) -> list[Tensor]:
        """Return every member's float32 logits for a batch, checking that they predict the same classes."""
        outs = [m(*inputs) for m in self.members]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) > 1:
            raise ModelError(
                "the teachers of an ensemble must predict the same classes; their outputs have shapes "
                + ", ".join(f"teacher {i}: {tuple(o.shape)}" for i, o in enumerate(outs))
            )
        return outs

    def forward(self, *inputs: Tensor) -> Tensor:
        """Return the combined logits of a batch (see the module docstring for what each mode returns)."""
        with torch.no_grad():
            if self.mode == "random":
                return self.members[self.pick(*self.position)](*inputs)
            zs = self.member_logits(*inputs)
            with torch.autocast(inputs[0].device.type, enabled=False):  # the mixture is computed in fp32
                t = self.temperature.float()
                logp = torch.stack([torch.log_softmax(z.float() / t, dim=-1) for z in zs])
                logw = self.weights.float().log().view(-1, 1, 1)
                return t * torch.logsumexp(logw + logp, dim=0)

    def averaged(self, temperature: float = 1.0) -> EnsembleTeacher:
        """Return an average-mode ensemble sharing these members and weights (for evaluation)."""
        return EnsembleTeacher(
            list(self.members), self.weights.tolist(), mode="average", temperature=temperature, seed=self.seed
        )


def normalized_weights(spec: list[float] | str, val_accuracies: list[float | None]) -> list[float]:
    """Return the weights of `distill.ensemble.weights`: given, equal, or proportional to validation accuracy."""
    n = len(val_accuracies)
    if isinstance(spec, list):
        w = [float(v) for v in spec]
    elif spec == "equal":
        w = [1.0] * n
    elif spec == "val_accuracy":
        if any(a is None for a in val_accuracies):
            raise ConfigError(
                "distill.ensemble.weights: 'val_accuracy' needs a validation set; set data.val_size > 0"
            )
        w = [float(a) for a in val_accuracies]  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown weights {spec!r}")
    total = sum(w)
    if len(w) != n or total <= 0:
        raise ValueError(f"weights {w} do not fit {n} teachers")
    return [v / total for v in w]
