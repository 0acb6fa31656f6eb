"""Training speed of kdkit against a tutorial-style PyTorch distillation loop, side by side on this CPU.

    python benchmarks/speed.py            # the full benchmark (resumable; includes the accuracy check)
    python benchmarks/speed.py --quick    # under a minute: MNIST only, few steps, no accuracy check

Two tasks, each with the same data, batch size (128) and number of timed steps for four variants:

    (a) kdkit, the student alone (Engine.fit, hard labels), precision auto (bf16 where native), channels_last
    (b) the way common tutorials write it: a torch Dataset with per-sample transforms in __getitem__,
        DataLoader(batch_size=128, shuffle=True, num_workers=2), fp32, teacher forward every step under
        torch.no_grad(), KLDivLoss(batchmean) * T^2 * alpha + CE * beta, SGD; no kdkit code in its loop
    (c) kdkit with the online teacher (FrozenTeacher, bf16 weights, teacher forward every step)
    (d) kdkit with the cached teacher (TeacherCache built once; K fixed augmentation draws for CIFAR);
        the one-off build is timed and reported apart from the steps

Tasks: MNIST, 784-1200-1200-10 MLP teacher -> 784-800-800-10 MLP student, no augmentation; CIFAR-10
(cifar10-jpg), resnet56 -> resnet20, random crop (4 px zero padding) + horizontal flip.

The full run also trains (b) and (d) for a short fixed schedule from the same initial weights with the same
teacher and compares their test accuracy, and reports the training GFLOP/s of (a) next to this CPU's bf16 and
fp32 matmul peaks measured in the same run. Every finished part writes one JSON under
benchmarks/results/speed/ and is skipped when the benchmark runs again; the aggregate goes to
benchmarks/results/speed.json and the `speed` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from benchcommon import machine, machine_id, shown_path, update_results_md
from rich.console import Console
from torch import Tensor, nn

from kdkit.checkpoint import atomic_write_text, file_sha256, save_checkpoint
from kdkit.config import ModelSpec, TrainConfig
from kdkit.console import make_console
from kdkit.data import load_dataset
from kdkit.data.loader import Augment, InMemoryLoader, channel_stats
from kdkit.engine import Engine
from kdkit.model_io import load_model
from kdkit.models import create
from kdkit.objective import Objective
from kdkit.optim import build_optimizer
from kdkit.runtime import Runtime, resolve_runtime, seed_everything
from kdkit.teacher import FrozenTeacher
from kdkit.teacher_cache import CacheSpec, TeacherCache, cache_key, disk_bytes, draws_for

ROOT = Path(__file__).resolve().parents[1]
MARK_START, MARK_END = "<!-- speed:start -->", "<!-- speed:end -->"
BATCH = 128
VARIANTS = {
    "a": "kdkit, student alone (hard labels)",
    "b": "tutorial loop: Dataset + DataLoader(num_workers=2), fp32, online teacher",
    "c": "kdkit, online teacher (bf16 FrozenTeacher)",
    "d": "kdkit, cached teacher (TeacherCache)",
}
# Issue 29: where (b)'s gap to (d) comes from, one step at a time, timed in their own interleaved rounds:
# (b) -> (e) the precision, (e) -> (f) the data (kdkit's in-memory batches instead of a DataLoader with
# per-sample transforms), (f) -> (c) the rest of kdkit's step (fused optimiser, channels_last, the teacher's
# bf16 weights), (c) -> (d) the cache.
ISOLATION = {
    "e": "the tutorial loop (b) under bf16 autocast (teacher and student forward), still the DataLoader",
    "f": "(e) fed by kdkit's in-memory loader (batched crops and flips) instead of the DataLoader",
}
ISOLATION_ORDER = "befcd"
ISOLATION_RATIOS = {"b/e": "precision", "e/f": "in-memory data", "f/c": "kdkit's step", "c/d": "the cache"}
TARGETS = {"d/a": 1.10, "b/d": 3.0, "accuracy_points": 0.5, "mlp_bf16_peak_fraction": 0.5}


@dataclass(frozen=True)
class Task:
    """One teacher -> student pair on one data set, with its optimisation and distillation settings."""

    name: str
    dataset: str
    teacher: ModelSpec
    student: ModelSpec
    augment: Augment
    cache_draws: int
    lr: float
    weight_decay: float
    teacher_lr: float
    temperature: float = 4.0
    alpha: float = 0.9
    beta: float = 0.1
    dataset_aliases: tuple[str, ...] = ()

    @property
    def is_cnn(self) -> bool:
        """Return True for the convolutional pair (channels_last applies)."""
        return self.teacher.name != "mlp"

    def train_cfg(self, epochs: int, teacher: bool = False) -> TrainConfig:
        """Return the kdkit optimisation settings (the tutorial loop uses the same numbers)."""
        return TrainConfig(
            epochs=epochs,
            batch_size=BATCH,
            optimizer="sgd",
            lr=self.teacher_lr if teacher else self.lr,
            momentum=0.9,
            weight_decay=self.weight_decay,
            schedule="cosine",
            augment={
                "crop_padding": self.augment.crop_padding,
                "jitter": self.augment.jitter,
                "flip": self.augment.flip,
            },
        )


TASKS = {
    "mnist": Task(
        "mnist",
        "mnist",
        ModelSpec(name="mlp", hidden=[1200, 1200]),
        ModelSpec(name="mlp", hidden=[800, 800]),
        Augment(),
        cache_draws=1,
        lr=0.05,
        weight_decay=0.0,
        teacher_lr=0.1,
    ),
    "cifar": Task(
        "cifar",
        "cifar10-jpg",
        ModelSpec(name="resnet56"),
        ModelSpec(name="resnet20"),
        Augment(crop_padding=4, flip=True),
        cache_draws=4,
        lr=0.05,
        weight_decay=5e-4,
        teacher_lr=0.1,
        dataset_aliases=("cifar10",),
    ),
}


# --------------------------------------------------------------------------------------------------------
# Bookkeeping: one JSON per finished part, machine description, RESULTS.md section.


class Parts:
    """Finished parts of the benchmark, one JSON each; `None` directory means nothing is kept (quick mode)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def path(self, name: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{name}.json"

    def get(self, name: str) -> dict[str, Any] | None:
        p = self.path(name)
        return json.loads(p.read_text()) if p is not None and p.is_file() else None

    def run(
        self,
        name: str,
        fn: Callable[[], dict[str, Any]],
        say: Callable[[str], None],
        expect: dict[str, Any] | None = None,
        timed: bool = False,
    ) -> dict[str, Any]:
        """Return the stored result of a part (if made with the `expect`ed settings), else compute and store it.

        A `timed` part (its figures are seconds) is reused only on the machine that measured it.
        """
        done = self.get(name)
        here = machine_id()
        if done is not None and timed and done.get("machine_id") != here:
            say(
                f"[{name}] stored timings were measured on another machine "
                f"({done.get('machine_id', 'not recorded')}; this one: {here}): measuring again"
            )
            done = None
        if done is not None and any(done.get(k) != v for k, v in (expect or {}).items()):
            say(f"[{name}] stored result was made with other settings: measuring again")
            done = None
        if done is not None:
            say(f"[{name}] finished earlier ({done.get('finished', '?')}): reused")
            return done
        rec = fn()
        rec["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        rec["machine_id"] = here
        p = self.path(name)
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(p, json.dumps(rec, indent=2))
        return rec


def cpu_busy_fraction(seconds: float = 2.0) -> float | None:
    """Return the fraction of all CPUs busy over `seconds` (from /proc/stat), or None where unavailable."""

    def read() -> tuple[int, int]:
        with open("/proc/stat", encoding="utf-8") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals)

    try:
        idle0, total0 = read()
        time.sleep(seconds)
        idle1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_quiet(
    say: Callable[[str], None], wait: bool, threshold: float = 0.15, max_wait: int = 1800
) -> float | None:
    """Return the CPU busy fraction before a timing; with `wait`, first wait (up to max_wait s) for other load to end."""
    waited = 0
    while True:
        busy = cpu_busy_fraction(2.0 if wait else 0.5)
        if not wait or busy is None or busy <= threshold or waited >= max_wait:
            return busy
        say(f"other processes keep {busy:.0%} of the CPU busy: waiting 30 s before timing")
        time.sleep(30)
        waited += 30


# --------------------------------------------------------------------------------------------------------
# Measurements shared by the variants.


def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    """Return the best GFLOP/s of an n x n x n matmul in `dtype` over `repeats` runs (after one warm-up)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def gemm_shapes_gflops(model: nn.Module, batch: int, dtype: torch.dtype, repeats: int = 5) -> float | None:
    """Return the best GFLOP/s of the GEMMs a Linear-only model's training step makes, alone, in `dtype`.

    Per Linear layer (in -> out): forward (batch x in) @ (in x out), input gradient (batch x out) @ (out x in)
    and weight gradient (out x batch) @ (batch x in). None for models with convolutions.
    """
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return None
    shapes = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            i, o = m.in_features, m.out_features
            shapes += [(batch, i, o), (batch, o, i), (o, batch, i)]
    g = torch.Generator().manual_seed(0)
    mats = [
        (torch.randn(a, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype))
        for a, k, n in shapes
    ]
    flops = sum(2 * a * k * n for a, k, n in shapes)

    def once() -> None:
        for x, w in mats:
            torch.mm(x, w)

    for _ in range(5):
        once()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(20):
            once()
        best = min(best, (time.perf_counter() - t0) / 20)
    return flops / best / 1e9


def forward_flops_per_sample(model: nn.Module, x: Tensor) -> float:
    """Return the multiply-add FLOPs (x2) of Linear and Conv2d layers in one forward pass, per sample."""
    total = 0

    def hook(mod: nn.Module, _inp: Any, out: Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += 2 * out.numel() * mod.in_features
        elif isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += 2 * out.numel() * (mod.in_channels // mod.groups) * kh * kw

    m = copy.deepcopy(model).float().eval()
    handles = [h.register_forward_hook(hook) for h in m.modules() if isinstance(h, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            m(x.float())
    finally:
        for h in handles:
            h.remove()
    return total / len(x)


@torch.no_grad()
def test_accuracy(model: nn.Module, data: TaskData, batch: int = 1000) -> float:
    """Return the test accuracy of a model in plain fp32 torch (the same function for every variant)."""
    was = model.training
    model.eval()
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    correct = 0
    for i in range(0, len(data.test_x), batch):
        x = (data.test_x[i : i + batch].float() / 255.0 - mean) / std
        correct += int((model(x).float().argmax(1) == data.test_y[i : i + batch]).sum())
    model.train(was)
    return correct / len(data.test_x)


@dataclass
class TaskData:
    """Training and test images (uint8 tensors), labels and the normalisation every variant uses."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: list[float]
    std: list[float]
    classes: list[str]
    load_seconds: float = 0.0
    teacher_info: dict[str, Any] = field(default_factory=dict)


def load_task_data(task: Task, train_limit: int | None = None) -> TaskData:
    """Return the task's data (training statistics for normalisation; a reused teacher may override them).

    `train_limit` keeps the first N training images (quick mode: a small cache to build; per-step cost is the same).
    """
    t0 = time.perf_counter()
    train = load_dataset(task.dataset, "train")
    test = load_dataset(task.dataset, "test")
    mean, std = channel_stats(train.images)
    n = len(train.images) if train_limit is None else min(train_limit, len(train.images))
    return TaskData(
        torch.from_numpy(train.images[:n]),
        torch.from_numpy(train.labels[:n]).long(),
        torch.from_numpy(test.images),
        torch.from_numpy(test.labels).long(),
        mean,
        std,
        list(train.classes),
        load_seconds=time.perf_counter() - t0,
    )


def new_model(task: Task, spec: ModelSpec, data: TaskData, seed: int) -> nn.Module:
    """Return a freshly initialised model, seeded (the same weights for every variant that uses the seed)."""
    seed_everything(seed)
    return create(
        spec.name,
        num_classes=len(data.classes),
        in_channels=int(data.train_x.shape[1]),
        image_size=int(data.train_x.shape[2]),
        **spec.options(),
    )


class StepLimitedLoader(InMemoryLoader):
    """kdkit's in-memory loader, cut to the first `max_steps` batches of an epoch (the timing window)."""

    max_steps: int | None = None

    def __len__(self) -> int:
        n = super().__len__()
        return n if self.max_steps is None else min(n, self.max_steps)


def kdkit_loader(
    task: Task, data: TaskData, seed: int, *, cached: Tensor | None = None, draws: Any = None
) -> StepLimitedLoader:
    """Return kdkit's training loader for the task, optionally serving cached teacher logits."""
    extras: dict[str, Tensor] = {}
    draw_extras: dict[str, Tensor] = {}
    if cached is not None:
        if draws is None:
            extras["teacher.logits"] = cached[:, 0]
        else:
            draw_extras["teacher.logits"] = cached
    return StepLimitedLoader(
        data.train_x,
        data.train_y,
        BATCH,
        shuffle=True,
        seed=seed,
        augment=task.augment,
        mean=data.mean,
        std=data.std,
        channels_last=task.is_cnn,
        extras=extras,
        draws=draws,
        draw_extras=draw_extras,
    )


def quiet_engine(runtime: Runtime) -> Engine:
    """Return an Engine that prints nothing (timing runs)."""
    return Engine(runtime, console=Console(quiet=True), progress=False, log_every=10**9)


# --------------------------------------------------------------------------------------------------------
# (b) The tutorial-style baseline: plain torch, no kdkit code in its loop.


class TutorialDataset(torch.utils.data.Dataset):
    """Per-sample transforms in __getitem__, as in common tutorials (RandomCrop(pad), flip, ToTensor, Normalize)."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: list[float],
        std: list[float],
        crop_padding: int = 0,
        flip: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.crop_padding, self.flip = crop_padding, flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images[i]  # uint8 (C, H, W)
        if self.crop_padding:  # RandomCrop(size, padding=p): zero-pad, then a random window
            p = self.crop_padding
            _, h, w = img.shape
            padded = F.pad(img, (p, p, p, p))
            top = int(torch.randint(0, 2 * p + 1, (1,)))
            left = int(torch.randint(0, 2 * p + 1, (1,)))
            img = padded[:, top : top + h, left : left + w]
        if self.flip and torch.rand(1).item() < 0.5:  # RandomHorizontalFlip()
            img = img.flip(-1)
        x = img.float().div(255.0)  # ToTensor()
        x = (x - self.mean) / self.std  # Normalize(mean, std)
        return x, int(self.labels[i])


def tutorial_loader(task: Task, data: TaskData, seed: int) -> torch.utils.data.DataLoader:
    """Return DataLoader(batch_size=128, shuffle=True, num_workers=2) over the tutorial Dataset."""
    ds = TutorialDataset(
        data.train_x, data.train_y, data.mean, data.std, task.augment.crop_padding, task.augment.flip
    )
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2, generator=g)


class TutorialKD:
    """One distillation training step written the tutorial way (fp32, teacher under no_grad, KLDivLoss)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        task: Task,
        total_steps: int | None = None,
        amp: torch.dtype | None = None,
    ) -> None:
        self.student, self.teacher, self.amp = student, teacher, amp
        self.T, self.alpha, self.beta = task.temperature, task.alpha, task.beta
        self.kl = nn.KLDivLoss(reduction="batchmean")
        self.ce = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(
            student.parameters(), lr=task.lr, momentum=0.9, weight_decay=task.weight_decay
        )
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)
            if total_steps
            else None
        )
        self.teacher.eval()
        self.student.train()

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        # (e), (f): what a tutorial adds for mixed precision: autocast around the forward passes.
        with torch.autocast("cpu", dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            with torch.no_grad():
                t_logits = self.teacher(x).float()
            s_logits = self.student(x).float()
        T = self.T
        soft = self.kl(F.log_softmax(s_logits / T, dim=1), F.softmax(t_logits / T, dim=1)) * (T * T)
        loss = soft * self.alpha + self.ce(s_logits, y) * self.beta
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss


def median_rounds(per_round: list[dict[str, Any]], order: str) -> dict[str, Any]:
    """Return each variant's median round (by seconds), with every round's seconds beside it."""
    runs: dict[str, Any] = {}
    for v in order:
        recs = sorted((rd[v] for rd in per_round), key=lambda r: r["seconds"])
        runs[v] = {
            **recs[len(recs) // 2],
            "rounds": len(per_round),
            "round_seconds": [rd[v]["seconds"] for rd in per_round],
        }
    return runs


def round_ratios(per_round: list[dict[str, Any]], pair: str) -> float:
    """Return the median over rounds of time(x) / time(y) within a round, for pair "x/y"."""
    x, y = pair.split("/")
    return statistics.median(rd[x]["seconds"] / rd[y]["seconds"] for rd in per_round)


def batches(loader: Any) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield batches across epochs (a new epoch re-creates the workers, as a for-loop over epochs does)."""
    while True:
        yield from loader


# --------------------------------------------------------------------------------------------------------
# The parts of one task.


def find_teacher_checkpoint(task: Task, runs_root: Path) -> Path | None:
    """Return a kdkit teacher checkpoint under benchmarks/runs/ matching the task's data set and teacher."""
    want = task.teacher.model_dump(mode="json")
    for js in sorted(runs_root.rglob("teacher.json")):
        try:
            meta = json.loads(js.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        model = meta.get("model") or {}
        if (
            meta.get("kind") == "model"
            and not (meta.get("metrics") or {}).get("loaded_from")  # a run's copy of a teacher it loaded
            and meta.get("dataset") in (task.dataset, *task.dataset_aliases)
            and model.get("name") == want["name"]
            and all(model.get(k) == v for k, v in want.items())
            and js.with_suffix(".safetensors").is_file()
        ):
            return js.with_suffix(".safetensors")
    return None


def teacher_checkpoint_arg(task: Task, args: argparse.Namespace) -> Path | None:
    """Return the checkpoint given with --cifar-teacher / --mnist-teacher for this task, checked, or None."""
    given = getattr(args, f"{task.name}_teacher", None)
    if given is None:
        return None
    path = Path(given)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix(".safetensors")
    else:
        path = path.with_name(path.name + ".safetensors")
    if not path.is_file() or not path.with_suffix(".json").is_file():
        raise SystemExit(
            f"--{task.name}-teacher {given}: expected a kdkit checkpoint ({path.name} and "
            f"{path.with_suffix('.json').name}), not found"
        )
    return path


def get_teacher(
    task: Task, data: TaskData, args: argparse.Namespace, runs_dir: Path, parts: Parts, say: Callable
) -> nn.Module:
    """Return the fp32 teacher: random (quick), a reused checkpoint, or one trained here with kdkit."""
    if args.quick:
        teacher = new_model(task, task.teacher, data, args.seed + 100)
        data.teacher_info = {"source": "random init (timing only, --quick)", "test_accuracy": None}
        return teacher.eval()

    requested = teacher_checkpoint_arg(task, args)

    def acquire() -> dict[str, Any]:
        found = requested or find_teacher_checkpoint(task, ROOT / "benchmarks" / "runs")
        if found is not None:
            model, meta = load_model(found)
            norm = meta.get("normalize") or {}
            mean, std = norm.get("mean", data.mean), norm.get("std", data.std)
            data.mean, data.std = mean, std
            acc = test_accuracy(model, data)
            return {
                "source": f"reused checkpoint {shown_path(found)}",
                "checkpoint": str(found),
                "weights_sha256": file_sha256(found),
                "normalize": {"mean": mean, "std": std},
                "test_accuracy": acc,
                "schedule": "as recorded with that checkpoint",
            }
        epochs = args.teacher_epochs[task.name]
        say(f"[{task.name}-teacher] training {task.teacher.name} with kdkit for {epochs} epoch(s)")
        model = new_model(task, task.teacher, data, args.seed + 100)
        runtime = resolve_runtime("auto", None, channels_last=True)
        engine = Engine(runtime, console=make_console(), progress=not args.no_progress, log_every=50)
        loader = kdkit_loader(task, data, args.seed + 100)
        cfg = task.train_cfg(epochs, teacher=True)
        fit = engine.fit(f"{task.name}-teacher", model, Objective.hard_labels(), loader, cfg)
        acc = test_accuracy(fit.model, data)
        path = runs_dir / task.name / "checkpoints" / "teacher"
        meta = {
            "kind": "model",
            "role": "teacher",
            "model": task.teacher.model_dump(mode="json"),
            "dataset": task.dataset,
            "num_classes": len(data.classes),
            "in_channels": int(data.train_x.shape[1]),
            "image_size": int(data.train_x.shape[2]),
            "classes": data.classes,
            "normalize": {"mean": data.mean, "std": data.std},
            "metrics": {"accuracy": acc, "train_seconds": fit.train_seconds, "epochs": epochs},
        }
        st = save_checkpoint(path, fit.model.state_dict(), meta)
        return {
            "source": f"trained here with kdkit ({epochs} epochs, {runtime.precision})",
            "checkpoint": str(st),
            "weights_sha256": file_sha256(st),
            "normalize": {"mean": data.mean, "std": data.std},
            "test_accuracy": acc,
            "train_seconds": fit.train_seconds,
            "samples_per_second": fit.samples_per_second,
            "schedule": {
                "epochs": epochs,
                "lr": task.teacher_lr,
                "momentum": 0.9,
                "weight_decay": task.weight_decay,
                "schedule": "cosine",
                "augment": cfg.augment.model_dump(),
                "batch_size": BATCH,
            },
        }

    name = f"{task.name}-teacher"
    info = parts.get(name)
    if info is not None:
        # A reused checkpoint can be retrained in place by another benchmark: the recorded accuracy (and every
        # accuracy part made with it) then belongs to other weights.
        ckpt = Path(info["checkpoint"])
        problem = None
        if not ckpt.is_file():
            problem = "is gone"
        elif requested is not None and ckpt.resolve() != requested.resolve():
            problem = f"is not the one asked for ({requested})"
        elif info.get("weights_sha256") != file_sha256(ckpt):
            problem = "holds other weights than those recorded"
        if problem:
            say(f"[{name}] its checkpoint {ckpt} {problem}: acquiring the teacher again")
            assert parts.path(name) is not None
            parts.path(name).unlink()  # type: ignore[union-attr]
    info = parts.run(name, acquire, say)
    model, _ = load_model(info["checkpoint"])
    data.mean, data.std = info["normalize"]["mean"], info["normalize"]["std"]
    data.teacher_info = info
    say(f"[{name}] {info['source']}; test accuracy {info['test_accuracy'] * 100:.2f}%")
    return model.eval()


class _HashableWeights:
    """The teacher's state_dict in canonical row-major strides, 0-dim tensors as 1-element ones, for `cache_key`.

    kdkit's `cache_key` hashes each tensor through `.contiguous().view(torch.uint8)`, which torch refuses for
    0-dim tensors wider than a byte (BatchNorm's `num_batches_tracked`) and for 1x1 conv weights in
    channels_last (contiguous, yet stride(-1) != 1); this shim lets the benchmark key a cache for a CNN teacher.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Tensor]:
        return {
            k: v.reshape(1) if v.dim() == 0 else v.clone(memory_format=torch.contiguous_format)
            for k, v in self.model.state_dict().items()
        }


def build_cache(
    task: Task,
    data: TaskData,
    teacher: nn.Module,
    runtime: Runtime,
    seed: int,
    directory: Path,
    parts: Parts,
    say: Callable,
) -> tuple[Tensor, Any, dict[str, Any]]:
    """Build (timed) or reuse the teacher cache; return (logits (N, K, C), draws, record)."""
    spec = CacheSpec(draws=task.cache_draws if task.augment.enabled else 1)
    frozen = FrozenTeacher(quiet_engine(runtime).prepare(copy.deepcopy(teacher)), dtype=runtime.amp_dtype)
    key = cache_key(
        _HashableWeights(frozen.model),
        data.train_x,
        data.train_y,
        task.augment,
        spec,
        seed,
        runtime.precision,
        (data.mean, data.std),
    )
    cache = TeacherCache(directory / key, key, spec)
    draws = draws_for(len(data.train_x), task.augment, spec, seed)
    name = f"{task.name}-cache"
    rec = parts.get(name)
    elsewhere = rec is not None and rec.get("machine_id") != machine_id()
    if elsewhere:
        say(
            f"[{name}] its build was timed on another machine ({rec.get('machine_id', 'not recorded')}): rebuilt"
        )
    if rec is None or elsewhere or rec.get("key") != key or not cache.complete():
        shutil.rmtree(cache.directory, ignore_errors=True)  # time a build from nothing
        norm = kdkit_loader(task, data, seed).normalize

        def teacher_fn(x: Tensor) -> Tensor:
            with runtime.autocast():
                return frozen(x.to(runtime.device))

        t0 = time.perf_counter()
        cache.build(teacher_fn, data.train_x, draws, task.augment, norm, batch_size=500)
        seconds = time.perf_counter() - t0
        views = len(data.train_x) * spec.draws
        rec = {
            "key": key,
            "build_seconds": seconds,
            "images": len(data.train_x),
            "draws": spec.draws,
            "views_per_second": views / seconds,
            "disk_mb": disk_bytes(len(data.train_x), spec.draws, len(data.classes), spec.topk) / 2**20,
            "precision": runtime.precision,
            "directory": str(cache.directory),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine_id": machine_id(),
        }
        p = parts.path(name)
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(p, json.dumps(rec, indent=2))
    else:
        say(f"[{name}] finished earlier ({rec['finished']}): reused")
    t0 = time.perf_counter()
    logits = cache.load(len(data.classes))
    rec["load_seconds"] = time.perf_counter() - t0
    say(
        f"[{name}] one-off teacher cache build: {rec['build_seconds']:.1f}s for {rec['images']:,} images x "
        f"{rec['draws']} draw(s) ({rec['views_per_second']:,.0f} views/s, {rec['disk_mb']:.1f} MB); "
        f"not part of the step timing"
    )
    return logits, draws, rec


def time_kdkit(
    variant: str,
    task: Task,
    data: TaskData,
    runtime: Runtime,
    teacher: nn.Module | None,
    cached: tuple[Tensor, Any] | None,
    steps: int,
    warmup: int,
    seed: int,
) -> dict[str, Any]:
    """Time `steps` kdkit training steps (after `warmup` untimed ones) of variant a, c or d."""
    engine = quiet_engine(runtime)
    student = new_model(task, task.student, data, seed)
    if variant == "a":
        objective = Objective.hard_labels()
    else:
        objective = Objective.response("kd", task.alpha, task.beta, task.temperature)
    frozen = FrozenTeacher(copy.deepcopy(teacher), dtype=runtime.amp_dtype) if teacher is not None else None
    loader = kdkit_loader(
        task, data, seed, cached=cached[0] if cached else None, draws=cached[1] if cached else None
    )
    cfg = task.train_cfg(1)
    loader.max_steps = warmup
    engine.fit(f"{variant}-warmup", student, objective, loader, cfg, teacher=frozen)
    loader.max_steps = steps
    t0 = time.perf_counter()
    fit = engine.fit(variant, student, objective, loader, cfg, teacher=frozen)
    seconds = time.perf_counter() - t0  # the whole fit call, set-up included
    return {
        "variant": variant,
        "label": VARIANTS[variant],
        "precision": runtime.precision,
        "channels_last": task.is_cnn,
        "steps": fit.steps,
        "samples": fit.samples,
        "seconds": seconds,
        "loop_seconds": fit.train_seconds,
        "samples_per_second": fit.samples / seconds,
        "ms_per_step": 1000 * seconds / fit.steps,
    }


def time_tutorial(
    task: Task,
    data: TaskData,
    teacher: nn.Module,
    steps: int,
    warmup: int,
    seed: int,
    variant: str = "b",
    amp: torch.dtype | None = None,
) -> dict[str, Any]:
    """Time `steps` steps of the tutorial loop after `warmup` untimed ones (worker start-up excluded): (b) as
    tutorials write it, (e) under autocast to `amp`, (f) also fed by kdkit's in-memory loader."""
    student = new_model(task, task.student, data, seed)
    kd = TutorialKD(student, copy.deepcopy(teacher).float(), task, amp=amp if variant in "ef" else None)
    it = (
        ((b.x, b.y) for b in batches(kdkit_loader(task, data, seed)))
        if variant == "f"
        else batches(tutorial_loader(task, data, seed))
    )
    samples = 0
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = next(it)
        kd.step(x, y)
        samples += len(y) if i >= warmup else 0
    seconds = time.perf_counter() - t0
    del it
    return {
        "variant": variant,
        "label": {**VARIANTS, **ISOLATION}[variant],
        "precision": "bf16" if kd.amp is not None else "fp32",
        "channels_last": variant == "f" and task.is_cnn,
        "steps": steps,
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "num_workers": 0 if variant == "f" else 2,
    }


def breakdown(
    task: Task,
    data: TaskData,
    runtime: Runtime,
    teacher: nn.Module,
    cached: tuple[Tensor, Any],
    steps: int,
    seed: int,
) -> dict[str, Any]:
    """Time the pieces of a step apart (ms per batch), to say what limits each ratio."""
    out: dict[str, Any] = {"steps": steps}

    def per_step(fn: Callable[[], Any], n: int = steps) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return 1000 * (time.perf_counter() - t0) / n

    for name, loader in (
        ("kdkit_loader_plain_ms", kdkit_loader(task, data, seed)),
        ("kdkit_loader_cached_ms", kdkit_loader(task, data, seed, cached=cached[0], draws=cached[1])),
    ):
        loader.max_steps = steps + 1
        t0 = time.perf_counter()
        n = sum(1 for _ in loader)
        out[name] = 1000 * (time.perf_counter() - t0) / n
    it = batches(tutorial_loader(task, data, seed))
    for _ in range(3):
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    out["tutorial_dataloader_ms"] = 1000 * (time.perf_counter() - t0) / steps
    del it

    batch = next(iter(kdkit_loader(task, data, seed)))
    x_cl, y = batch.x, batch.y
    x = x_cl.contiguous()
    t32 = copy.deepcopy(teacher).float().eval()

    def teacher_fp32() -> None:
        with torch.no_grad():
            t32(x)

    out["teacher_forward_fp32_ms"] = per_step(teacher_fp32)
    tbf = FrozenTeacher(quiet_engine(runtime).prepare(copy.deepcopy(teacher)), dtype=runtime.amp_dtype)

    def teacher_bf16() -> None:
        with runtime.autocast():
            tbf(x_cl)

    out["teacher_forward_kdkit_ms"] = per_step(teacher_bf16)
    student = quiet_engine(runtime).prepare(new_model(task, task.student, data, seed))
    opt = build_optimizer(student.parameters(), task.train_cfg(1))  # kdkit's own update, as in (a)

    def bare_step() -> None:
        with runtime.autocast():
            loss = F.cross_entropy(student(x_cl).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out["student_bare_step_ms"] = per_step(bare_step)
    out["student_gemms_bf16_gflops"] = gemm_shapes_gflops(student, BATCH, torch.bfloat16)
    out["student_gemms_fp32_gflops"] = gemm_shapes_gflops(student, BATCH, torch.float32)
    out["student_bare_step_precision"] = runtime.precision
    out["student_bare_step_update"] = "fused" if opt.param_groups[0].get("fused") else "foreach"
    return out


def accuracy_run(
    variant: str,
    task: Task,
    data: TaskData,
    runtime: Runtime,
    teacher: nn.Module,
    cached: tuple[Tensor, Any] | None,
    epochs: int,
    seed: int,
    say: Callable,
) -> dict[str, Any]:
    """Train (b) or (d) for `epochs` from the same initial weights; return its test accuracy and speed."""
    student = new_model(task, task.student, data, seed)
    t0 = time.perf_counter()
    if variant == "b":
        loader = tutorial_loader(task, data, seed)
        kd = TutorialKD(student, copy.deepcopy(teacher).float(), task, total_steps=epochs * len(loader))
        steps = samples = 0
        for epoch in range(epochs):
            for x, y in loader:
                kd.step(x, y)
                steps += 1
                samples += len(y)
            say(f"[{task.name}-acc-b] epoch {epoch + 1}/{epochs} ({time.perf_counter() - t0:.0f}s)")
        model = student
    else:
        assert cached is not None
        engine = Engine(runtime, console=make_console(), progress=False, log_every=10**9)
        loader = kdkit_loader(task, data, seed, cached=cached[0], draws=cached[1])
        frozen = FrozenTeacher(copy.deepcopy(teacher), dtype=runtime.amp_dtype)
        objective = Objective.response("kd", task.alpha, task.beta, task.temperature)
        fit = engine.fit(
            f"{task.name}-acc-d", student, objective, loader, task.train_cfg(epochs), teacher=frozen
        )
        model, steps, samples = fit.model, fit.steps, fit.samples
    seconds = time.perf_counter() - t0
    acc = test_accuracy(model, data)
    return {
        "variant": variant,
        "epochs": epochs,
        "steps": steps,
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds,
        "test_accuracy": acc,
        "seed": seed,
    }


def run_task(
    task: Task, args: argparse.Namespace, parts: Parts, runs_dir: Path, cache_dir: Path, say: Callable
) -> dict[str, Any]:
    """Run every part of one task and return its record."""
    steps, warmup = args.steps[task.name], args.warmup
    data = load_task_data(task, args.train_limit[task.name])
    say(
        f"[{task.name}] {task.dataset}: {len(data.train_x):,} train / {len(data.test_x):,} test images "
        f"(loaded in {data.load_seconds:.1f}s)"
    )
    if warmup + steps > math.ceil(len(data.train_x) / BATCH):
        raise SystemExit(f"{task.name}: warm-up + steps must fit in one epoch ({len(data.train_x) // BATCH})")
    runtime = resolve_runtime("auto", None, channels_last=True)
    teacher = get_teacher(task, data, args, runs_dir, parts, say)
    seed = args.seed
    logits, draws, cache_rec = build_cache(task, data, teacher, runtime, seed + 1, cache_dir, parts, say)
    cached = (logits, draws)

    # The cache's draws were made with seed + 1; the loaders below use the same seed so (d) reads them.
    rounds = args.rounds[task.name]

    def time_variant(v: str, rnd: int) -> dict[str, Any]:
        if v in "bef":
            r = time_tutorial(task, data, teacher, steps, warmup, seed + 1, v, runtime.amp_dtype)
        else:
            cache = cached if v == "d" else None
            r = time_kdkit(
                v, task, data, runtime, teacher if v in "cd" else None, cache, steps, warmup, seed + 1
            )
        say(
            f"[{task.name}-{v}] round {rnd + 1}/{rounds}: {r['steps']} steps in {r['seconds']:.2f}s, "
            f"{r['samples_per_second']:,.0f} samples/s ({r['ms_per_step']:.1f} ms/step, {r['precision']})"
        )
        return r

    def measure_isolation() -> dict[str, Any]:
        # Issue 29: (b) -> (e) -> (f) -> (c) -> (d), one change at a time, interleaved like the timing rounds.
        per_round, busy = [], []
        for rnd in range(rounds):
            busy.append(wait_until_quiet(say, wait=not args.quick))
            per_round.append({v: time_variant(v, rnd) for v in ISOLATION_ORDER})
        return {
            "steps": steps,
            "warmup": warmup,
            "rounds": rounds,
            "order": ISOLATION_ORDER,
            "runs": median_rounds(per_round, ISOLATION_ORDER),
            "ratios": {k: round_ratios(per_round, k) for k in ISOLATION_RATIOS},
            "cpu_busy_before_rounds": busy,
        }

    def measure_all() -> dict[str, Any]:
        # The four variants are timed back to back in one process, `rounds` times interleaved (a b c d a b c d
        # ...), and stored as one part, so a resumed run never pairs timings from different invocations. Each
        # variant reports its median round.
        per_round: list[dict[str, Any]] = []
        wait_until_quiet(say, wait=not args.quick)
        size, repeats = args.peak_size, args.peak_repeats
        peaks = {
            "size": size,
            "repeats": repeats,
            "bf16_gflops": matmul_peak(torch.bfloat16, size, repeats),
            "fp32_gflops": matmul_peak(torch.float32, size, repeats),
        }
        say(
            f"[{task.name}-timing] matmul peak ({size}^3, best of {repeats}): bf16 {peaks['bf16_gflops']:.0f} "
            f"GFLOP/s, fp32 {peaks['fp32_gflops']:.0f} GFLOP/s"
        )
        load_before = os.getloadavg()[0]
        busy: list[float | None] = []
        for rnd in range(rounds):
            busy.append(wait_until_quiet(say, wait=not args.quick))
            per_round.append({v: time_variant(v, rnd) for v in "abcd"})
        runs = median_rounds(per_round, "abcd")
        return {
            "steps": steps,
            "warmup": warmup,
            "rounds": rounds,
            "peak_size": size,
            "peaks": peaks,
            "runs": runs,
            "cpu_busy_before_rounds": busy,
            "loadavg_1min_before": load_before,
            "loadavg_1min_after": os.getloadavg()[0],
        }

    timed = parts.run(
        f"{task.name}-timing",
        measure_all,
        say,
        expect={"steps": steps, "warmup": warmup, "rounds": rounds, "peak_size": args.peak_size},
        timed=True,
    )
    timing: dict[str, dict[str, Any]] = timed["runs"]
    # Each ratio is the median over rounds of the ratio within a round (variants timed seconds apart), which
    # cancels load that drifts between rounds; the ratio of the per-variant medians is kept beside it.
    pairs = ("d/a", "b/d", "c/a", "b/c", "b/a")
    ratios = {
        k: statistics.median(
            x / y for x, y in zip(timing[k[0]]["round_seconds"], timing[k[2]]["round_seconds"], strict=True)
        )
        for k in pairs
    }
    ratios_of_medians = {k: timing[k[0]]["seconds"] / timing[k[2]]["seconds"] for k in pairs}
    isolation = parts.run(
        f"{task.name}-isolation",
        measure_isolation,
        say,
        expect={"steps": steps, "warmup": warmup, "rounds": rounds, "order": ISOLATION_ORDER},
        timed=True,
    )
    student_probe = new_model(task, task.student, data, seed)
    x_probe = next(iter(kdkit_loader(task, data, seed))).x.contiguous()
    fwd = forward_flops_per_sample(student_probe, x_probe)
    teacher_fwd = forward_flops_per_sample(teacher, x_probe)
    gflops = {
        "student_forward_mflop_per_sample": fwd / 1e6,
        "teacher_forward_mflop_per_sample": teacher_fwd / 1e6,
        "train_flop_per_sample": 3 * fwd,
        "a_gflops": 3 * fwd * timing["a"]["samples_per_second"] / 1e9,
    }
    gflops["a_fraction_of_bf16_peak"] = gflops["a_gflops"] / timed["peaks"]["bf16_gflops"]
    gflops["a_fraction_of_fp32_peak"] = gflops["a_gflops"] / timed["peaks"]["fp32_gflops"]
    rec: dict[str, Any] = {
        "task": task.name,
        "dataset": task.dataset,
        "teacher_model": task.teacher.model_dump(mode="json"),
        "student_model": task.student.model_dump(mode="json"),
        "augment": {"crop_padding": task.augment.crop_padding, "flip": task.augment.flip},
        "batch_size": BATCH,
        "steps": steps,
        "warmup": warmup,
        "distill": {"loss": "kd", "temperature": task.temperature, "alpha": task.alpha, "beta": task.beta},
        "teacher": data.teacher_info,
        "cache": cache_rec,
        "runs": timing,
        "timed_at": timed["finished"],
        "peaks": timed["peaks"],
        "rounds": timed["rounds"],
        "loadavg_1min": [timed["loadavg_1min_before"], timed["loadavg_1min_after"]],
        "cpu_busy_before_rounds": timed["cpu_busy_before_rounds"],
        "ratios": ratios,
        "ratios_of_median_times": ratios_of_medians,
        "isolation": isolation,
        "gflops": gflops,
    }
    if not args.quick:
        rec["breakdown"] = parts.run(
            f"{task.name}-breakdown",
            lambda: {
                "cpu_busy_before": wait_until_quiet(say, wait=True),
                **breakdown(task, data, runtime, teacher, cached, args.breakdown_steps[task.name], seed + 1),
            },
            say,
            expect={"steps": args.breakdown_steps[task.name]},
            timed=True,
        )
    if not args.quick and not args.no_accuracy:
        epochs = args.acc_epochs[task.name]
        acc: dict[str, Any] = {"epochs": epochs}
        # (b) and (d) must learn from the same teacher: each accuracy part records whose weights taught it.
        teacher_sha = data.teacher_info["weights_sha256"]

        def accuracy_part(name: str, v: str, run_seed: int) -> dict[str, Any]:
            return parts.run(
                name,
                lambda: {
                    **accuracy_run(
                        v, task, data, runtime, teacher, cached if v == "d" else None, epochs, run_seed, say
                    ),
                    "teacher_sha256": teacher_sha,
                },
                say,
                expect={"epochs": epochs, "seed": run_seed, "teacher_sha256": teacher_sha},
            )

        for v in "bd":
            name = f"{task.name}-acc-{v}"
            acc[v] = accuracy_part(name, v, seed + 1)
            say(
                f"[{name}] {epochs} epoch(s): test accuracy {acc[v]['test_accuracy'] * 100:.2f}% "
                f"({acc[v]['samples_per_second']:,.0f} samples/s)"
            )
        acc["diff_points"] = 100 * (acc["b"]["test_accuracy"] - acc["d"]["test_accuracy"])
        # The same kdkit run (d) with another seed (initial weights, order, draws): how far two runs of one
        # implementation land apart at this schedule, for reading the b - d gap.
        other = seed + 2
        acc["d_other_seed"] = accuracy_part(f"{task.name}-acc-d-seed{other}", "d", other)
        acc["seed_spread_points"] = 100 * (acc["d"]["test_accuracy"] - acc["d_other_seed"]["test_accuracy"])
        say(
            f"[{task.name}-acc] b - d = {acc['diff_points']:+.2f} points; (d) seed {seed + 1} - (d) seed {other} = "
            f"{acc['seed_spread_points']:+.2f} points"
        )
        rec["accuracy"] = acc
    return rec


# --------------------------------------------------------------------------------------------------------
# Targets, notes, report.


def verdicts(rec: dict[str, Any]) -> dict[str, Any]:
    """Return the task's targets with measured values, met / not met, and measured notes on what limits them."""
    r, runs, peaks = rec["ratios"], rec["runs"], rec["peaks"]
    bd = rec.get("breakdown") or {}
    out: dict[str, Any] = {}
    ms = {v: runs[v]["ms_per_step"] for v in "abcd"}

    def spread(v: str) -> str:
        rs = runs[v].get("round_seconds") or [runs[v]["seconds"]]
        return f"{1000 * min(rs) / runs[v]['steps']:.1f}-{1000 * max(rs) / runs[v]['steps']:.1f}"

    def note_da() -> str:
        s = (
            f"(d) {ms['d']:.1f} ms/step against (a) {ms['a']:.1f} ({ms['d'] - ms['a']:+.1f}); across rounds (a) "
            f"ranged {spread('a')} ms/step and (d) {spread('d')}"
        )
        if bd:
            extra = bd["kdkit_loader_cached_ms"] - bd["kdkit_loader_plain_ms"]
            s += (
                f"; serving the cached logits costs the loader {extra:+.2f} ms/batch "
                f"({bd['kdkit_loader_cached_ms']:.2f} against {bd['kdkit_loader_plain_ms']:.2f})"
            )
            if r["d/a"] > 1.02 and ms["d"] - ms["a"] > extra + 0.05:
                s += ", so the rest of the gap is the KD term (fp32 log-softmax and KL) and its backward"
        return s

    def note_bd() -> str:
        s = f"(b) {ms['b']:.1f} ms/step vs (d) {ms['d']:.1f}"
        if bd:
            s += (
                f"; in (b) the fp32 teacher forward alone takes {bd['teacher_forward_fp32_ms']:.1f} ms/batch "
                f"(kdkit's bf16 teacher {bd['teacher_forward_kdkit_ms']:.1f}), and the 2-worker DataLoader alone "
                f"delivers a batch every {bd['tutorial_dataloader_ms']:.1f} ms on these {os.cpu_count()} cores"
            )
        return s

    out["d/a"] = {"value": r["d/a"], "target": f"<= {TARGETS['d/a']}", "met": r["d/a"] <= TARGETS["d/a"]}
    out["d/a"]["note"] = note_da()
    out["b/d"] = {"value": r["b/d"], "target": f">= {TARGETS['b/d']}", "met": r["b/d"] >= TARGETS["b/d"]}
    out["b/d"]["note"] = note_bd()
    if "accuracy" in rec:
        diff = rec["accuracy"]["diff_points"]
        met = abs(diff) <= TARGETS["accuracy_points"]
        out["accuracy"] = {
            "value": diff,
            "target": f"|b - d| <= {TARGETS['accuracy_points']} points",
            "met": met,
            "note": (
                f"{rec['accuracy']['epochs']} epoch(s), one seed each; (b) and (d) differ in data order, "
                f"augmentation draws and precision. For scale, the same kdkit run (d) with another seed lands "
                f"{rec['accuracy']['seed_spread_points']:+.2f} points from the first"
            ),
        }
    if rec["task"] == "mnist":
        frac = rec["gflops"]["a_gflops"] / peaks["bf16_gflops"]
        out["mlp_gflops"] = {
            "value": frac,
            "target": f">= {TARGETS['mlp_bf16_peak_fraction']:.0%} of the bf16 matmul peak",
            "met": frac >= TARGETS["mlp_bf16_peak_fraction"],
        }
        if bd:
            bare = rec["gflops"]["train_flop_per_sample"] * BATCH / (bd["student_bare_step_ms"] / 1000) / 1e9
            pk = peaks["bf16_gflops"]
            gemm = bd.get("student_gemms_bf16_gflops") or 0.0
            out["mlp_gflops"]["note"] = (
                f"(a) {rec['gflops']['a_gflops']:.0f} GFLOP/s = {frac:.2%} of the bf16 peak ({pk:.0f}, "
                f"{peaks['size']}^3 GEMM). The student's own GEMMs at batch 128 (forward, input and weight "
                f"gradients of 784-800-800-10), timed alone in bf16 with nothing else, reach {gemm:.0f} GFLOP/s "
                f"({gemm / pk:.0%}); a bare bf16 train step on one fixed batch, without kdkit's loop or loader, "
                f"{bare:.0f} GFLOP/s ({bare / pk:.0%}). The gap between the GEMMs and a step is the work around them "
                f"(autocast weight casts, bias, ReLU, loss, the fp32 SGD update), "
                + (
                    "the gap between a bare step and (a) kdkit's loop and loader"
                    if bare > rec["gflops"]["a_gflops"]
                    else "and (a) kdkit's loop and loader add nothing measurable to the bare step (the pieces are "
                    "timed once, after the rounds; (a) is the median of its rounds)"
                )
            )
            out["mlp_gflops"]["bare_step_gflops"] = bare
    return out


def fmt_met(v: dict[str, Any]) -> str:
    return "met" if v["met"] else "**not met**"


def markdown(doc: dict[str, Any]) -> str:
    """Return the RESULTS.md section for this benchmark."""
    m = doc["machine"]
    lines = [
        MARK_START,
        "## Training speed: kdkit against a tutorial-style distillation loop",
        "",
        f"Command: `{doc['command']}`  ",
        f"Machine: {m['nproc']} cores, {m['cpu']}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"native bf16: {'yes' if m['bf16_native'] else 'no'}  ",
        f"Date: {doc['date']}; this invocation {doc['invocation_minutes']:.1f} min"
        + (
            f"; the parts it reports finished between {doc['parts_finished'][0]} and {doc['parts_finished'][1]} "
            "(a resumed run reuses finished parts)"
            if doc.get("parts_finished")
            else ""
        ),
        "",
        "Variants, for the same data, batch 128 and the same number of timed steps (after untimed warm-up):",
        "",
    ]
    lines += [f"- ({k}) {v}" for k, v in VARIANTS.items()]
    lines += [
        "",
        "Matmul peak of this CPU, measured in the same process right before each task's timing rounds: "
        + "; ".join(
            f"{t['task']} bf16 {t['peaks']['bf16_gflops']:.0f} GFLOP/s, fp32 {t['peaks']['fp32_gflops']:.0f} "
            f"GFLOP/s ({t['peaks']['size']}^3, best of {t['peaks']['repeats']})"
            for t in doc["tasks"].values()
        )
        + ".",
        "",
        "| task | variant | steps | seconds | samples/s | ms/step | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in doc["tasks"].values():
        for v in "abcd":
            r = t["runs"][v]
            lines.append(
                f"| {t['task']} | ({v}) | {r['steps']} | {r['seconds']:.2f} | {r['samples_per_second']:,.0f} | "
                f"{r['ms_per_step']:.1f} | {r['precision']} |"
            )
    lines += [
        "",
        "Times and samples/s: each variant's median round; ratios: the median over rounds of the ratio within "
        "a round. Rounds: "
        + ", ".join(
            f"{t['rounds']} interleaved rounds for {t['task']} (CPU busy before each round, from /proc/stat: "
            + ", ".join("?" if b is None else f"{b:.0%}" for b in t["cpu_busy_before_rounds"])
            + f"; 1-min load average {t['loadavg_1min'][0]:.2f} before, {t['loadavg_1min'][1]:.2f} after)"
            for t in doc["tasks"].values()
        )
        + ".",
    ]
    lines += [
        "",
        "| task | d/a (target <= 1.10) | b/d (target >= 3.0) | c/a | b/a | d/a, b/d from median times "
        "| (a) GFLOP/s | % bf16 peak | % fp32 peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in doc["tasks"].values():
        r, g, v, rm = t["ratios"], t["gflops"], t["targets"], t["ratios_of_median_times"]
        lines.append(
            f"| {t['task']} | {r['d/a']:.2f} ({fmt_met(v['d/a'])}) | {r['b/d']:.2f} ({fmt_met(v['b/d'])}) | "
            f"{r['c/a']:.2f} | {r['b/a']:.2f} | {rm['d/a']:.2f}, {rm['b/d']:.2f} | {g['a_gflops']:.0f} | "
            f"{g['a_fraction_of_bf16_peak']:.2%} | {g['a_fraction_of_fp32_peak']:.0%} |"
        )
    lines += [
        "",
        "Training FLOPs = 3 x forward FLOPs of the student's Linear/Conv2d layers (hook counter): "
        + "; ".join(
            f"{t['task']} student {t['gflops']['student_forward_mflop_per_sample']:.1f} MFLOP/sample forward, "
            f"teacher {t['gflops']['teacher_forward_mflop_per_sample']:.1f}"
            for t in doc["tasks"].values()
        )
        + ".",
        "",
        "One-off teacher cache builds (not in the step timing): "
        + "; ".join(
            f"{t['task']} {t['cache']['build_seconds']:.1f} s for {t['cache']['images']:,} images x "
            f"{t['cache']['draws']} draw(s), {t['cache']['disk_mb']:.1f} MB"
            for t in doc["tasks"].values()
        )
        + ".",
    ]
    acc_tasks = [t for t in doc["tasks"].values() if "accuracy" in t]
    if acc_tasks:
        lines += [
            "",
            "Accuracy after a short fixed schedule, (b) against (d): same teacher, same initial student weights "
            f"(seed {doc['settings']['seed'] + 1}), same epochs, SGD momentum 0.9 + cosine, KD T=4, alpha 0.9, beta 0.1; "
            "test accuracy in plain fp32 for both:",
            "",
            "| task | teacher | teacher test acc | epochs | (b) test acc | (d) test acc | b - d (target within 0.5) "
            "| (d), another seed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in acc_tasks:
            a = t["accuracy"]
            lines.append(
                f"| {t['task']} | {t['teacher']['source']} | {t['teacher']['test_accuracy'] * 100:.2f}% | "
                f"{a['epochs']} | {a['b']['test_accuracy'] * 100:.2f}% | {a['d']['test_accuracy'] * 100:.2f}% | "
                f"{a['diff_points']:+.2f} ({fmt_met(t['targets']['accuracy'])}) | "
                f"{a['d_other_seed']['test_accuracy'] * 100:.2f}% (seed {a['d_other_seed']['seed']}) |"
            )
    mnist = doc["tasks"].get("mnist")
    if mnist:
        v = mnist["targets"]["mlp_gflops"]
        lines += [
            "",
            f"MLP GFLOP/s target (>= 50% of the bf16 peak): {v['value']:.2%}, {fmt_met(v)}.",
        ]
    notes = [
        f"- {t['task']} {k}: {v['note']}"
        for t in doc["tasks"].values()
        for k, v in t["targets"].items()
        if v.get("note") and (not v["met"] or k in ("d/a", "b/d"))
    ]
    if notes:
        lines += ["", "What limits each figure (measured pieces, ms per batch of 128):", "", *notes]
    lines += isolation_lines(doc)
    lines += ["", MARK_END]
    return "\n".join(lines)


def isolation_lines(doc: dict[str, Any]) -> list[str]:
    """Return the table of where (b)'s gap to (d) comes from (issue 29), or a line saying it is not measured."""
    tasks = [t for t in doc["tasks"].values() if t.get("isolation")]
    head = [
        "",
        "Where the gap between (b) and (d) comes from, one change at a time (own interleaved rounds):",
        "",
    ]
    head += [f"- ({k}) {v}" for k, v in ISOLATION.items()]
    if not tasks:
        return [
            *head,
            "",
            "Not measured yet: these runs predate the isolation rounds (`python benchmarks/speed.py` adds them).",
        ]
    lines = [*head, "", "| task | " + " | ".join(f"{k}: {v}" for k, v in ISOLATION_RATIOS.items()) + " | product | (e) precision |",
             "|---|" + "---|" * (len(ISOLATION_RATIOS) + 2)]  # fmt: skip
    for t in tasks:
        r = t["isolation"]["ratios"]
        product = math.prod(r[k] for k in ISOLATION_RATIOS)
        cells = " | ".join(f"{r[k]:.2f}" for k in ISOLATION_RATIOS)
        lines.append(
            f"| {t['task']} | {cells} | {product:.2f} | {t['isolation']['runs']['e']['precision']} |"
        )
    lines += ["", "Each ratio is the median over rounds of the two times within a round; the product is (b)/(d) "
              "as these rounds measured it. The tutorial loop (b) stands for the distillation loops of PyTorch's "
              "knowledge-distillation tutorial and of most repositories that follow it (a Dataset with "
              "per-sample transforms, a DataLoader with workers, fp32)."]  # fmt: skip
    return lines


def _finished_range(tasks: dict[str, Any]) -> list[str]:
    """Return the earliest and latest 'finished' stamps of the parts behind the results (resumed runs)."""
    stamps: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if isinstance(x.get("finished"), str):
                stamps.append(x["finished"])
            for v in x.values():
                walk(v)

    walk(tasks)
    return [min(stamps), max(stamps)] if stamps else []


def render_stored(results_root: Path = ROOT / "benchmarks" / "results") -> str:
    """Return the RESULTS.md section from the committed benchmarks/results/speed.json, without timing."""
    return markdown(json.loads((results_root / "speed.json").read_text()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="under a minute: MNIST only, few steps, no accuracy")
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None, help="default: mnist cifar")
    ap.add_argument("--steps-mnist", type=int, default=None, help="timed steps (default 300, quick 100)")
    ap.add_argument("--steps-cifar", type=int, default=None, help="timed steps (default 100, quick 8)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 10, quick 3)")
    ap.add_argument("--acc-epochs-mnist", type=int, default=3, help="accuracy check epochs for MNIST")
    ap.add_argument("--acc-epochs-cifar", type=int, default=3, help="accuracy check epochs for CIFAR")
    ap.add_argument(
        "--teacher-epochs-mnist", type=int, default=3, help="MNIST teacher epochs (if no checkpoint to reuse)"
    )
    ap.add_argument(
        "--teacher-epochs-cifar",
        type=int,
        default=10,
        help="CIFAR teacher epochs (if no checkpoint to reuse)",
    )
    for t in ("mnist", "cifar"):
        ap.add_argument(
            f"--{t}-teacher",
            default=None,
            help=f"reuse this kdkit teacher checkpoint for {t} (default: search)",
        )
    ap.add_argument("--no-accuracy", action="store_true", help="skip the accuracy check")
    ap.add_argument(
        "--rounds", type=int, default=None, help="interleaved timing rounds, median kept (3; quick 1)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    ap.add_argument(
        "--runs-dir", type=Path, default=None, help="teacher/cache directory (default benchmarks/runs/speed)"
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    args.tasks = args.tasks or (["mnist"] if args.quick else ["mnist", "cifar"])
    args.train_limit = {"mnist": None, "cifar": 4096 if args.quick else None}
    args.steps = {
        "mnist": args.steps_mnist or (100 if args.quick else 300),
        "cifar": args.steps_cifar or (8 if args.quick else 100),
    }
    args.rounds = {
        "mnist": args.rounds or (1 if args.quick else 15),
        "cifar": args.rounds or (1 if args.quick else 3),
    }
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 10)
    args.acc_epochs = {"mnist": args.acc_epochs_mnist, "cifar": args.acc_epochs_cifar}
    args.teacher_epochs = {"mnist": args.teacher_epochs_mnist, "cifar": args.teacher_epochs_cifar}
    args.breakdown_steps = {"mnist": 100, "cifar": 10}
    args.peak_size, args.peak_repeats = (2048, 3) if args.quick else (4096, 5)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    for tname in args.tasks:
        teacher_checkpoint_arg(TASKS[tname], args)  # a wrong path fails here, before anything runs
    t_start = time.perf_counter()
    console = make_console()

    def say(msg: str) -> None:
        console.print(msg, highlight=False, markup=False)

    results_root = args.out or ROOT / "benchmarks" / "results"
    name = "speed_quick" if args.quick else "speed"
    parts = Parts(None if args.quick else results_root / name)
    tmp = tempfile.TemporaryDirectory(prefix="kdkit-speed-") if args.quick else None
    runs_dir = Path(tmp.name) if tmp else (args.runs_dir or ROOT / "benchmarks" / "runs" / "speed")
    try:
        tasks: dict[str, Any] = {}
        for tname in args.tasks:
            rec = run_task(TASKS[tname], args, parts, runs_dir, runs_dir / "cache", say)
            rec["targets"] = verdicts(rec)
            tasks[tname] = rec
    finally:
        if tmp is not None:
            tmp.cleanup()
    doc = {
        "command": (f"KDKIT_DATA={os.environ['KDKIT_DATA']} " if os.environ.get("KDKIT_DATA") else "")
        + "python benchmarks/speed.py"
        + "".join(f" {a}" for a in raw),
        "machine": machine(),
        "date": dt.date.today().isoformat(),
        "quick": args.quick,
        "settings": {
            "seed": args.seed,
            "batch_size": BATCH,
            "steps": {t: args.steps[t] for t in args.tasks},
            "warmup": args.warmup,
            "accuracy_epochs": None
            if args.quick or args.no_accuracy
            else {t: args.acc_epochs[t] for t in args.tasks},
            "teacher_epochs_if_trained": {t: args.teacher_epochs[t] for t in args.tasks},
        },
        "targets": TARGETS,
        "peaks": {t: rec["peaks"] for t, rec in tasks.items()},
        "tasks": tasks,
        "parts_finished": _finished_range(tasks),
        "invocation_minutes": (time.perf_counter() - t_start) / 60,
    }
    results_root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_root / f"{name}.json", json.dumps(doc, indent=2))
    section = markdown(doc)
    if not args.quick:
        update_results_md(section, ROOT / "benchmarks" / "RESULTS.md", (MARK_START, MARK_END))
    print(section)
    print(
        "ratios: "
        + " | ".join(
            f"{t} d/a={rec['ratios']['d/a']:.2f} b/d={rec['ratios']['b/d']:.2f}" for t, rec in tasks.items()
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
