"""Every distillation method of configs/cifar10/ on CIFAR-10, one teacher, one student, one budget.

    python benchmarks/methods_cifar10.py --teacher-checkpoint benchmarks/teachers/cifar10-resnet56/teacher
    python benchmarks/methods_cifar10.py                  # trains the resnet56 teacher first (resumable)
    python benchmarks/methods_cifar10.py --methods kd fitnet --seeds 0 --out /tmp/kd-fitnet
    python benchmarks/methods_cifar10.py --teacher-checkpoint ... --max-minutes 120  # start no run after 2 h
    python benchmarks/methods_cifar10.py --estimate 20    # time 20 steps of a few methods, project run times
    python benchmarks/methods_cifar10.py --quick          # tiny subset, 1 epoch, 3 methods, a temp dir (tests)

Each run is `configs/cifar10/<method>.yaml` (the student from scratch: kd.yaml with phases=[scratch]) with the
same overrides for every method: the student model, its epochs and batch size, the teacher checkpoint, the
seed, and the teacher's train/validation split (data.split_seed=0 whatever the seed). Epoch windows of the terms
(start_epoch, stop_epoch, warmup_epochs, factor transfer's paraphraser_epochs) are scaled by budget / config
epochs, so that each stage keeps its share of training.
Everything else (losses, weights, augmentation, optimiser, teacher outputs) is what the config says.

Runs go through kdkit's `run_experiment` in-process, one run directory each under
benchmarks/runs/methods_3seeds/methods_cifar10/ (resumed with resume=True if interrupted). Each finished run
writes benchmarks/results/methods_3seeds/methods_cifar10/<method>-s<seed>.json, with the command that made it,
and is skipped when the benchmark runs again; so the benchmark can run in parts. The aggregate goes to
benchmarks/results/methods_3seeds/methods_cifar10.json and the table to the `methods` section of
benchmarks/RESULTS.md. The teacher of that table is kept in benchmarks/teachers/cifar10-resnet56/. A results
directory given with --out (other teachers, other budgets) gets its own aggregate and stays out of RESULTS.md;
`methods_table.render_table(<out>)` renders it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchcommon import (
    RunBudget,
    add_max_minutes_option,
    machine,
    machine_id,
    machines_of,
    update_results_md,
)
from methods_table import ALL, DEFAULT_SEEDS, MARKS, NAME, aggregate, markdown, render_table

from kdkit.checkpoint import atomic_write_text, file_sha256
from kdkit.config import ExperimentConfig, build_config, load_yaml
from kdkit.console import make_console
from kdkit.errors import ConfigError
from kdkit.experiment import run_experiment
from kdkit.train_state import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "cifar10"
MAIN_TABLE = "methods_3seeds"  # the results and runs subdirectory of the table in RESULTS.md
# Measured with `--estimate 30` on 2 cores (benchmarks/results/methods_cifar10_estimate.json): with the online
# resnet56 teacher and resnet8, an epoch takes 0.84-1.07 min (kd 0.87, vid 1.02, crd 1.07; scratch 0.30), and
# ft's paraphraser 0.72 min per epoch. Not timed: per run, evaluating the teacher on 15,000 images in fp32
# (about 25 s at the speed benchmark's 207 ms per 128) and the student per epoch. 8 epochs: under 10 min.
DEFAULT_EPOCHS = 8
TEACHER_EPOCHS = 10
QUICK_METHODS = ["scratch", "kd", "ft"]
# Every run trains and validates on the teacher's split (the teacher is trained with seed 0, and the split
# follows the seed unless data.split_seed is set): the seed changes the student's initialisation, batch order
# and augmentation, never which images the teacher saw, so every seed and method sees the same data.
TEACHER_SPLIT_SEED = 0


@dataclass(frozen=True)
class Setup:
    """What every run of one benchmark shares; results made under another setup are never mixed in."""

    epochs: int
    student: str
    batch_size: int
    teacher_sha256: str
    quick: bool


def split_seed_of(result: dict[str, Any]) -> int:
    """Return the split seed a stored run used: data.split_seed when it was set, else the run's seed."""
    return result["overrides"].get("data.split_seed", result["seed"])


def refuse_other_split(out: Path, names: list[str]) -> None:
    """Stop (before anything trains) if `names`, stored runs in `out`, used another split than the teacher's."""
    if names:
        raise SystemExit(
            f"{out}: {names} were trained on another train/validation split than the teacher's "
            f"(split seed {TEACHER_SPLIT_SEED}): delete them to run them again on the teacher's split"
        )


def checkpoint_base(path: str | Path) -> Path:
    """Return a checkpoint's base path (without .safetensors/.json)."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def plan(methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Return (method, seed) runs, most informative first: scratch and kd, then the rest, seed by seed."""
    first = [m for m in ("scratch", "kd") if m in methods]
    rest = [m for m in ALL if m in methods and m not in first]
    return [(m, s) for s in seeds for m in (*first, *rest)]


def scale_windows(terms: list[dict[str, Any]], factor: float) -> dict[str, Any]:
    """Scale the terms' epoch windows in place by `factor`; return what changed, by term index."""
    changed: dict[str, Any] = {}
    for i, term in enumerate(terms):
        for key in ("start_epoch", "stop_epoch", "warmup_epochs"):
            if term.get(key):
                new = round(term[key] * factor, 4)
                changed[f"terms[{i}].{key}"] = [term[key], new]
                term[key] = new
        opts = term.get("options") or {}
        if "paraphraser_epochs" in opts:
            new = max(1, round(opts["paraphraser_epochs"] * factor))
            changed[f"terms[{i}].options.paraphraser_epochs"] = [opts["paraphraser_epochs"], new]
            opts["paraphraser_epochs"] = new
    return changed


def quick_data(raw: dict[str, Any]) -> None:
    """Cut the data to a tiny subset (the plumbing runs, not the accuracy)."""
    raw["data"].update(train_limit=320, val_size=64, test_limit=200)


def run_config(
    method: str, seed: int, setup: Setup, teacher: Path | None, progress: bool
) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Return one run's config (the method's file with the shared overrides) and what was overridden."""
    source = CONFIGS / f"{'kd' if method == 'scratch' else method}.yaml"
    raw = json.loads(json.dumps(load_yaml(source)))  # a plain copy: YAML aliases would share sections
    config_epochs = raw["student"]["train"]["epochs"]
    budget = {"epochs": setup.epochs, "batch_size": setup.batch_size}
    raw["seed"] = seed
    raw["data"]["split_seed"] = TEACHER_SPLIT_SEED
    raw["name"] = f"{NAME}-{method}-s{seed}"
    raw["student"]["model"] = {"name": setup.student}
    raw["student"]["train"].update(budget)
    if raw.get("distill", {}).get("train"):
        raw["distill"]["train"].update(budget)
    raw["phases"] = ["scratch"] if method == "scratch" else ["distill"]
    if method != "scratch":
        raw["teacher"]["checkpoint"] = str(teacher)
    windows = scale_windows(raw.get("distill", {}).get("terms") or [], setup.epochs / config_epochs)
    raw["runtime"] = {**raw.get("runtime", {}), "progress": progress, "tensorboard": False}
    if setup.quick:
        quick_data(raw)
    overrides = {
        "config": str(source.relative_to(ROOT)),
        "seed": seed,
        "data.split_seed": TEACHER_SPLIT_SEED,
        "student.model": setup.student,
        "student.train": budget,
        "phases": raw["phases"],
        "scaled_windows": windows,
    }
    return build_config(raw, source=str(source)), overrides


def execute(cfg: ExperimentConfig, run_dir: Path, progress: bool) -> tuple[dict[str, Any], float, bool]:
    """Run (or resume) one kdkit experiment in-process; return (summary, wall seconds, resumed)."""
    resume = (run_dir / "config.yaml").is_file()
    t0 = time.perf_counter()
    try:
        summary = run_experiment(cfg, run_dir, overwrite=not resume, resume=resume, console=make_console())
    except ConfigError as exc:
        if not resume:
            raise
        raise SystemExit(
            f"cannot resume {run_dir}: {exc}\nIt was started with other settings; delete it to start again."
        ) from None
    return summary, time.perf_counter() - t0, resume


def command() -> str:
    """Return this invocation as a shell command."""
    return "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]))] + sys.argv[1:])


def teacher_part(args: argparse.Namespace, out: Path, runs_dir: Path, progress: bool) -> dict[str, Any]:
    """Return the teacher's record: a reused checkpoint's own metadata, or a resnet56 trained here (resumable)."""
    path = out / "teacher.json"
    if args.teacher_checkpoint:
        base = checkpoint_base(args.teacher_checkpoint).resolve()
        meta_path = base.with_suffix(".json")
        if not meta_path.is_file() or not base.with_suffix(".safetensors").is_file():
            raise SystemExit(
                f"--teacher-checkpoint {args.teacher_checkpoint}: no {base}.safetensors/.json here"
            )
        meta = json.loads(meta_path.read_text())
        rec: dict[str, Any] = {
            "source": "reused checkpoint",
            "checkpoint": str(base),
            "sha256": file_sha256(base.with_suffix(".safetensors")),
            "model": meta.get("model"),
            "dataset": meta.get("dataset"),
            "checkpoint_metrics": meta.get("metrics"),
        }
        run_root = base.parent.parent  # a kdkit run: RUN/checkpoints/teacher
        for name in ("summary.json", "config.yaml"):
            if (run_root / name).is_file():
                text = (run_root / name).read_text()
                if name == "summary.json":
                    rec["run_summary_teacher"] = json.loads(text).get("models", {}).get("teacher")
                else:
                    rec["run_config_teacher_train"] = (load_yaml(run_root / name).get("teacher") or {}).get(
                        "train"
                    )
        if path.is_file() and json.loads(path.read_text()).get("sha256") == rec["sha256"]:
            # The same weights: keep the stored provenance, but read them from where they are now.
            return {**json.loads(path.read_text()), "checkpoint": str(base)}
        rec["command"] = command()
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(rec, indent=2))
        return rec
    if path.is_file():
        rec = json.loads(path.read_text())
        if Path(rec["checkpoint"] + ".safetensors").is_file():
            return rec
    raw = json.loads(json.dumps(load_yaml(CONFIGS / "kd.yaml")))
    raw.update(name=f"{NAME}-teacher", seed=TEACHER_SPLIT_SEED, phases=["teacher"])
    raw["teacher"]["train"]["epochs"] = 1 if args.quick else args.teacher_epochs
    raw["runtime"] = {"progress": progress, "tensorboard": False}
    if args.quick:
        quick_data(raw)
        raw["teacher"]["model"] = {"name": "resnet8"}
    cfg = build_config(raw, source="configs/cifar10/kd.yaml")
    summary, wall, resumed = execute(cfg, runs_dir / "teacher", progress)
    base = runs_dir / "teacher" / "checkpoints" / "teacher"
    rec = {
        "source": "trained here with kdkit",
        "checkpoint": str(base),
        "sha256": file_sha256(base.with_suffix(".safetensors")),
        "model": cfg.teacher.model.model_dump(mode="json"),
        "dataset": cfg.data.dataset,
        "recipe": cfg.teacher.train.model_dump(mode="json"),
        "test_accuracy": summary["models"]["teacher"]["accuracy"],
        "train_seconds": summary["models"]["teacher"]["train_seconds"],
        "wall_seconds": wall,
        "resumed": resumed,
        "precision": summary["precision"],
        "threads": summary["threads"],
        "command": command(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rec, indent=2))
    return rec


def run_one(
    method: str, seed: int, setup: Setup, teacher: dict[str, Any], out: Path, runs_dir: Path, progress: bool
) -> dict[str, Any]:
    """Run one (method, seed) or return its stored result."""
    name = f"{method}-s{seed}"
    path = out / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    cfg, overrides = run_config(method, seed, setup, checkpoint_base(teacher["checkpoint"]), progress)
    print(f"[{NAME}] {name}: {overrides['config']} with {json.dumps(overrides)}", flush=True)
    t0 = time.perf_counter()
    try:
        summary, wall, resumed = execute(cfg, runs_dir / name, progress)
    # A run that diverges is a result of the method under this budget: it is stored and the table goes on.
    except NonFiniteLossError as err:
        rec = {
            "name": name, "method": method, "seed": seed, "setup": asdict(setup), "overrides": overrides,
            "diverged": str(err), "wall_seconds": time.perf_counter() - t0, "run_dir": str(runs_dir / name),
            "command": command(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine_id": machine_id(),
        }  # fmt: skip
        print(f"[{NAME}] {name} diverged: {err}", flush=True)
        atomic_write_text(path, json.dumps(rec, indent=2))
        return rec
    role = "student_scratch" if method == "scratch" else "student_kd"
    rec = {
        "name": name,
        "method": method,
        "seed": seed,
        "setup": asdict(setup),
        "overrides": overrides,
        "model": summary["models"][role],
        "teacher_accuracy": (summary["models"].get("teacher") or {}).get("accuracy"),
        "wall_seconds": wall,
        "resumed": resumed,
        "precision": summary["precision"],
        "threads": summary["threads"],
        "run_dir": str(runs_dir / name),
        "command": command(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine_id": machine_id(),
    }
    atomic_write_text(path, json.dumps(rec, indent=2))
    return rec


def estimate(args: argparse.Namespace, out_root: Path, teacher: Path, progress: bool) -> int:
    """Time a few training steps of some methods with the real teacher and project the minutes per run."""
    steps = args.estimate
    methods = args.methods or ["scratch", "kd", "fitnet", "vid", "crd", "ft"]
    setup = Setup(1, args.student, args.batch_size, file_sha256(teacher.with_suffix(".safetensors")), False)
    full_steps = -(-45000 // args.batch_size)  # 50,000 training images less the 5,000 held out for validation
    recs: dict[str, Any] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            cfg, _ = run_config(method, 0, setup, teacher, progress)
            raw = cfg.model_dump(mode="json")
            raw["data"].update(train_limit=steps * args.batch_size + 64, val_size=64, test_limit=100)
            for term in raw["distill"]["terms"] or []:
                opts = term.get("options") or {}
                if "paraphraser_epochs" in opts:
                    opts["paraphraser_epochs"] = 1
            raw["runtime"]["log_every"] = 1  # one rate per step
            summary = run_experiment(build_config(raw), Path(tmp) / method, console=make_console())
            lines = [json.loads(ln) for ln in (Path(tmp) / method / "metrics.jsonl").read_text().splitlines()]
            role = "student_scratch" if method == "scratch" else "student_kd"
            rates = [
                r["samples_per_second"] for r in lines if r["phase"] == role and "samples_per_second" in r
            ]
            rates = rates[2:] or rates  # the first steps hold one-off warm-up costs
            rate, best = statistics.median(rates), max(rates)
            per_epoch = 45000 / rate / 60
            rec = {
                "samples_per_second_median": rate,
                "samples_per_second_best": best,
                "epoch_minutes": per_epoch,
                "epoch_minutes_at_best": 45000 / best / 60,
                "step_rates": rates,
            }
            pre = summary["models"][role].get("pretraining")
            if pre:
                rec["paraphraser_epoch_minutes"] = pre[0]["train_seconds"] / steps * full_steps / 60
            recs[method] = rec
            print(
                f"[estimate] {method}: {rate:.0f} samples/s (best step {best:.0f}), {per_epoch:.2f} min per epoch",
                flush=True,
            )
    slowest = max(r["epoch_minutes"] for r in recs.values())
    doc = {
        "command": command(),
        "machine": machine(),
        "date": dt.date.today().isoformat(),
        "steps_timed": steps,
        "student": args.student,
        "batch_size": args.batch_size,
        "teacher": str(teacher),
        "methods": recs,
        "loadavg_1_5_15min_before_after": [load_before, os.getloadavg()],  # other jobs share the cores
        "epochs_in_10_minutes_slowest": int(10 // slowest),
    }
    out_root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_root / f"{NAME}_estimate.json", json.dumps(doc, indent=2))
    print(json.dumps({m: round(r["epoch_minutes"], 2) for m, r in recs.items()}))
    print(f"epochs of the slowest method in 10 minutes: {doc['epochs_in_10_minutes_slowest']}")
    return 0


def render_stored(results_root: Path = ROOT / "benchmarks" / "results") -> str:
    """Return the `methods` section of RESULTS.md from the stored aggregate of its table."""
    return render_table(results_root / MAIN_TABLE)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or the parts not yet done); return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--methods", nargs="+", choices=ALL, default=None, help="default: scratch and all 13 methods"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default: {DEFAULT_SEEDS}")
    ap.add_argument(
        "--epochs", type=int, default=None, help=f"student epochs per run (default {DEFAULT_EPOCHS})"
    )
    ap.add_argument("--student", default="resnet8", help="student model (default resnet8)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--teacher-checkpoint", default=None, help="a kdkit resnet56 teacher checkpoint to reuse")
    ap.add_argument(
        "--teacher-epochs", type=int, default=TEACHER_EPOCHS, help="epochs of the teacher trained here"
    )
    ap.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch, 3 methods, into a temp dir")
    ap.add_argument("--estimate", type=int, default=None, metavar="STEPS", help="time STEPS steps per method")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results directory (default benchmarks/results/{MAIN_TABLE}, the table of RESULTS.md; "
        "any other directory stays out of RESULTS.md)",
    )
    ap.add_argument(
        "--runs-dir", type=Path, default=None, help=f"run directories (default benchmarks/runs/{MAIN_TABLE})"
    )
    add_max_minutes_option(ap)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    budget = RunBudget(args.max_minutes)
    progress = not args.no_progress
    if args.epochs is not None and args.epochs < 1:
        ap.error("--epochs must be at least 1")

    main_results = ROOT / "benchmarks" / "results" / MAIN_TABLE
    if args.quick:
        base = Path(tempfile.mkdtemp(prefix="kdkit-methods-quick-"))
        results_root, runs_root = args.out or base / "results", args.runs_dir or base / "runs"
    else:
        results_root = args.out or main_results
        runs_root = args.runs_dir or ROOT / "benchmarks" / "runs" / MAIN_TABLE
    if args.estimate is not None:
        if not args.teacher_checkpoint:
            ap.error("--estimate times the real teacher: pass --teacher-checkpoint")
        # The estimate is not a table: it goes to benchmarks/results/methods_cifar10_estimate.json unless --out.
        estimate_root = args.out or ROOT / "benchmarks" / "results"
        return estimate(args, estimate_root, checkpoint_base(args.teacher_checkpoint), progress)

    name = f"{NAME}_quick" if args.quick else NAME
    out, runs_dir = results_root / name, runs_root / name
    methods = args.methods or (QUICK_METHODS if args.quick else ALL)
    seeds = args.seeds or ([0] if args.quick else DEFAULT_SEEDS)
    epochs = args.epochs or (1 if args.quick else DEFAULT_EPOCHS)
    t0 = time.perf_counter()
    teacher = teacher_part(args, out, runs_dir, progress)
    setup = Setup(epochs, args.student, args.batch_size, teacher["sha256"], args.quick)
    stored = [json.loads(p.read_text()) for p in sorted(out.glob("*-s*.json"))]
    other = sorted(r["name"] for r in stored if r["setup"] != asdict(setup))
    if other:
        raise SystemExit(
            f"{out} holds results of another setup ({other[:5]}...; this one is {asdict(setup)}): "
            "pass --out/--runs-dir elsewhere or delete them"
        )
    refuse_other_split(out, sorted(r["name"] for r in stored if split_seed_of(r) != TEACHER_SPLIT_SEED))
    pending = [(m, sd) for m, sd in plan(methods, seeds) if not (out / f"{m}-s{sd}.json").is_file()]
    for method, seed in budget.runs(pending, NAME):
        run_one(method, seed, setup, teacher, out, runs_dir, progress)

    results = [json.loads(p.read_text()) for p in sorted(out.glob("*-s*.json"))]
    # Missing runs are counted against the full plan (every method, DEFAULT_SEEDS) and this invocation's.
    wanted = plan(methods, seeds) if args.quick else plan(ALL, sorted({*seeds, *DEFAULT_SEEDS}))
    agg = aggregate(results, wanted)
    measured = [r["teacher_accuracy"] for r in results if r.get("teacher_accuracy") is not None]
    if measured:
        teacher = {**teacher, "measured_test_accuracy": measured[0]}
    info = {
        "setup": asdict(setup),
        "teacher": teacher,
        "machine": machine(),
        "machines": machines_of(results),
        "precision": next((r["precision"] for r in results if "precision" in r), None),
        "date": dt.date.today().isoformat(),
        "commands": list(dict.fromkeys(r["command"] for r in sorted(results, key=lambda r: r["finished"]))),
        "invocation_minutes": (time.perf_counter() - t0) / 60,
    }
    doc = {**info, **agg, "runs": {r["name"]: r for r in results}}
    atomic_write_text(results_root / f"{name}.json", json.dumps(doc, indent=2))
    section = markdown(agg, info)
    if not args.quick and results_root.resolve() == main_results.resolve():  # other --out: not in RESULTS.md
        update_results_md(section, ROOT / "benchmarks" / "RESULTS.md", MARKS)
    print(section)
    print(f"results: {results_root / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
