"""Teacher and student of a language model must share one vocabulary: checked before anything trains.

Token-level distillation compares the two next-token distributions id by id, so the output widths must be
equal, and when tokenizers are given, id i must be the same token on both sides (the same vocabulary, not only
the same size). The data's ids must also lie inside that vocabulary.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from kdkit.errors import ModelError
from kdkit.models.heads import get_classifier


def vocab_size_of(model: nn.Module) -> int:
    """Return a language model's vocabulary size: its `vocab_size` attribute or its output layer's width."""
    size = getattr(model, "vocab_size", None)
    if isinstance(size, int):
        return size
    config = getattr(model, "config", None)  # a Hugging Face model
    if isinstance(getattr(config, "vocab_size", None), int):
        return int(config.vocab_size)
    return int(get_classifier(model).out_features)


def _vocab(tokenizer: Any) -> dict[str, int]:
    get = getattr(tokenizer, "get_vocab", None)
    if not callable(get):
        raise TypeError(f"{type(tokenizer).__name__} has no get_vocab(): not a tokenizer")
    return dict(get())


def check_shared_vocabulary(
    teacher: nn.Module,
    student: nn.Module,
    *,
    teacher_tokenizer: Any = None,
    student_tokenizer: Any = None,
    data_ids: Tensor | None = None,
) -> int:
    """Return the shared vocabulary size, or raise ModelError naming both sizes (and the first differing token)."""
    t_size, s_size = vocab_size_of(teacher), vocab_size_of(student)
    if t_size != s_size:
        raise ModelError(
            f"teacher and student vocabularies differ: the teacher predicts {t_size} tokens, the student "
            f"{s_size}; token-level distillation needs one shared vocabulary (the same tokenizer)"
        )
    if (teacher_tokenizer is None) != (student_tokenizer is None):
        raise ModelError("give both tokenizers (teacher and student) or neither to check the vocabulary")
    if teacher_tokenizer is not None:
        tv, sv = _vocab(teacher_tokenizer), _vocab(student_tokenizer)
        if tv != sv:
            t_by_id = {i: tok for tok, i in tv.items()}
            s_by_id = {i: tok for tok, i in sv.items()}
            diff = sorted(set(t_by_id.items()) ^ set(s_by_id.items()))
            i = diff[0][0]
            raise ModelError(
                f"teacher and student tokenizers differ: {len(tv)} tokens against {len(sv)}; id {i} is "
                f"{t_by_id.get(i)!r} for the teacher and {s_by_id.get(i)!r} for the student"
            )
        if len(tv) > t_size:
            raise ModelError(f"the tokenizer has {len(tv)} tokens but the models predict only {t_size}")
    if data_ids is not None and data_ids.numel() and int(data_ids.max()) >= t_size:
        raise ModelError(f"the data holds token id {int(data_ids.max())}, outside the vocabulary of {t_size}")
    return t_size
