"""Language-model checkpoints: a GPT (or a run's hf: causal LM) in kdkit's safetensors + JSON format, with its
tokenizer beside it.

`save_lm(path, model, tokenizer)` writes three files into the folder of `path`:

    <name>.safetensors     the weights (kdkit.checkpoint, never pickle)
    <name>.json            kind "model", the `gpt` spec and its options, "task": "causal_lm", the vocabulary
                           size, and "tokenizer": the tokenizer file's name with its sha256
    <name>.tokenizer.json  the `tokenizers` tokenizer the model was trained with

`load_lm(path)` rebuilds the model and loads the tokenizer, refusing a checkpoint that is not a language model,
a missing tokenizer, a changed tokenizer (sha256) and a tokenizer of another vocabulary size. `kdkit generate`
reads checkpoints through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from torch import nn

from kdkit.checkpoint import file_sha256, save_checkpoint
from kdkit.data.lm_text import load_tokenizer, save_tokenizer
from kdkit.errors import CheckpointError
from kdkit.model_io import load_model
from kdkit.models.gpt import GPT

TASK = "causal_lm"


def _base(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def tokenizer_path(path: str | Path) -> Path:
    """Return where the tokenizer of the checkpoint at `path` lives: `<name>.tokenizer.json` beside it."""
    base = _base(path)
    return base.with_name(f"{base.name}.tokenizer.json")


def gpt_spec(model: GPT) -> dict[str, Any]:
    """Return the `gpt` model spec (registry name and options) that rebuilds `model`'s architecture."""
    first = model.blocks[0] if len(model.blocks) else None
    return {
        "name": "gpt",
        "n_layers": model.n_layers,
        "d_model": model.embed.embedding_dim,
        "n_heads": first.attn.n_heads if first is not None else 1,
        "block_size": model.block_size,
        "positions": model.positions,
        "mlp_ratio": first.mlp.fc.out_features // model.embed.embedding_dim if first is not None else 4,
    }


def save_tokenizer_beside(path: str | Path, tokenizer: Tokenizer) -> dict[str, Any]:
    """Write `<name>.tokenizer.json` beside the checkpoint at `path`; return the metadata `load_lm` checks."""
    tok_file = tokenizer_path(path)
    save_tokenizer(tokenizer, tok_file)
    return {"task": TASK, "tokenizer": {"file": tok_file.name, "sha256": file_sha256(tok_file)}}


def save_lm(path: str | Path, model: GPT, tokenizer: Tokenizer, extra: dict[str, Any] | None = None) -> Path:
    """Write the model's checkpoint and its tokenizer (see the module docstring); return the safetensors path."""
    if not isinstance(model, GPT):
        raise TypeError(f"save_lm saves a kdkit GPT, got {type(model).__name__}")
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab != model.vocab_size:
        raise ValueError(f"the tokenizer has {vocab} tokens but the model predicts {model.vocab_size}")
    tok_file = tokenizer_path(path)
    save_tokenizer(tokenizer, tok_file)
    meta = {
        "kind": "model",
        "task": TASK,
        "model": gpt_spec(model),
        "num_classes": model.vocab_size,
        "in_channels": 1,
        "image_size": 1,
        "tokenizer": {"file": tok_file.name, "sha256": file_sha256(tok_file)},
        **(extra or {}),
    }
    return save_checkpoint(_base(path), model.state_dict(), meta)


def load_lm(path: str | Path) -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    """Return (model, tokenizer, metadata) of a language-model checkpoint: a `gpt` written by `save_lm`, or any
    causal language model a run saved (an hf: model fine-tuned as a teacher, say)."""
    model, meta = load_model(path)
    if meta.get("task") != TASK or not isinstance(getattr(model, "vocab_size", None), int):
        raise CheckpointError(
            f"{str(path)!r} is not a language model checkpoint (it holds a {meta['model'].get('name')!r} model "
            f"for task {meta.get('task', 'image classification')!r}); kdkit generate needs a language model "
            "saved with its tokenizer"
        )
    info = meta.get("tokenizer") or {}
    file = _base(path).parent / str(info.get("file", tokenizer_path(path).name))
    if not file.is_file():
        raise CheckpointError(
            f"{str(path)!r}: its tokenizer {str(file)!r} is missing; a language model checkpoint is saved with "
            "its tokenizer beside it (kdkit.lm_io.save_lm)"
        )
    if info.get("sha256") and file_sha256(file) != info["sha256"]:
        raise CheckpointError(
            f"{str(file)!r} is not the tokenizer the model was saved with (sha256 mismatch)"
        )
    tokenizer = load_tokenizer(file)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab != model.vocab_size:
        raise CheckpointError(
            f"{str(file)!r} has {vocab} tokens but the model {str(path)!r} predicts {model.vocab_size}"
        )
    return model.eval(), tokenizer, meta
