"""The compress benchmark's quick form: a whole MNIST distil -> prune -> int8 pipeline and its derived ratios."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from compress import add_paired, derive  # noqa: E402


def test_quick_compress_benchmark_records_models_and_verdicts(tmp_path, data_root):
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    before = results_md.read_bytes() if results_md.exists() else None
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "compress.py"),
        "--quick",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    env = {**os.environ, "KDKIT_DATA": str(data_root)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "compress_quick.json").read_text())
    task = doc["tasks"]["mnist"]
    models = task["compress"]["models"]
    assert set(models) == {"teacher", "student", "pruned_student", "int8_student"}
    d = task["derived"]
    # Pruning removed about half of the student's FLOPs; the ratios are computed from the measured rows.
    assert 0.45 <= d["prune"]["achieved"] <= 0.6
    assert models["pruned_student"]["flops"] < 0.6 * models["student"]["flops"]
    sp = d["int8"]["speed"]["t1"]
    assert sp["speedup"] == sp["fp32_ms"] / sp["int8_ms"] > 0
    paired = d["paired"]["t1"]
    assert set(paired["median_ms"]) == set(models) and all(v > 0 for v in paired["median_ms"].values())
    assert paired["int8_speedup"] > 0 and paired["teacher_over_int8"] > 0
    assert (
        d["final_vs_teacher"]["params_ratio"]
        == models["teacher"]["params"] / models["int8_student"]["params"]
    )
    assert proc.stdout.strip().splitlines()[-1].startswith("mnist: int8 ")
    assert (
        results_md.read_bytes() if results_md.exists() else None
    ) == before  # --quick leaves RESULTS.md alone


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
    assert d["int8"]["speed"]["t1"]["speedup"] == 2.5 and d["int8"]["met"]
    assert abs(d["int8"]["accuracy_drop_points"] - 0.3) < 1e-9
    assert abs(d["prune"]["accuracy_drop_points"] - 0.5) < 1e-9 and d["prune"]["met"]
    assert d["final_vs_teacher"]["latency_ratio"]["ort_b64_t1"] == 10.0
    summary["models"]["int8_student"]["accuracy"] = 0.96  # 1.5 points below the fp32 pruned model
    assert not derive(summary)["int8"]["met"]
    summary["models"]["int8_student"]["latency_ms"] = lat(6.0)  # 1.67x: too slow
    summary["models"]["int8_student"]["accuracy"] = 0.975
    assert not derive(summary)["int8"]["met"]
    # The verdict is judged on the alternately timed ratios when they exist: every thread count must reach 2x.
    summary["models"]["int8_student"]["latency_ms"] = lat(4.0)
    d = derive(summary)
    assert d["int8"]["met"]
    add_paired(d, {"batch": 64, "rounds": 3, "t1": {"int8_speedup": 2.4}, "t2": {"int8_speedup": 1.9}})
    assert d["int8"]["min_paired_speedup"] == 1.9 and not d["int8"]["met"]
    add_paired(d, {"batch": 64, "rounds": 3, "t1": {"int8_speedup": 2.4}, "t2": {"int8_speedup": 2.1}})
    assert d["int8"]["met"]
