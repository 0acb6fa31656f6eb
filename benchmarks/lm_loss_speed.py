"""Token divergences: the autograd formulas against the chunked closed-form path, forward + backward.

    PYTHONPATH=benchmarks python benchmarks/lm_loss_speed.py    # writes results/lm_loss_speed.json, RESULTS.md

Each divergence of `kdkit.losses.token_divergences` over dense teacher logits, at the lm_shakespeare student's
shape (batch 32 x 128 positions, vocabulary 2048), float32 student logits, one thread, temperature 1. The fast
path is what kdkit runs (the public function on a teacher that takes no gradient: chunks with the closed-form
gradient); the autograd path is the same public function with a teacher that takes gradients, differentiated
with respect to the student only (`torch.autograd.grad(loss, student)`, so no teacher gradient is computed).
The two paths of a divergence alternate pass by pass, so they share the load; the figure is the median of 7.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from benchcommon import machine, machine_id, store_and_render

from kdkit.losses import token_divergences as td

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "lm_loss_speed.json"
MARKS = ("<!-- lm_loss_speed:start -->", "<!-- lm_loss_speed:end -->")
SHAPE, VOCAB, PASSES = (32, 128), 2048, 7
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": td.forward_kl,
    "reverse_kl": td.reverse_kl,
    "gkd_jsd (beta 0.5)": lambda s, t: td.generalized_jsd(s, t, beta=0.5),
    "skew_kl (alpha 0.1)": lambda s, t: td.skew_kl(s, t, alpha=0.1),
    "skew_reverse_kl (alpha 0.1)": lambda s, t: td.skew_reverse_kl(s, t, alpha=0.1),
    "total_variation": td.total_variation,
}


def one_pass(loss: Callable[..., torch.Tensor], student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Return the milliseconds of one forward + backward (the gradient with respect to the student only)."""
    start = time.perf_counter()
    (grad,) = torch.autograd.grad(loss(student, teacher), student)
    assert grad.shape == student.shape
    return (time.perf_counter() - start) * 1e3


def measure() -> dict[str, dict[str, float]]:
    """Return per loss the median milliseconds of both paths and their ratio."""
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(*SHAPE, VOCAB, generator=g) * 2).requires_grad_()
    fixed = torch.randn(*SHAPE, VOCAB, generator=g) * 2
    differentiable = fixed.clone().requires_grad_()  # routes the public function to the autograd formulas
    out = {}
    for name, loss in LOSSES.items():
        for teacher in (fixed, differentiable):  # warm-up
            one_pass(loss, student, teacher)
        fast, slow = [], []
        for _ in range(PASSES):
            fast.append(one_pass(loss, student, fixed))
            slow.append(one_pass(loss, student, differentiable))
        out[name] = {
            "chunked_ms": statistics.median(fast),
            "autograd_ms": statistics.median(slow),
            "speedup": statistics.median(slow) / statistics.median(fast),
        }
    return out


def render(doc: dict) -> str:
    """Return the RESULTS.md section of a stored result."""
    lines = [
        MARKS[0],
        "## Token divergences: autograd formulas against the chunked closed-form path",
        "",
        f"Command: `{doc['command']}`  ",
        f"Machine: {doc['machine_id']}, {doc['threads']} thread; {doc['date']}; load average at the start "
        f"{doc['loadavg'][0]:.2f}.  ",
        f"Forward + backward of one loss over {doc['shape'][0]} x {doc['shape'][1]} positions and a vocabulary of "
        f"{doc['vocab']} (float32 student logits, dense teacher logits), median of {doc['passes']} alternating "
        "passes; the chunked path is what kdkit runs for a teacher that takes no gradient.",
        "",
        "| loss | autograd ms | chunked ms | speed-up |",
        "|---|---|---|---|",
    ]
    for name, r in doc["losses"].items():
        lines.append(f"| {name} | {r['autograd_ms']:.1f} | {r['chunked_ms']:.1f} | {r['speedup']:.2f}x |")
    return "\n".join([*lines, MARKS[1]])


def render_stored(results_root: Path = ROOT / "benchmarks" / "results") -> str:
    """Return the section from the stored JSON."""
    return render(json.loads((results_root / RESULT.name).read_text()))


def main() -> int:
    torch.set_num_threads(1)
    load = os.getloadavg()
    doc = {
        "command": "PYTHONPATH=benchmarks python benchmarks/lm_loss_speed.py",
        "machine": machine(), "machine_id": machine_id(), "threads": 1, "loadavg": load,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "shape": list(SHAPE), "vocab": VOCAB, "passes": PASSES, "losses": measure(),
    }  # fmt: skip
    store_and_render(doc, RESULT, render, MARKS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
