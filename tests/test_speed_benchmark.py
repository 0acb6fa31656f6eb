"""The quick speed benchmark runs end to end and records all four variants (no assertions on speed itself)."""

import json
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import speed  # noqa: E402


def _stat(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else None


def test_quick_speed_benchmark_records_all_variants(tmp_path, bench):
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    before = _stat(results_md)
    proc = bench("speed.py", "--quick", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("ratios:"), last
    for name in ("d/a", "b/d"):
        values = re.findall(rf"{re.escape(name)}=([^\s|]+)", last)
        assert values, last
        for v in values:
            assert math.isfinite(float(v)) and float(v) > 0, last

    doc = json.loads((tmp_path / "speed_quick.json").read_text())
    assert doc["tasks"], doc
    for task in doc["tasks"].values():
        runs = task["runs"]
        assert set(runs) == {"a", "b", "c", "d"}, runs
        for r in runs.values():
            assert r["samples_per_second"] > 0, r
        steps = {r["steps"] for r in runs.values()}
        assert len(steps) == 1 and steps.pop() > 0, runs
        assert task["cache"]["build_seconds"] > 0
        assert task["peaks"]["bf16_gflops"] > 0 and task["peaks"]["fp32_gflops"] > 0
        # Issue 29: the isolation rounds time (b) -> (e) bf16 -> (f) in-memory data -> (c) -> (d) cache.
        iso = task["isolation"]
        assert set(iso["runs"]) == set("befcd") and set(iso["ratios"]) == {"b/e", "e/f", "f/c", "c/d"}
        assert iso["runs"]["b"]["precision"] == "fp32" and iso["runs"]["f"]["num_workers"] == 0
        assert iso["runs"]["e"]["precision"] == ("bf16" if doc["machine"]["bf16_native"] else "fp32")
        b_over_d = iso["runs"]["b"]["seconds"] / iso["runs"]["d"]["seconds"]
        product = math.prod(iso["ratios"].values())
        # --quick times one round: the median ratios are that round's, and they multiply to (b)/(d) exactly.
        assert iso["rounds"] == 1 and product == pytest.approx(b_over_d, rel=1e-9)
    section = speed.markdown(doc)
    assert "Where the gap between (b) and (d) comes from" in section and "| b/e: precision |" in section
    # --quick writes only its own JSON: the RESULTS.md section belongs to the full benchmark.
    assert _stat(results_md) == before


def test_reused_teacher_retrained_in_place_is_acquired_again(tmp_path, monkeypatch):
    """A reused teacher checkpoint overwritten by another benchmark must not keep its old accuracy parts."""
    import argparse
    import sys

    import torch

    from kdkit.checkpoint import save_checkpoint
    from kdkit.models import create

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    gen = torch.Generator().manual_seed(0)
    data = speed.TaskData(
        train_x=torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=gen),
        train_y=torch.randint(0, 3, (40,), generator=gen),
        test_x=torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8, generator=gen),
        test_y=torch.randint(0, 3, (200,), generator=gen),
        mean=[0.5],
        std=[0.25],
        classes=["a", "b", "c"],
    )
    base = tmp_path / "runs" / "teacher"
    meta = {
        "kind": "model",
        "role": "teacher",
        "model": {"name": "mlp", "hidden": [16]},
        "dataset": "mnist",
        "num_classes": 3,
        "in_channels": 1,
        "image_size": 8,
        "normalize": {"mean": [0.5], "std": [0.25]},
    }

    def write_teacher(seed: int) -> None:
        torch.manual_seed(seed)
        model = create("mlp", num_classes=3, in_channels=1, image_size=8, hidden=[16])
        save_checkpoint(base, model.state_dict(), meta)

    ckpt = base.with_suffix(".safetensors")
    monkeypatch.setattr(speed, "find_teacher_checkpoint", lambda task, root: ckpt)
    parts = speed.Parts(tmp_path / "parts")
    args = argparse.Namespace(quick=False, teacher_epochs={"mnist": 1}, no_progress=True)
    said: list[str] = []
    task = speed.TASKS["mnist"]

    write_teacher(1)
    first = speed.get_teacher(task, data, args, tmp_path, parts, said.append)
    info1 = dict(data.teacher_info)
    assert info1["weights_sha256"] == speed.file_sha256(ckpt)

    said.clear()
    speed.get_teacher(task, data, args, tmp_path, parts, said.append)
    assert any("reused" in s for s in said) and not any("other weights" in s for s in said)

    write_teacher(2)  # retrained in place, as the Hinton benchmark does to its teacher-s0
    said.clear()
    second = speed.get_teacher(task, data, args, tmp_path, parts, said.append)
    assert any("holds other weights than those recorded" in s for s in said), said
    info2 = data.teacher_info
    assert info2["weights_sha256"] == speed.file_sha256(ckpt) != info1["weights_sha256"]
    assert info2["test_accuracy"] == speed.test_accuracy(second, data)
    assert not torch.equal(first.features[0].weight, second.features[0].weight)

    # Accuracy parts are keyed by the teacher's weights: one made with the old teacher is measured again.
    parts.run(
        "mnist-acc-d",
        lambda: {"epochs": 3, "seed": 1, "teacher_sha256": info1["weights_sha256"]},
        said.append,
    )
    said.clear()
    redone = parts.run(
        "mnist-acc-d",
        lambda: {"epochs": 3, "seed": 1, "teacher_sha256": info2["weights_sha256"]},
        said.append,
        expect={"epochs": 3, "seed": 1, "teacher_sha256": info2["weights_sha256"]},
    )
    assert any("other settings" in s for s in said) and redone["teacher_sha256"] == info2["weights_sha256"]


def test_timings_from_another_machine_are_measured_again(tmp_path, monkeypatch):
    """A timed part is reused only on the machine that measured it; a result that is not a timing is kept."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    parts = speed.Parts(tmp_path / "parts")
    said: list[str] = []
    calls = {"timing": 0, "acc": 0}

    def timing() -> dict:
        calls["timing"] += 1
        return {"seconds": float(calls["timing"])}

    def accuracy() -> dict:
        calls["acc"] += 1
        return {"acc": 0.9}

    monkeypatch.setattr(speed, "machine_id", lambda: "2 cores, CPU one, torch x")
    assert parts.run("t", timing, said.append, timed=True)["seconds"] == 1.0
    parts.run("acc", accuracy, said.append)
    assert (
        json.loads((tmp_path / "parts" / "t.json").read_text())["machine_id"] == "2 cores, CPU one, torch x"
    )
    assert parts.run("t", timing, said.append, timed=True)["seconds"] == 1.0  # same machine: reused
    assert calls["timing"] == 1

    monkeypatch.setattr(speed, "machine_id", lambda: "2 cores, CPU two, torch x")
    said.clear()
    again = parts.run("t", timing, said.append, timed=True)
    assert again["seconds"] == 2.0 and again["machine_id"] == "2 cores, CPU two, torch x"
    assert any("measured on another machine (2 cores, CPU one, torch x" in s for s in said), said
    parts.run("acc", accuracy, said.append)  # not a timing: reused wherever it was made
    assert calls == {"timing": 2, "acc": 1}

    # A part stored before machines were recorded is a timing of unknown origin: measured again.
    (tmp_path / "parts" / "old.json").write_text(json.dumps({"seconds": 9.0}))
    said.clear()
    assert parts.run("old", timing, said.append, timed=True)["seconds"] == 3.0
    assert any("not recorded" in s for s in said), said


def test_teacher_checkpoint_flag_is_checked_before_anything_runs(tmp_path):
    args = speed.parse_args(["--cifar-teacher", str(tmp_path / "teacher")])
    with pytest.raises(SystemExit, match=r"--cifar-teacher .*teacher\.safetensors and teacher\.json"):
        speed.teacher_checkpoint_arg(speed.TASKS["cifar"], args)
    (tmp_path / "teacher.safetensors").write_bytes(b"x")
    (tmp_path / "teacher.json").write_text("{}")
    # Every spelling names the same checkpoint; the other task keeps searching.
    assert speed.teacher_checkpoint_arg(speed.TASKS["cifar"], args) == tmp_path / "teacher.safetensors"
    for name in ("teacher.safetensors", "teacher.json"):
        args = speed.parse_args(["--cifar-teacher", str(tmp_path / name)])
        assert speed.teacher_checkpoint_arg(speed.TASKS["cifar"], args) == tmp_path / "teacher.safetensors"
    assert speed.teacher_checkpoint_arg(speed.TASKS["mnist"], args) is None
