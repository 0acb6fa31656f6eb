"""A run's hf: model back to a Hugging Face folder: `kdkit export-hf CHECKPOINT OUT`.

A fine-tuned hf: teacher or a distilled hf: student lives in kdkit's checkpoint format (safetensors + JSON). This
writes it as transformers' `save_pretrained` does (config.json + model.safetensors) with the tokenizer of the
folder it came from, so `AutoModelForCausalLM.from_pretrained(OUT)` (or `AutoModelForSequenceClassification` for a
classifier, whose labels are the run's class names) loads it anywhere. OUT must not exist or be an empty folder;
the folder is written beside it and renamed into place, so a failure leaves no half-written OUT.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kdkit.errors import CheckpointError
from kdkit.model_io import load_model
from kdkit.models.hf import HFClassifier, HFModel, quiet_transformers


def export_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the hf: model of a kdkit checkpoint as a Hugging Face folder at `out`; return `out`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(
            f"{str(out)!r} exists and is not an empty folder; kdkit overwrites nothing: name a new one"
        )
    model, meta = load_model(checkpoint)
    if not isinstance(model, HFModel):
        raise CheckpointError(
            f"{str(checkpoint)!r} holds a {meta['model'].get('name')!r} model; only hf: models export to a Hugging "
            "Face folder (kdkit compress exports image and sentence students to ONNX and int8)"
        )
    if isinstance(model, HFClassifier):
        classes = list(meta.get("classes") or [])
        if len(classes) == model.hf.config.num_labels:
            model.hf.config.id2label = dict(enumerate(classes))
            model.hf.config.label2id = {name: i for i, name in enumerate(classes)}
    tokenizer = model.tokenizer()
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with quiet_transformers():  # no progress bar for one small shard
            model.hf.save_pretrained(partial, safe_serialization=True)
            tokenizer.save_pretrained(partial)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
