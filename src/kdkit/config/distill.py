"""How students learn from teachers: response losses, custom terms, teacher outputs, ensembles, compression."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kdkit.config.base import AugmentConfig, TrainConfig, _Strict
from kdkit.terms.registry import TERMS, response_names, term_spec, token_names


class EnsembleConfig(_Strict):
    """How an ensemble teaches (Fukuda et al. 2017): averaged, one random teacher per batch, or relabelled copies."""

    mode: Literal["average", "random", "relabel"] = Field(
        "average",
        description="average: weighted mean of the teachers' softened probabilities; random: one teacher per "
        "mini-batch; relabel: every teacher labels the transfer set and augmented copies of it",
    )
    weights: list[float] | Literal["equal", "val_accuracy"] = Field(
        "equal", description="per-teacher weights (average: mixture weights; random: draw probabilities)"
    )
    relabel_copies: int = Field(1, ge=0, le=16, description="relabel: augmented copies per teacher")
    augment: AugmentConfig = Field(
        default_factory=lambda: AugmentConfig(jitter=2), description="relabel: augmentation of the copies"
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: list[float] | str) -> list[float] | str:
        if isinstance(v, list) and (any(w < 0 for w in v) or sum(v) <= 0):
            raise ValueError(f"weights must be >= 0 with a positive sum, got {v}")
        return v


class UnlabeledConfig(_Strict):
    """How the teacher labels the unlabeled part of the training set (Noisy Student, Xie et al. 2020)."""

    targets: Literal["soft", "hard"] = Field(
        "soft",
        description="soft: the teacher's outputs only (no hard label); hard: the teacher's argmax as the label",
    )
    threshold: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="drop unlabeled images whose teacher confidence (max probability) is lower",
    )
    rounds: int = Field(1, ge=1, le=10, description="rounds; each round's student teaches the next round")


class TermConfig(_Strict):
    """One loss term of a custom objective: a loss name, its weight, and (for features) module paths."""

    loss: str = Field(min_length=1, description=f"a registered loss term: {', '.join(TERMS)}")
    weight: float = Field(1.0, ge=0, description="weight of the term in the sum")
    student: str | list[str] | None = Field(
        None, description="student module path for feature losses, e.g. layer3 (fsp: a list of paths)"
    )
    teacher: str | list[str] | None = Field(
        None, description="teacher module path for feature losses (fsp: a list of paths)"
    )
    adapter: Literal["auto", "none", "conv", "linear", "token"] = Field(
        "auto",
        description="regressor from student to teacher features; auto builds one where shapes differ (conv between "
        "maps, token between (N, L, D) hidden states of two text models, else linear)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="options of the loss term (checked by the term's options model)"
    )
    start_epoch: float = Field(0.0, ge=0, description="first (fractional) epoch the term is active")
    stop_epoch: float | None = Field(None, gt=0, description="epoch from which the term is off")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up of the weight (DKD uses 20)")

    @field_validator("loss")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in TERMS:
            raise ValueError(f"unknown loss {v!r}; known: {sorted(TERMS)}")
        return v

    @field_validator("options")
    @classmethod
    def _options_of_loss(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        loss = info.data.get("loss")
        if loss not in TERMS:
            return v  # the loss itself is reported
        return term_spec(loss).validate_options(v)


class CacheConfig(_Strict):
    """Teacher outputs cached on disk (distill.teacher_outputs: cache)."""

    draws: int = Field(
        4, ge=1, le=256, description="fixed augmentation draws per image (augmented transfer sets)"
    )
    topk: int | None = Field(
        None, ge=1, description="store only the k largest logits per view (many classes)"
    )
    dir: str | None = Field(None, description="cache root (default $KDKIT_CACHE/teacher-outputs)")
    shard_size: int = Field(10000, ge=1, description="images per shard file")


class LMDistillConfig(_Strict):
    """How a language model is distilled (language-model text only): teacher-forced, on-policy or sequence-level."""

    mode: Literal["supervised", "on_policy", "sequence"] = Field(
        "supervised",
        description="supervised: the divergence on the data's blocks (teacher-forced); on_policy (GKD, Agarwal et "
        "al. 2024): with probability lambda_ a step runs on the student's own continuations of each block's first "
        "prompt_len tokens, scored by the teacher; sequence (Kim & Rush 2016): the teacher's continuations of those "
        "prompts replace the training blocks (alpha 0, beta 1: pure sequence-level KD)",
    )
    lambda_: float = Field(
        0.5, ge=0, le=1, description="on_policy: share of steps on the student's own samples"
    )
    prompt_len: int = Field(
        8, ge=1, description="on_policy and sequence: tokens of each block kept as the prompt"
    )
    temperature: float = Field(
        1.0, gt=0, description="on_policy: the student's sampling temperature (GKD samples at 1)"
    )
    greedy: bool = Field(
        True, description="sequence: the teacher decodes greedily (beam 1), else samples at 1"
    )


class ResponseLossConfig(_Strict):
    """A response-based objective: alpha * soft loss (student, teacher) + beta * cross-entropy."""

    loss: str = Field(
        "kd",
        description="a response loss term: kd, logit_mse, kd_mse_mix; on language-model text a per-token "
        "divergence: forward_kl, reverse_kl, gkd_jsd, skew_kl, skew_reverse_kl, total_variation",
    )
    temperature: float = Field(4.0, gt=0, description="softening temperature T of the soft loss")
    alpha: float = Field(0.9, ge=0, description="weight of the soft (teacher) term")
    beta: float = Field(0.1, ge=0, description="weight of the hard-label cross-entropy")
    mix: float = Field(0.5, ge=0, le=1, description="kd_mse_mix: 1 = KL soft targets, 0 = logit MSE")

    @field_validator("loss")
    @classmethod
    def _response_loss(cls, v: str) -> str:
        if v not in response_names() and v not in token_names():
            raise ValueError(
                f"{v!r} is not a response loss (alpha * loss(student, teacher) + beta * CE); known: "
                f"{response_names()} (language models: {token_names()}); other terms go in distill.terms"
            )
        return v

    @model_validator(mode="after")
    def _some_weight(self) -> ResponseLossConfig:
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta cannot both be 0: the student would learn nothing")
        return self


class DistillConfig(ResponseLossConfig):
    """How the distilled student learns from the teacher."""

    terms: list[TermConfig] | None = Field(
        None, description="a custom objective (feature, relation, DKD terms...); replaces loss/alpha/beta"
    )
    train: TrainConfig | None = Field(
        None, description="optimisation of the distilled student; default: student.train"
    )
    teacher_outputs: Literal["auto", "online", "precompute", "cache"] = Field(
        "auto",
        description="online: a teacher forward every step; precompute: logits once per image in memory (exact "
        "without augmentation); cache: on disk, keyed by teacher/data/augmentation, K fixed augmentation draws per "
        "image (one logit row per sentence on sentence data); auto: precompute without augmentation, else online",
    )
    cache: CacheConfig = Field(default_factory=CacheConfig)
    omit_classes: list[int] = Field(default_factory=list, description="labels removed from the transfer set")
    class_bias: dict[int, float] = Field(
        default_factory=dict, description="added to these classes' output biases after distillation"
    )
    ensemble: EnsembleConfig | None = Field(
        None, description="how teacher.ensemble teaches (default: average with equal weights)"
    )
    unlabeled: UnlabeledConfig | None = Field(
        None, description="teacher labels for the unlabeled images (data.labeled_*; default: soft, 1 round)"
    )
    lm: LMDistillConfig | None = Field(
        None, description="language-model text: supervised, on-policy (GKD) or sequence-level distillation"
    )


class CompressDistillConfig(ResponseLossConfig):
    """How a pruned student is distilled again from the teacher (response-based KD)."""


class CompressConfig(_Strict):
    """Compression of a distilled student: structured pruning, distillation again, int8, ONNX, latency."""

    prune_target: float = Field(
        0.5, ge=0, le=0.95, description="fraction of the student's FLOPs (or params) to remove"
    )
    prune_by: Literal["flops", "params"] = Field("flops", description="what prune_target is a fraction of")
    iterative_steps: int = Field(
        1, ge=1, le=50, description="prune a little, distill, repeat: this many prune+distill rounds"
    )
    finetune: TrainConfig | None = Field(
        None, description="optimisation of each distillation round; default: the run's distill settings"
    )
    distill: CompressDistillConfig | None = Field(
        None, description="loss of the distillation rounds; default: the run's distill section"
    )
    round_to: int | None = Field(
        None,
        ge=2,
        le=256,
        description="keep pruned channel counts multiples of this (16 suits AVX-512 convolution kernels; "
        "odd widths can leave a pruned net no faster than the original); None: any width",
    )
    quantize: bool = Field(True, description="also write and evaluate an int8 (ONNX Runtime QDQ) model")
    quantize_unpruned: bool = Field(
        True, description="with quantize: also an int8 copy of the unpruned distilled student"
    )
    calibration_batches: int = Field(10, ge=1, description="training batches that calibrate int8 ranges")
    qat: TrainConfig | None = Field(
        None,
        description="quantization-aware distillation: before int8, train a copy of each quantized model against "
        "the teacher with int8 rounding emulated (a few epochs at a small rate); its int8 model is a row of its "
        "own beside the post-training one. None: post-training quantization only",
    )
    latency_runs: int = Field(50, ge=1, description="timed runs per (model, backend, batch, threads)")
    latency_warmup: int = Field(10, ge=0, description="untimed runs before timing")
    threads: list[int] = Field(
        default_factory=lambda: [1, 2], min_length=1, description="thread counts latency is measured at"
    )
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 64], min_length=1, description="batch sizes latency is measured at"
    )

    @field_validator("threads", "batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v) or len(set(v)) != len(v):
            raise ValueError(f"expected distinct positive integers, got {v}")
        return v

    @model_validator(mode="after")
    def _qat_needs_quantize(self) -> CompressConfig:
        if self.qat is not None and not self.quantize:
            raise ValueError("compress.qat trains for int8 export: it needs compress.quantize: true")
        if self.qat is not None and self.qat.epochs < 1:
            raise ValueError("compress.qat.epochs must be at least 1 (leave qat out for post-training only)")
        return self
