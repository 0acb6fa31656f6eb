"""The CIFAR-10 methods benchmark and its table: run order, shared overrides, the quick mode end to end,
resumable parts, aggregation and rendering."""

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import methods_cifar10 as mb  # noqa: E402
import methods_table as mt  # noqa: E402


def _stat(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else None


def test_plan_runs_scratch_and_kd_first_then_every_method_then_the_next_seed():
    runs = mb.plan(mb.ALL, [0, 1])
    n = len(mb.ALL)
    assert (
        n == 17 and runs[:2] == [("scratch", 0), ("kd", 0)] and runs[n : n + 2] == [("scratch", 1), ("kd", 1)]
    )
    assert [m for m, s in runs if s == 0] == mb.ALL and len(runs) == 2 * n
    assert mb.plan(["fsp", "kd"], [1]) == [("kd", 1), ("fsp", 1)]


def test_every_run_overrides_the_same_budget_and_scales_the_epoch_windows():
    setup = mb.Setup(epochs=5, student="resnet8", batch_size=64, teacher_sha256="x", quick=False)
    cfgs = {}
    for method in mb.ALL:
        cfg, over = mb.run_config(method, 1, setup, Path("/t/teacher"), progress=False)
        cfgs[method] = cfg
        assert cfg.seed == 1 and cfg.student.model.name == "resnet8"
        # Seed 1 still uses the teacher's split (seed 0): no seed validates on images the teacher trained on.
        assert cfg.data.split_seed == 0 and over["data.split_seed"] == 0
        assert (cfg.student.train.epochs, cfg.student.train.batch_size) == (5, 64)
        assert (
            cfg.data.dataset == "cifar10-jpg" and cfg.data.val_size == 5000 and cfg.data.train_limit is None
        )
        assert cfg.student.train.augment.crop_padding == 4 and cfg.student.train.augment.flip
        assert cfg.phases == (["scratch"] if method == "scratch" else ["distill"])
        assert cfg.teacher.checkpoint == (None if method == "scratch" else "/t/teacher")
        assert over["config"] == f"configs/cifar10/{'kd' if method == 'scratch' else method}.yaml"
        # The teacher's recipe in the file is untouched (the YAML anchor is not shared after loading).
        assert cfg.teacher.train.epochs == 30 and cfg.teacher.train.batch_size == 128
    # Windows are scaled by 5/30: FSP's hint stage, DKD's warm-up, the paraphraser's epochs.
    fsp, ce = cfgs["fsp"].distill.terms
    assert fsp.stop_epoch == pytest.approx(0.5) and ce.start_epoch == pytest.approx(0.5)
    (dkd,) = [t for t in cfgs["dkd"].distill.terms if t.loss == "dkd"]
    assert dkd.warmup_epochs == pytest.approx(20 * 5 / 30, abs=1e-4)
    assert [t.stop_epoch for t in cfgs["ab"].distill.terms] == [pytest.approx(0.5)] * 3 + [None]
    (ft,) = [t for t in cfgs["ft"].distill.terms if t.loss == "factor_transfer"]
    assert ft.options["paraphraser_epochs"] == 1 and ft.options["paraphraser_lr"] == 0.01
    # Everything else is the config's own: weights, options, teacher outputs.
    assert [t.weight for t in cfgs["at"].distill.terms] == [1.0, 1000.0, 1000.0, 1000.0]
    assert cfgs["crd"].distill.terms[1].options == {"nce_k": 16384}
    assert all(c.distill.teacher_outputs == "online" for c in cfgs.values())


def test_a_stored_run_tells_which_split_it_used():
    # Runs stored before the split was pinned record only their seed, and their split followed it.
    assert mb.split_seed_of({"seed": 1, "overrides": {"seed": 1}}) == 1
    assert mb.split_seed_of({"seed": 0, "overrides": {"seed": 0}}) == 0
    assert mb.split_seed_of({"seed": 2, "overrides": {"seed": 2, "data.split_seed": 0}}) == 0


def test_a_stored_run_made_on_another_split_is_refused_before_anything_runs(tmp_path):
    base = tmp_path / "teacher-run" / "checkpoints" / "teacher"
    base.parent.mkdir(parents=True)
    base.with_suffix(".safetensors").write_bytes(b"weights")
    base.with_suffix(".json").write_text("{}")
    setup = mb.Setup(
        mb.DEFAULT_EPOCHS, "resnet8", 128, mb.file_sha256(base.with_suffix(".safetensors")), False
    )
    stored = tmp_path / "results" / mb.NAME / "kd-s1.json"
    stored.parent.mkdir(parents=True)
    record = {"name": "kd-s1", "method": "kd", "seed": 1, "setup": mb.asdict(setup), "overrides": {"seed": 1}}
    stored.write_text(json.dumps(record))
    argv = ["--teacher-checkpoint", str(base), "--out", str(tmp_path / "results")]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--methods", "kd", "--seeds", "1", "--no-progress"]
    with pytest.raises(SystemExit, match=r"\['kd-s1'\] were trained on another train/validation split"):
        mb.main(argv)
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_quick_benchmark_end_to_end_and_parts_are_skipped_when_run_again(tmp_path, data_root, bench):
    if not (data_root / "cifar10-jpg.tar.gz").is_file():
        pytest.skip("cifar10-jpg.tar.gz not found")
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    before = _stat(results_md)
    args = ["--quick", "--out", tmp_path / "results", "--runs-dir", tmp_path / "runs", "--no-progress"]
    proc = bench("methods_cifar10.py", *args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results" / "methods_cifar10_quick.json").read_text())
    assert list(doc["rows"]) == ["scratch", "kd", "ft"] and doc["missing"] == []
    assert doc["teacher"]["source"] == "trained here with kdkit" and doc["teacher"]["recipe"]["epochs"] == 1
    for method, row in doc["rows"].items():
        assert 0 <= row["accuracy"]["mean"] <= 1 and row["accuracy"]["n"] == 1
        assert row["wall_minutes"] > 0
        run = doc["runs"][f"{method}-s0"]
        assert run["model"]["test_size"] == 200 and run["model"]["steps"] == 2  # 256 images, batch 128
        assert run["command"].startswith("python ") and "--quick" in run["command"]
    assert doc["rows"]["kd"]["delta_vs_scratch"] == pytest.approx(
        doc["rows"]["kd"]["accuracy"]["mean"] - doc["rows"]["scratch"]["accuracy"]["mean"]
    )
    assert doc["runs"]["ft-s0"]["model"]["pretraining"][0]["stage"] == "paraphraser"
    assert doc["kd_target"]["target_points"] == 0.5
    per_run = sorted(p.name for p in (tmp_path / "results" / "methods_cifar10_quick").glob("*.json"))
    assert per_run == ["ft-s0.json", "kd-s0.json", "scratch-s0.json", "teacher.json"]
    assert "| kd |" in proc.stdout and "Missing runs: none." in proc.stdout
    assert _stat(results_md) == before  # --quick never touches RESULTS.md

    # A second invocation trains nothing; a lost per-run result is run again (resumed from its run dir).
    (tmp_path / "results" / "methods_cifar10_quick" / "kd-s0.json").unlink()
    again = bench("methods_cifar10.py", *args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[teacher]" not in again.stderr and "[student_scratch]" not in again.stderr
    assert "[student_kd] finished earlier" in again.stderr
    doc2 = json.loads((tmp_path / "results" / "methods_cifar10_quick.json").read_text())
    assert (
        doc2["runs"]["kd-s0"]["resumed"] and doc2["rows"]["kd"]["accuracy"] == doc["rows"]["kd"]["accuracy"]
    )

    # Another budget in the same results directory is refused rather than mixed into the table.
    other = bench("methods_cifar10.py", *args, "--epochs", "2", timeout=300)
    assert other.returncode != 0 and "another setup" in other.stderr


def test_missing_runs_count_todays_methods_in_a_full_table_and_only_the_plan_in_a_quick_one():
    doc = json.loads((ROOT / "benchmarks/results/methods_2seeds/methods_cifar10.json").read_text())
    assert doc["missing"] == []  # stored before dist, ab and ofd existed
    full = mt.markdown(doc, doc)
    third = ", ".join(f"{m}-s2" for m in mb.ALL)  # the third seed the issue asks of every method
    assert f"Missing runs: dist-s0, ab-s0, ofd-s0, dist-s1, ab-s1, ofd-s1, {third}." in full
    assert "with no run against this teacher: dist, ab, ofd." in full
    quick = {**doc, "setup": {**doc["setup"], "quick": True}}
    text = mt.markdown(doc, quick)
    assert "Missing runs: none." in text and "with no run against this teacher" not in text


def test_the_gain_column_says_whether_the_gain_exceeds_twice_its_spread():
    def row(mean, std):
        return {"accuracy": {"mean": mean, "std": std, "n": 2 if std is not None else 1}}

    scratch = row(0.75, 0.003)
    clear = {**row(0.78, 0.004), "delta_vs_scratch": 0.03}
    assert mt.gain_clears_spread(clear, scratch) == "yes (2 x 0.50)"  # 3.0 > 2 x hypot(0.3, 0.4) = 1.0
    close = {**row(0.7590, 0.004), "delta_vs_scratch": 0.009}
    assert mt.gain_clears_spread(close, scratch) == "no (2 x 0.50)"  # 0.9 < 1.0
    assert mt.gain_clears_spread({**row(0.78, None), "delta_vs_scratch": 0.03}, scratch) == "n/a (1 seed)"
    doc = json.loads((ROOT / "benchmarks/results/methods_2seeds/methods_cifar10.json").read_text())
    kd = next(ln for ln in mt.markdown(doc, doc).splitlines() if ln.startswith("| kd |"))
    assert kd.split("|")[5].strip() == mt.gain_clears_spread(doc["rows"]["kd"], doc["rows"]["scratch"])


def test_a_moved_teacher_keeps_its_stored_record_and_is_read_from_where_it_is_now(tmp_path):
    # A results directory made with a teacher trained here, whose run directory is gone (a fresh checkout):
    # the same weights passed from elsewhere keep the stored provenance, and runs read them at the new path.
    base = tmp_path / "kept" / "teacher"
    base.parent.mkdir(parents=True)
    base.with_suffix(".safetensors").write_bytes(b"weights")
    base.with_suffix(".json").write_text("{}")
    out = tmp_path / "results" / mb.NAME
    out.mkdir(parents=True)
    stored = {
        "source": "trained here with kdkit",
        "checkpoint": "gone/checkpoints/teacher",
        "test_accuracy": 0.8,
    }
    stored["sha256"] = mb.file_sha256(base.with_suffix(".safetensors"))
    (out / "teacher.json").write_text(json.dumps(stored))
    args = argparse.Namespace(teacher_checkpoint=str(base))
    rec = mb.teacher_part(args, out, tmp_path / "runs", False)
    assert rec == {**stored, "checkpoint": str(base.resolve())}
    assert json.loads((out / "teacher.json").read_text()) == stored  # the stored record is left as it was
    (base.with_suffix(".safetensors")).write_bytes(b"other weights")  # other weights: a new record
    rec = mb.teacher_part(args, out, tmp_path / "runs", False)
    assert rec["source"] == "reused checkpoint" and rec["sha256"] != stored["sha256"]


def test_the_kept_cifar_teacher_is_the_one_the_3_seed_table_was_made_with():
    kept = ROOT / "benchmarks" / "teachers" / "cifar10-resnet56" / "teacher"
    records = ROOT / "benchmarks" / "results" / "methods_3seeds" / mb.NAME
    sha = mb.file_sha256(kept.with_suffix(".safetensors"))
    for name in ("teacher.json", "teacher_first_training.json"):
        assert json.loads((records / name).read_text())["sha256"] == sha
    runs = [json.loads(p.read_text()) for p in sorted(records.glob("*-s*.json"))]
    assert runs and {r["setup"]["teacher_sha256"] for r in runs} == {sha}
    meta = json.loads(kept.with_suffix(".json").read_text())
    assert meta["metrics"]["accuracy"] == json.loads((records / "teacher.json").read_text())["test_accuracy"]
    assert meta["data_split"]["split_seed"] == mb.TEACHER_SPLIT_SEED


def test_a_diverged_run_is_stored_and_named_in_the_table_not_averaged(tmp_path, monkeypatch):
    def diverge(cfg, run_dir, progress):
        raise mb.NonFiniteLossError(
            "phase 'student_kd': loss term(s) ['fsp'] became non-finite at step 58; lower"
        )

    monkeypatch.setattr(mb, "execute", diverge)
    setup = mb.Setup(mb.DEFAULT_EPOCHS, "resnet8", 128, "abc", False)
    teacher = {"checkpoint": str(tmp_path / "teacher")}
    rec = mb.run_one("fsp", 2, setup, teacher, tmp_path, tmp_path / "runs", False)
    assert json.loads((tmp_path / "fsp-s2.json").read_text()) == rec and "step 58" in rec["diverged"]
    assert (
        mb.run_one("fsp", 2, setup, teacher, tmp_path, tmp_path / "runs", False) == rec
    )  # stored: not again

    def run(method, seed, acc):
        model = {"accuracy": acc, "train_seconds": 60.0}
        return {"name": f"{method}-s{seed}", "method": method, "seed": seed, "model": model}

    finished = [run("scratch", 2, 0.75), run("fsp", 0, 0.46), run("fsp", 1, 0.45)]
    results = [{**r, "wall_seconds": 90.0, "resumed": False} for r in finished] + [rec]
    agg = mt.aggregate(results, [("scratch", 2), ("fsp", 0), ("fsp", 1), ("fsp", 2)])
    assert agg["missing"] == [] and agg["diverged"] == [
        {"name": "fsp-s2", "method": "fsp", "seed": 2, "error": rec["diverged"]}
    ]
    assert agg["rows"]["fsp"]["accuracy"]["n"] == 2 and agg["rows"]["fsp"]["accuracy"]["mean"] == 0.455
    info = {"setup": mb.asdict(setup), "teacher": {"source": "trained here", "model": {"name": "resnet56"}}}
    info["teacher"].update(recipe={"epochs": 10}, wall_seconds=60.0)
    info.update(machines={}, machine={}, precision="bf16", date="2026-12-05", commands=["python x"])
    monkeypatch.setattr(mt, "machines_line", lambda *a: "Machine: test.")
    text = mt.markdown(agg, info)
    assert (
        "Diverged runs (kdkit stopped them when a loss term became non-finite; they are in no mean above): "
        in text
    )
    assert "fsp-s2: phase 'student_kd': loss term(s) ['fsp'] became non-finite at step 58." in text
    assert "fsp-s2" not in text.split("Missing runs:")[1]
    assert "with no run against this teacher" in text and ", fsp" not in text.split("no run against")[1]


def test_the_default_results_directory_is_the_table_of_results_md_and_any_other_stays_out(
    tmp_path, monkeypatch
):
    # The 3-seed table is the `methods` section: its directory (the default --out, however it is spelled)
    # updates RESULTS.md; an --out elsewhere keeps its aggregate to itself.
    monkeypatch.setattr(mb, "ROOT", tmp_path)
    teacher = {"source": "trained here with kdkit", "sha256": "abc", "checkpoint": "t", "test_accuracy": 0.8}
    teacher.update(model={"name": "resnet56"}, recipe={"epochs": 10}, wall_seconds=60.0)
    monkeypatch.setattr(mb, "teacher_part", lambda args, out, runs_dir, progress: teacher)

    def fake_run(method, seed, setup, teacher, out, runs_dir, progress):
        rec = {"name": f"{method}-s{seed}", "method": method, "seed": seed, "setup": mb.asdict(setup)}
        rec.update(overrides={"data.split_seed": 0}, model={"accuracy": 0.75, "train_seconds": 60.0})
        rec.update(wall_seconds=90.0, resumed=False, command="python x", finished="2026-12-05T00:00:00+00:00")
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{rec['name']}.json").write_text(json.dumps(rec))
        return rec

    monkeypatch.setattr(mb, "run_one", fake_run)
    written: list[Path] = []
    monkeypatch.setattr(mb, "update_results_md", lambda section, md, marks: written.append(md))
    assert mb.main(["--methods", "scratch", "--seeds", "0", "--no-progress"]) == 0
    table = tmp_path / "benchmarks" / "results" / mb.MAIN_TABLE
    assert (table / "methods_cifar10" / "scratch-s0.json").is_file() and written == [
        tmp_path / "benchmarks" / "RESULTS.md"
    ]
    assert mb.render_stored(tmp_path / "benchmarks" / "results") == mt.render_table(table)
    spelled = tmp_path / "benchmarks" / "results" / ".." / "results" / mb.MAIN_TABLE
    assert mb.main(["--methods", "scratch", "--seeds", "0", "--out", str(spelled), "--no-progress"]) == 0
    assert len(written) == 2
    other = tmp_path / "elsewhere"
    assert mb.main(["--methods", "scratch", "--seeds", "0", "--out", str(other), "--no-progress"]) == 0
    assert len(written) == 2 and (other / "methods_cifar10.json").is_file()
    assert "| scratch | 75.00% (75.00) | 1 seed |" in mt.render_table(other)


def test_max_minutes_starts_no_run_once_spent(tmp_path, monkeypatch, capsys):
    now = [0.0]
    started: list[str] = []
    teacher = {"source": "trained here with kdkit", "sha256": "abc", "checkpoint": "t", "test_accuracy": 0.8}
    teacher.update(model={"name": "resnet56"}, recipe={"epochs": 10}, wall_seconds=60.0)
    monkeypatch.setattr(mb, "teacher_part", lambda args, out, runs_dir, progress: teacher)

    def fake_run(method, seed, setup, teacher, out, runs_dir, progress):
        started.append(f"{method}-s{seed}")
        now[0] += 10 * 60  # 10 fake minutes a run

    budget = mb.RunBudget
    monkeypatch.setattr(mb, "RunBudget", lambda minutes: budget(minutes, clock=lambda: now[0]))
    monkeypatch.setattr(mb, "run_one", fake_run)
    argv = ["--methods", "scratch", "kd", "dkd", "--seeds", "0", "--out", str(tmp_path), "--no-progress"]
    assert mb.main([*argv, "--max-minutes", "15"]) == 0
    assert started == ["scratch-s0", "kd-s0"]
    assert "--max-minutes 15 spent: no new run started (dkd-s0 left)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        mb.main([*argv, "--max-minutes", "0"])
    assert exc.value.code == 2 and "expected minutes above 0, got 0" in capsys.readouterr().err
