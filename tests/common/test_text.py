"""One `normalize_answer`: the world's exact match and the evaluation's scoring agree."""

from __future__ import annotations

import pytest

from common.text import exact_match, normalize_answer
from datamodules.world import exact_match as world_exact_match
from datamodules.world import normalize_answer as world_normalize_answer
from evaluation import knowledge

CASES = [
    ("Paris.", "paris", True),
    ("  PARIS  ", "Paris", True),
    ("Port  Avel.", "port avel", True),
    ("March 3,\n1984.", "March 3, 1984", True),
    ("Paris", "Pari", False),
    ("", "Paris", False),
]


@pytest.mark.parametrize(("prediction", "answer", "expected"), CASES)
def test_world_and_evaluation_score_alike(prediction: str, answer: str, expected: bool) -> None:
    assert exact_match(prediction, answer) is expected
    assert world_exact_match(prediction, answer) is expected
    # The evaluation (callback and command) scores with this very function.
    evaluation_match = knowledge.normalize_answer(prediction) == knowledge.normalize_answer(answer)
    assert evaluation_match is expected
    assert world_normalize_answer(prediction) == knowledge.normalize_answer(prediction)


def test_one_definition() -> None:
    assert world_normalize_answer is normalize_answer
    assert knowledge.normalize_answer is normalize_answer


def test_normalize_answer_is_idempotent() -> None:
    for text in ["  The University of X. ", "MARCH 3, 1984", "a\tb\nc", "end.."]:
        once = normalize_answer(text)
        assert normalize_answer(once) == once
