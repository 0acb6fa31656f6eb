"""kdkit sweep: a grid of runs sharing what the grid does not vary, resumable, summarised in one table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdkit.cli import main
from kdkit.config import build_config
from kdkit.console import make_console
from kdkit.engine import Engine
from kdkit.errors import ConfigError
from kdkit.experiment import run_experiment
from kdkit.sweep import SweepError, run_sweep

ROOT = Path(__file__).resolve().parents[1]
CFG = {
    "name": "sw",
    "data": {"dataset": "mnist-small", "val_size": 1000},
    "teacher": {"model": {"name": "mlp", "hidden": [64]}, "train": {"epochs": 2, "batch_size": 128}},
    "student": {"model": {"name": "mlp", "hidden": [16]}, "train": {"epochs": 2, "batch_size": 128}},
    "distill": {"temperature": 4.0},
    "runtime": {"progress": False},
}
TEMPS = ["distill.temperature=[1, 4]"]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump(CFG))
    return path


def _sweep(config, out, vary=TEMPS, seeds=None, overrides=()):
    return run_sweep(config, list(overrides), list(vary), seeds, out, make_console())


def _row(table, model, point=None):
    (row,) = [r for r in table["rows"] if r["model"] == model and r["point"] == point]
    return row


def test_sweep_shares_the_teacher_matches_separate_runs_and_skips_finished_runs(
    config, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    table = _sweep(config, out, seeds=[0, 1])
    names = sorted(p.stem for p in (out / "results").glob("*.json"))
    assert names == sorted(
        f"{p}-s{s}" for s in (0, 1) for p in ("shared", "p00-temperature-1", "p01-temperature-4")
    )
    # Each point loaded the teacher its seed's shared run trained, instead of training one.
    point = json.loads((out / "results" / "p01-temperature-4-s1.json").read_text())
    assert point["models"]["teacher"]["loaded_from"] == str(
        (out / "runs" / "shared-s1" / "checkpoints" / "teacher").resolve()
    )
    assert set(point["models"]) == {"teacher", "student_kd"}
    # The same numbers as one ordinary run of that point: sharing changes nothing.
    alone = run_experiment(build_config(CFG, ["seed=1"]), tmp_path / "alone")["models"]
    kd = _row(table, "student_kd", {"distill.temperature": 4})
    assert kd["seeds"] == [0, 1] and kd["test_errors"]["values"][1] == alone["student_kd"]["errors"]
    assert kd["val_accuracy"]["values"][1] == alone["student_kd"]["val_accuracy"]
    assert _row(table, "teacher")["test_errors"]["values"][1] == alone["teacher"]["errors"]
    assert _row(table, "student_scratch")["test_errors"]["values"][1] == alone["student_scratch"]["errors"]
    e = kd["test_errors"]["values"]
    assert kd["test_errors"]["mean"] == pytest.approx((e[0] + e[1]) / 2)
    # No row for the loaded teacher at each point; one per point for the distilled student.
    assert sorted((r["model"], json.dumps(r["point"])) for r in table["rows"]) == sorted(
        [("teacher", "null"), ("student_scratch", "null")]
        + [("student_kd", json.dumps({"distill.temperature": t})) for t in (1, 4)]
    )
    md = (out / "sweep.md").read_text()
    assert "| distill.temperature | model | test errors |" in md and md.count("student_kd") == 2
    assert json.loads((out / "sweep.json").read_text()) == table
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(Engine, "fit", refuse)
    assert _sweep(config, out, seeds=[0, 1]) == table


def test_a_killed_sweep_continues_to_the_same_results(config, tmp_path):
    ref = _sweep(config, tmp_path / "ref")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "kdkit", "sweep", str(config), "--vary", TEMPS[0], "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # 71 steps per epoch: the shared run (teacher and scratch, 2 epochs each) ends at step 284, so step 330
    # falls inside the first point's distillation.
    killed = subprocess.run(cmd, env={**env, "KDKIT_FAULT": "step:330"}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.stem for p in (out / "results").glob("*.json")) == ["shared-s0"]
    assert (out / "runs" / "p00-temperature-1-s0" / "config.yaml").is_file()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "shared-s0: done earlier" in again.stdout + again.stderr
    table = json.loads((out / "sweep.json").read_text())
    assert table["rows"] == ref["rows"]  # resumed mid-phase, bit for bit the uninterrupted figures


def test_results_of_another_config_are_refused_and_kept(config, tmp_path):
    out = tmp_path / "out"
    _sweep(config, out, vary=["distill.temperature=[2]"])
    before = {p: p.read_bytes() for p in (out / "results").glob("*.json")}
    with pytest.raises(SweepError, match=r"shared-s0.json' was made with another config"):
        _sweep(config, out, vary=["distill.temperature=[2]"], overrides=["student.train.epochs=1"])
    assert {p: p.read_bytes() for p in (out / "results").glob("*.json")} == before


def test_a_bad_point_fails_before_anything_trains(config, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a run trained before the bad point was reported")

    monkeypatch.setattr(Engine, "fit", refuse)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"(?s)point \{'distill.temperature': -1\}.*greater than 0"):
        _sweep(config, out, vary=["distill.temperature=[4, -1]"])
    # Valid configs whose last point names a class the data set does not have (kdkit.preflight).
    with pytest.raises(ConfigError, match=r"omit_classes: class ids \[12\] are out of range"):
        _sweep(config, out, vary=["distill.omit_classes=[[3], [12]]"])
    assert not out.exists()
    assert main(["sweep", str(config), "--vary", "distill.temperature=4", "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        main(["sweep", str(config), "--vary", TEMPS[0], "--seeds", "0,x", "--out", str(out)])
    with pytest.raises(ConfigError, match="the values repeat"):
        _sweep(config, out, vary=["distill.temperature=[4, 4]"])


def test_varying_the_teacher_trains_one_per_point_and_shares_the_scratch_student(config, tmp_path):
    out = tmp_path / "out"
    # With no validation split (as in configs/hinton-mnist.yaml) the table has no validation figures.
    table = _sweep(config, out, vary=["teacher.train.epochs=[1, 2]"], overrides=["data.val_size=0"])
    assert all(r["val_accuracy"] is None for r in table["rows"])
    assert "| - |" in (out / "sweep.md").read_text()
    shared = json.loads((out / "results" / "shared-s0.json").read_text())
    assert set(shared["models"]) == {"student_scratch"}
    for epochs in (1, 2):
        teacher = _row(table, "teacher", {"teacher.train.epochs": epochs})
        assert teacher["test_errors"]["values"]  # trained at this point, not loaded
    one = json.loads((out / "results" / "p00-epochs-1-s0.json").read_text())
    assert one["models"]["teacher"]["steps"] == 79 and "loaded_from" not in one["models"]["teacher"]
