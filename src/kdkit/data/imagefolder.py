"""ImageFolder data (``[split/]class/image``) from a directory or a tar archive, decoded with Pillow.

Archives are streamed with ``tarfile`` (never extracted) and member names are checked.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from kdkit.errors import DataError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_tar_name(path: str | Path) -> bool:
    """True if the file name has a tar archive suffix."""
    return str(path).lower().endswith(TAR_SUFFIXES)


def safe_member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """Split a member name into path parts, refusing absolute paths and ``..`` components."""
    # Nothing is ever extracted, but a name like "../x" or "/etc/x" only appears in crafted archives,
    # and letting it through would make class names out of attacker-chosen paths.
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: unsafe archive member {name!r} (absolute path); expected relative paths")
    parts = tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))
    if ".." in parts:
        raise DataError(f"{archive}: unsafe archive member {name!r} (contains '..'); expected relative paths")
    return parts


def _check_clean_end(tf: tarfile.TarFile, archive: Path) -> None:
    """Fail unless only zero padding follows the last member, reading the stream to its end."""
    # tarfile ends iteration silently at the first unreadable header, so a corrupt archive would
    # look like a shorter valid one. A real end of archive is all zero blocks; reading them to EOF
    # also makes gzip/bz2/xz verify their end-of-stream checksums.
    offset = tf.offset
    tf.fileobj.seek(offset)
    while chunk := tf.fileobj.read(1 << 20):
        if chunk.count(0) != len(chunk):
            raise DataError(
                f"{archive}: corrupt archive: invalid tar header at byte {offset} of the (uncompressed) tar "
                "stream; expected another member or the zero-filled end of the archive"
            )
        offset += len(chunk)


def iter_tar_files(
    archive: Path,
    want: Callable[[tuple[str, ...]], bool] | None = None,
    dirs: set[tuple[str, ...]] | None = None,
) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """Yield ``(path parts, bytes)`` for every regular file in the archive that ``want`` accepts, in archive order.

    ``dirs``, when given, collects every directory of the archive (listed, or implied by a file's path).
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found (expected a .tar/.tar.gz/.tgz file)")
    skipped_links: list[str] = []
    try:
        # "r:*" detects the compression; members are read in archive order, so a gzip stream is
        # decompressed once, front to back, and nothing touches the disk.
        with tarfile.open(archive, mode="r:*") as tf:
            for member in tf:
                parts = safe_member_parts(member.name, archive)
                if dirs is not None and parts:
                    # Every folder counts, so that a class folder without images can be named.
                    end = len(parts) if member.isdir() else len(parts) - 1
                    dirs.update(parts[:i] for i in range(1, end + 1))
                if member.isdir() or not parts:
                    continue
                if not member.isfile():
                    # Links and device nodes are not image data; following links could leave the archive.
                    skipped_links.append(member.name)
                    continue
                if want is not None and not want(parts):
                    continue
                fobj = tf.extractfile(member)
                if fobj is None:  # pragma: no cover - isfile() members always have data
                    continue
                data = fobj.read()
                if len(data) != member.size:
                    raise DataError(
                        f"{archive}: truncated archive: member {member.name!r} should have "
                        f"{member.size} bytes, found {len(data)}"
                    )
                yield parts, data
            _check_clean_end(tf, archive)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e}); expected a complete "
            "tar file (optionally gzip/bz2/xz-compressed). Fetch or rebuild the archive."
        ) from e
    if skipped_links:
        warnings.warn(
            f"{archive}: ignored {len(skipped_links)} non-regular members (links/devices), e.g. {skipped_links[0]!r}",
            stacklevel=2,
        )


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")

Parts = tuple[str, ...]


def _is_image(parts: Parts) -> bool:
    """An image file whose path has no hidden component (.DS_Store, __MACOSX/ ...)."""
    return (
        parts[-1].lower().endswith(IMAGE_EXTENSIONS)
        and not any(p.startswith(".") for p in parts)
        and "__MACOSX" not in parts
    )


def scan_directory(root: Path, dirs: set[Parts] | None = None) -> dict[Parts, Path]:
    """Map relative path parts -> file path for every image file below ``root`` (``dirs`` collects the folders)."""
    found: dict[Parts, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root).parts
        if dirs is not None and rel:
            dirs.add(rel)
        for f in filenames:
            parts = (*rel, f)
            if _is_image(parts):
                found[parts] = Path(dirpath) / f
    return found


def scan_archive(archive: Path, dirs: set[Parts] | None = None) -> dict[Parts, bytes]:
    """Map path parts -> encoded bytes for every image member of a tar archive (one streaming pass).

    ``dirs``, when given, collects the archive's folders.
    """
    # One pass that keeps every image's encoded bytes: the split layout is only known once all names
    # are seen, and a second pass would decompress the whole gzip stream again. Encoded images are
    # smaller than the decoded arrays we build from them.
    return dict(iter_tar_files(archive, _is_image, dirs))


class MissingSplitError(DataError):
    """The source has no folder for the requested split (a flat folder has only training images)."""


# The split a folder without split directories serves: all its images are training images.
TRAIN_SPLIT = "train"


def _missing_split(
    source: str, split: str, where: str, found: Sequence[str], flat: bool
) -> MissingSplitError:
    """The error for a split folder that does not exist, listing the folders that do and the ways out."""
    if flat:
        return MissingSplitError(
            f"{source}: no split directory {split!r}: the class folders ({', '.join(found)}) sit at {where}, "
            f"so every image is a training image and split {split!r} would evaluate on them; hold a test set "
            "out of them by seed with data.test_size, or arrange the folder as <split>/<class>/<image>"
        )
    return MissingSplitError(
        f"{source}: no split directory {split!r} at {where}; found directories {', '.join(found)} "
        "(choose one of them as the split, e.g. data.splits: {train: ..., test: ...})"
    )


def resolve_layout(paths: Sequence[Parts], split: str | None, source: str) -> Parts:
    """Find the directory (as a path prefix) whose subdirectories are the classes.

    Descends into the ``split`` directory when one exists, and through single wrapper directories
    (an archive's top-level folder); stops where some subdirectory holds images directly. A folder without
    split directories serves only the training split: any other split of it would be its training images.
    """
    prefix: Parts = ()
    used_split = split is None
    while True:
        n = len(prefix)
        below = [p[n:] for p in paths if p[:n] == prefix]
        subdirs = sorted({p[0] for p in below if len(p) > 1})
        where = "/".join(prefix) or "top level"
        if not subdirs:
            raise DataError(
                f"{source}: no class directories at {where}; expected [<split>/]<class>/<image> "
                f"with image files ({', '.join(IMAGE_EXTENSIONS)})"
            )
        if any(len(p) == 2 for p in below):
            if not used_split and split != TRAIN_SPLIT:
                raise _missing_split(source, str(split), where, subdirs, flat=True)
            return prefix
        if not used_split and split in subdirs:
            prefix = (*prefix, str(split))
            used_split = True
        elif len(subdirs) == 1:
            prefix = (*prefix, subdirs[0])
        elif split is not None and not used_split:
            raise _missing_split(source, split, where, subdirs, flat=False)
        else:
            raise DataError(
                f"{source}: no class directories with images at {where}; found directories {', '.join(subdirs)} "
                "(choose one of them as the split)"
            )


def select_samples(
    files: Mapping[Parts, object], split: str | None, source: str, dirs: set[Parts] | None = None
) -> tuple[list[str], list[tuple[Parts, int]]]:
    """Return (class names, [(path parts, label)]) for the split, classes and files in sorted order.

    With ``dirs`` (the source's folders), a class folder holding no image is refused: dropping it would
    silently change the number of classes.
    """
    prefix = resolve_layout(list(files), split, source)
    n = len(prefix)
    chosen = sorted(p for p in files if p[:n] == prefix and len(p) > n + 1)
    classes = sorted({p[n] for p in chosen})
    if dirs is not None:
        empty = sorted({d[n] for d in dirs if d[:n] == prefix and len(d) > n} - set(classes))
        if empty:
            where = "/".join(prefix) or "top level"
            raise DataError(
                f"{source}: split {split!r} has class folders without images at {where}: {', '.join(empty)} "
                f"(expected image files {', '.join(IMAGE_EXTENSIONS)}); add images or remove those folders, "
                "since an empty folder would silently drop its class"
            )
    index = {c: i for i, c in enumerate(classes)}
    return classes, [(p, index[p[n]]) for p in chosen]


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bilinear, antialiased), then center-crop to size x size."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_image(src: Path | bytes, display: str, image_size: int | None) -> np.ndarray:
    """Decode one image to an RGB (H, W, 3) uint8 array, optionally resized and center-cropped."""
    try:
        with Image.open(src if isinstance(src, Path) else io.BytesIO(src)) as img:
            img.load()  # decode now, inside the try: Pillow is lazy and truncation shows up only here
            out = img if img.mode == "RGB" else img.convert("RGB")
            if image_size is not None:
                out = resize_center_crop(out, image_size)
            return np.asarray(out)
    except (
        Exception
    ) as e:  # Pillow signals bad input with OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(
            f"{display}: cannot decode image ({type(e).__name__}: {e}); expected a valid "
            f"{os.path.splitext(display)[1].lstrip('.').upper() or 'image'} file"
        ) from e


def decode_all(items: Sequence[tuple[str, Path | bytes]], image_size: int | None, source: str) -> np.ndarray:
    """Decode ``(display name, file path or bytes)`` items into one (N, 3, H, W) uint8 array."""
    # Single process: measured on 2 cores, a 2-process pool cut the 50,000-image CIFAR decode only
    # from ~3.5 s to ~2.5-3.0 s, for fork-with-threads hazards; the disk cache makes it a one-off cost.
    if not items:
        raise DataError(f"{source}: no images found for this split")
    first_name, first_src = items[0]
    first = decode_image(first_src, first_name, image_size)
    h, w = first.shape[:2]
    out = np.empty((len(items), 3, h, w), dtype=np.uint8)
    out[0] = first.transpose(2, 0, 1)
    for i in range(1, len(items)):
        name, src = items[i]
        arr = decode_image(src, name, image_size)
        if arr.shape[:2] != (h, w):
            raise DataError(
                f"{source}: images differ in size: {first_name} is {w}x{h} but {name} is "
                f"{arr.shape[1]}x{arr.shape[0]}; pass image_size=N (e.g. image_size={min(h, w, *arr.shape[:2])}) "
                "to resize the shorter side to N and center-crop to NxN"
            )
        out[i] = arr.transpose(2, 0, 1)
    return out
