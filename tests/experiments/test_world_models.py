"""The world base models: the smoke size builds both stages, caches them, and reuses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import world_models
from experiments.include import load_yaml
from experiments.world_models import (
    STAGES,
    _resolved,
    build_world_models,
    stage_config,
    stage_fingerprint,
    world_config,
)


@pytest.fixture(scope="module")
def smoke_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cache = tmp_path_factory.mktemp("world_models")
    return cache, build_world_models("smoke", seed=0, cache_dir=cache)


@pytest.mark.slow
def test_smoke_builds_both_stages_with_manifests(smoke_models: tuple[Path, dict]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _cache, built = smoke_models
    assert set(built) == set(STAGES)
    for stage, model in built.items():
        manifest = json.loads((model.path.parent / f"{stage}.json").read_text())
        assert manifest["fingerprint"] == model.manifest["fingerprint"]
        assert manifest["wall_s"] > 0  # the build time is recorded (docs/world.md), not asserted
        AutoModelForCausalLM.from_pretrained(model.path)
        assert AutoTokenizer.from_pretrained(model.path).chat_template
    assert "knowledge/qa_em/general" in built["pretrained"].metrics
    assert any(k.startswith("knowledge/qa_em/skill_") for k in built["chat"].metrics)
    assert built["chat"].manifest["parent"] == str(built["pretrained"].path)
    latest = _cache / "smoke-seed0"
    assert latest.is_symlink() and latest.resolve() == built["chat"].path.parent.resolve()


@pytest.mark.slow
def test_a_complete_stage_is_reused_without_training(
    smoke_models: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, built = smoke_models

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached stage was retrained")

    monkeypatch.setattr(world_models, "_train_stage", no_training)
    again = build_world_models("smoke", seed=0, cache_dir=cache, stages=["chat"])
    assert {s: m.path for s, m in again.items()} == {s: m.path for s, m in built.items()}


def test_fingerprint_follows_seed_parent_and_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    base = stage_fingerprint("smoke", "pretrained", 0, None)
    assert stage_fingerprint("smoke", "pretrained", 0, None) == base
    assert stage_fingerprint("smoke", "pretrained", 1, None) != base
    assert stage_fingerprint("smoke", "chat", 0, base) != stage_fingerprint("smoke", "chat", 0, "x")
    assert stage_fingerprint("default", "pretrained", 0, None) != base


def test_pretrained_data_never_has_chat_markers(tmp_path: Path) -> None:
    """`pretrained` reads plain text only: no split it trains on contains a chat marker."""
    from datamodules.world import ASSISTANT, USER, WorldConfig, build_world, render_split

    for size in ("smoke", "default"):
        path = stage_config(size, "pretrained")
        config = _resolved(load_yaml(path.read_text(), base_dir=path.parent), path.parent)
        init = config["data"]["init_args"]
        world = build_world(WorldConfig(**load_yaml(world_config(size).read_text())))
        for source in init["train_sources"]:
            split = source["path"].removeprefix("world:")
            for record in render_split(world, split):
                assert USER not in record["text"] and ASSISTANT not in record["text"], split


def test_unknown_stage_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        build_world_models("smoke", cache_dir=tmp_path, stages=["sft"])


def test_command_rejects_a_negative_seed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        world_models.main(["--size", "smoke", "--seed", "-1"])
    assert exit_info.value.code == 2
