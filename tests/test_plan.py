"""The plan: every strategy is a pure function from the config to phases, decided before anything trains."""

import pytest

from kdkit import cli
from kdkit.config import build_config
from kdkit.engine import Engine
from kdkit.errors import ConfigError
from kdkit.plan import CohortPhase, DistillPhase, EnsemblePhase, LoadPhase, TrainPhase
from kdkit.strategies import make_plan

MLP = {"name": "mlp", "hidden": [32]}
BASE = {
    "name": "plan",
    "seed": 10,
    # A data root that does not exist: planning never reads data.
    "data": {"dataset": "mnist", "root": "/nonexistent/kdkit-data"},
    "teacher": {"model": {"name": "mlp", "hidden": [64]}, "train": {"epochs": 2}},
    "student": {"model": MLP, "train": {"epochs": 1}},
}


def _plan(**sections):
    return make_plan(build_config({**BASE, **sections}))


def _summary(plan):
    """Return (type, role, teacher, seed) per phase: the shape of a plan in one comparable list."""
    rows = []
    for p in plan.phases:
        if isinstance(p, TrainPhase):
            rows.append(("train", p.role, None, p.model.seed))
        elif isinstance(p, DistillPhase):
            rows.append(("distill", p.role, p.teacher, p.seed))
        elif isinstance(p, LoadPhase):
            rows.append(("load", p.role, None, p.checkpoint))
        elif isinstance(p, EnsemblePhase):
            rows.append(("ensemble", p.role, p.members, p.seed))
        else:
            rows.append(("cohort", p.name, tuple(m.role for m in p.members), p.seed))
    return rows


def test_offline_plan_teacher_scratch_and_distilled_student_from_the_same_weights():
    plan = _plan()
    assert _summary(plan) == [
        ("train", "teacher", None, 10),
        ("train", "student_scratch", None, 11),
        ("distill", "student_kd", "teacher", 11),
    ]
    kd = plan.phases[2]
    assert kd.outputs == "precompute"  # no augmentation, logits only: computed once per image
    assert kd.objective.kind == "response" and kd.objective.response.temperature == 4.0
    assert plan.phases[0].teaches == "the teacher (teacher.train)"  # its label smoothing is checked
    assert plan.roles() == ["teacher", "student_scratch", "student_kd"] and not plan.compress


@pytest.mark.parametrize(
    ("distill", "expected"),
    [
        ({"train": {"epochs": 1, "augment": {"jitter": 2}}}, "online"),
        ({"terms": [{"loss": "fitnet", "student": "features", "teacher": "features"}]}, "online"),
        ({"teacher_outputs": "cache", "train": {"epochs": 1, "augment": {"jitter": 2}}}, "cache"),
        ({"teacher_outputs": "online"}, "online"),
    ],
    ids=["augmented", "feature terms", "cache", "asked online"],
)
def test_teacher_outputs_are_resolved_once_in_the_plan(distill, expected):
    assert _plan(distill=distill).phases[-1].outputs == expected


def test_born_again_and_takd_are_chains_of_distillation_phases():
    born = _plan(strategy={"kind": "born_again", "generations": 3}, phases=["teacher", "distill"])
    assert _summary(born) == [
        ("train", "teacher", None, 10),
        ("distill", "born_again_1", "teacher", 11),
        ("distill", "born_again_2", "born_again_1", 12),
        ("distill", "born_again_3", "born_again_2", 13),
    ]
    assert all(
        p.model.spec.options()["hidden"] == [64] for p in born.phases[1:]
    )  # the teacher's architecture
    takd = _plan(strategy={"kind": "takd", "assistant": {"model": {"name": "mlp", "hidden": [48]}}})
    assert _summary(takd)[2:] == [
        ("distill", "assistant", "teacher", 12),
        ("distill", "student_kd", "assistant", 11),
    ]
    loaded = _plan(strategy={"kind": "takd", "assistant": {"model": MLP, "checkpoint": "ta/assistant"}})
    assert _summary(loaded)[2:] == [
        ("load", "assistant", None, "ta/assistant"),
        ("distill", "student_kd", "assistant", 11),
    ]


def test_joint_starts_from_the_trained_teacher_when_there_is_one():
    with_teacher = _plan(strategy={"kind": "joint"}).phases[-1]
    assert isinstance(with_teacher, CohortPhase) and with_teacher.primary == "student"
    assert with_teacher.members[0].start.copy_of == "teacher"
    assert with_teacher.members[1].start.seed == 11
    assert with_teacher.record["teacher_start"] == "trained teacher"
    alone = _plan(strategy={"kind": "joint"}, phases=["distill"])
    assert _summary(alone) == [("cohort", "joint", ("teacher_joint", "student_kd"), 11)]
    assert alone.phases[0].members[0].start.seed == 10 and alone.phases[0].members[0].start.copy_of is None


def test_mutual_peers_start_from_consecutive_seeds():
    plan = _plan(strategy={"kind": "mutual", "num_peers": 3}, phases=["distill"])
    (cohort,) = plan.phases
    assert [m.role for m in cohort.members] == ["peer_1", "peer_2", "peer_3"]
    assert [m.start.seed for m in cohort.members] == [11, 12, 13]
    assert cohort.objective.kind == "mutual" and cohort.objective.members == ("peer_1", "peer_2", "peer_3")


def test_ensembles_relabelled_sets_and_unlabeled_rounds():
    members = [{"model": MLP}, {"model": {"name": "mlp", "hidden": [16]}}, "zoo/third"]
    ens = _plan(
        teacher={"ensemble": members}, distill={"ensemble": {"mode": "random"}}, phases=["teacher", "distill"]
    )
    assert _summary(ens) == [
        ("train", "teacher_0", None, 10),
        ("train", "teacher_1", None, 1010),
        ("load", "teacher_2", None, "zoo/third"),
        ("ensemble", "teacher", ("teacher_0", "teacher_1", "teacher_2"), 11),
        ("distill", "student_kd", "teacher", 11),
    ]
    assert ens.phases[-1].outputs == "online"  # one teacher per batch: nothing can be stored per image
    assert ens.phases[2].same_class_names
    relabel = _plan(teacher={"ensemble": members}, distill={"ensemble": {"mode": "relabel"}})
    assert relabel.phases[-1].transfer.images == "relabel" and relabel.phases[-1].outputs == "given"
    semi = _plan(data={**BASE["data"], "labeled_fraction": 0.1}, distill={"unlabeled": {"rounds": 3}})
    assert _summary(semi)[2:] == [
        ("distill", "student_kd_round1", "teacher", 11),
        ("distill", "student_kd_round2", "student_kd_round1", 11),
        ("distill", "student_kd", "student_kd_round2", 11),
    ]
    assert {p.outputs for p in semi.phases[2:]} == {"given"}
    assert semi.phases[-1].objective.mask_unlabeled  # soft targets: images without labels skip the CE


def test_loaded_teacher_and_compress():
    plan = _plan(teacher={"model": MLP, "checkpoint": "t/teacher"}, compress={"prune_target": 0.3})
    assert _summary(plan)[0] == ("load", "teacher", None, "t/teacher")
    assert plan.compress and "compress" in plan.describe()


def test_planning_refuses_what_no_phase_could_honour():
    with pytest.raises(ConfigError, match=r"phases: 'distill' needs a teacher"):
        _plan(phases=["distill"])
    with pytest.raises(ConfigError, match=r"'precompute' keeps one teacher output per image"):
        _plan(distill={"teacher_outputs": "precompute", "train": {"epochs": 1, "augment": {"flip": True}}})


def test_describe_names_every_phase_its_teacher_and_its_objective():
    text = _plan(strategy={"kind": "born_again", "generations": 2}).describe()
    for piece in (
        "1. teacher: train mlp",
        "3. born_again_1: distill",
        "teacher: born_again_1 (precompute outputs)",
    ):
        assert piece in text
    assert "0.9*kd(T=4) + 0.1*ce" in text


def test_cli_plan_prints_the_checked_plan_and_trains_nothing(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("--plan must not train")

    monkeypatch.setattr(Engine, "fit", refuse)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {dataset: mnist-small, val_size: 500}\n"
        "teacher: {model: {name: mlp, hidden: [32]}}\nstudent: {model: {name: mlp, hidden: [16]}}\n"
        "strategy: {kind: takd, assistant: {model: {name: mlp, hidden: [24]}}}\n"
    )
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(cfg), "--plan", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "3. assistant: distill" in out and "4. student_kd: distill" in out and "teacher: assistant" in out
    assert not run_dir.exists()
    # The plan is checked on the data by preflight: a class id out of range fails here too.
    code = cli.main(["run", str(cfg), "--plan", "--set", "distill.omit_classes=[12]"])
    assert code == 2 and "class ids [12] are out of range" in capsys.readouterr().err
