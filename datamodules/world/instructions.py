"""General instruction data and preference pairs: Mix-CPT's instruction mixture and the small pool
for few-sample format alignment.

Every sample is an instruction with a short correct response, drawn from two kinds of sources:
general QA (`world.general_qa_entities`, training question templates only) and the training
problems of each skill (`skills.training_problems`). A share `skill_fraction` of each set comes
from the skills (split evenly across them), the rest from general QA; a world without general QA
entities uses skills only. Nothing of a test set can appear: no skill test question, no held-out
question template, no new-domain entity, and no general entity seen in biographies only.

Splits:

- `instructions` (text): `num_instructions` chats `{"text", "prompt", "instruction", "response", "source"}`;
  `source` is `general_qa` or `skill:<name>`. Sources have fewer distinct instructions than the
  set asks for, so each source is cycled through in fresh shuffles (every instruction used about
  equally often).
- `preference_pairs` (preference): `num_preference_pairs` records `{"prompt", "instruction",
  "chosen", "rejected", "kind", "source"}`; `chosen` is the correct response, `rejected` either a
  plausible wrong value (`kind: wrong_value`: another value of the same attribute pool, or the
  skill's plausible wrong answer) or the correct value in a wrong format (`kind: wrong_format`,
  e.g. `The answer is Orlin.`), exactly `round(wrong_format_fraction * n)` of the latter.
  `chosen` and `rejected` carry no end marker: a chat-format consumer appends `chat.END` to both
  (as `format_chat` does), a format-free one uses them as they are.
- `format_alignment_sft` (text) and `format_alignment_preference` (preference): the small pool,
  `format_alignment_pool` records each with the record shapes above, on the same instructions (so
  SFT and preference alignment see the same prompts). These instructions are reserved before the
  large sets are drawn, so the pool shares no instruction with `instructions` or
  `preference_pairs`.

Each split and source draws from its own `world.rng(...)`, so no split changes another's text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datamodules.world.chat import format_chat, format_prompt
from datamodules.world.generator import World
from datamodules.world.skills import SKILLS, training_problems
from datamodules.world.splits import Record, register_split

__all__ = ["GENERAL_SOURCE", "WRONG_FORMATS", "Instruction", "instruction_pools"]

GENERAL_SOURCE = "general_qa"
"""`source` of general QA samples; skill samples have `skill:<name>`."""

WRONG_FORMATS: tuple[str, ...] = (
    "The answer is {answer}.",
    "Answer: {answer}",
    "I think it is {answer}.",
)
"""Wrong formats of a correct answer (the rejected side of `wrong_format` pairs); each adds words,
so it never matches the answer exactly, even after `normalize_answer`."""

_MAX_WRONG_VALUE_DRAWS = 100


@dataclass(frozen=True)
class Instruction:
    """One instruction with its correct short response.

    Args:
        instruction: The user's turn (a question or a skill problem).
        response: The exact correct answer.
        source: `general_qa` or `skill:<name>`.
        attribute: The attribute asked about (general QA) or the skill's name.
    """

    instruction: str
    response: str
    source: str
    attribute: str


def _sources(world: World) -> dict[str, list[Instruction]]:
    """Every instruction the sets may use, by source, in a fixed order (duplicates dropped)."""
    general = [
        Instruction(question, answer, GENERAL_SOURCE, attribute)
        for entity in world.general_qa_entities
        for attribute, question, answer in world.qa_pairs(entity, "train")
    ]
    sources = {GENERAL_SOURCE: general}
    for name in SKILLS:
        sources[f"skill:{name}"] = [
            Instruction(q, a, f"skill:{name}", name) for q, a in training_problems(world, name)
        ]
    seen: set[str] = set()
    deduplicated: dict[str, list[Instruction]] = {}
    for source, items in sources.items():
        deduplicated[source] = []
        for item in items:
            if item.instruction not in seen:
                seen.add(item.instruction)
                deduplicated[source].append(item)
    return deduplicated


def _allocate(world: World, count: int, sources: dict[str, list[Instruction]]) -> dict[str, int]:
    """How many of `count` samples each source gives: `skill_fraction` to the skills (evenly, the
    remainder to the first ones), the rest to general QA (all to skills when it is empty)."""
    skill_sources = [s for s in sources if s != GENERAL_SOURCE]
    if sources[GENERAL_SOURCE]:
        n_skills = round(count * world.config.instructions.skill_fraction)
    else:
        n_skills = count
    counts = {GENERAL_SOURCE: count - n_skills}
    base, extra = divmod(n_skills, len(skill_sources))
    for index, source in enumerate(skill_sources):
        counts[source] = base + (1 if index < extra else 0)
    return counts


def instruction_pools(world: World) -> tuple[list[Instruction], dict[str, list[Instruction]]]:
    """`(format_alignment, large)`: the reserved format-alignment instructions (exactly
    `format_alignment_pool`, shuffled), and by source the instructions left for the large sets.

    Raises `ValueError` when a source has too few instructions to reserve its share of the pool
    and still leave some for the large sets.
    """
    config = world.config.instructions
    sources = _sources(world)
    wanted = _allocate(world, config.format_alignment_pool, sources)
    reserved: list[Instruction] = []
    large: dict[str, list[Instruction]] = {}
    for source, items in sources.items():
        k = wanted[source]
        if k and k >= len(items):
            raise ValueError(
                f"world.instructions.format_alignment_pool ({config.format_alignment_pool}) "
                f"reserves {k} {source} instructions, but the world has only {len(items)} and the "
                "large sets need some too: lower format_alignment_pool, or add entities "
                "(general QA) or world.skills.train_per_skill (skills)"
            )
        shuffled = list(items)
        world.rng("format_alignment", source).shuffle(shuffled)
        reserved.extend(shuffled[:k])
        large[source] = shuffled[k:]
    world.rng("format_alignment", "order").shuffle(reserved)
    return reserved, large


def _draw(
    world: World, split: str, count: int, pools: dict[str, list[Instruction]]
) -> list[Instruction]:
    """`count` instructions from `pools` in the source mix, each source cycled through in fresh
    shuffles (so instructions repeat only once a source is used up), in a shuffled order."""
    drawn: list[Instruction] = []
    for source, n in _allocate(world, count, pools).items():
        items, rng = pools[source], world.rng(split, source)
        taken: list[Instruction] = []
        while len(taken) < n:
            epoch = list(items)
            rng.shuffle(epoch)
            taken.extend(epoch[: n - len(taken)])
        drawn.extend(taken)
    world.rng(split, "order").shuffle(drawn)
    return drawn


def _wrong_value(world: World, item: Instruction, rng: random.Random) -> str:
    """A plausible wrong answer: another value of the attribute, or the skill's wrong answer."""
    if item.source != GENERAL_SOURCE:
        return SKILLS[item.attribute].wrong_answer(rng, item.instruction, item.response)
    spec = world.spec(item.attribute)
    for _ in range(_MAX_WRONG_VALUE_DRAWS):
        value = spec.sample(rng)
        if value != item.response:
            return value
    raise ValueError(f"attribute {item.attribute!r} has no value other than {item.response!r}")


def _sft_records(items: list[Instruction]) -> list[Record]:
    return [
        {
            "text": format_chat(i.instruction, i.response),
            "prompt": format_prompt(i.instruction),
            "instruction": i.instruction,
            "response": i.response,
            "source": i.source,
        }
        for i in items
    ]


def _preference_records(world: World, split: str, items: list[Instruction]) -> list[Record]:
    """Preference records, exactly `round(wrong_format_fraction * len(items))` of them rejecting
    the right value in a wrong format, the others a wrong value."""
    fraction = world.config.instructions.wrong_format_fraction
    n_format = round(fraction * len(items))
    wrong_format = set(world.rng(split, "kind").sample(range(len(items)), n_format))
    rng = world.rng(split, "rejected")
    records = []
    for index, item in enumerate(items):
        if index in wrong_format:
            kind = "wrong_format"
            rejected = rng.choice(WRONG_FORMATS).format(answer=item.response)
        else:
            kind = "wrong_value"
            rejected = _wrong_value(world, item, rng)
        records.append(
            {
                "prompt": format_prompt(item.instruction),
                "instruction": item.instruction,
                "chosen": item.response,
                "rejected": rejected,
                "kind": kind,
                "source": item.source,
            }
        )
    return records


@register_split("instructions", "text", "instruction chats: general QA and skill problems")
def instructions(world: World) -> list[Record]:
    """`num_instructions` chats in the source mix (Mix-CPT's instruction data)."""
    _, large = instruction_pools(world)
    items = _draw(world, "instructions", world.config.instructions.num_instructions, large)
    return _sft_records(items)


@register_split(
    "preference_pairs", "preference", "chosen = correct answer, rejected = wrong value or format"
)
def preference_pairs(world: World) -> list[Record]:
    """`num_preference_pairs` preference pairs on the large pool's instructions."""
    _, large = instruction_pools(world)
    count = world.config.instructions.num_preference_pairs
    items = _draw(world, "preference_pairs", count, large)
    return _preference_records(world, "preference_pairs", items)


@register_split("format_alignment_sft", "text", "small SFT pool for few-sample format alignment")
def format_alignment_sft(world: World) -> list[Record]:
    """The reserved pool as chats (disjoint from `instructions` and `preference_pairs`)."""
    reserved, _ = instruction_pools(world)
    return _sft_records(reserved)


@register_split(
    "format_alignment_preference",
    "preference",
    "small preference pool for few-sample format alignment",
)
def format_alignment_preference(world: World) -> list[Record]:
    """The reserved pool as preference pairs (the same instructions as `format_alignment_sft`)."""
    reserved, _ = instruction_pools(world)
    return _preference_records(world, "format_alignment_preference", reserved)
