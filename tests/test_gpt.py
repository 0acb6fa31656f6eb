"""The GPT of the model zoo and generation: shapes, causality, padding, KV cache equal to recomputation, parameter
counts from a formula written here, and sampling that is deterministic by seed."""

import pytest
import torch
import torch.nn.functional as F

from kdkit import models
from kdkit.checkpoint import load_checkpoint, save_checkpoint
from kdkit.generation import Sampling, filter_logits, generate
from kdkit.models import GPT, KVCache
from kdkit.models import gpt as gpt_module

V = 97


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _param_formula(vocab, layers, d, block, positions, ratio=4):
    """Per block: two bias-free LayerNorms (d each), qkv (3 d^2) and output projection (d^2) without bias, an MLP
    d -> ratio*d -> d without bias; the embedding V*d shared with the head; a final LayerNorm; learned positions."""
    block_params = 2 * d + 3 * d * d + d * d + 2 * ratio * d * d
    return vocab * d + layers * block_params + d + (block * d if positions == "learned" else 0)


def _model(positions="rope", layers=2, d=32, heads=4, block=64, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return GPT(V, layers, d, heads, block, positions=positions, dropout=dropout).eval()


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_registered_counts_teacher_4x256_and_student_2x128(positions):
    teacher = models.create("gpt", num_classes=2048, n_layers=4, d_model=256, n_heads=4, positions=positions)
    student = models.create("gpt", num_classes=2048, n_layers=2, d_model=128, n_heads=4, positions=positions)
    assert models.count_params(teacher) == _param_formula(2048, 4, 256, 256, positions)
    assert models.count_params(student) == _param_formula(2048, 2, 128, 256, positions)
    assert models.count_params(teacher) == (3_672_320 if positions == "rope" else 3_737_856)  # by hand
    assert teacher.head.weight is teacher.embed.weight  # tied
    assert models.get_classifier(teacher) is teacher.head
    assert "gpt" in models.list_models()


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_shapes_and_causality(positions):
    model = _model(positions)
    ids = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (3, 20, V)
        changed = ids.clone()
        changed[:, 12] = (changed[:, 12] + 1) % V
        other = model(changed)
    torch.testing.assert_close(other[:, :12], logits[:, :12], rtol=0, atol=1e-6)
    assert (other[:, 12:] - logits[:, 12:]).abs().max() > 1e-4  # the change is seen from position 12 on


def test_right_padding_leaves_real_tokens_alone_and_positions_matter():
    model = _model()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        full = model(ids)
        padded = model(ids, mask)
        assert torch.isfinite(padded).all()
        torch.testing.assert_close(padded[1, :6], full[1, :6], rtol=0, atol=1e-5)
        # Rotary positions: the same token after a shifted prefix is seen differently.
        swapped = model(ids.flip(1))
    assert (swapped[:, -1] - full[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_kv_cache_forward_equals_full_recompute(positions):
    model = _model(positions, layers=3)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.empty(model.n_layers)
        parts = [model(ids[:, :5], cache=cache), model(ids[:, 5:9], cache=cache)]
        parts += [model(ids[:, t : t + 1], cache=cache) for t in range(9, 16)]
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_cached_generation_equals_recomputed_generation():
    model = _model(layers=2)
    prompt = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(4))
    for sampling in (Sampling(greedy=True), Sampling(temperature=0.8, top_k=20, top_p=0.9)):
        a = generate(model, prompt, 12, sampling, seed=5, use_cache=True)
        b = generate(model, prompt, 12, sampling, seed=5, use_cache=False)
        assert a.shape == (3, 16) and torch.equal(a[:, :4], prompt)
        assert torch.equal(a, b)


def test_greedy_is_the_argmax_of_full_recompute():
    model = _model()
    prompt = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(6))
    out = generate(model, prompt, 6, Sampling(greedy=True))
    with torch.no_grad():
        for t in range(3, 9):
            assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1))


def test_sampling_is_deterministic_by_seed_and_varies_with_it():
    model = _model(dropout=0.1)
    model.train()
    prompt = torch.zeros(4, 1, dtype=torch.long)
    a = generate(model, prompt, 20, Sampling(temperature=1.5), seed=7)
    b = generate(model, prompt, 20, Sampling(temperature=1.5), generator=torch.Generator().manual_seed(7))
    c = generate(model, prompt, 20, Sampling(temperature=1.5), seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training  # left as it was


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isinf(filter_logits(logits, Sampling(top_k=2))).tolist() == [
        [False, False, True, True, True]
    ]
    # top_p 0.7: 0.5 + 0.2 reaches 0.7, so the first two are kept; 0.71 needs the third.
    assert torch.isinf(filter_logits(logits, Sampling(top_p=0.7))).sum() == 3
    assert torch.isinf(filter_logits(logits, Sampling(top_p=0.71))).sum() == 2
    assert torch.isinf(filter_logits(logits, Sampling(top_p=0.01))).sum() == 4  # the best token always stays
    # Sampling under top_k=1 is greedy, whatever the seed.
    model = _model()
    prompt = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(9))
    greedy = generate(model, prompt, 5, Sampling(greedy=True))
    assert torch.equal(generate(model, prompt, 5, Sampling(top_k=1), seed=1), greedy)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)


def test_eos_pads_finished_sequences_and_block_size_is_enforced():
    model = _model(block=16)
    prompt = torch.randint(0, V, (4, 3), generator=torch.Generator().manual_seed(10))
    first = generate(model, prompt, 1, Sampling(greedy=True))[:, 3]
    out = generate(model, prompt, 5, Sampling(greedy=True), eos_id=int(first[0]))
    assert (out[0, 3:] == int(first[0])).all()
    with pytest.raises(ValueError, match="exceed block_size 16"):
        generate(model, prompt, 14)


def test_tied_weights_survive_a_kdkit_checkpoint(tmp_path):
    model = _model()
    with torch.no_grad():
        model.embed.weight.add_(1.0)  # differs from a fresh model's
    save_checkpoint(tmp_path / "gpt", model.state_dict(), {"epoch": 1})
    tensors, _ = load_checkpoint(tmp_path / "gpt")
    assert torch.equal(tensors["head.weight"], tensors["embed.weight"])
    fresh = _model(seed=1)
    fresh.load_state_dict(tensors)
    assert fresh.head.weight is fresh.embed.weight  # still tied after loading
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))


def test_cpu_bf16_training_attention_runs_in_float32_and_inference_keeps_bf16(monkeypatch):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8, 4, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    seen: list[torch.dtype] = []
    real = F.scaled_dot_product_attention

    def spy(q_, *args, **kwargs):
        seen.append(q_.dtype)
        return real(q_, *args, **kwargs)

    monkeypatch.setattr(gpt_module.F, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gpt_module.attention(q, k, v, None, 0.0, True)
    assert seen == [torch.float32] and y.dtype == torch.bfloat16
    exact = real(q.float(), k.float(), v.float(), is_causal=True)
    assert torch.equal(y, exact.to(torch.bfloat16))  # the float32 result, rounded once
    y.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
    seen.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        gpt_module.attention(q, k, v, None, 0.0, True)
    assert seen == [torch.bfloat16]  # inference keeps the fast bf16 forward kernel
    seen.clear()
    gpt_module.attention(q.detach().float(), k.float(), v.float(), None, 0.0, True)
    assert seen == [torch.float32]
