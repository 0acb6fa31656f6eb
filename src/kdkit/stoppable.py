"""Run a job (a run, a sweep) under the graceful-stop handler and turn a stop into an exit code and advice."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from kdkit.engine import RunInterrupted
from kdkit.signals import graceful_stop


def run_until_stopped(job: Callable[[], object], console: Console, how_to_continue: str) -> int:
    """Run `job`; return 0, or 128 + the signal's number when a signal stopped it (its checkpoint written).

    On a stop the console says what stopped it and `how_to_continue` (e.g. the command that resumes).
    """
    with graceful_stop():
        try:
            job()
        except RunInterrupted as exc:
            console.print(f"{exc}\n{how_to_continue}", highlight=False, markup=False, soft_wrap=True)
            return 128 + exc.signum
    return 0
