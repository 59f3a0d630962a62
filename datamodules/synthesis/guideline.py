"""TRAIT's prompt guideline: several problems from different tasks into one passage.

The guideline asks for one problem-specific paragraph per problem, in the order given, each
opening with the problem in the world's plain evaluation format and its answer on the same line
as `Answer:` (a model evaluated by greedy generation after `Question: <q>\\nAnswer:`, cut at the
first newline, reads exactly this shape), followed by the reasoning that leads to the answer with
the domain knowledge it uses; then, with `enlightenment: true`, one closing *enlightenment*
paragraph on what the problems share and how they differ (without it: the ablation). Paragraphs
are separated by one blank line; `parse.parse_passage` validates this shape.

Every text is a template (`str.format` fields, literal braces doubled), checked when the config is
validated: `user` takes `{num_problems}`, `{problems}` and `{instructions}`; `problem_template`
takes `{number}`, `{task}`, `{task_description}`, `{question}`, `{answer}` and `{facts}`;
`fact_template` takes `{entity}`, `{attribute}` and `{value}`; the instructions take
`{num_problems}` and (the enlightenment one) `{marker_clause}`. The problems' answers and facts
are given to the model: the paper's GPT-4 knew the domain, a fictional world's facts must be
stated. `fingerprint()` hashes the version and every template: it is part of every passage id.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, field

from common.errors import ConfigError
from datamodules.synthesis.problems import Problem, ProblemGroup

GUIDELINE_VERSION = 1
"""Bumped when the rendering of a prompt changes (part of every passage id)."""

DEFAULT_SYSTEM = (
    "You write study passages for a specialised domain. A passage teaches how to use knowledge "
    "of the domain to solve its problems: it states the facts it uses and reasons from them "
    "step by step, and it never invents facts beyond the ones given."
)

DEFAULT_USER = (
    "Here are {num_problems} problems from different tasks of one domain, each with its correct "
    "answer and the facts the answer rests on.\n\n"
    "{problems}\n\n"
    "Write one passage about these problems. Use plain text (no headings, lists or Markdown), "
    "separate paragraphs by one blank line, and write nothing before the first paragraph or "
    "after the last:\n"
    "{instructions}"
)

DEFAULT_PROBLEM_TEMPLATE = (
    "Problem {number} ({task_description}):\nQuestion: {question}\nAnswer: {answer}\nFacts: {facts}"
)

DEFAULT_PROBLEM_INSTRUCTION = (
    "- One paragraph per problem, in the order given. Its first line is the question exactly as "
    'given, after "Question: ". Its second line is "Answer: " followed by the answer exactly as '
    "given and nothing else. The next lines of the same paragraph explain the reasoning that "
    "leads to the answer, stating the facts it uses."
)

DEFAULT_ENLIGHTENMENT_INSTRUCTION = (
    "- Then one closing paragraph{marker_clause}: what the {num_problems} problems have in "
    "common (the domain knowledge they rest on) and how they differ (what each one asks for and "
    "how its answer is found from that knowledge)."
)

DEFAULT_NO_ENLIGHTENMENT_INSTRUCTION = "- End the passage with the last problem's paragraph."

DEFAULT_TASK_DESCRIPTIONS: dict[str, str] = {
    "attribute_qa": "recall one fact about a person",
    "comparison": "compare the birth dates of two people",
    "same_value": "check whether two people share an attribute",
}

_FIELDS: dict[str, set[str]] = {
    "system": set(),
    "user": {"num_problems", "problems", "instructions"},
    "problem_template": {"number", "task", "task_description", "question", "answer", "facts"},
    "fact_template": {"entity", "attribute", "value"},
    "problem_instruction": {"num_problems"},
    "enlightenment_instruction": {"num_problems", "marker_clause"},
    "no_enlightenment_instruction": {"num_problems"},
}
_REQUIRED: dict[str, set[str]] = {
    "user": {"problems", "instructions"},
    "problem_template": {"question", "answer"},
}


@dataclass
class Guideline:
    """The prompt guideline of TRAIT's task-oriented synthetic passages.

    Args:
        enlightenment: Ask for (and require) the closing enlightenment paragraph; false: the
            ablation without it.
        enlightenment_marker: A text the enlightenment paragraph must start with (asked for in
            the prompt, checked by the parser); null: the paragraph after the last problem's.
        system: The system message.
        user: The user message: `{num_problems}`, `{problems}` (the rendered problems, one blank
            line apart) and `{instructions}`.
        problem_template: One problem in the prompt: `{number}`, `{task}`, `{task_description}`,
            `{question}`, `{answer}`, `{facts}` (the facts joined by "; ", or `no_facts`).
        fact_template: One fact: `{entity}`, `{attribute}`, `{value}`.
        no_facts: `{facts}` of a problem without facts.
        problem_instruction: The instruction for the problem paragraphs.
        enlightenment_instruction: The instruction for the enlightenment paragraph
            (`{marker_clause}`: ` starting with "<marker>"` or nothing).
        no_enlightenment_instruction: The closing instruction without enlightenment.
        task_descriptions: A short description per task name (`{task_description}`; default:
            the name).
    """

    enlightenment: bool = True
    enlightenment_marker: str | None = None
    system: str = DEFAULT_SYSTEM
    user: str = DEFAULT_USER
    problem_template: str = DEFAULT_PROBLEM_TEMPLATE
    fact_template: str = "{entity}, {attribute}: {value}"
    no_facts: str = "none given; use your knowledge of the domain"
    problem_instruction: str = DEFAULT_PROBLEM_INSTRUCTION
    enlightenment_instruction: str = DEFAULT_ENLIGHTENMENT_INSTRUCTION
    no_enlightenment_instruction: str = DEFAULT_NO_ENLIGHTENMENT_INSTRUCTION
    task_descriptions: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_TASK_DESCRIPTIONS)
    )

    def validate(self, key: str = "guideline") -> None:
        """Check every template's fields; `ConfigError` naming `key.<field>`."""
        if not isinstance(self.enlightenment, bool):
            raise ConfigError(f"{key}.enlightenment", "must be true or false")
        if self.enlightenment_marker is not None and (
            not isinstance(self.enlightenment_marker, str) or not self.enlightenment_marker.strip()
        ):
            raise ConfigError(f"{key}.enlightenment_marker", "must be a non-empty text or null")
        for name, allowed in _FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ConfigError(f"{key}.{name}", "must be a text")
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
            except ValueError as error:
                raise ConfigError(
                    f"{key}.{name}", f"is not a format string ({error}); double literal braces"
                ) from None
            unknown = names - allowed
            if unknown:
                raise ConfigError(
                    f"{key}.{name}",
                    f"unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed) or 'none'} "
                    "(double literal braces)",
                )
            missing = _REQUIRED.get(name, set()) - names
            if missing:
                raise ConfigError(f"{key}.{name}", f"must use the field(s) {sorted(missing)}")
        if not isinstance(self.task_descriptions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.task_descriptions.items()
        ):
            raise ConfigError(f"{key}.task_descriptions", "must map task names to texts")

    def fingerprint(self) -> str:
        """24 hex digits of the version and every setting (part of every passage id)."""
        payload = {"version": GUIDELINE_VERSION, **asdict(self)}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.blake2b(blob, digest_size=12).hexdigest()

    def render_problem(self, number: int, problem: Problem) -> str:
        """One problem as the prompt shows it."""
        facts = "; ".join(
            self.fact_template.format(entity=f.entity, attribute=f.attribute, value=f.value)
            for f in problem.facts
        )
        return self.problem_template.format(
            number=number,
            task=problem.task,
            task_description=self.task_descriptions.get(problem.task, problem.task),
            question=problem.question,
            answer=problem.answer,
            facts=facts or self.no_facts,
        )

    def instructions(self, num_problems: int) -> str:
        """The paragraph instructions (problem paragraphs, then the closing one)."""
        marker = self.enlightenment_marker
        marker_clause = f' starting with "{marker}"' if marker else ""
        closing = (
            self.enlightenment_instruction.format(
                num_problems=num_problems, marker_clause=marker_clause
            )
            if self.enlightenment
            else self.no_enlightenment_instruction.format(num_problems=num_problems)
        )
        return self.problem_instruction.format(num_problems=num_problems) + "\n" + closing

    def render(self, group: ProblemGroup) -> list[dict[str, str]]:
        """The chat messages (system, user) asking for the passage of `group`."""
        problems = "\n\n".join(
            self.render_problem(number, problem)
            for number, problem in enumerate(group.problems, start=1)
        )
        n = len(group.problems)
        user = self.user.format(
            num_problems=n, problems=problems, instructions=self.instructions(n)
        )
        messages = [{"role": "user", "content": user}]
        if self.system.strip():
            messages.insert(0, {"role": "system", "content": self.system})
        return messages


__all__ = ["GUIDELINE_VERSION", "Guideline"]
