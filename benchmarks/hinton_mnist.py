"""Reproduce the MNIST table of Hinton, Vinyals & Dean (2015), section 3, plus its temperature study.

    python benchmarks/hinton_mnist.py            # the full benchmark (resumable)
    python benchmarks/hinton_mnist.py --quick    # a shortened version for the test suite
    python benchmarks/hinton_mnist.py --jittered-transfer   # plus a row outside the paper's setup (below)

Every row is an ordinary `kdkit` run of configs/hinton-mnist.yaml with `--set` overrides. Each finished run
writes one JSON under benchmarks/results/hinton_mnist/ and is skipped when the benchmark runs again, so an
interrupted benchmark continues where it stopped. The aggregate goes to benchmarks/results/hinton_mnist.json
and a table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchcommon import machine, machine_id, machines_line, machines_of
from benchcommon import update_results_md as _update_results_md

from kdkit.checkpoint import atomic_write_text, file_sha256
from kdkit.config import load_config
from kdkit.console import make_console
from kdkit.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "hinton-mnist.yaml"
PAPER = {
    "teacher": 67,
    "scratch": 146,
    "distilled": 74,
    "omit3": 206,
    "omit3_threes": 133,
    "omit3_bias": 109,
    "omit3_bias_threes": 14,
}
TEMPERATURES = [1, 2, 2.5, 3, 4, 5, 8, 10, 20]
# Rows with a result per seed, and the paper's row each is measured against.
SEED_ROWS = {
    "teacher": "teacher",
    "scratch": "scratch",
    "scratch_selected": "scratch",
    "distilled": "distilled",
    "distilled_jittered": "distilled",
}
# The table's order: the jittered-transfer row is the paper row, the fixed-transfer row stays beside it.
ROW_ORDER = ["teacher", "scratch", "scratch_selected", "distilled_jittered", "distilled"]
PAPER_ROW_REASON = (
    "The jittered-transfer row is the paper row: Hinton et al. trained their teacher on images jittered by up to "
    "2 pixels and do not say that the transfer set was unjittered, so distilling on the jittered images is a "
    "faithful reading of the paper; the fixed-transfer row, the narrower reading of earlier sittings, stays beside it."
)
SWEEP_WIDTHS = [30, 300]
# The sweep's distilled students train as long as its scratch students (30 epochs), which keeps the
# 18 sweep runs within the 45-minute budget.
SWEEP_TRAIN = ["distill.train.epochs=30"]
# --jittered-transfer: the distilled row again with the transfer set jittered by up to 2 pixels, as the
# teacher's training images were. Issue 29 decided that this is the paper row (the paper does not say that the
# transfer set was unjittered); the table shows it as such and keeps the fixed-transfer row beside it. The
# runs are still opt-in: the default (45-minute) benchmark is the fixed-transfer one.
JITTERED_TRANSFER = ["distill.train.augment={jitter: 2}"]
MARK_START, MARK_END = "<!-- hinton_mnist:start -->", "<!-- hinton_mnist:end -->"


@dataclass
class Run:
    """One kdkit run of the benchmark: a name, overrides, and the runs whose teacher it needs."""

    name: str
    overrides: list[str]
    teacher_from: str | None = None
    role: str = "student_kd"
    tags: dict[str, Any] = field(default_factory=dict)


SELECTION = "hinton_select.json"  # hinton_select.py's summary: the recipes chosen on validation


def selected_scratch(results_root: Path) -> list[str]:
    """Return the scratch student's recipe chosen on validation by hinton_select.py (its student.train
    override), from the same candidates and split as the distilled student's (issue 29)."""
    path = results_root / SELECTION
    chosen = json.loads(path.read_text()).get("chosen_scratch") if path.exists() else None
    if not chosen:
        raise SystemExit(
            f"--selected-scratch needs the scratch selection in {path}: run benchmarks/hinton_select.py --part scratch"
        )
    return list(chosen["overrides"])


def plan(
    seeds: list[int], quick: bool, jittered_transfer: bool = False, scratch_recipe: list[str] | None = None
) -> list[Run]:
    """Return the runs of the benchmark in dependency order; `scratch_recipe` (overrides) adds the scratch
    student trained with the recipe selected on validation (row scratch_selected) beside the paper's."""
    runs: list[Run] = []
    quick_over = (
        [
            "data.train_limit=10000",
            "teacher.train.epochs=12",
            "student.train.epochs=8",
            "distill.train.epochs=8",
        ]
        if quick
        else []
    )
    for s in seeds:
        runs.append(
            Run(
                f"teacher-s{s}",
                [*quick_over, f"seed={s}", "phases=[teacher]"],
                role="teacher",
                tags={"row": "teacher", "seed": s},
            )
        )
        runs.append(
            Run(
                f"scratch-s{s}",
                [*quick_over, f"seed={s}", "phases=[scratch]"],
                role="student_scratch",
                tags={"row": "scratch", "seed": s},
            )
        )
        if scratch_recipe:
            runs.append(
                Run(
                    f"scratch-selected-s{s}",
                    [*quick_over, f"seed={s}", "phases=[scratch]", *scratch_recipe],
                    role="student_scratch",
                    tags={"row": "scratch_selected", "seed": s},
                )
            )
        runs.append(
            Run(
                f"distilled-s{s}",
                [*quick_over, f"seed={s}", "phases=[distill]"],
                teacher_from=f"teacher-s{s}",
                tags={"row": "distilled", "seed": s},
            )
        )
        if jittered_transfer:
            runs.append(
                Run(
                    f"distilled-jittered-s{s}",
                    [*quick_over, f"seed={s}", "phases=[distill]", *JITTERED_TRANSFER],
                    teacher_from=f"teacher-s{s}",
                    tags={"row": "distilled_jittered", "seed": s},
                )
            )
    if quick:
        return runs
    s0 = seeds[0]
    runs.append(
        Run(
            f"omit3-s{s0}",
            [f"seed={s0}", "phases=[distill]", "distill.omit_classes=[3]", "distill.class_bias={3: 3.5}"],
            teacher_from=f"teacher-s{s0}",
            tags={"row": "omit3", "seed": s0},
        )
    )
    for w in SWEEP_WIDTHS:
        hidden = f"student.model.hidden=[{w}, {w}]"
        runs.append(
            Run(
                f"sweep-h{w}-scratch-s{s0}",
                [f"seed={s0}", "phases=[scratch]", hidden],
                role="student_scratch",
                tags={"row": "sweep", "width": w, "temperature": None},
            )
        )
        for t in TEMPERATURES:
            runs.append(
                Run(
                    f"sweep-h{w}-T{t}-s{s0}",
                    [f"seed={s0}", "phases=[distill]", hidden, f"distill.temperature={t}", *SWEEP_TRAIN],
                    teacher_from=f"teacher-s{s0}",
                    tags={"row": "sweep", "width": w, "temperature": t},
                )
            )
    return runs


# Config fields added after results were stored, whose default keeps the behaviour from before them:
# data.split_seed (split by the run's seed), train.ema_decay (no weight average), the data fields of named
# split folders and a held-out test set, pretrained weights, fine-tuning rates, mixing, sentence and language-model data. Left out
# at their default, so that stored results stay current.
_LATER_FIELDS = {
    "split_seed": None,
    "ema_decay": None,
    "splits": None,
    "test_size": None,
    "test_seed": 0,
    "allow_missing_test_classes": False,
    # fine-tuning pretrained models and mixing (issue 30), sentence data (issue 31)
    "pretrained": None,
    "backbone_lr_scale": 1.0,
    "freeze_backbone_epochs": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "text": None,
    "lm": None,
}


def _without_later_defaults(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {
            k: _without_later_defaults(v)
            for k, v in doc.items()
            if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k] and type(v) is type(_LATER_FIELDS[k]))
        }
    if isinstance(doc, list):
        return [_without_later_defaults(v) for v in doc]
    return doc


def fingerprint(cfg: Any, teacher_sha256: str | None) -> str:
    """Return a hash of what a run's result depends on: its resolved config and its teacher's weights.

    Only the sections the run's phases read are in: a teacher-only run ignores the student and distill
    sections, a scratch run the teacher and distill sections, and a run that loads its teacher ignores how
    that teacher was trained (the hash of its weights stands for it). The runtime section (progress bars,
    threads, logging) and the teacher's path are left out. A stored result whose fingerprint differs was made
    by another recipe (or from another teacher) and is run again.
    """
    doc = cfg.model_dump(mode="json")
    doc.pop("runtime", None)
    phases = set(cfg.phases)
    if "distill" not in phases:
        doc.pop("distill", None)
    else:  # the optimisation the distilled student gets, whether spelled out or inherited from student.train
        doc["distill"]["train"] = cfg.distill_train().model_dump(mode="json")
    if not phases & {"scratch", "distill"}:
        doc.pop("student", None)
    if not phases & {"teacher", "distill"}:
        doc.pop("teacher", None)
    teacher = doc.get("teacher", {})
    teacher.pop("checkpoint", None)
    for member in teacher.get("ensemble") or []:  # loaded members: the hashes of their weights stand for them
        member.pop("checkpoint", None)
    if "teacher" not in phases:
        teacher.pop("train", None)
    h = hashlib.sha256(json.dumps(_without_later_defaults(doc), sort_keys=True).encode())
    if teacher_sha256 is not None:
        h.update(teacher_sha256.encode())
    return h.hexdigest()


def teacher_file(runs_dir: Path, name: str) -> Path:
    """Return where the run `name` in runs_dir keeps its trained teacher."""
    return runs_dir / name / "checkpoints" / "teacher.safetensors"


def weights_sha(out: Path, name: str, ckpt: Path) -> str | None:
    """The sha256 of the teacher weights run `name` trained: as its stored result in `out` records it (the
    weights may be gone, e.g. in a fresh checkout: results/ is in git, runs/ is not), else by hashing its
    checkpoint `ckpt`; None when neither is there."""
    stored = out / f"{name}.json"
    sha = json.loads(stored.read_text()).get("weights_sha256") if stored.exists() else None
    return file_sha256(ckpt) if sha is None and ckpt.exists() else sha


def resolve(
    run: Run, out: Path, runs_dir: Path, progress: bool = False, threads: int | None = None
) -> tuple[Any, str]:
    """Return (config, fingerprint) of a run.

    The teacher's weights are known by their sha256 (weights_sha).
    """
    overrides = [*run.overrides, *runtime_overrides(progress, threads)]
    teacher_sha = None
    if run.teacher_from:
        ckpt = teacher_file(runs_dir, run.teacher_from)
        overrides.append(f"teacher.checkpoint={json.dumps(str(ckpt))}")
        teacher_sha = weights_sha(out, run.teacher_from, ckpt)
    cfg = load_config(CONFIG, overrides)
    return cfg, fingerprint(cfg, teacher_sha)


def runtime_overrides(progress: bool, threads: int | None) -> list[str]:
    """Return the --set overrides of how a benchmark run executes (left out of its fingerprint)."""
    over = [f"runtime.progress={str(progress).lower()}", "runtime.tensorboard=false"]
    return [*over, f"runtime.threads={threads}"] if threads is not None else over


def current_result(path: Path, fp: str) -> dict[str, Any] | None:
    """Return the stored result at path if today's recipe (fingerprint fp) made it, else None (run again)."""
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    return stored if stored.get("fingerprint") == fp else None


def is_done(run: Run, out: Path, runs_dir: Path) -> bool:
    """Return True when the run's stored result was made by today's recipe (and today's teacher)."""
    return current_result(out / f"{run.name}.json", resolve(run, out, runs_dir)[1]) is not None


def execute(
    run: Run, out: Path, runs_dir: Path, progress: bool, threads: int | None = None
) -> dict[str, Any]:
    """Run one benchmark entry (or return its stored result) and store its JSON."""
    res_path = out / f"{run.name}.json"
    cfg, fp = resolve(run, out, runs_dir, progress, threads)
    stored = current_result(res_path, fp)
    if stored is not None:
        return stored
    t0 = time.perf_counter()
    summary = run_experiment(cfg, runs_dir / run.name, overwrite=True, console=make_console())
    rec = {
        "name": run.name,
        "tags": run.tags,
        "overrides": run.overrides,
        "wall_seconds": time.perf_counter() - t0,
        "model": summary["models"][run.role],
        "precision": summary["precision"],
        "threads": summary["threads"],
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine_id": machine_id(),
        "fingerprint": fp,
    }
    if run.role == "teacher":
        rec["weights_sha256"] = file_sha256(teacher_file(runs_dir, run.name))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(res_path, json.dumps(rec, indent=2))
    return rec


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def aggregate(results: dict[str, dict]) -> dict[str, Any]:
    """Return the table rows (mean and spread over seeds) and the temperature sweep."""
    rows: dict[str, Any] = {}
    for row, paper_row in SEED_ROWS.items():
        recs = [r for r in results.values() if r["tags"].get("row") == row]
        if recs:
            rows[row] = {
                "errors": _stats([r["model"]["errors"] for r in recs]),
                "per_seed": {r["tags"]["seed"]: r["model"]["errors"] for r in recs},
                "paper": PAPER[paper_row],
            }
    omit = [r for r in results.values() if r["tags"].get("row") == "omit3"]
    if omit:
        m = omit[0]["model"]
        rows["omit3"] = {
            "errors": m["before_class_bias"]["errors"],
            "errors_on_3": m["before_class_bias"]["errors_per_class"][3],
            "paper": PAPER["omit3"],
            "paper_on_3": PAPER["omit3_threes"],
        }
        rows["omit3_bias"] = {
            "errors": m["errors"],
            "errors_on_3": m["errors_per_class"][3],
            "paper": PAPER["omit3_bias"],
            "paper_on_3": PAPER["omit3_bias_threes"],
        }
    sweep: dict[str, dict[str, int]] = {}
    for r in results.values():
        if r["tags"].get("row") == "sweep":
            t = r["tags"]["temperature"]
            sweep.setdefault(str(r["tags"]["width"]), {})["scratch" if t is None else str(t)] = r["model"][
                "errors"
            ]
    return {"rows": rows, "sweep": sweep}


def plot_sweep(sweep: dict[str, dict[str, int]], path: Path) -> bool:
    """Save the errors-against-temperature plot as a PNG; return False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for width, pts in sorted(sweep.items(), key=lambda kv: int(kv[0])):
        ts = sorted(float(k) for k in pts if k != "scratch")
        line = ax.plot(ts, [pts[_tkey(t)] for t in ts], marker="o", label=f"{width}-{width} distilled")
        if "scratch" in pts:
            ax.axhline(pts["scratch"], ls="--", color=line[0].get_color(), label=f"{width}-{width} scratch")
    ax.set_xscale("log")
    ax.set_xticks(TEMPERATURES, [str(t) for t in TEMPERATURES])
    ax.set_xlabel("temperature T")
    ax.set_ylabel("test errors (of 10,000)")
    ax.set_title("MNIST distillation: errors against temperature")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _tkey(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else str(t)


def markdown(agg: dict[str, Any], info: dict[str, Any]) -> str:
    """Return the RESULTS.md section for this benchmark."""
    rows = agg["rows"]
    lines = [
        MARK_START,
        "## Hinton et al. (2015), MNIST (section 3)",
        "",
        f"Command: `{info['command']}`  ",
        machines_line(info["machines"], info["machine"], info["precision"]),
        f"Date: {info['date']}; total run time {info['total_minutes']:.1f} min "
        f"(sum of the runs' wall times; this invocation {info['invocation_minutes']:.1f} min)",
        "",
        "| row | kdkit test errors (of 10,000) | seeds | paper | gap |",
        "|---|---|---|---|---|",
    ]
    names = {
        "teacher": "teacher 1200-1200, dropout + jitter (+ max-norm 4, which never binds)",
        "scratch": "student 800-800, scratch (the paper's recipe: SGD, 30 epochs)",
        "scratch_selected": "student 800-800, scratch, recipe selected on validation from the distilled "
        "student's candidates",
        "distilled_jittered": "**paper row:** student 800-800, distilled at T=20, transfer set jittered by up to 2 "
        "pixels",
        "distilled": "student 800-800, distilled at T=20, transfer set without jitter (fixed transfer)",
    }
    for key in ROW_ORDER:
        if key in rows:
            r = rows[key]
            e = r["errors"]
            per = ", ".join(str(v) for _, v in sorted(r["per_seed"].items()))
            lines.append(
                f"| {names[key]} | {e['mean']:.1f} ± {e['std']:.1f} ({per}) | {e['n']} | {r['paper']} | "
                f"{e['mean'] - r['paper']:+.1f} |"
            )
    for key, label in (
        ("omit3", "distilled (fixed transfer), every 3 omitted from the transfer set"),
        ("omit3_bias", "the same, bias of class 3 raised by 3.5"),
    ):
        if key in rows:
            r = rows[key]
            lines.append(
                f"| {label} | {r['errors']} ({r['errors_on_3']} on the 1,010 threes) | 1 | "
                f"{r['paper']} ({r['paper_on_3']} on threes) | {r['errors'] - r['paper']:+d} |"
            )
    if "distilled_jittered" in rows:
        lines += ["", PAPER_ROW_REASON + "  "]
        for key, label in (("distilled_jittered", "Paper row"), ("distilled", "Fixed transfer")):
            if key in rows:
                e, paper = rows[key]["errors"], rows[key]["paper"]
                lines.append(
                    f"{label}: mean {e['mean']:.1f} test errors, spread ± {e['std']:.1f} (std over {e['n']} "
                    f"seeds, {e['min']} to {e['max']}), gap {e['mean'] - paper:+.1f} against the paper's {paper}.  "
                )
    if "scratch_selected" in rows:
        base = rows["scratch_selected"]["errors"]
        lines += ["", "Equal selection: the scratch student's recipe was chosen on the same validation split from "
                  "the same candidates as the distilled student's (`benchmarks/hinton_select.py`).  "]  # fmt: skip
        for key, label in (("distilled_jittered", "paper row"), ("distilled", "fixed transfer")):
            if key in rows:
                e = rows[key]["errors"]
                gain = base["mean"] - e["mean"]
                clear = "more" if gain > 2 * max(base["std"], e["std"]) else "not more"
                lines.append(
                    f"Distilled ({label}) against the selected scratch student: {base['mean']:.1f} - {e['mean']:.1f}"
                    f" = {gain:+.1f} errors fewer ({clear} than twice the larger spread).  "
                )
    if agg["sweep"]:
        lines += [
            "",
            "Temperature study (test errors, seed 0; `scratch` = the same student without a teacher):",
            "",
            "| student | scratch | " + " | ".join(f"T={_tkey(t)}" for t in TEMPERATURES) + " |",
            "|---|---|" + "---|" * len(TEMPERATURES),
        ]
        for width, pts in sorted(agg["sweep"].items(), key=lambda kv: int(kv[0])):
            cells = [str(pts.get(_tkey(t), "-")) for t in TEMPERATURES]
            lines.append(f"| {width}-{width} | {pts.get('scratch', '-')} | " + " | ".join(cells) + " |")
        lines += ["", "![errors against temperature](results/hinton_mnist_temperature.png)"]
    lines += ["", MARK_END]
    return "\n".join(lines)


def runs_dates(results: dict[str, dict[str, Any]]) -> str:
    """The day (or first and last days, UTC) the results' runs finished: stored runs are reused, so the day an
    invocation renders the table is not the day its figures were measured. Today for runs that record none."""
    days = sorted({r["finished"][:10] for r in results.values() if r.get("finished")})
    if not days:
        return dt.date.today().isoformat()
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def update_results_md(section: str, path: Path, marks: tuple[str, str] = (MARK_START, MARK_END)) -> None:
    """Replace a marked section of RESULTS.md (this benchmark's by default); see benchcommon."""
    _update_results_md(section, path, marks)


def forget_teachers_without_weights(runs: list[Run], out: Path, runs_dir: Path) -> None:
    """Drop a teacher's stored result when a run still to do needs its weights and they are gone.

    E.g. a new checkout (results/ is in git, runs/ is not) with a changed student recipe: the teacher then
    trains again first, and every run it teaches follows (their fingerprints name the teacher's weights).
    """
    for run in runs:
        gone = run.teacher_from and not teacher_file(runs_dir, run.teacher_from).exists()
        if gone and not is_done(run, out, runs_dir):
            (out / f"{run.teacher_from}.json").unlink(missing_ok=True)


def run_parallel(runs: list[Run], jobs: int, out: Path, runs_dir: Path, progress: bool) -> dict[str, dict]:
    """Run the plan in `jobs` worker processes of one thread each, a run once its teacher is trained.

    On two cores two one-thread runs finish sooner than the same runs one after another with two threads
    each (small GEMMs do not scale to two threads). Teachers start first: the other runs wait for them.
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pending = sorted(runs, key=lambda r: r.role != "teacher")  # stable: teachers first, then plan order
    done: dict[str, dict] = {}
    running: dict[Any, Run] = {}
    # spawn, not fork: the parent has torch's thread pools initialised.
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        while pending or running:
            for run in list(pending):
                if len(running) >= jobs:
                    break
                if run.teacher_from is None or run.teacher_from in done:
                    running[pool.submit(execute, run, out, runs_dir, progress, 1)] = run
                    pending.remove(run)
            if not running:
                missing = sorted({str(r.teacher_from) for r in pending})
                raise SystemExit(f"runs wait for teachers that are not in the plan: {missing}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                done[running.pop(fut).name] = fut.result()
    return done


def render_stored(results_root: Path = ROOT / "benchmarks" / "results") -> str:
    """Return the RESULTS.md section from the committed benchmarks/results/hinton_mnist.json, without training."""
    doc = json.loads((results_root / "hinton_mnist.json").read_text())
    return markdown({"rows": doc["rows"], "sweep": doc["sweep"]}, doc)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the teacher/scratch/distilled rows"
    )
    ap.add_argument("--quick", action="store_true", help="shortened run (10,000 training images, few epochs)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    ap.add_argument(
        "--runs-dir", type=Path, default=None, help="kdkit run directories (default benchmarks/runs)"
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument(
        "--jittered-transfer",
        action="store_true",
        help="also distil with the transfer set jittered by up to 2 pixels (the paper row, issue 29; an extra row)",
    )
    ap.add_argument(
        "--jobs", type=int, default=1, help="worker processes of one thread each (default 1: in-process)"
    )
    ap.add_argument(
        "--selected-scratch",
        action="store_true",
        help="also train the scratch student with the recipe hinton_select.py chose on validation (issue 29)",
    )
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")

    results_root = args.out or ROOT / "benchmarks" / "results"
    name = "hinton_mnist_quick" if args.quick else "hinton_mnist"
    out = results_root / name
    runs_dir = (args.runs_dir or ROOT / "benchmarks" / "runs") / name
    t0 = time.perf_counter()
    recipe = selected_scratch(results_root) if args.selected_scratch else None
    runs = plan(args.seeds, args.quick, args.jittered_transfer, recipe)
    forget_teachers_without_weights(runs, out, runs_dir)
    if args.jobs > 1:
        results = run_parallel(runs, args.jobs, out, runs_dir, not args.no_progress)
    else:
        results = {run.name: execute(run, out, runs_dir, not args.no_progress) for run in runs}
    results = {run.name: results[run.name] for run in runs}  # table order = plan order
    agg = aggregate(results)
    total = sum(r["wall_seconds"] for r in results.values())
    info = {
        "command": "python benchmarks/hinton_mnist.py"
        + (" --quick" if args.quick else "")
        + ("" if args.seeds == [0, 1] else " --seeds " + " ".join(map(str, args.seeds)))
        + (" --jittered-transfer" if args.jittered_transfer else "")
        + (" --selected-scratch" if args.selected_scratch else "")
        + (f" --jobs {args.jobs}" if args.jobs > 1 else ""),
        "machine": machine(),
        "machines": machines_of(results),
        "precision": next(iter(results.values()))["precision"],
        "date": runs_dates(results),
        "total_minutes": total / 60,
        "invocation_minutes": (time.perf_counter() - t0) / 60,
    }
    doc = {**info, **agg, "runs": results}
    atomic_write_text(results_root / f"{name}.json", json.dumps(doc, indent=2))
    if not args.quick:
        plot_sweep(agg["sweep"], results_root / "hinton_mnist_temperature.png")
        update_results_md(markdown(agg, info), ROOT / "benchmarks" / "RESULTS.md")
    print(markdown(agg, info))
    print(json.dumps({k: v["errors"] for k, v in agg["rows"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
