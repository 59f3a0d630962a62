"""Fixtures of the synthetic-world tests: a small world, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.world import World, WorldArtifacts, WorldConfig, build_world, materialize_world
from datamodules.world.config import InstructionConfig, SkillsConfig, TasksConfig, WebConfig

SMALL_PARTS: dict[str, object] = {
    "skills": SkillsConfig(train_per_skill=30, test_per_skill=10),
    "instructions": InstructionConfig(
        num_instructions=30, num_preference_pairs=20, format_alignment_pool=6
    ),
    "web": WebConfig(num_documents=100, num_pretraining_documents=20),
    "tasks": TasksConfig(comparisons_per_split=8, same_value_per_split=4),
}
"""Small skills, instruction, web and task sets: a small world builds in well under a second."""


def small_config(**overrides: object) -> WorldConfig:
    """A world small enough to build in well under a second."""
    values: dict[str, object] = {
        "seed": 3,
        "num_general_entities": 8,
        "num_domain_entities": 8,
        "train_paraphrases": 3,
        "vocab_size": 400,
        **SMALL_PARTS,
    }
    values.update(overrides)
    return WorldConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def small_world() -> World:
    """The `World` of `small_config()`."""
    return build_world(small_config())


@pytest.fixture(scope="session")
def small_artifacts(tmp_path_factory: pytest.TempPathFactory) -> WorldArtifacts:
    """`small_config()` materialized in a session cache directory."""
    return materialize_world(small_config(), tmp_path_factory.mktemp("world_cache"))


@pytest.fixture(scope="session")
def default_artifacts(tmp_path_factory: pytest.TempPathFactory) -> WorldArtifacts:
    """The default world materialized (about 2 s)."""
    return materialize_world(WorldConfig(), tmp_path_factory.mktemp("default_world"))


def read_texts(artifacts: WorldArtifacts, split: str) -> list[str]:
    """The `text` field of every record of a text split."""
    return [r["text"] for r in artifacts.read_split(split)]


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
