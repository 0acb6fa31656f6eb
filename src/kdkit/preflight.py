"""Checks run before any training, so that a mistake in a config fails in seconds, not after the teacher trained.

Without them, a typo in the student's model name, a missing ensemble checkpoint, a class id out of range, an
unknown loss or a module path that does not exist would surface only when its phase starts: after the teacher
(and the scratch student) had trained, which may take hours. `preflight` checks everything a config names that
can be checked without training, with the same functions the phases use, so its messages are theirs:

- every checkpoint the config loads exists, is a kdkit model checkpoint and predicts the data set's classes
  (its metadata is read; its tensors are read when the phase loads it);
- every architecture the run builds is built once, on the meta device (no memory, no initialisation);
- distill.omit_classes and distill.class_bias name classes of the data set, and the student has a class bias;
- distill.terms name known losses and, for each teacher -> student pair the strategy distills, the module
  paths, shapes and options work: the objective is built and run once on a small batch of the transfer set,
  with freshly initialised models (on the CPU: some losses have no meta-device kernels);
- the optional libraries of the compress section are installed.

The random number generators of torch, NumPy and Python are restored afterwards: a run is the same with or
without these checks.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from kdkit import data as kdata
from kdkit.checkpoint import read_checkpoint_meta
from kdkit.config import ExperimentConfig, ModelSpec
from kdkit.errors import ConfigError, ModelError
from kdkit.experiment import (
    DataBundle,
    bias_head,
    build_model,
    check_model_meta,
    make_loader,
    rebuild_model,
)
from kdkit.terms import TERMS
from kdkit.terms.build import build_objective

_SAMPLE = 16  # images in the dry run of distill.terms


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


class _Source:
    """A model of the run: built from a spec, or described by a checkpoint's metadata."""

    def __init__(
        self, field: str, spec: ModelSpec | None = None, meta: dict[str, Any] | None = None, path: str = ""
    ) -> None:
        self.field, self.spec, self.meta, self.path = field, spec, meta, path

    def build(self, bundle: DataBundle) -> nn.Module:
        """Return a freshly initialised model of this architecture (the weights of a checkpoint are not read)."""
        if self.meta is not None:
            return rebuild_model(self.meta, self.path)
        assert self.spec is not None
        return build_model(self.spec, bundle.num_classes, bundle.in_channels, bundle.image_size, self.field)


def _checkpoint(path: str, field: str, cfg: ExperimentConfig, bundle: DataBundle) -> _Source:
    """Return the model a checkpoint describes, checked to be a model predicting the data set's classes."""
    meta = check_model_meta(read_checkpoint_meta(path), path)
    if meta.get("num_classes") != bundle.num_classes:
        raise ModelError(
            f"{field} {path!r} predicts {meta.get('num_classes')} classes but {cfg.data.dataset} has "
            f"{bundle.num_classes}"
        )
    return _Source(field, meta=meta, path=path)


def _teacher(cfg: ExperimentConfig, bundle: DataBundle) -> _Source | None:
    t = cfg.teacher
    if t.checkpoint:
        return _checkpoint(t.checkpoint, "teacher.checkpoint", cfg, bundle)
    return _Source("teacher.model", spec=t.model) if t.model is not None else None


def _sources(cfg: ExperimentConfig, bundle: DataBundle) -> list[_Source]:
    """Return every model the run builds or loads (checkpoints checked on the way)."""
    sources = [_Source("student.model", spec=cfg.student.model)]
    teacher = _teacher(cfg, bundle)
    if teacher is not None:
        sources.append(teacher)
    for i, m in enumerate(cfg.teacher.ensemble or []):
        field = f"teacher.ensemble[{i}]"
        if m.checkpoint:
            sources.append(_checkpoint(m.checkpoint, f"{field}.checkpoint", cfg, bundle))
        elif m.model is not None:
            sources.append(_Source(f"{field}.model", spec=m.model))
    s = cfg.strategy
    if s.kind == "mutual":
        sources += [_Source(f"strategy.peers[{i}]", spec=p) for i, p in enumerate(s.peers or [])]
    if s.kind == "takd" and s.assistant is not None:
        a = s.assistant
        if a.checkpoint:
            sources.append(_checkpoint(a.checkpoint, "strategy.assistant.checkpoint", cfg, bundle))
        else:
            sources.append(_Source("strategy.assistant.model", spec=a.model))
    return sources


def _distilled_pairs(cfg: ExperimentConfig, bundle: DataBundle) -> list[tuple[_Source, _Source]]:
    """Return the (teacher, student) pairs that distill.terms are applied to, in the order they train."""
    if "distill" not in cfg.phases or cfg.teacher.ensemble:
        return []
    teacher = _teacher(cfg, bundle)
    if teacher is None:
        return []
    student = _Source("student.model", spec=cfg.student.model)
    kind = cfg.strategy.kind
    if kind == "offline":
        return [(teacher, student)]
    if kind == "born_again":
        own = _Source("teacher.model", spec=cfg.teacher.model) if cfg.teacher.model is not None else student
        return [(teacher, own), (own, own)] if cfg.strategy.generations > 1 else [(teacher, own)]
    if kind == "takd" and cfg.strategy.assistant is not None:
        a = cfg.strategy.assistant
        if a.checkpoint:
            return [(_checkpoint(a.checkpoint, "strategy.assistant.checkpoint", cfg, bundle), student)]
        assistant = _Source("strategy.assistant.model", spec=a.model)
        return [(teacher, assistant), (assistant, student)]
    return []


def _check_classes(cfg: ExperimentConfig, bundle: DataBundle, student: nn.Module) -> None:
    n, d = bundle.num_classes, cfg.distill
    bad = sorted({c for c in d.omit_classes if not 0 <= c < n})
    if bad:
        raise ConfigError(
            f"distill.omit_classes: class ids {bad} are out of range; expected ids in [0, {n - 1}]"
        )
    if d.omit_classes and not (set(range(n)) - set(d.omit_classes)):
        raise ConfigError(
            f"distill.omit_classes removes every one of the {n} classes: the transfer set would be empty"
        )
    bad = sorted(c for c in d.class_bias if not 0 <= c < n)
    if bad:
        raise ConfigError(
            f"distill.class_bias: class ids {bad} are out of range; expected ids in [0, {n - 1}]"
        )
    if d.class_bias:
        bias_head(student)  # raises when the student has no classifier bias to adjust


def _check_terms(cfg: ExperimentConfig, bundle: DataBundle) -> None:
    terms = cfg.distill.terms or []
    for i, tc in enumerate(terms):
        if tc.loss not in TERMS:
            raise ConfigError(f"distill.terms[{i}].loss: unknown loss {tc.loss!r}; known: {sorted(TERMS)}")
    pairs = _distilled_pairs(cfg, bundle) if terms else []
    if not pairs:
        return
    d = cfg.distill
    transfer = kdata.omit_classes(bundle.train, d.omit_classes) if d.omit_classes else bundle.train
    batch = next(iter(make_loader(transfer, bundle, _SAMPLE, train=False)))
    built: dict[str, nn.Module] = {}
    for teacher, student in pairs:
        for src in (teacher, student):
            if src.field not in built:
                built[src.field] = src.build(bundle)
        build_objective(
            terms,
            built[student.field],
            built[teacher.field],
            batch.x,
            batch.y.clamp_min(0),  # the dry run needs valid class ids
            n_data=len(transfer),
        )


def _check_compress(cfg: ExperimentConfig) -> None:
    if cfg.compress is not None and "distill" in cfg.phases:
        import kdkit.compress  # noqa: F401  # raises, naming the missing libraries and their extra


def preflight(cfg: ExperimentConfig, bundle: DataBundle) -> None:
    """Raise the error a phase would raise later for every mistake that can be found without training."""
    with _random_state_kept():
        student: nn.Module | None = None
        with torch.device("meta"):
            for src in _sources(cfg, bundle):
                model = src.build(bundle)
                if src.field == "student.model":
                    student = model
        assert student is not None
        _check_classes(cfg, bundle, student)
        _check_terms(cfg, bundle)
        _check_compress(cfg)
