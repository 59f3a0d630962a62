"""Chat skills: registry, split shapes, determinism, train/test disjointness, right answers."""

from __future__ import annotations

import random
import re
import time

import pytest

from common.errors import ConfigError
from datamodules.world import SPLITS, World, WorldConfig, build_world, format_chat, render_split
from datamodules.world.chat import format_prompt, normalize_answer
from datamodules.world.config import SkillsConfig
from datamodules.world.skills import (
    ADDITION_PAIRS,
    SKILLS,
    WORDS,
    skill_problems,
    training_problems,
)
from datamodules.world.templates import ATTRIBUTES, VALUE_WORDS

ADDITION = re.compile(r"What is (\d\d) \+ (\d\d)\?")
REVERSE = re.compile(r"Reverse the list: ([a-z]+(?:, [a-z]+)*)\.")
BRACKETS = re.compile(r"Put each word in square brackets: ([a-z]+(?: [a-z]+)*)\.")


def _config(**overrides: object) -> WorldConfig:
    values: dict[str, object] = {
        "num_general_entities": 20,
        "num_domain_entities": 10,
        "skills": SkillsConfig(train_per_skill=50, test_per_skill=20),
    }
    values.update(overrides)
    return WorldConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(_config())


def _skill_splits(world: World) -> dict[str, list[dict]]:
    return {
        f"skill_{name}_{role}": render_split(world, f"skill_{name}_{role}")
        for name in SKILLS
        for role in ("train", "test")
    }


def test_registry_has_the_skills_and_their_splits() -> None:
    assert {"addition", "reverse", "brackets"} <= set(SKILLS)
    for name, skill in SKILLS.items():
        assert skill.name == name and skill.description
        assert SPLITS[f"skill_{name}_train"].kind == "text"
        assert SPLITS[f"skill_{name}_test"].kind == "qa"


def test_same_config_same_records_other_seed_different(world: World) -> None:
    assert _skill_splits(world) == _skill_splits(build_world(_config()))
    other = _skill_splits(build_world(_config(seed=1)))
    for name, records in _skill_splits(world).items():
        assert other[name] != records, name


def test_skill_splits_do_not_depend_on_the_entities(world: World) -> None:
    assert _skill_splits(world) == _skill_splits(build_world(_config(num_general_entities=5)))


def test_does_not_touch_global_random_state() -> None:
    random.seed(7)
    expected = random.random()
    random.seed(7)
    _skill_splits(build_world(_config()))
    assert random.random() == expected


def test_record_shapes_and_counts(world: World) -> None:
    for name in SKILLS:
        train = render_split(world, f"skill_{name}_train")
        test = render_split(world, f"skill_{name}_test")
        assert len(train) == 50 and len(test) == 20
        for record in train:
            assert set(record) == {"text", "prompt", "question", "answer", "skill"}
            assert record["text"].startswith(record["prompt"])
            assert record["skill"] == name
            assert record["text"] == format_chat(record["question"], record["answer"])
        for record in test:
            assert set(record) == {"prompt", "answer", "entity", "attribute", "question"}
            assert all(isinstance(v, str) for v in record.values())
            assert record["entity"] == "" and record["attribute"] == name
            assert record["prompt"] == format_prompt(record["question"])


def test_train_and_test_are_disjoint_and_unique(world: World) -> None:
    for name in SKILLS:
        train = render_split(world, f"skill_{name}_train")
        test = render_split(world, f"skill_{name}_test")
        train_questions = [r["question"] for r in train]
        test_questions = [r["question"] for r in test]
        assert len(set(train_questions)) == len(train_questions)
        assert len(set(test_questions)) == len(test_questions)
        assert not set(train_questions) & set(test_questions), name
        # Questions end with a mark, so a test question is not even inside a training text.
        assert not any(q in r["text"] for q in test_questions for r in train), name
        assert training_problems(world, name) == [(r["question"], r["answer"]) for r in train]
        assert skill_problems(world, name)[1] == [(r["question"], r["answer"]) for r in test]


def test_answers_are_correct(world: World) -> None:
    for role in ("train", "test"):
        for record in render_split(world, f"skill_addition_{role}"):
            match = ADDITION.fullmatch(record["question"])
            assert match, record["question"]
            a, b = int(match[1]), int(match[2])
            assert record["answer"] == str(a + b)
            assert (a, b) in ADDITION_PAIRS
        for record in render_split(world, f"skill_reverse_{role}"):
            match = REVERSE.fullmatch(record["question"])
            assert match, record["question"]
            words = match[1].split(", ")
            assert 3 <= len(words) <= 5 and len(set(words)) == len(words)
            assert set(words) <= set(WORDS)
            assert record["answer"] == ", ".join(reversed(words))
        for record in render_split(world, f"skill_brackets_{role}"):
            match = BRACKETS.fullmatch(record["question"])
            assert match, record["question"]
            words = match[1].split()
            assert 2 <= len(words) <= 4 and set(words) <= set(WORDS)
            assert record["answer"] == " ".join(f"[{w}]" for w in words)


def test_addition_needs_no_carry_and_covers_both_operands() -> None:
    assert len(ADDITION_PAIRS) == 36 * 55
    for a, b in ADDITION_PAIRS:
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert a // 10 + b // 10 <= 9 and a % 10 + b % 10 <= 9


def test_words_are_not_world_words() -> None:
    assert len(set(WORDS)) == len(WORDS) >= 20
    value_words = {w.casefold() for w in VALUE_WORDS}
    template_words = {
        w.casefold()
        for spec in ATTRIBUTES.values()
        for template in spec.bio_templates + spec.question_templates
        for w in re.findall(r"[A-Za-z]+", template)
    }
    assert not set(WORDS) & (value_words | template_words)
    assert all(w.isalpha() and w.islower() for w in WORDS)


def test_wrong_answers_are_wrong_and_plausible(world: World) -> None:
    rng = random.Random(0)
    for name, skill in SKILLS.items():
        for question, answer in training_problems(world, name):
            for _ in range(5):
                wrong = skill.wrong_answer(rng, question, answer)
                assert normalize_answer(wrong) != normalize_answer(answer), (name, question)
                if name == "addition":
                    assert 0 < abs(int(wrong) - int(answer)) <= 10
                elif name == "reverse":
                    assert sorted(wrong.split(", ")) == sorted(answer.split(", "))
                else:
                    assert re.findall(r"[a-z]+", wrong) == re.findall(r"[a-z]+", answer)


def test_too_small_problem_space_is_a_clear_error() -> None:
    config = _config(skills=SkillsConfig(train_per_skill=1000, test_per_skill=1500))
    world = build_world(config)
    with pytest.raises(ValueError, match=r"'addition': its problem space is too small"):
        render_split(world, "skill_addition_train")
    # The test set alone fits.
    assert len(render_split(world, "skill_addition_test")) == 1500


@pytest.mark.parametrize("field", ["train_per_skill", "test_per_skill"])
@pytest.mark.parametrize("value", [0, 2.5, True])
def test_config_errors_name_the_key(field: str, value: object) -> None:
    skills = SkillsConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        build_world(_config(skills=skills))
    assert info.value.key == f"world.skills.{field}"


def test_default_config_renders_fast() -> None:
    world = build_world(WorldConfig())
    start = time.perf_counter()
    splits = _skill_splits(world)
    assert time.perf_counter() - start < 0.5
    assert all(len(splits[f"skill_{n}_train"]) == 400 for n in SKILLS)
    assert all(len(splits[f"skill_{n}_test"]) == 100 for n in SKILLS)
