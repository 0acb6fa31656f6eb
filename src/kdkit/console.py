"""The console kdkit prints progress and tables to (stderr, so stdout stays machine-readable)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from rich.console import Console

LOG_WIDTH = 120


class RunConsole(Console):
    """A rich console that can also append everything it prints to a plain-text log file.

    The log gets what `print` renders, without colours and without the live progress bar (a bar is drawn by
    its own refresh, never through `print`), so it reads like the console of a run that went to a pipe.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._log: Console | None = None
        self._log_file: IO[str] | None = None

    def open_log(self, path: str | Path) -> None:
        """Append every later `print` to `path` (a resumed run continues the same file)."""
        self.close_log()
        self._log_file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by close_log
        self._log = Console(file=self._log_file, width=LOG_WIDTH, no_color=True, force_terminal=False)

    def close_log(self) -> None:
        """Stop logging and close the file."""
        if self._log_file is not None:
            self._log_file.close()
        self._log, self._log_file = None, None

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003 - rich's name
        """Print to the console and, when a log is open, to the log."""
        super().print(*objects, **kwargs)
        if self._log is not None:
            self._log.print(*objects, **kwargs)


def make_console() -> RunConsole:
    """Return a stderr console; 120 columns when writing to a file or pipe, so tables never get squeezed."""
    console = RunConsole(stderr=True)
    if not console.is_terminal:
        console = RunConsole(stderr=True, width=LOG_WIDTH)
    return console
