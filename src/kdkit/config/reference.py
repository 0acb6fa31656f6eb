"""The config's reference, generated from the pydantic models: every key with its type, default and description.

`kdkit config --defaults [--section S]` prints it; `docs/CONFIG.md` is `config_markdown()` written out (a test
keeps the two equal). `nearest_key` serves the "did you mean" of unknown-key errors from the same walk.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from kdkit.config.base import ModelSpec
from kdkit.config.experiment import ExperimentConfig
from kdkit.errors import ConfigError

MODEL_OPTIONS = (
    "any other key is an option of the model's factory, checked when the model is built (`kdkit models` lists "
    "the names); num_classes, in_channels and image_size are not options: the data set decides them"
)

RULES = """\
## Rules that span sections

- **Input normalisation.** With `data.normalize: true` (the default) every image is normalised per channel
  with the mean and standard deviation of the **training split**: the training set after the validation
  images (`data.val_size`) are held out, unlabeled images (`data.labeled_*`) included, validation and test
  images never. The values are recorded in every model checkpoint (`normalize`), and `kdkit eval` and the
  compress step reuse them; a model is never evaluated with statistics of the data it is tested on.
  `data.normalize: imagenet` uses ImageNet's mean and std instead, which ImageNet-pretrained weights
  (`model.pretrained`) expect; `false` divides pixels by 255 only.
- **Image size.** Every model of a run is built for the data's image size and channel count, taken from the
  data set: MNIST is 28x28x1, CIFAR 32x32x3, `cifar10-jpg` and `imagefolder:` data keep their files' size
  unless `data.image_size` is set (then each image is resized, shorter side first, and centre-cropped to
  that size; MNIST and CIFAR cannot be resized). `num_classes`, `in_channels` and `image_size` are therefore
  not model options. Checkpoints record the image size, and `kdkit eval` decodes the data at that size.
"""


@dataclass(frozen=True)
class KeyDoc:
    """One config key: its dotted path, type, default and description (sections are keys too)."""

    key: str
    type: str
    default: str
    description: str
    section: bool = False


def _unwrap(annotation: Any) -> list[Any]:
    """Return the non-None members of a union annotation (a plain annotation is a union of one)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """Return (the model a field holds, True when it holds a list of them) or (None, False)."""
    for member in _unwrap(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member, False
        if typing.get_origin(member) is list:
            inner = typing.get_args(member)[0]
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner, True
    return None, False


def _type_name(annotation: Any) -> str:
    """Return a short readable name of an annotation, e.g. `int | None`, `'sgd' | 'adamw'`, `list[float]`."""
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: FieldInfo) -> str:
    """Return the field's bounds as text, e.g. `>= 0, < 1`."""
    out = []
    for m in field.metadata:
        for cls, attr, sign in (
            (Ge, "ge", ">="),
            (Gt, "gt", ">"),
            (Le, "le", "<="),
            (Lt, "lt", "<"),
            (MinLen, "min_length", "length >="),
            (MaxLen, "max_length", "length <="),
        ):
            if isinstance(m, cls):
                out.append(f"{sign} {getattr(m, attr)}")
    return ", ".join(out)


def _default(field: FieldInfo) -> Any:
    """Return the default value of a field (PydanticUndefined when it is required)."""
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _shown(value: Any) -> str:
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return json.dumps(value)


def _describe(field: FieldInfo, model: type[BaseModel] | None) -> str:
    text = field.description or ""
    if model is not None and model.__doc__:
        doc = " ".join(model.__doc__.split())
        text = f"{text}. {doc}" if text and not doc.startswith(text) else text or doc
    return text


def _own_defaults(value: Any, model: type[BaseModel]) -> bool:
    """Return True when a default section's values differ from those of its model's own defaults."""
    if not isinstance(value, BaseModel):
        return False
    try:
        return value != model()
    except ValueError:  # a model with required keys has no defaults of its own to differ from
        return False


def _field_docs(
    name: str, field: FieldInfo, prefix: str, defaults: BaseModel | None, seen: dict[type, str]
) -> list[KeyDoc]:
    """Return the doc of one key and, for a section, of the keys below it (a section shown once is referred to)."""
    key = f"{prefix}{name}"
    sub, is_list = _model_of(field.annotation)
    value = getattr(defaults, name) if defaults is not None else _default(field)
    kind = _type_name(field.annotation).replace("list[section]", "list of sections")
    bounds = _constraints(field)
    text = _describe(field, sub)
    # A section shown once is referred to after that, unless its defaults here differ from the model's own.
    repeat = sub is not None and sub in seen and sub is not ModelSpec and not _own_defaults(value, sub)
    if repeat:
        text = f"{text} Same keys as `{seen[sub]}`."
    rows = [KeyDoc(key, f"{kind}, {bounds}" if bounds else kind, _shown(value), text, sub is not None)]
    if sub is None or repeat:
        return rows
    seen.setdefault(sub, key)
    child = f"{key}[]." if is_list else f"{key}."
    if sub is ModelSpec:
        name_doc = "the registered model name, e.g. resnet20, mlp, torchvision:resnet18, my_pkg.models:Net"
        rows.append(KeyDoc(f"{child}name", "str", "required", name_doc))
        rows.extend(_field_docs("pretrained", ModelSpec.model_fields["pretrained"], child, None, seen))
        rows.append(KeyDoc(f"{child}<option>", "any", "", MODEL_OPTIONS))
        return rows
    below = value if isinstance(value, BaseModel) else None  # a default section may differ from the class's
    for sub_name, sub_field in sub.model_fields.items():
        rows.extend(_field_docs(sub_name, sub_field, child, below, seen))
    return rows


def sections() -> list[str]:
    """Return the names of the config's top-level keys, in the order of the config."""
    return list(ExperimentConfig.model_fields)


def config_keys(section: str | None = None) -> list[KeyDoc]:
    """Return every key of the config (or of one top-level section) with its type, default and description."""
    if section is not None and section not in ExperimentConfig.model_fields:
        close = difflib.get_close_matches(section, sections(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"--section: unknown section {section!r}.{hint} Sections: {', '.join(sections())}")
    rows: list[KeyDoc] = []
    for name in sections() if section is None else [section]:
        # Each section is read alone: a "same keys as" reference never points outside it.
        rows.extend(_field_docs(name, ExperimentConfig.model_fields[name], "", None, {}))
    return rows


def config_text(section: str | None = None) -> str:
    """Return the reference as plain text for a terminal: one block per key."""
    lines = []
    for k in config_keys(section):
        if k.section and "." not in k.key and "[]" not in k.key:
            lines.append("")
        default = f" = {k.default}" if k.default else ""
        lines.append(f"{k.key}: {k.type}{default}")
        if k.description:
            lines.append(f"    {k.description}")
    return "\n".join(lines).strip() + "\n"


def _cell(text: str) -> str:
    # Pipes end a table cell and "<x>" reads as an HTML tag in rendered Markdown.
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _table(keys: list[KeyDoc]) -> list[str]:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += [f"| `{k.key}` | {_cell(k.type)} | {_cell(k.default)} | {_cell(k.description)} |" for k in keys]
    return rows + [""]


def config_markdown() -> str:
    """Return docs/CONFIG.md: the rules that span sections, the top-level keys, then a table per section."""
    out = [
        "# kdkit configuration reference",
        "",
        "Generated from the pydantic models in `src/kdkit/config/` by `kdkit.config.reference.config_markdown()`;",
        "`kdkit config --defaults [--section NAME]` prints the same keys in a terminal. Do not edit by hand:",
        "regenerate with `kdkit config --defaults --markdown > docs/CONFIG.md` (a test fails when it is stale).",
        "Unknown keys are errors; `--set key.path=value` overrides any key below; `[]` marks the items of a list.",
        "",
        RULES,
    ]
    docs = {name: config_keys(name) for name in sections()}
    scalars = [name for name, keys in docs.items() if not keys[0].section]
    out += ["## Top-level keys", "", *_table([docs[name][0] for name in scalars])]
    for name, keys in docs.items():
        if name not in scalars:
            out += [f"## `{name}`", "", *_table(keys)]
    return "\n".join(out)


def nearest_key(loc: tuple[Any, ...]) -> str | None:
    """Return the dotted key nearest to an unknown key at `loc` (a pydantic error location), or None."""
    model: type[BaseModel] | None = ExperimentConfig
    path: list[str] = []
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            path.append(f"[{part}]" if isinstance(part, int) else str(part))
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None  # a union's branch name or a dict key: no model to compare with
        model, _ = _model_of(field.annotation)
        path.append(str(part))
    if model is None:
        return None
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    if not close:
        return None
    dotted = ".".join(path + [close[0]])
    return dotted.replace(".[", "[")
