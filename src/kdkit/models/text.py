"""Sentence classifiers over token ids: Tang et al.'s BiLSTM and a Kim (2014) text CNN.

Both are called as `model(input_ids, attention_mask) -> logits (N, C)` and read only the valid (mask 1) positions
of right-padded sequences, so padding never changes a prediction. For sentence data the run's `in_channels` is
the vocabulary size (the "channels" of a one-hot token) and `image_size` the longest sequence (unused here).

Word embeddings start at random or, with `embeddings_from: hf:PATH`, from the token embedding matrix of that
Hugging Face model (the teacher's; its tokenizer must be the data's), projected on its principal components when
`embed_dim` is smaller than the teacher's width (`embed_dim: null` keeps the teacher's width).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from kdkit.errors import ModelError
from kdkit.models.hf import input_embeddings
from kdkit.models.registry import register_model

TEXT_MODELS = ("bilstm", "textcnn")  # registered names of the models that read token ids, not images


def projected_embeddings(weight: Tensor, dim: int) -> Tensor:
    """Return the rows of `weight` (V, D) projected on its `dim` leading principal components (V, dim).

    The projection keeps the largest directions of variation of the teacher's embeddings; its scale is the
    teacher's (no rescaling). With `dim == D` the matrix is returned unchanged.
    """
    vocab, width = weight.shape
    if dim == width:
        return weight.clone()
    if dim > width:
        raise ModelError(f"embed_dim {dim} is larger than the teacher's embedding width {width}")
    centred = weight.double() - weight.double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = vh[:dim].T
    basis = basis * torch.where(basis.sum(dim=0) < 0, -1.0, 1.0)  # a fixed sign per component
    return (centred @ basis).to(weight.dtype)


def _embedding(vocab: int, dim: int | None, pad_id: int, source: str | None, freeze: bool) -> nn.Embedding:
    """Return the word embedding: random (`source` None) or from the model `hf:PATH` (projected to `dim`)."""
    if source is None:
        if dim is None:
            raise ModelError(
                "embed_dim: null needs embeddings_from (the model whose embedding width to take)"
            )
        return nn.Embedding(vocab, dim, padding_idx=pad_id)
    if not source.startswith("hf:"):
        raise ModelError(
            f"embeddings_from must be 'hf:PATH' (a Hugging Face folder or package), got {source!r}"
        )
    weight = input_embeddings(source.removeprefix("hf:"))
    if weight.shape[0] != vocab:
        raise ModelError(
            f"embeddings_from {source!r} has {weight.shape[0]} tokens but the data's vocabulary has {vocab}: "
            "tokenise the data with that model's tokenizer (data.tokenizer)"
        )
    if weight.device.type == "meta":  # preflight builds on the meta device: the shape is all there is
        return nn.Embedding(vocab, dim or weight.shape[1], padding_idx=pad_id)
    weight = projected_embeddings(weight, dim or weight.shape[1])
    emb = nn.Embedding.from_pretrained(weight, freeze=freeze, padding_idx=pad_id)
    return emb


def _lengths(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    if attention_mask is None:
        return torch.full((len(input_ids),), input_ids.shape[1], dtype=torch.long, device=input_ids.device)
    return attention_mask.sum(dim=1).clamp_min(1)


class BiLSTMClassifier(nn.Module):
    """Tang et al. (2019)'s student: embedding, one bidirectional LSTM layer, pooling, a ReLU layer, classifier.

    `pooling="max"` takes the maximum over the valid positions of both directions' outputs; `"concat"` joins
    the last hidden state of each direction (the forward state at each sentence's last token). Tappable paths:
    `embed` (N, L, E), `mlp` (N, M) and `classifier` (N, C).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int | None = 300,
        hidden: int = 150,
        mlp: int = 200,
        *,
        pooling: Literal["max", "concat"] = "max",
        dropout: float = 0.1,
        pad_id: int = 0,
        embeddings_from: str | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in ("max", "concat"):
            raise ModelError(f"pooling must be 'max' or 'concat', got {pooling!r}")
        self.embed = _embedding(vocab_size, embed_dim, pad_id, embeddings_from, freeze_embeddings)
        self.rnn = nn.LSTM(self.embed.embedding_dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, mlp), nn.ReLU())
        self.classifier = nn.Linear(mlp, num_classes)
        self.pooling = pooling

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Return (N, C) logits from the valid positions of right-padded token ids."""
        lengths = _lengths(input_ids, attention_mask)
        x = self.dropout(self.embed(input_ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.rnn(packed)
        if self.pooling == "concat" and not torch.onnx.is_in_onnx_export():
            pooled = torch.cat([h[0], h[1]], dim=1)
        elif self.pooling == "concat":
            # The ONNX exporter cannot take h_n of a packed LSTM: the same states, read from the outputs (the
            # forward direction at each sentence's last token, the backward one at its first).
            seq, _ = pad_packed_sequence(out, batch_first=True)
            half = seq.shape[2] // 2
            last = (lengths - 1).to(seq.device)[:, None, None].expand(-1, 1, half)
            pooled = torch.cat([seq[:, :, :half].gather(1, last)[:, 0], seq[:, 0, half:]], dim=1)
        else:
            seq, _ = pad_packed_sequence(out, batch_first=True)  # padded to the longest sentence, with zeros
            valid = torch.arange(seq.shape[1], device=seq.device)[None] < lengths[:, None]
            pooled = seq.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
        return self.classifier(self.mlp(self.dropout(pooled)))


class TextCNN(nn.Module):
    """Kim (2014)'s sentence CNN: embedding, 1-D convolutions of several widths, max over time, classifier.

    Padded positions are zeroed after the embedding and a window counts only when it starts on a real token
    (windows of a sentence shorter than the filter reach into zeros), so padding never changes the logits.
    Tappable paths: `embed` (N, L, E), `classifier` (N, C).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int | None = 300,
        filters: int = 100,
        widths: tuple[int, ...] = (3, 4, 5),
        *,
        dropout: float = 0.5,
        pad_id: int = 0,
        embeddings_from: str | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ModelError(f"widths must be positive filter widths, got {widths!r}")
        self.embed = _embedding(vocab_size, embed_dim, pad_id, embeddings_from, freeze_embeddings)
        self.convs = nn.ModuleList(nn.Conv1d(self.embed.embedding_dim, filters, w) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(filters * len(widths), num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Return (N, C) logits from the valid positions of right-padded token ids."""
        lengths = _lengths(input_ids, attention_mask)
        x = self.embed(input_ids)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        longest = max(conv.kernel_size[0] for conv in self.convs)
        x = nn.functional.pad(x.transpose(1, 2), (0, max(longest - x.shape[1], 0)))
        pooled = []
        for conv in self.convs:
            y = torch.relu(conv(x))  # (N, F, L - w + 1)
            starts = torch.arange(y.shape[2], device=y.device)[None]
            valid = starts <= (lengths[:, None] - conv.kernel_size[0]).clamp_min(0)
            pooled.append(y.masked_fill(~valid[:, None], float("-inf")).amax(dim=2))
        return self.classifier(self.dropout(torch.cat(pooled, dim=1)))


@register_model("bilstm")
def bilstm(
    num_classes: int = 2,
    in_channels: int = 30522,
    image_size: int = 64,
    embed_dim: int | None = 300,
    hidden: int = 150,
    mlp: int = 200,
    pooling: Literal["max", "concat"] = "max",
    dropout: float = 0.1,
    pad_id: int = 0,
    embeddings_from: str | None = None,
    freeze_embeddings: bool = False,
) -> BiLSTMClassifier:
    """Tang et al.'s BiLSTM student over the data's vocabulary (`in_channels` is the vocabulary size)."""
    return BiLSTMClassifier(
        in_channels,
        num_classes,
        embed_dim,
        hidden,
        mlp,
        pooling=pooling,
        dropout=dropout,
        pad_id=pad_id,
        embeddings_from=embeddings_from,
        freeze_embeddings=freeze_embeddings,
    )


@register_model("textcnn")
def textcnn(
    num_classes: int = 2,
    in_channels: int = 30522,
    image_size: int = 64,
    embed_dim: int | None = 300,
    filters: int = 100,
    widths: tuple[int, ...] = (3, 4, 5),
    dropout: float = 0.5,
    pad_id: int = 0,
    embeddings_from: str | None = None,
    freeze_embeddings: bool = False,
) -> TextCNN:
    """Kim's text CNN over the data's vocabulary (`in_channels` is the vocabulary size)."""
    return TextCNN(
        in_channels,
        num_classes,
        embed_dim,
        filters,
        tuple(widths),
        dropout=dropout,
        pad_id=pad_id,
        embeddings_from=embeddings_from,
        freeze_embeddings=freeze_embeddings,
    )
