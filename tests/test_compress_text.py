"""`kdkit compress RUN_DIR` on a sentence run: ONNX export of the BiLSTM / text CNN with input_ids and
attention_mask, dynamic int8 by ONNX Runtime, accuracy and latency rows (tiny random BERT teacher, no download)."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from test_text_run import _cfg, folders  # noqa: E402, F401

from kdkit.cli import main  # noqa: E402
from kdkit.experiment import run_experiment  # noqa: E402
from kdkit.models import create  # noqa: E402


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("bilstm", {"embed_dim": 16, "hidden": 16, "mlp": 16, "pooling": "concat"}),
        ("bilstm", {"embed_dim": 16, "hidden": 16, "mlp": 16, "pooling": "max"}),
        ("textcnn", {"embed_dim": 16, "filters": 8, "widths": (2, 3)}),
    ],
)
def test_text_students_export_to_onnx_and_padding_changes_nothing(name, kw, tmp_path):
    from kdkit.compress import ort_session
    from kdkit.compress.text import export_text_onnx

    torch.manual_seed(0)
    model = create(name, num_classes=2, in_channels=100, **kw).eval()
    ids = torch.randint(5, 100, (4, 11))
    mask = torch.ones_like(ids)
    for row, length in ((1, 7), (2, 3)):
        ids[row, length:], mask[row, length:] = 0, 0
    path = export_text_onnx(model, {"input_ids": ids, "attention_mask": mask}, tmp_path / "m.onnx")
    session = ort_session(path, 1)

    def onnx(i, m):
        return session.run(None, {"input_ids": i.numpy(), "attention_mask": m.numpy()})[0]

    with torch.no_grad():
        np.testing.assert_allclose(onnx(ids, mask), model(ids, mask).numpy(), rtol=0, atol=1e-5)
        # another batch size and length than the export's; extra padding leaves every row's logits alone
        short = ids[1:3, :7]
        padded = torch.cat([short, torch.zeros(2, 9, dtype=torch.long)], 1)
        a = onnx(short, mask[1:3, :7])
        b = onnx(padded, torch.cat([mask[1:3, :7], torch.zeros(2, 9, dtype=torch.long)], 1))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a, model(short, mask[1:3, :7]).numpy(), rtol=0, atol=1e-5)


def test_kdkit_compress_on_a_text_run_writes_onnx_int8_and_latency(folders, tmp_path, capsys):  # noqa: F811
    cfg = _cfg(folders, phases=["teacher", "distill"])
    cfg.student.model.pooling = "concat"  # what configs/sst2/tang.yaml uses
    run = tmp_path / "run"
    kd = run_experiment(cfg, run)["models"]["student_kd"]
    capsys.readouterr()
    assert main(["compress", str(run)]) == 0
    assert "| student_int8 | onnxruntime |" in capsys.readouterr().err  # the console writes to stderr
    summary = json.loads((run / "compress" / "summary.json").read_text())
    rows = summary["models"]
    assert list(rows) == ["teacher", "student", "student_onnx", "student_int8"]
    # The PyTorch and the fp32 ONNX student make the run's errors; int8 stays within 3 of 100 sentences.
    assert rows["student"]["errors"] == rows["student_onnx"]["errors"] == kd["errors"]
    assert abs(rows["student_int8"]["errors"] - kd["errors"]) <= 3
    assert all(r["test_size"] == 100 for r in rows.values())
    assert summary["onnx"]["max_abs_diff"] <= summary["onnx"]["tolerance"]
    ops = summary["quantize"]["int8_ops"]
    # the LSTM; the ReLU layer and the classifier
    assert ops["DynamicQuantizeLSTM"] == 1 and ops["MatMulInteger"] == 2
    assert rows["student_int8"]["file_mb"] < rows["student_onnx"]["file_mb"]
    assert (run / "compress" / "student_int8.onnx").stat().st_size / 2**20 == pytest.approx(
        rows["student_int8"]["file_mb"], abs=1e-4
    )
    for r in rows.values():
        assert r["latency_ms_per_sentence"]["batch1"] > 0 and r["latency_ms_per_sentence"]["batch64"] > 0
    assert summary["latency_sentences"] == {"batch1": 64, "batch64": 100} and summary["latency_passes"] == 5
    assert "| student_int8 | onnxruntime |" in (run / "compress" / "report.md").read_text()
    # An existing compress/ is kept unless --overwrite.
    assert main(["compress", str(run)]) != 0
    assert "--overwrite" in capsys.readouterr().err
    assert main(["compress", str(run), "--overwrite"]) == 0
