"""One whole experiment: teacher, student from scratch, distilled student; evaluation and artifacts."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import torch
import yaml
from rich.console import Console
from rich.table import Table
from torch import nn

from kdkit import data as kdata
from kdkit import distributed
from kdkit import transfer as ktransfer
from kdkit.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from kdkit.config import DataConfig, ExperimentConfig, ModelSpec, TrainConfig
from kdkit.console import make_console
from kdkit.data.loader import Augment, AugParams, InMemoryLoader, channel_stats
from kdkit.engine import Engine, EvalResult, FitResult
from kdkit.ensemble import EnsembleTeacher
from kdkit.errors import CheckpointError, ConfigError, DataError, ModelError, RunDirError
from kdkit.metrics import MetricsLogger
from kdkit.models import count_params, create, model_size_mb
from kdkit.objective import Objective
from kdkit.pretrain import run_pretraining
from kdkit.resume import CheckpointPolicy
from kdkit.runtime import resolve_runtime, seed_everything
from kdkit.teacher import FrozenTeacher
from kdkit.teacher_cache import CacheSpec, TeacherCache, cache_key, disk_bytes, draws_for
from kdkit.terms.build import build_objective, reads_teacher_features

# Files and folders kdkit writes into a run directory; --overwrite removes these and nothing else.
RUN_ARTIFACTS = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tb", "compress")

ROLE_LABELS = {
    "teacher": "teacher",
    "student_scratch": "student (scratch)",
    "student_kd": "student (distilled)",
    "teacher_joint": "teacher (joint)",
    "assistant": "assistant (TAKD)",
}


@dataclass
class DataBundle:
    """The splits of one data set and what models need to know about it."""

    train: kdata.ArrayDataset
    val: kdata.ArrayDataset
    test: kdata.ArrayDataset
    mean: list[float]
    std: list[float]
    unlabeled: kdata.ArrayDataset | None = None  # training images whose labels are hidden (data.labeled_*)
    # How train and val were drawn from the training set: recorded in every model checkpoint, so that a run
    # loading a model can tell how many of its validation images that model was trained on.
    split: dict[str, Any] = dataclasses.field(default_factory=dict)
    full_labels: np.ndarray | None = None  # labels of the whole training set the split was drawn from

    @property
    def val_of_full(self) -> np.ndarray | None:
        """Which images of the whole training set are this run's validation images (drawn again from the split)."""
        if self.full_labels is None or not self.split:
            return None
        return val_mask_of(self.full_labels, self.num_classes, self.split)

    @property
    def num_classes(self) -> int:
        """Return the number of classes."""
        return len(self.train.classes)

    @property
    def in_channels(self) -> int:
        """Return the image channel count."""
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """Return the image height (images are square)."""
        return int(self.train.images.shape[2])


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Return train/val/test splits: validation held out of the training set by seed, test untouched."""
    kwargs: dict[str, Any] = {"root": cfg.root, "download": cfg.download, "image_size": cfg.image_size}
    full = kdata.load_dataset(cfg.dataset, "train", **kwargs)
    test = kdata.load_dataset(cfg.dataset, "test", **kwargs)
    if cfg.train_limit is not None and cfg.train_limit < len(full):
        full = full.subset(torch.arange(cfg.train_limit).numpy(), name=f"{full.name}[:{cfg.train_limit}]")
    if cfg.test_limit is not None and cfg.test_limit < len(test):
        # Evenly spaced, not the first N: folder-ordered test sets list one class after another.
        keep = torch.linspace(0, len(test) - 1, cfg.test_limit).round().long().numpy()
        test = test.subset(keep, name=f"{test.name}[{cfg.test_limit} evenly spaced]")
    val_size: int | float = int(cfg.val_size) if cfg.val_size >= 1 else float(cfg.val_size)
    if isinstance(val_size, int) and val_size >= len(full):
        raise ConfigError(f"data.val_size: {val_size} leaves no training images (the set has {len(full)})")
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    train, val = kdata.split_train_val(full, val_size, split_seed)
    split = {"dataset": cfg.dataset, "images": len(full), "val_size": val_size, "split_seed": split_seed}
    if cfg.normalize:
        mean, std = channel_stats(train.images)
    else:
        mean, std = [0.0] * full.images.shape[1], [1.0] * full.images.shape[1]
    unlabeled = None
    if cfg.semi_supervised:
        # Pixel statistics above cover the unlabeled images too (their pixels are known, their labels are not).
        if cfg.labeled_count is not None and cfg.labeled_count >= len(train):
            raise ConfigError(
                f"data.labeled_count: {cfg.labeled_count} leaves no unlabeled images (training set: {len(train)})"
            )
        labeled = cfg.labeled_count if cfg.labeled_count is not None else cfg.labeled_fraction
        train, unlabeled = kdata.split_labeled(train, labeled or 0, seed)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        mean=mean,
        std=std,
        unlabeled=unlabeled,
        split=split,
        full_labels=full.labels,
    )


def val_mask_of(labels: np.ndarray, num_classes: int, split: dict[str, Any]) -> np.ndarray:
    """Return the validation mask of a recorded split (`DataBundle.split`, a checkpoint's `data_split`)."""
    return kdata.val_mask(labels, num_classes, split["val_size"], int(split["split_seed"]))


def val_images_trained_on(bundle: DataBundle, split: dict[str, Any] | None) -> int | None:
    """Return how many of the bundle's validation images a model trained on the given split had for training.

    None when that cannot be told: the checkpoint records no split (an older or foreign checkpoint, or one whose
    record is not kdkit's), or it was drawn from another data set or another number of images.
    """
    mine = bundle.split
    if not isinstance(split, dict) or bundle.full_labels is None or not mine:
        return None
    if split.get("dataset") != mine["dataset"] or split.get("images") != mine["images"]:
        return None
    if not len(bundle.val):
        return 0
    try:
        theirs = val_mask_of(bundle.full_labels, bundle.num_classes, split)
    except (KeyError, TypeError, ValueError, DataError):
        return None
    return int((bundle.val_of_full & ~theirs).sum())


def make_loader(
    ds: kdata.ArrayDataset,
    bundle: DataBundle,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    augment: Augment | None = None,
    channels_last: bool = False,
    extras: dict[str, torch.Tensor] | None = None,
    draws: AugParams | None = None,
    draw_extras: dict[str, torch.Tensor] | None = None,
) -> InMemoryLoader:
    """Return an in-memory loader over a split with the bundle's normalisation."""
    return InMemoryLoader(
        ds.images,
        ds.labels,
        batch_size,
        shuffle=train,
        seed=seed,
        augment=augment if train else None,
        mean=bundle.mean,
        std=bundle.std,
        channels_last=channels_last,
        extras=extras,
        draws=draws,
        draw_extras=draw_extras,
    )


def build_model(
    spec: ModelSpec, num_classes: int, in_channels: int, image_size: int, field: str
) -> nn.Module:
    """Return a new model from a spec, turning factory errors into config errors naming the field."""
    try:
        return create(
            spec.name,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            **spec.options(),
        )
    except ModelError as exc:
        raise ConfigError(f"{field}: {exc}") from None


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
        **extra,
    }
    return save_checkpoint(path, model.state_dict(), meta)


def rebuild_model(meta: dict[str, Any], path: str | Path) -> nn.Module:
    """Return a freshly initialised model of the architecture a checkpoint's metadata describes."""
    try:
        spec = ModelSpec.model_validate(meta["model"])
        return create(
            spec.name,
            num_classes=meta["num_classes"],
            in_channels=meta["in_channels"],
            image_size=meta["image_size"],
            **spec.options(),
        )
    except (ModelError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r}: cannot rebuild the model it describes: {exc}") from None


def check_model_meta(meta: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Return a checkpoint's metadata, or raise CheckpointError when it does not describe a model."""
    if meta.get("kind") != "model" or "model" not in meta:
        raise CheckpointError(
            f"{str(path)!r} is a {meta.get('kind', 'unknown')!r} checkpoint, not a model checkpoint"
        )
    return meta


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Return (model, metadata) rebuilt from a kdkit model checkpoint."""
    tensors, meta = load_checkpoint(path)
    model = rebuild_model(check_model_meta(meta, path), path)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{str(path)!r} does not match model {meta['model'].get('name')!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model, meta


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


def _eval_record(
    model: nn.Module, fit: FitResult | None, val: EvalResult, test: EvalResult
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "accuracy": test.accuracy,
        "errors": test.errors,
        "test_size": test.total,
        "val_accuracy": val.accuracy if val.total else None,
        "val_errors": val.errors if val.total else None,
        "params": count_params(model),
        "size_mb": round(model_size_mb(model), 4),
        "train_seconds": round(fit.train_seconds, 3) if fit else 0.0,
        "errors_per_class": test.errors_per_class,
    }
    if fit:
        rec["steps"] = fit.steps
        rec["samples_per_second"] = round(fit.samples_per_second, 1)
    return rec


def bias_head(model: nn.Module) -> nn.Module:
    """Return the model's `classifier` layer, or raise ModelError when it has none with a bias."""
    head = getattr(model, "classifier", None)
    if head is None or getattr(head, "bias", None) is None:
        raise ModelError(
            f"class_bias needs a model with a `classifier` layer that has a bias; {type(model).__name__} has none"
        )
    return head


def adjust_class_bias(model: nn.Module, class_bias: dict[int, float]) -> None:
    """Add the given amounts to the output bias of these classes (Hinton et al. 2015, section 3)."""
    head = bias_head(model)
    with torch.no_grad():
        for c, v in class_bias.items():
            if not 0 <= c < head.bias.shape[0]:
                raise ConfigError(
                    f"distill.class_bias: class {c} is out of range 0..{head.bias.shape[0] - 1}"
                )
            head.bias[c] += v


def print_table(summary: dict[str, Any], console: Console) -> None:
    """Print the accuracy/size table of a run."""
    table = Table(title=f"kdkit run: {summary['name']} ({summary['dataset']})")
    for col in ("model", "test acc", "errors", "val acc", "params", "size MB", "train s"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for key, rec in summary["models"].items():
        va = rec.get("val_accuracy")
        table.add_row(
            ROLE_LABELS.get(key, key),
            f"{rec['accuracy'] * 100:.2f}%",
            f"{rec['errors']}/{rec['test_size']}",
            "-" if va is None else f"{va * 100:.2f}%",
            f"{rec['params']:,}",
            f"{rec['size_mb']:.2f}",
            f"{rec['train_seconds']:.1f}",
        )
    console.print(table)


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


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the configured phases, write the run directory, and return the summary dict.

    With `resume`, phases that finished are loaded from their checkpoints and the interrupted one continues
    from its newest training state.
    """
    from kdkit.preflight import preflight  # builds on this module
    from kdkit.strategies import check_strategy, needs_trained_teacher, run_strategy

    console = console or make_console()
    check_strategy(cfg)
    loaded_ensemble = bool(cfg.teacher.ensemble) and all(m.checkpoint for m in cfg.teacher.ensemble or [])
    if (
        "distill" in cfg.phases
        and needs_trained_teacher(cfg)
        and "teacher" not in cfg.phases
        and not (cfg.teacher.checkpoint or loaded_ensemble)
    ):
        raise ConfigError(
            "phases: 'distill' needs a teacher: add 'teacher' to phases or set teacher.checkpoint"
        )
    # The data and every check that needs no training come first: a mistake fails in seconds, before the
    # run directory is made and before any phase trains.
    bundle = load_data(cfg.data, cfg.seed)
    preflight(cfg, bundle)
    dinfo = distributed.init(cfg.runtime.backend)
    main = dinfo.is_main
    if not main:
        console = Console(file=io.StringIO())  # one voice per job
    if resume:
        run_dir = Path(run_dir) if run_dir else None
        if run_dir is None:
            raise RunDirError("--resume needs --run-dir: the directory of the run to continue")
        check_resumable(run_dir, cfg)
    elif main:
        run_dir = prepare_run_dir(run_dir or default_run_dir(cfg), overwrite=overwrite)
    if main:
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    # Every rank uses rank 0's directory (a default name carries a timestamp that could differ per rank).
    run_dir = Path(str(distributed.broadcast_object(str(run_dir) if run_dir else "")) or default_run_dir(cfg))

    runtime = resolve_runtime(cfg.runtime.precision, cfg.runtime.threads, cfg.runtime.channels_last)
    logger = MetricsLogger(run_dir if main else None, tensorboard=cfg.runtime.tensorboard)
    engine = Engine(
        runtime,
        logger,
        console,
        log_every=cfg.runtime.log_every,
        progress=cfg.runtime.progress,
        compile=cfg.runtime.compile,
    )
    t_start = time.perf_counter()
    try:
        console.print(
            f"data {cfg.data.dataset}: train {len(bundle.train)}, val {len(bundle.val)}, test {len(bundle.test)}; "
            f"precision {runtime.precision}, {torch.get_num_threads()} threads, run dir {run_dir}",
            highlight=False,
        )
        runner = _PhaseRunner(cfg, bundle, engine, run_dir / "checkpoints", resume)
        teacher: nn.Module | None = None
        distilling = "distill" in cfg.phases
        if cfg.teacher.ensemble:
            teacher = ktransfer.build_ensemble(runner, seed=cfg.seed + 1)
        elif cfg.teacher.checkpoint:
            teacher = runner.load_teacher(cfg.teacher.checkpoint)
            if distilling:
                smoothing = ktransfer.checkpoint_label_smoothing(cfg.teacher.checkpoint)
                ktransfer.warn_label_smoothing("the teacher (teacher.checkpoint)", smoothing)
        elif "teacher" in cfg.phases:
            tcfg = cfg.teacher.train
            assert cfg.teacher.model is not None
            if distilling:
                ktransfer.warn_label_smoothing("the teacher (teacher.train)", tcfg.label_smoothing)
            teacher = runner.train(
                "teacher",
                cfg.teacher.model,
                "teacher.model",
                Objective.hard_labels(tcfg.label_smoothing),
                tcfg,
                bundle.train,
                seed=cfg.seed,
                record={"label_smoothing": tcfg.label_smoothing},
            )

        student_seed = cfg.seed + 1  # scratch and distilled students start from the same weights
        if "scratch" in cfg.phases:
            scfg = cfg.student.train
            runner.train(
                "student_scratch",
                cfg.student.model,
                "student.model",
                Objective.hard_labels(scfg.label_smoothing),
                scfg,
                bundle.train,
                seed=student_seed,
            )
        if "distill" in cfg.phases:
            run_strategy(runner, teacher, seed=student_seed)  # offline: kdkit.transfer.run_distill

        summary = {
            "name": cfg.name,
            "dataset": cfg.data.dataset,
            "seed": cfg.seed,
            "precision": runtime.precision,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "wall_seconds": round(time.perf_counter() - t_start, 2),
            "run_dir": str(run_dir),
            "models": runner.records,
        }
        if main:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
            print_table(summary, console)
            if cfg.compress is not None and "student_kd" in runner.records:
                from kdkit.compress import compress_run  # lazy: optional dependencies

                # End to end: prune, distill again, int8, ONNX and latency into run_dir/compress/.
                summary["compress"] = compress_run(run_dir, cfg.compress, console, overwrite=resume)
        distributed.barrier()
        return summary
    finally:
        logger.close()


class _PhaseRunner:
    """Train, evaluate and checkpoint the phases of one experiment; skip those a resumed run finished."""

    def __init__(
        self, cfg: ExperimentConfig, bundle: DataBundle, engine: Engine, ckpt_dir: Path, resume: bool
    ) -> None:
        self.cfg, self.bundle, self.engine, self.ckpt_dir, self.resume = cfg, bundle, engine, ckpt_dir, resume
        self.dims = (bundle.num_classes, bundle.in_channels, bundle.image_size)
        self.cl = engine.runtime.channels_last
        bs = cfg.runtime.eval_batch_size
        self.val_loader = make_loader(bundle.val, bundle, bs, train=False, channels_last=self.cl)
        self.test_loader = make_loader(bundle.test, bundle, bs, train=False, channels_last=self.cl)
        self.records: dict[str, dict[str, Any]] = {}

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

    def finish(
        self, role: str, model: nn.Module, spec: ModelSpec, fit: FitResult | None, **extra: Any
    ) -> None:
        """Evaluate a trained model on validation and test, record it, and save its checkpoint."""
        val = self.engine.evaluate(model, self.val_loader, self.bundle.num_classes)
        test = self.engine.evaluate(model, self.test_loader, self.bundle.num_classes)
        self.records[role] = {**_eval_record(model, fit, val, test), **extra}
        if distributed.info().is_main:
            save_model(
                self.ckpt_dir / role,
                model,
                spec,
                self.bundle,
                {"role": role, "dataset": self.cfg.data.dataset, "metrics": self.records[role]},
            )

    def load_teacher(self, path: str) -> nn.Module:
        """Return the teacher loaded from a kdkit checkpoint, checked against the data set."""
        return self.load_trained(path, "teacher", "teacher.checkpoint")

    def load_trained(self, path: str, role: str, field: str) -> nn.Module:
        """Return the model of `role` loaded from a kdkit checkpoint (config `field`), checked against the data."""
        model, meta = load_model(path)
        if meta["num_classes"] != self.bundle.num_classes:
            raise ModelError(
                f"{field} {path!r} predicts {meta['num_classes']} classes "
                f"but {self.cfg.data.dataset} has {self.bundle.num_classes}"
            )
        model = self.engine.prepare(model)
        self.finish(
            role,
            model,
            ModelSpec.model_validate(meta["model"]),
            None,
            loaded_from=path,
            **self.check_split(meta, field, path),
        )
        return model

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

    def train(
        self,
        role: str,
        spec: ModelSpec,
        field: str,
        objective: Objective | Callable[[nn.Module], Objective],
        tcfg: TrainConfig,
        transfer: kdata.ArrayDataset,
        *,
        seed: int,
        teacher: nn.Module | None = None,
        extras: dict[str, torch.Tensor] | None = None,
        draws: AugParams | None = None,
        draw_extras: dict[str, torch.Tensor] | None = None,
        before_finish: Callable[[nn.Module], dict[str, Any]] | None = None,
        record: dict[str, Any] | None = None,
    ) -> nn.Module:
        """Train one model (or load it when a resumed run finished it already) and record its results."""
        done = self.finished(role)
        if done is not None:
            return done
        seed_everything(seed)
        model = build_model(spec, *self.dims, field=field)
        if not isinstance(objective, Objective):
            objective = objective(model)  # built from the model's observed shapes (adapters)
        loader = make_loader(
            transfer,
            self.bundle,
            tcfg.batch_size,
            train=True,
            seed=seed,
            augment=Augment(**tcfg.augment.model_dump()),
            channels_last=self.cl,
            extras=extras,
            draws=draws,
            draw_extras=draw_extras,
        )
        fit = self.engine.fit(
            role,
            model,
            objective,
            loader,
            tcfg,
            teacher=teacher,
            val_loader=self.val_loader,
            checkpoint=self.policy(),
        )
        if any(True for _ in objective.state_dict()) and distributed.info().is_main:
            # Adapters and other trained parts of the objective are kept with the run, apart from the student.
            save_checkpoint(
                self.ckpt_dir / f"{role}-objective", objective.state_dict(), {"kind": "objective"}
            )
        extra = dict(record or {})
        if before_finish is not None:
            extra.update(before_finish(fit.model))
        self.finish(role, fit.model, spec, fit, **extra)
        return fit.model

    def distill(
        self,
        teacher: nn.Module,
        *,
        seed: int,
        role: str = "student_kd",
        spec: ModelSpec | None = None,
        field: str = "student.model",
        tcfg: TrainConfig | None = None,
        transfer: kdata.ArrayDataset | None = None,
        teacher_logits: torch.Tensor | None = None,
        record: dict[str, Any] | None = None,
    ) -> nn.Module:
        """Distill a model (default: the student) from a teacher: response objective, class omission, bias.

        Strategies distill other models the same way (born-again generations, a teaching assistant); the
        transfer-set strategies (kdkit.transfer) pass their own `transfer` set, where labels < 0 mark unlabeled
        images (left out of cross-entropy), and `teacher_logits` fixed per image (kept under the student's
        augmentation).
        """
        if (done := self.finished(role)) is not None:
            return done
        d, dcfg = self.cfg.distill, tcfg or self.cfg.distill_train()
        if transfer is None:
            transfer = (
                kdata.omit_classes(self.bundle.train, d.omit_classes) if d.omit_classes else self.bundle.train
            )
        unlabeled = bool((transfer.labels < 0).any())
        augment = Augment(**dcfg.augment.model_dump())
        frozen = ktransfer.freeze(self, teacher)
        needs_features = bool(d.terms) and reads_teacher_features(d.terms)
        mode = d.teacher_outputs
        varies = isinstance(frozen, EnsembleTeacher) and frozen.mode == "random"  # one teacher per batch
        if teacher_logits is not None:
            mode = "given"
            if needs_features:
                raise ConfigError(
                    "distill.terms read teacher features, but this strategy fixes the teacher's logits per image "
                    "(relabelled or unlabeled transfer sets); use logit losses only"
                )
        elif mode == "auto":
            mode = "online" if augment.enabled or needs_features or varies else "precompute"
        if mode in ("precompute", "cache") and needs_features:
            raise ConfigError(
                f"distill.teacher_outputs: {mode!r} keeps teacher logits only, but distill.terms read teacher "
                "features; use 'online'"
            )
        extras: dict[str, torch.Tensor] = {}
        draws: AugParams | None = None
        draw_extras: dict[str, torch.Tensor] = {}
        if teacher_logits is not None:
            extras["teacher.logits"] = teacher_logits
        elif mode == "precompute":
            if augment.enabled:
                raise ConfigError(
                    "distill.teacher_outputs: 'precompute' keeps one teacher output per image, but the transfer "
                    "set is augmented; use 'cache' (K fixed augmentation draws) or 'online'"
                )
            plain = make_loader(
                transfer, self.bundle, self.cfg.runtime.eval_batch_size, train=False, channels_last=self.cl
            )
            extras["teacher.logits"] = self.engine.predict_logits(frozen, plain)
        elif mode == "cache":
            logits, draws = self.teacher_cache(frozen, transfer, augment, seed)
            if draws is None:
                extras["teacher.logits"] = logits[:, 0]
            else:
                draw_extras["teacher.logits"] = logits

        def adjust_bias(model: nn.Module) -> dict[str, Any]:
            if not d.class_bias:
                return {}
            before = self.engine.evaluate(model, self.test_loader, self.bundle.num_classes)
            adjust_class_bias(model, {int(k): v for k, v in d.class_bias.items()})
            return {
                "before_class_bias": {
                    "accuracy": before.accuracy,
                    "errors": before.errors,
                    "errors_per_class": before.errors_per_class,
                },
                "class_bias": {str(k): v for k, v in d.class_bias.items()},
            }

        info: dict[str, Any] = {
            "transfer_size": len(transfer),
            "omitted_classes": list(d.omit_classes),
            "teacher_outputs": mode,
            **(record or {}),
        }
        objective: Objective | Callable[[nn.Module], Objective]
        if d.terms:
            plain = make_loader(transfer, self.bundle, 64, train=False, channels_last=self.cl)
            first = next(iter(plain))
            dev = self.engine.runtime.device

            def objective(student: nn.Module) -> Objective:
                obj = build_objective(
                    d.terms,
                    self.engine.prepare(student),
                    frozen.model,
                    first.x.to(dev),
                    first.y.clamp_min(0).to(dev),  # the dry run needs valid class ids
                    n_data=len(transfer),
                )
                # Terms with a stage of their own (factor transfer's paraphraser) train it first, teacher frozen.
                stages = run_pretraining(
                    obj,
                    self.engine,
                    frozen,
                    lambda: make_loader(
                        transfer,
                        self.bundle,
                        dcfg.batch_size,
                        train=True,
                        seed=seed,
                        augment=augment,
                        channels_last=self.cl,
                    ),
                    dcfg,
                    self.policy(),
                    role,
                    first.x.to(dev),
                )
                if stages:
                    info["pretraining"] = stages
                return ktransfer.mask_unlabeled(obj, "distill.terms") if unlabeled else obj
        else:
            objective = Objective.response(
                d.loss, d.alpha, d.beta, d.temperature, d.mix, dcfg.label_smoothing
            )
            if unlabeled:
                objective = ktransfer.mask_unlabeled(objective)
        return self.train(
            role,
            spec or self.cfg.student.model,
            field,
            objective,
            dcfg,
            transfer,
            seed=seed,
            teacher=frozen,
            extras=extras,
            draws=draws,
            draw_extras=draw_extras,
            before_finish=adjust_bias,
            record=info,
        )

    def teacher_cache(
        self, frozen: FrozenTeacher, transfer: kdata.ArrayDataset, augment: Augment, seed: int
    ) -> tuple[torch.Tensor, AugParams | None]:
        """Return cached teacher logits (N, K, C) for the transfer set and its draws, building them if needed."""
        c = self.cfg.distill.cache
        spec = CacheSpec(draws=c.draws if augment.enabled else 1, topk=c.topk, shard_size=c.shard_size)
        images, labels = torch.as_tensor(transfer.images), torch.as_tensor(transfer.labels)
        key = cache_key(
            frozen.model,
            images,
            labels,
            augment,
            spec,
            seed,
            self.engine.runtime.precision,
            (self.bundle.mean, self.bundle.std),
        )
        root = Path(c.dir).expanduser() if c.dir else default_cache_root()
        cache = TeacherCache(root / key, key, spec)
        draws = draws_for(len(images), augment, spec, seed)
        if not cache.complete():
            t0 = time.perf_counter()
            norm = make_loader(transfer, self.bundle, 1, train=False, channels_last=self.cl).normalize
            dev = self.engine.runtime.device

            def teacher_fn(x: torch.Tensor) -> torch.Tensor:
                with self.engine.runtime.autocast():
                    return frozen(x.to(dev))

            # Each rank builds its own shards; rank 0 seals the cache with the manifest. The shards are
            # the same bytes whoever computes them, so the cache equals a single-process build.
            dinfo = distributed.info()
            n_shards = -(-len(images) // spec.shard_size)
            cache.build(
                teacher_fn,
                images,
                draws,
                augment,
                norm,
                batch_size=self.cfg.runtime.eval_batch_size,
                shards=range(dinfo.rank, n_shards, dinfo.world_size),
                write_manifest=False,
            )
            distributed.barrier()
            if dinfo.is_main:
                cache.write_manifest(len(images), n_shards)
            distributed.barrier()
            mb = disk_bytes(len(images), spec.draws, self.bundle.num_classes, spec.topk) / 2**20
            self.engine.console.print(
                f"teacher cache built in {time.perf_counter() - t0:.1f}s: {len(images)} images x {spec.draws} "
                f"draws, {mb:.1f} MB at {cache.directory}",
                highlight=False,
                markup=False,
            )
        return cache.load(self.bundle.num_classes), draws


def default_cache_root() -> Path:
    """Return where teacher caches live by default: $KDKIT_CACHE/teacher-outputs or ~/.cache/kdkit/teacher-outputs."""
    base = os.environ.get("KDKIT_CACHE") or str(Path.home() / ".cache" / "kdkit")
    return Path(base).expanduser() / "teacher-outputs"


def build_teacher_cache(cfg: ExperimentConfig, console: Console | None = None) -> Path:
    """Build (or verify) the on-disk teacher cache of a config's distillation phase; return its directory."""
    if not cfg.teacher.checkpoint:
        raise ConfigError("kdkit cache needs teacher.checkpoint: the teacher whose outputs are cached")
    console = console or make_console()
    runtime = resolve_runtime(cfg.runtime.precision, cfg.runtime.threads, cfg.runtime.channels_last)
    engine = Engine(runtime, MetricsLogger(None), console, progress=False)
    bundle = load_data(cfg.data, cfg.seed)
    runner = _PhaseRunner(cfg, bundle, engine, Path(cfg.teacher.checkpoint).parent, resume=False)
    teacher, meta = load_model(cfg.teacher.checkpoint)
    if meta["num_classes"] != bundle.num_classes:
        raise ModelError(
            f"teacher.checkpoint predicts {meta['num_classes']} classes, {cfg.data.dataset} has "
            f"{bundle.num_classes}"
        )
    d, dcfg = cfg.distill, cfg.distill_train()
    transfer = kdata.omit_classes(bundle.train, d.omit_classes) if d.omit_classes else bundle.train
    frozen = FrozenTeacher(engine.prepare(teacher), dtype=runtime.amp_dtype)
    logits, _ = runner.teacher_cache(frozen, transfer, Augment(**dcfg.augment.model_dump()), cfg.seed + 1)
    c = cfg.distill.cache
    spec = CacheSpec(draws=c.draws if dcfg.augment.enabled else 1, topk=c.topk, shard_size=c.shard_size)
    console.print(
        f"teacher cache ready: {tuple(logits.shape)} logits "
        f"({disk_bytes(len(transfer), spec.draws, bundle.num_classes, spec.topk) / 2**20:.1f} MB)",
        highlight=False,
        markup=False,
    )
    return Path(c.dir).expanduser() if c.dir else default_cache_root()
