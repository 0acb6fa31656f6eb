# A probe, not a benchmark: run with PYTHONPATH=benchmarks after lm_shakespeare.py (it reuses its teacher and work dir).
"""Diagnostic (not a benchmark): dense vs top-k cached forward KL, each alone and with a hard-label CE term,
on the lm_shakespeare teacher and student sizes (seed 0). Prints test perplexity and train seconds."""

import json
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import lm_shakespeare as lms
import torch
from lm_shakespeare import in_precision

from kdkit.data.lm_text import tokenizer_hash
from kdkit.lm_cache import SparseTeacherCache, cache_key, sparse_steps, sparse_term
from kdkit.lm_modes import LMTeacherStep
from kdkit.objective import Objective, Term
from kdkit.teacher import FrozenTeacher

torch.set_num_threads(1)
sz = lms.sizes(False)
b = lms.Bench(
    sz,
    lms.ROOT / "benchmarks" / "results" / "lm_shakespeare",
    lms.ROOT / "benchmarks" / "runs" / "lm_shakespeare",
    "diag",
)
seed = 0
res = {}


def dense(ce):
    terms = [Term.from_name("forward_kl", 1.0 - ce)] + ([Term.from_name("ce", ce)] if ce else [])
    fit = lms.engine().fit(
        "dense",
        b.student(seed),
        Objective(terms),
        b.loader(seed),
        b.cfg(),
        task=lms.TOKENS,
        steps=LMTeacherStep(FrozenTeacher(b.teacher)),
    )
    return fit


def sparse(k, ce):
    ids, mask, _ = b.student_blocks()
    key = cache_key(b.teacher, ids, mask, tokenizer_hash(b.data.tokenizer), k, 1.0)
    cache = SparseTeacherCache(b.work / "cache" / f"k{k}-{key}", key)
    cache.build(in_precision(b.teacher), ids, mask, b.data.vocab_size, k)
    served = cache.load(vocab_size=b.data.vocab_size)
    terms = [sparse_term("forward_kl", 1.0 - ce)] + ([Term.from_name("ce", ce)] if ce else [])
    return lms.engine().fit(
        "sparse",
        b.student(seed),
        Objective(terms),
        b.loader(seed, served),
        b.cfg(),
        task=lms.TOKENS,
        steps=sparse_steps(),
    )


tl = b.teacher_logits()
for name, fn in [
    ("dense", lambda: dense(0.0)),
    ("dense+ce0.5", lambda: dense(0.5)),
    ("top32", lambda: sparse(32, 0.0)),
    ("top32+ce0.5", lambda: sparse(32, 0.5)),
    ("top128+ce0.5", lambda: sparse(128, 0.5)),
]:
    fit = fn()
    m = lms.test_measures(fit.model, tl, b.data, sz)
    res[name] = {"ppl": m["test_perplexity"], "kl": m.get("test_kl_to_teacher"), "train_s": fit.train_seconds}
    print(name, json.dumps(res[name]), flush=True)
