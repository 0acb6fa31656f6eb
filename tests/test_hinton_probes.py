"""The Hinton teacher probes: validation errors and teacher logit statistics, resumable."""

import json
import shutil

import pytest


def test_quick_probes_record_validation_errors_and_teacher_logits_and_resume(tmp_path, bench):
    args = ["--quick", "--jobs", "2", "--out", tmp_path / "results", "--runs-dir", tmp_path / "runs"]
    proc = bench("hinton_probes.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results" / "hinton_probes_quick.json").read_text())
    assert set(doc["teachers"]) == {
        "base",
        "no-maxnorm",
        "maxnorm-1",
        "maxnorm-2-lr0.1",
        "raw-pixels",
        "40ep",
        "80ep",
        "220ep",
        "300ep",
    }
    assert set(doc["scratch"]) == {"scratch-s0"} and 0 <= doc["scratch"]["scratch-s0"]["val_errors"] <= 10000
    assert set(doc["students"]) == {"base-T20-s0", "base-T20-s1"}
    assert all(s["teacher"] == "base" for s in doc["students"].values())
    for t in doc["teachers"].values():
        assert 0 <= t["val_errors"] <= 10000
        lg = t["logits"]
        # The range of a row's logits is at least the lead of its top logit over the second; the top soft
        # target at T lies between uniform (1/10) and 1.
        assert lg["logit_range_mean"] >= lg["top_lead_mean"] > 0
        assert 0.1 < lg["p_max_at_T_mean"] < 1 and lg["temperature"] == 20.0
    per_run = sorted((tmp_path / "results" / "hinton_probes_quick").glob("*.json"))
    assert len(per_run) == 12  # 9 teachers, 1 scratch student, 2 distilled students
    for p in per_run:
        rec = json.loads(p.read_text())
        assert not any("test" in k or k in ("accuracy", "errors") for k in rec), rec  # validation only
    # The second seed's student is validated on the same split as the first (data.split_seed=0).
    cfg = (tmp_path / "runs" / "hinton_probes_quick" / "student-base-T20-s1" / "config.yaml").read_text()
    assert "split_seed: 0" in cfg and "seed: 1" in cfg and "epochs: 2" in cfg
    cost = sum(json.loads(p.read_text())["wall_seconds"] for p in per_run) / 3600
    assert doc["wall_hours"] == pytest.approx(cost, rel=1e-9)
    # A second invocation trains nothing and reports the same figures.
    stamps = {p.name: p.stat().st_mtime_ns for p in per_run}
    again = bench("hinton_probes.py", *args, timeout=120)
    assert again.returncode == 0 and "epoch" not in again.stderr, again.stderr[-2000:]
    redo = json.loads((tmp_path / "results" / "hinton_probes_quick.json").read_text())
    assert redo["teachers"] == doc["teachers"] and redo["students"] == doc["students"]
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in per_run)
    # A fresh checkout keeps results/ but not runs/: the stored students stand on their teachers' recorded
    # weight hashes, so nothing is trained again.
    assert all(
        json.loads((tmp_path / "results" / "hinton_probes_quick" / f"teacher-{k}.json").read_text())[
            "weights_sha256"
        ]
        for k in doc["teachers"]
    )
    shutil.rmtree(tmp_path / "runs")
    fresh = bench("hinton_probes.py", *args, timeout=120)
    assert fresh.returncode == 0 and "epoch" not in fresh.stderr, fresh.stderr[-2000:]
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in per_run)
    # A student without a current result whose teacher's weights are gone: a clear error, unless asked to
    # train that teacher again.
    (tmp_path / "results" / "hinton_probes_quick" / "student-base-T20-s1.json").unlink()
    refused = bench("hinton_probes.py", *args, timeout=120)
    assert (
        refused.returncode == 2
        and "teacher-base" in refused.stderr
        and "--retrain-teachers" in refused.stderr
    )
    redone = bench("hinton_probes.py", *args, "--retrain-teachers")
    assert redone.returncode == 0, redone.stderr[-3000:]
    assert (
        tmp_path / "runs" / "hinton_probes_quick" / "teacher-base" / "checkpoints" / "teacher.safetensors"
    ).exists()
    assert (tmp_path / "results" / "hinton_probes_quick" / "student-base-T20-s1.json").exists()
    # Only the teacher that was needed is trained again.
    assert not (tmp_path / "runs" / "hinton_probes_quick" / "teacher-maxnorm-1").exists()
