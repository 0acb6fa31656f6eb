"""The quick speed benchmark runs end to end and records all four variants (no assertions on speed itself)."""

import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    # --quick writes only its own JSON: the RESULTS.md section belongs to the full benchmark.
    assert _stat(results_md) == before
