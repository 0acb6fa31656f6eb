"""The Hinton recipe selection: candidates scored on a validation split, the test set never recorded."""

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_selection_scores_candidates_on_validation_only_and_resumes(tmp_path, bench):
    args = [
        "--quick",
        "--no-progress",
        "--jobs",
        "2",
        "--out",
        tmp_path / "results",
        "--runs-dir",
        tmp_path / "runs",
    ]
    proc = bench("hinton_select.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results" / "hinton_select_quick.json").read_text())
    assert set(doc["teachers"]) == {"80ep", "dropout-0.5"} and set(doc["students"]) == {
        "sgd-clip5-30ep",
        "sgd-clip5-60ep",
    }
    # The chosen candidate is the one with the fewest validation errors (ties: the earlier one).
    t = doc["teachers"]
    assert doc["chosen_teacher"]["name"] == min(t, key=lambda k: (t[k], list(t).index(k)))
    assert all(0 <= v <= 10000 for v in [*t.values(), *doc["students"].values()])
    # The chosen student recipe is also distilled from the other teacher; no quick candidate is over budget.
    other = next(k for k in t if k != doc["chosen_teacher"]["name"])
    assert set(doc["chosen_student_from_other_teachers"]) == {other}
    assert doc["students_over_budget"] == []
    # The scratch student gets the same selection: each candidate recipe as its student.train, same split.
    c = doc["scratch_candidates"]
    assert set(c) == set(doc["students"]) and all(0 <= v <= 10000 for v in c.values())
    assert doc["chosen_scratch"]["name"] == min(c, key=lambda k: (c[k], list(c).index(k)))
    assert doc["chosen_scratch"]["overrides"][0].startswith("student.train=")
    scratch_cfg = (tmp_path / "runs" / "hinton_select_quick" / "scratch-sgd-clip5-60ep" / "config.yaml").read_text()
    assert "- scratch" in scratch_cfg and "grad_clip: 5.0" in scratch_cfg
    per_run = sorted((tmp_path / "results" / "hinton_select_quick").glob("*.json"))
    assert len(per_run) == 7
    for p in per_run:
        rec = json.loads(p.read_text())
        assert not any("test" in k or k in ("accuracy", "errors") for k in rec), rec  # validation only
    # The summary keeps what the candidates cost when they were trained, also when an invocation reuses them.
    cost = sum(json.loads(p.read_text())["wall_seconds"] for p in per_run) / 3600
    assert cost > 0 and doc["candidates_wall_hours"] == pytest.approx(cost, rel=1e-9)
    # The student candidates distil from the chosen teacher, with the quick budget applied to distill.train.
    cfg = (tmp_path / "runs" / "hinton_select_quick").glob("student-sgd-clip5-60ep-from-*/config.yaml")
    text = next(cfg).read_text()
    assert f"teacher-{doc['chosen_teacher']['name']}" in text and "epochs: 2" in text
    # A second invocation trains nothing.
    again = bench("hinton_select.py", *args, timeout=120)
    assert again.returncode == 0 and "epoch" not in again.stderr
    redo = json.loads((tmp_path / "results" / "hinton_select_quick.json").read_text())
    assert redo["students"] == doc["students"]
    assert redo["candidates_wall_hours"] == pytest.approx(cost, rel=1e-9)
    assert redo["invocation_minutes"] < doc["invocation_minutes"]
    # One part alone keeps what the other parts chose in the summary.
    part = bench("hinton_select.py", *args, "--part", "scratch", timeout=120)
    assert part.returncode == 0 and "epoch" not in part.stderr, part.stderr[-2000:]
    merged = json.loads((tmp_path / "results" / "hinton_select_quick.json").read_text())
    assert merged["students"] == doc["students"] and merged["chosen_scratch"] == doc["chosen_scratch"]
    # A budget of 30 distillation epochs rules the 60-epoch candidate out without training anything again.
    stamps = {p.name: p.stat().st_mtime_ns for p in per_run}
    tight = bench("hinton_select.py", *args, "--max-distill-epochs", "30", timeout=300)
    assert tight.returncode == 0, tight.stderr[-3000:]
    doc = json.loads((tmp_path / "results" / "hinton_select_quick.json").read_text())
    assert doc["students_over_budget"] == ["sgd-clip5-60ep"]
    assert doc["chosen_student"]["name"] == "sgd-clip5-30ep"
    assert doc["chosen_scratch"]["name"] == "sgd-clip5-30ep" and list(doc["scratch_candidates"]) == ["sgd-clip5-30ep"]
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in per_run)
    none = bench("hinton_select.py", *args, "--max-distill-epochs", "10", timeout=120)
    assert none.returncode == 2 and "no student candidate trains that briefly" in none.stderr
    # A fresh checkout (results/ kept, runs/ gone): stored students stand on their teachers' recorded hashes;
    # a student that must be trained again while its teacher's weights are gone gets a clear error.
    shutil.rmtree(tmp_path / "runs")
    fresh = bench("hinton_select.py", *args, timeout=120)
    assert fresh.returncode == 0 and "epoch" not in fresh.stderr, fresh.stderr[-2000:]
    next((tmp_path / "results" / "hinton_select_quick").glob("student-sgd-clip5-30ep-from-*.json")).unlink()
    refused = bench("hinton_select.py", *args, timeout=120)
    assert refused.returncode == 2 and "--retrain-teachers" in refused.stderr, refused.stderr[-2000:]
