"""Classifier metrics (AUC against a brute-force count) and selection metrics against labels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from common.errors import DataError
from datamodules.selection.metrics import (
    EvaluationSettings,
    LabelsSpec,
    binary_metrics,
    evaluate_selection,
    read_labels,
    roc_auc,
)


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(positive > negative) + 0.5 P(tie), over every pair."""
    pos = scores[labels]
    neg = scores[~labels]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_the_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.4
    scores = rng.integers(0, 6, size=60).astype(float) / 5  # many ties
    assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)
    continuous = rng.random(60)
    assert roc_auc(labels, continuous) == pytest.approx(
        _pairwise_auc(labels, continuous), abs=1e-12
    )


def test_auc_extremes_and_one_class():
    y = np.array([True, True, False, False])
    assert roc_auc(y, [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert roc_auc(y, [0.1, 0.2, 0.9, 0.8]) == 0.0
    assert roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([True, True], [0.1, 0.2]))


def test_binary_metrics_at_the_threshold():
    m = binary_metrics([True, True, True, False, False], [0.9, 0.5, 0.2, 0.7, 0.1], threshold=0.5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert (m["positives"], m["negatives"]) == (3, 2)


LABELS = {
    "a": {"in_domain": True, "quality": "high"},
    "b": {"in_domain": True, "quality": "low"},
    "c": {"in_domain": False, "quality": "high"},
    "d": {"in_domain": False, "quality": "low"},
    "e": {"in_domain": True, "quality": "high"},
}


def test_selection_metrics_on_hand_made_labels():
    m = evaluate_selection(["a", "b", "c", "zz"], LABELS, token_counts={"a": 10, "b": 5, "c": 5})
    assert m["unlabelled"] == 1 and m["selected"] == 4
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["low_quality_share"] == pytest.approx(1 / 3)
    assert m["in_domain_high_quality_precision"] == pytest.approx(1 / 3)
    assert m["in_domain_high_quality_recall"] == pytest.approx(1 / 2)
    assert m["tokens_selected"] == 20 and m["token_precision"] == pytest.approx(15 / 20)
    other = evaluate_selection(
        ["c"], {"c": {"dom": 1, "q": "bad"}}, EvaluationSettings("dom", "q", ["bad"])
    )
    assert other["precision"] == 1.0 and other["low_quality_share"] == 1.0


def test_labels_are_read_strictly(write_jsonl):
    path = write_jsonl("labels.jsonl", [{"id": "a", "in_domain": True}, {"id": "b"}])
    labels = read_labels(LabelsSpec(path=str(path)), ("in_domain",))
    assert labels == {"a": {"in_domain": True}, "b": {}}
    dup = write_jsonl("dup.jsonl", [{"id": "a"}, {"id": "a"}])
    with pytest.raises(DataError, match=rf"{dup}:2: duplicate id 'a'"):
        read_labels(LabelsSpec(path=str(dup)), ("in_domain",))
