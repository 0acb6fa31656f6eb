"""benchmarks/flowers_seed.py without training: its plan of runs, the lr chosen on validation only, and the
RESULTS.md section rendered from stored runs (every figure from a JSON)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import flowers_seed  # noqa: E402


def _record(name, seed, phase, test, val, lr=None):
    return {
        "run": name,
        "seed": seed,
        "phase": phase,
        "teacher": None,
        "lr": lr,
        "test_accuracy": test,
        "val_accuracy": val,
        "params": 144261,
        "size_mb": 0.55,
        "train_seconds": 10.0,
        "wall_seconds": 12.0,
        "precision": "bf16",
        "machine_id": "2 cores, test",
        "date": "2026-12-05",
        "command": "x",
    }


def test_every_student_row_of_the_plan_is_a_shallow_cnn_config_reading_the_shared_teacher(tmp_path):
    runs = flowers_seed.runs()
    names = [r.name for r in runs]
    assert names[:3] == ["lite0_224", "lite0_112", "mnv2_scratch"] and len(set(names)) == len(names)
    kd = next(r for r in runs if r.name == "kd_lr0.01")
    cfg = flowers_seed.config(kd, 1, tmp_path / "flowers.tar.gz", tmp_path / "teacher", quick=False)
    assert cfg["student"]["model"] == {"name": "shallow_cnn"} and cfg["phases"] == ["distill"]
    assert cfg["teacher"]["checkpoint"] == str(tmp_path / "teacher" / "checkpoints" / "teacher")
    assert (
        cfg["data"]["splits"] == {"train": "train", "test": "val"} and cfg["data"]["normalize"] == "imagenet"
    )
    assert (cfg["distill"]["temperature"], cfg["distill"]["alpha"], cfg["distill"]["beta"]) == (5.0, 0.9, 0.1)
    teacher = flowers_seed.config(runs[0], 0, tmp_path / "f", None, quick=False)["teacher"]
    assert teacher["model"]["input_size"] == 224 and "pretrained" in teacher["model"]


def test_best_lr_is_chosen_on_validation_never_on_test_and_the_render_quotes_the_jsons(tmp_path):
    out = tmp_path / "flowers_seed"
    out.mkdir()
    recs = [
        _record("lite0_224", 0, "teacher", 0.90, 0.91),
        # seed 0: lr 1e-3 is better on validation, worse on test -> chosen
        _record("kd_lr0.001", 0, "distill", 0.60, 0.70, 1e-3),
        _record("kd_lr0.01", 0, "distill", 0.80, 0.65, 1e-2),
        _record("kd_lr0.001", 1, "distill", 0.62, 0.60, 1e-3),
        _record("kd_lr0.01", 1, "distill", 0.66, 0.68, 1e-2),
    ]
    for r in recs:
        (out / f"{r['run']}-s{r['seed']}.json").write_text(json.dumps(r))
    section = flowers_seed.render_stored(tmp_path)
    row = next(
        ln for ln in section.splitlines() if ln.startswith("| KD tau 5, alpha 0.9 / beta 0.1, best lr")
    )
    assert "| 63.0 +- 4.2 | 2 | 0.001, 0.01 |" in row  # mean of 0.60 (seed 0) and 0.66 (seed 1)
    article = next(ln for ln in section.splitlines() if "(article)" in ln and ln.startswith("| KD"))
    assert "| 73.0 +- 9.9 | 2 | 0.01 |" in article
    assert "| teacher: EfficientNet-Lite0, ImageNet, fine-tuned at 224 px | 90.0 +- 0.0 | 1 |" in section
    assert section.startswith(flowers_seed.MARKS[0]) and section.endswith(flowers_seed.MARKS[1])
    assert "Machine: 2 cores, test, precision bf16; runs dated 2026-12-05 to 2026-12-05" in section
    planned = 3 + 2 * (len(flowers_seed.runs()) - 3)
    missing = next(ln for ln in section.splitlines() if ln.startswith("Missing runs:"))
    assert f"Missing runs: {planned - 5} of the {planned} planned" in missing
    assert "lite0_112-s0" in missing and "kd_lr0.01-s1" not in missing
    # The notes say where the setup differs from the article and what the time budget came to.
    assert "Where we differ from the article, and why: 112 px photos" in section
    assert "against the issue's 60-minute budget" in section
    # A gap against scratch is stated only with both rows (no scratch runs here).
    assert "KD against scratch" not in section
    for lr, s, acc in ((1e-3, 0, 0.50), (1e-2, 0, 0.40), (1e-3, 1, 0.52), (1e-2, 1, 0.41)):
        r = _record(f"scratch_lr{lr:g}", s, "scratch", acc, 0.5, lr)
        (out / f"{r['run']}-s{s}.json").write_text(json.dumps(r))
    section = flowers_seed.render_stored(tmp_path)
    # KD best lr 63.0 +- 4.2 against scratch best lr 51.0 +- 1.4: +12.0 points, more than 2 x 4.2.
    assert "KD against scratch, both at their best lr: +12.0 points (more than twice the larger spread)." in section


def test_the_compressed_student_table_comes_from_its_stored_json(tmp_path):
    out = tmp_path / "flowers_seed"
    out.mkdir()
    (out / "kd_lr0.01-s0.json").write_text(json.dumps(_record("kd_lr0.01", 0, "distill", 0.8, 0.8, 1e-2)))
    compressed = {
        "run": "kd_aug_lr0.01",
        "models": {
            "student": {
                "label": "distilled student",
                "accuracy": 0.8123,
                "params": 144261,
                "onnx_mb": 0.56,
                "latency_ms": {"eager_b1_t1": 1.5, "eager_b32_t2": 20.25},
            },
            "int8": {
                "label": "pruned int8",
                "accuracy": 0.8,
                "params": None,
                "onnx_mb": 0.2,
                "latency_ms": {"onnxruntime_b1_t1": 0.5},
            },
        },
    }
    (out / "compress-s0.json").write_text(json.dumps(compressed))
    section = flowers_seed.render_stored(tmp_path)
    assert "| distilled student | 81.2 | 144,261 | 0.56 | 1.5 | 20.25 |" in section
    assert "| pruned int8 | 80.0 | - | 0.20 | 0.5 | - |" in section
    with pytest.raises(FileNotFoundError, match="no stored runs"):
        flowers_seed.render_stored(tmp_path / "nowhere")


def test_a_stored_run_stands_only_while_the_teacher_weights_it_was_made_from_are_there(tmp_path):
    out = tmp_path / "flowers_seed"
    ckpt = out / "runs" / "lite0_224-s0" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "teacher.safetensors").write_bytes(b"weights one")
    runs = {r.name: r for r in flowers_seed.runs()}
    sha = flowers_seed.teacher_sha256(out, "lite0_224")
    teacher = {**_record("lite0_224", 0, "teacher", 0.9, 0.9), "weights_sha256": sha}
    student = {**_record("kd_lr0.01", 1, "distill", 0.8, 0.8, 1e-2), "teacher_sha256": sha}
    scratch = _record("scratch_lr0.01", 1, "scratch", 0.7, 0.7, 1e-2)
    assert flowers_seed._still_valid(runs["lite0_224"], teacher, out)
    assert flowers_seed._still_valid(runs["kd_lr0.01"], student, out)
    (ckpt / "teacher.safetensors").write_bytes(b"weights two")  # the teacher was trained again
    assert not flowers_seed._still_valid(runs["lite0_224"], teacher, out)
    assert not flowers_seed._still_valid(runs["kd_lr0.01"], student, out)
    assert flowers_seed._still_valid(runs["scratch_lr0.01"], scratch, out)  # reads no teacher
    (ckpt / "teacher.safetensors").unlink()  # a fresh machine: run directories are not committed
    assert not flowers_seed._still_valid(runs["lite0_224"], teacher, out)
