"""One whole experiment: the sections together and the rules that tie them."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from kdkit.config.base import (
    DataConfig,
    LMDataConfig,
    ModelSpec,
    PhaseModel,
    RuntimeConfig,
    TextDataConfig,
    TrainConfig,
    _Strict,
    is_lm_dataset,
    is_text_dataset,
)
from kdkit.config.distill import CompressConfig, DistillConfig, EnsembleConfig
from kdkit.config.strategy import StrategyConfig


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


Phase = Literal["teacher", "scratch", "distill"]


class ExperimentConfig(_Strict):
    """One whole experiment: teacher, student from scratch, distilled student."""

    name: str = Field(
        "experiment", description="name of the run (the default run directory is runs/<name>-<time>)"
    )
    seed: int = Field(
        0, description="seed of weights, data order, augmentation and (by default) the validation split"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig
    student: PhaseModel
    distill: DistillConfig = Field(default_factory=DistillConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    phases: list[Phase] = Field(
        default_factory=lambda: ["teacher", "scratch", "distill"],
        description="what to run: the teacher, the student from scratch (the baseline), the distilled student",
    )
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
            if e.augment.mixes:
                raise ValueError(
                    "distill.ensemble.augment: mixup/cutmix make no relabelled copies (a copy keeps its own "
                    "label); mix the student's batches instead (distill.train.augment)"
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

    @model_validator(mode="after")
    def _lm_defaults(self) -> ExperimentConfig:
        # Language-model text: data.lm is always recorded (its defaults when the config has none).
        if is_lm_dataset(self.data.dataset) and self.data.lm is None:
            self.data.lm = LMDataConfig()
        if self.data.lm is not None and self.data.lm.tokenizer is None:
            # A pretrained hf: teacher reads text through its own tokenizer, so the data is tokenised with it.
            teacher = self.teacher.model
            if teacher is not None and teacher.name.startswith("hf:"):
                self.data.lm = self.data.lm.model_copy(update={"tokenizer": teacher.name})
        if self.distill.lm is not None and not is_lm_dataset(self.data.dataset):
            raise ValueError(
                f"distill.lm is for language-model text (tinyshakespeare, text:PATH), not {self.data.dataset!r}"
            )
        lm = self.distill.lm
        if (
            lm is not None
            and lm.mode != "supervised"
            and self.data.lm is not None
            and lm.prompt_len >= self.data.lm.block_size
        ):
            raise ValueError(
                f"distill.lm.prompt_len {lm.prompt_len} leaves nothing to generate in blocks of "
                f"data.lm.block_size {self.data.lm.block_size}"
            )
        return self

    @model_validator(mode="after")
    def _text_tokenizer(self) -> ExperimentConfig:
        # Sentences are tokenised with the teacher's tokenizer unless data.text.tokenizer names another.
        if not is_text_dataset(self.data.dataset):
            return self
        text = self.data.text or TextDataConfig()
        if text.tokenizer is None:
            # The teacher's, or the first hf: member's of a teacher ensemble.
            members = [self.teacher.model] if self.teacher.model is not None else []
            members += [m.model for m in self.teacher.ensemble or [] if m.model is not None]
            hf = [m.name for m in members if m.name.startswith("hf:")]
            if not hf:
                raise ValueError(
                    f"data.text.tokenizer: sentence data ({self.data.dataset}) needs a tokenizer, hf:PATH; the "
                    "teacher is not an hf: model, so name one"
                )
            text = text.model_copy(update={"tokenizer": hf[0]})
        if self.data.text != text:
            self.data.text = text
        if text.augment is not None and self.distill.omit_classes:
            raise ValueError(
                "distill.omit_classes cannot be combined with data.text.augment (the drafts of omitted sentences "
                "would stay in the transfer set)"
            )
        if text.augment is not None and not self.distill.terms and self.distill.alpha == 0:
            raise ValueError(
                "data.text.augment adds unlabeled sentences that only the teacher term teaches, but distill.alpha "
                "is 0; set alpha > 0"
            )
        return self

    def distill_train(self) -> TrainConfig:
        """Return the optimisation settings of the distillation phase."""
        return self.distill.train or self.student.train

    def to_yaml(self) -> str:
        """Return the fully resolved config as YAML (every default written out)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
