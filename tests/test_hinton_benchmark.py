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
    # A stored result made by another recipe (its fingerprint differs) is run again; the others are kept.
    res = tmp_path / "results" / "hinton_mnist_quick"
    stale = json.loads((res / "scratch-s0.json").read_text())
    fp = stale["fingerprint"]
    (res / "scratch-s0.json").write_text(json.dumps({**stale, "fingerprint": "another recipe"}))
    kept = {n: (res / n).read_bytes() for n in ("teacher-s0.json", "distilled-s0.json")}
    third = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads((res / "scratch-s0.json").read_text())["fingerprint"] == fp
    assert {n: (res / n).read_bytes() for n in kept} == kept


def test_fingerprint_follows_the_recipe_and_the_teachers_weights(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hinton_mnist import CONFIG, fingerprint

    from kdkit.config import load_config

    base = fingerprint(load_config(CONFIG, []), None)
    assert fingerprint(load_config(CONFIG, ["runtime.progress=false"]), None) == base  # runtime: not a recipe
    assert fingerprint(load_config(CONFIG, ["student.train.epochs=31"]), None) != base
    ckpt = tmp_path / "teacher.safetensors"
    ckpt.write_bytes(b"weights 1")
    cfg = load_config(CONFIG, [f"teacher.checkpoint={json.dumps(str(ckpt))}"])
    first = fingerprint(cfg, ckpt)
    ckpt.write_bytes(b"weights 2")
    assert fingerprint(cfg, ckpt) != first
