"""The strategies benchmark in --quick mode: every row runs, reports against its baseline, and resumes."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_strategies_benchmark_writes_every_row_and_skips_finished_ones(tmp_path, bench):
    results_md = (ROOT / "benchmarks" / "RESULTS.md").read_bytes()
    args = ["--quick", "--out", tmp_path / "results", "--workdir", tmp_path / "runs", "--no-progress"]
    proc = bench("strategies.py", *args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results" / "strategies_quick.json").read_text())
    rows = doc["rows"]
    assert {"ensemble", "semi_supervised"} <= set(rows)
    per_row = sorted(p.stem for p in (tmp_path / "results" / "strategies_quick").glob("*.json"))
    assert per_row == sorted(rows)
    for name, r in rows.items():
        assert r["command"].startswith("python benchmarks/strategies.py --quick") and r["wall_seconds"] > 0
        assert r["machine"]["nproc"] >= 1 and r["quick"] is True
        for e in [r["baseline"], *r["rows"]]:
            assert e["test_errors"] == round((1 - e["test_accuracy"]) * 10000), (name, e)
            assert e["seconds"] >= 0 and e["label"]
    ens = rows["ensemble"]
    assert len(ens["rows"]) == 4 and len(ens["teachers"]) == 4
    # The quick ensemble's teachers learned something (1 epoch on 2,500 images): far better than chance.
    assert all(t["test_errors"] < 7000 for t in ens["teachers"])
    semi = rows["semi_supervised"]
    assert [e["label"].split(":")[0] for e in semi["rows"]][:1] == ["teacher-labelled"]
    assert semi["baseline"]["label"].startswith("student on the 200 labeled")
    assert "<!-- strategies:start -->" in proc.stdout and "| variant |" in proc.stdout
    # A second invocation reuses every row: no training at all.
    again = bench("strategies.py", *args, timeout=120)
    assert again.returncode == 0 and "epoch" not in again.stderr + again.stdout.split("<!--")[0]
    assert json.loads((tmp_path / "results" / "strategies_quick.json").read_text()) == doc
    assert (ROOT / "benchmarks" / "RESULTS.md").read_bytes() == results_md  # quick never touches it
