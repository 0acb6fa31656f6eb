"""Sampling continuations from a causal language model: greedy, temperature, top-k, top-p, with a KV cache.

`generate(model, prompt, max_new_tokens, ...)` returns the prompt followed by the new tokens. Randomness comes
only from the `torch.Generator` given (or a fresh one seeded by `seed`), so the same seed gives the same text.
A model with a key/value cache (a `new_cache()` method and `forward(ids, cache=)`: kdkit's `gpt` and `hf:` causal
LMs) is fed only the newest token after the prompt; any other model that maps ids (N, L) to logits (N, L, V) is
run on the whole sequence at each step (as every model is with `use_cache=False`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (argmax), or sampled at `temperature` from the top-k / top-p set."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


def filter_logits(logits: Tensor, sampling: Sampling) -> Tensor:
    """Return (N, V) logits divided by the temperature, with tokens outside top-k / top-p set to -inf.

    Top-p (Holtzman et al. 2020) keeps the smallest set of most likely tokens whose probability reaches p (the
    most likely token is always kept); top-k keeps the k most likely. Both may apply (top-k first).
    """
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: Tensor, sampling: Sampling, generator: torch.Generator | None) -> Tensor:
    """Return the next token (N,) chosen from the last position's logits (N, V)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, sampling).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: Tensor,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    eos_id: int | None = None,
) -> Tensor:
    """Return (N, P + max_new_tokens) ids: the prompt (N, P) and its continuation.

    After `eos_id` a sequence is padded with `eos_id`. The model runs in eval mode and is left as it was.
    """
    sampling = sampling or Sampling()
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (N, P) token ids with P >= 1, got {tuple(prompt.shape)}")
    if generator is None and seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    new_cache = getattr(model, "new_cache", None)  # kdkit's gpt and hf: causal LMs decode with a cache
    cached = use_cache and callable(new_cache)
    cache = new_cache() if cached else None
    context = getattr(model, "block_size", None)  # kdkit's gpt, or an hf: causal LM's context length
    if isinstance(context, int) and prompt.shape[1] + max_new_tokens > context:
        raise ValueError(
            f"prompt {prompt.shape[1]} + {max_new_tokens} new tokens exceed block_size {context}"
        )
    out = prompt
    done = torch.zeros(len(prompt), dtype=torch.bool, device=prompt.device)
    try:
        logits = model(prompt, cache=cache) if cached else model(prompt)
        for _ in range(max_new_tokens):
            tok = next_token(logits[:, -1], sampling, generator)
            if eos_id is not None:
                tok = tok.masked_fill(done, eos_id)
                done = done | (tok == eos_id)
            out = torch.cat([out, tok[:, None]], dim=1)
            if out.shape[1] == prompt.shape[1] + max_new_tokens:
                break
            logits = model(tok[:, None], cache=cache) if cached else model(out)
    finally:
        model.train(was_training)
    return out
