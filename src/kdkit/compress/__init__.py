"""Compression and deployment: structured pruning, int8 quantization, ONNX export, latency, the pipeline.

Needs the optional dependencies of ``pip install 'kdkit[compress]'`` (onnx, onnxscript, onnxruntime,
torch-pruning).
"""

from __future__ import annotations

from kdkit.errors import KdkitError

try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch_pruning  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise KdkitError(
        f"kdkit.compress needs {_exc.name!r}: pip install 'kdkit[compress]' "
        "(onnx, onnxscript, onnxruntime, torch-pruning)"
    ) from None

from kdkit.compress.export import (
    ONNX_TOLERANCE,
    ExportError,
    check_onnx,
    evaluate_onnx,
    export_onnx,
    ort_session,
    run_onnx,
)
from kdkit.compress.latency import Latency, flops, latency_table, ort_latency, time_runs, torch_latency
from kdkit.compress.pipeline import ROW_FIELDS, ROWS, compress_run
from kdkit.compress.prune import (
    PruneReport,
    count_macs_params,
    layer_widths,
    load_pruned_model,
    prune_model,
    resize_to_shapes,
    save_pruned_model,
)
from kdkit.compress.qat import QatError, QuantizationAware
from kdkit.compress.quantize import BatchCalibrationReader, QuantizeError, op_counts, quantize_onnx
from kdkit.compress.report import report_markdown
from kdkit.config import CompressConfig, CompressDistillConfig

__all__ = [
    "ONNX_TOLERANCE",
    "ROWS",
    "ROW_FIELDS",
    "BatchCalibrationReader",
    "CompressConfig",
    "CompressDistillConfig",
    "ExportError",
    "Latency",
    "PruneReport",
    "QatError",
    "QuantizationAware",
    "QuantizeError",
    "check_onnx",
    "compress_run",
    "count_macs_params",
    "evaluate_onnx",
    "export_onnx",
    "flops",
    "latency_table",
    "layer_widths",
    "load_pruned_model",
    "op_counts",
    "ort_latency",
    "ort_session",
    "prune_model",
    "quantize_onnx",
    "report_markdown",
    "resize_to_shapes",
    "run_onnx",
    "save_pruned_model",
    "time_runs",
    "torch_latency",
]
