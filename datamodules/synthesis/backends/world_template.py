"""`world_template`: the embedded default generator, a deterministic template writer on the
synthetic world's facts. NO MODEL IS INVOLVED.

It writes each passage from the problems' `facts` (the facts their answers rest on), in the
guideline's shape, so the pipeline runs end to end on a CPU without an LLM:

- one paragraph per problem: `Question: <q>`, `Answer: <a>`, then the reasoning stating the facts
  used, each in a sentence from the world's *training* biography templates
  (`datamodules.world.templates.ATTRIBUTES`, without the `num_heldout_bio_templates` held-out
  ones, which only the held-out perplexity documents use), and the conclusion:
  `attribute_qa` the fact; `comparison` both birth dates, the step that orders them (year, month
  or day) and who was born earlier; `same_value` both values and whether they are equal;
  any other task the facts and "so the answer is …";
- with enlightenment, a closing paragraph on what the problems share (facts about the same kind
  of people, the entities or attributes two problems have in common) and how they differ (recall
  of one fact, ordering two dates, an equality check).

Wording varies by a seeded choice among a few phrasings, seeded by `seed` and the passage id
(not by run order), so a resumed run writes the same text. Passages are marked
`"backend": "world_template"` in `passages.jsonl`: they are templated, not generated.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError
from datamodules.synthesis.backends.base import Backend, GenerationRequest, GenerationResponse
from datamodules.synthesis.problems import Fact, Problem, ProblemGroup
from datamodules.world.templates import ATTRIBUTES, MONTHS

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

ATTRIBUTE_NOUNS: dict[str, tuple[str, str]] = {
    "birth_date": ("birth date", "birth dates"),
    "birth_city": ("city of birth", "cities of birth"),
    "university": ("university", "universities"),
    "major": ("major", "majors"),
    "employer": ("employer", "employers"),
    "work_city": ("work city", "work cities"),
}
"""Singular and plural noun of each world attribute (others: the name with spaces)."""


@dataclass
class WorldTemplateConfig:
    """The embedded default generator: templates on the world's facts, no model.

    Args:
        seed: Seed of the choice among phrasings (with each passage's id).
        heldout_bio_templates: Biography templates per attribute left out (the world's held-out
            ones, the last of each list); null: the world's `num_heldout_bio_templates`.
    """

    seed: int = 0
    heldout_bio_templates: int | None = None

    def validate(self, key: str = "backend.world_template") -> None:
        if self.heldout_bio_templates is not None and (
            not isinstance(self.heldout_bio_templates, int) or self.heldout_bio_templates < 0
        ):
            raise ConfigError(
                f"{key}.heldout_bio_templates", "must be an integer >= 0 or null (the world's)"
            )


def _noun(attribute: str, plural: bool = False) -> str:
    nouns = ATTRIBUTE_NOUNS.get(attribute, (attribute.replace("_", " "),) * 2)
    return nouns[1] if plural else nouns[0]


def _ordinal(i: int) -> str:
    return ORDINALS[i] if i < len(ORDINALS) else f"number {i + 1}"


def _count(n: int) -> str:
    return NUMBERS[n] if n < len(NUMBERS) else str(n)


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _date_key(value: str) -> tuple[int, int, int] | None:
    """`'Month D, YYYY'` as `(year, month, day)`, or None for another shape."""
    try:
        month_day, year = value.split(", ")
        month, day = month_day.split(" ")
        return int(year), MONTHS.index(month) + 1, int(day)
    except ValueError:
        return None


class PassageWriter:
    """Writes the passage of one group (pure: the text depends on the group and the seed)."""

    def __init__(
        self,
        *,
        enlightenment: bool,
        marker: str | None = None,
        heldout_bio_templates: int = 2,
        seed: int = 0,
    ) -> None:
        self.enlightenment = enlightenment
        self.marker = marker
        self.heldout = heldout_bio_templates
        self.seed = seed

    # --- facts ------------------------------------------------------------------------------

    def fact_sentence(self, fact: Fact, rng: random.Random) -> str:
        """The fact in a training biography sentence of its attribute (generic otherwise)."""
        spec = ATTRIBUTES.get(fact.attribute)
        if spec is None:
            return f"The {_noun(fact.attribute)} of {fact.entity} is {fact.value}."
        templates = spec.bio_templates
        if self.heldout:
            templates = templates[: -self.heldout] or templates[:1]
        template = rng.choice(templates)
        sentence = template.format(
            subj=fact.entity, poss=f"{fact.entity}'s", obj=fact.entity, value=fact.value
        )
        return _capitalize(sentence)

    # --- reasoning per task -----------------------------------------------------------------

    def reasoning(self, problem: Problem, rng: random.Random) -> str:
        """The reasoning sentences of one problem (every fact stated)."""
        facts = problem.facts
        if problem.task == "comparison" and self._is_comparison(problem):
            return self._comparison(problem, rng)
        if problem.task == "same_value" and self._is_same_value(problem):
            return self._same_value(problem, rng)
        stated = " ".join(self.fact_sentence(f, rng) for f in facts)
        if len(facts) == 1 and facts[0].value == problem.answer:
            closing = rng.choice(
                (
                    "So the answer is {answer}.",
                    "The question asks for exactly this fact, so the answer is {answer}.",
                    "This one fact answers the question: {answer}.",
                )
            )
            return f"{stated} {closing.format(answer=problem.answer)}"
        return f"{stated} So the answer is {problem.answer}."

    @staticmethod
    def _is_comparison(problem: Problem) -> bool:
        facts = problem.facts
        return (
            len(facts) == 2
            and all(f.attribute == "birth_date" and _date_key(f.value) for f in facts)
            and problem.answer in (facts[0].entity, facts[1].entity)
            and _date_key(facts[0].value) != _date_key(facts[1].value)
        )

    def _comparison(self, problem: Problem, rng: random.Random) -> str:
        a, b = problem.facts
        key_a, key_b = _date_key(a.value), _date_key(b.value)
        assert key_a is not None and key_b is not None
        early = a if key_a < key_b else b
        early_key, late_key = min(key_a, key_b), max(key_a, key_b)
        stated = f"{self.fact_sentence(a, rng)} {self.fact_sentence(b, rng)}"
        if early_key[0] != late_key[0]:
            step = f"The year {early_key[0]} comes before {late_key[0]}"
        elif early_key[1] != late_key[1]:
            step = (
                f"Both were born in {early_key[0]}, and {MONTHS[early_key[1] - 1]} comes before "
                f"{MONTHS[late_key[1] - 1]}"
            )
        else:
            step = (
                f"Both were born in {MONTHS[early_key[1] - 1]} {early_key[0]}, and day "
                f"{early_key[2]} comes before day {late_key[2]}"
            )
        question = problem.question.casefold()
        if "older" in question:
            verdict = f"{early.entity} is older"
        elif "first" in question:
            verdict = f"{early.entity} was born first"
        else:
            verdict = f"{early.entity} was born earlier"
        closing = rng.choice(("so {verdict}.", "which means that {verdict}."))
        return f"{stated} {step}, {closing.format(verdict=verdict)}"

    @staticmethod
    def _is_same_value(problem: Problem) -> bool:
        facts = problem.facts
        return (
            len(facts) == 2
            and facts[0].attribute == facts[1].attribute
            and problem.answer.casefold() in ("yes", "no")
            and (facts[0].value == facts[1].value) == (problem.answer.casefold() == "yes")
        )

    def _same_value(self, problem: Problem, rng: random.Random) -> str:
        a, b = problem.facts
        stated = f"{self.fact_sentence(a, rng)} {self.fact_sentence(b, rng)}"
        plural = _noun(a.attribute, plural=True)
        if a.value == b.value:
            closing = rng.choice(
                (
                    "Both facts name {value}, so the answer is {answer}.",
                    "The two {plural} are the same, {value}, so the answer is {answer}.",
                )
            )
        else:
            closing = rng.choice(
                (
                    "{value_a} and {value_b} are different {plural}, so the answer is {answer}.",
                    "The two {plural} differ ({value_a} and {value_b}), so the answer is {answer}.",
                )
            )
        text = closing.format(
            value=a.value, value_a=a.value, value_b=b.value, plural=plural, answer=problem.answer
        )
        return f"{stated} {_capitalize(text)}"

    # --- enlightenment ----------------------------------------------------------------------

    @staticmethod
    def _difference(i: int, problem: Problem) -> tuple[str, str]:
        """What problem `i` does with its facts, and the operation's name."""
        ordinal = _ordinal(i)
        facts = problem.facts
        if problem.task == "comparison" and PassageWriter._is_comparison(problem):
            return (
                f"the {ordinal} needs the birth dates of two people and orders them to find who "
                "was born earlier",
                "ordering",
            )
        if problem.task == "same_value" and PassageWriter._is_same_value(problem):
            return (
                f"the {ordinal} needs the {_noun(facts[0].attribute)} of two people and checks "
                "whether the two are equal, so its answer is yes or no",
                "an equality check",
            )
        if len(facts) == 1:
            return (
                f"the {ordinal} asks for one attribute of one person, the "
                f"{_noun(facts[0].attribute)}, and is answered by recalling a single fact",
                "recall",
            )
        return (
            f"the {ordinal} ({problem.task.replace('_', ' ')}) combines {_count(len(facts))} facts",
            "combining facts",
        )

    def enlightenment_paragraph(self, group: ProblemGroup, rng: random.Random) -> str:
        """What the problems share and how they differ."""
        problems = group.problems
        n = len(problems)
        names = list(dict.fromkeys(f.entity for p in problems for f in p.facts))
        opening = rng.choice(
            (
                "All {n} questions rest on facts about people of the new domain: {names}.",
                "These {n} questions draw on the same kind of knowledge, facts about people of "
                "the new domain ({names}).",
                "Each of the {n} questions is answered from what is known about people of the "
                "new domain: {names}.",
            )
        ).format(n=_count(n), names=_join(names))
        sentences = [opening]
        for name in names:
            having = [i for i, p in enumerate(problems) if any(f.entity == name for f in p.facts)]
            if len(having) > 1:
                sentences.append(
                    f"{name} appears in both the "
                    f"{' and the '.join(_ordinal(i) for i in having)} question."
                    if len(having) == 2
                    else f"{name} appears in the {_join([_ordinal(i) for i in having])} questions."
                )
        attributes = list(dict.fromkeys(f.attribute for p in problems for f in p.facts))
        for attribute in attributes:
            having = [
                i for i, p in enumerate(problems) if any(f.attribute == attribute for f in p.facts)
            ]
            if len(having) > 1:
                which = _join([f"the {_ordinal(i)}" for i in having])
                sentences.append(
                    _capitalize(f"{which} question all use {_noun(attribute, plural=True)}.")
                    if len(having) > 2
                    else _capitalize(f"{which} question both use {_noun(attribute, plural=True)}.")
                )
        clauses, operations = zip(*(self._difference(i, p) for i, p in enumerate(problems)))
        sentences.append(
            rng.choice(
                (
                    "They differ in what they do with those facts: {clauses}.",
                    "What differs is the use of the facts: {clauses}.",
                )
            ).format(clauses="; ".join(clauses))
        )
        kinds = list(dict.fromkeys(operations))
        if len(kinds) > 1:
            sentences.append(
                rng.choice(
                    (
                        "So the same stored facts serve {ops} alike: knowing each person's facts "
                        "is what all of them need.",
                        "Knowing the facts is common to all of them; only the operation differs: "
                        "{ops}.",
                    )
                ).format(ops=_join(kinds))
            )
        else:
            sentences.append(
                "All of them need the same operation, "
                f"{kinds[0]}, applied to different facts, so knowing each person's facts is "
                "what all of them need."
            )
        paragraph = " ".join(sentences)
        return f"{self.marker} {paragraph}" if self.marker else paragraph

    # --- the passage ------------------------------------------------------------------------

    def rng_for(self, passage_id: str) -> random.Random:
        return random.Random(f"adaptlm-synthesis-world-template/{self.seed}/{passage_id}")

    def write(self, group: ProblemGroup) -> str:
        """The passage of `group`: one paragraph per problem, then (with enlightenment) the
        closing paragraph; blank lines between them."""
        rng = self.rng_for(group.id)
        paragraphs = [
            f"Question: {p.question}\nAnswer: {p.answer}\n{self.reasoning(p, rng)}"
            for p in group.problems
        ]
        if self.enlightenment:
            paragraphs.append(self.enlightenment_paragraph(group, rng))
        return "\n\n".join(paragraphs)


class WorldTemplateBackend(Backend):
    """The embedded default: passages written from the world's facts by templates (no model)."""

    kind = "world_template"

    def __init__(
        self,
        config: WorldTemplateConfig | None = None,
        *,
        enlightenment: bool = True,
        marker: str | None = None,
        world_heldout_bio_templates: int = 2,
    ) -> None:
        self.config = config or WorldTemplateConfig()
        heldout = self.config.heldout_bio_templates
        self.writer = PassageWriter(
            enlightenment=enlightenment,
            marker=marker,
            heldout_bio_templates=world_heldout_bio_templates if heldout is None else heldout,
            seed=self.config.seed,
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResponse]:
        for request in requests:
            if any(not p.facts for p in request.group.problems):
                missing = next(p for p in request.group.problems if not p.facts)
                yield GenerationResponse(
                    request.id,
                    error="no_facts",
                    detail=f"{missing.where or missing.question}: the problem has no facts "
                    "(world_template writes from them)",
                )
                continue
            yield GenerationResponse(
                request.id, text=self.writer.write(request.group), finish_reason="stop"
            )

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "note": "embedded default: templates on the world's facts, no model",
            "seed": self.writer.seed,
            "heldout_bio_templates": self.writer.heldout,
            "enlightenment": self.writer.enlightenment,
            "marker": self.writer.marker,
        }


__all__ = ["PassageWriter", "WorldTemplateBackend", "WorldTemplateConfig"]
