"""Teacher outputs served without a teacher forward per step: precomputed in memory, or cached on disk.

The cache keeps K fixed augmentation draws per image, keyed by the teacher's weights, the data, the
augmentation, the precision and the normalisation (`kdkit.teacher_cache`), so that a second run reuses it.
Sentences have one logit row each, keyed by the teacher's weights and the token ids (`kdkit.sentence_cache`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from kdkit import distributed
from kdkit.config import ExperimentConfig
from kdkit.console import make_console
from kdkit.data.bundle import load_data, make_loader
from kdkit.data.loader import Augment, AugParams
from kdkit.data.sources import ArrayDataset
from kdkit.data.splits import omit_classes
from kdkit.data.text import TextDataset
from kdkit.engine import Engine
from kdkit.errors import ConfigError
from kdkit.metrics import MetricsLogger
from kdkit.model_io import load_model
from kdkit.phases.context import RunContext
from kdkit.preflight import preflight
from kdkit.runtime import resolve_runtime
from kdkit.sentence_cache import load_sentence_logits, save_sentence_logits, sentence_cache_key
from kdkit.teacher import FrozenTeacher
from kdkit.teacher_cache import CacheSpec, TeacherCache, cache_home, cache_key, disk_bytes, draws_for


def default_cache_root() -> Path:
    """Return where teacher caches live by default: $KDKIT_CACHE/teacher-outputs or ~/.cache/kdkit/teacher-outputs."""
    return cache_home() / "teacher-outputs"


def precomputed_logits(
    ctx: RunContext, teacher: nn.Module, transfer: ArrayDataset | TextDataset
) -> torch.Tensor:
    """Return the teacher's logits for every image (sentence) of the transfer set, unaugmented, in order (CPU fp32).

    Sentences run in order of length, so that each batch is padded little; the logits come back in set order.
    """
    bs = ctx.cfg.runtime.eval_batch_size
    if isinstance(transfer, TextDataset) and transfer.lengths is not None:
        order = np.argsort(transfer.lengths, kind="stable")
        plain = make_loader(transfer.subset(order, name=transfer.name), ctx.bundle, bs, train=False)
        by_length = ctx.engine.predict_logits(teacher, plain, ctx.bundle.task)
        logits = torch.empty_like(by_length)
        logits[torch.from_numpy(order)] = by_length
        return logits
    plain = make_loader(transfer, ctx.bundle, bs, train=False, channels_last=ctx.cl)
    return ctx.engine.predict_logits(teacher, plain, ctx.bundle.task)


def cached_sentence_logits(ctx: RunContext, teacher: nn.Module, transfer: TextDataset) -> torch.Tensor:
    """Return the teacher's logits for every sentence of the transfer set (CPU fp32, set order): read from the
    on-disk cache when an earlier run made them, else computed as `precompute` does and written there."""
    assert transfer.input_ids is not None and transfer.lengths is not None  # tokenised when the data is read
    c, engine = ctx.cfg.distill.cache, ctx.engine
    bs = ctx.cfg.runtime.eval_batch_size
    model = teacher.model if isinstance(teacher, FrozenTeacher) else teacher
    key = sentence_cache_key(model, transfer.input_ids, transfer.lengths, engine.runtime.precision, bs)
    directory = (Path(c.dir).expanduser() if c.dir else default_cache_root()) / key
    logits = load_sentence_logits(directory, key, len(transfer))
    if logits is not None:
        engine.say(f"teacher cache read: {len(transfer)} sentences from {directory}")
        return logits
    t0 = time.perf_counter()
    logits = precomputed_logits(ctx, teacher, transfer)
    if distributed.info().is_main:
        save_sentence_logits(directory, key, logits)
    distributed.barrier()
    engine.say(
        f"teacher cache built in {time.perf_counter() - t0:.1f}s: {len(transfer)} sentences, "
        f"{logits.numel() * 4 / 2**20:.1f} MB at {directory}"
    )
    return logits


def _cache_spec(ctx: RunContext, augment: Augment) -> CacheSpec:
    c = ctx.cfg.distill.cache
    return CacheSpec(draws=c.draws if augment.enabled else 1, topk=c.topk, shard_size=c.shard_size)


def cached_logits(
    ctx: RunContext, frozen: FrozenTeacher, transfer: ArrayDataset, augment: Augment, seed: int
) -> tuple[torch.Tensor, AugParams | None]:
    """Return cached teacher logits (N, K, C) for the transfer set and its draws, building them if needed."""
    c, engine, bundle = ctx.cfg.distill.cache, ctx.engine, ctx.bundle
    spec = _cache_spec(ctx, augment)
    images, labels = torch.as_tensor(transfer.images), torch.as_tensor(transfer.labels)
    norm_stats = (bundle.mean, bundle.std)
    key = cache_key(frozen.model, images, labels, augment, spec, seed, engine.runtime.precision, norm_stats)
    root = Path(c.dir).expanduser() if c.dir else default_cache_root()
    cache = TeacherCache(root / key, key, spec)
    draws = draws_for(len(images), augment, spec, seed, tuple(images.shape[-2:]))
    if not cache.complete():
        t0 = time.perf_counter()
        norm = make_loader(transfer, bundle, 1, train=False, channels_last=ctx.cl).normalize
        dev = engine.runtime.device

        def teacher_fn(x: torch.Tensor) -> torch.Tensor:
            with engine.runtime.autocast():
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
            batch_size=ctx.cfg.runtime.eval_batch_size,
            shards=range(dinfo.rank, n_shards, dinfo.world_size),
            write_manifest=False,
        )
        distributed.barrier()
        if dinfo.is_main:
            cache.write_manifest(len(images), n_shards)
        distributed.barrier()
        mb = disk_bytes(len(images), spec.draws, bundle.num_classes, spec.topk) / 2**20
        engine.console.print(
            f"teacher cache built in {time.perf_counter() - t0:.1f}s: {len(images)} images x {spec.draws} "
            f"draws, {mb:.1f} MB at {cache.directory}",
            highlight=False,
            markup=False,
        )
    return cache.load(bundle.num_classes), draws


def build_teacher_cache(cfg: ExperimentConfig, console: Console | None = None) -> Path:
    """Build (or verify) the on-disk teacher cache of a config's distillation phase; return its directory."""
    if not cfg.teacher.checkpoint:
        raise ConfigError("kdkit cache needs teacher.checkpoint: the teacher whose outputs are cached")
    console = console or make_console()
    runtime = resolve_runtime(cfg.runtime.precision, cfg.runtime.threads, cfg.runtime.channels_last)
    engine = Engine(runtime, MetricsLogger(None), console, progress=False)
    bundle = load_data(cfg.data, cfg.seed)
    if bundle.is_text:
        raise ConfigError(
            "kdkit cache builds image caches ahead of a run; on sentence data the run itself builds its cache "
            "(distill.teacher_outputs: cache) on first use and every later run of the teacher reads it"
        )
    # The cache serves a run of this config: refuse what that run would refuse (a teacher of other classes,
    # image size or test hold-out, bad terms ...) before spending the teacher's forward passes.
    preflight(cfg, bundle)
    ctx = RunContext(cfg, bundle, engine, Path(cfg.teacher.checkpoint).parent, resume=False)
    teacher, _ = load_model(cfg.teacher.checkpoint)
    d, dcfg = cfg.distill, cfg.distill_train()
    transfer = omit_classes(bundle.train, d.omit_classes) if d.omit_classes else bundle.train
    frozen = FrozenTeacher(engine.prepare(teacher), dtype=runtime.amp_dtype)
    augment = Augment(**dcfg.augment.model_dump())
    logits, _ = cached_logits(ctx, frozen, transfer, augment, cfg.seed + 1)
    spec = _cache_spec(ctx, augment)
    console.print(
        f"teacher cache ready: {tuple(logits.shape)} logits "
        f"({disk_bytes(len(transfer), spec.draws, bundle.num_classes, spec.topk) / 2**20:.1f} MB)",
        highlight=False,
        markup=False,
    )
    c = cfg.distill.cache
    return Path(c.dir).expanduser() if c.dir else default_cache_root()
