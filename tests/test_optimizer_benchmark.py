"""The optimizer-kernel benchmark runs end to end on tiny settings and records every case (no speed assertions)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_optimizer_benchmark_records_every_kernel_and_both_end_to_end_runs(tmp_path, bench):
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    before = results_md.read_bytes()
    args = ("--rounds", "1", "--steps", "2", "--epochs", "1", "--train-limit", "1024")
    proc = bench("optimizer_step.py", *args, "--out", tmp_path, "--no-results-md")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results_md.read_bytes() == before  # --no-results-md leaves RESULTS.md alone

    doc = json.loads((tmp_path / "optimizer_step.json").read_text())
    cases = {(r["model"], r["optimizer"], r["impl"], r["threads"]) for r in doc["steps_ms"]}
    assert len(cases) == 2 * 2 * 3 * 2 == len(doc["steps_ms"])  # models x optimizers x kernels x threads
    assert all(r["ms"] > 0 and len(r["rounds_ms"]) == 1 for r in doc["steps_ms"])
    e2e = doc["end_to_end"]
    assert e2e["train_limit"] == 1024 and e2e["train"]["optimizer"] == "adamw"
    assert {k: len(v) for k, v in e2e["runs"].items()} == {"foreach": 2, "fused": 2}
    assert all(s > 0 for v in e2e["runs"].values() for s in v)
    assert e2e["speedup"] == min(e2e["runs"]["foreach"]) / min(e2e["runs"]["fused"])
    assert "| mnist mlp 800-800 | adamw | 1 |" in proc.stdout
