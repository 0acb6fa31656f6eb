"""The run directory: made empty without ever deleting a user's files, or checked before a run resumes in it."""

from __future__ import annotations

import contextlib
import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

import pydantic
import yaml

from kdkit.config import ExperimentConfig
from kdkit.errors import ConfigError, RunDirError

# Files and folders kdkit writes into a run directory; --overwrite removes these and nothing else.
RUN_ARTIFACTS = (
    "config.yaml",
    "metrics.jsonl",
    "console.log",
    "summary.json",
    "checkpoints",
    "tb",
    "compress",
)


def check_replaceable(
    directory: Path, artifacts: tuple[str, ...], overwrite: bool, what: str, how: str
) -> bool:
    """Return True when `directory` holds earlier kdkit output that may be replaced (False when empty/absent).

    Raises RunDirError when it is a file, when it is not empty and `overwrite` is off, or when it holds
    anything kdkit did not write: a user's files are never deleted.
    """
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"{what} {str(directory)!r} exists and is a file")
    if not directory.is_dir() or not any(directory.iterdir()):
        return False
    if not overwrite:
        raise RunDirError(f"{what} {str(directory)!r} is not empty; {how}")
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in artifacts)
    if foreign:
        raise RunDirError(
            f"refusing to overwrite {str(directory)!r}: it holds files kdkit did not write ({foreign[:5]})"
        )
    return True


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Return the run directory, created empty; never delete anything but kdkit's own artifacts."""
    run_dir = Path(path)
    how = "pass --overwrite to replace a previous kdkit run there, or choose another --run-dir"
    if check_replaceable(run_dir, RUN_ARTIFACTS, overwrite, "run directory", how):
        for name in RUN_ARTIFACTS:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def default_run_dir(cfg: ExperimentConfig) -> Path:
    """Return runs/<name>-<timestamp> for a run without --run-dir."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{stamp}"


def _as_today(saved: dict[str, Any]) -> dict[str, Any]:
    """Return a saved config read through today's model, section by section, with today's defaults filled in.

    A section that is not valid today (it holds a field kdkit no longer has) is kept as written, so the
    comparison names it.
    """
    out = dict(saved)
    for key, f in ExperimentConfig.model_fields.items():
        if key not in saved:
            if not f.is_required():
                default = f.get_default(call_default_factory=True)
                out[key] = default.model_dump(mode="json") if hasattr(default, "model_dump") else default
            continue
        adapter = pydantic.TypeAdapter(f.annotation)
        with contextlib.suppress(ValueError, TypeError):
            out[key] = adapter.dump_python(adapter.validate_python(saved[key]), mode="json")
    return out


def check_resumable(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Refuse to resume a run dir that holds no run, or one made with a different config (runtime aside)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise RunDirError(f"nothing to resume in {str(run_dir)!r}: it holds no kdkit run (no config.yaml)")
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    now = cfg.model_dump(mode="json")
    # Fields kdkit gained after the run started (a whole section such as strategy, or one field such as
    # data.labeled_count) count as their defaults there: read the saved config through today's model.
    saved = _as_today(saved)
    # Runtime settings (progress bars, logging, checkpoint cadence) may change on resume; the experiment may not.
    diffs = sorted(k for k in set(saved) | set(now) if k != "runtime" and saved.get(k) != now.get(k))
    if diffs:
        raise ConfigError(
            f"--resume: the config differs from the one {str(run_dir)!r} was started with, in section(s) {diffs}; "
            "resume with the same config and --set overrides (the original is saved in config.yaml)"
        )
