"""Optimizer update kernels on this CPU: PyTorch's per-parameter loop, multi-tensor (foreach) and fused.

    python benchmarks/optimizer_step.py

kdkit builds AdamW with `fused=True` where PyTorch has the fused kernel (kdkit.optim.adamw_kernel) and SGD
as kdkit.optim.FusedSGD (PyTorch's fused update with its momentum buffers made up front, because PyTorch's
fused SGD fails when a parameter gets its first gradient after the first step). This measures the choice in
two ways:
- one optimizer step alone, over the parameters of the MNIST 800-800 student and the CIFAR resnet8 student,
  with random gradients, for 1 and 2 threads (median of interleaved rounds);
- end to end: `kdkit run configs/hinton-mnist.yaml` training the 800-800 student (hard labels, AdamW, as the
  Hinton benchmark's distilled student is optimised) for a few epochs with 1 thread, with kdkit's fused update
  and with the multi-tensor update it used before (train_seconds from each run's summary.json).
Writes benchmarks/results/optimizer_step.json and a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchcommon import machine, section_head, update_results_md  # noqa: E402

from kdkit.checkpoint import atomic_write_text  # noqa: E402
from kdkit.models import create  # noqa: E402
from kdkit.optim import FusedSGD  # noqa: E402

MARKS = ("<!-- optimizer_step:start -->", "<!-- optimizer_step:end -->")
MODELS = {
    "mnist mlp 800-800": ("mlp", {"hidden": [800, 800], "in_channels": 1, "image_size": 28}),
    "cifar resnet8": ("resnet8", {}),
}
THREADS = (1, 2)
IMPLS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def make_optimizer(
    kind: str, params: list[torch.nn.Parameter], impl: dict[str, bool]
) -> torch.optim.Optimizer:
    if kind == "sgd":
        if impl.get("fused"):
            return FusedSGD(params, lr=0.01, momentum=0.9)  # what kdkit builds
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, **impl)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, **impl)


def step_ms(threads: int, rounds: int, steps: int) -> list[dict[str, Any]]:
    """Median ms per optimizer step for every (model, optimizer, implementation), rounds interleaved."""
    torch.set_num_threads(threads)
    cases = []
    for label, (name, kw) in MODELS.items():
        for kind in ("sgd", "adamw"):
            for impl in IMPLS:
                torch.manual_seed(0)
                model = create(name, num_classes=10, **kw)
                params = list(model.parameters())
                for p in params:
                    p.grad = torch.randn_like(p) * 1e-3
                opt = make_optimizer(kind, params, IMPLS[impl])
                for _ in range(10):  # warm-up, and the optimizer state exists
                    opt.step()
                cases.append({"model": label, "optimizer": kind, "impl": impl, "opt": opt, "times": []})
    for _ in range(rounds):
        for c in cases:
            t = time.perf_counter()
            for _ in range(steps):
                c["opt"].step()
            c["times"].append((time.perf_counter() - t) / steps * 1e3)
    return [
        {k: c[k] for k in ("model", "optimizer", "impl")}
        | {"threads": threads, "ms": statistics.median(c["times"]), "rounds_ms": c["times"]}
        for c in cases
    ]


def end_to_end(epochs: int, data: str | None, train_limit: int | None) -> dict[str, Any]:
    """train_seconds of the same AdamW training run with kdkit's fused update and with the multi-tensor one."""
    from kdkit import optim
    from kdkit.cli import main as kdkit_main

    train = {"optimizer": "adamw", "lr": 0.003, "schedule": "cosine", "batch_size": 128, "epochs": epochs}
    args = ["--set", "phases=[scratch]", "--set", f"student.train={json.dumps(train)}"]
    args += ["--set", "runtime.threads=1", "--set", "runtime.progress=false"]
    if data:
        args += ["--set", f"data.root={data}"]
    if train_limit:
        args += ["--set", f"data.train_limit={train_limit}"]
    out: dict[str, Any] = {
        "epochs": epochs,
        "threads": 1,
        "train": train,
        "train_limit": train_limit,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("foreach", "fused", "foreach", "fused"):  # alternated, each measured twice
            run_dir = Path(tmp) / f"{impl}-{len(out['runs'].get(impl, []))}"
            with mock.patch.object(optim, "adamw_kernel", lambda _p, impl=impl: dict(IMPLS[impl])):
                rc = kdkit_main(
                    ["run", str(ROOT / "configs" / "hinton-mnist.yaml"), "--run-dir", str(run_dir), *args]
                )
            if rc:
                raise SystemExit(f"kdkit run failed ({rc}) for the {impl} update")
            summary = json.loads((run_dir / "summary.json").read_text())
            out["runs"].setdefault(impl, []).append(summary["models"]["student_scratch"]["train_seconds"])
    out["speedup"] = min(out["runs"]["foreach"]) / min(out["runs"]["fused"])
    return out


def markdown(doc: dict[str, Any]) -> str:
    title = "Optimizer update kernels (why kdkit uses fused updates)"
    lines = [
        *section_head(MARKS[0], title, doc["command"], doc["machine"], doc["date"]),
        f"One optimizer step over each student's parameters (random gradients), median ms of {doc['rounds']} "
        f"interleaved rounds of {doc['steps']} steps; loop = PyTorch's CPU default (per parameter), "
        "foreach = multi-tensor (kdkit's SGD and AdamW before), fused = kdkit's updates now (AdamW: PyTorch's fused "
        "kernel; SGD: kdkit.optim.FusedSGD, the same kernel with its momentum buffers made up front):",
        "",
        "| model | optimizer | threads | loop ms | foreach ms | fused ms | foreach / fused |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["optimizer"], r["threads"], r["impl"]): r["ms"] for r in doc["steps_ms"]}
    for model in MODELS:
        for kind in ("sgd", "adamw"):
            for t in doc["threads"]:
                ms = [by[(model, kind, t, i)] for i in IMPLS]
                lines.append(
                    f"| {model} | {kind} | {t} | {ms[0]:.3f} | {ms[1]:.3f} | {ms[2]:.3f} | {ms[1] / ms[2]:.2f}x |"
                )
    lines += [
        "",
        "PyTorch's own fused SGD fails once a parameter gets its first gradient after the first step (an objective "
        "term that starts later, as FSP's second stage does); kdkit's FusedSGD makes every momentum buffer at the "
        "start, as zeros, which gives the same updates. tests/test_engine.py checks both optimizers against "
        "PyTorch's reference update on such parameters.",
    ]
    e = doc.get("end_to_end")
    if e:
        fe = ", ".join(f"{s:.1f}" for s in e["runs"]["foreach"])
        fu = ", ".join(f"{s:.1f}" for s in e["runs"]["fused"])
        lines += [
            "",
            "End to end, `kdkit run configs/hinton-mnist.yaml` training the 800-800 student on "
            f"{e['train_limit'] or 60000:,} images "
            f"with AdamW (lr 3e-3, batch 128) for {e['epochs']} epochs, {e['threads']} thread, runs alternated: "
            f"train seconds {fe} (foreach) against {fu} (fused): **{e['speedup']:.2f}x** (best of each).",
        ]
    lines.append(MARKS[1])
    return "\n".join(lines)


def render_stored(results_root: Path = ROOT / "benchmarks" / "results") -> str:
    """Return the RESULTS.md section from the committed benchmarks/results/optimizer_step.json."""
    return markdown(json.loads((results_root / "optimizer_step.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the end-to-end runs (0: skip them)")
    ap.add_argument("--train-limit", type=int, default=None, help="training images of the end-to-end runs")
    ap.add_argument("--data-root", default=None, help="data directory (default: $KDKIT_DATA)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-results-md", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    threads_before = torch.get_num_threads()
    doc: dict[str, Any] = {
        "command": "python benchmarks/optimizer_step.py" + (" " + " ".join(argv) if argv else ""),
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "rounds": args.rounds,
        "steps": args.steps,
        "threads": list(THREADS),
        "steps_ms": [r for t in THREADS for r in step_ms(t, args.rounds, args.steps)],
    }
    torch.set_num_threads(threads_before)
    if args.epochs > 0:
        doc["end_to_end"] = end_to_end(args.epochs, args.data_root, args.train_limit)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "optimizer_step.json", json.dumps(doc, indent=2))
    section = markdown(doc)
    if not args.no_results_md:
        update_results_md(section, ROOT / "benchmarks" / "RESULTS.md", MARKS)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
