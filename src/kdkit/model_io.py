"""Models of a run on disk and back: build from a spec, save with metadata, rebuild and load a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdkit.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from kdkit.config import ModelSpec
from kdkit.data.bundle import DataBundle
from kdkit.errors import CheckpointError, ConfigError, ModelError
from kdkit.models import create
from kdkit.models.pretrained import WeightsReport, load_pretrained
from kdkit.models.registry import COMMON_ARGS


def build_model(
    spec: ModelSpec,
    num_classes: int,
    in_channels: int,
    image_size: int,
    field: str,
    *,
    causal_lm: bool = False,
) -> nn.Module:
    """Return a new model from a spec (pretrained weights loaded), factory errors as config errors.

    `causal_lm`: the run's data is language-model text (see kdkit.models.create).
    """
    return build_model_reported(spec, num_classes, in_channels, image_size, field, causal_lm=causal_lm)[0]


def build_model_reported(
    spec: ModelSpec,
    num_classes: int,
    in_channels: int,
    image_size: int,
    field: str,
    *,
    causal_lm: bool = False,
) -> tuple[nn.Module, WeightsReport | None]:
    """Return a new model from a spec and, when it starts from pretrained weights, what loading them did."""
    check_data_decided_options(spec, field, dict(zip(COMMON_ARGS, (num_classes, in_channels, image_size))))
    try:
        model = create(
            spec.name,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            causal_lm=causal_lm,
            **spec.options(),
        )
    except ModelError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    if spec.pretrained is None:
        return model, None
    return model, load_pretrained(model, spec.pretrained, field)


def check_data_decided_options(spec: ModelSpec, field: str, from_data: dict[str, int]) -> None:
    """Raise ConfigError when a model spec sets an argument that the data set decides (num_classes, ...)."""
    # A factory receives these from the data; given in the spec too, the call would fail with a bare
    # "got multiple values for keyword argument" TypeError.
    for key in COMMON_ARGS:
        if key in spec.options():
            decided = f" (here {from_data[key]})" if key in from_data else ""
            raise ConfigError(
                f"{field}.{key}: {key} is not a model option: the data set decides it{decided}; "
                f"remove {key} from {field} (data.image_size sets the image size of resizable data sets)"
            )


def save_model(
    path: Path, model: nn.Module, spec: ModelSpec, bundle: DataBundle, extra: dict[str, Any]
) -> Path:
    """Write a model checkpoint with everything needed to rebuild and evaluate it."""
    meta = {
        "kind": "model",
        "model": spec.model_dump(mode="json"),
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "image_size": bundle.image_size,
        "classes": list(bundle.train.classes),
        "normalize": {"mean": bundle.mean, "std": bundle.std},
        "data_split": bundle.split,
        **({"text": bundle.text} if bundle.text is not None else {}),
        **({"lm": bundle.lm} if bundle.lm is not None else {}),
        **extra,
    }
    return save_checkpoint(path, model.state_dict(), meta)


def rebuild_model(meta: dict[str, Any], path: str | Path) -> nn.Module:
    """Return a freshly initialised model of the architecture a checkpoint's metadata describes."""
    try:
        spec = ModelSpec.model_validate(meta["model"])
        check_data_decided_options(spec, "model", {})
        return create(
            spec.name,
            num_classes=meta["num_classes"],
            in_channels=meta["in_channels"],
            image_size=meta["image_size"],
            causal_lm="lm" in meta,  # saved from language-model text
            **spec.options(),
        )
    except (ModelError, ConfigError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r}: cannot rebuild the model it describes: {exc}") from None


def check_model_meta(meta: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Return a checkpoint's metadata, or raise CheckpointError when it does not describe a model."""
    if meta.get("kind") != "model" or "model" not in meta:
        raise CheckpointError(
            f"{str(path)!r} is a {meta.get('kind', 'unknown')!r} checkpoint, not a model checkpoint"
        )
    return meta


def read_model_meta(path: str | Path, field: str | None = None) -> dict[str, Any]:
    """Return the metadata of a model checkpoint; errors name the config field that gave the path."""
    try:
        return check_model_meta(read_checkpoint_meta(path), path)
    except CheckpointError as exc:
        raise CheckpointError(f"{field}: {exc}" if field else str(exc)) from None


def load_model(path: str | Path, field: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Return (model, metadata) rebuilt from a kdkit model checkpoint; errors name `field` when given."""
    try:
        tensors, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{field}: {exc}" if field else str(exc)) from None
    model = rebuild_model(check_model_meta(meta, path), path)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{str(path)!r} does not match model {meta['model'].get('name')!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model, meta


def check_classes(
    meta: dict[str, Any],
    field: str,
    path: str | Path,
    classes: list[str],
    dataset: str,
    by_name: bool = False,
) -> None:
    """Raise ModelError when a checkpoint does not predict the data set's classes (by count; by name too)."""
    theirs = list(meta.get("classes") or [])
    if meta.get("num_classes") == len(classes) and not (theirs and theirs != classes):
        return
    if not by_name and meta.get("num_classes") == len(classes):
        # Same count, other names or order: class id k would mean another class, and nothing would fail.
        raise ModelError(
            f"{field} {str(path)!r} predicts the classes {', '.join(theirs[:12])} but {dataset} has "
            f"{', '.join(classes[:12])}: its class ids would mean other classes; use a model trained on "
            "this data set's class folders"
        )
    if not by_name:
        raise ModelError(
            f"{field} {str(path)!r} predicts {meta.get('num_classes')} classes but {dataset} has {len(classes)}"
        )
    raise ModelError(
        f"{field} {str(path)!r} predicts {meta.get('num_classes')} classes ({', '.join(theirs[:12]) or 'names unknown'}) "
        f"but {dataset} has {len(classes)} ({', '.join(classes[:12])}): every teacher of an ensemble must predict "
        "the data set's classes"
    )


def check_text(meta: dict[str, Any], field: str, path: str | Path, text: dict[str, Any] | None) -> None:
    """Raise ModelError when a checkpoint read other inputs than the run's: images for sentences, another tokenizer."""
    theirs = meta.get("text")
    if text is None and theirs is None:
        return
    if text is None or theirs is None:
        what, mine = ("sentences", "images") if theirs is not None else ("images", "sentences")
        raise ModelError(f"{field} {str(path)!r} was trained on {what}, but this run's data are {mine}")
    if theirs.get("tokenizer") != text.get("tokenizer"):
        raise ModelError(
            f"{field} {str(path)!r} was trained on token ids of {theirs.get('tokenizer')} but this run tokenises "
            f"with {text.get('tokenizer')}: its ids would mean other words; set data.text.tokenizer: "
            f"{theirs.get('tokenizer')}"
        )


def check_image_size(meta: dict[str, Any], field: str, path: str | Path, image_size: int) -> None:
    """Raise ModelError when a checkpoint was trained at another image size than the run's images."""
    # Global pooling lets most networks run at any resolution, so a mismatch would not fail: it would
    # silently lower the teacher's accuracy and everything distilled from it.
    theirs = meta.get("image_size")
    if theirs is not None and theirs != image_size:
        raise ModelError(
            f"{field} {str(path)!r} was trained on {theirs}x{theirs} images but this run's images are "
            f"{image_size}x{image_size}; set data.image_size: {theirs} (or train the model at {image_size})"
        )


def check_test_images(meta: dict[str, Any], field: str, path: str | Path, split: dict[str, Any]) -> None:
    """Raise ModelError when a model of this data set was trained on another test hold-out than the run's.

    With data.test_size the test images are drawn out of the training folder: a model drawn with another
    size or seed (or trained on the whole folder) has trained on some of this run's test images.
    """
    theirs = meta.get("data_split")
    if not isinstance(theirs, dict) or theirs.get("dataset") != split.get("dataset"):
        return  # another data set, or no record: nothing can be told
    held, mine = theirs.get("test_held_out"), split.get("test_held_out")
    if held != mine:
        raise ModelError(
            f"{field} {str(path)!r} was trained with the test hold-out {held or 'none (every image of the folder)'} "
            f"but this run tests on {mine or 'the source test split'}: it has trained on images this run tests "
            "on; use the same data.test_size and data.test_seed as the run that trained it"
        )
