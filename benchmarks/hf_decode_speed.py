"""Decoding speed of an hf: causal LM: kdkit's generation with the model's key/value cache, without it, and
transformers' own `generate`, on the same model and prompts.

    PYTHONPATH=benchmarks python benchmarks/hf_decode_speed.py    # writes results/hf_decode_speed.json, RESULTS.md

On-policy (GKD) and sequence-level distillation decode every batch (or every prompt) with `kdkit.generation`;
before the cache, an hf: model was run on the whole sequence at each new token. The model is a GPT-2 with the
lm_shakespeare teacher's shape (4 layers, width 256, 4 heads, a vocabulary of 2048) and random weights, saved
as a local Hugging Face folder and loaded through `hf:PATH`; the prompts are 16 of 8 tokens and each is continued
by 120 greedy tokens (the on-policy setting of a 128-token block). fp32, 2 threads. The three ways alternate
within each round and each figure is the median of the rounds; the tokens of the three are compared too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from benchcommon import machine, machine_id, store_and_render

from kdkit.generation import Sampling, generate
from kdkit.models import create

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "hf_decode_speed.json"
MARKS = ("<!-- hf_decode_speed:start -->", "<!-- hf_decode_speed:end -->")
SHAPE = {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 2048, "n_positions": 256}
PROMPTS, PROMPT_LEN, NEW_TOKENS, ROUNDS, THREADS = 16, 8, 120, 5, 2


def hf_folder(directory: Path) -> Path:
    """Write a GPT-2 of SHAPE with random weights (seed 0) as a Hugging Face folder; return it."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(**SHAPE, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def timed(decode: Callable[[], torch.Tensor]) -> float:
    """Return the seconds of one decoding."""
    start = time.perf_counter()
    decode()
    return time.perf_counter() - start


def measure(directory: Path) -> dict:
    """Return the median seconds of each way of decoding, their ratios and whether their tokens agree."""
    model = create(f"hf:{hf_folder(directory)}", num_classes=SHAPE["vocab_size"], causal_lm=True).eval()
    prompts = torch.randint(
        0, SHAPE["vocab_size"], (PROMPTS, PROMPT_LEN), generator=torch.Generator().manual_seed(0)
    )
    greedy = Sampling(greedy=True)
    ways: dict[str, Callable[[], torch.Tensor]] = {
        "kdkit, cache": lambda: generate(model, prompts, NEW_TOKENS, greedy),
        "kdkit, no cache": lambda: generate(model, prompts, NEW_TOKENS, greedy, use_cache=False),
        "transformers generate": lambda: model.hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        ),
    }
    with torch.no_grad():
        tokens = {name: decode() for name, decode in ways.items()}  # warm-up, and the tokens compared
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(ROUNDS):
            for name, decode in ways.items():
                seconds[name].append(timed(decode))
    median = {name: statistics.median(s) for name, s in seconds.items()}
    cached = tokens["kdkit, cache"]
    return {
        "seconds": seconds,
        "median_seconds": median,
        "tokens_per_second": {name: PROMPTS * NEW_TOKENS / m for name, m in median.items()},
        "no_cache_over_cache": median["kdkit, no cache"] / median["kdkit, cache"],
        "transformers_over_kdkit_cache": median["transformers generate"] / median["kdkit, cache"],
        "same_tokens_without_cache": bool(torch.equal(cached, tokens["kdkit, no cache"])),
        # transformers' min_new_tokens forbids the end-of-text token (id 0) until the last step; greedy decoding
        # otherwise picks the same tokens wherever kdkit's did not pick id 0.
        "same_tokens_as_transformers": bool(torch.equal(cached, tokens["transformers generate"])),
        "kdkit_picked_end_of_text": int((cached[:, PROMPT_LEN:] == 0).sum()),
    }


def render(doc: dict) -> str:
    """Return the RESULTS.md section of a stored result."""
    r = doc["result"]
    lines = [
        MARKS[0],
        "## Decoding an hf: causal LM: kdkit's generation with and without the model's cache, and transformers'",
        "",
        f"Command: `{doc['command']}`  ",
        f"Machine: {doc['machine_id']}, {doc['threads']} threads, fp32; {doc['date']}; load average at the start "
        f"{doc['loadavg'][0]:.2f}.  ",
        f"Model: GPT-2, {doc['shape']['n_layer']} layers, width {doc['shape']['n_embd']}, "
        f"{doc['shape']['n_head']} heads, vocabulary {doc['shape']['vocab_size']}, random weights, loaded as "
        f"`hf:PATH`. {doc['prompts']} prompts of {doc['prompt_len']} tokens, {doc['new_tokens']} greedy new tokens "
        f"each; median of {doc['rounds']} rounds in which the three ways alternate.",
        "",
        "| way | median s | tokens / s | rounds (s) |",
        "|---|---|---|---|",
    ]
    for name, m in r["median_seconds"].items():
        rounds = ", ".join(f"{s:.2f}" for s in r["seconds"][name])
        lines.append(f"| {name} | {m:.2f} | {r['tokens_per_second'][name]:,.0f} | {rounds} |")
    lines += [
        "",
        f"The cache makes kdkit's decoding {r['no_cache_over_cache']:.2f}x faster (no cache / cache); "
        f"transformers' generate takes {r['transformers_over_kdkit_cache']:.2f}x kdkit's cached time. "
        f"Same tokens with and without the cache: {'yes' if r['same_tokens_without_cache'] else 'no'}; "
        f"as transformers': {'yes' if r['same_tokens_as_transformers'] else 'no'} "
        f"(kdkit's greedy tokens include {r['kdkit_picked_end_of_text']} end-of-text tokens, which transformers' "
        "min_new_tokens forbids).",
        MARKS[1],
    ]
    return "\n".join(lines)


def render_stored(results_root: Path = ROOT / "benchmarks" / "results") -> str:
    """Return the section from the stored JSON."""
    return render(json.loads((results_root / RESULT.name).read_text()))


def main() -> int:
    torch.set_num_threads(THREADS)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kdkit-hf-decode-") as directory:
        result = measure(Path(directory))
    doc = {
        "command": "PYTHONPATH=benchmarks python benchmarks/hf_decode_speed.py",
        "machine": machine(), "machine_id": machine_id(), "threads": THREADS, "loadavg": load,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "shape": SHAPE,
        "prompts": PROMPTS, "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS, "rounds": ROUNDS, "result": result,
    }  # fmt: skip
    store_and_render(doc, RESULT, render, MARKS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
