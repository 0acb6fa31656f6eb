"""benchmarks/lm_trl_peer.py's bridge: a kdkit GPT with learned positions becomes a Hugging Face GPT-2 with the
same logits, and back with the same weights; a rotary GPT is refused (GPT-2 has no rotary positions)."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lm_trl_peer as peer  # noqa: E402

from kdkit.models import GPT  # noqa: E402


def test_gpt_with_learned_positions_converts_to_gpt2_with_the_same_logits_and_back():
    torch.manual_seed(0)
    model = GPT(97, 2, 32, 4, 24, positions="learned", mlp_ratio=3).eval()
    with torch.no_grad():  # non-trivial norms, so that a misplaced weight shows
        for b in model.blocks:
            b.norm1.weight.uniform_(0.5, 1.5)
            b.norm2.weight.uniform_(0.5, 1.5)
        model.norm.weight.uniform_(0.5, 1.5)
    hf = peer.to_gpt2(model)
    assert hf.config.n_inner == 96 and hf.config.n_positions == 24 and hf.config.vocab_size == 97
    ids = torch.randint(0, 97, (3, 24))
    with torch.no_grad():
        ours, theirs = model(ids), hf(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    back = peer.from_gpt2(hf, model)
    sa, sb = model.state_dict(), back.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        hf.transformer.h[0].attn.c_attn.bias.fill_(0.1)
    with pytest.raises(ValueError, match="non-zero biases"):
        peer.from_gpt2(hf, model)


def test_a_rotary_gpt_is_refused():
    with pytest.raises(ValueError, match="only a GPT with learned positions converts to GPT-2"):
        peer.to_gpt2(GPT(64, 1, 16, 2, 8))
