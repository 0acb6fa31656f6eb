"""Every marked section of benchmarks/RESULTS.md is what its script renders from the committed JSONs.

No benchmark runs here: each script's `render_stored()` reads benchmarks/results/ and returns its section, dates
and machine lines included (they come from the stored runs, not from today). A figure edited by hand in
RESULTS.md, or a JSON changed without rendering again, makes the texts differ.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS = BENCH / "results"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

# section name in RESULTS.md -> the script that renders it
SECTIONS = {
    "hinton_mnist": "hinton_mnist",
    "ddp": "ddp",
    "speed": "speed",
    "strategies": "strategies",
    "compress": "compress",
    "methods": "methods_cifar10",
    "cache_accuracy": "cache_accuracy",
    "optimizer_step": "optimizer_step",
    "behaviour_check": "behaviour_check",
    "flowers_seed": "flowers_seed",
    "lm_shakespeare": "lm_shakespeare",
    "lm_trl_peer": "lm_trl_peer",
    "lm_loss_speed": "lm_loss_speed",
    "hf_decode_speed": "hf_decode_speed",
    "sst2_tang": "sst2_tang",
}


def marked(text: str, name: str) -> str:
    """Return a section of RESULTS.md from its start mark to its end mark, both included."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    assert text.count(start) == 1 and text.count(end) == 1, name
    return start + text.split(start, 1)[1].split(end, 1)[0] + end


def render(name: str, results_root: Path = RESULTS) -> str:
    return importlib.import_module(SECTIONS[name]).render_stored(results_root)


def test_every_marked_section_has_a_renderer():
    names = set(re.findall(r"<!-- (\w+):start -->", RESULTS_MD.read_text()))
    assert names == set(SECTIONS), names ^ set(SECTIONS)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_section_equals_its_render_from_the_stored_jsons(name):
    assert marked(RESULTS_MD.read_text(), name) == render(name)


@pytest.mark.parametrize("results_dir", ["methods_2seeds", "methods_intel", "methods_ofd"])
def test_earlier_cifar_tables_quoted_outside_the_marks_equal_their_render(results_dir):
    """The earlier CIFAR tables (other teachers, kept apart with `--out`) are quoted outside the marks."""
    text = RESULTS_MD.read_text()
    import methods_table

    got = methods_table.render_table(RESULTS / results_dir).splitlines()
    table = [ln for ln in got if ln.startswith("|")]
    assert len(table) >= 4
    assert "\n".join(table) in text, results_dir
    kd_line = next(ln for ln in got if ln.startswith("KD target"))
    assert kd_line in text
    if results_dir == "methods_intel":  # its Missing runs line is quoted too (the others quote none)
        assert next(ln for ln in got if ln.startswith("Missing runs")) in text


def test_the_methods_table_has_three_seeds_of_every_method_and_names_the_diverged_run():
    """Issue 29: every method of configs/cifar10/ against one teacher for 3 seeds; fsp-s2 diverged and says so."""
    import methods_table

    section = marked(RESULTS_MD.read_text(), "methods")
    rows = {
        ln.split(" | ")[0][2:]: ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln
    }
    rows.pop("method")
    assert list(rows) == methods_table.ALL
    for method, row in rows.items():
        assert ("(2 seeds)" if method == "fsp" else "(3 seeds)") in row, row
    assert "Missing runs: none." in section
    assert "fsp-s2: phase 'student_kd': loss term(s) ['fsp'] became non-finite at step 58." in section
    assert "with no run against this teacher" not in section
    assert "Teacher: resnet56, test accuracy 81.43%" in section


def test_a_figure_edited_by_hand_makes_the_render_differ():
    text = RESULTS_MD.read_text()
    section = marked(text, "hinton_mnist")
    assert "| 83.0 ± 0.0 (83, 83) |" in section
    edited = text.replace("| 83.0 ± 0.0 (83, 83) |", "| 74.0 ± 0.0 (74, 74) |", 1)
    assert marked(edited, "hinton_mnist") != render("hinton_mnist")
    # A changed digit deep inside a long table is caught as well.
    section = marked(text, "speed")
    row = next(line for line in section.splitlines() if line.startswith("| mnist | (b) | 300 | "))
    seconds = row.split(" | ")[3]
    edited_row = row.replace(f"| {seconds} |", f"| {float(seconds) + 0.1:.2f} |", 1)
    assert edited_row != row
    edited = text.replace(row, edited_row, 1)
    assert marked(edited, "speed") != render("speed")


def test_a_stored_json_changed_without_rendering_again_makes_the_texts_differ(tmp_path):
    shutil.copytree(RESULTS / "strategies", tmp_path / "strategies")
    path = tmp_path / "strategies" / "born_again-s1.json"
    rec = json.loads(path.read_text())
    rec["rows"][0]["test_errors"] += 1
    path.write_text(json.dumps(rec))
    assert render("strategies", tmp_path) != marked(RESULTS_MD.read_text(), "strategies")
    doc = json.loads((RESULTS / "ddp.json").read_text())
    doc["one_process_2_threads"]["samples_per_second"] *= 1.01
    (tmp_path / "ddp.json").write_text(json.dumps(doc))
    assert render("ddp", tmp_path) != marked(RESULTS_MD.read_text(), "ddp")


def _val_errors(source: str) -> set[int]:
    """Every validation-error figure a stored probe file (or a directory of them) holds."""
    path = RESULTS / source.rstrip("/")
    if path.is_dir():
        docs = [json.loads(p.read_text()) for p in path.glob("*.json")]
    else:
        docs = list(json.loads(path.read_text())["runs"].values())
    return {d["val_errors"] for d in docs if d.get("val_errors") is not None}


def gap_table_figures_not_stored(text: str) -> tuple[int, list[tuple[str, list[int]]]]:
    """Check the distilled-gap table's validation errors against the probe files each row cites: return how many
    rows were checked and the figures that no cited file holds."""
    table = text.split("| side | change | students (validation errors) | sitting | stored in |", 1)[1]
    rows = [ln for ln in table.split("\n\n", 1)[0].splitlines() if ln.startswith("| ") and "`" in ln]
    checked, bad = 0, []
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        sources = re.findall(r"`([^`]+)`", cells[4])
        if not all(s.startswith("hinton_") and not s.startswith("hinton_mnist") for s in sources):
            continue  # test-set means (hinton_mnist.json) are rendered and checked with their section
        stored = set().union(*(_val_errors(s) for s in sources))
        figures = {int(x) for x in re.findall(r"\b\d+\b", cells[2])}
        if not figures or not figures <= stored:
            bad.append((cells[1], sorted(figures - stored)))
        checked += 1
    return checked, bad


def test_every_figure_of_the_hinton_gap_table_is_in_the_file_it_cites():
    """The distilled-gap table quotes validation errors of probes: each must be in the result files its row names."""
    text = RESULTS_MD.read_text()
    checked, bad = gap_table_figures_not_stored(text)
    assert checked >= 15 and bad == []
    # The fp32 row with the unstored sitting-8 figure (124) put back: no cited file holds it.
    row = "| student | fp32 instead of bf16 | 117 | 11 | `hinton_probes_sitting11.json` |"
    assert text.count(row) == 1
    _, bad = gap_table_figures_not_stored(text.replace(row, row.replace("| 117 |", "| 124; 117 |")))
    assert bad == [("fp32 instead of bf16", [124])]


def test_the_code_or_teacher_probe_quoted_in_the_methods_notes_is_its_stored_json():
    """Both trees give the same epoch-2 validation accuracy per method, and the note quotes those figures."""
    doc = json.loads((RESULTS / "methods_3seeds" / "code_or_teacher_probe.json").read_text())
    text = RESULTS_MD.read_text()
    quoted = {"fsp": "FSP", "fitnet": "FitNet"}
    for method, label in quoted.items():
        last = [r["epochs"][-1] for r in doc["runs"].values() if r["config"] == method]
        assert len(last) == 2 and {r["epoch"] for r in last} == {2}, method
        for key in ("val_accuracy", "train_accuracy", "loss"):  # the same training, not just the same score
            assert last[0][key] == last[1][key], (method, key)
        pct = f"{last[0]['val_accuracy'] * 100:.2f}%"
        assert f"{label} {pct} and {pct}" in " ".join(text.split()), method
    assert (
        doc["teacher_sha256"]
        == json.loads((RESULTS / "methods_3seeds" / "methods_cifar10" / "teacher.json").read_text())["sha256"]
    )


CACHE_NOTE = "### About the cache table above (issue 29)"


def cache_note(text: str) -> str:
    """Return the hand note under the cache_accuracy section, up to the next marked section."""
    return text.split(CACHE_NOTE, 1)[1].split("<!-- ", 1)[0]


def cache_note_figures_not_in_table(text: str, section: str) -> list[str]:
    """Return the figures with two decimals (accuracies, gaps, speed ratios) that the note under the
    cache_accuracy section quotes and its rendered table does not hold."""
    note = cache_note(text).replace("−", "-")
    return [f for f in re.findall(r"[+-]?\d+\.\d\dx?", note) if f not in section]


def test_every_figure_of_the_cache_notes_is_in_the_table_rendered_from_the_stored_runs():
    text = RESULTS_MD.read_text()
    assert text.count(CACHE_NOTE) == 1 and text.index(CACHE_NOTE) > text.index("<!-- cache_accuracy:end -->")
    section = render("cache_accuracy")
    figures = re.findall(r"\d+\.\d\dx?", cache_note(text))
    assert len(figures) >= 8  # the note quotes the table, it does not only point at it
    assert cache_note_figures_not_in_table(text, section) == []
    doctored = text.replace(CACHE_NOTE, CACHE_NOTE + "\nK = 4 gains +9.87 points at 7.65x.")
    assert cache_note_figures_not_in_table(doctored, section) == ["+9.87", "7.65x"]
