"""Distillation strategies on MNIST, each against its plain baseline on the same budget.

    python benchmarks/strategies.py                  # every row (resumable: finished rows are skipped)
    python benchmarks/strategies.py --only ensemble  # some rows
    python benchmarks/strategies.py --quick          # every row in a tiny form, in a temporary directory
    python benchmarks/strategies.py --seeds 0 1 2    # every row once per seed; tables give means over seeds

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

Each finished row is written to ``benchmarks/results/strategies/<row>.json`` (seed 0; ``<row>-s<seed>.json``
for other seeds) with the command, machine, date and the row's wall time, and skipped when the benchmark runs
again; the aggregate goes to
``benchmarks/results/strategies.json`` and the ``strategies`` section of ``benchmarks/RESULTS.md``.
``--quick`` writes into a temporary directory (unless ``--out`` is given); RESULTS.md is updated only by a
full run into the default results directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import re
import statistics
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

# Where a strategy may lose to what it should beat: (strategy, reference) labels of a row's entries, and the likely
# cause from the literature. The renderer states every loss it finds in the stored runs (a loss is reported, not
# hidden); the cause is printed only when something loses.
VERDICTS: dict[str, dict[str, Any]] = {
    "semi_supervised": {
        "pairs": [
            (
                "teacher-labelled: 1,000 labeled + 59,000 unlabeled, soft targets",
                "student on the 1,000 labeled images alone",
            )
        ],
        "cause": "the teacher, trained on the same 1,000 labeled images, is no better than the baseline student "
        "(its test errors are in the seed notes below), and its soft targets on every unlabeled image pass its "
        "errors on; Noisy Student (Xie et al. 2020) keeps only confident hard pseudo-labels and noises the "
        "student, and those rows gain here.",
    },
    "joint_vs_offline": {
        "pairs": [
            ("student, offline KD (frozen teacher)", "student, scratch (baseline)"),
            ("student, joint", "student, scratch (baseline)"),
            ("student, joint, stop-gradient", "student, scratch (baseline)"),
        ],
        "cause": "even offline KD loses with this 32-unit student at T=4 and alpha 0.9: a student far smaller "
        "than its teacher can be hurt by distillation (Cho & Hariharan 2019; Mirzadeh et al. 2020), whose "
        "experiments train CNNs for full schedules, not MLPs for 12 epochs. Apprentice (Mishra & Marr 2018) trains both jointly with the "
        "KD term reaching the teacher, which pulls the teacher towards the student (the joint row); with the "
        "stop-gradient the teacher trains by cross-entropy alone, its targets sharpen and keep moving, and the "
        "student chasing them loses most (the notes below).",
    },
    "mutual_vs_independent": {
        "pairs": [
            ("peer_1, mutual learning", "peer_1, independent (baseline)"),
            ("peer_2, mutual learning", "peer_2, independent (baseline)"),
        ],
        "cause": "the differences are within the seeds' spread; deep mutual learning (Zhang et al. 2018) reports "
        "its gains for CNNs on CIFAR-10/100 and person re-identification, not for 64-unit MLPs on MNIST.",
    },
    "born_again": {
        "pairs": [
            ("gen 1, taught by gen 0", "gen 0, plain training (baseline)"),
            ("gen 2, taught by gen 1", "gen 0, plain training (baseline)"),
            ("gen 3, taught by gen 2", "gen 0, plain training (baseline)"),
        ],
        "cause": "Born-Again Networks (Furlanello et al. 2018) gain with large networks (DenseNets, Wide ResNets) "
        "trained to convergence on CIFAR-10/100, where the teacher's non-argmax outputs carry class similarity; "
        "here each generation is a 128-unit MLP with the same short budget on 10,000 MNIST images and 10 classes, "
        "so a student of its teacher's size mostly inherits its teacher's errors, and they add up over "
        "generations.",
    },
    "takd_vs_direct": {
        "pairs": [
            ("student, KD from the teacher (baseline)", "student, scratch"),
            ("student, KD from the assistant (TAKD)", "student, scratch"),
            ("student, KD from the assistant (TAKD)", "student, KD from the teacher (baseline)"),
        ],
        "cause": "the assistant helps, as in Mirzadeh et al. (2020), but both distilled 16-unit students lose to "
        "the scratch one: the capacity gap is so large that distillation itself hurts (Cho & Hariharan 2019 find "
        "that a much larger teacher can make a worse student, on ImageNet worse than one trained alone), and "
        "alpha 0.9 puts most of the weight on targets this student cannot match; Mirzadeh et al. distil CNNs on "
        "CIFAR with full schedules, not an MLP for a few seconds.",
    },
}


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


def stem(name: str, seed: int) -> str:
    """Return the file stem of a row's result (and run directory) for one seed: seed 0 keeps the bare name."""
    return name if seed == 0 else f"{name}-s{seed}"


def split_stem(value: str) -> tuple[str, int]:
    """Return (row, seed) of a result file stem."""
    m = re.fullmatch(r"(.+)-s(\d+)", value)
    return (m.group(1), int(m.group(2))) if m else (value, 0)


def summarize(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Return a row's entries over seeds: per label the test errors of each seed, their mean and spread,
    and the mean over seeds of the difference from that seed's baseline. Only labels present under every seed
    are summarised; the others are listed in "unmatched"."""
    seeds = sorted(by_seed)
    entries = {s: {e["label"]: e for e in [by_seed[s]["baseline"], *by_seed[s]["rows"]]} for s in seeds}
    first = by_seed[seeds[0]]
    labels = [e["label"] for e in [first["baseline"], *first["rows"]]]
    labels = [lab for lab in labels if all(lab in entries[s] for s in seeds)]
    unmatched = sorted({lab for s in seeds for lab in entries[s]} - set(labels))
    base = first["baseline"]["label"]
    out = []
    for lab in labels:
        errs = [entries[s][lab]["test_errors"] for s in seeds]
        deltas = [entries[s][lab]["test_errors"] - entries[s][base]["test_errors"] for s in seeds]
        out.append(
            {
                "label": lab,
                "baseline": lab == base,
                "test_errors": errs,
                "mean": statistics.fmean(errs),
                "std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
                "delta_mean": statistics.fmean(deltas),
                "seconds_mean": statistics.fmean(entries[s][lab]["seconds"] for s in seeds),
            }
        )
    return {"seeds": seeds, "entries": out, "unmatched": unmatched}


def run_row(
    name: str,
    fn: Callable[..., dict[str, Any]],
    args: argparse.Namespace,
    out: Path,
    work: Path,
    command: str,
) -> dict[str, Any]:
    """Run one row for args.seed (or return its stored result) and store its JSON."""
    path = out / f"{stem(name, args.seed)}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    res = normalize(fn(args, work / stem(name, args.seed)))
    check_result(name, res)
    rec = {
        "row": name,
        "seed": args.seed,
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


def _marked(label: str) -> str:
    return label if label.endswith("(baseline)") else f"{label} (baseline)"


def verdict_lines(name: str, summ: dict[str, Any]) -> list[str]:
    """Return the lines that say where a row's strategy loses to its reference (mean over the seeds of the
    per-seed difference, and under how many seeds it loses), with the likely cause; none when nothing loses."""
    spec = VERDICTS.get(name)
    if not spec:
        return []
    by_label = {e["label"]: e for e in summ["entries"]}
    losses = []
    for strategy, reference in spec["pairs"]:
        if strategy not in by_label or reference not in by_label:
            continue
        diffs = [a - b for a, b in zip(by_label[strategy]["test_errors"], by_label[reference]["test_errors"])]
        mean = statistics.fmean(diffs)
        if mean > 0:
            worse = sum(d > 0 for d in diffs)
            losses.append(
                f"{strategy}: {mean:+.1f} errors against {reference.removesuffix(' (baseline)')} "
                f"(worse under {worse} of {len(diffs)} seeds)"
            )
    if not losses:
        return []
    return ["", "**Loses under this budget:** " + "; ".join(losses) + ". Likely cause: " + spec["cause"]]


def markdown(
    results: dict[str, dict[str, Any]], seeds: dict[str, dict[int, dict[str, Any]]] | None = None
) -> str:
    """Return the RESULTS.md section: one table per row, each line against the row's baseline.

    A row finished for several seeds gets the mean over seeds, each seed's errors and the mean difference from
    the baseline of the same seed."""
    lines = [MARKS[0], "## Distillation strategies (MNIST)", ""]
    for name, r in results.items():
        by_seed = (seeds or {}).get(name) or {r.get("seed", 0): r}
        m = r["machine"]
        base = r["baseline"]
        commands = sorted({rec["command"] for rec in by_seed.values()})
        dates = sorted(rec["date"][:10] for rec in by_seed.values())
        walls = [rec["wall_seconds"] / 60 for rec in by_seed.values()]
        lines += [
            f"### {name}",
            "",
            "Command: " + "; ".join(f"`{c}`" for c in commands) + "  ",
            f"Machine: {m['nproc']} cores, {m['cpu']}, torch {m['torch']}; date "
            + (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}")
            + f"; row wall time {statistics.fmean(walls):.1f} min"
            + (" per seed  " if len(by_seed) > 1 else "  "),
        ]
        if r.get("budget"):
            lines.append(f"Budget: {r['budget']}  ")
        if len(by_seed) > 1:
            summ = summarize(by_seed)
            ss = ", ".join(map(str, summ["seeds"]))
            if summ["unmatched"]:
                lines.append(
                    "Not under every seed, so not summarised: " + "; ".join(summ["unmatched"]) + "  "
                )
            lines += [
                "",
                f"| variant | test errors (of 10,000), mean ± std | seeds {ss} | vs baseline (errors, mean) | seconds |",
                "|---|---|---|---|---|",
            ]
            for e in summ["entries"]:
                each = ", ".join(map(str, e["test_errors"]))
                delta = "-" if e["baseline"] else f"{e['delta_mean']:+.1f}"
                label = _marked(e["label"]) if e["baseline"] else e["label"]
                lines.append(
                    f"| {label} | {e['mean']:.1f} ± {e['std']:.1f} | {each} | {delta} | {e['seconds_mean']:.0f} |"
                )
            lines += verdict_lines(name, summ)
        else:
            lines += [
                "",
                "| variant | test errors (of 10,000) | test accuracy | vs baseline (errors) | seconds |",
                "|---|---|---|---|---|",
                f"| {_marked(base['label'])} | {base['test_errors']} | {_pct(base['test_accuracy'])} | - | "
                f"{base['seconds']:.0f} |",
            ]
            for row in r["rows"]:
                delta = row["test_errors"] - base["test_errors"]
                lines.append(
                    f"| {row['label']} | {row['test_errors']} | {_pct(row['test_accuracy'])} | {delta:+d} | "
                    f"{row['seconds']:.0f} |"
                )
        notes = {seed: rec.get("notes") for seed, rec in by_seed.items() if rec.get("notes")}
        if len(set(notes.values())) == 1:
            lines += ["", next(iter(notes.values()))]
        elif notes:  # notes with figures of their own seed
            lines += [""] + [f"Seed {seed}: {text}  " for seed, text in notes.items()]
        lines.append("")
    lines.append(MARKS[1])
    return "\n".join(lines)


def stored_rows(
    out: Path, order: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[int, dict[str, Any]]]]:
    """Return the stored per-seed results of a results directory: per row its lowest seed's record (as
    before seeds were added) and per row every seed's record, rows in `order` first."""
    seeds: dict[str, dict[int, dict[str, Any]]] = {}
    for p in sorted(out.glob("*.json")):
        row, seed = split_stem(p.stem)
        seeds.setdefault(row, {})[seed] = json.loads(p.read_text())
    keys = [k for k in order if k in seeds] + [k for k in seeds if k not in order]
    seeds = {k: dict(sorted(seeds[k].items())) for k in keys}
    ordered = {k: next(iter(v.values())) for k, v in seeds.items()}  # the lowest seed's record, as before
    return ordered, seeds


def render_stored(results_root: Path = ROOT / "benchmarks" / "results") -> str:
    """Return the RESULTS.md section from the committed per-seed JSONs, without running anything."""
    return markdown(*stored_rows(results_root / "strategies", list(collect_rows())))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="every row in a tiny form, into a temporary directory"
    )
    ap.add_argument("--only", nargs="+", default=None, metavar="ROW", help="run only these rows")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="run every row once per seed (default: 0)"
    )
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
    command += (" --seeds " + " ".join(map(str, args.seeds))) if args.seeds != [0] else ""
    command += f" --threads {args.threads}" if args.threads else ""
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        ap.error(f"--seeds must be distinct non-negative integers, got {args.seeds}")

    results = {}
    for seed in args.seeds:
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
        for name, fn in selected.items():
            results[stem(name, seed)] = run_row(name, fn, seed_args, out, work, command)
    # The aggregate holds every finished row and seed, also those of earlier invocations (--only, --seeds).
    ordered, seeds = stored_rows(out, list(rows))
    doc: dict[str, Any] = {"rows": ordered}
    several = {k: v for k, v in seeds.items() if len(v) > 1}
    if several:
        doc["seeds"] = {k: {str(s): rec for s, rec in v.items()} for k, v in several.items()}
        doc["summary"] = {k: summarize(v) for k, v in several.items()}
    name = "strategies_quick" if args.quick else "strategies"
    atomic_write_text(results_root / f"{name}.json", json.dumps(doc, indent=2))
    section = markdown(ordered, seeds)
    if not args.quick and args.out is None:  # RESULTS.md reports the repository's own results only
        update_results_md(section, ROOT / "benchmarks" / "RESULTS.md", MARKS)
    print(section)
    print(f"results: {results_root / f'{name}.json'}")
    print(json.dumps({k: {"baseline": v["baseline"]["test_errors"]} for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
