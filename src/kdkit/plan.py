"""A run as data: the ordered phases of an experiment, decided from the config before anything trains.

A phase is a small frozen dataclass that says what it produces (its role: the name of its record and
checkpoint), the model it trains (built from a spec, loaded, or copied from an earlier phase), its teacher
(an earlier phase's role, and how that teacher's outputs arrive), its transfer set, its objective and its
train settings. Strategies (`kdkit.strategies`) build phases; preflight walks them; the executor runs them.
Nothing here trains or reads data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kdkit.config import (
    EnsembleConfig,
    ModelSpec,
    ResponseLossConfig,
    TermConfig,
    TrainConfig,
    UnlabeledConfig,
)

# How a frozen teacher's outputs reach the student: a teacher forward every step, logits computed once per
# image in memory, K augmentation draws cached on disk, or logits fixed per image by the transfer set itself.
TeacherOutputs = Literal["online", "precompute", "cache", "given"]


@dataclass(frozen=True)
class ModelSource:
    """Where a phase's model comes from: built from a spec with a seed's weights, or a copy of an earlier one."""

    field: str  # the config field that names it, for messages
    spec: ModelSpec | None = None
    seed: int | None = None
    copy_of: str | None = None  # role of an earlier phase whose model is copied and trained further

    def describe(self) -> str:
        """Return one line saying where the model comes from."""
        if self.copy_of is not None:
            return f"a trainable copy of {self.copy_of}"
        assert self.spec is not None
        opts = ", ".join(f"{k}={v}" for k, v in self.spec.options().items())
        start = f"weights {self.spec.pretrained.weights}, head" if self.spec.pretrained else "seed"
        return f"{self.spec.name}({opts}) built with {start} {self.seed} [{self.field}]"


@dataclass(frozen=True)
class TransferPlan:
    """The images a phase learns from: the training split (less omitted classes), or a set made from it."""

    images: Literal["train", "relabel", "unlabeled"] = "train"
    omit_classes: tuple[int, ...] = ()
    relabel: EnsembleConfig | None = None  # every ensemble teacher labels the images and augmented copies
    unlabeled: UnlabeledConfig | None = None  # labeled images + the teacher's labels for the hidden ones
    round: int = 1  # unlabeled: the Noisy Student round
    augmented_sentences: bool = (
        False  # sentences: the training split + Tang's augmented drafts (data.text.augment)
    )

    def describe(self) -> str:
        """Return one line naming the transfer set."""
        text = {"train": "training split", "relabel": "relabelled copies", "unlabeled": "labeled + unlabeled"}
        out = text[self.images]
        if self.omit_classes:
            out += f" without classes {list(self.omit_classes)}"
        if self.augmented_sentences:
            out += " + augmented sentences, unlabeled (data.text.augment)"
        if self.relabel is not None:
            out += f" ({self.relabel.relabel_copies} augmented copies per teacher)"
        if self.unlabeled is not None:
            u = self.unlabeled
            out += f" (round {self.round}/{u.rounds}, {u.targets} targets, threshold {u.threshold})"
        return out


@dataclass(frozen=True)
class ObjectivePlan:
    """What a phase minimises: hard labels, a response loss, custom terms, or a cohort's joint/mutual loss."""

    kind: Literal["hard_labels", "response", "terms", "joint", "mutual"]
    label_smoothing: float = 0.0
    response: ResponseLossConfig | None = None  # response, joint, mutual: loss, temperature, alpha, beta
    terms: tuple[TermConfig, ...] = ()
    mask_unlabeled: bool = False  # cross-entropy skips images without a label (soft unlabeled targets)
    teacher_ce_weight: float = 1.0  # joint
    stop_teacher_gradient: bool = False  # joint
    members: tuple[str, ...] = ()  # mutual: the peers' names

    def describe(self) -> str:
        """Return one line naming the loss."""
        r = self.response
        if self.kind == "hard_labels":
            return "cross-entropy" + (
                f" (label smoothing {self.label_smoothing})" if self.label_smoothing else ""
            )
        if self.kind == "terms":
            return " + ".join(
                f"{t.weight:g}*{t.loss}" + (f"({t.student}->{t.teacher})" if t.student else "")
                for t in self.terms
            )
        assert r is not None
        soft = f"{r.alpha:g}*{r.loss}(T={r.temperature:g}) + {r.beta:g}*ce"
        if self.kind == "joint":
            return f"{self.teacher_ce_weight:g}*ce(teacher) + {soft}" + (
                ", no gradient to the teacher" if self.stop_teacher_gradient else ""
            )
        if self.kind == "mutual":
            return f"per peer: {soft} to the other peers"
        return soft


@dataclass(frozen=True)
class TrainPhase:
    """Train a model on the labels from its initial weights (a teacher, the scratch student, an ensemble member)."""

    role: str
    model: ModelSource
    train: TrainConfig
    objective: ObjectivePlan
    teaches: str | None = None  # set when the model will teach: warn if trained with label smoothing
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadPhase:
    """Load a trained model from a kdkit checkpoint; it is evaluated and recorded like a trained one."""

    role: str
    checkpoint: str
    field: str  # the config field naming the checkpoint
    teaches: str | None = None
    same_class_names: bool = False  # ensemble members must predict the data set's classes by name too


@dataclass(frozen=True)
class EnsemblePhase:
    """Combine trained or loaded teachers into one ensemble teacher (role `teacher`)."""

    role: str
    members: tuple[str, ...]  # roles of the member phases
    ensemble: EnsembleConfig
    temperature: float
    seed: int


@dataclass(frozen=True)
class DistillPhase:
    """Train a model from a frozen teacher's outputs."""

    role: str
    model: ModelSource
    teacher: str  # role of the phase whose model teaches
    outputs: TeacherOutputs
    transfer: TransferPlan
    objective: ObjectivePlan
    train: TrainConfig
    seed: int  # the seed of the transfer loader and the teacher cache's draws
    class_bias: dict[int, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortMember:
    """One model of a cohort: its name in the objective, its role in the run, its spec and its start."""

    name: str
    role: str
    spec: ModelSpec
    start: ModelSource


@dataclass(frozen=True)
class CohortPhase:
    """Train several models together in one step with one optimizer (joint teacher/student, mutual peers)."""

    name: str
    members: tuple[CohortMember, ...]
    primary: str
    objective: ObjectivePlan
    train: TrainConfig
    seed: int
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> str:
        """Return the phase's name (its checkpoints' name); each member is recorded under its own role."""
        return self.name


Phase = TrainPhase | LoadPhase | EnsemblePhase | DistillPhase | CohortPhase


@dataclass(frozen=True)
class Plan:
    """The phases of one run, in the order they run; later phases read earlier phases' models by role."""

    phases: tuple[Phase, ...]
    compress: bool = False  # compress the distilled student at the end

    def phase(self, role: str) -> Phase:
        """Return the phase that produces `role`."""
        for p in self.phases:
            if p.role == role or (isinstance(p, CohortPhase) and role in {m.role for m in p.members}):
                return p
        raise KeyError(f"no phase produces {role!r}; the plan has {[p.role for p in self.phases]}")

    def roles(self) -> list[str]:
        """Return every role the plan records, in order (cohort members one by one)."""
        out: list[str] = []
        for p in self.phases:
            out += [m.role for m in p.members] if isinstance(p, CohortPhase) else [p.role]
        return out

    def describe(self) -> str:
        """Return the plan as text: one block per phase."""
        lines = []
        for i, p in enumerate(self.phases, 1):
            lines.append(f"{i}. {p.role}: {_describe(p)}")
        if self.compress:
            lines.append(f"{len(self.phases) + 1}. compress: prune, distill again, int8, ONNX (student_kd)")
        return "\n".join(lines)


def _train_line(t: TrainConfig) -> str:
    aug = " with augmentation" if t.augment.enabled else ""
    return f"{t.epochs} epochs of {t.optimizer} lr {t.lr:g}, batch {t.batch_size}, {t.schedule}{aug}"


def _describe(p: Phase) -> str:
    if isinstance(p, TrainPhase):
        return f"train {p.model.describe()}\n   objective: {p.objective.describe()}\n   train: {_train_line(p.train)}"
    if isinstance(p, LoadPhase):
        return f"load {p.checkpoint} [{p.field}]"
    if isinstance(p, EnsemblePhase):
        return f"ensemble of {list(p.members)}, {p.ensemble.mode}, weights {p.ensemble.weights}"
    if isinstance(p, DistillPhase):
        bias = f"\n   then class bias {p.class_bias}" if p.class_bias else ""
        return (
            f"distill {p.model.describe()}\n   teacher: {p.teacher} ({p.outputs} outputs)\n"
            f"   transfer set: {p.transfer.describe()}\n   objective: {p.objective.describe()}\n"
            f"   train: {_train_line(p.train)}{bias}"
        )
    members = "; ".join(f"{m.name} = {m.role}: {m.start.describe()}" for m in p.members)
    return (
        f"train together: {members}\n   objective: {p.objective.describe()}\n   train: {_train_line(p.train)}"
    )
