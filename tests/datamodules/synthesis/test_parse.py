"""The parser's validation: every paragraph present, every answer right, the shape enforced."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from datamodules.synthesis.guideline import Guideline
from datamodules.synthesis.parse import ValidationConfig, parse_passage, split_paragraphs
from datamodules.synthesis.problems import Fact, Problem, ProblemGroup

PROBLEMS = (
    Problem("attribute_qa", "Where does Ana Vel work?", "Orlin", ("Ana Vel",)),
    Problem("comparison", "Who was born earlier, A B or C D?", "A B", ("A B", "C D")),
    Problem("same_value", "Did A B and C D study at the same university?", "no"),
)

P1 = "Question: Where does Ana Vel work?\nAnswer: Orlin\nAna Vel works in Orlin, so the answer is Orlin."
P2 = (
    "Question: Who was born earlier, A B or C D?\nAnswer: A B\nA B was born in 1950 and C D in 1960, "
    "so A B was born earlier."
)
P3 = (
    "Question: Did A B and C D study at the same university?\nAnswer: no\nA B studied at X and "
    "C D at Y, so they did not."
)
E = "All three rest on facts about people of the domain; they differ in what they ask and how."


def _parse(text, *, enlightenment=True, **kwargs):
    return parse_passage(text, PROBLEMS, enlightenment=enlightenment, **kwargs)


def test_valid_passage_is_normalized() -> None:
    text = "\r\n".join(f"{p}  \r\n" for p in (P1, P2, P3, E))  # CRLF, trailing spaces
    result = _parse("\n\n" + text + "\n\n\n")
    assert result.ok, result
    assert result.passage.text == "\n\n".join((P1, P2, P3, E))
    assert result.passage.enlightenment == E
    assert result.passage.problem_paragraphs == [0, 1, 2]


def test_problem_order_is_free_but_each_problem_once() -> None:
    result = _parse("\n\n".join((P3, P1, P2, E)))
    assert result.ok and result.passage.problem_paragraphs == [1, 2, 0]
    duplicate = _parse("\n\n".join((P1, P1, P2, P3, E)))
    assert duplicate.reason == "duplicate_problem_paragraph"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n\n ", "empty"),
        ("\n\n".join((P1, P2, E)), "missing_problem_paragraph"),
        ("\n\n".join((P1, P2, P3)), "missing_enlightenment"),
        ("\n\n".join((P1, P2, P3, E, E)), "unexpected_paragraph"),
        ("\n\n".join(("Here is the passage:", P1, P2, P3, E)), "text_before_first_problem"),
        ("\n\n".join((P1, "More reasoning.", P2, P3, E)), "unexpected_paragraph"),
        ("\n\n".join((P1.replace("Answer: Orlin", "Answer: Dunmore"), P2, P3, E)), "wrong_answer"),
        (
            "\n\n".join((P1.replace("Answer: Orlin", "Answer: Orlin, a city"), P2, P3, E)),
            "wrong_answer",
        ),
        ("\n\n".join((P1.replace("\nAnswer: Orlin", ""), P2, P3, E)), "missing_answer"),
        (
            "\n\n".join(("Question: Where does Ana Vel work?\nAnswer: Orlin", P2, P3, E)),
            "missing_reasoning",
        ),
        ("\n\n".join((P1, P2, P3, "Too short.")), "short_enlightenment"),
        (
            "\n\n".join((P1, P2, P3, "Question: Something else?\nAnswer: x\ny", E)),
            "unexpected_paragraph",
        ),
        (
            "**Question:** Where does Ana Vel work?\nAnswer: Orlin\nbecause",
            "missing_problem_paragraph",
        ),
    ],
)
def test_rejects(text: str, reason: str) -> None:
    result = _parse(text)
    assert not result.ok
    assert result.reason == reason, result.detail
    assert result.detail


def test_answer_match_is_the_evaluation_normalization() -> None:
    text = "\n\n".join((P1.replace("Answer: Orlin", "Answer:   orlin."), P2, P3, E))
    assert _parse(text).ok


def test_truncated_is_rejected_even_when_complete() -> None:
    text = "\n\n".join((P1, P2, P3, E))
    assert _parse(text, finish_reason="length").reason == "truncated"
    assert _parse(text, finish_reason="stop").ok


def test_without_enlightenment() -> None:
    assert _parse("\n\n".join((P1, P2, P3)), enlightenment=False).ok
    closing = _parse("\n\n".join((P1, P2, P3, E)), enlightenment=False)
    assert closing.reason == "unexpected_paragraph"


def test_marker() -> None:
    marked = "\n\n".join((P1, P2, P3, "Enlightenment: " + E))
    assert _parse(marked, marker="Enlightenment:").ok
    assert _parse("\n\n".join((P1, P2, P3, E)), marker="Enlightenment:").reason == (
        "missing_enlightenment"
    )


def test_validation_thresholds() -> None:
    text = "\n\n".join((P1, P2, P3, E))
    strict = ValidationConfig(min_reasoning_words=50)
    assert _parse(text, validation=strict).reason == "missing_reasoning"
    with pytest.raises(ConfigError, match="validation.min_reasoning_words"):
        ValidationConfig(min_reasoning_words=-1).validate()


def test_split_paragraphs() -> None:
    assert split_paragraphs("a\n \n\nb\nc\n\t\nd") == ["a", "b\nc", "d"]


def test_guideline_renders_every_problem_and_its_facts() -> None:
    problems = (
        Problem("attribute_qa", "Q1?", "A1", facts=(Fact("Ana", "employer", "Kestrel Labs"),)),
        Problem("mystery", "Q2?", "A2"),
    )
    group = ProblemGroup(0, "x", problems)
    system, user = Guideline().render(group)
    assert system["role"] == "system" and user["role"] == "user"
    text = user["content"]
    assert "Question: Q1?\nAnswer: A1" in text and "Question: Q2?\nAnswer: A2" in text
    assert "Ana, employer: Kestrel Labs" in text
    assert "(mystery)" in text and "none given" in text
    assert "closing paragraph" in text
    ablation = Guideline(enlightenment=False).render(group)[1]["content"]
    assert "closing paragraph" not in ablation and "End the passage" in ablation
    marked = Guideline(enlightenment_marker="Enlightenment:").render(group)[1]["content"]
    assert 'starting with "Enlightenment:"' in marked
    assert len(Guideline(system="").render(group)) == 1


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("user", "{problems} {nope}", "unknown field"),
        ("user", "no fields at all", "must use"),
        ("problem_template", "{question}", "must use"),
        ("fact_template", "{entity", "not a format string"),
        ("enlightenment_marker", "  ", "non-empty"),
    ],
)
def test_guideline_validation(field: str, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=rf"guideline.{field}.*{match}"):
        Guideline(**{field: value}).validate()


def test_guideline_fingerprint_changes_with_every_template() -> None:
    base = Guideline().fingerprint()
    assert Guideline().fingerprint() == base
    assert Guideline(enlightenment=False).fingerprint() != base
    assert Guideline(system="Other.").fingerprint() != base
