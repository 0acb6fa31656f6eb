"""One distillation phase of any strategy: its teacher-output mode and its objective, resolved from the config."""

from __future__ import annotations

from typing import Any

from kdkit.config import ExperimentConfig, ResponseLossConfig, TermConfig, TrainConfig, is_lm_dataset
from kdkit.errors import ConfigError
from kdkit.objective_builder import reads_teacher_features
from kdkit.plan import DistillPhase, ModelSource, ObjectivePlan, TeacherOutputs, TransferPlan
from kdkit.terms import term_spec


def teacher_outputs(
    cfg: ExperimentConfig, train: TrainConfig, transfer: TransferPlan, varies: bool = False
) -> TeacherOutputs:
    """Return how the teacher's outputs reach the student, refusing modes that cannot serve the phase.

    `varies`: the teacher changes per batch (an ensemble drawing one member per batch), so no output can be
    stored per image.
    """
    d = cfg.distill
    features = reads_teacher_features(d.terms or [])
    if transfer.images != "train":
        # Relabelled and unlabeled transfer sets fix the teacher's logits per image when they are made.
        if features:
            raise ConfigError(
                "distill.terms read teacher features, but this strategy fixes the teacher's logits per image "
                "(relabelled or unlabeled transfer sets); use logit losses only"
            )
        return "given"
    mode = d.teacher_outputs
    if mode == "auto":
        # Language-model text: a teacher output per token and vocabulary entry is too large to keep in memory.
        lm = is_lm_dataset(cfg.data.dataset)
        return "online" if train.augment.enabled or features or varies or lm else "precompute"
    if mode in ("precompute", "cache") and features:
        raise ConfigError(
            f"distill.teacher_outputs: {mode!r} keeps teacher logits only, but distill.terms read teacher "
            "features; use 'online'"
        )
    if mode == "precompute" and train.augment.enabled:
        raise ConfigError(
            "distill.teacher_outputs: 'precompute' keeps one teacher output per image, but the transfer "
            "set is augmented; use 'cache' (K fixed augmentation draws) or 'online'"
        )
    return mode


def distill_objective(cfg: ExperimentConfig, train: TrainConfig, transfer: TransferPlan) -> ObjectivePlan:
    """Return the objective of a distillation phase: distill.terms, else the response loss of distill."""
    d = cfg.distill
    soft_unlabeled = transfer.unlabeled is not None and transfer.unlabeled.targets == "soft"
    if train.augment.mixes:
        _check_mixing(d.terms or [], transfer)
    if d.terms:
        if soft_unlabeled:
            for i, t in enumerate(d.terms):
                if t.loss != "ce" and term_spec(t.loss).kind in ("labels", "logits_labels"):
                    raise ConfigError(
                        f"distill.terms: loss term {i} ({t.loss!r}) reads labels, which unlabeled images do not "
                        "have; use distill.unlabeled.targets: hard (teacher pseudo-labels) or remove the term"
                    )
        return ObjectivePlan(
            "terms", train.label_smoothing, terms=tuple(d.terms), mask_unlabeled=soft_unlabeled
        )
    return ObjectivePlan(
        "response", train.label_smoothing, response=response_loss(cfg), mask_unlabeled=soft_unlabeled
    )


def _check_mixing(terms: list[TermConfig], transfer: TransferPlan) -> None:
    """Refuse mixup/CutMix where targets cannot be mixed: class-id terms, relabelled or unlabeled sets."""
    if transfer.images != "train":
        raise ConfigError(
            "distill.train.augment: mixup/cutmix mix images and their targets, but this transfer set "
            f"({transfer.images}) fixes the teacher's outputs per image and has no labels to mix; turn them off"
        )
    for i, t in enumerate(terms):
        if t.loss != "ce" and term_spec(t.loss).kind in ("labels", "logits_labels"):
            raise ConfigError(
                f"distill.terms: loss term {i} ({t.loss!r}) reads class ids, but mixup/cutmix "
                "(distill.train.augment) give mixed targets; remove the term or the mixing"
            )


def response_loss(cfg: ExperimentConfig) -> ResponseLossConfig:
    """Return the response loss of the distill section (loss, temperature, alpha, beta, mix)."""
    d = cfg.distill
    return ResponseLossConfig(loss=d.loss, temperature=d.temperature, alpha=d.alpha, beta=d.beta, mix=d.mix)


def distill_phase(
    cfg: ExperimentConfig,
    role: str,
    model: ModelSource,
    teacher: str,
    *,
    train: TrainConfig,
    transfer: TransferPlan | None = None,
    varies: bool = False,
    record: dict[str, Any] | None = None,
) -> DistillPhase:
    """Return a phase distilling `model` from the model of phase `teacher` on the config's transfer set."""
    d = cfg.distill
    augmented = cfg.data.text is not None and cfg.data.text.augment is not None
    transfer = transfer or TransferPlan(omit_classes=tuple(d.omit_classes), augmented_sentences=augmented)
    assert model.seed is not None
    return DistillPhase(
        role=role,
        model=model,
        teacher=teacher,
        outputs=teacher_outputs(cfg, train, transfer, varies),
        transfer=transfer,
        objective=distill_objective(cfg, train, transfer),
        train=train,
        seed=model.seed,
        class_bias={int(k): v for k, v in d.class_bias.items()},
        record=dict(record or {}),
    )


def soft_kwargs(d: ResponseLossConfig) -> dict[str, Any]:
    """Return the keyword arguments of the response loss `d.loss` (temperature, mix)."""
    kwargs: dict[str, Any] = {}
    if d.loss in ("kd", "kd_mse_mix"):
        kwargs["temperature"] = d.temperature
    if d.loss == "kd_mse_mix":
        kwargs["mix"] = d.mix
    return kwargs
