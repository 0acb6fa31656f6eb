"""What every phase of a run reads and writes: the data, the engine, the checkpoints, and earlier models.

A `RunContext` flows forward through the executor: a phase reads the models and records of earlier phases
by role and adds its own. Finished phases are skipped on resume: their model and record are loaded from
the run's checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdkit import distributed
from kdkit.batches import BatchLoader
from kdkit.config import ExperimentConfig, ModelSpec
from kdkit.data.bundle import DataBundle, make_loader, val_images_trained_on
from kdkit.data.loader import InMemoryLoader
from kdkit.engine import Engine, FitResult
from kdkit.ensemble import EnsembleTeacher
from kdkit.eval_memo import default_memo_root, memo_key, recall, remember
from kdkit.lm_io import save_tokenizer_beside
from kdkit.model_io import load_model, save_model
from kdkit.report import eval_record
from kdkit.resume import CheckpointPolicy
from kdkit.tasks import EvalResult
from kdkit.teacher import FrozenTeacher


@dataclass
class RunContext:
    """The state of one run that its phases share: fixed settings, and the models and records so far."""

    cfg: ExperimentConfig
    bundle: DataBundle
    engine: Engine
    ckpt_dir: Path
    resume: bool
    models: dict[str, nn.Module] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bs = self.cfg.runtime.eval_batch_size
        # Evaluation only: sentences may come sorted by length (little padding), images come in order.
        self.val_loader = make_loader(
            self.bundle.val, self.bundle, bs, train=False, channels_last=self.cl, by_length=True
        )
        self.test_loader = make_loader(
            self.bundle.test, self.bundle, bs, train=False, channels_last=self.cl, by_length=True
        )

    @property
    def cl(self) -> bool:
        """Return True when models run in channels-last memory format."""
        return self.engine.runtime.channels_last

    @property
    def dims(self) -> tuple[int, int, int]:
        """Return (classes, channels, image size): what every model of the run is built for."""
        b = self.bundle
        return b.num_classes, b.in_channels, b.image_size

    def policy(self) -> CheckpointPolicy:
        """Return the checkpoint policy of a training phase."""
        rt = self.cfg.runtime
        return CheckpointPolicy(self.ckpt_dir, rt.checkpoint_every_steps, rt.keep_checkpoints, self.resume)

    def finished(self, role: str) -> nn.Module | None:
        """Return the model of a phase a resumed run already finished (its record restored), else None."""
        if not (self.resume and (self.ckpt_dir / f"{role}.json").is_file()):
            return None
        model, meta = load_model(self.ckpt_dir / role)
        self.records[role] = meta["metrics"]
        self.engine.console.print(
            f"[{role}] finished earlier: loaded from {self.ckpt_dir / role}.safetensors",
            highlight=False,
            markup=False,
        )
        return self.engine.prepare(model)

    def evaluate(
        self, model: nn.Module, loader: BatchLoader, spec: ModelSpec, remembered: bool = False
    ) -> EvalResult:
        """Return a model's evaluation over a loader; with `remembered` (loaded checkpoints), an evaluation of
        the same weights on the same samples stored by an earlier run is read back instead (eval_memo)."""
        task, classes = self.bundle.task, self.bundle.num_classes
        if not remembered or distributed.info().enabled:
            return self.engine.evaluate(model, loader, classes, task)
        root = default_memo_root()
        spec_doc = spec.model_dump(mode="json")
        key = memo_key(model, spec_doc, loader, classes, repr(task), self.engine.runtime.channels_last)
        result = recall(root, key)
        if result is None:
            result = self.engine.evaluate(model, loader, classes, task)
            remember(root, key, result)
        else:
            self.engine.say(f"evaluation of these weights on these samples read from {root / key}.json")
        return result

    def finish(
        self,
        role: str,
        model: nn.Module,
        spec: ModelSpec,
        fit: FitResult | None,
        *,
        remembered: bool = False,
        **extra: Any,
    ) -> None:
        """Evaluate a model on validation and test, record it, and save its checkpoint.

        `remembered`: the model was loaded unchanged from a checkpoint, so an earlier run's evaluation of the
        same weights on the same samples can be read back (see kdkit.eval_memo).
        """
        val = self.evaluate(model, self.val_loader, spec, remembered)
        test = self.evaluate(model, self.test_loader, spec, remembered)
        self.records[role] = {**eval_record(model, fit, val, test, self.bundle.train.classes), **extra}
        if self.bundle.is_lm:
            # Per-token figures: the vocabulary is no class list worth recording per class.
            rec = self.records[role]
            for key in ("classes", "errors_per_class"):
                rec.pop(key, None)
            rec.update(perplexity=test.perplexity, test_loss=test.loss, tokens_tested=test.total)
            if val.total:
                rec["val_perplexity"] = val.perplexity
        self.engine.logger.log(
            role,
            fit.steps if fit else 0,
            event="evaluated",
            test_accuracy=test.accuracy,
            test_errors=test.errors,
            **({"test_top5_accuracy": test.top5_accuracy} if test.top5_accuracy is not None else {}),
            **({"val_accuracy": val.accuracy} if val.total else {}),
        )
        if distributed.info().is_main:
            meta = {"role": role, "dataset": self.cfg.data.dataset, "metrics": self.records[role]}
            if self.bundle.is_lm:  # the tokenizer beside the checkpoint, as kdkit generate reads it (lm_io)
                meta.update(save_tokenizer_beside(self.ckpt_dir / role, self.bundle.tokenizer))
            save_model(self.ckpt_dir / role, model, spec, self.bundle, meta)

    def check_split(self, meta: dict[str, Any], field: str, path: str) -> dict[str, Any]:
        """Warn when a loaded model was trained on this run's validation images; return what to record.

        Such a model teaches a student about exactly those images, so the student's validation figures would
        come out better than on images no model of the run has seen (and choices made on them would be biased).
        """
        seen = val_images_trained_on(self.bundle, meta.get("data_split"))
        if seen is None:
            return {}
        if seen and distributed.info().is_main:
            theirs, mine = meta["data_split"], self.bundle.split
            fix = (
                "It was trained on the whole training set, so no validation split of it is unseen by it."
                if not theirs["val_size"]
                else f"To validate on images it never saw, set data.val_size={theirs['val_size']} and "
                f"data.split_seed={theirs['split_seed']}."
            )
            self.engine.console.print(
                f"warning: {field} {path!r} was trained on {seen:,} of this run's {len(self.bundle.val):,} "
                f"validation images (its split: val_size {theirs['val_size']}, split seed {theirs['split_seed']}; "
                f"this run's: val_size {mine['val_size']}, split seed {mine['split_seed']}): validation figures "
                f"of models it teaches will look better than on unseen images. {fix}",
                style="yellow",
                highlight=False,
                markup=False,
            )
        return {"val_images_trained_on": seen}

    def freeze(self, model: nn.Module) -> nn.Module:
        """Return a model ready to teach: on the run's device, frozen, in eval mode (ensembles already are)."""
        model = self.engine.prepare(model)
        if isinstance(model, (FrozenTeacher, EnsembleTeacher)):
            return model
        return FrozenTeacher(model, dtype=self.engine.runtime.amp_dtype)

    def plain_loader(self, images: np.ndarray | Tensor) -> InMemoryLoader:
        """Return an unshuffled, unaugmented loader over uint8 images with the run's normalisation."""
        n = len(images)
        return InMemoryLoader(
            images,
            torch.zeros(n, dtype=torch.long),  # labels are never read here
            self.cfg.runtime.eval_batch_size,
            mean=self.bundle.mean,
            std=self.bundle.std,
            channels_last=self.cl,
        )

    def teacher_logits(self, teacher: nn.Module, images: np.ndarray | Tensor) -> Tensor:
        """Return the teacher's logits (CPU fp32) for uint8 images, in order, without augmentation."""
        return self.engine.predict_logits(teacher, self.plain_loader(images))
