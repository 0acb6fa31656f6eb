"""The compress benchmark's quick form: a whole MNIST distil -> prune -> int8 pipeline and its derived ratios."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from compress import add_paired, derive, markdown  # noqa: E402


def test_quick_compress_benchmark_records_models_and_verdicts(tmp_path, bench):
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    before = results_md.read_bytes() if results_md.exists() else None
    args = ["--quick", "--out", tmp_path, "--runs-dir", tmp_path / "runs", "--no-progress"]
    proc = bench("compress.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "compress_quick.json").read_text())
    task = doc["tasks"]["mnist"]
    models = task["compress"]["models"]
    assert list(models) == [
        "teacher",
        "student",
        "student_int8",
        "student_int8_qat",
        "pruned_student",
        "int8_student",
        "int8_student_qat",
    ]
    d = task["derived"]
    # Pruning removed about half of the student's FLOPs; the ratios are computed from the measured rows.
    assert 0.45 <= d["prune"]["achieved"] <= 0.6
    assert models["pruned_student"]["flops"] < 0.6 * models["student"]["flops"]
    # One int8 check per quantized model, each against the fp32 model it was made from; the target
    # is judged on the unpruned student's.
    assert d["int8_target"] == "student_int8" and list(d["int8"]) == ["student_int8", "int8_student"]
    for key, fp32 in (("student_int8", "student"), ("int8_student", "pruned_student")):
        sp = d["int8"][key]["speed"]["t1"]
        assert d["int8"][key]["fp32"] == fp32
        assert sp["fp32_ms"] == models[fp32]["latency_ms"]["ort_b64_t1"]
        assert sp["speedup"] == sp["fp32_ms"] / sp["int8_ms"] > 0
    assert d["paired"]["method"].startswith("alternating models, one run each per round, 1 thread")
    assert [k for k in d["paired"] if k.startswith("t")] == ["t1"]  # more threads: from the latency table
    paired = d["paired"]["t1"]
    assert set(paired["median_ms"]) == set(models) and all(v > 0 for v in paired["median_ms"].values())
    assert set(paired["int8_speedup"]) == {"student_int8", "int8_student"}
    assert all(v > 0 for v in paired["int8_speedup"].values()) and paired["teacher_over_int8"] > 0
    assert (
        d["final_vs_teacher"]["params_ratio"]
        == models["teacher"]["params"] / models["int8_student"]["params"]
    )
    assert proc.stdout.strip().splitlines()[-1].startswith("mnist: int8 student ")
    assert (
        results_md.read_bytes() if results_md.exists() else None
    ) == before  # --quick leaves RESULTS.md alone
    # The RESULTS.md section renders from the same document: a line per int8 model, with its paired ratio.
    md = markdown(doc)
    assert md.count("| teacher |") == 1 and "| int8 student |" in md and "| int8 pruned student |" in md
    r = paired["int8_speedup"]["student_int8"]
    assert "- int8 student against its fp32 model (the issue's target model)" in md and f"**{r:.2f}x**" in md
    assert "- int8 pruned student against its fp32 model, ONNX" in md
    # Quantization-aware distillation (the config's qat section): each QAT int8 row against its post-training one.
    assert list(d["qat"]) == ["student_int8_qat", "int8_student_qat"]
    for key, ptq in (("student_int8_qat", "student_int8"), ("int8_student_qat", "int8_student")):
        q = d["qat"][key]
        assert q["ptq"] == ptq and q["accuracy"] == models[key]["accuracy"]
        assert q["gain_over_ptq_points"] == round(
            100 * (models[key]["accuracy"] - models[ptq]["accuracy"]), 2
        )
        assert q["train_seconds"] > 0
        assert f"int8 pruned student (QAT) {100 * models['int8_student_qat']['accuracy']:.2f}% against" in md
    assert "- Quantization-aware distillation (1 epoch(s), sgd lr 0.002" in md
    # Each task records the machine its latencies were measured on; a task timed elsewhere is labelled so.
    assert doc["tasks"]["mnist"]["machine_id"].startswith(f"{doc['machine']['nproc']} cores, ")
    assert "measured on" not in md
    elsewhere = {
        **doc,
        "tasks": {"mnist": {**doc["tasks"]["mnist"], "machine_id": "2 cores, Other CPU, torch t"}},
    }
    assert "; measured on 2 cores, Other CPU, torch t)" in markdown(elsewhere)

    # --recompress compresses the finished run again (fresh timings) without training its teacher or student.
    summary = tmp_path / "runs" / "mnist" / "compress" / "summary.json"
    first = json.loads(summary.read_text())
    again = bench("compress.py", *args, "--recompress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "--recompress: compressing" in again.stdout + again.stderr
    assert "[teacher] epoch" not in again.stdout + again.stderr
    second = json.loads(summary.read_text())
    assert list(second["models"]) == list(first["models"])
    assert second["models"]["student"]["accuracy"] == first["models"]["student"]["accuracy"]  # same student
    assert second["created"] > first["created"]  # written anew
    doc2 = json.loads((tmp_path / "compress_quick.json").read_text())
    assert doc2["tasks"]["mnist"]["recompressed"] is True and "--recompress" in doc2["command"].split()


def _row(acc, params, flops, mb, lat):
    return {"accuracy": acc, "params": params, "flops": flops, "onnx_mb": mb, "latency_ms": lat}


def test_derive_checks_the_targets_from_the_rows():
    lat = lambda f: {"ort_b64_t1": f, "ort_b64_t2": f / 2, "eager_b64_t1": 2 * f, "eager_b64_t2": f}  # noqa: E731
    summary = {
        "config": {"threads": [1, 2]},
        "prune": {"target": 0.5, "achieved": 0.51, "by": "flops"},
        "models": {
            "teacher": _row(0.99, 1000, 4000, 4.0, lat(40.0)),
            "student": _row(0.98, 500, 2000, 2.0, lat(20.0)),
            "pruned_student": _row(0.975, 250, 1000, 1.0, lat(10.0)),
            "int8_student": _row(0.972, 250, 1000, 0.3, lat(4.0)),
        },
    }
    d = derive(summary)
    assert list(d["int8"]) == ["int8_student"] and d["int8_target"] == "int8_student"  # no unpruned int8 row
    i8 = d["int8"]["int8_student"]
    assert i8["speed"]["t1"]["speedup"] == 2.5 and i8["met"]
    assert abs(i8["accuracy_drop_points"] - 0.3) < 1e-9
    assert abs(d["prune"]["accuracy_drop_points"] - 0.5) < 1e-9 and d["prune"]["met"]
    assert d["final_vs_teacher"]["latency_ratio"]["ort_b64_t1"] == 10.0
    summary["models"]["int8_student"]["accuracy"] = 0.96  # 1.5 points below the fp32 pruned model
    assert not derive(summary)["int8"]["int8_student"]["met"]
    summary["models"]["int8_student"]["latency_ms"] = lat(6.0)  # 1.67x: too slow
    summary["models"]["int8_student"]["accuracy"] = 0.975
    assert not derive(summary)["int8"]["int8_student"]["met"]
    # The unpruned student's int8 model is checked against the unpruned student, and is the target's model.
    summary["models"]["student_int8"] = _row(0.979, 500, 2000, 0.6, lat(8.0))
    d = derive(summary)
    assert d["int8_target"] == "student_int8" and d["int8"]["student_int8"]["speed"]["t1"]["speedup"] == 2.5
    assert d["int8"]["student_int8"]["met"] and not d["int8"]["int8_student"]["met"]
    # The verdicts are judged on the alternately timed ratios when they exist: every thread count must reach 2x.
    summary["models"]["int8_student"]["latency_ms"] = lat(4.0)
    d = derive(summary)
    assert d["int8"]["int8_student"]["met"]
    t = lambda a, b: {"int8_speedup": {"student_int8": a, "int8_student": b}}  # noqa: E731
    add_paired(d, {"batch": 64, "rounds": 3, "t1": t(2.6, 2.4), "t2": t(2.2, 1.9)})
    assert d["int8"]["int8_student"]["min_paired_speedup"] == 1.9 and not d["int8"]["int8_student"]["met"]
    assert d["int8"]["student_int8"]["min_paired_speedup"] == 2.2 and d["int8"]["student_int8"]["met"]
    add_paired(d, {"batch": 64, "rounds": 3, "t1": t(2.6, 2.4), "t2": t(2.2, 2.1)})
    assert d["int8"]["int8_student"]["met"]
    # Paired at 1 thread only: 2 threads are judged on the latency table (here 2.5x for both models).
    add_paired(d, {"batch": 64, "rounds": 3, "t1": t(2.6, 1.9)})
    assert (
        d["int8"]["student_int8"]["judged_speedups"] == {"t1": 2.6, "t2": 2.5}
        and d["int8"]["student_int8"]["met"]
    )
    assert d["int8"]["int8_student"]["min_paired_speedup"] == 1.9 and not d["int8"]["int8_student"]["met"]
