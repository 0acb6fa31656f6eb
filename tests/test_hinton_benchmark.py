"""The shortened Hinton et al. (2015) MNIST benchmark: distillation beats the scratch student."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_hinton_benchmark_distilled_beats_scratch(tmp_path, data_root):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "hinton_mnist.py"),
        "--quick",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "results"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--no-progress",
    ]
    env = {**os.environ, "KDKIT_DATA": str(data_root)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results" / "hinton_mnist_quick.json").read_text())
    rows = doc["rows"]
    teacher, scratch, distilled = (rows[k]["errors"]["mean"] for k in ("teacher", "scratch", "distilled"))
    assert distilled < scratch, rows
    assert teacher < 300 and distilled < 400  # 12 epochs on 10,000 images: about 1.5% and 2% error
    # One JSON per finished run; a second invocation reuses them all and trains nothing.
    per_run = sorted(p.name for p in (tmp_path / "results" / "hinton_mnist_quick").glob("*.json"))
    assert per_run == ["distilled-s0.json", "scratch-s0.json", "teacher-s0.json"]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and "epoch" not in again.stderr
    assert json.loads((tmp_path / "results" / "hinton_mnist_quick.json").read_text())["rows"] == rows
