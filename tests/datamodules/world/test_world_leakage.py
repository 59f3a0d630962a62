"""No evaluation item of any kind leaks into anything a model is trained on.

Every `qa` split is a test set (knowledge QA with held-out wording, skills, downstream tasks); every
`text` and `preference` split may be trained on. A test question must never appear in training
text, and a new-domain fact must never be *asked* in training data (documents may state it: that
is the knowledge to adapt to).
"""

from __future__ import annotations

import re

import pytest

from datamodules.world import SPLITS, World, build_world, render_split
from datamodules.world.chat import ASSISTANT, USER

from .conftest import small_config

TEST_KINDS = {"qa"}


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(small_config(num_domain_entities=12))


@pytest.fixture(scope="module")
def rendered(world: World) -> dict[str, list[dict]]:
    return {name: render_split(world, name) for name in SPLITS}


def _training_texts(rendered: dict[str, list[dict]]) -> dict[str, str]:
    texts = {}
    for name, records in rendered.items():
        kind = SPLITS[name].kind
        if kind == "text":
            texts[name] = "\n".join(r["text"] for r in records)
        elif kind == "preference":
            texts[name] = "\n".join(r["prompt"] + r["chosen"] + r["rejected"] for r in records)
    return texts


def test_no_test_question_appears_in_any_training_split(rendered: dict[str, list[dict]]) -> None:
    training = _training_texts(rendered)
    tests = {n: r for n, r in rendered.items() if SPLITS[n].kind in TEST_KINDS}
    assert len(tests) >= 6 + 3 + 3, sorted(tests)  # knowledge QA, skills, tasks
    for test_name, records in tests.items():
        for record in records:
            pattern = re.compile(r"(?<![\w])" + re.escape(record["question"]) + r"(?![\w])")
            for train_name, text in training.items():
                assert not pattern.search(text), f"{test_name} item leaks into {train_name}"


def test_new_domain_facts_are_never_asked_in_training_data(
    world: World, rendered: dict[str, list[dict]]
) -> None:
    """Documents (and the web corpus) may state new-domain facts; only the task training splits
    may ask about new-domain entities, and only about the task-train entities."""
    from datamodules.world.tasks import task_entities

    train_entities, test_entities = task_entities(world)
    asked = ("?", USER, ASSISTANT, "Question:")
    for name, text in _training_texts(rendered).items():
        lines = [line for line in text.split("\n") if any(a in line for a in asked)]
        for entity in world.domain_entities:
            if name.startswith("task_") and entity in train_entities:
                continue
            assert not any(entity.name in line for line in lines), f"{entity.name} asked in {name}"
    assert test_entities
