"""Execution settings: device, precision (bf16 autocast where the CPU supports it), threads, seeding."""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Return the CPU feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16() -> bool:
    """Return True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision a run computes."""

    device: torch.device
    precision: str  # "bf16" or "fp32"
    channels_last: bool = True

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """Return the autocast dtype, or None for plain fp32."""
        return torch.bfloat16 if self.precision == "bf16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Context in which forward passes run in the selected precision."""
        if self.amp_dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                yield


def resolve_runtime(
    precision: str = "auto", threads: int | None = None, channels_last: bool = True
) -> Runtime:
    """Return the Runtime for the config values; 'auto' picks bf16 only where the hardware does it natively."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    if threads:
        torch.set_num_threads(threads)
    return Runtime(device=device, precision=precision, channels_last=channels_last)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so that a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
