"""Distillation strategies on MNIST, each against its plain baseline on the same budget.

    python benchmarks/strategies.py                  # every row (resumable: finished rows are skipped)
    python benchmarks/strategies.py --only ensemble  # some rows
    python benchmarks/strategies.py --quick          # every row in a tiny form, in a temporary directory

Rows come from modules beside this file, each defining ``ROWS: dict[str, Callable]``:
``strategies_teachers`` (teacher ensembles, unlabeled transfer sets) and, when present,
``strategies_peers`` (joint/online training). A row is a function

    row(args: argparse.Namespace, workdir: Path) -> dict

``args`` carries ``quick`` (bool: tiny form for the test suite), ``seed`` (int), ``progress`` (bool) and
``threads`` (int or None: set ``runtime.threads`` of the row's runs to it when given);
``workdir`` is an empty-or-reused directory of the row's own kdkit runs (a row may reuse finished runs there).
It returns at least::

    {
        "rows": [{"label": str, "test_errors": int, "test_accuracy": float, "seconds": float, ...}, ...],
        "baseline": {"label": str, "test_errors": int, "test_accuracy": float, "seconds": float, ...},
            # or the label (str) of one of "rows", which then becomes the baseline
        "budget": str,   # optional: what "the same budget" means for this row
        "notes": str,    # optional
    }

Each finished row is written to ``benchmarks/results/strategies/<row>.json`` (with the command, machine, date
and the row's wall time) and skipped when the benchmark runs again; the aggregate goes to
``benchmarks/results/strategies.json`` and the ``strategies`` section of ``benchmarks/RESULTS.md``.
``--quick`` writes into a temporary directory (unless ``--out`` is given); RESULTS.md is updated only by a
full run into the default results directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchcommon import machine, update_results_md  # noqa: E402

from kdkit.checkpoint import atomic_write_text  # noqa: E402

MODULES = ("strategies_teachers", "strategies_peers")
MARKS = ("<!-- strategies:start -->", "<!-- strategies:end -->")
REQUIRED = ("label", "test_errors", "test_accuracy", "seconds")


def collect_rows() -> dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]]:
    """Return every row of the modules that exist, in module order; a row name may appear only once."""
    rows: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {}
    for name in MODULES:
        if not (ROOT / "benchmarks" / f"{name}.py").is_file():
            continue
        module = importlib.import_module(name)
        for key, fn in getattr(module, "ROWS", {}).items():
            if key in rows:
                raise SystemExit(f"row {key!r} is defined twice (again in {name}.py)")
            rows[key] = fn
    return rows


def normalize(res: dict[str, Any]) -> dict[str, Any]:
    """Return the result with "baseline" as an entry: a baseline given by label is taken out of "rows"."""
    base = res.get("baseline")
    if isinstance(base, str):
        found = [r for r in res.get("rows", []) if r.get("label") == base]
        if len(found) != 1:
            raise SystemExit(f"baseline {base!r} names {len(found)} of the row's entries, expected exactly 1")
        res = {**res, "baseline": found[0], "rows": [r for r in res["rows"] if r is not found[0]]}
    return res


def check_result(name: str, res: dict[str, Any]) -> None:
    """Refuse a row result that lacks the fields the report needs."""
    entries = [*res.get("rows", []), res.get("baseline") or {}]
    missing = [f"{e.get('label', '?')}: {k}" for e in entries for k in REQUIRED if k not in e]
    if not res.get("rows") or not res.get("baseline") or missing:
        raise SystemExit(f"row {name!r} returned an incomplete result (missing {missing or 'rows/baseline'})")


def run_row(
    name: str,
    fn: Callable[..., dict[str, Any]],
    args: argparse.Namespace,
    out: Path,
    work: Path,
    command: str,
) -> dict[str, Any]:
    """Run one row (or return its stored result) and store its JSON."""
    path = out / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    res = normalize(fn(args, work / name))
    check_result(name, res)
    rec = {
        "row": name,
        **res,
        "command": command,
        "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "quick": args.quick,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rec, indent=2))
    return rec


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """Return the RESULTS.md section: one table per row, each line against the row's baseline."""
    lines = [MARKS[0], "## Distillation strategies (MNIST)", ""]
    for name, r in results.items():
        m = r["machine"]
        base = r["baseline"]
        lines += [
            f"### {name}",
            "",
            f"Command: `{r['command']}`  ",
            f"Machine: {m['nproc']} cores, {m['cpu']}, torch {m['torch']}; date {r['date'][:10]}; "
            f"row wall time {r['wall_seconds'] / 60:.1f} min  ",
        ]
        if r.get("budget"):
            lines.append(f"Budget: {r['budget']}  ")
        lines += [
            "",
            "| variant | test errors (of 10,000) | test accuracy | vs baseline (errors) | seconds |",
            "|---|---|---|---|---|",
            f"| {base['label']} (baseline) | {base['test_errors']} | {_pct(base['test_accuracy'])} | - | "
            f"{base['seconds']:.0f} |",
        ]
        for row in r["rows"]:
            delta = row["test_errors"] - base["test_errors"]
            lines.append(
                f"| {row['label']} | {row['test_errors']} | {_pct(row['test_accuracy'])} | {delta:+d} | "
                f"{row['seconds']:.0f} |"
            )
        if r.get("notes"):
            lines += ["", r["notes"]]
        lines.append("")
    lines.append(MARKS[1])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="every row in a tiny form, into a temporary directory"
    )
    ap.add_argument("--only", nargs="+", default=None, metavar="ROW", help="run only these rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="kdkit runs (default benchmarks/runs/strategies)"
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of every run (default: kdkit's); 1 avoids the slowdown of 2 threads on busy cores",
    )
    args = ap.parse_args(argv)
    args.progress = not args.no_progress

    rows = collect_rows()
    unknown = sorted(set(args.only or []) - set(rows))
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {sorted(rows)}")
    selected = {k: v for k, v in rows.items() if not args.only or k in args.only}
    tmp = Path(tempfile.mkdtemp(prefix="kdkit-strategies-")) if args.quick else None
    results_root = args.out or (tmp / "results" if tmp else ROOT / "benchmarks" / "results")
    work = args.workdir or (tmp / "runs" if tmp else ROOT / "benchmarks" / "runs" / "strategies")
    out = results_root / ("strategies_quick" if args.quick else "strategies")
    command = "python benchmarks/strategies.py" + (" --quick" if args.quick else "")
    command += (" --only " + " ".join(args.only)) if args.only else ""
    command += f" --seed {args.seed}" if args.seed else ""
    command += f" --threads {args.threads}" if args.threads else ""

    results = {name: run_row(name, fn, args, out, work, command) for name, fn in selected.items()}
    # The aggregate holds every finished row, also those of earlier invocations (--only).
    every = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    ordered = {k: every[k] for k in rows if k in every}
    ordered.update({k: v for k, v in every.items() if k not in ordered})
    doc = {"rows": ordered}
    name = "strategies_quick" if args.quick else "strategies"
    atomic_write_text(results_root / f"{name}.json", json.dumps(doc, indent=2))
    section = markdown(ordered)
    if not args.quick and args.out is None:  # RESULTS.md reports the repository's own results only
        update_results_md(section, ROOT / "benchmarks" / "RESULTS.md", MARKS)
    print(section)
    print(f"results: {results_root / f'{name}.json'}")
    print(json.dumps({k: {"baseline": v["baseline"]["test_errors"]} for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
