"""Answer normalization and exact match: one definition for the world's scoring and evaluation."""

from __future__ import annotations


def normalize_answer(text: str) -> str:
    """Canonical form of an answer for exact match: collapse whitespace runs, casefold, and drop
    trailing periods (a model may end its answer like a sentence), so formatting never decides a
    match. Idempotent."""
    text = " ".join(text.split()).casefold()
    return text.rstrip(".").rstrip()


def exact_match(prediction: str, answer: str) -> bool:
    """Whether `prediction` equals the reference `answer` after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(answer)


__all__ = ["exact_match", "normalize_answer"]
