"""The console kdkit prints progress and tables to (stderr, so stdout stays machine-readable)."""

from __future__ import annotations

from rich.console import Console


def make_console() -> Console:
    """Return a stderr console; 120 columns when writing to a file or pipe, so tables never get squeezed."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=120)
    return console
