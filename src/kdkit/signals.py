"""Graceful stop: the first SIGINT/SIGTERM asks the engine to finish its step and checkpoint; a second stops at once."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


class StopRequest:
    """Set by the signal handler, read by the engine after every optimizer step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        """Return True once a stop signal has arrived."""
        return self.signum is not None

    def clear(self) -> None:
        """Forget a previous request."""
        self.signum = None


STOP = StopRequest()


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Install SIGINT/SIGTERM handlers for the duration of a run; restore the previous ones afterwards."""
    STOP.clear()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        if STOP.requested:
            # Second signal: the user means it. Exit now with the conventional status.
            os._exit(128 + signum)
        STOP.signum = signum

    for s in previous:
        signal.signal(s, handler)
    try:
        yield STOP
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
