"""Offline distillation: a trained, frozen teacher (or ensemble) teaches the student.

The transfer set is the training split (less omitted classes), relabelled augmented copies (an ensemble in
`relabel` mode: every teacher labels the images and copies of them, Fukuda et al. 2017), or, with unlabeled
data, the labeled images plus the teacher's labels for the hidden ones, over Noisy Student rounds (Xie et
al. 2020) in which each round's student teaches the next.
"""

from __future__ import annotations

from kdkit.config import EnsembleConfig, ExperimentConfig, UnlabeledConfig
from kdkit.errors import ConfigError
from kdkit.plan import ModelSource, Phase, TransferPlan
from kdkit.strategies.distill import distill_phase


def offline_phases(cfg: ExperimentConfig, student_seed: int) -> list[Phase]:
    """Return the student's distillation phase(s) from the phase `teacher`."""
    student = ModelSource("student.model", cfg.student.model, seed=student_seed)
    train = cfg.distill_train()
    if cfg.data.semi_supervised:
        return _unlabeled_rounds(cfg, student, cfg.distill.unlabeled or UnlabeledConfig())
    e = cfg.distill.ensemble or EnsembleConfig()
    if cfg.teacher.ensemble and e.mode == "relabel":
        if cfg.distill.omit_classes:
            raise ConfigError(
                "distill.omit_classes cannot be combined with distill.ensemble.mode 'relabel': the relabelled "
                "transfer set is made from every training image; remove one of them"
            )
        transfer = TransferPlan("relabel", relabel=e)
        return [distill_phase(cfg, "student_kd", student, "teacher", train=train, transfer=transfer)]
    varies = bool(cfg.teacher.ensemble) and e.mode == "random"
    return [distill_phase(cfg, "student_kd", student, "teacher", train=train, varies=varies)]


def _unlabeled_rounds(cfg: ExperimentConfig, student: ModelSource, u: UnlabeledConfig) -> list[Phase]:
    phases: list[Phase] = []
    teacher = "teacher"
    for r in range(1, u.rounds + 1):
        role = "student_kd" if r == u.rounds else f"student_kd_round{r}"
        transfer = TransferPlan("unlabeled", unlabeled=u, round=r)
        phases.append(
            distill_phase(cfg, role, student, teacher, train=cfg.distill_train(), transfer=transfer)
        )
        teacher = role
    return phases
