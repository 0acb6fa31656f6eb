"""Permissions for files and folders kdkit writes through a temporary first, renamed into place when complete.

`tempfile.mkstemp` creates a file only its owner can read (0600) and `mkdtemp` a folder only its owner can enter
(0700). Renamed into place as they are, a checkpoint or a data cache would then be unreadable to the rest of a
shared machine, unlike a file `open(path, "w")` creates. These give the mode such a plain create would get under
this process's umask.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def process_umask() -> int:
    """Return this process's umask (Linux: read from /proc without touching it; elsewhere set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Return the mode a newly created file gets here (0o666 without the umask's bits)."""
    return 0o666 & ~process_umask()


def temp_file_beside(path: Path, suffix: str) -> tuple[int, str]:
    """Create `.<name>.XXXX<suffix>` in `path`'s folder (same file system, so a rename is atomic) with the mode a
    plain create of `path` would get; return its open descriptor and name, as `tempfile.mkstemp` does."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
    except BaseException:  # the caller never gets the descriptor: close it and leave no temporary behind
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def new_dir_mode() -> int:
    """Return the mode a newly created folder gets here (0o777 without the umask's bits)."""
    return 0o777 & ~process_umask()
