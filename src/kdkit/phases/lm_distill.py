"""How a language model is distilled in a run (distill.lm): the step provider and the transfer set of its mode.

- supervised: `LMTeacherStep`, the teacher run online on the training blocks (teacher-forced);
- on_policy: `OnPolicyStep` (GKD): with probability lambda_ a step runs on the student's own continuations of each
  block's first prompt_len tokens, seeded by the step's position so that a resumed phase repeats it;
- sequence: the teacher's continuations of those prompts (`sequence_kd_set`, greedy by default) replace the
  training blocks, scored on the continuation only (Kim & Rush 2016); the configured objective trains on them.

With distill.teacher_outputs: cache (supervised only), the teacher's top-k next tokens of every training position
are kept on disk (`kdkit.lm_cache`, k = distill.cache.topk, keyed by teacher weights, blocks, tokenizer, k and
temperature), served beside each batch and read by the sparse form of distill.loss (`sparse_term`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdkit import distributed
from kdkit.config import LMDistillConfig
from kdkit.data.lm_sources import LMDataset
from kdkit.generation import Sampling
from kdkit.lm_cache import SparseTeacherCache, cache_key, sparse_steps, sparse_term
from kdkit.lm_modes import LMTeacherStep, OnPolicyStep, sequence_kd_set
from kdkit.objective import Objective, Term
from kdkit.phases.context import RunContext
from kdkit.phases.teacher_outputs import default_cache_root
from kdkit.plan import DistillPhase
from kdkit.steps import StepProvider


def sparse_cache_setup(
    phase: DistillPhase, ctx: RunContext, frozen: nn.Module, transfer: LMDataset
) -> tuple[dict[str, Tensor], StepProvider, Objective, dict[str, Any]]:
    """Return (served tensors, step provider, objective, what to record) of training on the sparse teacher cache."""
    d, bundle = ctx.cfg.distill, ctx.bundle
    r = phase.objective.response
    assert r is not None and d.cache.topk is not None and bundle.lm is not None
    k, temp = min(d.cache.topk, bundle.num_classes), r.temperature
    key = cache_key(frozen, transfer.input_ids, transfer.attention_mask, bundle.lm["tokenizer_sha"], k, temp)
    root = Path(d.cache.dir).expanduser() if d.cache.dir else default_cache_root()
    cache = SparseTeacherCache(root / "lm-sparse" / key, key)
    built = False
    if distributed.info().is_main and not cache.complete():
        dev = ctx.engine.runtime.device
        cache.build(
            lambda x, m: frozen(x.to(dev), m.to(dev)),
            transfer.input_ids,
            transfer.attention_mask,
            bundle.num_classes,
            k,
            temp,
            ctx.cfg.runtime.eval_batch_size,
        )
        built = True
    distributed.barrier()
    served = cache.load(bundle.num_classes)
    terms = [sparse_term(r.loss, r.alpha, made_at=temp, temperature=temp)] if r.alpha else []
    if r.beta:
        terms.append(Term.from_name("ce", r.beta))
    info = cache.info()
    record = {"k": k, "bytes_per_token": info.bytes_per_token, "key": key, "built": built}
    ctx.engine.console.print(
        f"[{phase.role}] sparse teacher cache: top-{k} of {bundle.num_classes} tokens, {info.bytes_per_token} "
        f"bytes per token, {'built' if built else 'read'} at {cache.directory}",
        highlight=False,
        markup=False,
    )
    return served, sparse_steps(), Objective(terms), record


def lm_distill_setup(
    phase: DistillPhase, ctx: RunContext, frozen: nn.Module, transfer: LMDataset
) -> tuple[LMDataset, StepProvider, dict[str, Any]]:
    """Return (transfer set, step provider, what to record) of the phase's distill.lm mode."""
    lm = ctx.cfg.distill.lm or LMDistillConfig()
    if lm.mode == "on_policy":
        steps = OnPolicyStep(
            frozen, lm.lambda_, lm.prompt_len, Sampling(temperature=lm.temperature), seed=phase.seed
        )
        return (
            transfer,
            steps,
            {"lm_mode": {"mode": "on_policy", "lambda": lm.lambda_, "prompt_len": lm.prompt_len}},
        )
    if lm.mode == "sequence":
        return (
            _sequence_set(ctx, frozen, transfer, lm, phase),
            LMTeacherStep(frozen),
            {"lm_mode": {"mode": "sequence", "prompt_len": lm.prompt_len, "greedy": lm.greedy}},
        )
    return transfer, LMTeacherStep(frozen), {"lm_mode": {"mode": "supervised"}}


def _sequence_set(
    ctx: RunContext, frozen: nn.Module, transfer: LMDataset, lm: LMDistillConfig, phase: DistillPhase
) -> LMDataset:
    """Return the teacher's continuations of every block's prompt as a transfer set of blocks."""
    keep = transfer.attention_mask[:, : lm.prompt_len].bool().all(dim=1)  # prompts without padding
    prompts = transfer.input_ids[keep, : lm.prompt_len].to(ctx.engine.runtime.device)
    sampling = Sampling(greedy=lm.greedy)
    with torch.inference_mode():
        ids, mask, labels = sequence_kd_set(
            frozen,
            prompts,
            transfer.input_ids.shape[1],
            sampling,
            seed=phase.seed,
            batch_size=ctx.cfg.runtime.eval_batch_size,
        )
    ctx.engine.console.print(
        f"[{phase.role}] sequence-level KD: the teacher continued {len(ids)} prompts of {lm.prompt_len} tokens",
        highlight=False,
        markup=False,
    )
    return LMDataset(
        ids.cpu(), mask.cpu(), labels.cpu(), transfer.classes, f"{transfer.name}:teacher-sequences"
    )
