"""User errors through `experiments.cli.main`: exactly one line, exit status 2, nothing left behind."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from experiments.cli import CONFIG_FILENAME, main
from tests.experiments.conftest import CONFIG_DIR

EXPERIMENT = CONFIG_DIR / "cpt" / "world_tiny.yaml"


def run_main(args: list[str], caplog, capsys) -> tuple[int, list[str]]:
    """Exit status and every line logged at ERROR or printed to stderr."""
    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [line for message in lines for line in message.splitlines()]
    lines += [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exit_info.value.code, lines


def outputs(tmp_path: Path) -> list[str]:
    return [
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        (
            "--data.init_args.micro_batch_sise=3",
            "data.init_args.micro_batch_sise",
            "micro_batch_size",
        ),
        (
            "--model.init_args.optimizer.init_args.lrr=1",
            "model.init_args.optimizer.init_args.lrr",
            "'lr'",
        ),
        ("--trainer.max_stepz=3", "trainer.max_stepz", "max_steps"),
    ],
)
def test_unknown_key_is_one_line_with_the_closest_options(
    override: str, key: str, suggestion: str, caplog, capsys
) -> None:
    code, lines = run_main(["fit", "--config", str(EXPERIMENT), override], caplog, capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert f"config key '{key}'" in lines[0] and "did you mean" in lines[0]
    assert suggestion in lines[0]


def test_unknown_key_in_a_yaml_file_is_one_line(tmp_path: Path, caplog, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    gradient_checkpoint: true\n")
    code, lines = run_main(
        ["fit", "--config", str(EXPERIMENT), "--config", str(bad)], caplog, capsys
    )
    assert code == 2 and len(lines) == 1, lines
    assert "config key 'model.init_args.gradient_checkpoint'" in lines[0]
    assert "gradient_checkpointing" in lines[0]


def test_missing_ckpt_path_is_one_line_before_training(tmp_path: Path, caplog, capsys) -> None:
    missing = tmp_path / "nope" / "last.ckpt"
    args = ["fit", "--config", str(EXPERIMENT), f"--ckpt_path={missing}", *outputs(tmp_path)]
    code, lines = run_main(args, caplog, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "config key 'ckpt_path'" in lines[0] and str(missing) in lines[0]
    assert not any("student:" in r.getMessage() for r in caplog.records)  # no model was built
    assert list(tmp_path.iterdir()) == []


def _empty(path: Path) -> Path:
    path.mkdir()
    return path


def _config_only(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    return path


@pytest.mark.parametrize(
    "make", [lambda p: p, _empty, _config_only], ids=["missing", "empty", "no-weights"]
)
def test_bad_model_name_or_path_is_one_line_and_leaves_no_config(
    make, tmp_path: Path, caplog, capsys, small_world_args
) -> None:
    model_dir = make(tmp_path / "base_model")
    args = [
        "fit",
        "--config",
        str(CONFIG_DIR / "cpt" / "world_base.yaml"),
        f"--model.init_args.model_name_or_path={model_dir}",
        *outputs(tmp_path / "runs"),
        *small_world_args,
    ]
    code, lines = run_main(args, caplog, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "model_name_or_path" in lines[0]
    assert not list(tmp_path.rglob(CONFIG_FILENAME))


def test_error_while_building_the_model_leaves_no_config(
    tmp_path: Path, caplog, capsys, small_world_args, monkeypatch
) -> None:
    from common import ConfigError
    from lightning_modules import CausalLMModule

    def fail(self) -> None:
        raise ConfigError("model.init_args.model_config", "simulated failure in configure_model")

    monkeypatch.setattr(CausalLMModule, "configure_model", fail)
    args = ["fit", "--config", str(EXPERIMENT), *outputs(tmp_path), *small_world_args]
    code, lines = run_main(args, caplog, capsys)
    assert code == 2 and len(lines) == 1 and "simulated failure" in lines[0], lines
    assert not list(tmp_path.rglob(CONFIG_FILENAME))
    assert not list(tmp_path.rglob(".tmp-*"))
