"""Modes of causal-LM distillation beyond teacher forcing: on-policy (GKD) steps and sequence-level KD.

- Supervised (teacher-forced) distillation: `LMTeacherStep(FrozenTeacher(t))` (or `Engine.fit(teacher=...)`)
  runs the teacher on the data's blocks and a token divergence compares the two next-token distributions;
  `LMTeacherStep` first refuses a student of another vocabulary.
- `OnPolicyStep` (GKD, Agarwal et al. 2024, algorithm 1): at each step, with probability `lmbda`, the student
  continues the first `prompt_len` tokens of every block by sampling, and both models are run on the student's
  own sequences, the divergence scored only on the generated tokens; otherwise the step is teacher-forced on
  the data. The coin and the sampling are seeded by (seed, epoch, batch), so a resumed phase repeats them.
- `sequence_kd_set` (sequence-level KD, Kim & Rush 2016): the teacher continues prompts once, and its
  sequences become the transfer set on which the student learns with the hard next-token cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from kdkit.batches import INDEX, LABELS, stable_seed
from kdkit.data.tokens import ATTENTION_MASK, INPUT_IDS
from kdkit.generation import Sampling, generate
from kdkit.objective import Objective
from kdkit.steps import StepPosition, StepRuntime, TeacherStep
from kdkit.teacher import FrozenTeacher
from kdkit.vocab import check_shared_vocabulary

IGNORE_INDEX = -100


def continuation_labels(sequences: Tensor, prompt_len: int, valid: Tensor | None = None) -> Tensor:
    """Return next-token labels (N, L) of sequences scored only on the continuation after `prompt_len` tokens.

    Position t is labelled with token t + 1 for prompt_len - 1 <= t < L - 1 (the first label is the first
    generated token); prompt positions and the last one are -100, and so is every position of a row that is
    not `valid` (a prompt that held padding).
    """
    n, length = sequences.shape
    if not 1 <= prompt_len < length:
        raise ValueError(f"prompt_len must lie in [1, {length - 1}] for sequences of {length} tokens")
    labels = torch.full_like(sequences, IGNORE_INDEX)
    labels[:, prompt_len - 1 : length - 1] = sequences[:, prompt_len:]
    if valid is not None:
        labels[~valid] = IGNORE_INDEX
    return labels


class LMTeacherStep(TeacherStep):
    """Teacher-forced distillation of a language model: `TeacherStep` that first checks the shared vocabulary.

    `open` (called by `Engine.fit` before the first step) raises ModelError naming both vocabulary sizes when
    the teacher and the student predict different numbers of tokens.
    """

    def open(self, model: nn.Module, objective: Objective, runtime: StepRuntime) -> None:
        """Check the shared vocabulary, then move the teacher and install the hooks."""
        inner = self.teacher.model if isinstance(self.teacher, FrozenTeacher) else self.teacher
        check_shared_vocabulary(inner, model)
        super().open(model, objective, runtime)


class OnPolicyStep(LMTeacherStep):
    """GKD's mixture of on-policy and supervised steps for a token-divergence objective; see the module docstring.

    The student samples with `sampling` (temperature 1 by default, as in GKD); `on_policy_steps` counts the steps
    that ran on the student's own sequences.
    """

    def __init__(
        self,
        teacher: nn.Module,
        lmbda: float = 0.5,
        prompt_len: int = 8,
        sampling: Sampling | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(teacher)
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"lmbda (the share of on-policy steps) must lie in [0, 1], got {lmbda}")
        if prompt_len < 1:
            raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")
        self.lmbda, self.prompt_len, self.seed = lmbda, prompt_len, seed
        self.sampling = sampling or Sampling()
        self.on_policy_steps = 0
        self._module: nn.Module | None = None

    def open(self, model: nn.Module, objective: Objective, runtime: StepRuntime) -> None:
        """Keep the unwrapped student (it generates) and open the teacher-forced provider (vocabulary checked)."""
        self._module = model
        super().open(model, objective, runtime)

    def is_on_policy(self, position: StepPosition) -> bool:
        """Return whether the step at `position` runs on the student's own sequences (a seeded coin)."""
        coin = torch.Generator().manual_seed(stable_seed(self.seed, position.epoch, position.batch, 0))
        return float(torch.rand((), generator=coin)) < self.lmbda

    def tensors(
        self, model: Callable[..., Tensor], batch: Mapping[str, Tensor], position: StepPosition
    ) -> dict[str, Tensor]:
        """Return a teacher-forced step's tensors, or those of the student's sampled continuations."""
        if not self.is_on_policy(position):
            return super().tensors(model, batch, position)
        assert self._runtime is not None and self._module is not None
        dev = self._runtime.device
        ids = batch[INPUT_IDS].to(dev)
        if ids.shape[1] <= self.prompt_len:
            raise ValueError(
                f"blocks of {ids.shape[1]} tokens leave nothing to generate after {self.prompt_len}"
            )
        mask = batch[ATTENTION_MASK].to(dev) if ATTENTION_MASK in batch else torch.ones_like(ids)
        gen = torch.Generator(device=dev).manual_seed(
            stable_seed(self.seed, position.epoch, position.batch, 1)
        )
        sequences = generate(
            self._module,
            ids[:, : self.prompt_len],
            ids.shape[1] - self.prompt_len,
            self.sampling,
            generator=gen,
        )
        valid = mask[:, : self.prompt_len].bool().all(dim=1)
        sampled = {
            INPUT_IDS: sequences,
            ATTENTION_MASK: torch.ones_like(sequences),
            LABELS: continuation_labels(sequences, self.prompt_len, valid),
            INDEX: batch[INDEX],
        }
        self.on_policy_steps += 1
        return super().tensors(model, sampled, position)


@torch.no_grad()
def sequence_kd_set(
    teacher: nn.Module,
    prompts: Tensor,
    length: int,
    sampling: Sampling | None = None,
    *,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return (input_ids, attention_mask, labels) (n, length): the teacher's continuations of prompts (n, P).

    Greedy decoding by default (Kim & Rush use beam search; greedy is its beam-1 case); the labels score the
    continuation only (`continuation_labels`). Feed them to `TokenLoader(..., trim=False)` and train the student
    with the `ce` term: the teacher's sequences are the transfer set.
    """
    sampling = sampling or Sampling(greedy=True)
    model = (
        teacher.model if isinstance(teacher, FrozenTeacher) else teacher
    )  # the GPT itself decodes with a cache
    prompt_len = prompts.shape[1]
    gen = torch.Generator(device=prompts.device).manual_seed(seed)
    parts = [
        generate(model, prompts[i : i + batch_size], length - prompt_len, sampling, generator=gen)
        for i in range(0, len(prompts), batch_size)
    ]
    sequences = torch.cat(parts)
    return sequences, torch.ones_like(sequences), continuation_labels(sequences, prompt_len)
