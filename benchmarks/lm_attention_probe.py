"""Probe (not a benchmark): causal attention forward + backward on CPU, bfloat16 against float32, per kernel.

    PYTHONPATH=benchmarks python benchmarks/lm_attention_probe.py   # appends to results/lm_probes/attention.log

Why kdkit's GPT trains attention in float32 under bf16 autocast on a CPU (`kdkit.models.gpt.attention`): the
shapes are the lm_shakespeare student's (batch 32, 4 heads, 128 positions, head width 32) and teacher's (width
64); each figure is the mean of 5 timed passes after 2 untimed ones, on one thread.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from benchcommon import machine_id
from torch.nn.attention import SDPBackend, sdpa_kernel

LOG = Path(__file__).resolve().parent / "results" / "lm_probes" / "attention.log"


def fwd_bwd_ms(dtype: torch.dtype, backend: SDPBackend, head_width: int, passes: int = 5) -> float:
    """Return the mean milliseconds of one causal attention forward + backward of (32, 4, 128, head_width)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(32, 4, 128, head_width, dtype=dtype, requires_grad=True) for _ in range(3))

    def once() -> None:
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    for _ in range(2):
        once()
    start = time.perf_counter()
    for _ in range(passes):
        once()
    return (time.perf_counter() - start) / passes * 1e3


def main() -> None:
    torch.set_num_threads(1)
    rows = {
        f"d{width} {str(dtype).removeprefix('torch.')} {backend.name.lower()}": fwd_bwd_ms(
            dtype, backend, width
        )
        for width in (32, 64)
        for dtype in (torch.float32, torch.bfloat16)
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)
    }
    LOG.parent.mkdir(parents=True, exist_ok=True)
    head = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_id(),
            "threads": 1, "loadavg": os.getloadavg()}  # fmt: skip
    with LOG.open("a", encoding="utf-8") as f:
        f.write(json.dumps({**head, "fwd_bwd_ms": {k: round(v, 2) for k, v in rows.items()}}) + "\n")
    for name, ms in rows.items():
        print(f"{name}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
