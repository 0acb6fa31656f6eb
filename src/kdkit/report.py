"""What a run reports about each model: its evaluation record and the accuracy/size table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from torch import nn

from kdkit.engine import EvalResult, FitResult
from kdkit.models import count_params, model_size_mb

ROLE_LABELS = {
    "teacher": "teacher",
    "student_scratch": "student (scratch)",
    "student_kd": "student (distilled)",
    "teacher_joint": "teacher (joint)",
    "assistant": "assistant (TAKD)",
}


def eval_record(
    model: nn.Module,
    fit: FitResult | None,
    val: EvalResult,
    test: EvalResult,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """Return a model's record: test and validation figures, size, training time, per-class test errors.

    `classes` (label i is classes[i]) is recorded beside `errors_per_class` and the confusion matrix.
    """
    rec: dict[str, Any] = {
        "accuracy": test.accuracy,
        "errors": test.errors,
        "test_size": test.total,
        "val_accuracy": val.accuracy if val.total else None,
        "val_errors": val.errors if val.total else None,
        "params": count_params(model),
        "size_mb": round(model_size_mb(model), 4),
        "train_seconds": round(fit.train_seconds, 3) if fit else 0.0,
        "errors_per_class": test.errors_per_class,
    }
    if classes is not None:
        rec["classes"] = list(classes)
    if test.top5_accuracy is not None:
        rec["top5_accuracy"] = test.top5_accuracy
    if test.confusion is not None:
        rec["confusion_matrix"] = test.confusion.tolist()  # row = true class, column = prediction
    if fit:
        rec["steps"] = fit.steps
        rec["samples_per_second"] = round(fit.samples_per_second, 1)
    return rec


def print_table(summary: dict[str, Any], console: Console) -> None:
    """Print the accuracy/size table of a run."""
    table = Table(title=f"kdkit run: {summary['name']} ({summary['dataset']})")
    lm = any("perplexity" in rec for rec in summary["models"].values())
    cols = (
        ("model", "test ppl", "token acc", "errors", "val acc")
        if lm
        else ("model", "test acc", "errors", "val acc")
    )
    for col in (*cols, "params", "size MB", "train s"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for key, rec in summary["models"].items():
        va = rec.get("val_accuracy")
        ppl = [f"{rec['perplexity']:.2f}" if "perplexity" in rec else "-"] if lm else []
        table.add_row(
            ROLE_LABELS.get(key, key),
            *ppl,
            f"{rec['accuracy'] * 100:.2f}%",
            f"{rec['errors']}/{rec['test_size']}",
            "-" if va is None else f"{va * 100:.2f}%",
            f"{rec['params']:,}",
            f"{rec['size_mb']:.2f}",
            f"{rec['train_seconds']:.1f}",
        )
    console.print(table)
