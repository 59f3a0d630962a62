"""Reading the tasks' problems, deduplication against the test splits, the seeded sampler, ids."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from common.errors import ConfigError, DataError
from datamodules.synthesis.guideline import Guideline
from datamodules.synthesis.problems import (
    SamplerConfig,
    TaskSource,
    default_tasks,
    draw_groups,
    normalize_question,
    read_task_pools,
)
from tests.datamodules.synthesis.conftest import write_tasks

KEY = Guideline().fingerprint()


def _draw(tasks, **sampler):
    pools = read_task_pools(tasks)
    return pools, draw_groups(pools, SamplerConfig(**sampler), KEY)


def test_seeded_determinism(tasks: list[TaskSource]) -> None:
    _, first = _draw(tasks, num_passages=8, seed=3)
    _, again = _draw(tasks, num_passages=8, seed=3)
    _, other = _draw(tasks, num_passages=8, seed=4)
    assert [g.id for g in first.groups] == [g.id for g in again.groups]
    assert [g.problems for g in first.groups] == [g.problems for g in again.groups]
    assert [g.id for g in first.groups] != [g.id for g in other.groups]
    assert [g.index for g in first.groups] == list(range(8))


def test_groups_draw_from_different_tasks_and_respect_max_uses(tasks) -> None:
    pools, draw = _draw(tasks, num_passages=12, max_uses=1)
    assert len(draw.groups) == 12 and draw.shortage is None
    for group in draw.groups:
        assert sorted(group.tasks) == ["attribute_qa", "comparison", "same_value"]
    uses = Counter((p.task, p.question) for g in draw.groups for p in g.problems)
    assert max(uses.values()) == 1 and len(uses) == 36  # every problem exactly once
    assert {p.task: p.stats.used for p in pools} == dict.fromkeys(
        ["attribute_qa", "comparison", "same_value"], 12
    )
    # the order inside a passage is shuffled, not always the task order
    assert len({g.tasks for g in draw.groups}) > 1


def test_max_uses_spreads_uses_and_ids_stay_unique(tasks) -> None:
    _, draw = _draw(tasks, num_passages=24, max_uses=2)
    assert len(draw.groups) == 24
    uses = Counter((p.task, p.question) for g in draw.groups for p in g.problems)
    assert set(uses.values()) == {2}  # every problem once before any twice
    assert len({g.id for g in draw.groups}) == 24
    for group in draw.groups:
        assert len(set(group.problems)) == 3


def test_shortage_is_loud_and_recorded(tasks, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="datamodules.synthesis"):
        _, draw = _draw(tasks, num_passages=20, max_uses=1)
    assert len(draw.groups) == 12
    assert draw.shortage == {
        "requested": 20,
        "planned": 12,
        "reason": draw.shortage["reason"],
    }
    assert "ran out after 12 groups" in draw.shortage["reason"]
    assert any("8 fewer" in r.getMessage() for r in caplog.records)


def test_allow_same_task_fills_groups_without_repeating_a_problem(tmp_path: Path) -> None:
    sources = write_tasks(tmp_path / "small", n=2)
    sources[0] = write_tasks(tmp_path / "big", n=8)[0]  # attribute_qa: 8; the others: 2
    pools = read_task_pools(sources)
    fewer = draw_groups(pools, SamplerConfig(num_passages=4), KEY)
    assert len(fewer.groups) == 2 and fewer.shortage is not None
    filled = draw_groups(
        read_task_pools(sources),
        SamplerConfig(num_passages=4, on_shortage="allow_same_task"),
        KEY,
    )
    assert len(filled.groups) == 4 and filled.shortage is None
    assert filled.same_task_groups == 2
    for group in filled.groups:
        assert len(set(group.problems)) == 3
    uses = Counter((p.task, p.question) for g in filled.groups for p in g.problems)
    assert max(uses.values()) == 1


def test_more_problems_per_passage_than_tasks_is_a_config_error(tasks) -> None:
    pools = read_task_pools(tasks)
    with pytest.raises(ConfigError, match="sampler.problems_per_passage"):
        draw_groups(pools, SamplerConfig(problems_per_passage=4), KEY)


def test_raising_num_passages_appends_groups(tasks) -> None:
    _, five = _draw(tasks, num_passages=5)
    _, ten = _draw(tasks, num_passages=10)
    assert [g.id for g in ten.groups[:5]] == [g.id for g in five.groups]


def test_ids_depend_on_the_guideline(tasks) -> None:
    pools = read_task_pools(tasks)
    sampler = SamplerConfig(num_passages=4)
    with_e = draw_groups(pools, sampler, Guideline().fingerprint())
    without = draw_groups(pools, sampler, Guideline(enlightenment=False).fingerprint())
    assert [g.problems for g in with_e.groups] == [g.problems for g in without.groups]
    assert not {g.id for g in with_e.groups} & {g.id for g in without.groups}


def test_dedup_against_test_questions_and_entities(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A train problem equal to a test question (up to case, spaces and '?') is dropped and
    counted; one naming a test entity is leakage: dropped, counted, warned about."""
    leaked_question = {
        "question": "  where DOES   examinee comparison 1 work ",  # a test question, reworded
        "answer": "Orlin",
        "facts": [{"entity": "Someone New", "attribute": "work_city", "value": "Orlin"}],
    }
    leaked_entity = {
        "question": "When was Other Examinee 2 born?",
        "answer": "May 1, 1970",
        "entities": ["Other Examinee 2"],  # named by a test problem of another task
        "facts": [
            {"entity": "Other Examinee 2", "attribute": "birth_date", "value": "May 1, 1970"}
        ],
    }
    repeated = {"question": "Which company does Tamon Verley0 work for?", "answer": "x"}
    sources = write_tasks(
        tmp_path,
        n=6,
        extra_train={"attribute_qa": [leaked_question, leaked_entity], "same_value": [repeated]},
    )
    with caplog.at_level(logging.INFO, logger="datamodules.synthesis"):
        pools = read_task_pools(sources)
    stats = {p.task: p.stats for p in pools}
    assert stats["attribute_qa"].read == 8
    assert stats["attribute_qa"].question_in_test == 1
    assert stats["attribute_qa"].test_entity == 1
    assert stats["attribute_qa"].kept == 6
    assert stats["same_value"].duplicate == 1  # a question already in attribute_qa's train
    kept = {p.question for pool in pools for p in pool.problems}
    assert leaked_question["question"] not in kept and leaked_entity["question"] not in kept
    assert any("LEAKAGE" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert normalize_question("Where is X?") == normalize_question(" where  is x ")


def test_bad_records_name_file_and_line(tmp_path: Path) -> None:
    sources = write_tasks(tmp_path, n=2, extra_train={"comparison": [{"question": "Who?"}]})
    with pytest.raises(DataError, match=r"comparison_train.jsonl:3: record has no field 'answer'"):
        read_task_pools(sources)
    bad_facts = write_tasks(
        tmp_path / "b",
        n=2,
        extra_train={"comparison": [{"question": "Q", "answer": "A", "facts": [1]}]},
    )
    with pytest.raises(DataError, match=r":3: facts\[0\] must be an object"):
        read_task_pools(bad_facts)
    with pytest.raises(ConfigError, match=r"tasks\[1\].task"):
        read_task_pools([sources[0], sources[0]])
    with pytest.raises(ConfigError, match="names a world split"):
        read_task_pools(default_tasks())


def test_world_task_splits(small_world_artifacts) -> None:
    """The world's task splits read as they are: disjoint entities, so nothing is dropped."""
    pools = read_task_pools(default_tasks(), world_split=small_world_artifacts.split_path)
    assert [p.task for p in pools] == ["attribute_qa", "comparison", "same_value"]
    for pool in pools:
        records = small_world_artifacts.read_split(f"task_{pool.task}_train")
        assert pool.stats.read == len(records) == pool.stats.kept
        assert pool.stats.question_in_test == pool.stats.test_entity == pool.stats.duplicate == 0
        assert all(p.facts for p in pool.problems)
