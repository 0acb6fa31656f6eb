"""Compress the distilled student of a finished run: prune, distill again, int8, ONNX, measure.

Reads `run_dir/{config.yaml, checkpoints/teacher.*, checkpoints/student_kd.*}` and writes everything to
`run_dir/compress/`. The output is built in a hidden temporary folder beside it and renamed into place
at the end, so an interrupted compression never leaves a half-written `compress/` behind, and an
existing one is replaced only with `overwrite=True`.
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib.metadata
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn

from kdkit.checkpoint import atomic_write_text
from kdkit.compress.export import check_onnx, evaluate_onnx, export_onnx, onnx_tolerance
from kdkit.compress.latency import flops, latency_table, ort_latency, torch_latency
from kdkit.compress.prune import count_macs_params, layer_widths, prune_model, save_pruned_model
from kdkit.compress.qat import QuantizationAware
from kdkit.compress.quantize import op_counts, quantize_onnx
from kdkit.compress.report import plot_accuracy_vs_latency, print_compress_table, report_markdown
from kdkit.compress.text import compress_text_run
from kdkit.config import CompressConfig, CompressDistillConfig, ExperimentConfig, TrainConfig, load_config
from kdkit.console import make_console
from kdkit.data.bundle import DataBundle, load_data, make_loader
from kdkit.data.loader import Augment, InMemoryLoader
from kdkit.engine import Engine
from kdkit.errors import CheckpointError, RunDirError
from kdkit.file_modes import new_dir_mode
from kdkit.metrics import MetricsLogger
from kdkit.model_io import load_model
from kdkit.objective import Objective
from kdkit.run_dir import check_replaceable
from kdkit.runtime import resolve_runtime, seed_everything
from kdkit.teacher import FrozenTeacher

COMPRESS_DIR = "compress"
ROWS = (
    "teacher",
    "student",
    "student_int8",
    "student_int8_qat",
    "pruned_student",
    "int8_student",
    "int8_student_qat",
)
ROW_LABELS = {
    "teacher": "teacher",
    "student": "student (distilled)",
    "student_int8": "int8 student",
    "student_int8_qat": "int8 student (QAT)",
    "pruned_student": "pruned student",
    "int8_student": "int8 pruned student",
    "int8_student_qat": "int8 pruned student (QAT)",
}
# (int8 row: its fp32 row): each int8 model is the same graph as its fp32 model, quantized. The QAT rows
# (only with compress.qat) quantize a copy trained further with int8 rounding emulated.
INT8_OF = {"student_int8": "student", "int8_student": "pruned_student"}
QAT_OF = {"student_int8": "student_int8_qat", "int8_student": "int8_student_qat"}
# Every row of summary.json carries exactly these keys (None where a field does not apply).
ROW_FIELDS = (
    "label",
    "accuracy",
    "errors",
    "test_size",
    "accuracy_backend",
    "params",
    "macs",
    "flops",
    "onnx_file",
    "onnx_mb",
    "safetensors_mb",
    "onnx_max_abs_diff",
    "onnx_tolerance",
    "latency_ms",
    "latency",
)
# What kdkit writes into compress/; overwrite removes these and refuses if anything else is there.
ARTIFACTS = (
    "summary.json",
    "report.md",
    "accuracy_vs_latency.png",
    "metrics.jsonl",
    "teacher.onnx",
    "student.onnx",
    "pruned_student.onnx",
    "pruned_student_int8.onnx",
    "student_int8.onnx",
    "student_qat_int8.onnx",
    "pruned_student_qat_int8.onnx",
    "pruned_student.safetensors",
    "pruned_student.json",
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 4)


def _require(base: Path, what: str) -> None:
    """Raise a CheckpointError naming the missing file of a checkpoint pair."""
    for suffix in (".safetensors", ".json"):
        p = base.with_suffix(suffix)
        if not p.is_file():
            raise CheckpointError(
                f"cannot compress: the {what} checkpoint {str(p)!r} is missing "
                f"(kdkit run writes it in the {'distill' if 'student' in what else 'teacher'} phase)"
            )


def _check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing compress/ without overwrite, or one holding files kdkit did not write."""

    check_replaceable(
        out,
        ARTIFACTS,
        overwrite,
        "compression output",
        "pass overwrite=True (kdkit compress --overwrite) to replace it",
    )


def _run_config(run_dir: Path) -> ExperimentConfig:
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {str(run_dir)!r} does not exist")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{str(run_dir)!r} holds no kdkit run: {str(path)!r} is missing")
    return load_config(path)


def _distill_settings(exp: ExperimentConfig, cfg: CompressConfig) -> CompressDistillConfig:
    if cfg.distill is not None:
        return cfg.distill
    d = exp.distill
    # A run with a custom term list still has response settings; compression distills on logits only.
    return CompressDistillConfig(
        loss=d.loss, temperature=d.temperature, alpha=d.alpha, beta=d.beta, mix=d.mix
    )


class _Compressor:
    """The steps of one compression, sharing the run's data, engine and temporary output folder."""

    def __init__(
        self, run_dir: Path, exp: ExperimentConfig, cfg: CompressConfig, out: Path, console: Console
    ) -> None:
        self.run_dir, self.exp, self.cfg, self.out, self.console = run_dir, exp, cfg, out, console
        rt = exp.runtime
        self.runtime = resolve_runtime(rt.precision, rt.threads, rt.channels_last)
        self.logger = MetricsLogger(out, tensorboard=False)
        self.engine = Engine(self.runtime, self.logger, console, log_every=rt.log_every, progress=rt.progress)
        self.bundle: DataBundle = load_data(exp.data, exp.seed)
        b = self.bundle
        self.sample_shape = (b.in_channels, b.image_size, b.image_size)
        self.test_loader = make_loader(b.test, b, rt.eval_batch_size, train=False)
        self.tcfg: TrainConfig = cfg.finetune or exp.distill_train()
        # A real, normalised batch: what the ONNX numerical check and pruning's tracing run on.
        self.example = next(iter(make_loader(b.test, b, 16, train=False))).x

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def load(self, base: Path, what: str) -> tuple[nn.Module, dict[str, Any]]:
        model, meta = load_model(base)
        b = self.bundle
        if (meta["num_classes"], meta["in_channels"], meta["image_size"]) != (
            b.num_classes,
            b.in_channels,
            b.image_size,
        ):
            raise CheckpointError(
                f"{what} checkpoint {str(base)!r} expects {meta['num_classes']} classes of "
                f"{meta['in_channels']}x{meta['image_size']}px images but the run's data has {b.num_classes} "
                f"of {b.in_channels}x{b.image_size}px"
            )
        return model, meta

    def teach(self, teacher: nn.Module) -> None:
        """Freeze the teacher that every distillation of this compression (pruning rounds, QAT) learns from."""
        self.frozen = FrozenTeacher(self.engine.prepare(teacher))
        self._teacher_logits: Tensor | None = None
        self.val_loader = make_loader(
            self.bundle.val, self.bundle, self.exp.runtime.eval_batch_size, train=False
        )

    def objective(self, tcfg: TrainConfig) -> Objective:
        """Return the response-based distillation loss of the compression (cfg.distill or the run's)."""
        d = _distill_settings(self.exp, self.cfg)
        return Objective.response(d.loss, d.alpha, d.beta, d.temperature, d.mix, tcfg.label_smoothing)

    def train_loader(self, tcfg: TrainConfig, seed: int) -> InMemoryLoader:
        """Return the shuffled transfer-set loader of one distillation; unaugmented, it carries the teacher logits."""
        augment = Augment(**tcfg.augment.model_dump())
        extras: dict[str, Tensor] = {}
        if not augment.enabled:
            if self._teacher_logits is None:
                # One teacher forward per training image serves every unaugmented distillation.
                plain = make_loader(
                    self.bundle.train, self.bundle, self.exp.runtime.eval_batch_size, train=False
                )
                self._teacher_logits = self.engine.predict_logits(self.frozen, plain)
            extras["teacher.logits"] = self._teacher_logits
        seed_everything(seed)
        return make_loader(
            self.bundle.train,
            self.bundle,
            tcfg.batch_size,
            train=True,
            seed=seed,
            augment=augment,
            channels_last=self.runtime.channels_last,
            extras=extras,
        )

    def prune_and_distill(self, student: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        """Prune the student to the target in cfg.iterative_steps rounds, distilling after each round."""
        cfg, by = self.cfg, self.cfg.prune_by
        x1 = self.example[:1]
        macs0, params0 = count_macs_params(student, x1)
        base = macs0 if by == "flops" else params0
        widths0 = layer_widths(student)
        d = _distill_settings(self.exp, cfg)
        objective = self.objective(self.tcfg)
        rounds: list[dict[str, Any]] = []
        model = student
        for step in range(1, cfg.iterative_steps + 1):
            macs, params = count_macs_params(model, x1)
            current = macs if by == "flops" else params
            goal = base * (1.0 - cfg.prune_target * step / cfg.iterative_steps)
            relative = max(0.0, 1.0 - goal / current)
            if relative <= 0.0:
                break
            model, report = prune_model(model, x1, relative, by=by, round_to=cfg.round_to)
            rec = {"round": step, **report.to_dict()}
            rec.pop("widths_before")
            rec.pop("widths_after")
            self.say(
                f"[compress] round {step}/{cfg.iterative_steps}: pruned {report.achieved:.1%} of the remaining "
                f"{by}; {report.params_after:,} params, {report.macs_after:,} MACs"
            )
            if self.tcfg.epochs > 0:
                fit = self.engine.fit(
                    f"prune_distill_{step}",
                    model,
                    objective,
                    self.train_loader(self.tcfg, self.exp.seed + 100 + step),
                    self.tcfg,
                    teacher=self.frozen,
                    val_loader=self.val_loader,
                )
                model = fit.model
                rec["train_seconds"] = round(fit.train_seconds, 3)
                rec["val_accuracy"] = fit.val.accuracy if fit.val is not None else None
            rounds.append(rec)
        macs1, params1 = count_macs_params(model, x1)
        achieved = 1.0 - (macs1 if by == "flops" else params1) / base
        info = {
            "by": by,
            "target": cfg.prune_target,
            "achieved": round(achieved, 4),
            "macs_before": macs0,
            "macs_after": macs1,
            "params_before": params0,
            "params_after": params1,
            "widths_before": widths0,
            "widths_after": layer_widths(model),
            "rounds": rounds,
            "distill": d.model_dump(mode="json"),
            "finetune": self.tcfg.model_dump(mode="json"),
        }
        return model.cpu().float().to(memory_format=torch.contiguous_format), info

    def quantization_aware(
        self, model: nn.Module, calibration: list[Tensor], name: str
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Distill a copy of `model` from the teacher with int8 rounding emulated; return it and a record."""
        qcfg = self.cfg.qat
        assert qcfg is not None
        qa = QuantizationAware(copy.deepcopy(model))
        qa.calibrate(calibration, len(calibration))
        # The validation accuracy of the emulated int8 model, before and after: what QAT changed (None
        # without a validation split).
        has_val = len(self.val_loader.images) > 0
        before = self.engine.evaluate(self.engine.prepare(qa.model), self.val_loader) if has_val else None
        fit = self.engine.fit(
            f"qat_{name}",
            qa.model,
            self.objective(qcfg),
            self.train_loader(qcfg, self.exp.seed + 200),
            qcfg,
            teacher=self.frozen,
            val_loader=self.val_loader,
        )
        after = (
            fit.val
            if fit.val is not None or not has_val
            else self.engine.evaluate(fit.model, self.val_loader)
        )
        trained = qa.remove().cpu().float().to(memory_format=torch.contiguous_format)
        rec = {
            "val_accuracy_emulated_before": before.accuracy if before is not None else None,
            "val_accuracy_emulated_after": after.accuracy if after is not None else None,
            "train_seconds": round(fit.train_seconds, 3),
        }
        change = (
            f"emulated int8 validation accuracy {before.accuracy:.2%} -> {after.accuracy:.2%}"
            if before is not None and after is not None
            else "no validation split to measure it on"
        )
        self.say(f"[compress] QAT of the {name.replace('_', ' ')}: {change}; {fit.train_seconds:.0f} s")
        return trained, rec

    def row(self, key: str, model: nn.Module | None, onnx_path: Path, st_path: Path | None) -> dict[str, Any]:
        """Return one table row: accuracy, size, FLOPs, ONNX check and latency of a model."""
        cfg = self.cfg
        rec: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
        rec["label"] = ROW_LABELS[key]
        rec["onnx_file"] = onnx_path.name
        rec["onnx_mb"] = _mb(onnx_path)
        rec["safetensors_mb"] = _mb(st_path) if st_path is not None else None
        timing = dict(batch_sizes=cfg.batch_sizes, threads=cfg.threads, runs=cfg.latency_runs)
        timing["warmup"] = cfg.latency_warmup
        cells = ort_latency(onnx_path, self.sample_shape, **timing)
        if model is not None:
            res = self.engine.evaluate(self.engine.prepare(model), self.test_loader)
            rec["accuracy_backend"] = "pytorch"
            rec.update(flops(model, self.sample_shape))
            rec["onnx_max_abs_diff"] = check_onnx(model, onnx_path, self.example)
            rec["onnx_tolerance"] = onnx_tolerance(model, self.example)
            if rec["onnx_max_abs_diff"] > rec["onnx_tolerance"]:
                self.say(
                    f"[compress] warning: {onnx_path.name} differs from PyTorch by {rec['onnx_max_abs_diff']:.2e} "
                    f"(tolerance {rec['onnx_tolerance']:.2e})"
                )
            cells += torch_latency(model, self.sample_shape, **timing)
        else:
            # The int8 model exists only as ONNX: its accuracy is what ONNX Runtime computes over the test set.
            res = evaluate_onnx(onnx_path, self.test_loader)
            rec["accuracy_backend"] = "onnxruntime"
        rec["accuracy"], rec["errors"], rec["test_size"] = res.accuracy, res.errors, res.total
        rec["latency_ms"] = latency_table(cells)
        rec["latency"] = [c.to_dict() for c in cells]
        return rec


def compress_run(
    run_dir: str | Path,
    cfg: CompressConfig | None = None,
    console: Console | None = None,
    *,
    overwrite: bool = False,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Compress a run's distilled student, write run_dir/compress/, and return the summary dict.

    `cfg` defaults to the run's own `compress` section, else CompressConfig() defaults; `data_root` replaces
    the run's data.root (data moved since the run).
    """
    run_dir = Path(run_dir)
    console = console or make_console()
    exp = _run_config(run_dir)
    if data_root:
        exp.data.root = data_root
    cfg = cfg or exp.compress or CompressConfig()
    ckpt = run_dir / "checkpoints"
    _require(ckpt / "teacher", "teacher")
    _require(ckpt / "student_kd", "distilled student")
    out = run_dir / COMPRESS_DIR
    _check_output_dir(out, overwrite)
    if exp.data.text is not None:  # token-id students: ONNX + dynamic int8, no pruning (compress/text.py)
        return compress_text_run(run_dir, exp, out, console, threads=exp.runtime.threads or 1)

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".compress-", dir=run_dir))
    threads_before = torch.get_num_threads()
    try:
        c = _Compressor(run_dir, exp, cfg, tmp, console)
        try:
            summary = _compress(c, ckpt)
        finally:
            c.logger.close()
            torch.set_num_threads(threads_before)
        summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
        atomic_write_text(tmp / "summary.json", json.dumps(summary, indent=2))
        atomic_write_text(tmp / "report.md", report_markdown(summary))
        if plot_accuracy_vs_latency(summary, tmp / "accuracy_vs_latency.png"):
            summary["plot"] = "accuracy_vs_latency.png"
        # Re-check just before replacing: another process may have written compress/ meanwhile.
        _check_output_dir(out, overwrite)
        if out.is_dir():
            shutil.rmtree(out)
        # mkdtemp makes the folder private (0700); the output folder gets the usual permissions.
        tmp.chmod(new_dir_mode())
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["output_dir"] = str(out)
    print_compress_table(summary, console)
    return summary


def _compress(c: _Compressor, ckpt: Path) -> dict[str, Any]:
    """Run every step of a compression into c.out and return the summary (without wall time)."""
    cfg, out = c.cfg, c.out
    teacher, _ = c.load(ckpt / "teacher", "teacher")
    student, smeta = c.load(ckpt / "student_kd", "distilled student")
    c.say(
        f"[compress] {c.exp.name}: pruning {cfg.prune_target:.0%} of the student's {cfg.prune_by} "
        f"in {cfg.iterative_steps} round(s), then distilling again from the teacher"
    )
    c.teach(teacher)
    pruned, prune_info = c.prune_and_distill(student)
    pruned_st = save_pruned_model(
        out / "pruned_student",
        pruned,
        smeta,
        {"prune": {k: v for k, v in prune_info.items() if k != "rounds"}},
    )

    paths = {}
    for key, model in (("teacher", teacher), ("student", student), ("pruned_student", pruned)):
        paths[key] = export_onnx(model, c.example, out / f"{key}.onnx", log=c.say)
    rows: dict[str, dict[str, Any]] = {
        "teacher": c.row("teacher", teacher, paths["teacher"], ckpt / "teacher.safetensors"),
        "student": c.row("student", student, paths["student"], ckpt / "student_kd.safetensors"),
        "pruned_student": c.row("pruned_student", pruned, paths["pruned_student"], pruned_st),
    }
    quant: dict[str, Any] | None = None
    qat: dict[str, Any] | None = None
    if cfg.quantize:
        # Shuffled, never augmented: calibration should see the data the model will see. The same batches
        # calibrate every int8 model (and the QAT copies' emulated ranges).
        loader = make_loader(c.bundle.train, c.bundle, c.tcfg.batch_size, train=True, seed=c.exp.seed + 7)
        calib = [b.x for b in itertools.islice(loader, cfg.calibration_batches)]
        targets = [(k, INT8_OF[k]) for k in INT8_OF if cfg.quantize_unpruned or k != "student_int8"]
        fp32_models = {"student": student, "pruned_student": pruned}
        qat = {"config": cfg.qat.model_dump(mode="json"), "models": {}} if cfg.qat is not None else None

        def add_int8_row(key: str, fp32: str, int8_path: Path) -> None:
            rec = c.row(key, None, int8_path, None)
            # Same graph, same multiply-accumulates, in int8: counts carried over from the fp32 model.
            for k in ("params", "macs", "flops"):
                rec[k] = rows[fp32][k]
            rows[key] = rec

        for key, fp32 in targets:
            add_int8_row(key, fp32, quantize_onnx(paths[fp32], out / f"{fp32}_int8.onnx", calib, len(calib)))
            if qat is not None:
                trained, qat["models"][QAT_OF[key]] = c.quantization_aware(fp32_models[fp32], calib, fp32)
                # The QAT copy's float graph is only the quantizer's input; the int8 file is what ships.
                float_path = export_onnx(trained, c.example, out / f".{fp32}_qat.onnx", log=c.say)
                int8_path = quantize_onnx(float_path, out / f"{fp32}_qat_int8.onnx", calib, len(calib))
                float_path.unlink()
                add_int8_row(QAT_OF[key], fp32, int8_path)
        rows = {k: rows[k] for k in ROWS if k in rows}  # table order: each int8 row after its fp32 model
        ops = op_counts(out / "pruned_student_int8.onnx")
        quant = {
            "format": "QDQ",
            "weights": "int8 per-channel",
            "activations": "uint8 (MinMax calibration)",
            "models": [key for key, _ in targets],
            "calibration_batches": len(calib),
            "calibration_batch_size": c.tcfg.batch_size,
            # Of the int8 pruned student's graph.
            "quantize_linear_nodes": ops.get("QuantizeLinear", 0),
            "dequantize_linear_nodes": ops.get("DequantizeLinear", 0),
        }
    return {
        "name": c.exp.name,
        "dataset": c.exp.data.dataset,
        "run_dir": str(c.run_dir),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        # Distribution versions: torch_pruning.__version__ lags its releases (1.6.1 reports 1.6.0).
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "torch_pruning": _version("torch-pruning"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "input": {
            "name": "input",
            "shape": ["batch", *c.sample_shape],
            "normalize": {"mean": c.bundle.mean, "std": c.bundle.std},
            "note": "ONNX models take (x/255 - mean) / std, channels first",
        },
        "config": cfg.model_dump(mode="json"),
        "prune": prune_info,
        "quantize": quant,
        "qat": qat,
        "models": rows,
    }
