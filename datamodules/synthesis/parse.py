"""Parsing and validating a generated passage: every paragraph present, every answer right.

A passage is paragraphs separated by blank lines (`\\r\\n` read as `\\n`, surrounding whitespace
and trailing spaces of lines dropped). It is valid when:

- the response was not cut by the token budget (`finish_reason` `length`: `truncated`) and is
  not empty (`empty`);
- every problem has exactly one paragraph whose first line is `Question: <its question>`
  (whitespace- and case-insensitive; `missing_problem_paragraph`, `duplicate_problem_paragraph`;
  a question that is none of the problems: `unexpected_paragraph`), in any order;
- that paragraph's second line is `Answer: <answer>` with the answer equal to the problem's
  under `common.text.normalize_answer` (the evaluation's exact match: the line is what greedy
  decoding after `Answer:` must produce up to the newline; `missing_answer`, `wrong_answer`), and
  the reasoning follows on the next lines with at least `min_reasoning_words` words
  (`missing_reasoning`);
- nothing comes before the first problem paragraph (`text_before_first_problem`) or between two
  problem paragraphs (`unexpected_paragraph`: the reasoning stays in its problem's paragraph);
- with enlightenment: exactly one paragraph after the last problem paragraph
  (`missing_enlightenment`, or `unexpected_paragraph` for more), starting with the marker when
  one is set (`missing_enlightenment`), of at least `min_enlightenment_words` words
  (`short_enlightenment`); without: nothing after the last problem paragraph
  (`unexpected_paragraph`).

The passage kept is the normalized text (paragraphs joined by one blank line). A backend may
reject before parsing (`malformed_response`, `http_<status>`, `retries_exhausted`,
`prompt_too_long`, `no_facts`); every reason is a key of the manifest's `reject_reasons`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import ConfigError
from common.text import normalize_answer
from datamodules.synthesis.problems import Problem, normalize_question

QUESTION_PREFIX = "Question:"
ANSWER_PREFIX = "Answer:"

EMPTY = "empty"
TRUNCATED = "truncated"
PREAMBLE = "text_before_first_problem"
MISSING_PROBLEM = "missing_problem_paragraph"
DUPLICATE_PROBLEM = "duplicate_problem_paragraph"
UNEXPECTED = "unexpected_paragraph"
MISSING_ANSWER = "missing_answer"
WRONG_ANSWER = "wrong_answer"
MISSING_REASONING = "missing_reasoning"
MISSING_ENLIGHTENMENT = "missing_enlightenment"
SHORT_ENLIGHTENMENT = "short_enlightenment"

_BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass
class ValidationConfig:
    """How strict the parser is.

    Args:
        min_reasoning_words: Fewest words of a problem paragraph's reasoning (after its answer
            line).
        min_enlightenment_words: Fewest words of the enlightenment paragraph.
    """

    min_reasoning_words: int = 3
    min_enlightenment_words: int = 8

    def validate(self, key: str = "validation") -> None:
        for name in ("min_reasoning_words", "min_enlightenment_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{key}.{name}", f"must be an integer >= 0, got {value!r}")


@dataclass
class Passage:
    """A valid passage: its normalized text and paragraphs."""

    text: str
    paragraphs: list[str]
    problem_paragraphs: list[int]
    """Paragraph index of each problem, in the problems' order."""
    enlightenment: str | None


@dataclass
class ParseResult:
    """A valid passage, or the reason (one of the module's constants) and a detail line."""

    passage: Passage | None = None
    reason: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.passage is not None


def _reject(reason: str, detail: str) -> ParseResult:
    return ParseResult(reason=reason, detail=detail)


def split_paragraphs(text: str) -> list[str]:
    """Non-empty paragraphs (blank-line separated), each line right-stripped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    paragraphs = []
    for block in _BLANK_LINE.split(text):
        lines = [line.rstrip() for line in block.strip("\n").split("\n")]
        block = "\n".join(lines).strip()
        if block:
            paragraphs.append(block)
    return paragraphs


def _words(text: str) -> int:
    return len(text.split())


def parse_passage(
    text: str | None,
    problems: Sequence[Problem],
    *,
    enlightenment: bool,
    marker: str | None = None,
    finish_reason: str | None = None,
    validation: ValidationConfig | None = None,
) -> ParseResult:
    """Validate a generated passage about `problems` (rules in the module docstring)."""
    validation = validation or ValidationConfig()
    if finish_reason == "length":
        return _reject(TRUNCATED, "the generation hit the token budget (finish_reason 'length')")
    if text is None or not text.strip():
        return _reject(EMPTY, "the response has no text")
    paragraphs = split_paragraphs(text)
    wanted = {normalize_question(p.question): i for i, p in enumerate(problems)}
    at: dict[int, int] = {}  # paragraph index -> problem index
    for j, paragraph in enumerate(paragraphs):
        first = paragraph.split("\n", 1)[0].strip()
        if not first.startswith(QUESTION_PREFIX):
            continue
        question = first[len(QUESTION_PREFIX) :].strip()
        i = wanted.get(normalize_question(question))
        if i is None:
            return _reject(
                UNEXPECTED, f"paragraph {j + 1} asks {question!r}, which is none of the problems"
            )
        if i in at.values():
            return _reject(DUPLICATE_PROBLEM, f"problem {i + 1} has two paragraphs")
        at[j] = i
    missing = [i for i in range(len(problems)) if i not in at.values()]
    if missing:
        return _reject(
            MISSING_PROBLEM,
            "no paragraph starting with 'Question: <question>' for problem(s) "
            + ", ".join(f"{i + 1} ({problems[i].task})" for i in missing),
        )
    first_q, last_q = min(at), max(at)
    if first_q > 0:
        return _reject(PREAMBLE, f"{first_q} paragraph(s) before the first problem paragraph")
    between = [j for j in range(first_q, last_q + 1) if j not in at]
    if between:
        return _reject(
            UNEXPECTED,
            f"paragraph {between[0] + 1} lies between problem paragraphs (the reasoning must stay "
            "in its problem's paragraph)",
        )
    for j, i in sorted(at.items(), key=lambda item: item[1]):
        lines = paragraphs[j].split("\n")
        answer_line = lines[1].strip() if len(lines) > 1 else ""
        if not answer_line.startswith(ANSWER_PREFIX):
            return _reject(
                MISSING_ANSWER, f"problem {i + 1}: the line after the question is not 'Answer: …'"
            )
        given = answer_line[len(ANSWER_PREFIX) :].strip()
        if normalize_answer(given) != normalize_answer(problems[i].answer):
            return _reject(
                WRONG_ANSWER,
                f"problem {i + 1}: answer {given!r}, expected {problems[i].answer!r}",
            )
        reasoning = "\n".join(lines[2:])
        if not reasoning.strip() or _words(reasoning) < validation.min_reasoning_words:
            return _reject(
                MISSING_REASONING,
                f"problem {i + 1}: {_words(reasoning)} word(s) of reasoning after the answer "
                f"line (at least {max(validation.min_reasoning_words, 1)})",
            )
    closing = paragraphs[last_q + 1 :]
    enlightenment_text = None
    if enlightenment:
        if not closing:
            return _reject(MISSING_ENLIGHTENMENT, "no paragraph after the last problem paragraph")
        if len(closing) > 1:
            return _reject(
                UNEXPECTED, f"{len(closing)} paragraphs after the last problem paragraph (one)"
            )
        enlightenment_text = closing[0]
        if marker and not enlightenment_text.startswith(marker):
            return _reject(
                MISSING_ENLIGHTENMENT, f"the closing paragraph does not start with {marker!r}"
            )
        if _words(enlightenment_text) < validation.min_enlightenment_words:
            return _reject(
                SHORT_ENLIGHTENMENT,
                f"the enlightenment paragraph has {_words(enlightenment_text)} word(s) "
                f"(at least {validation.min_enlightenment_words})",
            )
    elif closing:
        return _reject(
            UNEXPECTED,
            f"{len(closing)} paragraph(s) after the last problem paragraph (none without "
            "enlightenment)",
        )
    order = [j for j, _ in sorted(at.items(), key=lambda item: item[1])]
    return ParseResult(
        passage=Passage("\n\n".join(paragraphs), paragraphs, order, enlightenment_text)
    )


__all__ = [
    "ANSWER_PREFIX",
    "QUESTION_PREFIX",
    "ParseResult",
    "Passage",
    "ValidationConfig",
    "parse_passage",
    "split_paragraphs",
]
