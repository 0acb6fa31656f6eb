"""Fault injection for the crash-resume tests: `KDKIT_FAULT=point:N` kills the process the N-th time `point` is hit.

`KDKIT_FAULT=point:N:SIGINT` sends that signal instead of SIGKILL (a user's Ctrl-C at an exact step).

`KDKIT_FAULT_RANK=R` limits the fault to rank R of a torchrun job. Points: `step` (after an optimizer step) and `checkpoint-write` (between writing a checkpoint's temporary file
and renaming it into place). Unset in normal use; costs one dictionary lookup per hit.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def hit(point: str) -> None:
    """Count a hit of `point` and SIGKILL this process if KDKIT_FAULT names this hit."""
    spec = os.environ.get("KDKIT_FAULT")
    if not spec:
        return
    only = os.environ.get("KDKIT_FAULT_RANK")
    if only is not None and os.environ.get("RANK", "0") != only:
        return  # under torchrun, fail just this one rank
    _counts[point] = _counts.get(point, 0) + 1
    name, _, rest = spec.partition(":")
    n, _, sig = rest.partition(":")
    if name == point and n.isdigit() and _counts[point] == int(n):
        os.kill(os.getpid(), getattr(signal, sig) if sig else signal.SIGKILL)
