"""The phases that make the teacher: trained on the labels, loaded from a checkpoint, or an ensemble of both."""

from __future__ import annotations

from kdkit.config import EnsembleConfig, ExperimentConfig
from kdkit.errors import ConfigError
from kdkit.plan import EnsemblePhase, LoadPhase, ModelSource, ObjectivePlan, Phase, TrainPhase


def teacher_phases(cfg: ExperimentConfig) -> list[Phase]:
    """Return the phases that produce role `teacher` (and, for an ensemble, its members `teacher_<i>`)."""
    distilling = "distill" in cfg.phases
    t = cfg.teacher
    if t.ensemble:
        return _ensemble_phases(cfg, distilling)
    if t.checkpoint:
        teaches = "the teacher (teacher.checkpoint)" if distilling else None
        return [LoadPhase("teacher", t.checkpoint, "teacher.checkpoint", teaches=teaches)]
    if "teacher" in cfg.phases:
        assert t.model is not None  # the config requires a model or an ensemble
        return [
            TrainPhase(
                "teacher",
                ModelSource("teacher.model", t.model, seed=cfg.seed),
                t.train,
                ObjectivePlan("hard_labels", t.train.label_smoothing),
                teaches="the teacher (teacher.train)" if distilling else None,
                record={"label_smoothing": t.train.label_smoothing},
            )
        ]
    return []


def _ensemble_phases(cfg: ExperimentConfig, distilling: bool) -> list[Phase]:
    phases: list[Phase] = []
    for i, m in enumerate(cfg.teacher.ensemble or []):
        role, field = f"teacher_{i}", f"teacher.ensemble[{i}]"
        teaches = field if distilling else None
        if m.checkpoint:
            phases.append(
                LoadPhase(role, m.checkpoint, f"{field}.checkpoint", teaches, same_class_names=True)
            )
        elif "teacher" in cfg.phases:
            assert m.model is not None
            phases.append(
                TrainPhase(
                    role,
                    # member 0 starts like a single teacher of the same config
                    ModelSource(f"{field}.model", m.model, seed=cfg.seed + 1000 * i),
                    m.train,
                    ObjectivePlan("hard_labels", m.train.label_smoothing),
                    teaches=teaches,
                    record={"label_smoothing": m.train.label_smoothing},
                )
            )
        else:
            raise ConfigError(
                f"{field} has no checkpoint and 'teacher' is not in phases: nothing to load or train"
            )
    members = tuple(p.role for p in phases)
    e = cfg.distill.ensemble or EnsembleConfig()
    phases.append(EnsemblePhase("teacher", members, e, cfg.distill.temperature, seed=cfg.seed + 1))
    return phases
