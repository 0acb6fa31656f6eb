"""Sparse teacher cache for causal-LM distillation: the teacher's top-k next tokens of every training position.

The teacher runs once over the training blocks; for each position the cache keeps the k most likely token ids
(int16 when the vocabulary fits, else int32), their log-probabilities (fp16) and the tail mass, the probability
of every other token (fp16). That is k * (2 or 4) + 2 * k + 2 bytes per token instead of 2 * V for fp16 dense
logits. The losses of `kdkit.losses.token_divergences` read it as `SparseTargets` (top k plus one rest bucket).

Layout of a cache directory:
    targets.safetensors   ids (n, B, k), logprobs (n, B, k), tail (n, B), aligned with the blocks
    meta.json             written last: the key, the shapes, k, temperature, bytes per token, the file's sha256
The key hashes the teacher's weights, the blocks (ids and mask), the tokenizer, k and the temperature; loading
with another key is refused, so a cache is never read for a teacher, data or tokenizer it was not made from.

A loader serves the three tensors beside each batch (`extras`, named by `SPARSE_KEYS`), `ServedTeacherStep`
passes them to the objective, and `sparse_term` builds the objective's term that reads them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from kdkit.batches import LABELS
from kdkit.checkpoint import atomic_save_tensors, atomic_write_text, file_sha256
from kdkit.errors import CheckpointError, ModelError
from kdkit.losses.token_divergences import SparseTargets, tail_mass
from kdkit.objective import Term
from kdkit.steps import STUDENT_LOGITS, ServedTeacherStep
from kdkit.teacher import FrozenTeacher
from kdkit.teacher_cache import hash_module, hash_tensor
from kdkit.terms import term_spec

FORMAT = "kdkit-lm-sparse-cache-v1"
TOPK_IDS, TOPK_LOGPROBS, TAIL_MASS = "teacher.topk_ids", "teacher.topk_logprobs", "teacher.tail_mass"
SPARSE_KEYS = (TOPK_IDS, TOPK_LOGPROBS, TAIL_MASS)
TARGETS_FILE, META_FILE = "targets.safetensors", "meta.json"
_FP16_MIN = float(torch.finfo(torch.float16).min)


def id_dtype(vocab_size: int) -> torch.dtype:
    """Return the narrowest signed integer type holding every token id: int16 up to 32767 tokens, else int32."""
    return torch.int16 if vocab_size <= torch.iinfo(torch.int16).max + 1 else torch.int32


def bytes_per_token(k: int, vocab_size: int) -> int:
    """Return the bytes the cache takes per position: k ids, k fp16 log-probabilities and one fp16 tail mass."""
    return k * (torch.tensor([], dtype=id_dtype(vocab_size)).element_size() + 2) + 2


def cache_key(
    teacher: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    tokenizer_hash: str,
    k: int,
    temperature: float,
) -> str:
    """Return the hash naming a cache: teacher weights, blocks and mask, tokenizer, k, temperature and format."""
    h = hashlib.sha256(FORMAT.encode())
    if isinstance(teacher, FrozenTeacher):
        teacher = teacher.model  # the same weights give the same key, wrapped or not
    hash_module(h, teacher)
    hash_tensor(h, input_ids.long())
    hash_tensor(h, attention_mask.long())
    h.update(json.dumps({"tokenizer": tokenizer_hash, "k": k, "temperature": temperature}).encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class SparseCacheInfo:
    """What a built cache holds and what it costs."""

    key: str
    k: int
    temperature: float
    vocab_size: int
    positions: int  # blocks * block size
    file_bytes: int  # the safetensors file on disk (tensors and header)
    bytes_per_token: int  # tensor bytes per position (the header excluded)


class SparseTeacherCache:
    """A directory holding one teacher's sparse next-token targets for one set of training blocks."""

    def __init__(self, directory: str | Path, key: str) -> None:
        self.directory = Path(directory)
        self.key = key

    @property
    def meta_path(self) -> Path:
        """Return the path of meta.json (present only when the cache is complete)."""
        return self.directory / META_FILE

    def complete(self) -> bool:
        """Return True when a cache with this key is complete in the directory."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return meta.get("key") == self.key and meta.get("format") == FORMAT

    @torch.no_grad()
    def build(
        self,
        teacher: Callable[..., Tensor],
        input_ids: Tensor,
        attention_mask: Tensor,
        vocab_size: int,
        k: int,
        temperature: float = 1.0,
        batch_size: int = 32,
    ) -> SparseCacheInfo:
        """Run the teacher over the blocks (n, B) and write their top-k targets; return what was written."""
        if not 1 <= k <= vocab_size:
            raise ValueError(f"k must lie in [1, {vocab_size}], got {k}")
        if isinstance(teacher, nn.Module):
            teacher.eval()
        ids_out, lp_out, tail_out = [], [], []
        for start in range(0, len(input_ids), batch_size):
            x, m = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            logits = teacher(x, m).float()
            if logits.shape[-1] != vocab_size:
                raise CheckpointError(f"the teacher predicts {logits.shape[-1]} tokens, not {vocab_size}")
            logp = torch.log_softmax(logits / temperature, dim=-1)
            top, ids = logp.topk(k, dim=-1)
            ids_out.append(ids.to(id_dtype(vocab_size)).cpu())
            lp_out.append(top.clamp_min(_FP16_MIN).half().cpu())
            tail_out.append(tail_mass(logp, ids).half().cpu())
        tensors = {"ids": torch.cat(ids_out), "logprobs": torch.cat(lp_out), "tail": torch.cat(tail_out)}
        path = self.directory / TARGETS_FILE
        atomic_save_tensors(path, tensors, {"kdkit": json.dumps({"format": FORMAT, "key": self.key})})
        positions = int(input_ids.numel())
        info = SparseCacheInfo(
            key=self.key,
            k=k,
            temperature=temperature,
            vocab_size=vocab_size,
            positions=positions,
            file_bytes=path.stat().st_size,
            bytes_per_token=sum(t.numel() * t.element_size() for t in tensors.values()) // positions,
        )
        meta = {
            "format": FORMAT,
            **info.__dict__,
            "shape": list(input_ids.shape),
            "sha256": file_sha256(path),
        }
        atomic_write_text(self.meta_path, json.dumps(meta, indent=2))
        return info

    def info(self) -> SparseCacheInfo:
        """Return the description of a complete cache (raises CheckpointError for another key)."""
        meta = self._meta()
        return SparseCacheInfo(**{f: meta[f] for f in SparseCacheInfo.__dataclass_fields__})

    def _meta(self) -> dict[str, Any]:
        if not self.meta_path.is_file():
            raise CheckpointError(
                f"sparse teacher cache {self.directory} is missing or incomplete (no {META_FILE})"
            )
        meta = json.loads(self.meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("key") != self.key:
            raise CheckpointError(
                f"sparse teacher cache {self.directory} was made for another teacher, data or tokenizer "
                f"(key {meta.get('key')}, expected {self.key}); build it again"
            )
        return meta

    def load(self, vocab_size: int | None = None) -> dict[str, Tensor]:
        """Return the served tensors by `SPARSE_KEYS` name, after checking the key and the file's sha256.

        With `vocab_size` (the student's), a cache made over another vocabulary is refused (ModelError).
        """
        meta = self._meta()
        if vocab_size is not None and vocab_size != meta["vocab_size"]:
            raise ModelError(
                f"sparse teacher cache {self.directory} holds targets over {meta['vocab_size']} tokens (the "
                f"teacher's vocabulary); the student predicts {vocab_size}"
            )
        path = self.directory / TARGETS_FILE
        if not path.is_file() or file_sha256(path) != meta["sha256"]:
            raise CheckpointError(f"sparse teacher cache file {path} is missing or corrupt (sha256 mismatch)")
        t = load_file(str(path))
        return {TOPK_IDS: t["ids"], TOPK_LOGPROBS: t["logprobs"], TAIL_MASS: t["tail"]}


def _sparse_loss(
    fn: Callable[..., Tensor],
    made_at: float,
    student_logits: Tensor,
    ids: Tensor,
    logprobs: Tensor,
    tail: Tensor,
    labels: Tensor,
    **options: Any,
) -> Tensor:
    """Call a token divergence with the served top-k tensors as `SparseTargets`."""
    return fn(student_logits, SparseTargets(ids, logprobs, tail, made_at), labels, **options)


def sparse_term(loss: str, weight: float = 1.0, *, made_at: float = 1.0, **options: Any) -> Term:
    """Return the objective term of a registered token divergence reading cached sparse targets.

    `made_at` is the temperature the cache was built at; the loss's `temperature` must equal it (checked in the
    loss). The term reads the student's logits, the three served tensors and the labels (-100 not scored).
    """
    spec = term_spec(loss)
    if spec.kind != "logits_labels" or spec.fn is None:
        raise KeyError(f"loss {loss!r} is not a token divergence over (logits, teacher, labels)")
    checked = spec.validate_options(options)
    fn = functools.partial(_sparse_loss, spec.fn, made_at)
    return Term(
        name=loss, fn=fn, inputs=(STUDENT_LOGITS, *SPARSE_KEYS, LABELS), weight=weight, kwargs=checked
    )


def sparse_steps() -> ServedTeacherStep:
    """Return the step provider that serves the cached sparse targets beside each batch."""
    return ServedTeacherStep(keys=SPARSE_KEYS)
