"""Compression: structured pruning, ONNX export, int8 QDQ quantization, latency, and the run pipeline."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from kdkit.cli import main
from kdkit.compress import (
    ROW_FIELDS,
    ROWS,
    QuantizeError,
    check_onnx,
    compress_run,
    count_macs_params,
    evaluate_onnx,
    export_onnx,
    latency_table,
    layer_widths,
    load_pruned_model,
    op_counts,
    ort_latency,
    ort_session,
    prune_model,
    quantize_onnx,
    run_onnx,
    save_pruned_model,
    time_runs,
    torch_latency,
)
from kdkit.config import CompressConfig, TrainConfig, build_config
from kdkit.errors import CheckpointError, ConfigError, ModelError, RunDirError
from kdkit.experiment import run_experiment
from kdkit.models import create

torch.set_num_threads(1)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return create("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[64, 48])


def _resnet8() -> nn.Module:
    torch.manual_seed(0)
    return create("resnet8", num_classes=10, in_channels=3)


# --- pruning -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["flops", "params"])
def test_prune_mlp_removes_about_the_target_and_keeps_the_classifier(by):
    model = _mlp()
    x = torch.randn(5, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, rep = prune_model(model, x[:1], 0.5, by=by)

    macs0, params0 = count_macs_params(model, x[:1])
    macs1, params1 = count_macs_params(pruned, x[:1])
    kept = (macs1 / macs0) if by == "flops" else (params1 / params0)
    assert kept == pytest.approx(0.5, abs=0.03)
    assert rep.achieved == pytest.approx(0.5, abs=0.03) and rep.by == by
    assert (rep.macs_before, rep.params_after) == (macs0, params1)
    # Physically smaller layers, classifier still 10 wide, and the input layer still reads 784 pixels.
    w = layer_widths(pruned)
    assert w["features.fc1"] < 64 and w["features.fc2"] < 48 and w["classifier"] == 10
    assert pruned.features.fc1.in_features == 784
    assert pruned.classifier.weight.shape[0] == 10
    assert pruned(x).shape == (5, 10)
    # The input model is untouched.
    assert layer_widths(model)["features.fc1"] == 64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prune_resnet_shrinks_convs_bn_and_residual_groups_together():
    model = _resnet8()
    x = torch.randn(3, 3, 16, 16)
    pruned, rep = prune_model(model, x[:1], 0.5, by="flops")
    assert 1 - rep.macs_after / rep.macs_before == pytest.approx(0.5, abs=0.04)
    assert rep.params_after < 0.6 * rep.params_before
    w0, w1 = layer_widths(model), layer_widths(pruned)
    convs = [k for k in w0 if k != "fc"]
    assert all(w1[k] < w0[k] for k in convs), (w0, w1)
    assert w1["fc"] == 10
    # Coupled by the residual sum: the stage-1 block output has the stem's width; BN follows its conv.
    assert pruned.layer1[0].conv2.out_channels == pruned.conv1.out_channels
    assert pruned.layer1[0].bn1.num_features == pruned.layer1[0].conv1.out_channels
    assert pruned.fc.in_features == pruned.layer3[0].conv2.out_channels
    assert pruned.eval()(x).shape == (3, 10)


def test_iterative_pruning_reaches_the_same_target_in_steps():
    model = _resnet8()
    x = torch.randn(1, 3, 16, 16)
    pruned, rep = prune_model(model, x, 0.4, by="params", iterative_steps=3)
    assert len(rep.channel_ratios) == 3
    assert 1 - rep.params_after / rep.params_before == pytest.approx(0.4, abs=0.04)


def test_round_to_keeps_channel_counts_simd_friendly():
    model = _resnet8()
    pruned, rep = prune_model(model, torch.randn(1, 3, 16, 16), 0.5, round_to=8, tolerance=0.15)
    widths = layer_widths(pruned)
    assert all(w % 8 == 0 for k, w in widths.items() if k != "fc") and widths["fc"] == 10
    assert rep.macs_after < 0.7 * rep.macs_before
    # A width grid too coarse for the target is an error that names round_to.
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    with pytest.raises(ModelError, match="round_to=16 allows only widths that are multiples of 16"):
        prune_model(mlp, torch.randn(1, 64), 0.25, round_to=16)  # 48 -> 32 removes a third


def test_prune_rejects_bad_targets():
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ValueError, match="target"):
        prune_model(_mlp(), x, 1.0)
    with pytest.raises(ValueError, match="'flops' or 'params'"):
        prune_model(_mlp(), x, 0.5, by="latency")
    # Ignoring every hidden layer leaves nothing to prune: the target cannot be met.
    m = _mlp()
    with pytest.raises(ModelError, match="target"):
        prune_model(m, x, 0.5, ignored=[m.features.fc1, m.features.fc2])


def test_pruned_checkpoint_round_trips(tmp_path):
    model = _resnet8()
    pruned, _ = prune_model(model, torch.randn(1, 3, 16, 16), 0.5)
    meta = {"model": {"name": "resnet8"}, "num_classes": 10, "in_channels": 3, "image_size": 16}
    save_pruned_model(tmp_path / "p", pruned, meta)
    loaded, lmeta = load_pruned_model(tmp_path / "p")
    assert lmeta["kind"] == "pruned_model"
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded.eval()(x), pruned.eval()(x))
    assert layer_widths(loaded) == layer_widths(pruned)


# --- ONNX export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "resnet8"])
def test_onnx_export_matches_pytorch_with_a_dynamic_batch(tmp_path, kind):
    model, shape = (_mlp(), (1, 28, 28)) if kind == "mlp" else (_resnet8(), (3, 16, 16))
    model.eval()
    path = export_onnx(model, torch.randn(1, *shape), tmp_path / f"{kind}.onnx")
    assert path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.onnx"]  # no temp or .data files left
    assert check_onnx(model, path, torch.randn(4, *shape)) < 1e-4
    session = ort_session(path, threads=1)
    for n in (1, 7):
        x = torch.randn(n, *shape)
        with torch.no_grad():
            ref = model(x).numpy()
        out = run_onnx(session, x)
        assert out.shape == (n, 10)
        assert np.abs(out - ref).max() < 1e-4


# --- int8 ----------------------------------------------------------------------------------------------


def _initializer_bytes(path) -> int:
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def test_int8_qdq_model_is_accurate_and_smaller(tmp_path, mnist_mlp):
    model, train_loader, test_loader = mnist_mlp
    fp32 = export_onnx(model, next(iter(test_loader)).x[:4], tmp_path / "mlp.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "mlp_int8.onnx", train_loader, max_batches=5)

    acc32 = evaluate_onnx(fp32, test_loader).accuracy
    acc8 = evaluate_onnx(int8, test_loader)
    assert acc32 > 0.9  # 2 epochs on 10k images
    assert acc8.total == 2000
    assert abs(acc8.accuracy - acc32) <= 0.02, (acc32, acc8.accuracy)
    # int8 weights: a quarter of the bytes (scales, zero points and int32 biases add a little).
    assert _initializer_bytes(int8) < _initializer_bytes(fp32) / 3.5
    assert int8.stat().st_size < fp32.stat().st_size / 3
    ops = op_counts(int8)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "mlp_int8.onnx"]


def test_int8_conv_model_has_per_channel_qdq_convs(tmp_path):
    model = _resnet8().eval()
    fp32 = export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "r.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "r8.onnx", [torch.randn(8, 3, 16, 16) for _ in range(3)])
    graph = onnx.load(str(int8)).graph
    ops = op_counts(int8)
    # BN folded into the 9 convs (stem, 2 per block, 2 downsamples) before quantization.
    assert ops["Conv"] == 9 and "BatchNormalization" not in ops
    # Per-channel: each conv weight's DequantizeLinear carries one scale per output channel.
    inits = {t.name: t for t in graph.initializer}
    int8_weights = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == 3
    ]
    assert len(int8_weights) == 10  # 9 convs + the classifier
    per_channel = [n for n in int8_weights if len(inits[n.input[0]].dims) == 4]
    assert len(per_channel) == 9
    assert all(inits[n.input[1]].dims == inits[n.input[0]].dims[:1] for n in per_channel)
    assert run_onnx(ort_session(int8), torch.randn(3, 3, 16, 16)).shape == (3, 10)


def test_quantize_without_calibration_data_is_an_error(tmp_path):
    fp32 = export_onnx(_mlp().eval(), torch.randn(2, 1, 28, 28), tmp_path / "m.onnx")
    with pytest.raises(QuantizeError, match="no batches"):
        quantize_onnx(fp32, tmp_path / "m8.onnx", [])
    assert not (tmp_path / "m8.onnx").exists()
    with pytest.raises(QuantizeError, match="does not exist"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "m8.onnx", [])


# --- latency -------------------------------------------------------------------------------------------


def test_latency_grid_and_statistics(tmp_path):
    model = _mlp().eval()
    path = export_onnx(model, torch.randn(2, 1, 28, 28), tmp_path / "m.onnx")
    grid = {"batch_sizes": (1, 4), "threads": (1, 2), "runs": 5, "warmup": 1}
    cells = torch_latency(model, (1, 28, 28), **grid) + ort_latency(path, (1, 28, 28), **grid)
    assert sorted((c.backend, c.batch, c.threads) for c in cells) == sorted(
        (be, b, t) for be in ("eager", "ort") for b in (1, 4) for t in (1, 2)
    )
    for c in cells:
        assert c.runs == 5 and c.warmup == 1
        assert 0 < c.min_ms <= c.median_ms <= c.p90_ms
    assert set(latency_table(cells)) == {
        f"{be}_b{b}_t{t}" for be in ("eager", "ort") for b in (1, 4) for t in (1, 2)
    }
    assert torch.get_num_threads() == 1  # restored after timing with 2 threads

    calls = []
    times = time_runs(lambda: calls.append(1), runs=4, warmup=2)
    assert len(times) == 4 and len(calls) == 6


# --- config --------------------------------------------------------------------------------------------


def test_compress_config_is_strict_and_part_of_the_experiment():
    cfg = CompressConfig(prune_target=0.3, finetune={"epochs": 1})
    assert cfg.finetune.epochs == 1 and cfg.threads == [1, 2] and cfg.batch_sizes == [1, 64]
    with pytest.raises(ValueError, match="prune_tgt"):
        CompressConfig(prune_tgt=0.3)
    with pytest.raises(ValueError, match="distinct positive"):
        CompressConfig(threads=[0])
    raw = {"teacher": {"model": {"name": "mlp"}}, "student": {"model": {"name": "mlp"}}}
    assert build_config(raw).compress is None
    exp = build_config(raw, ["compress.prune_by=params", "compress.latency_runs=7"])
    assert exp.compress.prune_by == "params" and exp.compress.latency_runs == 7
    with pytest.raises(ConfigError, match="compress.prune_target"):
        build_config(raw, ["compress.prune_target=1.5"])
    exp = build_config(raw, ["compress.qat={epochs: 2, optimizer: adamw, lr: 1.0e-4}"])
    assert (exp.compress.qat.epochs, exp.compress.qat.lr) == (2, 1e-4)
    with pytest.raises(ConfigError, match="needs compress.quantize: true"):
        build_config(raw, ["compress.qat={epochs: 1}", "compress.quantize=false"])
    with pytest.raises(ConfigError, match="at least 1"):
        build_config(raw, ["compress.qat={epochs: 0}"])


# --- the pipeline --------------------------------------------------------------------------------------

RUN = {
    "name": "tiny-compress",
    "data": {"dataset": "mnist-small", "val_size": 200, "train_limit": 1200},
    "teacher": {
        "model": {"name": "mlp", "hidden": [96]},
        "train": {"epochs": 1, "batch_size": 100, "lr": 0.1},
    },
    "student": {
        "model": {"name": "mlp", "hidden": [48]},
        "train": {"epochs": 1, "batch_size": 100, "lr": 0.1},
    },
    "runtime": {"progress": False, "tensorboard": False, "precision": "fp32", "eval_batch_size": 1000},
}
FAST = {
    "prune_target": 0.5,
    "round_to": 8,
    "finetune": TrainConfig(epochs=1, batch_size=100, lr=0.05),
    "calibration_batches": 2,
    "latency_runs": 3,
    "latency_warmup": 1,
    "threads": [1],
    "batch_sizes": [1, 8],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run: teacher, scratch and distilled MLP students on the MNIST subset."""
    run = tmp_path_factory.mktemp("compress") / "run"
    run_experiment(build_config(RUN), run)
    return run


def test_compress_run_writes_the_table_and_refuses_to_overwrite(run_dir):
    run_summary = json.loads((run_dir / "summary.json").read_text())
    summary = compress_run(run_dir, CompressConfig(**FAST))
    out = run_dir / "compress"
    saved = json.loads((out / "summary.json").read_text())
    assert list(saved["models"]) == [k for k in ROWS if not k.endswith("_qat")]  # QAT rows need compress.qat
    for key, rec in saved["models"].items():
        assert set(ROW_FIELDS) <= set(rec), key
        for field in ("accuracy", "params", "flops", "macs", "onnx_mb", "latency_ms", "onnx_file"):
            assert rec[field] is not None, (key, field)
        assert (out / rec["onnx_file"]).is_file()
        assert 0.0 <= rec["accuracy"] <= 1.0 and rec["test_size"] == 2000
        ort_cols = {f"ort_b{b}_t1" for b in (1, 8)}
        assert ort_cols <= set(rec["latency_ms"])
        for cell in rec["latency"]:
            assert cell["runs"] == 3 and cell["median_ms"] <= cell["p90_ms"]
    m = saved["models"]
    # Accuracy backends as promised: PyTorch for fp32 models, ONNX Runtime for the int8 one.
    assert m["int8_student"]["accuracy_backend"] == "onnxruntime"
    assert m["student"]["accuracy_backend"] == "pytorch"
    assert (
        m["int8_student"]["safetensors_mb"] is None and "eager_b1_t1" not in m["int8_student"]["latency_ms"]
    )
    assert {"eager_b1_t1", "eager_b8_t1"} <= set(m["pruned_student"]["latency_ms"])
    # The pruned student is about half the student's FLOPs, and its numbers match the run's record.
    assert m["pruned_student"]["flops"] / m["student"]["flops"] == pytest.approx(0.5, abs=0.05)
    assert saved["prune"]["achieved"] == pytest.approx(0.5, abs=0.05)
    assert saved["prune"]["widths_after"]["features.fc1"] < 48
    assert saved["prune"]["widths_after"]["features.fc1"] % 8 == 0  # round_to reaches prune_model
    assert m["student"]["accuracy"] == pytest.approx(summary["models"]["student"]["accuracy"])
    assert m["student"]["accuracy"] == pytest.approx(run_summary["models"]["student_kd"]["accuracy"])
    assert m["int8_student"]["onnx_mb"] < m["pruned_student"]["onnx_mb"]
    assert m["pruned_student"]["accuracy"] > 0.5  # re-distilled for one epoch on 1,000 images
    assert abs(m["int8_student"]["accuracy"] - m["pruned_student"]["accuracy"]) < 0.05
    # The unpruned student is quantized too: the same graph as the student's, in int8, evaluated by ORT.
    si8, s32 = m["student_int8"], m["student"]
    assert si8["accuracy_backend"] == "onnxruntime" and si8["safetensors_mb"] is None
    assert (si8["params"], si8["flops"]) == (s32["params"], s32["flops"])
    assert si8["onnx_mb"] < 0.5 * s32["onnx_mb"]
    assert abs(si8["accuracy"] - s32["accuracy"]) < 0.05
    assert saved["quantize"]["models"] == ["student_int8", "int8_student"]
    for rec in m.values():
        if rec["onnx_max_abs_diff"] is not None:
            assert rec["onnx_max_abs_diff"] <= rec["onnx_tolerance"]
    assert saved["quantize"]["quantize_linear_nodes"] > 0
    assert (out / "report.md").read_text().count("|") > 20
    assert (out / "accuracy_vs_latency.png").stat().st_size > 1000
    pruned, meta = load_pruned_model(out / "pruned_student")
    assert meta["dataset"] == "mnist-small" and pruned.classifier.out_features == 10
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".compress-")]  # temp folder gone

    # An existing compress/ is never replaced silently, by the API or the CLI.
    before = (out / "summary.json").read_bytes()
    with pytest.raises(RunDirError, match="overwrite"):
        compress_run(run_dir, CompressConfig(**FAST))
    assert main(["compress", str(run_dir)]) == 2
    assert (out / "summary.json").read_bytes() == before

    # With overwrite: replaced, here by an iterative run without int8.
    again = compress_run(
        run_dir,
        CompressConfig(**{**FAST, "quantize": False, "iterative_steps": 2, "round_to": None}),
        overwrite=True,
    )
    assert list(again["models"]) == ["teacher", "student", "pruned_student"]
    assert len(again["prune"]["rounds"]) == 2
    assert not (out / "pruned_student_int8.onnx").exists()
    assert json.loads((out / "summary.json").read_text())["config"]["iterative_steps"] == 2

    # The CLI: --set overrides validated through the run's config, --overwrite to replace.
    args = ["compress", str(run_dir), "--overwrite", "--set", "compress.latency_runs=2"]
    args += [
        "--set",
        "compress.threads=[1]",
        "--set",
        "compress.batch_sizes=[2]",
        "--set",
        "compress.quantize=false",
    ]
    assert main(args) == 0
    cli = json.loads((out / "summary.json").read_text())
    assert cli["config"]["latency_runs"] == 2 and set(cli["models"]["teacher"]["latency_ms"]) == {
        "ort_b2_t1",
        "eager_b2_t1",
    }
    assert main(["compress", str(run_dir), "--overwrite", "--set", "compress.prune_by=latency"]) == 2

    # Files kdkit did not write are never deleted, even with overwrite.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="notes.txt"):
        compress_run(run_dir, CompressConfig(**FAST), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_quantization_aware_distillation_adds_its_own_int8_rows(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("compress", ".compress-*"))
    qat = TrainConfig(epochs=1, batch_size=100, optimizer="adamw", lr=1e-4)
    summary = compress_run(run, CompressConfig(**{**FAST, "qat": qat}))
    out, m = run / "compress", summary["models"]
    assert list(m) == list(ROWS)  # each QAT row right after its post-training row
    assert summary["qat"]["config"]["epochs"] == 1 and summary["qat"]["config"]["lr"] == 1e-4
    for key, ptq, fp32 in (
        ("student_int8_qat", "student_int8", "student"),
        ("int8_student_qat", "int8_student", "pruned_student"),
    ):
        rec = m[key]
        assert rec["accuracy_backend"] == "onnxruntime" and (out / rec["onnx_file"]).is_file()
        assert rec["onnx_file"] != m[ptq]["onnx_file"]
        assert (rec["params"], rec["flops"]) == (m[fp32]["params"], m[fp32]["flops"])
        assert rec["onnx_mb"] < 0.5 * m[fp32]["onnx_mb"]
        assert abs(rec["accuracy"] - m[fp32]["accuracy"]) < 0.05
        # The QAT copy trained from the fp32 model: its int8 weights are not the post-training ones.
        w_qat, w_ptq = (_int8_weights(out / m[k]["onnx_file"]) for k in (key, ptq))
        assert w_qat.keys() == w_ptq.keys() and any(not np.array_equal(w_qat[k], w_ptq[k]) for k in w_qat)
        info = summary["qat"]["models"][key]
        assert 0.5 < info["val_accuracy_emulated_after"] <= 1 and info["train_seconds"] > 0
        assert 0.5 < info["val_accuracy_emulated_before"] <= 1
    # The QAT copies' float graphs were only the quantizer's input: nothing of them is left.
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or "qat.onnx" in p.name]
    assert "int8 pruned student (QAT)" in (out / "report.md").read_text()

    # Without a validation split QAT still runs; what it changed on validation is unknown, not 0%.
    cfg_path = run / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("val_size: 200", "val_size: 0"))
    again = compress_run(
        run, CompressConfig(**{**FAST, "qat": qat, "quantize_unpruned": False}), overwrite=True
    )
    assert list(again["qat"]["models"]) == ["int8_student_qat"]
    info = again["qat"]["models"]["int8_student_qat"]
    assert info["val_accuracy_emulated_before"] is None and info["val_accuracy_emulated_after"] is None
    assert again["models"]["int8_student_qat"]["accuracy"] > 0.5


def _int8_weights(path) -> dict[str, np.ndarray]:
    return {
        t.name: onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8
    }


def test_compress_needs_a_distilled_student(run_dir, tmp_path):
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", partial / "config.yaml")
    for suffix in (".safetensors", ".json"):
        shutil.copy(run_dir / "checkpoints" / f"teacher{suffix}", partial / "checkpoints")
    with pytest.raises(CheckpointError, match=r"student_kd\.(safetensors|json)"):
        compress_run(partial, CompressConfig(**FAST))
    assert not (partial / "compress").exists()
    with pytest.raises(RunDirError, match="does not exist"):
        compress_run(tmp_path / "missing", CompressConfig(**FAST))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="config.yaml"):
        compress_run(tmp_path / "empty", CompressConfig(**FAST))


def test_kdkit_run_with_a_compress_section_goes_end_to_end(tmp_path):
    raw = {
        **RUN,
        "phases": ["teacher", "distill"],
        "compress": {**FAST, "finetune": FAST["finetune"].model_dump(), "quantize": False},
    }
    summary = run_experiment(build_config(raw), tmp_path / "run")
    assert set(summary["compress"]["models"]) >= {"teacher", "student", "pruned_student"}
    assert (tmp_path / "run" / "compress" / "summary.json").is_file()
