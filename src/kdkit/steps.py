"""Step providers: turn a batch into the named tensors an objective reads.

The engine runs one loop for every strategy; what differs between offline, cached, ensemble, joint and mutual
distillation is only where a step's tensors come from. A provider supplies them:

- `StudentStep`: the student's logits, its tapped features (`student:<path>`), `labels`, `index`.
- `TeacherStep(teacher)`: also a frozen teacher's (or ensemble's) logits and tapped features
  (`teacher.logits`, `teacher:<path>`), computed online from the same inputs.
- `ServedTeacherStep()`: teacher outputs the loader already holds (precomputed or cached), passed through.
- `CohortStep(cohort)`: every member's logits (`<member>.logits`), for joint and mutual training.

Protocol: `provides()` names the tensors (a `prefix:*` entry stands for any module path), `open(...)` installs
hooks for a phase, `tensors(...)` runs a step's forward passes, `eval_models(...)` names the models validated
each epoch, `close()` removes the hooks. The engine calls them in that order and knows nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from kdkit.batches import INDEX, LABELS
from kdkit.cohort import Cohort
from kdkit.errors import KdkitError
from kdkit.objective import Objective
from kdkit.taps import Tap
from kdkit.tasks import Task
from kdkit.teacher import FrozenTeacher

STUDENT_LOGITS = "student.logits"
TEACHER_LOGITS = "teacher.logits"
ANY_STUDENT_PATH = "student:*"
ANY_TEACHER_PATH = "teacher:*"


@dataclass(frozen=True)
class StepRuntime:
    """What the engine hands a provider when a phase opens: where to compute, the task, and its phase name."""

    device: torch.device
    task: Task
    prepare: Callable[[nn.Module], nn.Module]  # moves a model to the run's device and memory format
    phase: str = "phase"


@dataclass(frozen=True)
class StepPosition:
    """Where a training step is: its epoch and its batch within the epoch (0-based)."""

    epoch: int
    batch: int


class StepProvider(Protocol):
    """Turns batches into the named tensors an objective reads; see the module docstring."""

    def provides(self) -> set[str]:
        """Return the names of the tensors `tensors` returns (`prefix:*` stands for any module path)."""
        ...

    def open(self, model: nn.Module, objective: Objective, runtime: StepRuntime) -> None:
        """Prepare a phase that trains `model` (the unwrapped module) towards `objective`: hooks, devices."""
        ...

    def tensors(
        self, model: Callable[..., Tensor], batch: Mapping[str, Tensor], position: StepPosition
    ) -> dict[str, Tensor]:
        """Return one training step's named tensors; `model` is the (possibly compiled/DDP) student to call."""
        ...

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """Return extra models to validate each epoch, by the name their accuracy is logged under."""
        ...

    def close(self) -> None:
        """Remove whatever `open` installed; the models are left as they were."""
        ...


def matches(name: str, provided: Iterable[str]) -> bool:
    """Return True when `name` is among `provided` or covered by a `prefix:*` entry of it."""
    provided = set(provided)
    prefix, sep, _ = name.partition(":")
    return name in provided or (bool(sep) and f"{prefix}:*" in provided)


def missing_inputs(objective: Objective, provided: Iterable[str]) -> list[str]:
    """Return the tensors the objective's terms read that the provider does not supply, in term order."""
    provided = set(provided)
    wanted = dict.fromkeys(k for term in objective.terms for k in term.inputs)
    return [k for k in wanted if not matches(k, provided)]


def check_provided(phase: str, objective: Objective, provided: Iterable[str]) -> None:
    """Raise KdkitError naming what the objective reads that the phase's provider cannot supply."""
    missing = missing_inputs(objective, provided)
    if not missing:
        return
    if any(k.startswith("teacher") for k in missing):
        what = "features" if all(":" in k for k in missing if k.startswith("teacher")) else "outputs"
        raise KdkitError(f"phase {phase!r}: the objective reads teacher {what} but no teacher was given")
    raise KdkitError(
        f"phase {phase!r}: the objective reads {missing}, which this phase does not provide; "
        f"it provides {sorted(provided)}"
    )


class StudentStep:
    """The student alone: its logits and tapped features, with the batch's labels and indices."""

    def __init__(self) -> None:
        self._tap: Tap | None = None
        self._runtime: StepRuntime | None = None

    def provides(self) -> set[str]:
        """Return the student's tensor names."""
        return {STUDENT_LOGITS, LABELS, INDEX, ANY_STUDENT_PATH}

    def open(self, model: nn.Module, objective: Objective, runtime: StepRuntime) -> None:
        """Tap the student's module paths the objective reads (hooks; forward is never rewritten)."""
        self._runtime = runtime
        paths = objective.student_paths()
        self._tap = Tap(model, paths, what="student") if paths else None

    def _inputs(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        if self._runtime is None:
            raise RuntimeError(f"{type(self).__name__}.tensors called before open()")
        return self._runtime.task.inputs(batch, self._runtime.device)

    def _student(self, model: Callable[..., Tensor], inputs: tuple[Tensor, ...], batch: Mapping[str, Tensor]):
        assert self._runtime is not None
        dev = self._runtime.device
        out = {
            STUDENT_LOGITS: model(*inputs),
            LABELS: batch[LABELS].to(dev, non_blocking=True),
            INDEX: batch[INDEX].to(dev),
        }
        if self._tap is not None:
            out.update({f"student:{k}": v for k, v in self._tap.outputs.items()})
        return out

    def tensors(
        self, model: Callable[..., Tensor], batch: Mapping[str, Tensor], position: StepPosition
    ) -> dict[str, Tensor]:
        """Return the student's logits and features, the labels and the indices of the batch."""
        return self._student(model, self._inputs(batch), batch)

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """Return no extra model: the student alone is validated."""
        return {}

    def close(self) -> None:
        """Remove the student's hooks."""
        if self._tap is not None:
            self._tap.remove()
            self._tap = None


class TeacherStep(StudentStep):
    """The student and a frozen teacher (or an ensemble) run online on the same inputs.

    A teacher that varies by step (an ensemble drawing one member per batch) has `set_position(epoch, batch)`;
    it is told each step's position before it runs, so a resumed phase draws the same teachers.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self._teacher_tap: Tap | None = None

    def provides(self) -> set[str]:
        """Return the student's tensor names and the teacher's logits and features."""
        return super().provides() | {TEACHER_LOGITS, ANY_TEACHER_PATH}

    def open(self, model: nn.Module, objective: Objective, runtime: StepRuntime) -> None:
        """Move the teacher to the device and tap the student's and the teacher's paths the objective reads."""
        self.teacher = runtime.prepare(self.teacher)
        super().open(model, objective, runtime)
        paths = objective.teacher_paths()
        if paths:
            # Hooks go on the wrapped network, so paths read as in the teacher's own model.
            inner = self.teacher.model if isinstance(self.teacher, FrozenTeacher) else self.teacher
            try:
                self._teacher_tap = Tap(inner, paths, what="teacher")
            except Exception:
                super().close()  # a bad teacher path leaves the student unhooked too
                raise

    def tensors(
        self, model: Callable[..., Tensor], batch: Mapping[str, Tensor], position: StepPosition
    ) -> dict[str, Tensor]:
        """Return the student's tensors and the teacher's logits and features for the same inputs."""
        inputs = self._inputs(batch)
        out = self._student(model, inputs, batch)
        set_position = getattr(self.teacher, "set_position", None)
        if set_position is not None:
            set_position(position.epoch, position.batch)
        out[TEACHER_LOGITS] = self.teacher(*inputs)
        if self._teacher_tap is not None:
            # Outputs made under inference mode must be cloned to enter the student's graph.
            out.update({f"teacher:{k}": v.clone() for k, v in self._teacher_tap.outputs.items()})
        return out

    def close(self) -> None:
        """Remove the student's and the teacher's hooks."""
        super().close()
        if self._teacher_tap is not None:
            self._teacher_tap.remove()
            self._teacher_tap = None


class ServedTeacherStep(StudentStep):
    """The student, with teacher outputs the loader serves beside each batch (precomputed or cached logits)."""

    def __init__(self, keys: Iterable[str] = (TEACHER_LOGITS,), teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.keys = tuple(keys)
        # The model whose outputs are served: never run here, named so that every provider says its teacher.
        self.teacher = teacher
        if not self.keys:
            raise ValueError("ServedTeacherStep needs at least one batch key to serve")

    def provides(self) -> set[str]:
        """Return the student's tensor names and the served keys."""
        return super().provides() | set(self.keys)

    def tensors(
        self, model: Callable[..., Tensor], batch: Mapping[str, Tensor], position: StepPosition
    ) -> dict[str, Tensor]:
        """Return the student's tensors and the served teacher tensors, moved to the device."""
        out = super().tensors(model, batch, position)
        assert self._runtime is not None
        for key in self.keys:
            out[key] = batch[key].to(self._runtime.device, non_blocking=True)
        return out


class CohortStep(StudentStep):
    """Models trained together (joint teacher and student, mutual peers): every member's logits per step.

    The cohort's forward returns the primary's logits (`student.logits`) and keeps every member's, handed to
    the objective as `<member>.logits`.
    """

    def __init__(self, cohort: Cohort) -> None:
        super().__init__()
        self.cohort = cohort

    def provides(self) -> set[str]:
        """Return the student's tensor names and `<member>.logits` of every member."""
        return super().provides() | self.cohort.provides()

    def open(self, model: nn.Module, objective: Objective, runtime: StepRuntime) -> None:
        """Check that the phase trains this cohort and tap the paths the objective reads."""
        if model is not self.cohort:
            raise KdkitError(
                f"phase {runtime.phase!r}: CohortStep was built for another model than the one trained"
            )
        super().open(model, objective, runtime)

    def tensors(
        self, model: Callable[..., Tensor], batch: Mapping[str, Tensor], position: StepPosition
    ) -> dict[str, Tensor]:
        """Return the student's tensors and every member's logits of this step."""
        out = super().tensors(model, batch, position)
        out.update(self.cohort.step_tensors())
        return out

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """Return every member of `model` (a cohort or its averaged copy); the primary is `model` itself."""
        if not isinstance(model, Cohort):
            raise TypeError(f"CohortStep validates a Cohort, got {type(model).__name__}")
        return {name: model if name == model.primary else m for name, m in model.members.items()}


def for_teacher(teacher: nn.Module | None, served: Iterable[str] = ()) -> StudentStep:
    """Return the provider for `Engine.fit(teacher=...)`: outputs the loader serves win over a teacher model."""
    served = set(served)
    if TEACHER_LOGITS in served:
        # A teacher passed beside its precomputed or cached logits is not run: the served logits are the
        # ones the student must learn (they match the cached augmentation draws).
        return ServedTeacherStep(sorted(k for k in served if k.startswith("teacher.")))
    if teacher is not None:
        return TeacherStep(teacher)
    return StudentStep()


def default_steps(model: nn.Module, teacher: nn.Module | None, served: Iterable[str] = ()) -> StudentStep:
    """Return the provider for a phase given no explicit one: a cohort's, else the one `for_teacher` picks."""
    if isinstance(model, Cohort):
        if teacher is not None:
            raise KdkitError("a cohort trains its members together; it takes no separate teacher")
        return CohortStep(model)
    return for_teacher(teacher, served)
