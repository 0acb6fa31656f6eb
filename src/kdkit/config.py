"""Experiment configuration: YAML validated with pydantic, `--set a.b=c` overrides, readable errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kdkit.errors import ConfigError
from kdkit.terms.registry import TERMS, response_names, term_spec


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must never be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(BaseModel):
    """A model by registry name; every other key is passed to its factory and checked there."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)

    def options(self) -> dict[str, Any]:
        """Return the factory keyword arguments (every key but `name`)."""
        return dict(self.model_extra or {})


class AugmentConfig(_Strict):
    """Batch-level augmentation of uint8 images (no per-sample Python)."""

    crop_padding: int = Field(
        0, ge=0, le=64, description="random crop after zero-padding by this many pixels"
    )
    jitter: int = Field(0, ge=0, le=64, description="random translation by up to this many pixels each way")
    flip: bool = Field(False, description="random horizontal flip")

    @property
    def enabled(self) -> bool:
        """Return True when any augmentation is active."""
        return bool(self.crop_padding or self.jitter or self.flip)


class TrainConfig(_Strict):
    """Optimisation of one phase (teacher, scratch student or distilled student)."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "step", "cosine", "onecycle"] = "cosine"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75], description="fractions of training")
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the weights (decay per step, warmed up as "
        "min(decay, (1 + step) / (10 + step))); the phase validates and returns the averaged weights",
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="stop: end the run naming the step and term; skip: drop such batches (counted)"
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones are increasing fractions of the training run, each in (0, 1)")
        return v


class DataConfig(_Strict):
    """Where data comes from and how it is split."""

    dataset: str = Field("mnist-small", min_length=1)
    root: str | None = None
    download: bool = False
    val_size: float = Field(
        0.1, ge=0, description="held-out validation images: a count (>= 1) or a fraction of the training set"
    )
    split_seed: int | None = Field(
        None,
        description="seed of the train/validation split (default: the run's seed); fix it when runs with other "
        "seeds must keep one validation set, e.g. students distilled from a teacher trained on that split",
    )
    image_size: int | None = Field(None, ge=8)
    normalize: bool = True
    train_limit: int | None = Field(
        None, ge=1, description="use only the first N training images (smoke runs)"
    )
    labeled_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep the labels of only this fraction of the training set (chosen at random by the seed)",
    )
    labeled_count: int | None = Field(
        None, ge=1, description="keep the labels of only this many training images; the rest is unlabeled"
    )

    @model_validator(mode="after")
    def _one_labeled_size(self) -> DataConfig:
        if self.labeled_fraction is not None and self.labeled_count is not None:
            raise ValueError("set data.labeled_fraction or data.labeled_count, not both")
        return self

    @property
    def semi_supervised(self) -> bool:
        """Return True when part of the training set is unlabeled."""
        return self.labeled_fraction is not None or self.labeled_count is not None

    test_limit: int | None = Field(
        None, ge=1, description="evaluate on N test images, evenly spaced through the set (smoke runs)"
    )


class PhaseModel(_Strict):
    """A network of the run: its architecture and how it is trained."""

    model: ModelSpec
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: str | None = Field(
        None, description="load weights from this kdkit checkpoint instead of training"
    )


class EnsembleMember(_Strict):
    """One teacher of an ensemble: a model trained in the teacher phase, or a kdkit checkpoint (a bare string)."""

    model: ModelSpec | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: str | None = Field(None, description="load this kdkit model checkpoint instead of training")

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, v: Any) -> Any:
        return {"checkpoint": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _model_or_checkpoint(self) -> EnsembleMember:
        if self.model is None and self.checkpoint is None:
            raise ValueError(
                "an ensemble member needs `model` (trained here) or `checkpoint` (a kdkit checkpoint)"
            )
        return self


class TeacherConfig(PhaseModel):
    """The teacher: one network (`model`), or an ensemble of networks (`ensemble`) that acts as one teacher."""

    model: ModelSpec | None = None  # type: ignore[assignment]
    ensemble: list[EnsembleMember] | None = Field(
        None, min_length=2, description="teachers combined as distill.ensemble says; architectures may differ"
    )

    @model_validator(mode="after")
    def _single_or_ensemble(self) -> TeacherConfig:
        if self.ensemble is None and self.model is None:
            raise ValueError("teacher.model is required (or teacher.ensemble: a list of teachers)")
        if self.ensemble is not None and (self.model is not None or self.checkpoint is not None):
            raise ValueError(
                "teacher.ensemble replaces teacher.model and teacher.checkpoint: give each member its own"
            )
        return self


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
    weight: float = Field(1.0, ge=0)
    student: str | list[str] | None = Field(
        None, description="student module path for feature losses, e.g. layer3 (fsp: a list of paths)"
    )
    teacher: str | list[str] | None = Field(
        None, description="teacher module path for feature losses (fsp: a list of paths)"
    )
    adapter: Literal["auto", "none", "conv", "linear"] = Field(
        "auto", description="regressor from student to teacher features; auto builds one where shapes differ"
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


class ResponseLossConfig(_Strict):
    """A response-based objective: alpha * soft loss (student, teacher) + beta * cross-entropy."""

    loss: str = Field("kd", description="a response loss term: kd, logit_mse, kd_mse_mix")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, description="weight of the soft (teacher) term")
    beta: float = Field(0.1, ge=0, description="weight of the hard-label cross-entropy")
    mix: float = Field(0.5, ge=0, le=1, description="kd_mse_mix: 1 = KL soft targets, 0 = logit MSE")

    @field_validator("loss")
    @classmethod
    def _response_loss(cls, v: str) -> str:
        if v not in response_names():
            raise ValueError(
                f"{v!r} is not a response loss (alpha * loss(student, teacher) + beta * CE); known: "
                f"{response_names()}; other terms go in distill.terms"
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
        "image; auto: precompute without augmentation, else online",
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


class RuntimeConfig(_Strict):
    """How the run executes: precision, threads, logging."""

    precision: Literal["auto", "bf16", "fp32"] = "auto"
    threads: int | None = Field(None, ge=1)
    channels_last: bool = True
    compile: bool = Field(
        False, description="torch.compile the student's training step (falls back to eager)"
    )
    log_every: int = Field(50, ge=1, description="steps between loss logs (the only per-step host syncs)")
    progress: bool = True
    tensorboard: bool = True
    eval_batch_size: int = Field(1000, ge=1)
    checkpoint_every_steps: int | None = Field(
        None,
        ge=1,
        description="also write the training state every N steps (it is always written at epoch ends)",
    )
    keep_checkpoints: int = Field(2, ge=1, description="training states kept per phase (the newest ones)")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="distributed backend under torchrun: auto = NCCL on GPUs, gloo on CPU"
    )


class CompressDistillConfig(ResponseLossConfig):
    """How a pruned student is distilled again from the teacher (response-based KD)."""


class CompressConfig(_Strict):
    """Compression of a distilled student: structured pruning, distillation again, int8, ONNX, latency."""

    prune_target: float = Field(
        0.5, ge=0, le=0.95, description="fraction of the student's FLOPs (or params) to remove"
    )
    prune_by: Literal["flops", "params"] = "flops"
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
    threads: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1)

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


StrategyKind = Literal["offline", "joint", "mutual", "born_again", "takd"]

# Which strategy kinds each option of the strategy section belongs to (setting it for another kind is an error).
_STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "stop_teacher_gradient": ("joint",),
    "teacher_ce_weight": ("joint",),
    "peers": ("mutual",),
    "num_peers": ("mutual",),
    "generations": ("born_again",),
    "assistant": ("takd",),
}


class StrategyConfig(_Strict):
    """Who teaches whom and when; the distill section says what is matched (loss, temperature, alpha, beta).

    offline: a trained, frozen teacher teaches the student (the default). joint: teacher and student train
    together from the start (Apprentice). mutual: peers learn from the labels and from each other (DML).
    born_again: generations of the teacher's architecture, each taught by the previous one. takd: teacher ->
    assistant -> student.
    """

    kind: StrategyKind = "offline"
    stop_teacher_gradient: bool = Field(
        False, description="joint: the distillation term sends no gradient into the teacher"
    )
    teacher_ce_weight: float = Field(1.0, ge=0, description="joint: weight of the teacher's cross-entropy")
    peers: list[ModelSpec] | None = Field(
        None,
        min_length=2,
        description="mutual: the peers' architectures (default: num_peers x student.model)",
    )
    num_peers: int = Field(
        2, ge=2, le=16, description="mutual: how many copies of student.model learn together"
    )
    generations: int = Field(
        2, ge=1, le=20, description="born_again: distilled generations after the teacher"
    )
    assistant: PhaseModel | None = Field(
        None, description="takd: the teaching assistant, distilled from the teacher, teaching the student"
    )

    @model_validator(mode="after")
    def _options_of_kind(self) -> StrategyConfig:
        for key in sorted(self.model_fields_set):
            kinds = _STRATEGY_OPTIONS.get(key)
            # A saved config writes every default out: only a changed value for another kind is an error.
            if (
                kinds
                and self.kind not in kinds
                and getattr(self, key) != type(self).model_fields[key].default
            ):
                raise ValueError(f"{key} applies to kind {' or '.join(kinds)}, not {self.kind!r}")
        if self.kind == "takd" and self.assistant is None:
            raise ValueError("kind 'takd' needs an assistant: {model: {...}, train: {...}}")
        if (
            self.peers is not None
            and "num_peers" in self.model_fields_set
            and self.num_peers != len(self.peers)
        ):
            raise ValueError(f"num_peers is {self.num_peers} but {len(self.peers)} peers are listed; set one")
        return self

    def peer_specs(self, student: ModelSpec) -> list[ModelSpec]:
        """Return the architectures of the mutual-learning peers."""
        return list(self.peers) if self.peers is not None else [student] * self.num_peers


Phase = Literal["teacher", "scratch", "distill"]


class ExperimentConfig(_Strict):
    """One whole experiment: teacher, student from scratch, distilled student."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig
    student: PhaseModel
    distill: DistillConfig = Field(default_factory=DistillConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    phases: list[Phase] = Field(default_factory=lambda: ["teacher", "scratch", "distill"])
    compress: CompressConfig | None = Field(
        None, description="compress the distilled student after the run (kdkit compress RUN_DIR)"
    )
    strategy: StrategyConfig = Field(
        default_factory=StrategyConfig, description="who teaches whom in the distill phase (default offline)"
    )

    @field_validator("phases")
    @classmethod
    def _phases(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one phase is needed: teacher, scratch, distill")
        if len(set(v)) != len(v):
            raise ValueError(f"phases must not repeat, got {v}")
        return v

    @field_validator("student")
    @classmethod
    def _student_is_trained(cls, v: PhaseModel) -> PhaseModel:
        if v.checkpoint is not None:
            raise ValueError(
                "checkpoint is not used here: the student is what a run trains (from scratch and distilled, "
                "from the same initial weights); to evaluate a trained student use `kdkit eval CHECKPOINT`, to "
                "teach with one set teacher.checkpoint or strategy.assistant.checkpoint"
            )
        return v

    @model_validator(mode="after")
    def _strategies(self) -> ExperimentConfig:
        # Cross-section rules of ensembles and unlabeled transfer sets, each naming the fields involved.
        ens, d = self.teacher.ensemble, self.distill
        if d.ensemble is not None and ens is None:
            raise ValueError("distill.ensemble needs teacher.ensemble (a list of at least two teachers)")
        e = d.ensemble or EnsembleConfig()
        if ens is not None and isinstance(e.weights, list) and len(e.weights) != len(ens):
            raise ValueError(
                f"distill.ensemble.weights has {len(e.weights)} values for {len(ens)} teachers in teacher.ensemble"
            )
        if ens is not None and e.mode == "random" and d.teacher_outputs in ("precompute", "cache"):
            raise ValueError(
                f"distill.teacher_outputs: {d.teacher_outputs!r} stores one output per image, but "
                "distill.ensemble.mode 'random' picks a teacher per batch; use 'online' or 'auto'"
            )
        if ens is not None and e.mode == "relabel":
            if self.distill_train().augment.enabled:
                raise ValueError(
                    "distill.ensemble.mode 'relabel' labels fixed augmented copies (distill.ensemble.augment); "
                    "turn off the student's own augmentation (distill.train.augment / student.train.augment)"
                )
            if e.relabel_copies and not e.augment.enabled:
                raise ValueError(
                    "distill.ensemble.relabel_copies > 0 needs distill.ensemble.augment (copies would be identical)"
                )
        if d.unlabeled is not None and not self.data.semi_supervised:
            raise ValueError("distill.unlabeled needs data.labeled_fraction or data.labeled_count")
        if self.data.semi_supervised:
            soft = d.unlabeled is None or d.unlabeled.targets == "soft"
            if soft and not d.terms and d.alpha == 0:
                raise ValueError(
                    "distill.unlabeled.targets 'soft' teaches unlabeled images through the teacher term only, "
                    "but distill.alpha is 0; set alpha > 0 or use targets: hard"
                )
            if d.omit_classes:
                raise ValueError(
                    "distill.omit_classes cannot be combined with data.labeled_* (unlabeled data)"
                )
            if ens is not None and e.mode != "average":
                raise ValueError(
                    f"unlabeled data (data.labeled_*) is labelled by the teacher once per round; "
                    f"distill.ensemble.mode {e.mode!r} cannot do that, use 'average'"
                )
        return self

    def distill_train(self) -> TrainConfig:
        """Return the optimisation settings of the distillation phase."""
        return self.distill.train or self.student.train

    def to_yaml(self) -> str:
        """Return the fully resolved config as YAML (every default written out)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def format_validation_error(err: ValidationError, source: str) -> str:
    """Return one readable line per problem: field path, message, and the value given."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = _format_loc(tuple(p for p in e["loc"] if not str(p).startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `kdkit run --help` or configs/ for valid keys)"
        given = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {given!r})"
        if len(shown) > 80:
            shown = shown[:77] + "...)"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Return (key path, YAML-parsed value) from a `a.b.c=value` override."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. teacher.train.epochs=5")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty key path; expected e.g. student.train.lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {text!r}: value {raw!r} is not valid YAML ({exc.__class__.__name__})"
        ) from None
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw config dict with each `a.b=c` override set (intermediate dicts created)."""
    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[p] = nxt
            elif not isinstance(nxt, dict):
                path = ".".join(parts[: i + 1])
                raise ConfigError(f"override {text!r}: {path} is a value ({nxt!r}), not a section with keys")
            node = nxt
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Return the mapping in a YAML file, with a ConfigError for missing, unreadable or non-mapping files."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist (expected a YAML file, see configs/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML{at}: {getattr(exc, 'problem', exc)}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}"
        )
    return data


def build_config(raw: Any, overrides: list[str] | None = None, source: str = "config") -> ExperimentConfig:
    """Return the validated config from a raw mapping plus overrides, or raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    merged = apply_overrides(raw, overrides or [])
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Return the validated config of a YAML file with `--set` overrides applied."""
    return build_config(load_yaml(path), overrides, source=str(path))
