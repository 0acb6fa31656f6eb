"""Does a refactor change what kdkit computes? The same checks run on an earlier source tree and on this one.

    git worktree add --detach ../kdkit-before 844917f      # the tree to compare with
    python benchmarks/behaviour_check.py --before ../kdkit-before

Checks (each one subprocess per tree, with that tree's `src` on PYTHONPATH; one JSON per finished check under
benchmarks/results/behaviour_check/, skipped when already there, so an interrupted comparison continues):

- quickstart: `kdkit quickstart`; test errors of the three models, and whether their weights are bit-identical;
- speed: `benchmarks/speed.py --quick`, twice per tree (its ratios are measured in one run, so the two trees
  are run one after the other on the same machine);
- methods: `benchmarks/methods_cifar10.py --methods kd fitnet --seeds 0` (one response and one feature term) on
  one resnet56 teacher, trained once by the newer tree and reused by both, so the students' figures compare
  like for like.

The section of benchmarks/RESULTS.md is written from the stored JSONs only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from benchcommon import ROOT, machine, machine_id, update_results_md
from safetensors.torch import load_file

from kdkit.checkpoint import atomic_write_text

NAME = "behaviour_check"
MARKS = (f"<!-- {NAME}:start -->", f"<!-- {NAME}:end -->")
ROLES = ("teacher", "student_scratch", "student_kd")
RUNS = ROOT / "benchmarks" / "runs" / NAME  # run directories and checkpoints: not committed


def _run(tree: Path, args: list[str], log: Path) -> None:
    """Run a Python command with `tree`'s kdkit first on the path; raise with the log's tail when it fails."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree / "src"),
        "KDKIT_DATA": os.environ.get("KDKIT_DATA", "../shared/data"),
    }
    with log.open("w") as f:
        code = subprocess.call([sys.executable, *args], cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{' '.join(args)} failed in {tree} (exit {code}); see {log}")


def _stored(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def quickstart(tree: Path, tag: str, out: Path) -> dict[str, Any]:
    """Run the quickstart with one tree; record its errors and its weights' location."""
    path = out / f"quickstart-{tag}.json"
    if (done := _stored(path)) is not None:
        return done
    run_dir = RUNS / f"quickstart-{tag}"
    _run(
        tree,
        ["-m", "kdkit", "quickstart", "--run-dir", str(run_dir), "--overwrite"],
        RUNS / f"quickstart-{tag}.log",
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    rec = {
        "tree": str(tree),
        "models": {
            r: {k: summary["models"][r][k] for k in ("errors", "val_errors", "test_size")} for r in ROLES
        },
        "weights_sha256": {r: _tensor_digest(run_dir / "checkpoints" / f"{r}.safetensors") for r in ROLES},
        "machine_id": machine_id(),
    }
    atomic_write_text(path, json.dumps(rec, indent=2))
    return rec


def speed(tree: Path, tag: str, rep: int, out: Path) -> dict[str, Any]:
    """Run speed.py --quick with one tree; return its ratios."""
    path = out / f"speed-{tag}-{rep}.json"
    if (done := _stored(path)) is not None:
        return done
    res = RUNS / f"speed-{tag}-{rep}"
    args = ["benchmarks/speed.py", "--quick", "--no-progress", "--out", str(res)]
    _run(tree, args, RUNS / f"speed-{tag}-{rep}.log")
    doc = json.loads((res / "speed_quick.json").read_text())
    rec = {
        "tree": str(tree),
        "ratios": doc["tasks"]["mnist"]["ratios"],
        "machine_id": machine_id(),
        "timed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(path, json.dumps(rec, indent=2))
    return rec


def methods(tree: Path, tag: str, out: Path, teacher: Path | None, epochs: int) -> dict[str, Any]:
    """Run kd and fitnet (seed 0) with one tree on the given teacher (trained here when None)."""
    path = out / f"methods-{tag}.json"
    if (done := _stored(path)) is not None:
        return done
    res, runs = RUNS / f"methods-{tag}", RUNS / f"methods-{tag}-runs"
    args = ["benchmarks/methods_cifar10.py", "--methods", "kd", "fitnet", "--seeds", "0", "--no-progress"]
    args += ["--epochs", str(epochs), "--teacher-epochs", str(epochs)]
    args += ["--out", str(res), "--runs-dir", str(runs)]
    if teacher is not None:
        args += ["--teacher-checkpoint", str(teacher)]
    _run(tree, args, RUNS / f"methods-{tag}.log")
    per_run = {p.stem: json.loads(p.read_text()) for p in sorted((res / "methods_cifar10").glob("*-s0.json"))}
    rec = {
        "tree": str(tree),
        "teacher": str(next(runs.rglob("teacher/checkpoints/teacher.safetensors"), teacher or "")),
        "epochs": epochs,
        "weights_sha256": {
            k: _tensor_digest(Path(v["run_dir"]) / "checkpoints" / "student_kd.safetensors")
            for k, v in per_run.items()
        },
        "runs": {
            k: {"accuracy": v["model"]["accuracy"], "errors": v["model"]["errors"], "run_dir": v["run_dir"]}
            for k, v in per_run.items()
        },
        "machine_id": machine_id(),
    }
    atomic_write_text(path, json.dumps(rec, indent=2))
    return rec


def _tensor_digest(path: Path) -> str:
    """Return the sha256 of a checkpoint's tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(load_file(path).items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def render(recs: dict[str, Any], before: str) -> str:
    """Return the RESULTS.md section from the stored records."""
    qb, qa = recs["quickstart-before"], recs["quickstart-after"]
    lines = [
        MARKS[0],
        f"## Behaviour check of the architecture change (before: {before})",
        "",
        f"Command: `python benchmarks/behaviour_check.py --before <worktree of {before}>`; "
        f"machine: {recs['machine']}; {recs['date']}.",
        "",
        "| quickstart model | test errors before | after | weights bit-identical |",
        "|---|---|---|---|",
    ]
    for r in ROLES:
        same = "yes" if qb["weights_sha256"][r] == qa["weights_sha256"][r] else "no"
        lines.append(f"| {r} | {qb['models'][r]['errors']} | {qa['models'][r]['errors']} | {same} |")
    lines += [
        "",
        "| speed.py --quick | d/a (cache vs student alone) | b/d (tutorial loop vs kdkit cache) |",
        "|---|---|---|",
    ]
    for tag in ("before", "after"):
        for rep in (1, 2):
            ratios = recs[f"speed-{tag}-{rep}"]["ratios"]
            lines.append(f"| {tag}, run {rep} | {ratios['d/a']:.2f} | {ratios['b/d']:.2f} |")
    if "methods-before" in recs and "methods-after" in recs:
        mb, ma = recs["methods-before"], recs["methods-after"]
        lines += [
            "",
            f"| methods: resnet56 -> resnet8, seed 0, {ma['epochs']} epoch(s), one teacher | test accuracy before "
            "| after | student weights bit-identical |",
            "|---|---|---|---|",
        ]
        for k in sorted(ma["runs"]):
            same = "yes" if mb["weights_sha256"][k] == ma["weights_sha256"][k] else "no"
            lines.append(
                f"| {k} | {mb['runs'][k]['accuracy']:.4f} | {ma['runs'][k]['accuracy']:.4f} | {same} |"
            )
    lines.append(MARKS[1])
    return "\n".join(lines)


def where_and_when(recs: dict[str, Any]) -> dict[str, str]:
    """Return the section's machine (the machines the stored records name) and date (the days the speed
    checks were timed): taken from the records, so the section renders the same on any day."""
    runs = [r for r in recs.values() if isinstance(r, dict)]
    machines = sorted({r["machine_id"] for r in runs if r.get("machine_id")}) or [machine_id(machine())]
    days = sorted({r["timed_at"][:10] for r in runs if r.get("timed_at")})
    when = (
        "date not recorded"
        if not days
        else "speed checks timed " + (days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}")
    )
    return {"machine": "; ".join(machines), "date": when}


def stored_records(out: Path = ROOT / "benchmarks" / "results" / NAME) -> dict[str, Any]:
    """Return the stored records of both trees (one JSON per check) with their machine and date."""
    recs: dict[str, Any] = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    return {**recs, **where_and_when(recs)}


def render_stored(results_root: Path = ROOT / "benchmarks" / "results", before: str = "844917f") -> str:
    """Return the RESULTS.md section from the committed records, without running anything."""
    return render(stored_records(results_root / NAME), before)


def main(argv: list[str] | None = None) -> int:
    """Run the checks not yet stored on both trees and write the RESULTS.md section."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the earlier tree")
    ap.add_argument("--before-label", default="844917f", help="how the earlier tree is named in RESULTS.md")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / NAME)
    ap.add_argument(
        "--skip-methods", action="store_true", help="quickstart and speed only (minutes, not an hour)"
    )
    ap.add_argument(
        "--methods-epochs",
        type=int,
        default=1,
        help="teacher and student epochs of the methods check (default 1)",
    )
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    trees = {"before": args.before.resolve(), "after": ROOT}
    recs: dict[str, Any] = {}
    for tag, tree in trees.items():
        recs[f"quickstart-{tag}"] = quickstart(tree, tag, out)
    for rep in (1, 2):
        for tag, tree in trees.items():
            recs[f"speed-{tag}-{rep}"] = speed(tree, tag, rep, out)
    if not args.skip_methods:
        ep = args.methods_epochs
        recs["methods-after"] = methods(ROOT, "after", out, None, ep)
        teacher = Path(recs["methods-after"]["teacher"]).with_suffix("")
        recs["methods-before"] = methods(trees["before"], "before", out, teacher, ep)
    recs.update(where_and_when(recs))
    update_results_md(render(recs, args.before_label), ROOT / "benchmarks" / "RESULTS.md", MARKS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
