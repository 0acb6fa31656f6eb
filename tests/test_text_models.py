"""Sentence students: Tang's BiLSTM and Kim's text CNN read only valid positions (padding never changes a
prediction), are built by name with the vocabulary as `in_channels`, and can start from a teacher's embeddings."""

import pytest
import torch

from kdkit.errors import ModelError
from kdkit.models import BiLSTMClassifier, TextCNN, create
from kdkit.models.text import projected_embeddings

VOCAB = 40


def _batch():
    """Three sentences of lengths 5, 2 and 1, right-padded with 0 to 7 tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (3, 7), generator=g)
    lengths = torch.tensor([5, 2, 1])
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    return ids * mask, mask


def _padded(ids, mask, extra):
    z = torch.zeros(len(ids), extra, dtype=ids.dtype)
    return torch.cat([ids, z], 1), torch.cat([mask, z], 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: BiLSTMClassifier(VOCAB, 3, 8, 6, 5, pooling="max"),
        lambda: BiLSTMClassifier(VOCAB, 3, 8, 6, 5, pooling="concat"),
        lambda: TextCNN(VOCAB, 3, 8, 4, (2, 3, 4)),
    ],
    ids=["bilstm-max", "bilstm-concat", "textcnn"],
)
def test_padding_never_changes_the_logits(make):
    torch.manual_seed(0)
    model = make().eval()
    ids, mask = _batch()
    with torch.no_grad():
        logits = model(ids, mask)
        assert logits.shape == (3, 3)
        for extra in (1, 9, 30):
            assert torch.equal(model(*_padded(ids, mask, extra)), logits)
        # Garbage token ids at padded positions are never read either.
        noisy = ids + (1 - mask) * torch.randint(1, VOCAB, ids.shape)
        assert torch.equal(model(noisy, mask), logits)
        # A sentence alone gives what it gives in a batch (trimmed to its own length).
        alone = model(ids[1:2, :2], mask[1:2, :2])
        torch.testing.assert_close(alone, logits[1:2], rtol=0, atol=1e-6)
        # and the logits do depend on the real tokens.
        changed = ids.clone()
        changed[0, 0] = (changed[0, 0] % (VOCAB - 1)) + 1
        assert not torch.equal(model(changed, mask)[0], logits[0])


def test_registry_builds_the_students_on_the_datas_vocabulary():
    m = create("bilstm", num_classes=2, in_channels=VOCAB, embed_dim=10, hidden=7, mlp=9)
    assert m.embed.weight.shape == (VOCAB, 10) and m.rnn.hidden_size == 7 and m.classifier.out_features == 2
    # embedding, LSTM (2 directions x 4 gates), MLP, classifier
    lstm = 2 * (4 * 7 * (10 + 7) + 2 * 4 * 7)
    assert sum(p.numel() for p in m.parameters()) == VOCAB * 10 + lstm + (14 * 9 + 9) + (9 * 2 + 2)
    c = create("textcnn", num_classes=5, in_channels=VOCAB, embed_dim=6, filters=3, widths=[2, 3])
    assert sum(p.numel() for p in c.parameters()) == VOCAB * 6 + (6 * 3 * 2 + 3) + (6 * 3 * 3 + 3) + (
        6 * 5 + 5
    )
    assert c(torch.tensor([[4, 5, 6]]), torch.tensor([[1, 1, 1]])).shape == (1, 5)
    with pytest.raises(ModelError, match="pooling must be 'max' or 'concat'"):
        create("bilstm", num_classes=2, in_channels=VOCAB, pooling="mean")
    with pytest.raises(ModelError, match="embed_dim: null needs embeddings_from"):
        create("bilstm", num_classes=2, in_channels=VOCAB, embed_dim=None)


def test_projection_keeps_the_leading_principal_components():
    g = torch.Generator().manual_seed(0)
    # Variance 100 along one direction, 25 along a second, 0.01 elsewhere.
    basis = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    coords = torch.randn(500, 6, generator=g) * torch.tensor([10.0, 5.0, 0.1, 0.1, 0.1, 0.1])
    weight = coords @ basis.T + 3.0
    out = projected_embeddings(weight, 2)
    assert out.shape == (500, 2)
    torch.testing.assert_close(out.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    assert 0.97 < out.var(0).sum() / weight.var(0).sum() < 1.0  # the two big directions carry ~99.9%
    assert torch.equal(projected_embeddings(weight, 6), weight)
    with pytest.raises(ModelError, match="larger than the teacher's embedding width"):
        projected_embeddings(weight, 7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_hf import tiny_bert_folder

    return tiny_bert_folder(tmp_path_factory.mktemp("tiny-bert"))


def test_embeddings_from_the_teacher_sized_or_projected(tiny):
    from kdkit.models.hf import input_embeddings

    teacher = input_embeddings(str(tiny))  # (36, 16)
    same = create("bilstm", num_classes=2, in_channels=36, embed_dim=None, embeddings_from=f"hf:{tiny}")
    assert torch.equal(same.embed.weight, teacher) and same.embed.weight.requires_grad
    small = create("textcnn", num_classes=2, in_channels=36, embed_dim=4, embeddings_from=f"hf:{tiny}")
    torch.testing.assert_close(small.embed.weight, projected_embeddings(teacher, 4))
    frozen = create("bilstm", num_classes=2, in_channels=36, embeddings_from=f"hf:{tiny}", embed_dim=8,
                    freeze_embeddings=True)  # fmt: skip
    assert not frozen.embed.weight.requires_grad
    with pytest.raises(ModelError, match="has 36 tokens but the data's vocabulary has 40"):
        create("bilstm", num_classes=2, in_channels=40, embed_dim=None, embeddings_from=f"hf:{tiny}")
    with pytest.raises(ModelError, match="embeddings_from must be 'hf:PATH'"):
        create("bilstm", num_classes=2, in_channels=36, embeddings_from=str(tiny))
