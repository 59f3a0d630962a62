"""Fixtures of the synthesis tests: handmade task splits (JSONL) and a small world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from datamodules.synthesis.problems import TaskSource

MONTHS = ("January", "March", "May", "July", "September", "November")


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def task_records(n: int) -> dict[str, list[dict[str, Any]]]:
    """`n` training problems per task, shaped like the world's (with facts)."""
    out: dict[str, list[dict[str, Any]]] = {"attribute_qa": [], "comparison": [], "same_value": []}
    for i in range(n):
        person = f"Tamon Verley{i}"
        out["attribute_qa"].append(
            {
                "question": f"Which company does {person} work for?",
                "answer": f"Kestrel Labs {i}",
                "task": "attribute_qa",
                "entities": [person],
                "facts": [
                    {"entity": person, "attribute": "employer", "value": f"Kestrel Labs {i}"}
                ],
            }
        )
        a, b = f"Rina Ostwood{i}", f"Belo Kalton{i}"
        date_a = f"{MONTHS[i % 6]} {1 + i % 28}, {1950 + i}"
        date_b = f"{MONTHS[(i + 1) % 6]} {2 + i % 27}, {1960 + i}"
        out["comparison"].append(
            {
                "question": f"Who was born earlier, {a} or {b}?",
                "answer": a,
                "task": "comparison",
                "entities": [a, b],
                "facts": [
                    {"entity": a, "attribute": "birth_date", "value": date_a},
                    {"entity": b, "attribute": "birth_date", "value": date_b},
                ],
            }
        )
        c, d = f"Sora Marleigh{i}", f"Dane Helberg{i}"
        same = i % 2 == 0
        out["same_value"].append(
            {
                "question": f"Did {c} and {d} study at the same university?",
                "answer": "yes" if same else "no",
                "task": "same_value",
                "entities": [c, d],
                "facts": [
                    {"entity": c, "attribute": "university", "value": "Corvin College"},
                    {
                        "entity": d,
                        "attribute": "university",
                        "value": "Corvin College" if same else "Westfall College",
                    },
                ],
            }
        )
    return out


def heldout_records(n: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Test problems about other people (disjoint entities)."""
    return {
        task: [
            {
                "prompt": f"Question: Where does Examinee {task} {i} work?\nAnswer:",
                "answer": "Orlin",
                "entity": f"Examinee {task} {i} | Other Examinee {i}",
                "attribute": task,
                "question": f"Where does Examinee {task} {i} work?",
                "task": task,
            }
            for i in range(n)
        ]
        for task in ("attribute_qa", "comparison", "same_value")
    }


def write_tasks(
    root: Path,
    n: int = 12,
    *,
    extra_train: dict[str, list[dict[str, Any]]] | None = None,
    extra_test: dict[str, list[dict[str, Any]]] | None = None,
) -> list[TaskSource]:
    """Handmade train/test JSONL per task under `root`; the `TaskSource`s naming them."""
    train = task_records(n)
    test = heldout_records()
    for task, records in (extra_train or {}).items():
        train[task] = train[task] + records
    for task, records in (extra_test or {}).items():
        test[task] = test[task] + records
    return [
        TaskSource(
            task,
            str(_write(root / f"{task}_train.jsonl", train[task])),
            str(_write(root / f"{task}_test.jsonl", test[task])),
        )
        for task in train
    ]


@pytest.fixture
def tasks(tmp_path: Path) -> list[TaskSource]:
    """12 problems per task (handmade JSONL), 3 test problems per task."""
    return write_tasks(tmp_path / "tasks")


@pytest.fixture(scope="session")
def small_world_artifacts(tmp_path_factory: pytest.TempPathFactory):
    """The world tests' small world, materialized once."""
    from datamodules.world import materialize_world
    from tests.datamodules.world.conftest import small_config

    cache = tmp_path_factory.mktemp("synthesis_worlds")
    return materialize_world(small_config(), cache)


@pytest.fixture(autouse=True)
def _no_api_key_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads a real key from the developer's environment."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
