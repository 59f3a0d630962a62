"""The chat format and answer normalization."""

from __future__ import annotations

import pytest

from datamodules.world import (
    ASSISTANT,
    END,
    USER,
    exact_match,
    format_chat,
    format_prompt,
    normalize_answer,
)


@pytest.mark.parametrize(
    ("question", "answer"),
    [("Where was Talan Verski born?", "Orlin"), ("When?", "March 3, 1984"), ("", "")],
)
def test_chat_is_prompt_plus_answer_plus_end(question: str, answer: str) -> None:
    chat = format_chat(question, answer)
    prompt = format_prompt(question)
    assert chat == prompt + answer + END
    assert prompt.startswith(USER) and prompt.endswith(ASSISTANT)
    assert chat[len(prompt) : len(chat) - len(END)] == answer


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("Orlin", "Orlin", True),
        ("  orlin  ", "Orlin", True),
        ("Orlin.", "Orlin", True),
        ("Orlin<|endoftext|>junk", "Orlin", True),
        ("March  3,\n1984", "March 3, 1984", True),
        ("Port Avel", "Port  avel", True),
        ("Orlinx", "Orlin", False),
        ("March 3, 1985", "March 3, 1984", False),
        ("", "Orlin", False),
        ("Orlin Bay", "Orlin", False),
    ],
)
def test_exact_match(prediction: str, answer: str, expected: bool) -> None:
    assert exact_match(prediction, answer) is expected


def test_normalize_answer_is_idempotent() -> None:
    for text in ["  The University of X. ", "MARCH 3, 1984", "a\tb\nc"]:
        once = normalize_answer(text)
        assert normalize_answer(once) == once
