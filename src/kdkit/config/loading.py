"""Configs from YAML files and `--set a.b=c` overrides, with readable validation errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdkit.config.experiment import ExperimentConfig
from kdkit.config.reference import nearest_key, sections
from kdkit.errors import ConfigError


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def _unknown_key_message(loc: tuple[Any, ...]) -> str:
    """Return the message of an unknown key: the nearest valid key, and the command listing them all."""
    near = nearest_key(loc)
    hint = f"did you mean {near}? " if near else ""
    top = str(loc[0]) if loc else ""
    section = f" --section {top}" if len(loc) > 1 and top in sections() else ""
    return f"unknown key ({hint}every valid key: `kdkit config --defaults{section}`, or docs/CONFIG.md)"


def format_validation_error(err: ValidationError, source: str) -> str:
    """Return one readable line per problem: field path, message, and the value given."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = _format_loc(tuple(p for p in e["loc"] if not str(p).startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = _unknown_key_message(tuple(p for p in e["loc"] if not str(p).startswith("function-")))
        given = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {given!r})"
        if len(shown) > 80:
            shown = shown[:77] + "...)"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Return (key path, YAML-parsed value) from a `a.b.c=value` override."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. teacher.train.epochs=5")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty key path; expected e.g. student.train.lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {text!r}: value {raw!r} is not valid YAML ({exc.__class__.__name__})"
        ) from None
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw config dict with each `a.b=c` override set (intermediate dicts created)."""
    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[p] = nxt
            elif not isinstance(nxt, dict):
                path = ".".join(parts[: i + 1])
                raise ConfigError(f"override {text!r}: {path} is a value ({nxt!r}), not a section with keys")
            node = nxt
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Return the mapping in a YAML file, with a ConfigError for missing, unreadable or non-mapping files."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist (expected a YAML file, see configs/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML{at}: {getattr(exc, 'problem', exc)}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}"
        )
    return data


def build_config(raw: Any, overrides: list[str] | None = None, source: str = "config") -> ExperimentConfig:
    """Return the validated config from a raw mapping plus overrides, or raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    merged = apply_overrides(raw, overrides or [])
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Return the validated config of a YAML file with `--set` overrides applied."""
    return build_config(load_yaml(path), overrides, source=str(path))
