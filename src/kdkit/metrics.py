"""Run metrics: one JSON line per record in metrics.jsonl, mirrored to TensorBoard event files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Append metrics to `<run_dir>/metrics.jsonl` and, if enabled, TensorBoard scalars under `<run_dir>/tb/`."""

    def __init__(self, run_dir: str | Path | None, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._file = None
        self._tb = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(logdir=str(self.run_dir / "tb"), flush_secs=30)

    def log(self, phase: str, step: int, **values: Any) -> None:
        """Record values for a phase at a global step."""
        if self._file is None:
            return
        rec = {"time": round(time.time(), 3), "phase": phase, "step": step, **values}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{phase}/{k}", v, step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
