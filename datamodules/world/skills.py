"""Chat skills unrelated to the entities: what adapting a chat model to new documents can erode.

Each skill is one `Skill` entry in `SKILLS` (a name, a description, a problem generator and a
plausible-wrong-answer generator), and gets two splits: `skill_<name>_train` (chat text, the
skill's share of the `chat` model's SFT data) and `skill_<name>_test` (QA records scored by greedy
exact match). Test problems are drawn first, and training problems exclude every test question, so
no test problem is ever trained on. The skills are tiny on purpose: two-digit addition without
carries, reversing a list of 3-5 words, and answering in a required format (each word in square
brackets). Measured with a 2-layer, 128-wide Llama (~0.7M parameters), 1000 SFT steps of 64 chats
on the three training splits with the loss on answers only: reverse 100%, brackets 78-86%,
addition 98% when the tokenizer splits digits (89% with the world tokenizer, which merges some
numbers into one token); addition with carries stayed near 10%, even with 2000 problems.

Every question ends with a mark ("?" or "."), so no question is a prefix of a longer one: a test
question never even occurs inside a training text.

The words come from `WORDS`, simple English nouns that are neither value words nor template words
of the biographies, so skill text never states or resembles a fact about an entity.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from datamodules.world.chat import format_chat, format_prompt
from datamodules.world.generator import World
from datamodules.world.splits import Record, register_split

__all__ = [
    "ADDITION_PAIRS",
    "SKILLS",
    "WORDS",
    "Problem",
    "Skill",
    "skill_problems",
    "training_problems",
]

Problem = tuple[str, str]
"""A skill problem: `(question, answer)`; the answer is the exact expected continuation."""

WORDS: tuple[str, ...] = (
    "apple",
    "basket",
    "blanket",
    "bottle",
    "bread",
    "bucket",
    "button",
    "candle",
    "chair",
    "cloud",
    "door",
    "feather",
    "garden",
    "horse",
    "kettle",
    "ladder",
    "lamp",
    "mirror",
    "pencil",
    "river",
    "rope",
    "spoon",
    "stone",
    "window",
)
"""The word pool of the list skills (distinct from every value and template word of the world)."""

_MAX_MISSES_PER_PROBLEM = 20
"""Redraws allowed per requested problem before the problem space counts as too small."""


@dataclass(frozen=True)
class Skill:
    """One chat skill.

    Args:
        name: Key in `SKILLS`; the splits are `skill_<name>_train` and `skill_<name>_test`, and QA
            records carry it as their `attribute`.
        description: One line for humans (split descriptions).
        problem: Draws a `(question, answer)` from the given RNG; the question ends with "?" or
            "." (so it is never a prefix of another one).
        wrong_answer: `(rng, question, answer) -> ` a plausible wrong answer, never equal to
            `answer` (the rejected side of preference pairs).
    """

    name: str
    description: str
    problem: Callable[[random.Random], Problem]
    wrong_answer: Callable[[random.Random, str, str], str]


# --- addition ----------------------------------------------------------------------------------

ADDITION_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (a, b)
    for a in range(10, 100)
    for b in range(10, 100)
    if a // 10 + b // 10 <= 9 and a % 10 + b % 10 <= 9
)
"""The addition problems: two two-digit numbers whose digits add up without a carry (1980 of
them). Each answer digit is then the sum of two aligned digits, which a tiny Llama learns from a
few hundred examples; with carries, a short SFT does not generalize (see the module docstring)."""


def _addition_problem(rng: random.Random) -> Problem:
    a, b = rng.choice(ADDITION_PAIRS)
    return f"What is {a} + {b}?", str(a + b)


def _addition_wrong(rng: random.Random, question: str, answer: str) -> str:
    # Off by one or two, or a slip in the tens digit; sums are >= 20, so never negative.
    return str(int(answer) + rng.choice((-10, -2, -1, 1, 2, 10)))


# --- reverse -----------------------------------------------------------------------------------

_REVERSE_PREFIX = "Reverse the list: "


def _reverse_problem(rng: random.Random) -> Problem:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return _REVERSE_PREFIX + ", ".join(words) + ".", ", ".join(reversed(words))


def _reverse_wrong(rng: random.Random, question: str, answer: str) -> str:
    words = answer.split(", ")
    if rng.random() < 0.5:
        return ", ".join(reversed(words))  # the list as given, not reversed
    # Another wrong order: a shuffle, rotated by one if it came out right (the words are
    # distinct, so a rotation of the right order is wrong).
    shuffled = rng.sample(words, len(words))
    if shuffled == words:
        shuffled = shuffled[1:] + shuffled[:1]
    return ", ".join(shuffled)


# --- brackets ----------------------------------------------------------------------------------

_BRACKETS_PREFIX = "Put each word in square brackets: "


def _brackets_problem(rng: random.Random) -> Problem:
    words = rng.sample(WORDS, rng.randint(2, 4))
    return _BRACKETS_PREFIX + " ".join(words) + ".", " ".join(f"[{w}]" for w in words)


def _brackets_wrong(rng: random.Random, question: str, answer: str) -> str:
    words = [w[1:-1] for w in answer.split()]
    style = rng.choice(("merge", "bare", "round"))
    if style == "merge":  # two neighbours in one pair of brackets
        i = rng.randrange(len(words) - 1)
        groups = [*words[:i], f"{words[i]} {words[i + 1]}", *words[i + 2 :]]
        return " ".join(f"[{g}]" for g in groups)
    if style == "bare":  # one word left without brackets
        i = rng.randrange(len(words))
        return " ".join(w if j == i else f"[{w}]" for j, w in enumerate(words))
    return " ".join(f"({w})" for w in words)  # the wrong kind of brackets


SKILLS: dict[str, Skill] = {
    skill.name: skill
    for skill in (
        Skill("addition", "two-digit addition without carry", _addition_problem, _addition_wrong),
        Skill("reverse", "reverse a list of 3-5 words", _reverse_problem, _reverse_wrong),
        Skill(
            "brackets",
            "answer in a required format: each of 2-4 words in square brackets",
            _brackets_problem,
            _brackets_wrong,
        ),
    )
}
"""All skills, in split order; adding a skill is one entry here."""


# --- problems and splits -----------------------------------------------------------------------


def _draw(
    skill: Skill, rng: random.Random, count: int, exclude: set[str], role: str
) -> list[Problem]:
    """`count` problems with distinct questions outside `exclude`, by bounded redraws."""
    seen = set(exclude)
    problems: list[Problem] = []
    misses = 0
    while len(problems) < count:
        question, answer = skill.problem(rng)
        if question in seen:
            misses += 1
            if misses > _MAX_MISSES_PER_PROBLEM * count:
                raise ValueError(
                    f"skill {skill.name!r}: its problem space is too small for {count} {role} "
                    f"problems (found {len(problems)} new ones besides {len(exclude)} excluded); "
                    "lower world.skills.train_per_skill / world.skills.test_per_skill"
                )
            continue
        seen.add(question)
        problems.append((question, answer))
    return problems


def skill_problems(world: World, name: str) -> tuple[list[Problem], list[Problem]]:
    """`(train, test)` problems of skill `name`: test drawn first, then `train_per_skill`
    training problems whose questions are all outside the test set. Deterministic per world."""
    test = _test_problems(world, name)
    train = _draw(
        SKILLS[name],
        world.rng(f"skill_{name}_train"),
        world.config.skills.train_per_skill,
        {q for q, _ in test},
        "training",
    )
    return train, test


def _test_problems(world: World, name: str) -> list[Problem]:
    count = world.config.skills.test_per_skill
    return _draw(SKILLS[name], world.rng(f"skill_{name}_test"), count, set(), "test")


def training_problems(world: World, name: str) -> list[Problem]:
    """The training problems of skill `name` (exactly those of `skill_<name>_train`): the only
    skill problems other splits (instruction data, preference pairs) may use."""
    return skill_problems(world, name)[0]


def _register(skill: Skill) -> None:
    name = skill.name

    @register_split(
        f"skill_{name}_train", "text", f"chat SFT data of the skill: {skill.description}"
    )
    def train(world: World) -> list[Record]:
        return [
            {
                "text": format_chat(q, a),
                "prompt": format_prompt(q),
                "question": q,
                "answer": a,
                "skill": name,
            }
            for q, a in training_problems(world, name)
        ]

    @register_split(f"skill_{name}_test", "qa", f"test problems of the skill: {skill.description}")
    def test(world: World) -> list[Record]:
        return [
            {
                "prompt": format_prompt(q),
                "answer": a,
                "entity": "",
                "attribute": name,
                "question": q,
            }
            for q, a in _test_problems(world, name)
        ]


for _skill in SKILLS.values():
    _register(_skill)
