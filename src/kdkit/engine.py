"""The one training loop: teachers, scratch students and distilled students all train here.

Strategies and losses never re-implement it: they hand over a model, an objective, a loader and,
where needed, a teacher.
"""

from __future__ import annotations

import copy
import io
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from kdkit import distributed, faults
from kdkit.checkpoint import prefixed, unprefixed
from kdkit.cohort import Cohort
from kdkit.config import TrainConfig
from kdkit.console import make_console
from kdkit.data.loader import InMemoryLoader
from kdkit.errors import KdkitError
from kdkit.metrics import MetricsLogger
from kdkit.models import constraints
from kdkit.objective import Objective
from kdkit.optim import WeightEma, build_optimizer, build_scheduler
from kdkit.resume import (
    CheckpointPolicy,
    load_latest_state,
    load_optimizer_state,
    optimizer_state,
    save_state,
    set_rng_state,
)
from kdkit.runtime import Runtime
from kdkit.signals import STOP
from kdkit.taps import Tap
from kdkit.teacher import FrozenTeacher


class NonFiniteLossError(KdkitError):
    """A loss term became NaN or infinite during training."""


@dataclass
class EvalResult:
    """Accuracy of a model on one data set, with per-class counts (exact across ranks)."""

    correct: int
    total: int
    loss: float
    class_counts: Tensor  # samples per true class
    class_errors: Tensor  # misclassified samples per true class

    @property
    def accuracy(self) -> float:
        """Return correct / total (0 for an empty set)."""
        return self.correct / self.total if self.total else 0.0

    @property
    def errors(self) -> int:
        """Return the number of misclassified samples."""
        return self.total - self.correct

    def errors_on(self, label: int) -> int:
        """Return the number of misclassified samples whose true label is `label`."""
        return int(self.class_errors[label]) if label < len(self.class_errors) else 0

    @property
    def errors_per_class(self) -> list[int]:
        """Return the misclassified count of every class."""
        return [int(v) for v in self.class_errors]


@dataclass
class FitResult:
    """What a training phase produced."""

    model: nn.Module
    train_seconds: float
    steps: int
    samples: int
    history: list[dict[str, Any]] = field(default_factory=list)
    val: EvalResult | None = None

    @property
    def samples_per_second(self) -> float:
        """Return the training throughput of the phase."""
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0


class RunInterrupted(KdkitError):
    """A stop signal arrived; the phase finished its step and wrote a checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class _EpochSums:
    """Running sums of one epoch, kept on the device (no host sync per step)."""

    loss: Tensor
    correct: Tensor
    parts: dict[str, Tensor]
    seen: int = 0
    skipped: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> _EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device), {})

    def tensors(self) -> dict[str, Tensor]:
        return {
            "sums.loss": self.loss,
            "sums.correct": self.correct,
            **{f"sums.part.{k}": v for k, v in self.parts.items()},
        }

    @classmethod
    def restore(cls, tensors: dict[str, Tensor], meta: dict[str, Any], device: torch.device) -> _EpochSums:
        parts = {
            k[len("sums.part.") :]: v.to(device) for k, v in tensors.items() if k.startswith("sums.part.")
        }
        return cls(
            tensors["sums.loss"].to(device),
            tensors["sums.correct"].to(device),
            parts,
            meta["seen"],
            meta.get("skipped", 0),
        )


class Engine:
    """Run training phases and evaluations with one set of runtime settings."""

    def __init__(
        self,
        runtime: Runtime,
        logger: MetricsLogger | None = None,
        console: Console | None = None,
        log_every: int = 50,
        progress: bool = True,
        compile: bool = False,
    ) -> None:
        self.runtime = runtime
        self.compile = compile
        self.logger = logger or MetricsLogger(None)
        self.console = console or make_console()
        if not distributed.info().is_main:
            # One voice per job: other ranks compute but do not print.
            self.console = Console(file=io.StringIO())
        self.log_every = log_every
        self.progress = progress and self.console.is_terminal

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move a model to the run's device and memory format."""
        model = model.to(self.runtime.device)
        if self.runtime.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model = model.to(memory_format=torch.channels_last)
        return model

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: InMemoryLoader, num_classes: int | None = None
    ) -> EvalResult:
        """Return the accuracy of a model over a loader, computed in fp32 (the precision it ships in).

        Under data parallelism each rank evaluates its shard and the counts are summed: the result is exact.
        """
        was_training = model.training
        model.eval()
        dev = self.runtime.device
        if num_classes is None:
            num_classes = int(loader.labels.max()) + 1 if len(loader.labels) else 1
        c = num_classes
        counts = torch.zeros(3 + 2 * c, dtype=torch.float64, device=dev)  # correct, total, loss, per class x2
        dist = distributed.info()
        for batch in loader.shard(dist.rank, dist.world_size):
            x, y = batch.x.to(dev, non_blocking=True), batch.y.to(dev, non_blocking=True)
            logits = model(x).float()
            wrong = (logits.argmax(dim=1) != y).double()
            counts[0] += (1 - wrong).sum()
            counts[1] += len(y)
            counts[2] += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
            counts[3 : 3 + c].index_add_(0, y, torch.ones_like(wrong))
            counts[3 + c :].index_add_(0, y, wrong)
        distributed.all_reduce_sum(counts)
        model.train(was_training)
        total = int(counts[1])
        return EvalResult(
            correct=int(counts[0]),
            total=total,
            loss=float(counts[2]) / max(total, 1),
            class_counts=counts[3 : 3 + c].long().cpu(),
            class_errors=counts[3 + c :].long().cpu(),
        )

    @torch.no_grad()
    def predict_logits(self, model: nn.Module, loader: InMemoryLoader) -> Tensor:
        """Return the model's logits for every sample of an unshuffled, unaugmented loader, in order (CPU fp32)."""
        if loader.shuffle or loader.augment.enabled:
            raise ValueError("predict_logits needs a loader without shuffling or augmentation")
        was_training = model.training
        model.eval()
        outs = []
        with torch.inference_mode(), self.runtime.autocast():
            for batch in loader:
                outs.append(model(batch.x.to(self.runtime.device, non_blocking=True)).float().cpu())
        model.train(was_training)
        return torch.cat(outs) if outs else torch.zeros(0)

    @staticmethod
    def _track_non_finite(first_bad: dict[str, Tensor], parts: dict[str, Tensor], step: int) -> None:
        # Remember, on the device, the first step at which each term went non-finite: no host sync per step.
        for k, v in parts.items():
            fb = first_bad.get(k)
            if fb is None:
                fb = first_bad[k] = torch.full((), -1, dtype=torch.long, device=v.device)
            first_bad[k] = torch.where((fb < 0) & ~torch.isfinite(v), step, fb)

    @staticmethod
    def _check_finite(phase: str, first_bad: dict[str, Tensor]) -> None:
        steps = {k: int(v) for k, v in first_bad.items()}
        bad = {k: s for k, s in steps.items() if s >= 0}
        if bad:
            first = min(bad.values())
            terms = sorted(k for k, s in bad.items() if s == first)
            raise NonFiniteLossError(
                f"phase {phase!r}: loss term(s) {terms} became non-finite at step {first}; "
                "lower the learning rate, set train.grad_clip, or check the inputs"
            )

    def fit(
        self,
        phase: str,
        model: nn.Module,
        objective: Objective,
        loader: InMemoryLoader,
        cfg: TrainConfig,
        *,
        teacher: nn.Module | None = None,
        val_loader: InMemoryLoader | None = None,
        checkpoint: CheckpointPolicy | None = None,
    ) -> FitResult:
        """Train `model` to minimise `objective` over `loader` for cfg.epochs; return the trained model.

        With a checkpoint policy the training state is written every `every_steps` steps and at each epoch
        end; with `resume` the phase continues from its newest state, bit for bit as if never stopped.
        """
        provided = model.provides() if isinstance(model, Cohort) else set()
        if (
            objective.needs_teacher
            and teacher is None
            and "teacher.logits" not in loader.extras
            and "teacher.logits" not in provided
        ):
            raise KdkitError(f"phase {phase!r}: the objective reads teacher outputs but no teacher was given")
        dev = self.runtime.device
        model = self.prepare(model)
        objective = objective.to(dev)
        if teacher is not None:
            teacher = self.prepare(teacher)
        params = list(model.parameters()) + list(objective.parameters())
        opt = build_optimizer(params, cfg)
        constrain_fns = constraints(model)  # max-norm and the like, applied after every step
        # With an average of the weights, the phase validates and returns the average: `shipped` holds it.
        ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        shipped = copy.deepcopy(model) if ema is not None else model
        dinfo = distributed.info()
        # The student trains inside DDP (gradients averaged across ranks); teachers never do, they are frozen.
        # Objective adapters live outside the student: their gradients are averaged explicitly.
        train_model: nn.Module = model
        if dinfo.enabled:
            train_model = nn.parallel.DistributedDataParallel(model)
            loader = loader.shard(dinfo.rank, dinfo.world_size)
        eager = train_model
        if self.compile:
            train_model = torch.compile(train_model)
        compiled_ok = not self.compile
        steps_per_epoch = len(loader)
        sched = build_scheduler(opt, cfg, steps_per_epoch)
        total_steps = cfg.epochs * steps_per_epoch
        history: list[dict[str, Any]] = []
        epoch0 = batch0 = step = samples = 0
        seconds_before = 0.0
        sums: _EpochSums | None = None
        val_result: EvalResult | None = None

        loaded = load_latest_state(checkpoint, phase) if checkpoint and checkpoint.resume else None
        if loaded is not None:
            tensors, meta = loaded
            model.load_state_dict(unprefixed("model.", tensors))
            objective.load_state_dict(unprefixed("objective.", tensors))
            load_optimizer_state(opt, unprefixed("optimizer.", tensors), meta["optimizer"])
            if ema is not None:
                if "ema" not in meta:
                    raise KdkitError(
                        f"phase {phase!r}: the saved state has no weight average but train.ema_decay is set"
                    )
                ema.load(unprefixed("ema.", tensors), meta["ema"])
            sched.load_state_dict(meta["scheduler"])
            epoch0, batch0, step, samples = meta["epoch"], meta["batch"], meta["step"], meta["samples"]
            history, seconds_before = meta["history"], meta["train_seconds"]
            if batch0:
                sums = _EpochSums.restore(tensors, meta, dev)
            set_rng_state(unprefixed("rng.", tensors), meta["rng"])
            self.logger.log(phase, step, event="resumed", epoch=epoch0, batch=batch0)
            self.console.print(
                f"[{phase}] resumed at epoch {epoch0 + 1}, batch {batch0}, step {step}",
                highlight=False,
                markup=False,
            )

        def save(epoch: int, batch: int, current: _EpochSums | None) -> None:
            assert checkpoint is not None
            self._check_finite(phase, first_bad)  # never checkpoint a diverged model
            if not dinfo.is_main:
                return  # rank 0 writes; every rank resumes from its files
            opt_t, opt_m = optimizer_state(opt)
            tensors = {
                **prefixed("model.", model.state_dict()),
                **prefixed("objective.", objective.state_dict()),
                **prefixed("optimizer.", opt_t),
                **(current.tensors() if current else {}),
            }
            if ema is not None:
                ema_t, ema_m = ema.state()
                tensors.update(prefixed("ema.", ema_t))
            meta = {
                "epoch": epoch,
                "batch": batch,
                "samples": samples,
                "seen": current.seen if current else 0,
                "skipped": current.skipped if current else 0,
                "history": history,
                "optimizer": opt_m,
                "scheduler": sched.state_dict(),
                "train_seconds": seconds_before + time.perf_counter() - t0,
                **({"ema": ema_m} if ema is not None else {}),
            }
            save_state(checkpoint, phase, step, tensors, meta)

        bar = (
            Progress(
                TextColumn(f"[bold]{phase}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            if self.progress
            else None
        )
        task = bar.add_task(phase, total=total_steps, completed=step, info="") if bar else None
        if bar:
            bar.start()
        every = checkpoint.every_steps if checkpoint else None
        # Intermediate outputs the objective reads, by module path (hooks; forward is never rewritten).
        s_tap = Tap(model, objective.student_paths(), what="student") if objective.student_paths() else None
        t_tap = None
        if objective.teacher_paths():
            if teacher is None:
                raise KdkitError(
                    f"phase {phase!r}: the objective reads teacher features but no teacher was given"
                )
            inner = teacher.model if isinstance(teacher, FrozenTeacher) else teacher
            t_tap = Tap(inner, objective.teacher_paths(), what="teacher")
        first_bad: dict[str, Tensor] = {}
        # Teachers that vary by step (an ensemble drawing one teacher per batch) are told the step's position.
        set_position = getattr(teacher, "set_position", None)
        t0 = time.perf_counter()
        try:
            for epoch in range(epoch0, cfg.epochs):
                model.train()
                objective.train()
                start_batch = batch0 if epoch == epoch0 else 0
                loader.set_epoch(epoch, start_batch)
                if sums is None or start_batch == 0:
                    sums = _EpochSums.zeros(dev)
                window_t, window_n = time.perf_counter(), 0
                for i, batch in enumerate(loader):
                    x = batch.x.to(dev, non_blocking=True)
                    y = batch.y.to(dev, non_blocking=True)
                    objective.epoch = epoch + (start_batch + i) / max(steps_per_epoch, 1)
                    with self.runtime.autocast():
                        if compiled_ok:
                            logits = train_model(x)
                        else:
                            # The first call compiles; if the compiler fails here, train eagerly instead.
                            try:
                                logits = train_model(x)
                            except Exception as exc:  # noqa: BLE001 - any compiler failure means "fall back"
                                self.console.print(
                                    f"[{phase}] torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); "
                                    "continuing without compilation",
                                    highlight=False,
                                    markup=False,
                                )
                                train_model = eager
                                logits = train_model(x)
                            compiled_ok = True
                        tensors = {"student.logits": logits, "labels": y, "index": batch.index.to(dev)}
                        if isinstance(model, Cohort):
                            tensors.update(model.step_tensors())  # every member's logits (joint, mutual)
                        if s_tap is not None:
                            tensors.update({f"student:{k}": v for k, v in s_tap.outputs.items()})
                        if "teacher.logits" in batch.extras:
                            tensors["teacher.logits"] = batch.extras["teacher.logits"].to(
                                dev, non_blocking=True
                            )
                        elif teacher is not None:
                            if set_position is not None:
                                set_position(epoch, start_batch + i)
                            tensors["teacher.logits"] = teacher(x)
                            if t_tap is not None:
                                # Outputs made under inference mode must be cloned to enter the student's graph.
                                tensors.update({f"teacher:{k}": v.clone() for k, v in t_tap.outputs.items()})
                        loss, parts = objective(tensors)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if dinfo.enabled:
                        distributed.average_gradients(list(objective.parameters()))
                    if cfg.on_nonfinite == "skip":
                        # Skipping needs a host sync per step to decide; the default (stop) needs none.
                        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
                        if not bool(torch.isfinite(loss) & torch.isfinite(norm)):
                            opt.zero_grad(set_to_none=True)
                            sched.step()
                            step += 1
                            sums.skipped += 1
                            continue
                    elif cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    sched.step()
                    for constrain in constrain_fns:
                        constrain()
                    if ema is not None:
                        ema.update()
                    step += 1
                    if cfg.on_nonfinite == "stop":
                        self._track_non_finite(first_bad, parts, step)
                    n = len(y)
                    sums.seen += n
                    window_n += n
                    sums.loss += loss.detach() * n
                    sums.correct += (logits.detach().argmax(dim=1) == y).sum()
                    for k, v in parts.items():
                        sums.parts[k] = sums.parts.get(k, 0) + v * n
                    faults.hit("step")
                    if step % self.log_every == 0 or step == total_steps:
                        self._check_finite(phase, first_bad)
                        now = time.perf_counter()
                        rate = window_n / max(now - window_t, 1e-9)
                        window_t, window_n = now, 0
                        avg = float(sums.loss) / max(sums.seen, 1)
                        acc = float(sums.correct) / max(sums.seen, 1)
                        self.logger.log(
                            phase,
                            step,
                            epoch=epoch,
                            loss=avg,
                            train_accuracy=acc,
                            lr=opt.param_groups[0]["lr"],
                            samples_per_second=rate,
                        )
                        if bar:
                            bar.update(
                                task,
                                completed=step,
                                info=f"loss {avg:.4f}  acc {acc:.4f}  {rate:,.0f} samples/s",
                            )
                    stop = STOP.requested
                    if dinfo.enabled:
                        # Every rank must stop at the same step, whichever rank got the signal first.
                        stop = bool(distributed.all_reduce_sum(torch.tensor(int(stop))) > 0)
                    if checkpoint and (stop or (every and step % every == 0)):
                        save(epoch, start_batch + i + 1, sums)
                    if stop:
                        raise RunInterrupted(
                            f"phase {phase!r} stopped by signal {STOP.signum or 15} after step {step}; "
                            + ("its training state is saved" if checkpoint else "nothing was saved"),
                            STOP.signum or 15,
                        )
                if dinfo.enabled:
                    # Epoch metrics over the whole global batch stream: one sync per epoch.
                    keys = sorted(sums.parts)
                    agg = torch.stack(
                        [
                            sums.loss.double(),
                            sums.correct.double(),
                            torch.tensor(float(sums.seen), dtype=torch.float64),
                        ]
                        + [torch.as_tensor(sums.parts[k]).double() for k in keys]
                    )
                    distributed.all_reduce_sum(agg)
                    sums.loss, sums.correct, sums.seen = agg[0], agg[1], int(agg[2])
                    sums.parts = {k: agg[3 + j] for j, k in enumerate(keys)}
                samples += sums.seen
                seen = max(sums.seen, 1)
                rec: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "loss": float(sums.loss) / seen,
                    "train_accuracy": float(sums.correct) / seen,
                    **{f"loss.{k}": float(v) / seen for k, v in sums.parts.items()},
                }
                if cfg.on_nonfinite == "skip":
                    rec["skipped_batches"] = sums.skipped
                self._check_finite(phase, first_bad)
                if val_loader is not None and len(val_loader.images):
                    if ema is not None:
                        ema.copy_to(shipped)
                    val_result = self.evaluate(shipped, val_loader)
                    rec["val_accuracy"] = val_result.accuracy
                    rec["val_loss"] = val_result.loss
                    if isinstance(shipped, Cohort):  # every trained member, not only the primary
                        for name, member in shipped.members.items():
                            acc = val_result if name == shipped.primary else self.evaluate(member, val_loader)
                            rec[f"val_accuracy.{name}"] = acc.accuracy
                rec["elapsed_seconds"] = seconds_before + time.perf_counter() - t0
                history.append(rec)
                self.logger.log(phase, step, **rec)
                sums = None
                if checkpoint:
                    save(epoch + 1, 0, None)
                val_txt = f"  val acc {rec['val_accuracy']:.4f}" if "val_accuracy" in rec else ""
                val_txt += "".join(
                    f"  {k[len('val_accuracy.') :]} {v:.4f}"
                    for k, v in rec.items()
                    if k.startswith("val_accuracy.")
                )
                self.console.print(
                    f"[{phase}] epoch {epoch + 1}/{cfg.epochs}  loss {rec['loss']:.4f}  "
                    f"train acc {rec['train_accuracy']:.4f}{val_txt}  ({rec['elapsed_seconds']:.1f}s)",
                    highlight=False,
                    markup=False,
                )
        finally:
            if bar:
                bar.stop()
            for tap in (s_tap, t_tap):
                if tap is not None:
                    tap.remove()
        if ema is not None:
            ema.copy_to(model)  # the phase's result is the average
        if val_result is None and val_loader is not None and len(val_loader.images) and history:
            val_result = self.evaluate(model, val_loader)
        return FitResult(
            model=model,
            train_seconds=seconds_before + time.perf_counter() - t0,
            steps=step,
            samples=samples,
            history=history,
            val=val_result,
        )
