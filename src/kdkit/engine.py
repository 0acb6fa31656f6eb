"""The one training loop: teachers, scratch students and distilled students all train here.

Strategies and losses never re-implement it: they hand over a model, an objective, a loader and,
where needed, a teacher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from kdkit.checkpoint import prefixed, save_checkpoint
from kdkit.config import TrainConfig
from kdkit.console import make_console
from kdkit.data.loader import InMemoryLoader
from kdkit.errors import KdkitError
from kdkit.losses.objective import Objective
from kdkit.metrics import MetricsLogger
from kdkit.models import apply_constraints
from kdkit.optim import build_optimizer, build_scheduler
from kdkit.runtime import Runtime


class NonFiniteLossError(KdkitError):
    """A loss term became NaN or infinite during training."""


@dataclass
class EvalResult:
    """Accuracy of a model on one data set, with its predictions for later analysis."""

    correct: int
    total: int
    loss: float
    predictions: Tensor
    labels: Tensor

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
        mask = self.labels == label
        return int((self.predictions[mask] != label).sum())


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


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able values."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{idx}.{name}"] = v
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


class Engine:
    """Run training phases and evaluations with one set of runtime settings."""

    def __init__(
        self,
        runtime: Runtime,
        logger: MetricsLogger | None = None,
        console: Console | None = None,
        log_every: int = 50,
        progress: bool = True,
    ) -> None:
        self.runtime = runtime
        self.logger = logger or MetricsLogger(None)
        self.console = console or make_console()
        self.log_every = log_every
        self.progress = progress and self.console.is_terminal

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move a model to the run's device and memory format."""
        model = model.to(self.runtime.device)
        if self.runtime.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model = model.to(memory_format=torch.channels_last)
        return model

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: InMemoryLoader) -> EvalResult:
        """Return the accuracy of a model over a loader, computed in fp32 (the precision it ships in)."""
        was_training = model.training
        model.eval()
        dev = self.runtime.device
        correct = torch.zeros((), dtype=torch.long, device=dev)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        preds, labels = [], []
        for batch in loader:
            x, y = batch.x.to(dev, non_blocking=True), batch.y.to(dev, non_blocking=True)
            logits = model(x).float()
            p = logits.argmax(dim=1)
            correct += (p == y).sum()
            loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
            preds.append(p.cpu())
            labels.append(y.cpu())
        model.train(was_training)
        total = sum(len(t) for t in labels)
        return EvalResult(
            correct=int(correct),
            total=total,
            loss=float(loss_sum) / max(total, 1),
            predictions=torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long),
            labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
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
        state_path: Path | None = None,
    ) -> FitResult:
        """Train `model` to minimise `objective` over `loader` for cfg.epochs; return the trained model."""
        if objective.needs_teacher and teacher is None and "teacher.logits" not in loader.extras:
            raise KdkitError(f"phase {phase!r}: the objective reads teacher outputs but no teacher was given")
        dev = self.runtime.device
        model = self.prepare(model)
        objective = objective.to(dev)
        if teacher is not None:
            teacher = self.prepare(teacher)
        params = list(model.parameters()) + list(objective.parameters())
        opt = build_optimizer(params, cfg)
        steps_per_epoch = len(loader)
        sched = build_scheduler(opt, cfg, steps_per_epoch)
        total_steps = cfg.epochs * steps_per_epoch
        history: list[dict[str, Any]] = []
        step = 0
        samples = 0
        val_result: EvalResult | None = None
        t0 = time.perf_counter()

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
        task = bar.add_task(phase, total=total_steps, info="") if bar else None
        if bar:
            bar.start()
        try:
            for epoch in range(cfg.epochs):
                model.train()
                objective.train()
                loader.set_epoch(epoch)
                # Running sums stay on the device: no host synchronisation except at log points.
                loss_sum = torch.zeros((), device=dev)
                correct = torch.zeros((), dtype=torch.long, device=dev)
                part_sums: dict[str, Tensor] = {}
                first_bad: dict[str, Tensor] = {}
                seen = 0
                window_t, window_n = time.perf_counter(), 0
                for batch in loader:
                    x = batch.x.to(dev, non_blocking=True)
                    y = batch.y.to(dev, non_blocking=True)
                    with self.runtime.autocast():
                        logits = model(x)
                        tensors = {"student.logits": logits, "labels": y}
                        if "teacher.logits" in batch.extras:
                            tensors["teacher.logits"] = batch.extras["teacher.logits"].to(
                                dev, non_blocking=True
                            )
                        elif teacher is not None:
                            tensors["teacher.logits"] = teacher(x)
                        loss, parts = objective(tensors)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    sched.step()
                    apply_constraints(model)
                    step += 1
                    self._track_non_finite(first_bad, parts, step)
                    n = len(y)
                    seen += n
                    window_n += n
                    loss_sum += loss.detach() * n
                    correct += (logits.detach().argmax(dim=1) == y).sum()
                    for k, v in parts.items():
                        part_sums[k] = part_sums.get(k, 0) + v * n
                    if step % self.log_every == 0 or step == total_steps:
                        self._check_finite(phase, first_bad)
                        now = time.perf_counter()
                        rate = window_n / max(now - window_t, 1e-9)
                        window_t, window_n = now, 0
                        avg = float(loss_sum) / seen
                        acc = float(correct) / seen
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
                samples += seen
                rec: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "loss": float(loss_sum) / max(seen, 1),
                    "train_accuracy": float(correct) / max(seen, 1),
                    **{f"loss.{k}": float(v) / max(seen, 1) for k, v in part_sums.items()},
                }
                self._check_finite(phase, first_bad)
                if val_loader is not None and len(val_loader.images):
                    val_result = self.evaluate(model, val_loader)
                    rec["val_accuracy"] = val_result.accuracy
                    rec["val_loss"] = val_result.loss
                rec["elapsed_seconds"] = time.perf_counter() - t0
                history.append(rec)
                self.logger.log(phase, step, **rec)
                if state_path is not None:
                    self.save_state(state_path, model, objective, opt, epoch + 1, step)
                val_txt = f"  val acc {rec['val_accuracy']:.4f}" if "val_accuracy" in rec else ""
                self.console.print(
                    f"[{phase}] epoch {epoch + 1}/{cfg.epochs}  loss {rec['loss']:.4f}  "
                    f"train acc {rec['train_accuracy']:.4f}{val_txt}  ({rec['elapsed_seconds']:.1f}s)",
                    highlight=False,
                    markup=False,
                )
        finally:
            if bar:
                bar.stop()
        seconds = time.perf_counter() - t0
        return FitResult(
            model=model, train_seconds=seconds, steps=step, samples=samples, history=history, val=val_result
        )

    def save_state(
        self,
        path: Path,
        model: nn.Module,
        objective: Objective,
        opt: torch.optim.Optimizer,
        epoch: int,
        step: int,
    ) -> None:
        """Write the training state (weights, adapters, optimizer) atomically at an epoch boundary."""
        opt_tensors, opt_meta = optimizer_tensors(opt)
        tensors = {
            **prefixed("model.", model.state_dict()),
            **prefixed("objective.", objective.state_dict()),
            **prefixed("optimizer.", opt_tensors),
        }
        save_checkpoint(
            path, tensors, {"kind": "train-state", "epoch": epoch, "step": step, "optimizer": opt_meta}
        )
