"""The `kdkit` command line: run, quickstart, train, distill, eval, generate, compress, cache, sweep, config,
models."""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from kdkit import distributed
from kdkit.config import CompressConfig, load_config
from kdkit.config.reference import config_markdown, config_text, sections
from kdkit.console import make_console
from kdkit.engine import Engine
from kdkit.errors import KdkitError
from kdkit.eval_data import eval_loader
from kdkit.experiment import plan_experiment, run_experiment
from kdkit.generation import Sampling, generate
from kdkit.hf_export import export_hf
from kdkit.lm_io import load_lm
from kdkit.model_io import load_model
from kdkit.models import list_models
from kdkit.phases.teacher_outputs import build_teacher_cache
from kdkit.run_dir import default_run_dir
from kdkit.runtime import resolve_runtime
from kdkit.stoppable import run_until_stopped
from kdkit.sweep import sweep_until_stopped

EPILOG = "Data is looked for in --data-root / data.root, then $KDKIT_DATA, then ~/.cache/kdkit/data."


def _add_data_root(p: argparse.ArgumentParser, what: str = "sets data.root") -> None:
    """Add --data-root, which every parser whose footer (EPILOG) advertises it must have."""
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help=f"data directory ({what}; default: data.root, then $KDKIT_DATA, then ~/.cache/kdkit/data)",
    )


def _add_overrides(p: argparse.ArgumentParser, help: str) -> None:
    """Add the repeatable --set KEY=VALUE (collected in args.overrides)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _data_root_override(args: argparse.Namespace) -> list[str]:
    """Return the `data.root=...` override of --data-root, or nothing when it is not given."""
    root = getattr(args, "data_root", None)
    return [f"data.root={json.dumps(root)}"] if root else []  # JSON strings are YAML: any path survives


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="directory for this run's artifacts (default: runs/<name>-<timestamp>)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous kdkit run in --run-dir")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --run-dir from its last checkpoint (same config and --set)",
    )
    _add_overrides(
        p, "override a config field, e.g. --set student.train.epochs=5 (repeatable; values are YAML)"
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the run's phases (checked by preflight on the data) and exit without training",
    )


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2, got {text!r}"
        ) from None
    return seeds


def _add_run_parser(sub: Any) -> None:
    """Add the `run` subcommand."""

    p = sub.add_parser(
        "run",
        help="whole experiment: teacher, scratch student, distilled student, table",
        description="Train (or load) the teacher, train the student from scratch as the baseline, "
        "distill the same student from the teacher, evaluate all and write the run directory.",
        epilog=EPILOG,
    )
    p.add_argument("config", help="experiment YAML (see configs/)")
    _add_common(p)
    _add_data_root(p)
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="run data-parallel on N local processes (torchrun; gloo on CPU, NCCL on GPU)",
    )


def _add_quickstart_parser(sub: Any) -> None:
    """Add the `quickstart` subcommand."""
    p = sub.add_parser(
        "quickstart",
        help="the whole experiment on the embedded MNIST subset (no data needed)",
        description="Run the packaged quickstart config on the MNIST subset shipped inside kdkit.",
    )
    _add_common(p)


def _add_train_parser(sub: Any) -> None:
    """Add the `train` subcommand."""
    p = sub.add_parser(
        "train",
        help="train one network on hard labels (teacher or student-from-scratch phase)",
        epilog=EPILOG,
    )
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--role", choices=["teacher", "student"], default="teacher", help="which network to train")
    _add_common(p)
    _add_data_root(p)


def _add_distill_parser(sub: Any) -> None:
    """Add the `distill` subcommand."""
    p = sub.add_parser(
        "distill",
        help="distill the student from a teacher checkpoint (or train the teacher first)",
        epilog=EPILOG,
    )
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--teacher", help="teacher checkpoint (.safetensors/.json pair written by kdkit)")
    _add_common(p)
    _add_data_root(p)


def _add_eval_parser(sub: Any) -> None:
    """Add the `eval` subcommand."""
    p = sub.add_parser("eval", help="evaluate a kdkit model checkpoint on a data set", epilog=EPILOG)
    p.add_argument("checkpoint", help="model checkpoint (.safetensors/.json pair written by kdkit)")
    p.add_argument("--dataset", default=None, help="data set name (default: the one the run used)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    _add_data_root(p, "where the checkpoint's data set is looked for")
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")


def _add_generate_parser(sub: Any) -> None:
    """Add the `generate` subcommand."""
    p = sub.add_parser(
        "generate",
        help="sample text from a language model checkpoint (a GPT saved with its tokenizer)",
        description="Continue --prompt with a GPT checkpoint written by kdkit.lm_io.save_lm (NAME.safetensors, "
        "NAME.json and NAME.tokenizer.json side by side) and print the prompt and its continuation.",
    )
    p.add_argument(
        "checkpoint", help="language model checkpoint (.safetensors/.json pair, tokenizer beside it)"
    )
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to add (default: 64)")
    p.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (default 1)"
    )
    p.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens"
    )
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling: the top mass P")
    p.add_argument("--greedy", action="store_true", help="take the most likely token at each step")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (same seed, same text)")


def _add_export_hf_parser(sub: Any) -> None:
    """Add the `export-hf` subcommand."""
    p = sub.add_parser(
        "export-hf",
        help="write a run's hf: model (fine-tuned teacher, distilled student) as a Hugging Face folder",
        description="Write the hf: model of a kdkit checkpoint as transformers' save_pretrained does (config.json, "
        "model.safetensors, the tokenizer of the folder it came from), loadable with from_pretrained(OUT).",
    )
    p.add_argument(
        "checkpoint", help="model checkpoint of an hf: model (.safetensors/.json pair written by kdkit)"
    )
    p.add_argument("out", help="folder to write (must not exist, or be empty)")


def _add_compress_parser(sub: Any) -> None:
    """Add the `compress` subcommand."""
    p = sub.add_parser(
        "compress",
        help="prune, distill again, quantize to int8 and export to ONNX the distilled student of a run",
        description="Compress the distilled student of a finished run and write RUN_DIR/compress/ "
        "(ONNX models, pruned checkpoint, summary.json, report.md, accuracy-vs-latency plot).",
        epilog=EPILOG,
    )
    p.add_argument("run_dir", help="directory of a finished kdkit run (holds config.yaml and checkpoints/)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous RUN_DIR/compress/")
    _add_data_root(p, "replaces the run's data.root")
    _add_overrides(
        p, "override a compress setting, e.g. --set compress.prune_target=0.3 (repeatable; values are YAML)"
    )


def _add_cache_parser(sub: Any) -> None:
    """Add the `cache` subcommand."""
    p = sub.add_parser(
        "cache",
        help="compute the teacher's outputs for the transfer set once, on disk",
        description="Build the teacher output cache of the distillation phase (teacher.checkpoint "
        "is the teacher; distill.cache sets draws, top-k and the directory).",
        epilog=EPILOG,
    )
    p.add_argument("config", help="experiment YAML")
    _add_overrides(p, "override a config field (repeatable)")
    _add_data_root(p)


def _add_sweep_parser(sub: Any) -> None:
    """Add the `sweep` subcommand."""
    p = sub.add_parser(
        "sweep",
        help="run a config over a grid of values (e.g. a temperature study), resumable, with one table",
        description="Run CONFIG for every combination of the --vary values and every seed. What the grid "
        "does not vary (the teacher, the scratch student) is trained once per seed and shared. One result "
        "JSON per finished run in OUT/results/; run the same command again to continue an interrupted sweep.",
        epilog=EPILOG,
    )
    p.add_argument("config", help="experiment YAML")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        required=True,
        metavar="KEY=[V1,V2,...]",
        help="a grid axis, e.g. --vary distill.temperature=[1,2,4,8] (repeatable: the grid is the product)",
    )
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        metavar="S1,S2,...",
        help="seeds to run every point with (default: the config's seed)",
    )
    p.add_argument(
        "--out", required=True, help="sweep directory: runs/, results/, sweep.json, sweep.md, sweep.png"
    )
    _add_overrides(p, "override a config field for every run (repeatable; values are YAML)")
    _add_data_root(p)


def _add_config_parser(sub: Any) -> None:
    """Add the `config` subcommand."""
    p = sub.add_parser(
        "config",
        help="print every config key with its type, default and description",
        description="Print the config reference generated from kdkit's config models (docs/CONFIG.md is "
        "the same, written out with --markdown).",
    )
    p.add_argument("--defaults", action="store_true", required=True, help="print the keys and their defaults")
    p.add_argument("--section", default=None, help=f"only this top-level section ({', '.join(sections())})")
    p.add_argument("--markdown", action="store_true", help="print docs/CONFIG.md (every section) instead")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the kdkit CLI."""
    parser = argparse.ArgumentParser(
        prog="kdkit",
        description="Knowledge distillation toolkit: train a teacher, distill a student, measure.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_parser(sub)
    _add_quickstart_parser(sub)
    _add_train_parser(sub)
    _add_distill_parser(sub)
    _add_eval_parser(sub)
    _add_generate_parser(sub)
    _add_export_hf_parser(sub)
    _add_compress_parser(sub)
    _add_cache_parser(sub)
    _add_sweep_parser(sub)
    _add_config_parser(sub)
    sub.add_parser("models", help="list the registered model names")
    return parser


def quickstart_config_path() -> Path:
    """Return the path of the packaged quickstart config."""
    return Path(str(resources.files("kdkit") / "configs" / "quickstart.yaml"))


def resume_command(run_dir: Path) -> str:
    """Return the exact command that resumes this invocation's run."""
    argv = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
    if "--run-dir" not in argv and not any(a.startswith("--run-dir=") for a in argv):
        argv += ["--run-dir", str(run_dir)]
    return shlex.join(["kdkit", *argv, "--resume"])


def _launch(nproc: int) -> int:
    """Re-run this command as N processes under torch's elastic launcher; return its exit status."""

    argv = list(sys.argv[1:])
    for i, a in enumerate(argv):
        if a == "--nproc":
            del argv[i : i + 2]
            break
        if a.startswith("--nproc="):
            del argv[i]
            break
    with socket.socket() as sock:  # a free port on loopback for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "kdkit",
        *argv,
    ]
    return subprocess.call(cmd)


def _run(args: argparse.Namespace, console: Console) -> int:

    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        raise KdkitError(f"--nproc must be >= 1, got {nproc}")
    if nproc and nproc > 1:
        return _launch(nproc)
    overrides = list(args.overrides) + _data_root_override(args)
    path = quickstart_config_path() if args.command == "quickstart" else Path(args.config)
    if args.command == "train":
        overrides.append("phases=[teacher]" if args.role == "teacher" else "phases=[scratch]")
    elif args.command == "distill":
        if args.teacher:
            overrides += [f"teacher.checkpoint={json.dumps(args.teacher)}", "phases=[distill]"]
        else:
            overrides.append("phases=[teacher, distill]")
    cfg = load_config(path, overrides)
    if args.plan:
        print(plan_experiment(cfg).describe())
        return 0
    try:
        return _run_config(cfg, args, console)
    finally:
        distributed.shutdown()


def _run_config(cfg: object, args: argparse.Namespace, console: Console) -> int:

    if args.resume and args.overwrite:
        raise KdkitError("--resume and --overwrite contradict each other: choose one")
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    return run_until_stopped(
        lambda: run_experiment(cfg, run_dir, overwrite=args.overwrite, resume=args.resume, console=console),
        console,
        f"resume with:\n  {resume_command(run_dir)}",
    )


def _eval(args: argparse.Namespace, console: Console) -> int:

    model, meta = load_model(args.checkpoint)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise KdkitError(f"{args.checkpoint}: the checkpoint does not name its data set; pass --dataset")
    loader, classes, task = eval_loader(
        args.checkpoint, meta, dataset, args.split, args.data_root, args.batch_size
    )
    if len(classes) != meta["num_classes"]:
        raise KdkitError(f"{dataset} has {len(classes)} classes but the model predicts {meta['num_classes']}")
    engine = Engine(resolve_runtime("fp32"), console=console)
    res = engine.evaluate(engine.prepare(model), loader, meta["num_classes"], task)
    out = {
        "checkpoint": str(args.checkpoint),
        "dataset": dataset,
        "split": args.split,
        "accuracy": res.accuracy,
        "errors": res.errors,
        "total": res.total,
    }
    if meta.get("task") == "causal_lm":  # per token: accuracy is next-token accuracy, total counts tokens
        out.update(perplexity=res.perplexity, loss=res.loss)
    print(json.dumps(out))
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Print the prompt continued by the checkpoint's model (see `_add_generate_parser`)."""
    model, tokenizer, _ = load_lm(args.checkpoint)
    try:
        sampling = Sampling(args.greedy, args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        raise KdkitError(str(exc)) from None
    ids = tokenizer.encode(args.prompt, add_special_tokens=False).ids
    if not ids:
        raise KdkitError("--prompt is empty: give at least one character to continue")
    if args.max_new_tokens < 1:
        raise KdkitError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if len(ids) + args.max_new_tokens > model.block_size:
        raise KdkitError(
            f"the prompt ({len(ids)} tokens) and --max-new-tokens {args.max_new_tokens} exceed the model's "
            f"context of {model.block_size} tokens; shorten the prompt or ask for fewer tokens"
        )
    prompt = torch.tensor([ids], dtype=torch.long)
    out = generate(model, prompt, args.max_new_tokens, sampling, seed=args.seed)
    print(tokenizer.decode(out[0].tolist()))
    return 0


def _compress(args: argparse.Namespace, console: Console) -> int:

    config_path = Path(args.run_dir) / "config.yaml"
    if not config_path.is_file():
        raise KdkitError(f"{args.run_dir!r} holds no kdkit run: {str(config_path)!r} is missing")
    # Overrides go through the run's config so that `compress.*` keys are validated like any other.
    cfg = load_config(config_path, args.overrides).compress or CompressConfig()
    from kdkit.compress import compress_run  # lazy: needs the optional `compress` dependencies

    compress_run(args.run_dir, cfg, console, overwrite=args.overwrite, data_root=args.data_root)
    return 0


def _sweep(args: argparse.Namespace, console: Console) -> int:
    again = shlex.join(["kdkit", *sys.argv[1:]])
    overrides = args.overrides + _data_root_override(args)
    return sweep_until_stopped(args.config, overrides, args.vary, args.seeds, args.out, console, again)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kdkit` command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    console = make_console()
    try:
        if args.command == "models":
            print("\n".join(list_models()))
            return 0
        if args.command == "config":
            if args.markdown and args.section:
                raise KdkitError("--markdown prints the whole reference: leave out --section")
            print(config_markdown() if args.markdown else config_text(args.section), end="")
            return 0
        if args.command == "eval":
            return _eval(args, console)
        if args.command == "generate":
            return _generate(args)
        if args.command == "export-hf":
            print(export_hf(args.checkpoint, args.out))
            return 0
        if args.command == "cache":
            build_teacher_cache(load_config(args.config, args.overrides + _data_root_override(args)), console)
            return 0
        if args.command == "compress":
            return _compress(args, console)
        if args.command == "sweep":
            return _sweep(args, console)
        return _run(args, console)
    except KdkitError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
