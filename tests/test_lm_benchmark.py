"""benchmarks/lm_shakespeare.py --quick: every run writes its JSON, the table shows the JSONs' figures, every
student run trains on the same number of tokens, and a second invocation skips the finished runs."""

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import lm_shakespeare as bench  # noqa: E402
from conftest import real_data_root  # noqa: E402

from kdkit.cli import main as kdkit_main  # noqa: E402

DATA = real_data_root()
TEXT = DATA / "tinyshakespeare" / "input.txt" if DATA else None
pytestmark = pytest.mark.skipif(
    TEXT is None or not TEXT.is_file(), reason="tinyshakespeare/input.txt not found: set KDKIT_DATA"
)

STUDENT_RUNS = [
    "scratch",
    "sup-fkl",
    "sup-rkl",
    "sup-jsd",
    "sup-skl",
    "sup-srkl",
    "sup-tv",
    "seqkd",
    "onpolicy-jsd",
]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_bench")
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    before = results_md.stat().st_mtime_ns if results_md.exists() else None
    threads = torch.get_num_threads()
    bench.TEXT = TEXT
    try:
        assert bench.main(["--quick", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    after = results_md.stat().st_mtime_ns if results_md.exists() else None
    assert before == after  # a quick run never touches RESULTS.md
    return out


def test_every_run_has_its_json_with_figures_and_machine(quick):
    stems = {p.stem for p in quick.glob("*.json")}
    expected = {"teacher"} | {f"{n}-s{s}" for n in [*STUDENT_RUNS, "cache"] for s in (0, 1)}
    assert stems == expected
    records = bench.load_records(quick)
    for rec in records.values():
        assert rec["machine"]["nproc"] == os.cpu_count() and rec["machine_id"]
        assert rec["wall_seconds"] > 0 and len(rec["loadavg_start"]) == 3
    sz = bench.sizes(quick=True)
    budget = sz["student_blocks"] * sz["block"]
    for name in STUDENT_RUNS:
        for s in (0, 1):
            rec = records[f"{name}-s{s}"]
            assert rec["student_tokens"] == budget, name  # the same student tokens for every row
            assert 1 < rec["test_perplexity"] < 10 * sz["vocab"]
            assert rec["test_kl_to_teacher"] > 0 and 0 <= rec["test_top1_agreement"] <= 1
            assert rec["tokens_per_second"] > 0 and len(rec["samples"]) == 2
    assert records["onpolicy-jsd-s0"]["on_policy_steps"] >= 1
    for s in (0, 1):
        cache = records[f"cache-s{s}"]
        assert cache["plain"]["student_tokens"] == budget
        assert [r["k"] for r in cache["ks"]] == list(sz["ks"])
        vocab = cache["ks"][0]["dense_fp16_bytes_per_token"] // 2
        assert vocab <= 32768  # int16 ids: k * (2 + 2) + 2 bytes per token
        # the dense row: the same objective and student tokens, the teacher online
        assert cache["ce_weight"] == sz["cache_ce"] == 0.5
        assert cache["dense"]["student_tokens"] == budget and cache["dense"]["test_perplexity"] > 1
        for row in cache["ks"]:
            assert row["bytes_per_token"] == row["k"] * 4 + 2 and row["student_tokens"] == budget
            assert row["time_ratio_vs_plain"] == pytest.approx(
                row["train_seconds"] / cache["plain"]["train_seconds"]
            )
    # The two seeds start from different students and see the blocks in different orders.
    assert records["scratch-s0"]["test_perplexity"] != records["scratch-s1"]["test_perplexity"]


def _row(text, label):
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| {label} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_shows_the_figures_of_the_jsons(quick):
    text = (quick / "table.md").read_text()
    records = bench.load_records(quick)
    assert f"test perplexity {records['teacher']['test_perplexity']:.2f}" in text
    for name in STUDENT_RUNS:
        cells = _row(text, name)
        per_seed = dict(re.findall(r"s(\d+): ([0-9.]+)", cells[3]))
        assert per_seed == {str(s): f"{records[f'{name}-s{s}']['test_perplexity']:.2f}" for s in (0, 1)}
        mean = (records[f"{name}-s0"]["test_perplexity"] + records[f"{name}-s1"]["test_perplexity"]) / 2
        assert cells[2].startswith(f"{mean:.2f} ± ")
        tps = (records[f"{name}-s0"]["tokens_per_second"] + records[f"{name}-s1"]["tokens_per_second"]) / 2
        assert cells[6] == f"{tps:.0f}"
    dense = [records[f"cache-s{s}"]["dense"]["test_perplexity"] for s in (0, 1)]
    cells = _row(text, "dense, teacher online (forward KL x 0.5 + CE x 0.5)")
    assert cells[3].startswith(f"{sum(dense) / 2:.2f} ± ")
    for i, k in enumerate(bench.sizes(quick=True)["ks"]):
        cells = _row(text, f"top-{k} cache")
        assert cells[1] == str(records["cache-s0"]["ks"][i]["bytes_per_token"])
        cost = [100 * (records[f"cache-s{s}"]["ks"][i]["test_perplexity"] / dense[s] - 1) for s in (0, 1)]
        assert cells[4].startswith(f"{sum(cost) / 2:.2f} ± ")  # against the cache run's own dense row
        ratios = [records[f"cache-s{s}"]["ks"][i]["time_ratio_vs_plain"] for s in (0, 1)]
        assert cells[5].startswith(f"{sum(ratios) / 2:.2f} ± ")
    best = re.search(r"Best distilled student: \*\*(\S+)\*\*", text).group(1)
    means = {n: sum(records[f"{n}-s{s}"]["test_perplexity"] for s in (0, 1)) for n in STUDENT_RUNS[1:]}
    assert best == min(means, key=means.get)
    assert "**teacher**:" in text and repr(records["teacher"]["samples"][0]) in text
    # --table rebuilds the same table from the JSONs alone.
    assert bench.main(["--table", "--out", str(quick)]) == 0
    assert (quick / "table.md").read_text() == text


def test_a_second_invocation_skips_every_finished_run(quick, capsys):
    stamps = {p.name: p.stat().st_mtime_ns for p in quick.glob("*.json")}
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--out", str(quick)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert printed.count("done before: skipped") == len(stamps)
    assert {p.name: p.stat().st_mtime_ns for p in quick.glob("*.json")} == stamps


def test_kdkit_generate_samples_from_the_benchmarks_teacher(quick, capsys):
    teacher = quick / "work" / "models" / "teacher.json"
    assert (
        kdkit_main(["generate", str(teacher), "--prompt", "ROMEO:", "--max-new-tokens", "8", "--seed", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) > len("ROMEO:\n")


def test_the_results_md_section_holds_the_table_between_its_marks(quick, tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nother sections\n")
    text = bench.write_table(quick, md)
    written = md.read_text()
    start, end = bench.MARKS
    assert written.startswith("# Benchmark results\n\nother sections\n")
    section = written.split(start, 1)[1].split(end, 1)[0]
    assert text in section and "## lm_shakespeare" in section
    assert bench.load_records(quick)["teacher"]["machine_id"] in section
    bench.write_table(quick, md)  # again: the section is replaced, not appended
    assert md.read_text() == written


def test_a_missing_run_is_redone_from_the_saved_teacher_with_the_same_figures(quick, capsys):
    path = quick / "sup-fkl-s1.json"
    before = bench.load_records(quick)["sup-fkl-s1"]
    path.unlink()
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--out", str(quick)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert printed.count("done before: skipped") == len(list(quick.glob("*.json"))) - 1
    after = bench.load_records(quick)["sup-fkl-s1"]
    # The teacher came back from its safetensors checkpoint: the redone run trains and measures the same.
    for key in (
        "test_perplexity",
        "test_kl_to_teacher",
        "test_top1_agreement",
        "final_train_loss",
        "samples",
    ):
        assert after[key] == before[key], key


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["sizes"].update(student_blocks=999), "was made with other sizes"),
        (lambda r: r.update(teacher_sha256="0" * 64), "was distilled from another teacher"),
    ],
)
def test_a_stored_run_of_another_recipe_is_refused_not_reused(quick, change, message):
    path = quick / "scratch-s0.json"
    original = path.read_text()
    rec = json.loads(original)
    change(rec)
    path.write_text(json.dumps(rec))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match=message):
            bench.main(["--quick", "--out", str(quick)])
    finally:
        path.write_text(original)
        torch.set_num_threads(threads)
