"""Checksum-verified downloads: stream to a temp file beside the destination, rename on success."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from kdkit.errors import DataError
from kdkit.file_modes import temp_file_beside

CHUNK = 1 << 20

_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)


def file_md5(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _offline_hint(url: str, dest: Path) -> str:
    return (
        f"If this machine has no network, fetch {url} elsewhere and copy it to {dest} "
        "(or point KDKIT_DATA / root= at a directory that already holds it)."
    )


def download(
    url: str, dest: Path, md5: str | None = None, sha256: str | None = None, timeout: float = 30
) -> Path:
    """Download ``url`` to ``dest`` (a file path, or a directory to put the URL's file name in), verifying checksums."""
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / (Path(urllib.parse.urlparse(url).path).name or "download")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as dest, so the final os.replace is an atomic rename on one filesystem.
        fd, tmp_name = temp_file_beside(dest, ".part")
    except OSError as e:
        raise DataError(f"cannot write into {dest.parent} to download {url} ({e})") from e
    tmp = Path(tmp_name)
    h_md5, h_sha = hashlib.md5(), hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except urllib.error.HTTPError as e:
                raise DataError(
                    f"download of {url} failed: HTTP {e.code} {e.reason}. {_offline_hint(url, dest)}"
                ) from e
            except (*_NETWORK_ERRORS, ValueError) as e:  # ValueError: malformed URL
                reason = getattr(e, "reason", e)
                raise DataError(f"cannot download {url}: {reason}. {_offline_hint(url, dest)}") from e
            with resp:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except _NETWORK_ERRORS as e:
                        raise DataError(
                            f"download of {url} interrupted ({type(e).__name__}: {e}). {_offline_hint(url, dest)}"
                        ) from e
                    if not chunk:
                        break
                    out.write(chunk)
                    h_md5.update(chunk)
                    h_sha.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        for algo, expected, h in (("md5", md5, h_md5), ("sha256", sha256, h_sha)):
            if expected is not None and h.hexdigest() != expected.lower():
                raise DataError(
                    f"checksum mismatch for {url}: expected {algo} {expected}, got {h.hexdigest()}; "
                    f"nothing was saved to {dest}"
                )
        os.replace(tmp, dest)
    except OSError as e:
        raise DataError(f"cannot save download of {url} to {dest} ({e})") from e
    finally:
        # On success tmp has been renamed away; on any failure it must not be left behind.
        with contextlib.suppress(OSError):
            tmp.unlink()
    return dest
