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


def _rec(seed, base_errors, kd_errors):
    def entry(label, errors):
        return {
            "label": label,
            "test_errors": errors,
            "test_accuracy": 1 - errors / 10000,
            "seconds": 10.0 + seed,
        }

    return {
        "row": "toy",
        "seed": seed,
        "baseline": entry("scratch (baseline)", base_errors),
        "rows": [entry("kd", kd_errors)],
        "command": "python benchmarks/strategies.py" + (f" --seeds 0 {seed}" if seed else ""),
        "machine": {"nproc": 2, "cpu": "cpu", "torch": "2.13.0"},
        "date": f"2026-11-2{seed}T00:00:00+00:00",
        "wall_seconds": 60.0,
    }


def test_several_seeds_are_summarised_against_each_seeds_own_baseline():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import strategies

    assert strategies.split_stem("joint_vs_offline-s2") == ("joint_vs_offline", 2)
    assert strategies.split_stem("joint_vs_offline") == ("joint_vs_offline", 0)
    assert strategies.stem("ensemble", 0) == "ensemble" and strategies.stem("ensemble", 3) == "ensemble-s3"
    by_seed = {0: _rec(0, 300, 250), 1: _rec(1, 200, 230), 2: _rec(2, 250, 240)}
    summ = strategies.summarize(by_seed)
    assert summ["seeds"] == [0, 1, 2]
    base, kd = summ["entries"]
    assert base["baseline"] and base["test_errors"] == [300, 200, 250] and base["mean"] == 250.0
    assert base["std"] == 50.0 and base["delta_mean"] == 0.0
    # Per-seed differences -50, +30, -10: the mean difference is -10, as is the difference of the means.
    assert kd["test_errors"] == [250, 230, 240] and kd["delta_mean"] == -10.0 and kd["std"] == 10.0
    assert kd["seconds_mean"] == 11.0
    md = strategies.markdown({"toy": by_seed[0]}, {"toy": by_seed})
    assert "| scratch (baseline) | 250.0 ± 50.0 | 300, 200, 250 | - | 11 |" in md
    assert "| kd | 240.0 ± 10.0 | 250, 230, 240 | -10.0 | 11 |" in md
    assert "date 2026-11-20 to 2026-11-22" in md and "(baseline) (baseline)" not in md
    single = strategies.markdown({"toy": by_seed[1]})
    assert (
        "| scratch (baseline) | 200 | 98.00% | - | 11 |" in single
        and "| kd | 230 | 97.70% | +30 | 11 |" in single
    )


def test_quick_row_over_two_seeds_writes_one_result_per_seed(tmp_path, bench):
    args = ["--quick", "--only", "mutual_vs_independent", "--seeds", "0", "1"]
    args += ["--out", tmp_path / "results", "--workdir", tmp_path / "runs", "--no-progress"]
    proc = bench("strategies.py", *args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_row = sorted(p.stem for p in (tmp_path / "results" / "strategies_quick").glob("*.json"))
    assert per_row == ["mutual_vs_independent", "mutual_vs_independent-s1"]
    doc = json.loads((tmp_path / "results" / "strategies_quick.json").read_text())
    recs = doc["seeds"]["mutual_vs_independent"]
    assert [recs[s]["seed"] for s in ("0", "1")] == [0, 1]
    assert recs["0"]["command"].endswith("--seeds 0 1")
    # Different seeds train different models (initial weights, order): the errors are not copies.
    errs = [[e["test_errors"] for e in [recs[s]["baseline"], *recs[s]["rows"]]] for s in ("0", "1")]
    assert errs[0] != errs[1]
    summ = doc["summary"]["mutual_vs_independent"]
    for i, e in enumerate(summ["entries"]):
        assert e["test_errors"] == [errs[0][i], errs[1][i]] and e["mean"] == sum(e["test_errors"]) / 2
    assert "mean ± std" in proc.stdout and "seeds 0, 1" in proc.stdout
    bad = bench("strategies.py", "--quick", "--seeds", "1", "1", timeout=60)
    assert bad.returncode == 2 and "--seeds must be distinct" in bad.stderr


def test_entries_missing_under_a_seed_are_named_and_seed_notes_kept_apart():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import strategies

    a, b = _rec(0, 300, 250), _rec(1, 200, 230)
    b["rows"].append({**b["rows"][0], "label": "only in seed 1"})
    a["notes"], b["notes"] = "teacher: 100 errors", "teacher: 120 errors"
    summ = strategies.summarize({0: a, 1: b})
    assert [e["label"] for e in summ["entries"]] == ["scratch (baseline)", "kd"]
    assert summ["unmatched"] == ["only in seed 1"]
    md = strategies.markdown({"toy": a}, {"toy": {0: a, 1: b}})
    assert "Not under every seed, so not summarised: only in seed 1" in md
    assert "Seed 0: teacher: 100 errors" in md and "Seed 1: teacher: 120 errors" in md
    b["notes"] = a["notes"]
    md = strategies.markdown({"toy": a}, {"toy": {0: a, 1: b}})
    assert "teacher: 100 errors" in md and "Seed 0:" not in md


def test_a_strategy_that_loses_to_its_reference_is_said_so_with_the_likely_cause(monkeypatch):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import strategies

    spec = {"pairs": [("kd", "scratch (baseline)")], "cause": "CAUSE (Someone et al. 2020)."}
    monkeypatch.setitem(strategies.VERDICTS, "toy", spec)
    # kd worse than scratch under seeds 1 and 2 (+30, +10), better under seed 0 (-10): mean +10.
    by_seed = {0: _rec(0, 300, 290), 1: _rec(1, 200, 230), 2: _rec(2, 250, 260)}
    md = strategies.markdown({"toy": by_seed[0]}, {"toy": by_seed})
    assert (
        "**Loses under this budget:** kd: +10.0 errors against scratch (worse under 2 of 3 seeds). "
        "Likely cause: CAUSE (Someone et al. 2020)." in md
    )
    # The same row where kd wins on average: no loss is claimed and no cause printed.
    by_seed = {0: _rec(0, 300, 250), 1: _rec(1, 200, 230), 2: _rec(2, 250, 240)}
    md = strategies.markdown({"toy": by_seed[0]}, {"toy": by_seed})
    assert "Loses under this budget" not in md and "CAUSE" not in md


def test_the_stored_strategies_tables_state_every_loss():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import strategies

    md = strategies.render_stored()
    born = md.split("### born_again", 1)[1].split("###", 1)[0]
    assert "gen 3, taught by gen 2: +30.7 errors against gen 0, plain training" in born
    assert "Furlanello et al. 2018" in born
    takd = md.split("### takd_vs_direct", 1)[1]
    assert "student, KD from the assistant (TAKD): +35.0 errors against student, scratch" in takd
    assert "Mirzadeh et al. (2020)" in takd
    joint = md.split("### joint_vs_offline", 1)[1].split("###", 1)[0]
    assert "student, joint, stop-gradient: +152.0 errors against student, scratch" in joint
    ensemble = md.split("### ensemble", 1)[1].split("###", 1)[0]
    assert "Loses under this budget" not in ensemble  # every ensemble variant beats its baseline
