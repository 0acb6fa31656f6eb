"""The compression report: Markdown and console tables of accuracy, size and latency, and a plot."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdkit.checkpoint import atomic_write_bytes


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _fmt_row(rec: dict[str, Any]) -> list[str]:
    return [
        rec["label"],
        f"{rec['accuracy'] * 100:.2f}%",
        "-" if rec["params"] is None else f"{rec['params']:,}",
        "-" if rec["flops"] is None else f"{rec['flops'] / 1e6:.3g}",
        f"{rec['onnx_mb']:.3g}",
        "-" if rec["safetensors_mb"] is None else f"{rec['safetensors_mb']:.3g}",
    ]


def _grid(summary: dict[str, Any]) -> list[tuple[int, int]]:
    cfg = summary["config"]
    return [(b, t) for b in cfg["batch_sizes"] for t in cfg["threads"]]


def report_markdown(summary: dict[str, Any]) -> str:
    """Return the compression report as Markdown: one table of accuracy, size, FLOPs and latency per model."""
    grid = _grid(summary)
    lat_cols = [f"{be}_b{b}_t{t}" for be in ("ort", "eager") for b, t in grid]
    header = ["model", "test acc", "params", "MFLOPs", "ONNX MB", "safetensors MB", *lat_cols]
    rows = [
        [*_fmt_row(rec), *(_fmt_ms(rec["latency_ms"].get(c)) for c in lat_cols)]
        for rec in summary["models"].values()
    ]
    p = summary["prune"]
    lines = [
        f"# kdkit compress: {summary['name']} ({summary['dataset']})",
        "",
        f"Pruned {p['achieved']:.1%} of the student's {p['by']} (target {p['target']:.0%}) in "
        f"{len(p['rounds'])} round(s), each followed by distillation from the teacher. "
        f"torch {summary['torch']}, onnxruntime {summary['onnxruntime']}, "
        f"torch-pruning {summary['torch_pruning']}, {summary['cpu_count']} CPUs.",
        "",
        "Latency columns: median milliseconds per batch over "
        f"{summary['config']['latency_runs']} runs; ort = ONNX Runtime, eager = PyTorch fp32, "
        "b = batch size, t = threads. The int8 model's accuracy is measured by ONNX Runtime over the test set; "
        "the others by PyTorch. FLOPs = 2 x multiply-accumulates per sample.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    return "\n".join(lines)


def print_compress_table(summary: dict[str, Any], console: Console) -> None:
    """Print the compression results: accuracy and size per model, then latency per model and backend."""
    table = Table(title=f"kdkit compress: {summary['name']} ({summary['dataset']})")
    for col in ("model", "test acc", "params", "MFLOPs", "ONNX MB", "safetensors MB"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for rec in summary["models"].values():
        table.add_row(*_fmt_row(rec))
    console.print(table)
    # Latency in a second table: a column per (batch, threads) cell would not fit a 120-column console.
    grid = _grid(summary)
    lat = Table(title="latency: median ms per batch (b = batch size, t = threads)")
    lat.add_column("model", no_wrap=True)
    lat.add_column("backend", no_wrap=True)
    for b, t in grid:
        lat.add_column(f"b{b} t{t}", justify="right", no_wrap=True)
    for rec in summary["models"].values():
        for be, name in (("ort", "ONNX Runtime"), ("eager", "PyTorch eager")):
            cells = [rec["latency_ms"].get(f"{be}_b{b}_t{t}") for b, t in grid]
            if any(c is not None for c in cells):
                lat.add_row(rec["label"], name, *(_fmt_ms(c) for c in cells))
    console.print(lat)


def plot_accuracy_vs_latency(summary: dict[str, Any], path: Path) -> bool:
    """Draw test accuracy against ONNX Runtime latency (largest batch, fewest threads); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cfg = summary["config"]
    b, t = max(cfg["batch_sizes"]), min(cfg["threads"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for backend, marker in (("ort", "o"), ("eager", "s")):
        pts = [
            (rec["latency_ms"].get(f"{backend}_b{b}_t{t}"), rec["accuracy"] * 100, rec["label"])
            for rec in summary["models"].values()
        ]
        pts = [p for p in pts if p[0] is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=backend)
        for x, y, label in pts:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"latency, ms per batch of {b} ({t} thread{'s' if t > 1 else ''}, median)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title(f"{summary['name']}: accuracy vs latency")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True
