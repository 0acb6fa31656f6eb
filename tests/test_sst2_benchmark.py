"""benchmarks/sst2_tang.py --quick on a tiny random BERT and toy sentences (no download): one JSON per run,
the table's figures are the JSONs', a second invocation skips finished runs, render_stored renders them."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from test_text_run import _sentences  # noqa: E402
from tiny_hf import tiny_bert_folder  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import sst2_tang  # noqa: E402

NAMES = ["teacher-s0"] + [f"{r}-s{s}" for r in ("scratch", "distill_mse", "distill_aug_mse", "distill_aug_kd")
                          for s in (0, 1)]  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("sst2-quick")
    data = root / "data"
    data.mkdir()
    (data / "train.tsv").write_text(_sentences(320, 0))
    (data / "test.tsv").write_text(_sentences(128, 1))
    bert = tiny_bert_folder(root / "bert", hidden=32)
    out = root / "out"
    argv = [
        "--quick",
        "--teacher",
        f"hf:{bert}",
        "--data",
        f"tsv:{data}",
        "--out",
        str(out),
        "--seeds",
        "0",
        "1",
    ]
    assert sst2_tang.main(argv) == 0
    return out, argv


def test_quick_writes_one_json_per_run_with_its_figures(quick):
    out, _ = quick
    recs = {p.stem: json.loads(p.read_text()) for p in out.glob("*-s*.json")}
    assert sorted(recs) == sorted(NAMES)
    for name, r in recs.items():
        assert r["test_size"] == 128 and 0.0 <= r["test_accuracy"] <= 1.0, name
        lat = r["latency_ms_per_sentence"]
        assert lat["batch1"] > 0 and lat["batch64"] > 0, name
        assert r["latency_harness"] == {"precision": "fp32", "threads": 1, "sentences_batch1": 8,
                                        "sentences_batch64": 128, "passes": 5}  # fmt: skip
        assert (out / "runs" / name / "checkpoints").is_dir()
    # the toy task is learnt; the distilled students read the teacher's logits, the augmented ones more sentences
    assert recs["teacher-s0"]["test_accuracy"] > 0.9
    assert recs["distill_mse-s0"]["transfer_size"] == 256  # 320 sentences - 20% validation
    aug = recs["distill_aug_mse-s0"]
    assert aug["augmented_sentences"] > 0 and aug["transfer_size"] == 256 + aug["augmented_sentences"]
    assert (
        recs["distill_aug_kd-s0"]["augmented_sentences"] == aug["augmented_sentences"]
    )  # same seed, same drafts
    assert recs["scratch-s0"]["params"] == aug["params"] < recs["teacher-s0"]["params"]


def test_the_table_quotes_the_jsons(quick):
    out, _ = quick
    recs = sst2_tang.stored(out)
    doc = json.loads((out / "table.json").read_text())
    rows = {r["run"]: r for r in doc["rows"]}
    assert list(rows) == ["teacher", "scratch", "distill_mse", "distill_aug_mse", "distill_aug_kd"]
    t = recs["teacher-s0"]
    assert rows["teacher"]["accuracy_mean"] == round(t["test_accuracy"] * 100, 2)
    assert rows["teacher"]["latency_b1_ms"] == round(t["latency_ms_per_sentence"]["batch1"], 3)
    accs = [recs[f"scratch-s{s}"]["test_accuracy"] * 100 for s in (0, 1)]
    assert rows["scratch"]["runs"] == 2 and rows["scratch"]["accuracy_mean"] == round(sum(accs) / 2, 2)
    speed = t["latency_ms_per_sentence"]["batch1"] / (
        sum(recs[f"scratch-s{s}"]["latency_ms_per_sentence"]["batch1"] for s in (0, 1)) / 2
    )
    assert any(f"{speed:.1f}x" in line for line in doc["targets"])


def test_a_second_invocation_skips_finished_runs_and_render_stored_reads_them(quick, tmp_path, capsys):
    out, argv = quick
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*-s*.json")}
    capsys.readouterr()
    assert sst2_tang.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count(": stored") == len(NAMES) and ": running" not in err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*-s*.json")} == before
    # --table reads the stored runs only: the same table, nothing run
    table = json.loads((out / "table.json").read_text())
    assert sst2_tang.main([*argv, "--table"]) == 0
    assert "[sst2]" not in capsys.readouterr().err
    assert json.loads((out / "table.json").read_text()) == table
    # render_stored builds the section from the JSONs alone, under results_root/sst2_tang
    (tmp_path / "sst2_tang").mkdir()
    for p in out.glob("*-s*.json"):
        (tmp_path / "sst2_tang" / p.name).write_text(p.read_text())
    section = sst2_tang.render_stored(tmp_path)
    assert section.startswith(sst2_tang.MARKS[0]) and section.endswith(sst2_tang.MARKS[1])
    t = json.loads((out / "teacher-s0.json").read_text())
    assert f"| teacher: MiniLM-L6 fine-tuned | {t['test_accuracy'] * 100:.1f} ± 0.0 | 1 |" in section
    assert "Command: `python benchmarks/sst2_tang.py --quick`" in section
    assert "| 90.7 |" in section and "94.9 (BERT-large)" in section


def test_a_stored_run_of_another_recipe_is_refused_not_mixed_in(quick, tmp_path):
    out, argv = quick
    moved = tmp_path / "out"
    moved.mkdir()
    for p in out.glob("*-s*.json"):
        (moved / p.name).write_text(p.read_text())
    rec = json.loads((moved / "scratch-s1.json").read_text())
    assert rec["recipe"] == sst2_tang.recipe(sst2_tang.parse_args(argv))
    rec["recipe"]["augment"]["copies"] = 1  # a run of the version-1 recipe
    (moved / "scratch-s1.json").write_text(json.dumps(rec))
    other = [*argv[: argv.index("--out")], "--out", str(moved), *argv[argv.index("--out") + 2 :]]
    with pytest.raises(SystemExit, match="scratch-s1.json was made with another recipe"):
        sst2_tang.main(other)


def test_render_stored_lists_an_earlier_recipe_kept_in_history(quick, tmp_path):
    out, _ = quick
    now, old = tmp_path / "sst2_tang", tmp_path / "sst2_tang" / "history" / "v0-old"
    old.mkdir(parents=True)
    for p in out.glob("*-s*.json"):
        (now / p.name).write_text(p.read_text())
        (old / p.name).write_text(p.read_text())
    section = sst2_tang.render_stored(tmp_path)
    teacher = json.loads((out / "teacher-s0.json").read_text())["test_accuracy"] * 100
    (line,) = [ln for ln in section.splitlines() if ln.startswith("- `v0-old`")]
    assert f"teacher {teacher:.1f} ± 0.0, scratch " in line and line.endswith(" min.")
    assert section.endswith(sst2_tang.MARKS[1]) and section.count("Earlier recipes") == 1
