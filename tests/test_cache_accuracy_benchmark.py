"""benchmarks/cache_accuracy.py: the rows' configs, the quick form end to end, resumable runs, the table."""

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cache_accuracy as ca  # noqa: E402


def test_each_row_is_kd_yaml_with_only_the_teacher_outputs_changed(tmp_path):
    cfgs = {row: ca.run_config(row, 1, Path("/t/teacher"), tmp_path / row, False, False) for row in ca.ROWS}
    for cfg in cfgs.values():
        assert cfg.seed == 1 and cfg.phases == ["distill"] and cfg.teacher.checkpoint == "/t/teacher"
        assert cfg.data.split_seed == 0  # the teacher's split, whatever the seed
        assert cfg.student.model.name == "resnet20" and cfg.student.train.epochs == 30  # the full schedule
        assert [(t.loss, t.weight) for t in cfg.distill.terms] == [("ce", 0.1), ("kd", 0.9)]
        assert cfg.student.train.augment.crop_padding == 4 and cfg.student.train.augment.flip
    assert cfgs["online"].distill.teacher_outputs == "online"
    for k in (1, 4, 16):
        cfg = cfgs[f"cache-k{k}"]
        assert cfg.distill.teacher_outputs == "cache" and cfg.distill.cache.draws == k
        assert cfg.distill.cache.dir == str(tmp_path / f"cache-k{k}" / "teacher-cache")  # built in the run


def test_quick_end_to_end_then_skipped_and_the_table_quotes_the_jsons(tmp_path, data_root, bench):
    if not (data_root / "cifar10-jpg.tar.gz").is_file():
        pytest.skip("cifar10-jpg.tar.gz not found")
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    before = results_md.stat().st_mtime_ns
    args = ["--quick", "--out", tmp_path / "results", "--seeds", "0", "--no-progress"]
    proc = bench("cache_accuracy.py", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "cache_accuracy"
    records = ca.load_records(out)
    assert sorted(records) == sorted(f"{row}-s0" for row in ca.ROWS)
    for row in ca.ROWS:
        rec = records[f"{row}-s0"]
        assert rec["draws"] == ca.draws_of(row) and rec["epochs"] == 1 and rec["student"] == "resnet8"
        assert 0 <= rec["test_accuracy"] <= 1 and rec["wall_seconds"] > rec["train_seconds"] > 0
        cache = tmp_path / "runs" / "cache_accuracy" / f"{row}-s0" / "teacher-cache"
        assert cache.is_dir() == (row != "online")  # each cache run built its own cache
    text = proc.stdout
    online = records["online-s0"]["test_accuracy"]
    for k in (1, 4, 16):
        acc = records[f"cache-k{k}-s0"]["test_accuracy"]
        (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| cache, K = {k} |")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == f"s0: {100 * acc:.2f}" and cells[4] == f"{100 * (acc - online):+.2f}"
    assert "Missing runs: none." in text
    assert results_md.stat().st_mtime_ns == before  # --out keeps RESULTS.md untouched
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    again = bench("cache_accuracy.py", *args, timeout=300)
    assert again.returncode == 0 and "teacher_outputs" not in again.stdout  # nothing ran again
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == stamps
    assert ca.table(records, (0,)) in again.stdout
    section = ca.table(records, (0, 1))
    assert re.search(r"Missing runs: online-s1, cache-k1-s1, cache-k4-s1, cache-k16-s1\.", section)


def test_a_stored_run_from_another_split_or_teacher_is_refused_before_anything_trains(tmp_path):
    base = tmp_path / "kept" / "teacher"
    base.parent.mkdir(parents=True)
    base.with_suffix(".safetensors").write_bytes(b"weights")
    base.with_suffix(".json").write_text("{}")
    sha = hashlib.sha256(b"weights").hexdigest()
    out = tmp_path / "results" / ca.NAME
    out.mkdir(parents=True)
    good = {"row": "online", "seed": 0, "teacher_sha256": sha, "split_seed": 0}
    (out / "online-s0.json").write_text(json.dumps(good))
    argv = ["--teacher-checkpoint", str(base), "--out", str(tmp_path / "results"), "--no-progress"]
    argv += ["--seeds", "0", "1"]
    (out / "cache-k4-s1.json").write_text(json.dumps({**good, "split_seed": 1}))
    with pytest.raises(SystemExit, match=r"\['cache-k4-s1'\] were trained on another train/validation split"):
        ca.main(argv)
    (out / "cache-k4-s1.json").write_text(json.dumps({**good, "teacher_sha256": "other"}))
    with pytest.raises(SystemExit, match=r"\['cache-k4-s1'\] were distilled from another teacher"):
        ca.main(argv)
    assert not (tmp_path / "runs").exists()  # nothing trained: cache-k1-s0 comes first in the plan


def test_max_minutes_starts_no_run_once_spent_and_the_rest_stay_missing(tmp_path, monkeypatch, capsys):
    # Each run takes 30 fake minutes: with --max-minutes 45 the second run starts (30 < 45), the third does not.
    now = [0.0]
    started: list[tuple[str, int]] = []

    def fake_run(row, seed, teacher, out, runs, args):
        started.append((row, seed))
        now[0] += 30 * 60

    budget = ca.RunBudget
    monkeypatch.setattr(ca, "RunBudget", lambda minutes: budget(minutes, clock=lambda: now[0]))
    monkeypatch.setattr(
        ca, "teacher_part", lambda args, out, runs, progress: {"sha256": "abc", "checkpoint": "t"}
    )
    monkeypatch.setattr(ca, "run_one", fake_run)
    out = tmp_path / "results" / ca.NAME
    out.mkdir(parents=True)
    stored = {"row": "online", "seed": 0, "teacher_sha256": "abc", "split_seed": 0, "test_accuracy": 0.9}
    stored.update(wall_seconds=60.0, train_seconds=50.0, machine_id="m", finished="2026-12-05T20:00:00")
    stored.update(command="python x", epochs=30, student="resnet20", precision="bf16", teacher_accuracy=0.81)
    (out / "online-s0.json").write_text(json.dumps(stored))  # stored: skipped, costs no budget
    assert ca.main(["--out", str(tmp_path / "results"), "--no-progress", "--max-minutes", "45"]) == 0
    assert started == [("cache-k1", 0), ("cache-k4", 0)]
    printed = capsys.readouterr().out
    left = "cache-k16-s0, online-s1, cache-k1-s1, cache-k4-s1, cache-k16-s1"
    assert f"--max-minutes 45 spent: no new run started ({left} left)" in printed
    assert f"Missing runs: cache-k1-s0, cache-k4-s0, {left}." in printed  # the fake runs stored nothing


@pytest.mark.parametrize("bad", ["0", "-5", "soon"])
def test_max_minutes_must_be_a_positive_number(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        ca.main(["--max-minutes", bad, "--table"])
    assert exc.value.code == 2
    assert "--max-minutes" in capsys.readouterr().err


def test_the_table_takes_the_teachers_accuracy_from_its_checkpoint_when_the_runs_did_not_record_it():
    rec = {"row": "online", "seed": 0, "teacher_sha256": "abc", "split_seed": 0, "test_accuracy": 0.822}
    rec.update(wall_seconds=2671.8, train_seconds=2654.3, machine_id="m", finished="2026-12-05T21:27:00")
    rec.update(command="python x", epochs=30, student="resnet20", precision="bf16", teacher_accuracy=None)
    reused = {"source": "reused checkpoint", "sha256": "abc", "checkpoint_metrics": {"accuracy": 0.8143}}
    assert ca.teacher_accuracy_of(reused) == 0.8143 and ca.teacher_accuracy_of({"test_accuracy": 0.8}) == 0.8
    assert "Teacher: sha256 abc, test accuracy 81.43%." in ca.table({"online-s0": rec}, (0,), reused)
    other = {**reused, "sha256": "other"}  # not the runs' teacher: its accuracy is not theirs
    assert "test accuracy not recorded." in ca.table({"online-s0": rec}, (0,), other)
    assert "test accuracy 80.00%." in ca.table({"online-s0": {**rec, "teacher_accuracy": 0.8}}, (0,), other)


def test_one_seed_shows_no_spread_and_gains_carry_their_sign():
    assert ca._mean_sd([82.2]) == "82.20" and ca._mean_sd([0.06], signed=True) == "+0.06"
    assert ca._mean_sd([-0.27, 0.13], signed=True) == "-0.07 ± 0.28"


def test_each_row_says_how_many_times_faster_than_online_its_whole_run_is():
    base = dict(teacher_sha256="abc", split_seed=0, train_seconds=1.0, machine_id="m", teacher_accuracy=0.8)
    base.update(
        command="python x", epochs=30, student="resnet20", precision="bf16", finished="2026-12-05T21:27"
    )
    walls = {("online", 0): 2700.0, ("online", 1): 2580.0, ("cache-k4", 0): 1800.0, ("cache-k4", 1): 1720.0}
    records = {
        f"{row}-s{seed}": {**base, "row": row, "seed": seed, "test_accuracy": 0.8, "wall_seconds": wall}
        for (row, seed), wall in walls.items()
    }
    lines = ca.table(records, (0, 1)).splitlines()
    (online,) = [ln for ln in lines if ln.startswith("| online |")]
    (k4,) = [ln for ln in lines if ln.startswith("| cache, K = 4 |")]
    assert "| 44.0 | 1.00x |" in online and "| 29.3 | 1.50x |" in k4  # 2640 s / 1760 s, means over seeds
    only_cache = {k: v for k, v in records.items() if v["row"] != "online"}
    (k4,) = [ln for ln in ca.table(only_cache, (0, 1)).splitlines() if ln.startswith("| cache, K = 4 |")]
    assert "| 29.3 | n/a |" in k4
