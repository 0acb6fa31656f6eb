"""A small decoder-only transformer (GPT) for causal language modelling and its distillation.

Pre-norm blocks (LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP -> residual), rotary or learned
positions, input and output embeddings tied, attention by `F.scaled_dot_product_attention`, and a key/value cache
for generation. `forward(input_ids, attention_mask=None)` returns next-token logits (N, L, V): the logits at
position t predict token t + 1. Tappable module paths: `embed`, `blocks.<i>`, `blocks.<i>.attn`,
`blocks.<i>.mlp`, `norm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.models.registry import register_model

Positions = Literal["rope", "learned"]


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float, causal: bool) -> Tensor:
    """Return `F.scaled_dot_product_attention`, in float32 when it trains in bfloat16 on a CPU.

    On CPU (torch 2.13) the bfloat16 flash-attention kernel's backward is the slow part of a small GPT's training
    step: forward + backward of a (32, 4, 128, 32) causal attention took 57.6 ms in bfloat16 against 23.0 ms in
    float32, and with head width 64 67.3 ms against 41.2 ms (one thread, AMD EPYC with AVX512-BF16, 2026-12-05;
    benchmarks/lm_attention_probe.py, results/lm_probes/attention.log). So a training
    step under bf16 autocast computes attention in float32 and casts the result back; inference (no gradient)
    and other devices keep the input dtype.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled() and q.requires_grad:
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout, is_causal=causal
            )
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)


@dataclass
class KVCache:
    """Keys and values of every layer for the positions seen so far (generation feeds only new tokens)."""

    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)
    length: int = 0  # positions already cached

    @staticmethod
    def empty(n_layers: int) -> KVCache:
        """Return a cache with no position yet for a model of `n_layers` blocks."""
        return KVCache([None] * n_layers, [None] * n_layers, 0)


def _rope_tables(head_dim: int, length: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Return cos and sin (length, head_dim) of rotary embeddings (Su et al. 2021), halves rotated together."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with optional rotary positions and a key/value cache."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        key_mask: Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        past = 0
        if cache is not None:
            past = cache.length
            if cache.keys[layer] is not None:
                k = torch.cat([cache.keys[layer], k], dim=2)
                v = torch.cat([cache.values[layer], v], dim=2)
            cache.keys[layer], cache.values[layer] = k, v
        mask, causal = None, past == 0 and key_mask is None
        if not causal and (length > 1 or key_mask is not None):
            q_pos = torch.arange(past, past + length, device=x.device)[:, None]
            k_pos = torch.arange(past + length, device=x.device)[None, :]
            mask = (k_pos <= q_pos)[None, None]
            if key_mask is not None:
                # A position always sees itself, so a padding query never has an empty row (NaN).
                mask = mask & (key_mask[:, None, None, :].bool() | (k_pos == q_pos)[None, None])
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0, causal)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(n, length, d)))


class MLP(nn.Module):
    """Position-wise feed-forward: Linear (d -> ratio * d), GELU, Linear back, dropout."""

    def __init__(self, d_model: int, ratio: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, ratio * d_model, bias=False)
        self.out = nn.Linear(ratio * d_model, d_model, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.out(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, bias=False)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model, bias=False)
        self.mlp = MLP(d_model, mlp_ratio, dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        key_mask: Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        """Return the block's output; the arguments are those of `CausalSelfAttention.forward`."""
        x = x + self.attn(self.norm1(x), rope, key_mask, cache, layer)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Decoder-only transformer over token ids; see the module docstring."""

    def __init__(
        self,
        vocab_size: int,
        n_layers: int = 4,
        d_model: int = 256,
        n_heads: int = 4,
        block_size: int = 256,
        *,
        positions: Positions = "rope",
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model {d_model} must split into {n_heads} heads of even size")
        if positions not in ("rope", "learned"):
            raise ValueError(f"positions must be 'rope' or 'learned', got {positions!r}")
        self.vocab_size, self.block_size, self.positions = vocab_size, block_size, positions
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model, bias=False)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied input and output embeddings
        cos, sin = _rope_tables(d_model // n_heads, block_size)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "out.weight")):  # GPT-2: residual projections scaled by depth
                nn.init.normal_(p, std=0.02 / (2 * n_layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def classifier(self) -> nn.Linear:
        """Return the output layer (tied to the embedding), the head `kdkit.models.get_classifier` finds."""
        return self.head

    @property
    def n_layers(self) -> int:
        """Return the number of transformer blocks."""
        return len(self.blocks)

    def new_cache(self) -> KVCache:
        """Return an empty key/value cache for decoding with `forward(..., cache=)`."""
        return KVCache.empty(self.n_layers)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """Return next-token logits (N, L, V); with `cache`, `input_ids` continue the cached positions.

        `attention_mask` (N, L) 1 for tokens and 0 for padding: no token attends to padding. Right padding (the
        loaders' convention) changes nothing for the real tokens, which never look ahead anyway.
        """
        n, length = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + length > self.block_size:
            raise ValueError(f"{past + length} positions exceed the model's block_size {self.block_size}")
        x = self.embed(input_ids)
        rope = None
        if self.pos is not None:
            x = x + self.pos(torch.arange(past, past + length, device=input_ids.device))
        else:
            rope = (self.rope_cos[past : past + length], self.rope_sin[past : past + length])
        key_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_mask = attention_mask
            if cache is not None:
                raise ValueError("a padded batch cannot be decoded with a cache; pass attention_mask=None")
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, key_mask, cache, i)
        if cache is not None:
            cache.length = past + length
        return self.head(self.norm(x))


@register_model("gpt")
def gpt(
    num_classes: int = 256,
    in_channels: int = 1,
    image_size: int = 1,
    n_layers: int = 4,
    d_model: int = 256,
    n_heads: int = 4,
    block_size: int = 256,
    positions: Positions = "rope",
    mlp_ratio: int = 4,
    dropout: float = 0.0,
) -> GPT:
    """Return a GPT whose vocabulary is `num_classes` (in_channels and image_size are ignored)."""
    return GPT(
        num_classes,
        n_layers,
        d_model,
        n_heads,
        block_size,
        positions=positions,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
    )
