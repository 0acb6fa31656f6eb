"""ONNX export of a kdkit model, its numerical check against PyTorch, and ONNX Runtime sessions.

The dynamo exporter (torch.export + onnxscript) is PyTorch's supported path; the TorchScript exporter
is kept only as a fallback for models torch.export cannot trace. The graph takes the *normalised*
image batch (N, C, H, W) named "input" and returns "logits"; the batch dimension is dynamic.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from kdkit.checkpoint import atomic_write_bytes
from kdkit.engine import EvalResult
from kdkit.errors import KdkitError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# fp32 ONNX Runtime vs PyTorch: kernels differ in summation order, so logits agree to ~1e-6 relative;
# 1e-4 (scaled by the logit magnitude when that exceeds 1) flags real export bugs, not rounding.
ONNX_TOLERANCE = 1e-4


class ExportError(KdkitError):
    """A model could not be exported to ONNX or its ONNX graph disagrees with PyTorch."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's per-op chatter (missing torchvision ops, deprecations) for one export."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def deployable_copy(model: nn.Module) -> nn.Module:
    """Return an fp32, CPU, eval-mode, contiguous-format copy of a model (what gets exported)."""
    m = copy.deepcopy(model).cpu().float().eval()
    return m.to(memory_format=torch.contiguous_format)


def _export_bytes_dynamo(model: nn.Module, x: Tensor, dynamic_batch: bool) -> bytes:
    shapes = ({0: torch.export.Dim.DYNAMIC},) if dynamic_batch else None
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes,
            verbose=False,
        )
    # Serialising the proto ourselves keeps weights inside the file (no .data sidecar) and lets the write
    # be atomic.
    return program.model_proto.SerializeToString()


def _export_bytes_torchscript(model: nn.Module, x: Tensor, dynamic_batch: bool) -> bytes:
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with _quiet_exporter():
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=17,
        )
    return buf.getvalue()


def export_onnx(
    model: nn.Module,
    example_input: Tensor,
    path: str | Path,
    dynamic_batch: bool = True,
    log: Any = None,
) -> Path:
    """Write the model as fp32 ONNX to `path` (atomically) and return the path.

    Tries the dynamo exporter first and falls back to the TorchScript exporter, saying so through
    `log` (a callable taking a message, e.g. console.print) or a warning.
    """
    path = Path(path)
    m = deployable_copy(model)
    x = example_input.detach().cpu().float().contiguous()
    if dynamic_batch and x.shape[0] == 1:
        # torch.export specialises a dimension of size 1 to a constant; two samples keep it symbolic.
        x = x.repeat(2, *([1] * (x.ndim - 1)))
    try:
        data = _export_bytes_dynamo(m, x, dynamic_batch)
    except Exception as exc:  # any tracing failure falls back, with its reason shown
        msg = (
            f"dynamo ONNX export of {type(model).__name__} failed ({type(exc).__name__}: {str(exc)[:200]}); "
            "falling back to the TorchScript exporter"
        )
        if log is not None:
            log(msg)
        else:
            warnings.warn(msg, stacklevel=2)
        try:
            data = _export_bytes_torchscript(m, x, dynamic_batch)
        except Exception as exc2:
            raise ExportError(
                f"cannot export {type(model).__name__} to ONNX: dynamo failed ({exc}), "
                f"TorchScript failed ({exc2})"
            ) from None
    atomic_write_bytes(path, data)
    return path


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """Return an ONNX Runtime CPU InferenceSession for an ONNX file, with `threads` intra-op threads."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load {str(path)!r}: {exc}") from None


def run_onnx(session: Any, x: Tensor | np.ndarray) -> np.ndarray:
    """Return the logits of an ONNX Runtime session for one input batch."""
    arr = x.detach().cpu().float().contiguous().numpy() if isinstance(x, Tensor) else x
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(arr, dtype=np.float32)})[0]


def check_onnx(model: nn.Module, path: str | Path, batch: Tensor) -> float:
    """Return the max absolute difference between ONNX Runtime and PyTorch logits on a batch."""
    m = deployable_copy(model)
    x = batch.detach().cpu().float().contiguous()
    with torch.no_grad():
        ref = m(x).numpy()
    out = run_onnx(ort_session(path), x)
    if out.shape != ref.shape:
        raise ExportError(f"{str(path)!r} returns logits of shape {out.shape}, PyTorch {ref.shape}")
    return float(np.abs(out - ref).max())


def onnx_tolerance(model: nn.Module, batch: Tensor) -> float:
    """Return the allowed |ONNX - PyTorch| for this model's logits (ONNX_TOLERANCE, scaled when logits are large)."""
    with torch.no_grad():
        scale = float(deployable_copy(model)(batch.detach().cpu().float()).abs().max())
    return ONNX_TOLERANCE * max(1.0, scale)


def evaluate_onnx(path: str | Path, loader: Any, threads: int | None = None) -> EvalResult:
    """Return the accuracy of an ONNX model over a loader of normalised batches, run in ONNX Runtime."""
    session = ort_session(path, threads)
    preds, labels = [], []
    loss_sum = 0.0
    for batch in loader:
        logits = torch.from_numpy(run_onnx(session, batch.x))
        y = batch.y.cpu()
        preds.append(logits.argmax(dim=1))
        labels.append(y)
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
    p = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    c = int(t.max()) + 1 if len(t) else 1
    return EvalResult(
        correct=int((p == t).sum()),
        total=len(t),
        loss=loss_sum / max(len(t), 1),
        class_counts=torch.bincount(t, minlength=c),
        class_errors=torch.bincount(t[p != t], minlength=c),
    )
