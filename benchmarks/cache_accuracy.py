"""What the augmentation-consistent teacher cache costs in accuracy: online teacher against K fixed draws per image.

    python benchmarks/cache_accuracy.py --teacher-checkpoint benchmarks/teachers/cifar10-resnet56/teacher  # resumable
    python benchmarks/cache_accuracy.py                 # trains the resnet56 teacher first (as methods_cifar10.py)
    python benchmarks/cache_accuracy.py --teacher-checkpoint ... --max-minutes 90  # start no run after 90 min
    python benchmarks/cache_accuracy.py --table         # rebuild the table from the stored runs only
    python benchmarks/cache_accuracy.py --quick         # tiny subset, 1 epoch, in a temporary directory (tests)

Issue 29: the cache (`distill.teacher_outputs: cache`, K augmentation draws per image fixed up front, the teacher
run once over them) is what makes kdkit's CIFAR epochs several times faster than an online teacher, so its price
is measured here on a full schedule. Every run is configs/cifar10/kd.yaml (resnet56 -> resnet20, 30 epochs, SGD
+ cosine, crop + flip, 0.1 CE + 0.9 KD at T = 4), phases [distill], with one change per row:
- `online`: `teacher_outputs: online` (a teacher forward on every augmented batch: fresh views every epoch);
- `cache-k1`, `cache-k4`, `cache-k16`: `teacher_outputs: cache` with `cache.draws` K; each run builds its own cache
  in its run directory (`cache.dir`), so its wall time includes the build.
Each row runs for >= 2 seeds (the seed sets the student's initialisation, the data order and the draws; every run
uses the teacher's train/validation split, data.split_seed=0). Each finished run is one JSON in
benchmarks/results/cache_accuracy/ (skipped when present; a run directory left by an interrupted run is resumed);
the table goes to the `cache_accuracy` section of benchmarks/RESULTS.md.

Budget, measured at seed 0 (2 cores, AMD EPYC, AVX512-BF16, each run alone on the cores): online 44.5 min a run
(~88 s per epoch: resnet56 forward + resnet20 step); a cache run ~53 s per epoch plus its build, ~0.7 min per draw:
K=1 27.3 min, K=4 30.3 min, K=16 38.5 min; 2.3 h per seed, 4.7 h for two. It runs over several sittings
(`--max-minutes`); the table says which runs are missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchcommon import RunBudget, add_max_minutes_option, machine_id, update_results_md
from methods_cifar10 import (
    CONFIGS,
    ROOT,
    TEACHER_SPLIT_SEED,
    checkpoint_base,
    command,
    execute,
    quick_data,
    refuse_other_split,
    teacher_part,
)

from kdkit.checkpoint import atomic_write_text
from kdkit.config import ExperimentConfig, build_config, load_yaml

NAME = "cache_accuracy"
MARKS = (f"<!-- {NAME}:start -->", f"<!-- {NAME}:end -->")
ROWS = ("online", "cache-k1", "cache-k4", "cache-k16")
SEEDS = (0, 1)
TEACHER_EPOCHS = 10


def draws_of(row: str) -> int | None:
    """Return the cache draws K of a row (None: the online teacher)."""
    return None if row == "online" else int(row.removeprefix("cache-k"))


def run_config(
    row: str, seed: int, teacher: Path, run_dir: Path, quick: bool, progress: bool
) -> ExperimentConfig:
    """Return one run's config: kd.yaml distilled from `teacher`, online or from a K-draw cache in the run dir."""
    # A plain copy: YAML aliases would share sections.
    raw = json.loads(json.dumps(load_yaml(CONFIGS / "kd.yaml")))
    raw.update(name=f"{NAME}-{row}-s{seed}", seed=seed, phases=["distill"])
    raw["data"]["split_seed"] = TEACHER_SPLIT_SEED  # the teacher's split whatever the seed
    raw["teacher"]["checkpoint"] = str(teacher)
    k = draws_of(row)
    raw["distill"]["teacher_outputs"] = "online" if k is None else "cache"
    if k is not None:
        raw["distill"]["cache"] = {"draws": k, "dir": str(run_dir / "teacher-cache")}
    raw["runtime"] = {"progress": progress, "tensorboard": False}
    if quick:
        quick_data(raw)
        raw["student"]["model"] = {"name": "resnet8"}
        raw["student"]["train"] = {**raw["student"]["train"], "epochs": 1}
    return build_config(raw, source="configs/cifar10/kd.yaml")


def refuse_foreign_runs(records: dict[str, dict[str, Any]], teacher_sha256: str, out: Path) -> None:
    """Stop, before anything trains, if a stored run was made with another teacher or on another split."""
    other_teacher = sorted(name for name, r in records.items() if r["teacher_sha256"] != teacher_sha256)
    if other_teacher:
        raise SystemExit(
            f"{out}: {other_teacher} were distilled from another teacher: move the stored runs away"
        )
    refuse_other_split(
        out, sorted(n for n, r in records.items() if r.get("split_seed") != TEACHER_SPLIT_SEED)
    )


def run_one(
    row: str, seed: int, teacher: dict[str, Any], out: Path, runs: Path, args: argparse.Namespace
) -> None:
    """Run one (row, seed) unless its JSON exists; write the JSON."""
    path = out / f"{row}-s{seed}.json"
    if path.is_file():  # checked by refuse_foreign_runs
        return
    run_dir = runs / f"{row}-s{seed}"
    cfg = run_config(
        row, seed, checkpoint_base(teacher["checkpoint"]), run_dir, args.quick, not args.no_progress
    )
    print(f"[{NAME}] {row}-s{seed}: teacher_outputs {cfg.distill.teacher_outputs}", flush=True)
    summary, wall, resumed = execute(cfg, run_dir, not args.no_progress)
    model = summary["models"]["student_kd"]
    rec = {
        "row": row, "seed": seed, "draws": draws_of(row), "test_accuracy": model["accuracy"],
        "train_seconds": model["train_seconds"], "wall_seconds": wall, "resumed": resumed,
        "epochs": cfg.student.train.epochs, "student": cfg.student.model.name, "split_seed": cfg.data.split_seed,
        "teacher_sha256": teacher["sha256"], "teacher_accuracy": teacher_accuracy_of(teacher),
        "precision": summary["precision"], "threads": summary["threads"], "machine_id": machine_id(),
        "command": command(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    atomic_write_text(path, json.dumps(rec, indent=2))


def teacher_accuracy_of(teacher: dict[str, Any]) -> float | None:
    """Return a teacher record's test accuracy: measured when trained here, else its checkpoint's metrics."""
    return teacher.get("test_accuracy") or (teacher.get("checkpoint_metrics") or {}).get("accuracy")


def stored_teacher(out: Path) -> dict[str, Any] | None:
    """Return the teacher record stored beside the runs (teacher.json), if any."""
    path = out / "teacher.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_sd(values: list[float], signed: bool = False) -> str:
    """Return "mean ± sd", or the mean alone for one value (one seed has no spread)."""
    mean = f"{statistics.fmean(values):{'+' if signed else ''}.2f}"
    return f"{mean} ± {statistics.stdev(values):.2f}" if len(values) > 1 else mean


def table(
    records: dict[str, dict[str, Any]], seeds: tuple[int, ...] = SEEDS, teacher: dict[str, Any] | None = None
) -> str:
    """Return the section (marks included) from the stored runs: per row accuracy, its cost against online,
    wall and training minutes per run (the wall time of a cache run includes building its cache) and the online
    rows' mean wall time over the row's (how many times faster the whole run is, build included).

    `teacher` (the stored teacher.json) gives the teacher's accuracy when the runs did not record it and it is
    the runs' teacher (same sha256)."""
    by = {row: [r for r in records.values() if r["row"] == row] for row in ROWS}
    online = {r["seed"]: r["test_accuracy"] for r in by["online"]}
    online_wall_min = statistics.fmean(r["wall_seconds"] for r in by["online"]) / 60 if by["online"] else None
    machines = sorted({r["machine_id"] for r in records.values()})
    days = sorted({r["finished"][:10] for r in records.values()})
    first = next(iter(records.values()), None)
    t_acc = first and first.get("teacher_accuracy")
    if first and not t_acc and teacher and teacher.get("sha256") == first["teacher_sha256"]:
        t_acc = teacher_accuracy_of(teacher)
    lines = [MARKS[0], "## The teacher cache's accuracy (CIFAR-10, resnet56 -> resnet20, kd.yaml)", ""]
    if first:
        lines += [
            f"Command: `{first['command']}`  ",
            f"Machines: {'; '.join(machines)}; runs dated {days[0]} to {days[-1]}; {first['epochs']} epochs, "
            f"student {first['student']}, precision {first['precision']}.  ",
            f"Teacher: sha256 {first['teacher_sha256'][:12]}, test accuracy "
            + (f"{t_acc * 100:.2f}%." if t_acc else "not recorded."),
            "",
        ]
    else:
        lines += ["No run has finished yet; the budget is in benchmarks/cache_accuracy.py's docstring.", ""]
    lines += [
        "| teacher outputs | seeds | test accuracy % (mean ± sd) | per seed | vs online, same seed (points) "
        "| wall min / run (build included) | online wall / this wall | train min / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        runs = sorted(by[row], key=lambda r: r["seed"])
        if not runs:
            continue
        acc = [100 * r["test_accuracy"] for r in runs]
        per = ", ".join(f"s{r['seed']}: {100 * r['test_accuracy']:.2f}" for r in runs)
        gaps = [100 * (r["test_accuracy"] - online[r["seed"]]) for r in runs if r["seed"] in online]
        vs = "-" if row == "online" else (_mean_sd(gaps, signed=True) if gaps else "n/a")
        wall = statistics.fmean(r["wall_seconds"] for r in runs) / 60
        train = statistics.fmean(r["train_seconds"] for r in runs) / 60
        speedup = f"{online_wall_min / wall:.2f}x" if online_wall_min else "n/a"
        label = "online" if row == "online" else f"cache, K = {draws_of(row)}"
        lines.append(
            f"| {label} | {len(runs)} | {_mean_sd(acc)} | {per} | {vs} | {wall:.1f} | {speedup} | {train:.1f} |"
        )
    missing = [f"{row}-s{s}" for s in seeds for row in ROWS if f"{row}-s{s}" not in records]
    lines += ["", "Missing runs: " + (", ".join(missing) if missing else "none") + ".", MARKS[1]]
    return "\n".join(lines)


def load_records(out: Path) -> dict[str, dict[str, Any]]:
    """Return every stored run by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*-s*.json"))}


def render_stored(results_root: Path = ROOT / "benchmarks" / "results") -> str:
    """Return the RESULTS.md section rendered from the stored runs alone."""
    return table(load_records(results_root / NAME), teacher=stored_teacher(results_root / NAME))


def main(argv: list[str] | None = None) -> int:
    """Run the missing runs (or --table); write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-checkpoint", default=None, help="a kdkit resnet56 teacher checkpoint to reuse")
    ap.add_argument(
        "--teacher-epochs", type=int, default=TEACHER_EPOCHS, help="epochs of a teacher trained here"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch, in a temporary directory")
    ap.add_argument("--table", action="store_true", help="rebuild the table from the stored runs only")
    ap.add_argument("--out", type=Path, default=None, help="results directory (else benchmarks/results)")
    add_max_minutes_option(ap)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    budget = RunBudget(args.max_minutes)
    base = Path(tempfile.mkdtemp(prefix="kdkit-cache-accuracy-")) if args.quick and args.out is None else None
    results_root = base / "results" if base else (args.out or ROOT / "benchmarks" / "results")
    runs = (
        base / "runs" if base else results_root.parent / "runs" if args.out else ROOT / "benchmarks" / "runs"
    )
    out, runs = results_root / NAME, runs / NAME
    if not args.table:
        teacher = teacher_part(args, out, runs, not args.no_progress)  # checked, or trained here (resumable)
        refuse_foreign_runs(load_records(out), teacher["sha256"], out)
        pending = [(r, sd) for sd in args.seeds for r in args.rows if not (out / f"{r}-s{sd}.json").is_file()]
        for row, seed in budget.runs(pending, NAME):
            run_one(row, seed, teacher, out, runs, args)
    section = table(load_records(out), tuple(args.seeds), stored_teacher(out))
    if not args.quick and args.out is None:
        update_results_md(section, ROOT / "benchmarks" / "RESULTS.md", MARKS)
    print(section)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
