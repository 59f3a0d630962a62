"""`world_template`, the embedded default: passages from the world's facts, and the run on the world."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from datamodules.synthesis.backends.world_template import PassageWriter
from datamodules.synthesis.guideline import Guideline
from datamodules.synthesis.parse import parse_passage, split_paragraphs
from datamodules.synthesis.problems import (
    SamplerConfig,
    default_tasks,
    draw_groups,
    read_task_pools,
)
from datamodules.synthesis.runner import SynthesisConfig, run_synthesis
from datamodules.world.templates import ATTRIBUTES
from tests.datamodules.world.conftest import small_config

REPO = Path(__file__).resolve().parents[3]


def _config(tmp_path: Path, artifacts, **overrides) -> SynthesisConfig:
    values = {
        "output_dir": str(tmp_path / "out"),
        "world": small_config(),
        "world_cache_dir": str(artifacts.root.parent),
        "sampler": SamplerConfig(num_passages=12, max_uses=3),
        "tokenizer": "world",
    }
    values.update(overrides)
    return SynthesisConfig(**values)


@pytest.fixture(scope="module")
def world_groups(small_world_artifacts):
    pools = read_task_pools(default_tasks(), world_split=small_world_artifacts.split_path)
    return draw_groups(pools, SamplerConfig(num_passages=12, max_uses=3), "k").groups


def test_passages_state_every_question_answer_and_fact(world_groups) -> None:
    writer = PassageWriter(enlightenment=True, heldout_bio_templates=2)
    for group in world_groups:
        text = writer.write(group)
        result = parse_passage(text, group.problems, enlightenment=True)
        assert result.ok, (result.reason, result.detail, text)
        paragraphs = split_paragraphs(text)
        assert len(paragraphs) == len(group.problems) + 1
        for paragraph, problem in zip(paragraphs, group.problems):
            assert paragraph.startswith(f"Question: {problem.question}\nAnswer: {problem.answer}\n")
            for fact in problem.facts:
                assert fact.value in paragraph and fact.entity in paragraph
        closing = paragraphs[-1]
        assert "people of the new domain" in closing and "differ" in closing
        for problem in group.problems:
            for fact in problem.facts:
                assert fact.entity in closing


def test_comparison_and_same_value_reasoning(world_groups) -> None:
    writer = PassageWriter(enlightenment=False)
    seen = set()
    for group in world_groups:
        for paragraph, problem in zip(split_paragraphs(writer.write(group)), group.problems):
            if problem.task == "comparison":
                assert "comes before" in paragraph and problem.answer in paragraph.split("\n")[-1]
                seen.add("comparison")
            if problem.task == "same_value":
                assert paragraph.endswith(f"so the answer is {problem.answer}.")
                seen.add("same_value")
    assert seen == {"comparison", "same_value"}


def test_no_heldout_biography_wording(world_groups) -> None:
    """Held-out biography templates (the world's perplexity documents) never appear."""
    writer = PassageWriter(enlightenment=True, heldout_bio_templates=2)
    for group in world_groups:
        text = writer.write(group)
        for problem in group.problems:
            for fact in problem.facts:
                for template in ATTRIBUTES[fact.attribute].bio_templates[-2:]:
                    sentence = template.format(
                        subj=fact.entity, poss=f"{fact.entity}'s", obj=fact.entity, value=fact.value
                    )
                    assert sentence[1:] not in text


def test_ablation_has_no_enlightenment(world_groups) -> None:
    writer = PassageWriter(enlightenment=False)
    for group in world_groups:
        text = writer.write(group)
        assert len(split_paragraphs(text)) == len(group.problems)
        assert parse_passage(text, group.problems, enlightenment=False).ok
        assert not parse_passage(text, group.problems, enlightenment=True).ok


def test_wording_is_seeded_by_id_not_order(world_groups) -> None:
    writer = PassageWriter(enlightenment=True)
    forward = [writer.write(g) for g in world_groups]
    backward = [writer.write(g) for g in reversed(world_groups)][::-1]
    assert forward == backward
    other = PassageWriter(enlightenment=True, seed=1)
    assert [other.write(g) for g in world_groups] != forward


def test_run_on_the_world_and_rerun_is_a_no_op(tmp_path: Path, small_world_artifacts) -> None:
    config = _config(tmp_path, small_world_artifacts)
    result = run_synthesis(config)
    manifest = result.manifest
    assert result.complete
    assert manifest["counts"]["written"] == manifest["counts"]["planned"] == 12
    assert manifest["counts"]["rejected"] == 0 and manifest["reject_reasons"] == {}
    assert manifest["backend"] == "world_template" and manifest["model"] is None
    assert "no model" in manifest["settings"]["backend"]["note"]
    assert manifest["tokens"]["tokenizer"] == "world" and manifest["tokens"]["total"] > 0
    assert manifest["dedup"] == {
        "question_in_test": 0,
        "test_entity_leakage": 0,
        "duplicate_in_train": 0,
    }
    passages = result.passages()
    assert [p["index"] for p in passages] == list(range(12))
    assert len({p["id"] for p in passages}) == 12
    assert all(p["backend"] == "world_template" and p["enlightenment"] for p in passages)
    assert all(len(p["problems"]) == 3 for p in passages)
    before = {
        name: (tmp_path / "out" / name).read_bytes() for name in ("passages.jsonl", "rejects.jsonl")
    }
    again = run_synthesis(config)
    assert again.manifest["this_run"]["generated"] == 0
    assert again.manifest["this_run"]["skipped_already_done"] == 12
    after = {name: (tmp_path / "out" / name).read_bytes() for name in before}
    assert after == before
    # the same config in another directory: the same ids and texts
    other = run_synthesis(_config(tmp_path / "other", small_world_artifacts))
    assert [p["id"] for p in other.passages()] == [p["id"] for p in passages]
    assert [p["text"] for p in other.passages()] == [p["text"] for p in passages]


def test_ablation_run(tmp_path: Path, small_world_artifacts) -> None:
    config = _config(tmp_path, small_world_artifacts, guideline=Guideline(enlightenment=False))
    result = run_synthesis(config)
    passages = result.passages()
    assert len(passages) == 12 and not any(p["enlightenment"] for p in passages)
    for passage in passages:
        assert len(split_paragraphs(passage["text"])) == 3
    with_e = run_synthesis(_config(tmp_path / "with", small_world_artifacts))
    assert not {p["id"] for p in passages} & {p["id"] for p in with_e.passages()}


def test_world_config_files(tmp_path: Path, small_world_artifacts) -> None:
    """The world configs, run through the command on the small world (via --world)."""
    from datamodules.synthesis.runner import main

    world_yaml = tmp_path / "small_world.yaml"
    world_yaml.write_text(yaml.safe_dump(asdict(small_config())))
    common = [f"--world={world_yaml}", f"--world_cache_dir={small_world_artifacts.root.parent}"]
    result = main(
        [
            "--config",
            str(REPO / "experiments/configs/synthesis/world.yaml"),
            *common,
            f"--output_dir={tmp_path / 'world'}",
        ]
    )
    # the small world has 4 same_value problems: 4 groups of 150 (a shortage, recorded)
    assert result.manifest["counts"]["planned"] == 4
    assert result.manifest["shortage"]["requested"] == 150
    ablation = main(
        [
            "--config",
            str(REPO / "experiments/configs/synthesis/world_no_enlightenment.yaml"),
            *common,
            f"--output_dir={tmp_path / 'ablation'}",
        ]
    )
    assert ablation.manifest["enlightenment"] is False
    assert [p["problems"] for p in ablation.passages()] == [
        p["problems"] for p in result.passages()
    ]
