"""Preflight: dry-run the plan, so that a mistake in a config fails in seconds, not after the teacher trained.

`preflight` makes the plan (`kdkit.strategies.make_plan`, which refuses what no strategy can honour) and walks
it, with the same functions the phases use, so that its messages are theirs:

- every model a phase builds is built once, on the meta device (no memory, no initialisation);
- every checkpoint a phase loads exists, is a kdkit model checkpoint and predicts the data set's classes
  (by name too for ensemble members); its metadata is read, its tensors when the phase loads it;
- the omitted and biased class ids of each distillation phase exist, and its model has a class bias;
- for each teacher -> student pair that custom terms are applied to, the module paths, shapes and options
  work: the objective is built and run once on a small batch of the transfer set, with freshly initialised
  models (on the CPU: some losses have no meta-device kernels);
- the optional libraries of the compress step are installed;
- on language-model text, every model is a causal LM over the data's vocabulary and block size, teacher and
  student share one vocabulary (`kdkit.vocab`, tokenizers compared token by token) and the distillation losses
  are per-token divergences;
- on sentence data, every model reads token ids, every hf: model has the data's tokenizer, and the phases
  use what sentences support (response losses and terms on logits and hidden states, teacher outputs online,
  precomputed or cached, the training set).

The random number generators of torch, NumPy and Python are restored afterwards: a run is the same with or
without these checks.
"""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from kdkit.batches import LABELS
from kdkit.class_bias import bias_head
from kdkit.config import ExperimentConfig
from kdkit.data.bundle import DataBundle, make_loader
from kdkit.data.lm_text import load_tokenizer as load_lm_tokenizer
from kdkit.data.splits import omit_classes
from kdkit.data.text_sources import text_tokenizer
from kdkit.errors import ConfigError, ModelError
from kdkit.lm_io import tokenizer_path
from kdkit.model_io import (
    build_model,
    check_classes,
    check_image_size,
    check_test_images,
    check_text,
    read_model_meta,
    rebuild_model,
)
from kdkit.models.hf import PREFIX as HF_PREFIX
from kdkit.models.hf import HFCausalLM, load_tokenizer, resolve_hf_path
from kdkit.objective_builder import build_objective, hidden_state_losses, logit_objective
from kdkit.plan import CohortPhase, DistillPhase, EnsemblePhase, LoadPhase, ModelSource, Plan, TrainPhase
from kdkit.strategies import make_plan
from kdkit.terms.registry import token_names
from kdkit.vocab import check_shared_vocabulary

_SAMPLE = 16  # images in the dry run of distill.terms
_IMAGE_ONLY_TERMS = ("factor_transfer",)  # a paraphraser stage of (N, C, H, W) maps


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
    """A model of the plan: built from a spec, or described by a checkpoint's metadata (None: an ensemble)."""

    def __init__(
        self, key: str, source: ModelSource | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        self.key, self.source, self.meta = key, source, meta

    def build(self, bundle: DataBundle) -> nn.Module:
        """Return a freshly initialised model of this architecture (the weights of a checkpoint are not read)."""
        if self.meta is not None:
            return rebuild_model(self.meta, self.key)
        assert self.source is not None and self.source.spec is not None
        dims = bundle.num_classes, bundle.in_channels, bundle.image_size
        return build_model(self.source.spec, *dims, field=self.source.field, causal_lm=bundle.is_lm)


def _sources(plan: Plan, cfg: ExperimentConfig, bundle: DataBundle) -> dict[str, _Source | None]:
    """Return the model source of every role (checkpoints checked on the way); None for an ensemble."""
    out: dict[str, _Source | None] = {}
    classes = list(bundle.train.classes)
    for phase in plan.phases:
        if isinstance(phase, LoadPhase):
            meta = read_model_meta(phase.checkpoint, phase.field)
            if not bundle.is_lm:  # a language model's classes are its vocabulary: checked by _check_lm
                check_classes(
                    meta, phase.field, phase.checkpoint, classes, cfg.data.dataset, phase.same_class_names
                )
            check_text(meta, phase.field, phase.checkpoint, bundle.text)
            if not (bundle.is_text or bundle.is_lm):  # token models read any length
                check_image_size(meta, phase.field, phase.checkpoint, bundle.image_size)
            check_test_images(meta, phase.field, phase.checkpoint, bundle.split)
            out[phase.role] = _Source(phase.checkpoint, meta=meta)
        elif isinstance(phase, (TrainPhase, DistillPhase)):
            out[phase.role] = _Source(phase.model.field, phase.model)
        elif isinstance(phase, EnsemblePhase):
            out[phase.role] = None
        elif isinstance(phase, CohortPhase):
            for m in phase.members:
                start = m.start
                out[m.role] = out[start.copy_of] if start.copy_of is not None else _Source(start.field, start)
    return out


def _check_classes(phase: DistillPhase, bundle: DataBundle, student: nn.Module) -> None:
    n = bundle.num_classes
    bad = sorted({c for c in phase.transfer.omit_classes if not 0 <= c < n})
    if bad:
        raise ConfigError(
            f"distill.omit_classes: class ids {bad} are out of range; expected ids in [0, {n - 1}]"
        )
    if phase.transfer.omit_classes and not (set(range(n)) - set(phase.transfer.omit_classes)):
        raise ConfigError(
            f"distill.omit_classes removes every one of the {n} classes: the transfer set would be empty"
        )
    bad = sorted(c for c in phase.class_bias if not 0 <= c < n)
    if bad:
        raise ConfigError(
            f"distill.class_bias: class ids {bad} are out of range; expected ids in [0, {n - 1}]"
        )
    if phase.class_bias:
        bias_head(student)  # raises when the model has no classifier bias to adjust


def _check_terms(plan: Plan, sources: dict[str, _Source | None], bundle: DataBundle) -> None:
    """Dry-run the custom terms of every distillation phase once per distinct teacher -> student pair."""
    seen: set[tuple[str, str]] = set()
    built: dict[str, nn.Module] = {}
    for phase in plan.phases:
        if not isinstance(phase, DistillPhase) or phase.objective.kind != "terms":
            continue
        teacher, student = sources[phase.teacher], sources[phase.role]
        if teacher is None or student is None or (teacher.key, student.key) in seen:
            continue  # an ensemble teacher is not tapped; a pair of the same architectures is checked once
        seen.add((teacher.key, student.key))
        for src in (teacher, student):
            if src.key not in built:
                built[src.key] = src.build(bundle)
        omitted = list(phase.transfer.omit_classes)
        transfer = omit_classes(bundle.train, omitted) if omitted else bundle.train
        batch = next(iter(make_loader(transfer, bundle, _SAMPLE, train=False)))
        build_objective(
            list(phase.objective.terms),
            built[student.key],
            built[teacher.key],
            bundle.task.inputs(batch, torch.device("cpu")),
            batch[LABELS].clamp_min(0),  # the dry run needs valid class ids
            n_data=len(transfer),
        )


def _check_text(
    plan: Plan, cfg: ExperimentConfig, sources: dict[str, _Source | None], models: dict[str, nn.Module]
) -> None:
    """Refuse on sentence data what would fail or mislead later: image models, other vocabularies, image modes."""
    for key, model in models.items():
        if "input_ids" not in inspect.signature(model.forward).parameters:
            raise ConfigError(
                f"{key}: {type(model).__name__} reads images, but {cfg.data.dataset} is sentence data; use a token "
                "model (bilstm, textcnn, hf:PATH)"
            )
    assert cfg.data.text is not None and cfg.data.text.tokenizer is not None
    data_folder = resolve_hf_path(cfg.data.text.tokenizer.removeprefix(f"{HF_PREFIX}:"))
    vocab: dict[str, int] | None = None
    for src in sources.values():
        name = src.source.spec.name if src is not None and src.source is not None and src.source.spec else ""
        if not name.startswith(f"{HF_PREFIX}:"):
            continue
        path = name.removeprefix(f"{HF_PREFIX}:")
        if resolve_hf_path(path) == data_folder:
            continue
        vocab = vocab if vocab is not None else text_tokenizer(cfg.data).get_vocab()
        if load_tokenizer(path).get_vocab() != vocab:
            raise ConfigError(
                f"{src.key}: {name} has another vocabulary than the data's tokenizer {cfg.data.text.tokenizer}: its "
                "token ids would mean other words; set data.text.tokenizer to the model's folder"
            )
    if plan.compress:
        raise ConfigError(
            "compress: pruning, int8 and ONNX export are for image models, not yet for sentence models in a "
            "run's config; after the run, `kdkit compress RUN_DIR` exports a text student to ONNX and int8 "
            "(dynamic quantization, no pruning)"
        )
    for phase in plan.phases:
        if not isinstance(phase, DistillPhase):
            continue
        staged = [t.loss for t in phase.objective.terms if t.loss in _IMAGE_ONLY_TERMS]
        if staged:
            raise ConfigError(
                f"distill.terms: {staged} train a paraphraser of the teacher's feature maps on images first; "
                "sentence models have no such maps (use fitnet, kd, logit_mse, ... on sentences)"
            )
        if phase.transfer.images != "train":
            raise ConfigError(
                f"[{phase.role}] relabelled and unlabeled transfer sets are for images; sentence data distils on the "
                "training sentences (and data.text.augment)"
            )


def _tokenizer_of(src: _Source | None, bundle: DataBundle, model: nn.Module) -> Any:
    """Return the tokenizer a model was trained with: a checkpoint's own (beside it), an hf: model's (in its
    folder), else the data's."""
    if (src is None or src.meta is None) and isinstance(model, HFCausalLM):
        return load_lm_tokenizer(model.folder())
    if src is None or src.meta is None:
        return bundle.tokenizer
    file = tokenizer_path(src.key)
    if not file.is_file():
        raise ConfigError(
            f"{src.key}: a language model checkpoint needs its tokenizer beside it ({file} is missing)"
        )
    return load_lm_tokenizer(file)


def _check_lm(
    plan: Plan,
    cfg: ExperimentConfig,
    sources: dict[str, _Source | None],
    models: dict[str, nn.Module],
    bundle: DataBundle,
) -> None:
    """Refuse on language-model text what would fail or mislead later: other vocabularies, short contexts, losses
    that are not per token, modes that keep teacher outputs per sample."""
    for key, model in models.items():
        if "input_ids" not in inspect.signature(model.forward).parameters:
            raise ConfigError(
                f"{key}: {type(model).__name__} is not a language model (use gpt or an hf: causal LM)"
            )
        context = getattr(model, "block_size", None)
        if isinstance(context, int) and context < bundle.image_size:
            raise ConfigError(
                f"{key}: the model's block_size {context} is shorter than data.lm.block_size {bundle.image_size}"
            )
    for role, src in sources.items():  # every model against the data's vocabulary
        if src is not None:
            what = f"{role} ({src.key}) and the data"
            try:
                check_shared_vocabulary(
                    models[src.key],
                    _DataVocab(bundle.vocab_size or 0),
                    teacher_tokenizer=_tokenizer_of(src, bundle, models[src.key]),
                    student_tokenizer=bundle.tokenizer,
                )
            except ModelError as exc:
                raise ModelError(f"{what}: {exc}") from None
    for phase in plan.phases:
        if isinstance(phase, (CohortPhase, EnsemblePhase)):
            raise ConfigError(
                f"[{phase.role}] joint, mutual and ensemble teaching are not supported on language-model text yet"
            )
        if not isinstance(phase, DistillPhase):
            continue
        t, s = sources[phase.teacher], sources[phase.role]
        if t is not None and s is not None:
            check_shared_vocabulary(
                models[t.key],
                models[s.key],
                teacher_tokenizer=_tokenizer_of(t, bundle, models[t.key]),
                student_tokenizer=_tokenizer_of(s, bundle, models[s.key]),
            )
        obj = phase.objective
        names = (
            [tc.loss for tc in obj.terms]
            if obj.kind == "terms"
            else [obj.response.loss]
            if obj.response
            else []
        )
        hidden = hidden_state_losses(list(phase.objective.terms))
        if obj.kind == "terms" and not hidden:
            logit_objective(list(obj.terms))
        if hidden:
            _check_lm_hidden_states(phase, cfg, hidden)
        bad = [n for n in names if n != "ce" and n not in token_names() and n not in hidden]
        if bad:
            raise ConfigError(
                f"[{phase.role}] {bad[0]!r} compares one output per sample; on language-model text use a per-token "
                f"loss: {token_names()}"
            )
        _check_lm_outputs(phase, cfg)
        if phase.transfer.images != "train" or phase.transfer.omit_classes or phase.class_bias:
            raise ConfigError(f"[{phase.role}] language models distil on the training text only")
    if plan.compress:
        raise ConfigError("compress: pruning, int8 and ONNX export are for image models, not language models")


def _check_lm_hidden_states(phase: DistillPhase, cfg: ExperimentConfig, hidden: list[str]) -> None:
    """Refuse hidden-state terms where a language model's step cannot tap both models on the same tokens."""
    staged = [loss for loss in hidden if loss in _IMAGE_ONLY_TERMS]
    if staged:
        raise ConfigError(
            f"distill.terms: {staged} train a paraphraser of the teacher's image feature maps first; a language "
            "model has none (fitnet reads hidden states per token)"
        )
    lm = cfg.distill.lm
    if phase.outputs != "online" or (lm is not None and lm.mode != "supervised"):
        raise ConfigError(
            f"distill.terms: {hidden} read the teacher's hidden states, which only a teacher-forced step with the "
            "teacher online has (distill.teacher_outputs: online, distill.lm.mode: supervised)"
        )


def _check_lm_outputs(phase: DistillPhase, cfg: ExperimentConfig) -> None:
    """Refuse teacher-output modes language models do not support: precompute, and cache beyond distill.loss."""
    if phase.outputs == "online":
        return
    lm = cfg.distill.lm
    if phase.outputs != "cache":
        raise ConfigError(
            f"distill.teacher_outputs: {phase.outputs!r} is not supported on language-model text; use 'online' "
            "or 'cache' (the teacher's top-k tokens on disk, distill.cache.topk)"
        )
    if cfg.distill.cache.topk is None:
        raise ConfigError(
            "distill.teacher_outputs: cache on language-model text keeps the teacher's top-k tokens per position; "
            "set distill.cache.topk (e.g. 32)"
        )
    if phase.objective.kind != "response" or (lm is not None and lm.mode != "supervised"):
        raise ConfigError(
            "distill.teacher_outputs: cache on language-model text serves distill.loss in the supervised mode "
            "only (not distill.terms, on_policy or sequence)"
        )


class _DataVocab(nn.Module):
    """Stands for the data in a vocabulary check: its vocabulary size."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size


def check_plan(plan: Plan, cfg: ExperimentConfig, bundle: DataBundle) -> None:
    """Raise the error a phase would raise later for every mistake that can be found without training."""
    with _random_state_kept():
        sources = _sources(plan, cfg, bundle)
        models: dict[str, nn.Module] = {}
        with torch.device("meta"):
            for src in sources.values():
                if src is not None and src.key not in models:
                    models[src.key] = src.build(bundle)
        for phase in plan.phases:
            if isinstance(phase, DistillPhase):
                src = sources[phase.role]
                assert src is not None
                _check_classes(phase, bundle, models[src.key])
        if bundle.is_text:
            _check_text(plan, cfg, sources, models)
        if bundle.is_lm:
            _check_lm(plan, cfg, sources, models, bundle)
        lm_hidden = any(
            isinstance(p, DistillPhase) and hidden_state_losses(list(p.objective.terms)) for p in plan.phases
        )
        if not bundle.is_lm or lm_hidden:  # a language model's logit terms are checked by _check_lm
            _check_terms(plan, sources, bundle)
    if plan.compress:
        import kdkit.compress  # noqa: F401  # optional libraries: raises, naming them and their extra


def preflight(cfg: ExperimentConfig, bundle: DataBundle) -> Plan:
    """Return the plan of the config after a dry run of it; raise for every mistake found without training."""
    plan = make_plan(cfg)
    check_plan(plan, cfg, bundle)
    return plan
