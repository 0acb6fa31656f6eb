"""Measured inference latency of PyTorch eager models and ONNX Runtime sessions, and FLOP counts.

Each (batch size, threads) cell is timed run by run after untimed warm-up runs; the median and the
90th percentile are reported, never a mean alone, because a shared CPU gives long-tailed timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdkit.compress.export import deployable_copy, ort_session
from kdkit.compress.prune import count_macs_params


@dataclass
class Latency:
    """Timing of one (backend, batch size, threads) cell in milliseconds."""

    backend: str
    batch: int
    threads: int
    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        """Return the cell as a JSON-serialisable dict."""
        return asdict(self)


def time_runs(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Return the wall time in milliseconds of each of `runs` calls of fn, after `warmup` untimed calls."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(max(warmup, 0)):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _cell(backend: str, batch: int, threads: int, times: list[float], warmup: int) -> Latency:
    arr = np.asarray(times)
    return Latency(
        backend=backend,
        batch=batch,
        threads=threads,
        median_ms=round(float(np.median(arr)), 4),
        p90_ms=round(float(np.percentile(arr, 90)), 4),
        min_ms=round(float(arr.min()), 4),
        runs=len(times),
        warmup=warmup,
    )


def _batch(sample_shape: Sequence[int], n: int) -> Tensor:
    # Fixed random data: latency of these models does not depend on the values.
    g = torch.Generator().manual_seed(0)
    return torch.randn((n, *sample_shape), generator=g)


def torch_latency(
    model: nn.Module,
    sample_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 64),
    threads: Iterable[int] = (1, 2),
    runs: int = 50,
    warmup: int = 10,
) -> list[Latency]:
    """Return eager PyTorch fp32 latency cells of a model for every (batch size, threads) pair."""
    m = deployable_copy(model)
    before = torch.get_num_threads()
    cells = []
    try:
        for t in threads:
            torch.set_num_threads(int(t))
            for b in batch_sizes:
                x = _batch(sample_shape, int(b))

                def call(x: Tensor = x) -> object:
                    return m(x)

                with torch.inference_mode():
                    times = time_runs(call, runs, warmup)
                cells.append(_cell("eager", int(b), int(t), times, warmup))
    finally:
        torch.set_num_threads(before)
    return cells


def ort_latency(
    path: str | Path,
    sample_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 64),
    threads: Iterable[int] = (1, 2),
    runs: int = 50,
    warmup: int = 10,
) -> list[Latency]:
    """Return ONNX Runtime CPU latency cells of an ONNX file for every (batch size, threads) pair."""
    cells = []
    for t in threads:
        session = ort_session(path, int(t))
        name = session.get_inputs()[0].name
        for b in batch_sizes:
            feed = {name: _batch(sample_shape, int(b)).numpy()}

            def call(feed: dict[str, np.ndarray] = feed, session: Any = session) -> object:
                return session.run(None, feed)

            cells.append(_cell("ort", int(b), int(t), time_runs(call, runs, warmup), warmup))
    return cells


def latency_table(cells: Iterable[Latency]) -> dict[str, float]:
    """Return {"<backend>_b<batch>_t<threads>": median ms} for compact summaries and table columns."""
    return {f"{c.backend}_b{c.batch}_t{c.threads}": c.median_ms for c in cells}


def flops(model: nn.Module, sample_shape: Sequence[int]) -> dict[str, int]:
    """Return {"macs", "flops", "params"} of one sample's forward pass (flops = 2 x multiply-accumulates)."""
    macs, params = count_macs_params(deployable_copy(model), _batch(sample_shape, 1))
    return {"macs": macs, "flops": 2 * macs, "params": params}
