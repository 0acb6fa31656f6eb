"""Sweeps: one config run over a grid of values (a temperature study, say), resumable, with one table.

`kdkit sweep CONFIG --vary distill.temperature=[1,2,4,8] --seeds 0,1 --out DIR` runs every point of the grid
(the product of the --vary lists) for every seed. Each finished run leaves `DIR/results/<run>.json`; a run whose
result is there is skipped, and one that was interrupted continues from its last checkpoint, so the same
command started again carries on where it stopped. The result JSONs record a fingerprint of the run's config
(runtime settings aside): results made with another config are refused, never mixed into the table.

What the grid does not vary is trained once per seed and shared by every point: the teacher, when no varied
key is under `teacher.`, `data.` or `seed` (each point then loads it as `teacher.checkpoint`), and the student
trained from scratch, when no varied key is under `student.`, `data.` or `seed`. Points get the same teacher
and the same initial student weights as separate `kdkit run`s would.

The table (`DIR/sweep.json`, `DIR/sweep.md`, printed) has a row per point and model: test errors and accuracy
as the mean over seeds with each seed's value, and validation accuracy. With one numeric key and matplotlib,
`DIR/sweep.png` plots test errors against it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdkit.checkpoint import atomic_write_text
from kdkit.config import ExperimentConfig, build_config, load_yaml, parse_override
from kdkit.data.bundle import load_data
from kdkit.errors import ConfigError, KdkitError
from kdkit.experiment import run_experiment
from kdkit.preflight import preflight
from kdkit.stoppable import run_until_stopped
from kdkit.strategies import needs_trained_teacher

FORMAT = "kdkit-sweep-v1"
_PER_TEACHER = ("teacher.", "data.")  # varied keys under these make the teacher differ from point to point
_PER_STUDENT = ("student.", "data.")


class SweepError(KdkitError):
    """A sweep directory holds results that do not belong to this sweep."""


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its name, its config, and the point of the grid it belongs to (None: shared)."""

    name: str
    cfg: ExperimentConfig
    seed: int
    point: dict[str, Any] | None
    standalone: ExperimentConfig  # the same run with nothing shared: what preflight checks before training


def parse_vary(text: str) -> tuple[str, list[Any]]:
    """Return (key, values) of a `key=[v1, v2, ...]` grid axis (values are YAML, like --set)."""
    parts, values = parse_override(text)
    key = ".".join(parts)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"--vary {text!r}: expected a non-empty YAML list of values, e.g. {key}=[1, 2, 4]")
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise ConfigError(f"--vary {text!r}: the values repeat")
    return key, values


def _fingerprint(cfg: ExperimentConfig) -> str:
    """Return a hash of the experiment a config describes (runtime settings, which resume may change, aside)."""
    body = cfg.model_dump(mode="json")
    body.pop("runtime", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _slug(point: dict[str, Any]) -> str:
    text = "_".join(f"{k.rsplit('.', 1)[-1]}-{json.dumps(v)}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:80] or "point"


def _varies(keys: list[str], prefixes: tuple[str, ...]) -> bool:
    return any(k == "seed" or k.startswith(prefixes) for k in keys)


def plan(
    raw: dict[str, Any],
    overrides: list[str],
    axes: list[tuple[str, list[Any]]],
    seeds: list[int] | None,
    out: Path,
    source: str = "config",
) -> list[Run]:
    """Return every run of the sweep in order (shared runs first per seed), each config validated."""
    if not axes:
        raise ConfigError("kdkit sweep needs at least one --vary KEY=[values]")
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--vary: each key may be varied once, got {keys}")
    base = build_config(raw, overrides, source)
    seeds = seeds if seeds else [base.seed]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must not repeat, got {seeds}")

    phases = list(base.phases)
    share_teacher = (
        "teacher" in phases
        and base.teacher.ensemble is None
        and base.teacher.checkpoint is None
        and needs_trained_teacher(base)
        and not _varies(keys, _PER_TEACHER)
    )
    share_scratch = "scratch" in phases and not _varies(keys, _PER_STUDENT)
    shared = [p for p in phases if (p == "teacher" and share_teacher) or (p == "scratch" and share_scratch)]
    runs: list[Run] = []
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in axes))]
    for seed in seeds:
        seeded = [*overrides, f"seed={seed}"]
        extra: list[str] = []
        if shared:
            name = f"shared-s{seed}"
            cfg = build_config(raw, [*seeded, f"phases={json.dumps(shared)}"], f"{source} ({name})")
            runs.append(Run(name, cfg, seed, None, cfg))
            if share_teacher:
                ckpt = out / "runs" / name / "checkpoints" / "teacher"
                extra.append(f"teacher.checkpoint={json.dumps(str(ckpt))}")
        rest = [p for p in phases if p not in shared]
        if not rest:
            continue
        for i, point in enumerate(points):
            name = f"p{i:02d}-{_slug(point)}-s{seed}"
            sets = [f"{k}={json.dumps(v)}" for k, v in point.items()]
            where = f"{source} (point {point})"
            cfg = build_config(raw, [*seeded, *extra, f"phases={json.dumps(rest)}", *sets], where)
            runs.append(Run(name, cfg, seed, point, build_config(raw, [*seeded, *sets], where)))
    return runs


def _result_path(out: Path, run: Run) -> Path:
    return out / "results" / f"{run.name}.json"


def _stored(out: Path, run: Run) -> dict[str, Any] | None:
    """Return the stored result of a run, None when absent; refuse one made with another config."""
    path = _result_path(out, run)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SweepError(
            f"sweep result {str(path)!r} is unreadable ({exc}); move it away to run it again"
        ) from None
    if stored.get("format") != FORMAT or stored.get("fingerprint") != _fingerprint(run.cfg):
        raise SweepError(
            f"sweep result {str(path)!r} was made with another config than this sweep's {run.name}; "
            "use another --out for a different sweep (nothing was changed)"
        )
    return stored


def _preflight(configs: list[ExperimentConfig]) -> None:
    """Check every run to come before the first one trains (the data loaded once per data section and seed)."""

    bundles: dict[str, Any] = {}
    for cfg in configs:
        key = json.dumps([cfg.data.model_dump(mode="json"), cfg.seed], sort_keys=True)
        if key not in bundles:
            bundles[key] = load_data(cfg.data, cfg.seed)
        preflight(cfg, bundles[key])


def execute(
    runs: list[Run],
    out: Path,
    console: Console,
    run_fn: Callable[..., dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run (or reuse) every run in order; return their results."""

    run_fn = run_fn or run_experiment
    stored = [_stored(out, r) for r in runs]  # every stored result is checked before anything trains
    _preflight([r.standalone for r, s in zip(runs, stored, strict=True) if s is None])
    results = []
    for i, (run, done) in enumerate(zip(runs, stored, strict=True)):
        if done is not None:
            console.print(
                f"[sweep] {run.name}: done earlier ({_result_path(out, run)})", highlight=False, markup=False
            )
            results.append(done)
            continue
        console.print(f"[sweep] run {i + 1}/{len(runs)}: {run.name}", highlight=False, markup=False)
        run_dir = out / "runs" / run.name
        resume = (run_dir / "config.yaml").is_file()  # interrupted earlier: continue from its checkpoints
        summary = run_fn(run.cfg, run_dir, resume=resume, console=console)
        result = {
            "format": FORMAT,
            "name": run.name,
            "seed": run.seed,
            "point": run.point,
            "fingerprint": _fingerprint(run.cfg),
            "models": summary["models"],
            "wall_seconds": summary.get("wall_seconds"),
            "run_dir": str(run_dir),
        }
        atomic_write_text(_result_path(out, run), json.dumps(result, indent=2))
        results.append(result)
    return results


def _stat(values: list[float | None]) -> dict[str, Any] | None:
    """Return the mean and the values over seeds; None where a figure is missing (no validation split)."""
    if any(v is None for v in values):
        return None
    return {"mean": statistics.fmean(float(v) for v in values), "values": values}


def summarize(axes: list[tuple[str, list[Any]]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the sweep table: per point (and for the shared runs) and model, test/val figures over seeds."""
    keys = [k for k, _ in axes]
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(json.dumps(r["point"]), []).append(r)
    for point_key, rs in groups.items():
        roles = [role for role in rs[0]["models"] if all(role in r["models"] for r in rs)]
        for role in roles:
            recs = [r["models"][role] for r in rs]
            if point_key != "null" and recs[0].get("loaded_from"):
                continue  # the shared teacher, loaded by every point: its row is the shared one
            rows.append(
                {
                    "point": json.loads(point_key),
                    "model": role,
                    "seeds": [r["seed"] for r in rs],
                    "test_errors": _stat([x["errors"] for x in recs]),
                    "test_accuracy": _stat([x["accuracy"] for x in recs]),
                    "val_accuracy": _stat([x.get("val_accuracy") for x in recs]),
                }
            )
    return {"format": FORMAT, "vary": {k: v for k, v in axes}, "keys": keys, "rows": rows}


def _fmt(stat: dict[str, Any] | None, pct: bool = False) -> str:
    if stat is None:
        return "-"
    f = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:g}")
    each = ", ".join(f(v) for v in stat["values"])
    return f"{f(stat['mean'])}" + (f" ({each})" if len(stat["values"]) > 1 else "")


def _cells(row: dict[str, Any], keys: list[str]) -> list[str]:
    point = row["point"]
    where = [json.dumps(point[k]) if point else "(shared)" for k in keys]
    return [
        *where,
        row["model"],
        _fmt(row["test_errors"]),
        _fmt(row["test_accuracy"], pct=True),
        _fmt(row["val_accuracy"], pct=True),
    ]


def report(table: dict[str, Any], out: Path, console: Console) -> None:
    """Write sweep.json, sweep.md (and sweep.png when it can be drawn) and print the table."""
    keys = table["keys"]
    head = [*keys, "model", "test errors", "test acc", "val acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t = Table(*head)
    for row in table["rows"]:
        cells = _cells(row, keys)
        lines.append("| " + " | ".join(cells) + " |")
        t.add_row(*cells)
    atomic_write_text(out / "sweep.json", json.dumps(table, indent=2))
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
    console.print(t)
    png = _plot(table, out / "sweep.png")
    console.print(
        f"[sweep] table: {out / 'sweep.md'}" + (f", plot: {png}" if png else ""),
        highlight=False,
        markup=False,
    )


def _plot(table: dict[str, Any], path: Path) -> Path | None:
    """Draw test errors against the one varied key, when it is numeric and matplotlib is installed."""
    keys = table["keys"]
    points = [r for r in table["rows"] if r["point"]]
    if len(keys) != 1 or not all(isinstance(r["point"][keys[0]], (int, float)) for r in points):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in points):
        rows = sorted((r for r in points if r["model"] == model), key=lambda r: r["point"][keys[0]])
        xs = [r["point"][keys[0]] for r in rows]
        ax.plot(xs, [r["test_errors"]["mean"] for r in rows], marker="o", label=model)
    for r in table["rows"]:
        if not r["point"]:
            ax.axhline(r["test_errors"]["mean"], linestyle="--", color="gray")
            ax.annotate(r["model"], (0, r["test_errors"]["mean"]), xycoords=("axes fraction", "data"))
    xs = [r["point"][keys[0]] for r in points]
    if min(xs) > 0 and max(xs) >= 10 * min(xs):
        ax.set_xscale("log")  # temperatures, rates: values that span orders of magnitude
    ax.set_xlabel(keys[0])
    ax.set_ylabel("test errors (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def run_sweep(
    config: str | Path,
    overrides: list[str],
    vary: list[str],
    seeds: list[int] | None,
    out: str | Path,
    console: Console,
) -> dict[str, Any]:
    """Plan, run (skipping finished runs) and report a sweep; return its table."""
    # Absolute: the points' teacher.checkpoint (part of their fingerprints) must not depend on the cwd.
    out = Path(out).resolve()
    axes = [parse_vary(v) for v in vary]
    runs = plan(load_yaml(config), overrides, axes, seeds, out, source=str(config))
    results = execute(runs, out, console)
    table = summarize(axes, results)
    report(table, out, console)
    return table


def sweep_until_stopped(
    config: str,
    overrides: list[str],
    vary: list[str],
    seeds: list[int] | None,
    out: str,
    console: Console,
    again: str,
) -> int:
    """Run a sweep under the graceful-stop handler; return the exit code (128 + signal when stopped).

    `again` is the command that continues it, printed when a signal stops the sweep.
    """
    return run_until_stopped(
        lambda: run_sweep(config, overrides, vary, seeds, out, console),
        console,
        f"the finished runs are kept; continue the sweep with the same command:\n  {again}",
    )
