"""int8 post-training static quantization of an ONNX model with ONNX Runtime (QDQ format).

Why this path and not another:
- torch.ao.quantization (eager and FX graph mode) is deprecated in favour of torchao; building on it
  would mean migrating again soon.
- torchao's PT2E flow works with this torch, but its int8 kernels are fast only after torch.compile;
  on this machine (2 cores, AVX-512 VNNI) resnet20 at batch 64 took ~33 ms that way, against ~16 ms for
  ONNX Runtime's QDQ int8 and ~26 ms for ONNX Runtime fp32 (DESIGN.md, "Measured on this machine").
- The deliverable of compression is a file a service loads; ONNX Runtime runs it from C++, C#, Java or
  Python without PyTorch, and QDQ is the format its CPU kernels are optimised for since ORT 1.11.

Weights are int8 per output channel (symmetric), activations uint8 with ranges calibrated (min/max) on
a few training batches. CPUs without VNNI can saturate u8*s8 products, so there weights use 7 bits
(`reduce_range`), as ONNX Runtime advises.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor

from kdkit.errors import KdkitError
from kdkit.runtime import cpu_flags


class QuantizeError(KdkitError):
    """An ONNX model could not be quantized."""


def cpu_has_vnni() -> bool:
    """Return True when the CPU has VNNI int8 dot products (AVX512-VNNI or AVX-VNNI)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def calibration_arrays(batches: Iterable[object], max_batches: int) -> list[np.ndarray]:
    """Return up to `max_batches` float32 input arrays from tensors, arrays, or loader batches (with `.x`)."""
    out: list[np.ndarray] = []
    for item in batches:
        if len(out) >= max_batches:
            break
        x = getattr(item, "x", item)
        arr = x.detach().cpu().float().contiguous().numpy() if isinstance(x, Tensor) else np.asarray(x)
        out.append(np.ascontiguousarray(arr, dtype=np.float32))
    return out


class BatchCalibrationReader(CalibrationDataReader):
    """Feed a list of input batches to ONNX Runtime's calibrator, one {input name: batch} per call."""

    def __init__(self, arrays: list[np.ndarray], input_name: str) -> None:
        self.input_name = input_name
        self._arrays = arrays
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Return the next {input name: float32 batch}, or None when done."""
        if self._next >= len(self._arrays):
            return None
        self._next += 1
        return {self.input_name: self._arrays[self._next - 1]}

    def __len__(self) -> int:
        """Return the number of calibration batches."""
        return len(self._arrays)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The quantizer logs a line per tensor and warns about pre-processing; the result is checked instead.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[object],
    max_batches: int = 10,
    per_channel: bool = True,
) -> Path:
    """Write the int8 QDQ model of an fp32 ONNX file to `out_path` (atomically) and return the path."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise QuantizeError(f"ONNX model {str(fp32_path)!r} does not exist")
    # Gathered up front (a few batches) so that an empty calibration set is an error before any work.
    arrays = calibration_arrays(calibration, max_batches)
    if not arrays:
        raise QuantizeError("calibration got no batches: the calibration data set is empty")
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out_path.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quantized = Path(tmp) / "int8.onnx"
        reader = BatchCalibrationReader(arrays, input_name)
        with _quiet():
            # Shape inference and graph optimisation first (BN folds into Conv), as ORT recommends: the
            # quantizer then sees one Conv per layer and calibrates the folded weights.
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
            quantize_static(
                str(pre),
                str(quantized),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=not cpu_has_vnni(),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        os.replace(quantized, out_path)
    return out_path


def op_counts(path: str | Path) -> dict[str, int]:
    """Return how many nodes of each op type an ONNX graph holds (e.g. QuantizeLinear, Conv)."""
    model = onnx.load(str(path))
    return dict(Counter(node.op_type for node in model.graph.node))
