"""What a training phase shows while it runs: a progress bar on a terminal and one console line per epoch."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class PhaseProgress:
    """A transient progress bar over a phase's steps (does nothing when disabled or not on a terminal)."""

    def __init__(self, console: Console, phase: str, total: int, completed: int, enabled: bool) -> None:
        self._bar = (
            Progress(
                TextColumn(f"[bold]{phase}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            if enabled
            else None
        )
        self._task = (
            self._bar.add_task(phase, total=total, completed=completed, info="") if self._bar else None
        )
        if self._bar:
            self._bar.start()

    def update(self, step: int, loss: float, accuracy: float, rate: float) -> None:
        """Show the step reached with the running loss, accuracy and throughput."""
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                completed=step,
                info=f"loss {loss:.4f}  acc {accuracy:.4f}  {rate:,.0f} samples/s",
            )

    def stop(self) -> None:
        """Remove the bar from the terminal."""
        if self._bar is not None:
            self._bar.stop()


def epoch_line(phase: str, epochs: int, rec: dict[str, Any]) -> str:
    """Return the console line of an epoch record: loss, train and validation accuracy, elapsed time."""
    val_txt = f"  val acc {rec['val_accuracy']:.4f}" if "val_accuracy" in rec else ""
    val_txt += "".join(
        f"  {k[len('val_accuracy.') :]} {v:.4f}" for k, v in rec.items() if k.startswith("val_accuracy.")
    )
    return (
        f"[{phase}] epoch {rec['epoch']}/{epochs}  loss {rec['loss']:.4f}  "
        f"train acc {rec['train_accuracy']:.4f}{val_txt}  ({rec['elapsed_seconds']:.1f}s)"
    )
