"""The command line: every shipped config parses and validates; user errors are one line, exit 2."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from datamodules.synthesis.runner import main, parse_config

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted((REPO / "experiments/configs/synthesis").glob("*.yaml"))


def test_the_four_configs_exist() -> None:
    assert {p.stem for p in CONFIGS} >= {"world", "world_no_enlightenment", "openai", "smollm2"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_validates(path: Path) -> None:
    config, force = parse_config(["--config", str(path)])
    config.validate()
    assert not force
    default_world = yaml.safe_load((REPO / "experiments/configs/world/default.yaml").read_text())
    assert config.world.num_general_entities == default_world["num_general_entities"]
    assert [t.task for t in config.tasks] == ["attribute_qa", "comparison", "same_value"]
    assert config.sampler.problems_per_passage == 3


def test_config_contents() -> None:
    world, _ = parse_config(["--config", str(REPO / "experiments/configs/synthesis/world.yaml")])
    assert world.backend.kind == "world_template" and world.guideline.enlightenment
    assert world.tokenizer == "world"
    ablation, _ = parse_config(
        ["--config", str(REPO / "experiments/configs/synthesis/world_no_enlightenment.yaml")]
    )
    assert ablation.backend.kind == "world_template" and not ablation.guideline.enlightenment
    assert ablation.sampler == world.sampler  # the same groups
    openai, _ = parse_config(["--config", str(REPO / "experiments/configs/synthesis/openai.yaml")])
    assert openai.backend.kind == "openai"
    assert openai.backend.openai.api_key_env == "OPENAI_API_KEY"
    text = (REPO / "experiments/configs/synthesis/openai.yaml").read_text()
    assert "sk-" not in text and "api_key:" not in text
    smol, _ = parse_config(["--config", str(REPO / "experiments/configs/synthesis/smollm2.yaml")])
    model = yaml.safe_load(
        (REPO / "experiments/configs/model/smollm2_135m_instruct.yaml").read_text()
    )
    assert smol.backend.transformers.model_name_or_path == model["init_args"]["model_name_or_path"]
    assert smol.backend.transformers.gguf_file == model["init_args"]["gguf_file"]


def test_overrides() -> None:
    config, force = parse_config(
        [
            "--config",
            str(REPO / "experiments/configs/synthesis/world.yaml"),
            "--output_dir=/tmp/x",
            "--world.seed=1",
            "--sampler.num_passages=7",
            "--force",
        ]
    )
    assert (config.output_dir, config.world.seed, config.sampler.num_passages, force) == (
        "/tmp/x",
        1,
        7,
        True,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sampler.num_passages=0"], "sampler.num_passages"),
        (["--sampler.bogus=1"], "bogus"),
        (["--backend.kind=gpt"], "backend.kind"),
        (["--max_attempts=0"], "max_attempts"),
        (["--guideline.user={problems}"], "guideline.user"),
    ],
)
def test_user_errors_exit_2(argv, message, caplog, tmp_path) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--config",
                str(REPO / "experiments/configs/synthesis/world.yaml"),
                f"--output_dir={tmp_path / 'out'}",
                *argv,
            ]
        )
    assert exit_info.value.code == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()


def test_missing_api_key_exits_2(caplog, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--config",
                str(REPO / "experiments/configs/synthesis/openai.yaml"),
                f"--output_dir={tmp_path / 'out'}",
            ]
        )
    assert exit_info.value.code == 2
    assert "OPENAI_API_KEY is not set" in caplog.records[-1].getMessage()
