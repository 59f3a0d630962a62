"""Instruction data and preference pairs: mix, shapes, no test leakage, disjoint pools."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from common.errors import ConfigError
from datamodules.world import (
    END,
    SPLITS,
    World,
    WorldConfig,
    build_world,
    format_chat,
    format_prompt,
    render_split,
)
from datamodules.world.chat import normalize_answer
from datamodules.world.config import InstructionConfig, SkillsConfig
from datamodules.world.instructions import WRONG_FORMATS
from datamodules.world.skills import SKILLS, skill_problems
from datamodules.world.templates import CITIES, COMPANIES, MAJORS, UNIVERSITIES

SPLIT_NAMES = ("instructions", "preference_pairs", "format_alignment_sft")
ALL_SPLITS = (*SPLIT_NAMES, "format_alignment_preference")
SFT_FIELDS = {"text", "prompt", "instruction", "response", "source"}
PREFERENCE_FIELDS = {"prompt", "instruction", "chosen", "rejected", "kind", "source"}
DATE = re.compile(r"[A-Z][a-z]+ \d{1,2}, \d{4}")
POOLS = {
    "birth_city": CITIES,
    "work_city": CITIES,
    "university": UNIVERSITIES,
    "major": MAJORS,
    "employer": COMPANIES,
}


def _config(**overrides: object) -> WorldConfig:
    instructions = {
        "num_instructions": 300,
        "num_preference_pairs": 200,
        "format_alignment_pool": 16,
    }
    instructions.update(overrides.pop("instructions", {}))  # type: ignore[arg-type]
    values: dict[str, object] = {
        "num_general_entities": 20,
        "num_domain_entities": 10,
        "skills": SkillsConfig(train_per_skill=50, test_per_skill=20),
        "instructions": InstructionConfig(**instructions),  # type: ignore[arg-type]
    }
    values.update(overrides)
    return WorldConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(_config())


def _render(world: World) -> dict[str, list[dict]]:
    return {name: render_split(world, name) for name in ALL_SPLITS}


def _allowed(world: World) -> dict[str, tuple[str, str]]:
    """instruction -> (response, source) of everything the sets may use."""
    allowed = {
        q: (a, "general_qa")
        for e in world.general_qa_entities
        for _attribute, q, a in world.qa_pairs(e, "train")
    }
    for name in SKILLS:
        train, _test = skill_problems(world, name)
        allowed.update({q: (a, f"skill:{name}") for q, a in train})
    return allowed


def _texts(record: dict) -> list[str]:
    return [v for v in record.values() if isinstance(v, str)]


def test_splits_are_registered_with_their_kinds() -> None:
    assert SPLITS["instructions"].kind == "text"
    assert SPLITS["format_alignment_sft"].kind == "text"
    assert SPLITS["preference_pairs"].kind == "preference"
    assert SPLITS["format_alignment_preference"].kind == "preference"


def test_same_config_same_records_other_seed_different(world: World) -> None:
    records = _render(world)
    assert records == _render(build_world(_config()))
    other = _render(build_world(_config(seed=1)))
    for name in ALL_SPLITS:
        assert other[name] != records[name], name


def test_counts_and_record_shapes(world: World) -> None:
    records = _render(world)
    counts = {
        "instructions": 300,
        "preference_pairs": 200,
        "format_alignment_sft": 16,
        "format_alignment_preference": 16,
    }
    allowed = _allowed(world)
    for name, expected in counts.items():
        assert len(records[name]) == expected, name
        for record in records[name]:
            response, source = allowed[record["instruction"]]
            assert record["source"] == source
            if SPLITS[name].kind == "text":
                assert set(record) == SFT_FIELDS
                assert record["response"] == response
                assert record["text"] == format_chat(record["instruction"], response)
            else:
                assert set(record) == PREFERENCE_FIELDS
                assert record["prompt"] == format_prompt(record["instruction"])
                assert record["chosen"] == response
                assert record["kind"] in ("wrong_value", "wrong_format")
                assert END not in record["chosen"] and END not in record["rejected"]


def test_source_mix_is_half_general_half_skills_evenly(world: World) -> None:
    for name, total in (("instructions", 300), ("preference_pairs", 200)):
        counts = Counter(r["source"] for r in render_split(world, name))
        assert counts["general_qa"] == total // 2
        per_skill = [counts[f"skill:{s}"] for s in SKILLS]
        assert sum(per_skill) == total // 2 and max(per_skill) - min(per_skill) <= 1
    # Sources are cycled: every general QA instruction is used before any repeats.
    used = Counter(
        r["instruction"] for r in render_split(world, "instructions") if r["source"] == "general_qa"
    )
    assert max(used.values()) - min(used.values()) <= 1


@pytest.mark.parametrize(("fraction", "general"), [(0.0, True), (1.0, False)])
def test_skill_fraction_extremes(fraction: float, general: bool) -> None:
    world = build_world(_config(instructions={"skill_fraction": fraction}))
    for name in ALL_SPLITS:
        sources = {r["source"] for r in render_split(world, name)}
        assert sources == ({"general_qa"} if general else {f"skill:{s}" for s in SKILLS})


def test_no_general_qa_entities_means_skills_only() -> None:
    world = build_world(_config(general_qa_fraction=0.0))
    for name in ALL_SPLITS:
        assert all(r["source"].startswith("skill:") for r in render_split(world, name))


def test_nothing_from_a_test_set_appears(world: World) -> None:
    test_questions = [q for name in SKILLS for q, _a in skill_problems(world, name)[1]] + [
        r["question"] for r in render_split(world, "qa_eval_general")
    ]
    assert test_questions
    forbidden_names = [e.name for e in world.domain_entities + world.general_bio_only_entities]
    assert forbidden_names
    for name, records in _render(world).items():
        for record in records:
            for text in _texts(record):
                assert not any(q in text for q in test_questions), (name, text)
                assert not any(n in text for n in forbidden_names), (name, text)


def test_preference_pairs_reject_a_wrong_value_or_format(world: World) -> None:
    attributes = {
        q: attribute
        for e in world.general_qa_entities
        for attribute, q, _a in world.qa_pairs(e, "train")
    }
    for name in ("preference_pairs", "format_alignment_preference"):
        records = render_split(world, name)
        n_format = sum(r["kind"] == "wrong_format" for r in records)
        assert n_format == round(0.3 * len(records)), name
        for r in records:
            chosen, rejected = r["chosen"], r["rejected"]
            assert normalize_answer(chosen) != normalize_answer(rejected), r
            if r["kind"] == "wrong_format":
                assert rejected in {f.format(answer=chosen) for f in WRONG_FORMATS}
            elif r["source"] == "general_qa":
                attribute = attributes[r["instruction"]]
                if attribute == "birth_date":
                    assert DATE.fullmatch(rejected), r
                else:
                    assert rejected in POOLS[attribute], r
            elif r["source"] == "skill:addition":
                assert 0 < abs(int(rejected) - int(chosen)) <= 10
            elif r["source"] == "skill:reverse":
                assert sorted(rejected.split(", ")) == sorted(chosen.split(", "))
            else:
                assert re.findall(r"[a-z]+", rejected) == re.findall(r"[a-z]+", chosen)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_wrong_format_fraction_extremes(fraction: float) -> None:
    world = build_world(_config(instructions={"wrong_format_fraction": fraction}))
    kinds = {r["kind"] for r in render_split(world, "preference_pairs")}
    assert kinds == {"wrong_format" if fraction else "wrong_value"}


def test_format_alignment_pool_is_disjoint_from_the_large_sets(world: World) -> None:
    records = _render(world)
    large = {r["instruction"] for n in ("instructions", "preference_pairs") for r in records[n]}
    sft = [r["instruction"] for r in records["format_alignment_sft"]]
    preference = [r["instruction"] for r in records["format_alignment_preference"]]
    assert len(set(sft)) == len(sft) == 16
    assert sft == preference, "SFT and preference alignment see the same prompts"
    assert not set(sft) & large
    assert {r["source"] for r in records["format_alignment_sft"]} == {"general_qa"} | {
        f"skill:{s}" for s in SKILLS
    }


def test_a_pool_larger_than_a_source_is_a_clear_error() -> None:
    world = build_world(_config(instructions={"format_alignment_pool": 400}))
    with pytest.raises(ValueError, match=r"format_alignment_pool \(400\) reserves"):
        render_split(world, "instructions")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_instructions", 0),
        ("num_preference_pairs", 1.5),
        ("wrong_format_fraction", 1.5),
        ("format_alignment_pool", 0),
        ("skill_fraction", -0.1),
        ("skill_fraction", "half"),
    ],
)
def test_config_errors_name_the_key(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        build_world(_config(instructions={field: value}))
    assert info.value.key == f"world.instructions.{field}"


def test_default_config_renders_fast() -> None:
    world = build_world(WorldConfig())
    start = time.perf_counter()
    records = _render(world)
    assert time.perf_counter() - start < 0.5
    assert len(records["instructions"]) == 2000
    assert len(records["preference_pairs"]) == 1000
    assert len(records["format_alignment_sft"]) == len(records["format_alignment_preference"]) == 64
