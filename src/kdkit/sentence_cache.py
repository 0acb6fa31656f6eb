"""The teacher's logits for a sentence transfer set, kept on disk so that a second run reuses them.

Sentences carry no per-step augmentation (Tang et al.'s augmented sentences are made once, by seed, when the
data is read), so a sentence cache is one fp32 logit row per sentence: exactly what `precompute` computes in
memory, written once and read back by every later run of the same teacher on the same sentences (the MSE and
the KD student of one seed, a sweep of students).

    <root>/<key>/logits.safetensors   (N, C) fp32, in transfer-set order; its metadata holds the key

The key hashes the teacher's weights, the token ids and lengths of every sentence, the precision and the
batch size its logits are computed with (the batches' padding can move a bf16 logit in its last bit).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from kdkit.checkpoint import atomic_save_tensors
from kdkit.teacher_cache import hash_module, hash_tensor

FORMAT = "kdkit-sentence-cache-1"
FILE = "logits.safetensors"


def sentence_cache_key(
    teacher: nn.Module, input_ids: np.ndarray, lengths: np.ndarray, precision: str, batch_size: int
) -> str:
    """Return the hash naming a sentence cache: teacher weights, token ids and lengths, precision, batch size."""
    h = hashlib.sha256(FORMAT.encode())
    h.update(f"{type(teacher).__name__}|{precision}|{batch_size}".encode())
    hash_module(h, teacher)
    hash_tensor(h, torch.from_numpy(np.ascontiguousarray(input_ids)))
    hash_tensor(h, torch.from_numpy(np.ascontiguousarray(lengths)))
    return h.hexdigest()


def load_sentence_logits(directory: Path, key: str, n: int) -> torch.Tensor | None:
    """Return the cached (n, C) logits, or None when the cache is missing, of another key or damaged."""
    path = directory / FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
        logits = load_file(str(path))["logits"]
    except (SafetensorError, OSError, KeyError):
        return None
    if logits.dim() != 2 or logits.shape[0] != n or logits.dtype != torch.float32:
        return None
    return logits


def save_sentence_logits(directory: Path, key: str, logits: torch.Tensor) -> None:
    """Write the logits atomically (a reader never sees half a cache)."""
    atomic_save_tensors(directory / FILE, {"logits": logits.float()}, {"key": key, "format": FORMAT})
