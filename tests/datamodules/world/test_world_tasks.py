"""The downstream task splits: entity split, correct answers, balance, shapes and no leakage."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from common.errors import ConfigError
from datamodules.world import SPECIAL_TOKENS, SPLITS, World, WorldConfig, build_world, render_split
from datamodules.world.chat import format_plain_prompt, format_plain_qa
from datamodules.world.config import TasksConfig, WebConfig
from datamodules.world.tasks import (
    COMPARISON_TEMPLATES,
    SAME_VALUE_TEMPLATES,
    TASKS,
    task_entities,
)
from datamodules.world.templates import MONTHS

TRAIN_KEYS = {"text", "question", "answer", "task", "entities", "facts"}
TEST_KEYS = {"prompt", "answer", "entity", "attribute", "question", "task"}


def tasks_config(seed: int = 5, **tasks: object) -> WorldConfig:
    """20 + 20 entities (10 task-train, 10 task-test) and a small web corpus."""
    values: dict[str, object] = {"comparisons_per_split": 30, "same_value_per_split": 20}
    values.update(tasks)
    return WorldConfig(
        seed=seed,
        num_general_entities=20,
        num_domain_entities=20,
        web=WebConfig(num_documents=400, num_pretraining_documents=100),
        tasks=TasksConfig(**values),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(tasks_config())


@pytest.fixture(scope="module")
def records(world: World) -> dict[str, list[dict]]:
    return {
        f"task_{task}_{split}": render_split(world, f"task_{task}_{split}")
        for task in TASKS
        for split in ("train", "test")
    }


def _date_key(date: str) -> tuple[int, int, int]:
    month_day, year = date.split(", ")
    month, day = month_day.split()
    return int(year), MONTHS.index(month), int(day)


def _pair(world: World, record: dict) -> tuple:
    by_name = {e.name: e for e in world.entities}
    names = record["entities"] if "entities" in record else record["entity"].split(" | ")
    assert len(names) == 2 and names[0] != names[1]
    return by_name[names[0]], by_name[names[1]]


def test_registry_gives_a_train_and_a_test_split_per_task() -> None:
    assert set(TASKS) == {"attribute_qa", "comparison", "same_value"}
    for task in TASKS:
        assert SPLITS[f"task_{task}_train"].kind == "text"
        assert SPLITS[f"task_{task}_test"].kind == "qa"


def test_entity_split_is_deterministic_disjoint_and_sized(world: World) -> None:
    train, test = task_entities(world)
    assert (train, test) == task_entities(build_world(tasks_config()))
    assert not {e.id for e in train} & {e.id for e in test}
    assert sorted(e.id for e in train + test) == sorted(e.id for e in world.domain_entities)
    assert len(test) == round(0.5 * 20)
    lopsided = build_world(tasks_config(test_entity_fraction=0.25))
    assert len(task_entities(lopsided)[1]) == 5
    extreme = build_world(WorldConfig(num_domain_entities=3, tasks=TasksConfig(0.01)))
    assert [len(side) for side in task_entities(extreme)] == [2, 1], "both sides non-empty"


def test_deterministic_and_seeded(world: World, records: dict[str, list[dict]]) -> None:
    again = build_world(tasks_config())
    for name, expected in records.items():
        assert render_split(again, name) == expected
    other = build_world(tasks_config(seed=6))
    assert render_split(other, "task_comparison_test") != records["task_comparison_test"]


def test_does_not_touch_global_random_state() -> None:
    random.seed(11)
    expected = random.random()
    random.seed(11)
    world = build_world(tasks_config())
    for task in TASKS:
        render_split(world, f"task_{task}_train")
        render_split(world, f"task_{task}_test")
    assert random.random() == expected


def test_shapes_counts_and_formats(world: World, records: dict[str, list[dict]]) -> None:
    train, test = task_entities(world)
    n_attributes = len(world.attribute_names)
    expected = {
        "attribute_qa": (len(train) * n_attributes, len(test) * n_attributes),
        "comparison": (30, 30),
        "same_value": (20, 20),
    }
    by_name = {e.name: e for e in world.entities}
    for task, (n_train, n_test) in expected.items():
        train_records = records[f"task_{task}_train"]
        test_records = records[f"task_{task}_test"]
        assert (len(train_records), len(test_records)) == (n_train, n_test)
        for r in train_records:
            assert set(r) == TRAIN_KEYS and r["task"] == task
            assert r["text"] == format_plain_qa(r["question"], r["answer"])
            assert all(name in r["question"] for name in r["entities"])
            for fact in r["facts"]:
                assert set(fact) == {"entity", "attribute", "value"}
                assert by_name[fact["entity"]].attributes[fact["attribute"]] == fact["value"]
                assert fact["entity"] in r["entities"]
        for r in test_records:
            assert set(r) == TEST_KEYS and r["task"] == r["attribute"] == task
            assert all(isinstance(v, str) for v in r.values())
            assert r["prompt"] == format_plain_prompt(r["question"])
            assert all(name in r["question"] for name in r["entity"].split(" | "))
        questions = [r["question"] for r in train_records + test_records]
        assert len(set(questions)) == len(questions), "no repeated problem"
        texts = [r["text"] for r in train_records] + [r["prompt"] for r in test_records]
        assert not any(token in t for t in texts for token in SPECIAL_TOKENS)


def test_each_side_uses_only_its_entities(world: World, records: dict[str, list[dict]]) -> None:
    train, test = ({e.name for e in side} for side in task_entities(world))
    for task in TASKS:
        for r in records[f"task_{task}_train"]:
            assert set(r["entities"]) <= train
            assert {f["entity"] for f in r["facts"]} <= train
        for r in records[f"task_{task}_test"]:
            assert set(r["entity"].split(" | ")) <= test


def test_attribute_qa_covers_every_fact_with_the_right_templates(
    world: World, records: dict[str, list[dict]]
) -> None:
    train, test = task_entities(world)
    by_name = {e.name: e for e in world.entities}
    seen = Counter()
    for r in records["task_attribute_qa_train"]:
        (fact,) = r["facts"]
        entity, attribute = by_name[fact["entity"]], fact["attribute"]
        assert r["answer"] == entity.attributes[attribute]
        phrasings = {
            world.question(entity, attribute, t)
            for t in world.question_templates(attribute, "train")
        }
        assert r["question"] in phrasings
        seen[entity.name, attribute] += 1
    assert seen == Counter({(e.name, a): 1 for e in train for a in world.attribute_names})
    seen.clear()
    for r in records["task_attribute_qa_test"]:
        entity = by_name[r["entity"]]
        (attribute,) = [
            a
            for a in world.attribute_names
            if r["question"]
            in {world.question(entity, a, t) for t in world.question_templates(a, "heldout")}
        ]
        assert r["answer"] == entity.attributes[attribute]
        seen[entity.name, attribute] += 1
    assert seen == Counter({(e.name, a): 1 for e in test for a in world.attribute_names})


def test_comparison_answers_are_the_earlier_born(
    world: World, records: dict[str, list[dict]]
) -> None:
    for split in ("train", "test"):
        positions = Counter()
        for r in records[f"task_comparison_{split}"]:
            a, b = _pair(world, r)
            date_a, date_b = (_date_key(e.attributes["birth_date"]) for e in (a, b))
            assert date_a != date_b
            assert r["answer"] == (a.name if date_a < date_b else b.name)
            assert r["question"] in {t.format(a=a.name, b=b.name) for t in COMPARISON_TEMPLATES}
            positions["first" if r["answer"] == a.name else "second"] += 1
        assert positions["first"] and positions["second"], "the answer is not always first"
    assert "Who was born earlier" in " ".join(
        r["question"] for r in records["task_comparison_test"]
    )


def test_same_value_answers_are_correct_and_balanced(
    world: World, records: dict[str, list[dict]]
) -> None:
    for split in ("train", "test"):
        answers = Counter()
        attributes = Counter()
        for r in records[f"task_same_value_{split}"]:
            a, b = _pair(world, r)
            (attribute,) = [
                attr
                for attr, templates in SAME_VALUE_TEMPLATES.items()
                if r["question"] in {t.format(a=a.name, b=b.name) for t in templates}
            ]
            same = a.attributes[attribute] == b.attributes[attribute]
            assert r["answer"] == ("yes" if same else "no")
            answers[r["answer"]] += 1
            attributes[attribute] += 1
        assert answers == Counter({"yes": 10, "no": 10})
        assert len(attributes) >= 3, "several attributes are asked about"
    default = build_world(WorldConfig())
    answers = Counter(r["answer"] for r in render_split(default, "task_same_value_test"))
    assert answers == Counter({"yes": 100, "no": 100})


def test_no_test_problem_leaks_into_any_text_split(
    world: World, records: dict[str, list[dict]]
) -> None:
    text_splits = [name for name, spec in SPLITS.items() if spec.kind == "text"]
    assert "web_corpus" in text_splits and "domain_documents" in text_splits
    corpus = "\n".join(r["text"] for name in text_splits for r in render_split(world, name))
    for task in TASKS:
        for r in records[f"task_{task}_test"]:
            assert r["question"] not in corpus, r["question"]
    test_names = [e.name for e in task_entities(world)[1]]
    for task in TASKS:
        train_text = "\n".join(str(r) for r in records[f"task_{task}_train"])
        assert not any(name in train_text for name in test_names)


def test_missing_attributes_make_a_task_empty() -> None:
    world = build_world(
        WorldConfig(
            num_general_entities=20,
            num_domain_entities=20,
            attributes=["birth_city", "major"],
            tasks=TasksConfig(comparisons_per_split=30, same_value_per_split=8),
        )
    )
    assert render_split(world, "task_comparison_train") == []
    assert render_split(world, "task_comparison_test") == []
    same = render_split(world, "task_same_value_test")
    allowed = [t for a in ("birth_city", "major") for t in SAME_VALUE_TEMPLATES[a]]
    assert len(same) == 8
    for r in same:
        a, b = _pair(world, r)
        assert r["question"] in {t.format(a=a.name, b=b.name) for t in allowed}
    only_dates = build_world(WorldConfig(attributes=["birth_date"]))
    assert render_split(only_dates, "task_same_value_train") == []


@pytest.mark.parametrize(
    ("overrides", "split", "fragment"),
    [
        ({"comparisons_per_split": 91}, "task_comparison_train", "comparisons_per_split=91"),
        ({"same_value_per_split": 10_000}, "task_same_value_test", "same_value_per_split=10000"),
    ],
)
def test_too_few_pairs_writes_what_exists_and_says_how_many_are_missing(
    overrides: dict, split: str, fragment: str, caplog: pytest.LogCaptureFixture
) -> None:
    world = build_world(tasks_config(**overrides))
    with caplog.at_level("WARNING", logger="datamodules.world.tasks"):
        records = render_split(world, split)
    warnings = [r.getMessage() for r in caplog.records if fragment in r.getMessage()]
    assert warnings and all("num_domain_entities" in w and "fewer" in w for w in warnings)
    wanted = next(iter(overrides.values()))
    assert 0 < len(records) < wanted
    assert len({r["question"] for r in records}) == len(records), "still distinct problems"


def test_too_few_domain_entities_is_a_clear_error() -> None:
    world = build_world(WorldConfig(num_domain_entities=1))
    with pytest.raises(ValueError, match="at least 2 new-domain entities"):
        render_split(world, "task_attribute_qa_train")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("test_entity_fraction", 0.0, "strictly between 0 and 1"),
        ("test_entity_fraction", 1.0, "strictly between 0 and 1"),
        ("test_entity_fraction", 1.5, "in [0, 1]"),
        ("comparisons_per_split", 0, "must be >= 1"),
        ("same_value_per_split", "many", "must be an integer"),
    ],
)
def test_bad_tasks_config_names_the_key(field: str, value: object, fragment: str) -> None:
    config = WorldConfig(tasks=TasksConfig(**{field: value}))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        build_world(config)
    assert info.value.key == f"world.tasks.{field}"
    assert fragment in str(info.value)
