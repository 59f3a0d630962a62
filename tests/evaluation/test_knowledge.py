"""`evaluation.knowledge`: held-out NLL through the fused CE equals a full-logits reference."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from evaluation import chunks_nll, heldout_nll, metrics_from_sums, perplexity_chunks, shard
from tests.callbacks.conftest import tiny_llama
from tests.evaluation.conftest import TEXTS


def full_logits_nll(model: torch.nn.Module, chunks: list[list[int]]) -> tuple[float, int]:
    """Summed NLL from the whole `[1, L, V]` logits of each chunk alone, in float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            ids = torch.tensor([chunk])
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            total -= logprobs.gather(1, ids[0, 1:, None]).sum().item()
            count += len(chunk) - 1
    return total, count


@pytest.mark.parametrize(("max_length", "batch_size"), [(128, 3), (7, 2), (5, 32)])
def test_heldout_nll_equals_full_logits_reference(
    tiny_tokenizer: Any, max_length: int, batch_size: int
) -> None:
    model = tiny_llama(tiny_tokenizer, seed=1).eval()
    chunks = perplexity_chunks(tiny_tokenizer, TEXTS, max_length)
    nll, tokens = heldout_nll(
        model, tiny_tokenizer, TEXTS, max_length=max_length, batch_size=batch_size
    )
    ref_nll, ref_tokens = full_logits_nll(model, chunks)
    assert tokens == ref_tokens
    assert nll == pytest.approx(ref_nll, rel=1e-5)


def test_nll_never_materializes_full_logits(tiny_tokenizer: Any, monkeypatch) -> None:
    model = tiny_llama(tiny_tokenizer, seed=1).eval()

    def no_head(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the LM head's forward (full logits) must not run")

    monkeypatch.setattr(model.lm_head, "forward", no_head)
    nll, tokens = heldout_nll(model, tiny_tokenizer, TEXTS, max_length=16)
    assert tokens > 0 and math.isfinite(nll)


def test_uncounted_chunks_add_nothing(tiny_tokenizer: Any) -> None:
    model = tiny_llama(tiny_tokenizer, seed=1).eval()
    chunks = perplexity_chunks(tiny_tokenizer, TEXTS, 16)
    counted = [i % 2 == 0 for i in range(len(chunks))]
    got = chunks_nll(model, chunks, batch_size=3, pad_id=0, counted=counted)
    kept = [c for c, use in zip(chunks, counted) if use]
    ref = full_logits_nll(model, kept)
    assert got[1] == ref[1] and got[0] == pytest.approx(ref[0], rel=1e-5)


def test_rank_shards_sum_to_the_whole(tiny_tokenizer: Any) -> None:
    model = tiny_llama(tiny_tokenizer, seed=1).eval()
    chunks = perplexity_chunks(tiny_tokenizer, TEXTS, 8)
    whole = chunks_nll(model, chunks)
    parts = []
    for rank in range(3):
        indices, counted = shard(len(chunks), rank, 3)
        parts.append(chunks_nll(model, [chunks[i] for i in indices], counted=counted))
    assert sum(n for _, n in parts) == whole[1]
    assert math.fsum(x for x, _ in parts) == pytest.approx(whole[0], rel=1e-5)


def test_metrics_from_sums_names_and_values() -> None:
    sums = {
        ("qa", "domain", "born", "correct"): 1.0,
        ("qa", "domain", "born", "total"): 2.0,
        ("qa", "domain", "job", "correct"): 0.0,
        ("qa", "domain", "job", "total"): 0.0,
        ("ppl", "general", "", "nll"): 10.0,
        ("ppl", "general", "", "tokens"): 5.0,
    }
    metrics, counts = metrics_from_sums(sums)
    assert metrics == {
        "knowledge/qa_em/domain": 0.5,
        "knowledge/qa_em/domain/born": 0.5,
        "knowledge/ppl/general": pytest.approx(math.exp(2.0)),
    }
    assert counts == {"qa/domain": 2, "ppl_tokens/general": 5}
