"""A small recurrent model over token ids: embedding, GRU, linear head (sequence or per-token classes)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GRUClassifier(nn.Module):
    """Embedding + one-layer GRU + linear classifier over right-padded token ids.

    With `per_token=False` it returns (N, C) logits read at each sequence's last real token (so padding is
    never seen by a unidirectional GRU); with `per_token=True` it returns (N, L, C) logits at every position.
    Tappable module paths: `embed` (N, L, E), `rnn` (N, L, H), `classifier`.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int = 32,
        hidden: int = 64,
        *,
        pad_id: int = 0,
        per_token: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("num_classes", num_classes)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = nn.GRU(embed_dim, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)
        self.per_token = per_token

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Return logits: (N, C) at the last real token of each sequence, or (N, L, C) with `per_token`."""
        out, _ = self.rnn(self.embed(input_ids))
        if self.per_token:
            return self.classifier(out)
        if attention_mask is None:
            last = out[:, -1]
        else:
            pos = (attention_mask.sum(dim=1) - 1).clamp_min(0)
            last = out[torch.arange(len(out), device=out.device), pos]
        return self.classifier(last)
