"""The budget rule, the orders, the quality filter and the selection files."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError, DataError
from datamodules.selection.corpus import Document
from datamodules.selection.select import (
    check_budget,
    count_tokens,
    fill_budget,
    order_by_score,
    quality_mask,
    random_order,
    read_scores,
    select,
    write_scores,
    write_selected,
)


def test_fill_budget_keeps_what_still_fits_and_stops_when_full():
    tokens = [5, 8, 3, 4, 2, 6]
    # 5 fits (5), 8 does not (13 > 10), 3 fits (8), 4 does not, 2 fits (10): full, stop
    assert fill_budget([0, 1, 2, 3, 4, 5], tokens, 10).tolist() == [0, 2, 4]
    assert fill_budget([5, 4, 3], tokens, 100).tolist() == [5, 4, 3]  # the order ends first
    assert fill_budget([1], tokens, 7).tolist() == []  # nothing fits
    assert fill_budget([3, 0], tokens, 9).tolist() == [3, 0]  # exactly full


def test_check_budget():
    check_budget(10, 10)
    with pytest.raises(ConfigError, match="'budget_tokens': is 11 but the corpus has only 10"):
        check_budget(11, 10)
    with pytest.raises(ConfigError, match="'budget_tokens'"):
        check_budget(0, 10)


def test_orders():
    assert order_by_score([0.2, 0.9, 0.2, np.nan, 0.5]).tolist() == [1, 4, 0, 2, 3]
    first = random_order(50, seed=1)
    assert np.array_equal(first, random_order(50, seed=1))
    assert not np.array_equal(first, random_order(50, seed=2))
    assert sorted(first.tolist()) == list(range(50))


def test_random_fill_is_deterministic():
    tokens = np.random.default_rng(0).integers(1, 20, size=200)
    a = select(random_order(200, 7), tokens, budget_tokens=300)
    b = select(random_order(200, 7), tokens, budget_tokens=300)
    assert np.array_equal(a.indices, b.indices) and a.tokens == b.tokens <= 300
    assert a.tokens > 300 - 19  # every document has < 20 tokens: the rule stops only when full


def test_quality_mask_top_fraction_over_the_corpus_and_threshold():
    quality = np.array([0.9, 0.1, 0.5, 0.7, 0.3])
    assert quality_mask(quality, keep_fraction=0.4).tolist() == [True, False, False, True, False]
    assert quality_mask(quality, keep_fraction=0.5).tolist() == [True, False, True, True, False]
    assert quality_mask(quality, threshold=0.5).tolist() == [True, False, True, True, False]
    both = quality_mask(quality, keep_fraction=0.6, threshold=0.6)
    assert both.tolist() == [True, False, False, True, False]
    assert quality_mask(quality).all()


def test_quality_filter_composes_with_domain_order_and_budget():
    domain = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    quality = np.array([0.1, 0.9, 0.8, 0.95, 0.2, 0.7])
    tokens = np.array([3, 3, 3, 3, 3, 3])
    keep = quality_mask(quality, keep_fraction=0.5)  # the corpus's top 3: docs 3, 1, 2
    chosen = select(order_by_score(domain), tokens, budget_tokens=6, eligible=keep)
    assert chosen.indices.tolist() == [1, 2]  # doc 0 scores highest but is low quality
    assert chosen.candidates == 3 and chosen.candidate_tokens == 9
    unfilled = select(order_by_score(domain), tokens, budget_tokens=12, eligible=keep)
    assert unfilled.indices.tolist() == [1, 2, 3] and unfilled.tokens == 9
    everything_above = select(
        order_by_score(domain), tokens, budget_tokens=None, eligible=domain >= 0.6
    )
    assert everything_above.indices.tolist() == [0, 1, 2, 3]


def test_count_tokens_uses_no_special_tokens(tiny_tokenizer):
    texts = ["Alice Varen was born in Orlin.", "", "Bram"]
    expected = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert count_tokens(texts, tiny_tokenizer, batch_size=2).tolist() == expected


def test_scores_and_selected_files(tmp_path):
    path = write_scores(tmp_path / "scores.jsonl", ["a", "b"], np.array([0.5, -np.inf]))
    ids, scores = read_scores(path, ["a", "b"])
    assert ids == ["a", "b"] and scores[0] == 0.5 and scores[1] == -np.inf
    with pytest.raises(DataError, match="does not score this corpus"):
        read_scores(path, ["b", "a"])
    docs = [Document("a", "one\ntwo"), Document("b", "three")]
    selected = write_selected(tmp_path / "selected.jsonl", docs, np.array([1, 0]))
    assert selected.read_text().splitlines() == [
        '{"id": "b", "text": "three"}',
        '{"id": "a", "text": "one\\ntwo"}',
    ]
    assert not list(tmp_path.glob(".tmp-*"))  # nothing staged is left behind
