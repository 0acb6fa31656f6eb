"""benchmarks/lm_trl_peer.py's bridge: a kdkit GPT with learned positions becomes a Hugging Face GPT-2 with the
same logits, and back with the same weights; a rotary GPT is refused (GPT-2 has no rotary positions)."""

import json
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


def test_the_peer_keeps_its_own_budget_and_refuses_a_stored_run_of_other_sizes(tmp_path, monkeypatch):
    full = peer.sizes(quick=False)
    assert full["teacher_epochs"] == 2 and full["student_blocks"] == 1024  # its stored runs' budget
    assert "cache_ce" not in full and full["seeds"] == (0,)
    text = tmp_path / "input.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 400)
    monkeypatch.setattr(peer.lms, "TEXT", text)
    made = {k: v for k, v in peer.sizes(quick=True).items() if k != "seeds"}
    stored = {"run": "teacher", "sizes": {**made, "teacher_epochs": 99}}
    (tmp_path / "teacher.json").write_text(json.dumps(stored))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match="teacher.json was made with other sizes"):
            peer.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)


def test_the_ratio_is_the_median_of_the_alternating_repeats(tmp_path):
    folder = tmp_path / peer.NAME
    folder.mkdir()

    def run(name, tps, ppl, load):
        rec = {"run": name, "steps": 32, "student_tokens": 131072, "train_seconds": 131072 / tps,
               "tokens_per_second": tps, "test_perplexity": ppl, "test_kl_to_teacher": 0.7,
               "test_top1_agreement": 0.5, "threads": 1, "machine_id": "m", "loadavg_start": [load, 0, 0],
               "date": "2026-12-05T08:00:00+00:00"}  # fmt: skip
        (folder / f"{name}.json").write_text(json.dumps(rec))

    run("kdkit", 8000, 380.0, 1.0)
    run("trl", 4100, 520.0, 1.5)  # 1.95x
    run("kdkit-r2", 8400, 380.0, 1.2)
    run("trl-r2", 4000, 520.0, 1.1)  # 2.10x
    run("kdkit-r3", 8200, 380.0, 1.3)
    run("trl-r3", 4000, 520.0, 1.4)  # 2.05x
    run("kdkit-r4", 9000, 380.0, 1.3)  # no TRL partner: not a ratio
    assert peer.paired_ratios(peer.load_runs(folder)) == pytest.approx([8000 / 4100, 2.1, 2.05])
    text = peer.render_stored(tmp_path)
    assert (
        "median of 3 alternating repeat(s): **2.05x** (per repeat 1.95x, 2.10x, 2.05x; target >= 2x: met)"
        in text
    )
    assert "(target equal or better: met)" in text and "Load average at the starts: 1.00 to 1.50" in text
    rows = [
        ln.split("|")[1].strip()
        for ln in text.splitlines()
        if ln.startswith("| kdkit") or ln.startswith("| trl")
    ]
    assert rows == ["kdkit", "trl", "kdkit-r2", "trl-r2", "kdkit-r3", "trl-r3", "kdkit-r4"]
    (folder / "trl-r2.json").unlink()  # a lost repeat ends the pairs there
    assert peer.paired_ratios(peer.load_runs(folder)) == pytest.approx([8000 / 4100])
