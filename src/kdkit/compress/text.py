"""`kdkit compress RUN_DIR` for a sentence run: ONNX export, dynamic int8, accuracy and latency of the student.

The image pipeline (pruning, distilling again, static QDQ int8 calibrated on images) does not apply to the
token-id students (BiLSTM, text CNN): here the distilled student is exported to ONNX with two inputs,
`input_ids` and `attention_mask` (int64, dynamic batch and length), by the TorchScript exporter (the dynamo
exporter cannot trace `pack_padded_sequence`), checked against PyTorch on a padded test batch, and quantized
by ONNX Runtime's `quantize_dynamic` (int8 weights; activations quantized per batch at run time; LSTM ->
DynamicQuantizeLSTM, Linear -> MatMulInteger, Conv -> ConvInteger). Each row gets its test accuracy (run in
ONNX Runtime for the ONNX rows), file size and latency per sentence at batch 1 and 64 on `threads` threads (the median of 5 passes).
The teacher is measured in PyTorch (fp32 eager), the same sentences and batches. No pruning for text yet.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from rich.console import Console
from torch import nn

from kdkit.checkpoint import atomic_write_bytes, atomic_write_text
from kdkit.compress.export import ExportError, _quiet_exporter, deployable_copy, ort_session
from kdkit.compress.quantize import _quiet
from kdkit.config import ExperimentConfig
from kdkit.data.bundle import load_data, make_loader
from kdkit.file_modes import new_dir_mode
from kdkit.model_io import load_model

INPUTS = ("input_ids", "attention_mask")
TOLERANCE = 1e-4  # |ONNX - PyTorch| allowed on the fp32 logits (times max(1, |logits|))


def export_text_onnx(model: nn.Module, batch: dict[str, torch.Tensor], path: Path) -> Path:
    """Write a token-id classifier as fp32 ONNX (inputs input_ids, attention_mask; dynamic batch and length)."""
    m = deployable_copy(model)
    buf = io.BytesIO()
    axes = {k: {0: "batch", 1: "length"} for k in INPUTS} | {"logits": {0: "batch"}}
    try:
        with _quiet_exporter():
            torch.onnx.export(
                m,
                tuple(batch[k] for k in INPUTS),
                buf,
                dynamo=False,
                input_names=list(INPUTS),
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=17,
            )
    except Exception as exc:
        raise ExportError(f"cannot export {type(model).__name__} to ONNX: {exc}") from None
    atomic_write_bytes(path, buf.getvalue())
    return path


def _feed(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(batch[k].cpu().numpy().astype(np.int64)) for k in INPUTS}


def _runner(model: nn.Module | None, path: Path | None, threads: int) -> Any:
    """Return a callable batch -> logits (numpy): ONNX Runtime for `path`, else the PyTorch model."""
    if path is not None:
        session = ort_session(path, threads)
        return lambda b: session.run(None, _feed(b))[0]
    assert model is not None
    m = deployable_copy(model)

    def run(b: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return m(*(b[k] for k in INPUTS)).numpy()

    return run


def _accuracy(run: Any, loader: Any) -> tuple[int, int]:
    right = total = 0
    for b in loader:
        right += int((run(b).argmax(1) == b["labels"].numpy()).sum())
        total += len(b["labels"])
    return right, total


def _batches(test: Any, n: int, batch: int) -> list[dict[str, torch.Tensor]]:
    """The first n test sentences in order, in batches of `batch`, each padded to its longest sentence."""
    out = []
    for i in range(0, min(n, len(test)), batch):
        ids = torch.as_tensor(test.input_ids[i : min(i + batch, n)], dtype=torch.long)
        lengths = torch.as_tensor(test.lengths[i : min(i + batch, n)], dtype=torch.long)
        width = int(lengths.max())
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        out.append({"input_ids": ids[:, :width].contiguous(), "attention_mask": mask})
    return out


def _latency(run: Any, batches: list[dict[str, torch.Tensor]], passes: int = 5) -> float:
    """Milliseconds per sentence over the batches: the median over `passes` timed passes (two batches warm up)."""
    for b in batches[:2]:
        run(b)
    n = sum(len(b["input_ids"]) for b in batches)
    per_pass = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for b in batches:
            run(b)
        per_pass.append((time.perf_counter() - t0) * 1e3 / n)
    return round(float(np.median(per_pass)), 4)


def compress_text_run(
    run_dir: Path,
    exp: ExperimentConfig,
    out: Path,
    console: Console,
    *,
    threads: int = 1,
    sentences: tuple[int, int] = (64, 256),
) -> dict[str, Any]:
    """Write student.onnx, student_int8.onnx, summary.json and report.md into `out` and return the summary.

    The output is written in a temporary folder beside `out` and renamed at the end (replacing `out`: the
    caller checks that it may).
    """
    t_start = time.perf_counter()
    ckpt = run_dir / "checkpoints"
    bundle = load_data(exp.data, exp.seed)
    teacher, _ = load_model(ckpt / "teacher")
    student, smeta = load_model(ckpt / "student_kd")
    test_loader = make_loader(bundle.test, bundle, 256, train=False)
    check = _batches(bundle.test, 16, 16)[0]
    check["attention_mask"][-1, max(1, int(check["attention_mask"][-1].sum()) // 2) :] = 0  # a padded row
    check["input_ids"] = check["input_ids"].masked_fill(check["attention_mask"] == 0, bundle.test.pad_id)
    b1, b64 = _batches(bundle.test, sentences[0], 1), _batches(bundle.test, sentences[1], 64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix=".compress-", dir=run_dir))
    try:
        fp32 = export_text_onnx(student, check, tmp / "student.onnx")
        with torch.no_grad():
            ref = deployable_copy(student)(*(check[k] for k in INPUTS)).numpy()
        diff = float(np.abs(_runner(None, fp32, threads)(check) - ref).max())
        tol = TOLERANCE * max(1.0, float(np.abs(ref).max()))
        if diff > tol:
            raise ExportError(
                f"student.onnx differs from PyTorch by {diff:.3g} (> {tol:.3g}) on a test batch"
            )
        int8 = tmp / "student_int8.onnx"
        with _quiet():
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        rows: dict[str, dict[str, Any]] = {}
        for key, model, path, file in (
            ("teacher", teacher, None, ckpt / "teacher.safetensors"),
            ("student", student, None, ckpt / "student_kd.safetensors"),
            ("student_onnx", None, fp32, fp32),
            ("student_int8", None, int8, int8),
        ):
            run = _runner(model, path, threads)
            right, total = _accuracy(run, test_loader)
            rows[key] = {
                "backend": "onnxruntime" if path else "pytorch fp32 eager",
                "accuracy": right / total,
                "errors": total - right,
                "test_size": total,
                "file": file.name,
                "file_mb": round(file.stat().st_size / 2**20, 4),
                "latency_ms_per_sentence": {"batch1": _latency(run, b1), "batch64": _latency(run, b64)},
            }
        ops = Counter(n.op_type for n in onnx.load(str(int8)).graph.node)
        summary = {
            "name": exp.name,
            "dataset": exp.data.dataset,
            "run_dir": str(run_dir),
            "student": smeta.get("model", {}),
            "threads": threads,
            "latency_sentences": {"batch1": len(b1), "batch64": sum(len(b["input_ids"]) for b in b64)},
            "latency_passes": 5,
            "onnx": {
                "inputs": list(INPUTS),
                "max_abs_diff": diff,
                "tolerance": tol,
                "exporter": "torchscript",
            },
            "quantize": {
                "method": "onnxruntime quantize_dynamic",
                "weights": "int8",
                "activations": "quantized per batch at run time",
                "int8_ops": {k: v for k, v in sorted(ops.items()) if "Integer" in k or "Dynamic" in k},
            },
            "prune": None,
            "models": rows,
        }
        summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
        atomic_write_text(tmp / "summary.json", json.dumps(summary, indent=2))
        atomic_write_text(tmp / "report.md", report(summary))
        tmp.chmod(new_dir_mode())
        if out.is_dir():  # the caller checked that it may be replaced (--overwrite)
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(before)
    summary["output_dir"] = str(out)
    console.print(report(summary), highlight=False, markup=False)
    return summary


def report(summary: dict[str, Any]) -> str:
    """Return the Markdown table of a text compression."""
    lines = [
        f"# Compression of {summary['name']} ({summary['dataset']})",
        "",
        f"Latency: ms per sentence, {summary['threads']} thread(s), the first test sentences at batch 1 and 64, "
        f"the median of {summary['latency_passes']} passes.",
        "",
        "| model | backend | test accuracy % | errors | file | MB | latency b1 ms | latency b64 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in summary["models"].items():
        lat = r["latency_ms_per_sentence"]
        lines.append(
            f"| {key} | {r['backend']} | {r['accuracy'] * 100:.2f} | {r['errors']}/{r['test_size']} | {r['file']} | "
            f"{r['file_mb']} | {lat['batch1']} | {lat['batch64']} |"
        )
    return "\n".join(lines) + "\n"
