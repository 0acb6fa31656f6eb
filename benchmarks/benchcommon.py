"""What every benchmark script shares: the machine description and the marked sections of RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from kdkit.checkpoint import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def shown_path(path: Path) -> Path:
    """Return a path as the README's commands give it: relative to the repository when inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def positive_minutes(text: str) -> float:
    """Parse a --max-minutes value: a number of minutes above 0 (argparse type)."""
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not minutes > 0:
        raise argparse.ArgumentTypeError(f"expected minutes above 0, got {text}")
    return minutes


def add_max_minutes_option(parser: argparse.ArgumentParser) -> None:
    """Add the resumable benchmarks' --max-minutes option (a RunBudget's minutes; default: no limit)."""
    parser.add_argument(
        "--max-minutes",
        type=positive_minutes,
        default=None,
        help="start no new run after this many minutes (the run in progress finishes); the rest stay missing",
    )


class RunBudget:
    """When a resumable benchmark stops starting runs: once `minutes` have passed since it began (None: never).

    The run in progress always finishes (a run cut short would be resumed later, and its wall time would cover
    only its last part), so a sitting that must end by a given time passes that time less the longest run.
    """

    def __init__(self, minutes: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.minutes, self.clock, self.start = minutes, clock, clock()

    def spent(self) -> bool:
        """Return True when no new run should start."""
        return self.minutes is not None and self.clock() - self.start >= self.minutes * 60

    def runs(self, pending: list[tuple[str, int]], bench: str) -> Iterator[tuple[str, int]]:
        """Yield the pending (name, seed) runs in order until the budget is spent; then say which are left."""
        for i, run in enumerate(pending):
            if self.spent():
                left = ", ".join(f"{name}-s{seed}" for name, seed in pending[i:])
                print(f"[{bench}] --max-minutes {self.minutes:g} spent: no new run started ({left} left)")
                return
            yield run


def machine() -> dict[str, Any]:
    """Return a description of this machine for the results: cores, CPU model, bf16 support, versions."""
    cpu = platform.processor() or ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                elif ln.startswith("flags") and not flags:
                    flags = set(ln.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "bf16_native": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def machine_id(mach: dict[str, Any] | None = None) -> str:
    """Return what identifies a machine for timings: cores, CPU model and torch build (threads left out).

    A timing measured on one machine must not be reused, or compared, as if measured on another: the CPUs these
    benchmarks run on differ between sittings (an AMD EPYC without AMX and an Intel Xeon with AMX have bf16
    matmul peaks about five times apart).
    """
    m = mach or machine()
    return f"{m['nproc']} cores, {m['cpu']}, torch {m['torch']}"


def machines_of(records: Any) -> dict[str, dict[str, float]]:
    """Return, per machine that made some of the stored runs, how many it made and their wall minutes."""
    out: dict[str, dict[str, float]] = {}
    for r in records.values() if isinstance(records, dict) else records:
        m = out.setdefault(r.get("machine_id", "machine not recorded"), {"runs": 0, "minutes": 0.0})
        m["runs"] += 1
        m["minutes"] += r["wall_seconds"] / 60
    return out


def machines_line(machines: dict[str, dict[str, float]], here: dict[str, Any], precision: str) -> str:
    """Return a section's Machine line: the one machine that made every stored run, or each with its share.

    Stored runs are reused across sittings, which may run on other machines: the line names the machines
    that made the runs, not the one that assembled the table (`here`, used when there are no runs).
    """
    if len(machines) > 1:
        share = "; ".join(f"{k} ({v['runs']} runs, {v['minutes']:.1f} min)" for k, v in machines.items())
        return (
            f"Machines: the stored runs were made on {len(machines)} machines, so their run times are not one "
            f"machine's: {share}; precision {precision}  "
        )
    (only,) = machines or [machine_id(here)]
    return f"Machine: {only}, precision {precision}  "


def section_head(start_mark: str, title: str, command: str, mach: dict[str, Any], date: str) -> list[str]:
    """Return the first lines of a RESULTS.md section: its mark, title, command, machine and date."""
    return [
        start_mark,
        f"## {title}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {mach['nproc']} cores, {mach['cpu']}, torch {mach['torch']}; date {date}",
        "",
    ]


def update_results_md(section: str, path: Path, marks: tuple[str, str]) -> None:
    """Replace one benchmark's marked section of RESULTS.md (or append it), leaving the rest untouched."""
    start, end = marks
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmark results\n\nEvery figure here was measured by the command shown with it.\n"
    )
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(path, text)


def store_and_render(
    doc: dict[str, Any], result: Path, render: Callable[[dict[str, Any]], str], marks: tuple[str, str]
) -> str:
    """Write a one-file benchmark's result JSON, put its rendered section into RESULTS.md, print and return it."""
    result.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(result, json.dumps(doc, indent=2))
    section = render(doc)
    update_results_md(section, ROOT / "benchmarks" / "RESULTS.md", marks)
    print(section)
    return section
