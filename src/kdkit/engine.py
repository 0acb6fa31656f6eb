"""The one training loop: teachers, scratch students and distilled students all train here.

Strategies and losses never re-implement it: they hand over a model, an objective, a loader and, where needed,
a teacher or a step provider (`kdkit.steps`), which turns each batch into the named tensors the objective
reads. What a batch is and what "correct" means is the task's business (`kdkit.tasks`).
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn

from kdkit import distributed, faults
from kdkit.batches import LABELS, BatchLoader
from kdkit.compile_fallback import CompiledOrEager
from kdkit.config import TrainConfig
from kdkit.console import make_console
from kdkit.errors import KdkitError
from kdkit.metrics import MetricsLogger
from kdkit.models import backbone_parameters, constraints
from kdkit.objective import Objective
from kdkit.optim import WeightEma, build_optimizer, build_scheduler, separate_backbone
from kdkit.progress import PhaseProgress, epoch_line
from kdkit.resume import CheckpointPolicy
from kdkit.runtime import Runtime
from kdkit.signals import STOP
from kdkit.steps import STUDENT_LOGITS, StepPosition, StepProvider, StepRuntime, check_provided, default_steps
from kdkit.tasks import IMAGE_CLASSIFICATION, ClassificationTask, EvalResult, Task
from kdkit.train_state import EpochSums, NonFiniteGuard, NonFiniteLossError, Trained, TrainState

__all__ = ["Engine", "EvalResult", "FitResult", "NonFiniteLossError", "RunInterrupted"]


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
class _Phase:
    """One training phase being run: what it trains, with what, and where it is."""

    name: str
    cfg: TrainConfig
    trained: Trained
    params: list[nn.Parameter]
    constrain_fns: list[Callable[[], Any]]  # max-norm and the like, applied after every step
    student: CompiledOrEager  # the (DDP/compiled) student that steps call
    steps: StepProvider
    task: Task
    loader: BatchLoader
    shipped: nn.Module  # the model validated and returned: the student, or its weight average
    checkpoint: CheckpointPolicy | None
    state: TrainState
    guard: NonFiniteGuard
    progress: PhaseProgress
    started: float = 0.0
    window: tuple[float, int] = (0.0, 0)  # start time and samples of the throughput window

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def elapsed(self) -> float:
        return self.state.seconds_before + time.perf_counter() - self.started


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

    def evaluate(
        self,
        model: nn.Module,
        loader: BatchLoader,
        num_classes: int | None = None,
        task: Task = IMAGE_CLASSIFICATION,
    ) -> EvalResult:
        """Return the accuracy of a model over a loader, computed in fp32 (the precision it ships in).

        Under data parallelism each rank evaluates its shard and the counts are summed: the result is exact.
        """
        return task.evaluate(model, loader, num_classes, self.runtime.device)

    @torch.no_grad()
    def predict_logits(
        self, model: nn.Module, loader: BatchLoader, task: ClassificationTask = IMAGE_CLASSIFICATION
    ) -> Tensor:
        """Return the model's logits for every sample of an unshuffled, unaugmented loader, in order (CPU fp32)."""
        if not getattr(loader, "ordered", True):
            raise ValueError("predict_logits needs a loader without shuffling or augmentation")
        was_training = model.training
        model.eval()
        outs = []
        with torch.inference_mode(), self.runtime.autocast():
            for batch in loader:
                outs.append(task.logits(model, batch, self.runtime.device).float().cpu())
        model.train(was_training)
        return torch.cat(outs) if outs else torch.zeros(0)

    def say(self, text: str) -> None:
        """Print one plain line on the run's console."""
        self.console.print(text, highlight=False, markup=False)

    def fit(
        self,
        phase: str,
        model: nn.Module,
        objective: Objective,
        loader: BatchLoader,
        cfg: TrainConfig,
        *,
        teacher: nn.Module | None = None,
        steps: StepProvider | None = None,
        task: Task | None = None,
        val_loader: BatchLoader | None = None,
        checkpoint: CheckpointPolicy | None = None,
    ) -> FitResult:
        """Train `model` to minimise `objective` over `loader` for cfg.epochs; return the trained model.

        `teacher` (a frozen model or ensemble) or `steps` (an explicit provider, e.g. a cohort's) says where
        the objective's tensors come from; `task` (default: image classification) what a batch holds. With a
        checkpoint policy the training state is written every `every_steps` steps and at each epoch end;
        with `resume` the phase continues from its newest state, bit for bit as if never stopped.
        """
        if steps is not None and teacher is not None:
            raise KdkitError(f"phase {phase!r}: give either teacher= or steps=, not both")
        provider = steps if steps is not None else default_steps(model, teacher, loader.batch_keys())
        check_provided(phase, objective, provider.provides())  # before any step, and before any weight moves
        run = self._open(
            phase, model, objective, loader, cfg, provider, task or IMAGE_CLASSIFICATION, checkpoint
        )
        val_result: EvalResult | None = None
        try:
            for epoch in range(run.state.epoch, cfg.epochs):
                self._train_epoch(run, epoch)
                val_result = self._end_epoch(run, epoch, val_loader) or val_result
        finally:
            run.progress.stop()
            provider.close()
        ema = run.trained.ema
        if ema is not None:
            ema.copy_to(run.trained.model)  # the phase's result is the average
        model = run.trained.model
        if val_result is None and val_loader is not None and len(val_loader) and run.state.history:
            val_result = run.task.evaluate(model, val_loader, None, self.runtime.device)
        return FitResult(
            model=model,
            train_seconds=run.elapsed(),
            steps=run.state.step,
            samples=run.state.samples,
            history=run.state.history,
            val=val_result,
        )

    def _open(
        self,
        phase: str,
        model: nn.Module,
        objective: Objective,
        loader: BatchLoader,
        cfg: TrainConfig,
        provider: StepProvider,
        task: Task,
        checkpoint: CheckpointPolicy | None,
    ) -> _Phase:
        """Set a phase up: devices, optimizer, weight average, DDP, compilation, resume, progress, provider."""
        dev = self.runtime.device
        model = self.prepare(model)
        objective = objective.to(dev)
        params = list(model.parameters()) + list(objective.parameters())
        opt = build_optimizer(params, cfg, backbone_parameters(model) if separate_backbone(cfg) else ())
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
        student = CompiledOrEager(train_model, self.compile, lambda msg: self.say(f"[{phase}] {msg}"))
        sched = build_scheduler(opt, cfg, len(loader))
        trained = Trained(model, objective, opt, sched, ema)
        state = TrainState.load(checkpoint, phase, trained, dev) if checkpoint and checkpoint.resume else None
        if state is not None:
            self.logger.log(phase, state.step, event="resumed", epoch=state.epoch + 1, batch=state.batch)
            self.say(f"[{phase}] resumed at epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")
        state = state or TrainState()
        bar = PhaseProgress(self.console, phase, cfg.epochs * len(loader), state.step, self.progress)
        provider.open(model, objective, StepRuntime(dev, task, self.prepare, phase))
        return _Phase(
            name=phase,
            cfg=cfg,
            trained=trained,
            params=params,
            constrain_fns=constraints(model),
            student=student,
            steps=provider,
            task=task,
            loader=loader,
            shipped=shipped,
            checkpoint=checkpoint,
            state=state,
            guard=NonFiniteGuard(phase),
            progress=bar,
            started=time.perf_counter(),
        )

    def _train_epoch(self, run: _Phase, epoch: int) -> None:
        """Run the steps of one epoch (from the resumed batch on), logging, checkpointing, stopping on signal."""
        run.trained.model.train()
        run.trained.objective.train()
        state = run.state
        start_batch = state.batch if epoch == state.epoch else 0
        run.loader.set_epoch(epoch, start_batch)
        if state.sums is None or start_batch == 0:
            state.sums = EpochSums.zeros(self.runtime.device)
        run.window = (time.perf_counter(), 0)
        every = run.checkpoint.every_steps if run.checkpoint else None
        for i, batch in enumerate(run.loader):
            position = StepPosition(epoch, start_batch + i)
            if not self._step(run, batch, position):
                continue  # a skipped non-finite step is neither logged nor checkpointed
            faults.hit("step")
            if state.step % self.log_every == 0 or state.step == run.cfg.epochs * run.steps_per_epoch:
                self._log_step(run, epoch)
            stop = STOP.requested
            if distributed.info().enabled:
                # Every rank must stop at the same step, whichever rank got the signal first.
                stop = bool(distributed.all_reduce_sum(torch.tensor(int(stop))) > 0)
            if run.checkpoint and (stop or (every and state.step % every == 0)):
                self._save(run, epoch, position.batch + 1, state.sums)
            if stop:
                raise RunInterrupted(
                    f"phase {run.name!r} stopped by signal {STOP.signum or 15} after step {state.step}; "
                    + ("its training state is saved" if run.checkpoint else "nothing was saved"),
                    STOP.signum or 15,
                )

    def _step(self, run: _Phase, batch: Mapping[str, Tensor], position: StepPosition) -> bool:
        """Run one optimizer step on a batch; return False when it was skipped (non-finite, on_nonfinite "skip")."""
        cfg, trained, state, sums = run.cfg, run.trained, run.state, run.state.sums
        assert sums is not None
        objective, opt, sched = trained.objective, trained.optimizer, trained.scheduler
        objective.epoch = position.epoch + position.batch / max(run.steps_per_epoch, 1)
        with self.runtime.autocast():
            tensors = run.steps.tensors(run.student, batch, position)
            loss, parts = objective(tensors)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if distributed.info().enabled:
            distributed.average_gradients(list(objective.parameters()))
        if cfg.on_nonfinite == "skip":
            # Skipping needs a host sync per step to decide; the default (stop) needs none.
            norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip or float("inf"))
            if not bool(torch.isfinite(loss) & torch.isfinite(norm)):
                opt.zero_grad(set_to_none=True)
                sched.step()
                state.step += 1
                sums.skipped += 1
                return False
        elif cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
        opt.step()
        sched.step()
        for constrain in run.constrain_fns:
            constrain()
        if trained.ema is not None:
            trained.ema.update()
        state.step += 1
        if cfg.on_nonfinite == "stop":
            run.guard.track(parts, state.step)
        labels = tensors[LABELS]
        correct, counted = run.task.accuracy_counts(tensors[STUDENT_LOGITS].detach(), labels)
        n = len(labels)
        sums.add(loss, n, correct, counted, parts)
        run.window = (run.window[0], run.window[1] + n)
        return True

    def _log_step(self, run: _Phase, epoch: int) -> None:
        """Log the running loss, accuracy, learning rate and throughput; show them on the progress bar."""
        assert run.state.sums is not None
        run.guard.check()
        now = time.perf_counter()
        rate = run.window[1] / max(now - run.window[0], 1e-9)
        run.window = (now, 0)
        avg, acc = run.state.sums.running()
        lr = run.trained.optimizer.param_groups[0]["lr"]
        self.logger.log(
            run.name,
            run.state.step,
            epoch=epoch + 1,  # 1-based, as in the epoch records and on the console
            loss=avg,
            train_accuracy=acc,
            lr=lr,
            samples_per_second=rate,
        )
        run.progress.update(run.state.step, avg, acc, rate)

    def _end_epoch(self, run: _Phase, epoch: int, val_loader: BatchLoader | None) -> EvalResult | None:
        """Close an epoch: sum it over ranks, validate, log and print its record, checkpoint; return val."""
        state, sums = run.state, run.state.sums
        assert sums is not None
        if distributed.info().enabled:
            sums.reduce_across_ranks()  # epoch metrics over the whole global batch stream: one sync per epoch
        state.samples += sums.seen
        rec: dict[str, Any] = {"epoch": epoch + 1, **sums.record()}
        if run.cfg.on_nonfinite == "skip":
            rec["skipped_batches"] = sums.skipped
        run.guard.check()
        val_result = None
        if val_loader is not None and len(val_loader):
            val_result = self._validate(run, val_loader, rec)
        rec["elapsed_seconds"] = run.elapsed()
        state.history.append(rec)
        self.logger.log(run.name, state.step, **rec)
        state.sums = None
        if run.checkpoint:
            self._save(run, epoch + 1, 0, None)
        self.say(epoch_line(run.name, run.cfg.epochs, rec))
        return val_result

    def _validate(self, run: _Phase, val_loader: BatchLoader, rec: dict[str, Any]) -> EvalResult:
        """Validate the shipped model (and the provider's extra models) into `rec`; return its result."""
        ema, dev = run.trained.ema, self.runtime.device
        if ema is not None:
            ema.copy_to(run.shipped)
        result = run.task.evaluate(run.shipped, val_loader, None, dev)
        rec["val_accuracy"] = result.accuracy
        rec["val_loss"] = result.loss
        for name, other in run.steps.eval_models(run.shipped).items():
            acc = result if other is run.shipped else run.task.evaluate(other, val_loader, None, dev)
            rec[f"val_accuracy.{name}"] = acc.accuracy
        return result

    def _save(self, run: _Phase, epoch: int, batch: int, sums: EpochSums | None) -> None:
        """Write the phase's training state (rank 0), never for a diverged model."""
        assert run.checkpoint is not None
        run.guard.check()
        if distributed.info().is_main:  # rank 0 writes; every rank resumes from its files
            run.state.save(run.checkpoint, run.name, run.trained, epoch, batch, sums, run.elapsed())
