"""Fixtures of the selection tests: the smoke world (built once per session), a config on it, and
small corpora written in `tmp_path`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datamodules.selection.pipeline import SelectionConfig
from datamodules.world.config import WorldConfig
from experiments.include import load_yaml

REPO = Path(__file__).resolve().parents[3]
SMOKE_YAML = REPO / "experiments" / "configs" / "world" / "smoke.yaml"
SMOKE_BUDGET = 1200
"""About the tokens of the smoke world's 10 in-domain corpus pages (1158, world tokenizer)."""

DOMAIN_TEXTS = [
    "the quantum lattice of the reactor core absorbs neutrons",
    "reactor core neutrons flux lattice control rods",
    "control rods lower the neutron flux of the reactor",
    "the reactor lattice is cooled by heavy water and neutrons",
    "neutron flux in the reactor core is measured hourly",
    "heavy water moderates neutrons in the reactor lattice",
]
GENERAL_TEXTS = [
    "bake the bread for forty minutes with butter and salt",
    "the football match ended in a draw after extra time",
    "rain is expected on monday with a cold wind",
    "the recipe needs sugar flour eggs and milk",
    "the team scored twice in the second half of the match",
    "sunny weather all week with a light breeze",
]


def smoke_world() -> WorldConfig:
    """The smoke world's config (experiments/configs/world/smoke.yaml)."""
    return WorldConfig(**load_yaml(SMOKE_YAML.read_text(encoding="utf-8")))


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world cache holding the smoke world (and, once a test needs it, its seed-1000 draw)."""
    from datamodules.world.materialize import materialize_world

    cache = tmp_path_factory.mktemp("worlds")
    materialize_world(smoke_world(), cache)
    return cache


@pytest.fixture
def smoke_config(world_cache: Path, tmp_path: Path) -> Callable[..., SelectionConfig]:
    """`smoke_config(method, **changes)`: a `SelectionConfig` on the smoke world, writing under
    `tmp_path/<method>`, at the smoke budget."""

    def make(method: str = "fasttext", **changes: Any) -> SelectionConfig:
        values: dict[str, Any] = {
            "method": method,
            "output_dir": str(tmp_path / method),
            "world": smoke_world(),
            "world_cache_dir": str(world_cache),
            "budget_tokens": SMOKE_BUDGET,
        }
        values.update(changes)
        return SelectionConfig(**values)

    return make


def smoke_argv(world_cache: Path, output_dir: Path, method: str, *extra: str) -> list[str]:
    """Command-line options of a `run` on the smoke world from the repo's world_<method>.yaml."""
    return [
        "--config",
        str(REPO / "experiments" / "configs" / "selection" / f"world_{method}.yaml"),
        "--world",
        str(SMOKE_YAML),
        "--world_cache_dir",
        str(world_cache),
        "--output_dir",
        str(output_dir),
        "--budget_tokens",
        str(SMOKE_BUDGET),
        *extra,
    ]
