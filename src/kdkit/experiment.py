"""One whole experiment: plan it, check the plan, run its phases, report and keep the artifacts."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from kdkit import distributed
from kdkit.checkpoint import atomic_write_text
from kdkit.config import ExperimentConfig
from kdkit.console import RunConsole, make_console
from kdkit.data.bundle import load_data
from kdkit.data.lm_text import save_tokenizer
from kdkit.engine import Engine
from kdkit.errors import RunDirError
from kdkit.executor import execute
from kdkit.metrics import MetricsLogger
from kdkit.phases.context import RunContext
from kdkit.plan import Plan
from kdkit.preflight import check_plan
from kdkit.report import print_table
from kdkit.run_dir import check_resumable, default_run_dir, prepare_run_dir
from kdkit.runtime import resolve_runtime
from kdkit.strategies import make_plan


def plan_experiment(cfg: ExperimentConfig) -> Plan:
    """Return the plan of a config, checked by preflight on its data (nothing trains, nothing is written)."""
    plan = make_plan(cfg)  # config-only mistakes first, before the data is read
    check_plan(plan, cfg, load_data(cfg.data, cfg.seed))
    return plan


def _open_run_dir(cfg: ExperimentConfig, run_dir: str | Path | None, overwrite: bool, resume: bool) -> Path:
    """Return the run directory every rank writes to: a new one, or the run being resumed (checked)."""
    main = distributed.info().is_main
    if resume:
        if not run_dir:
            raise RunDirError("--resume needs --run-dir: the directory of the run to continue")
        run_dir = Path(run_dir)
        check_resumable(run_dir, cfg)
    elif main:
        run_dir = prepare_run_dir(run_dir or default_run_dir(cfg), overwrite=overwrite)
    if main:
        assert run_dir is not None
        atomic_write_text(Path(run_dir) / "config.yaml", cfg.to_yaml())
    # Every rank uses rank 0's directory (a default name carries a timestamp that could differ per rank).
    return Path(str(distributed.broadcast_object(str(run_dir) if run_dir else "")) or default_run_dir(cfg))


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
    console = console or make_console()
    # The plan, the data and every check that needs no training come first: a mistake fails in seconds,
    # before the run directory is made and before any phase trains.
    plan = make_plan(cfg)
    bundle = load_data(cfg.data, cfg.seed)
    check_plan(plan, cfg, bundle)
    dinfo = distributed.init(cfg.runtime.backend)
    main = dinfo.is_main
    if not main:
        console = Console(file=io.StringIO())  # one voice per job
    run_dir = _open_run_dir(cfg, run_dir, overwrite, resume)
    runtime = resolve_runtime(cfg.runtime.precision, cfg.runtime.threads, cfg.runtime.channels_last)
    logger = MetricsLogger(run_dir if main else None, tensorboard=cfg.runtime.tensorboard)
    if main and isinstance(console, RunConsole):
        console.open_log(run_dir / "console.log")
    rt = cfg.runtime
    engine = Engine(
        runtime, logger, console, log_every=rt.log_every, progress=rt.progress, compile=rt.compile
    )
    t_start = time.perf_counter()
    try:
        console.print(
            f"data {cfg.data.dataset}: train {len(bundle.train)}, val {len(bundle.val)}, test {len(bundle.test)}; "
            f"precision {runtime.precision}, {torch.get_num_threads()} threads, run dir {run_dir}",
            highlight=False,
        )
        console.print(bundle.test_source, highlight=False, markup=False)
        if bundle.augmented is not None:
            console.print(
                f"augmented sentences: {len(bundle.augmented)} drafts of the {len(bundle.train)} training sentences "
                "(data.text.augment), in the transfer set, taught by the teacher only",
                highlight=False,
                markup=False,
            )
        for warning in bundle.warnings:
            console.print(f"warning: {warning}", style="yellow", highlight=False, markup=False)
        if bundle.is_lm and main:
            save_tokenizer(bundle.tokenizer, run_dir / "tokenizer.json")  # the run's tokenizer, with the run
        ctx = RunContext(cfg, bundle, engine, run_dir / "checkpoints", resume)
        execute(plan, ctx)
        summary = {
            "name": cfg.name,
            "dataset": cfg.data.dataset,
            "seed": cfg.seed,
            "precision": runtime.precision,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "wall_seconds": round(time.perf_counter() - t_start, 2),
            "run_dir": str(run_dir),
            "data": {"test": bundle.test_source, "warnings": list(bundle.warnings)},
            "models": ctx.records,
        }
        if main:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
            print_table(summary, console)
            if plan.compress and cfg.compress is not None:
                from kdkit.compress import (
                    compress_run,  # optional libraries (onnx, onnxruntime, torch-pruning)
                )

                # End to end: prune, distill again, int8, ONNX and latency into run_dir/compress/.
                summary["compress"] = compress_run(run_dir, cfg.compress, console, overwrite=resume)
        distributed.barrier()
        return summary
    finally:
        logger.close()
        if isinstance(console, RunConsole):
            console.close_log()
