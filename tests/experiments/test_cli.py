"""`python -m experiments`: every config runs, help and print_config work, user errors exit cleanly."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.cli import CONFIG_FILENAME, build_cli, main
from tests.experiments.conftest import CONFIG_DIR, REPO

FRAGMENT_DIRS = ("model", "data", "callbacks", "trainer", "world")  # composed by experiments
NON_TRAINER_DIRS = (
    "format_alignment",
    "selection",
    "synthesis",
)  # configs of other commands (tested with them)
EXPERIMENT_CONFIGS = sorted(
    p
    for p in CONFIG_DIR.rglob("*.yaml")
    if p.relative_to(CONFIG_DIR).parts[0] not in (*FRAGMENT_DIRS, *NON_TRAINER_DIRS)
    # the real-model experiments run in tests/real_model (they load a 135M model, not a world)
    and "smollm2" not in p.read_text()
)
TRAINER_CONFIGS = sorted((CONFIG_DIR / "trainer").glob("*.yaml"))
GPU_TRAINER_CONFIGS = {"gpu.yaml", "fsdp.yaml"}
BASE_EXPERIMENT = CONFIG_DIR / "cpt" / "world_tiny.yaml"


def run_args(tmp_path: Path) -> list[str]:
    """Send every output of a run under `tmp_path`."""
    return [
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]


SMALL_WORLD_OVERRIDES = {
    # the small world's instruction chats pack into 3 rows, fewer than one step of 4
    "world_traditional_sft.yaml": ["--data.init_args.micro_batch_size=2"],
    # the switch at step 90 is a whole number of epochs of 10 steps, also with rows of 4
    "world_two_stage.yaml": ["--data.init_args.rows_per_epoch=40"],
}
"""Extra overrides of a config on the small world of these tests."""


def trait_source_args(config: Path, tmp_path: Path) -> list[str]:
    """A TRAIT config reads the outputs of the selection and synthesis commands: small stand-in
    files here (the commands and their outputs are tested in tests/datamodules/selection and
    tests/datamodules/synthesis, the whole chain in test_trait_table.py)."""
    if config.parent.name != "trait":
        return []
    selected = tmp_path / "selected.jsonl"
    passages = tmp_path / "passages.jsonl"
    selected.write_text(
        json.dumps({"id": "web-1", "text": "Contact list. A B | Born: May 1"}) + "\n"
    )
    passages.write_text(
        json.dumps({"id": "p1", "text": "Question: Q?\nAnswer: A\nBecause."}) + "\n"
    )
    sources = [
        {"path": "world:domain_documents", "name": "domain"},
        {"path": str(selected), "name": "selected"},
        {"path": str(passages), "name": "synthetic"},
        {"path": "world:general_documents", "name": "general"},
    ]
    return ["--data.init_args.train_sources=" + json.dumps(sources)]


def needs_base_model(config: Path) -> bool:
    return "model_name_or_path" in config.read_text()


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_experiment_config_runs_fast_dev_run(
    config, tmp_path, small_world_args, tiny_base_model, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # paths a config names relative to the repo root land here
    args = [
        "fit",
        "--config",
        str(config),
        "--trainer.fast_dev_run=true",
        *run_args(tmp_path),
        *small_world_args,
        *SMALL_WORLD_OVERRIDES.get(config.name, []),
        *trait_source_args(config, tmp_path),
    ]
    if needs_base_model(config):
        args.append(f"--model.init_args.model_name_or_path={tiny_base_model}")
    cli = build_cli(args)
    assert cli.trainer.global_step == 1
    assert cli.trainer.state.finished


@pytest.mark.parametrize("config", TRAINER_CONFIGS, ids=lambda p: p.name)
def test_every_trainer_config_composes_with_an_experiment(
    config, tmp_path, small_world_args
) -> None:
    if config.name in GPU_TRAINER_CONFIGS:
        pytest.importorskip("torch.cuda")
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"{config.name} needs a CUDA device")
    if config.name == "ddp_cpu.yaml":
        pytest.skip(
            "run as a subprocess in tests/experiments/test_distributed.py (needs a __main__ launcher)"
        )
    args = ["fit", "--config", str(BASE_EXPERIMENT), "--config", str(config)]
    args += ["--trainer.fast_dev_run=true", *run_args(tmp_path), *small_world_args]
    cli = build_cli(args)
    assert cli.trainer.global_step == 1


def test_resolved_config_is_saved_beside_checkpoints(tmp_path, small_world_args) -> None:
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {every_n_train_steps: 1}\n"
    )
    args = ["fit", "--config", str(BASE_EXPERIMENT), "--config", str(callbacks)]
    args += [
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
        *run_args(tmp_path),
        *small_world_args,
    ]
    cli = build_cli(args)
    log_dir = Path(cli.trainer.log_dir)
    saved = yaml.safe_load((log_dir / CONFIG_FILENAME).read_text())
    assert saved["trainer"]["max_steps"] == 2
    assert saved["model"]["class_path"] == "lightning_modules.CausalLMModule"
    assert list((log_dir / "checkpoints").glob("*.ckpt")), "no checkpoint beside the saved config"
    assert not (log_dir / "config.yaml").exists()


def test_print_config_shows_resolved_values(capfd) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_cli(
            [
                "fit",
                "--config",
                str(BASE_EXPERIMENT),
                "--model.init_args.init_seed=7",
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capfd.readouterr().out)
    assert printed["model"]["init_args"]["init_seed"] == 7
    assert printed["model"]["init_args"]["model_config"]["hidden_size"] == 64
    assert printed["data"]["init_args"]["world"]["num_domain_entities"] == 50
    # linked arguments are filled from their sources, not configurable
    assert "tokenizer" not in printed["model"]["init_args"]


def test_help_runs_as_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "--help"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "fit" in result.stdout and "validate" in result.stdout and "test" in result.stdout


def test_model_help_documents_every_argument(capsys) -> None:
    with pytest.raises(SystemExit):
        build_cli(["fit", "--model.help", "lightning_modules.CausalLMModule"])
    text = capsys.readouterr().out
    for phrase in (
        "model_name_or_path",
        "Hub id",
        "gradient_checkpointing",
        "token",
        "lr_scheduler",
    ):
        assert phrase in text, phrase


def test_data_help_includes_inherited_arguments(capsys) -> None:
    with pytest.raises(SystemExit):
        build_cli(["fit", "--data.help", "datamodules.world.WorldDataModule"])
    text = capsys.readouterr().out
    for phrase in ("world.num_domain_entities", "max_length", "micro_batch_size", "train_sources"):
        assert phrase in text, phrase


def exit_code_and_log(args: list[str], caplog) -> tuple[int, str]:
    caplog.set_level(logging.ERROR, logger="experiments")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, "\n".join(
        r.getMessage() for r in caplog.records if r.name == "experiments"
    )


def test_unknown_config_key_names_the_key(tmp_path, caplog) -> None:
    code, message = exit_code_and_log(
        ["fit", "--config", str(BASE_EXPERIMENT), "--data.init_args.bogus_key=1"], caplog
    )
    assert code == 2 and "bogus_key" in message


def test_unknown_key_in_a_yaml_file_names_the_key(tmp_path, caplog) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    hidden_sise: 3\n")
    code, message = exit_code_and_log(
        ["fit", "--config", str(BASE_EXPERIMENT), "--config", str(bad)], caplog
    )
    assert code == 2 and "hidden_sise" in message


def test_bad_mixture_ratios_name_the_config_key(tmp_path, caplog, small_world_args) -> None:
    sources = json.dumps(
        [
            {"path": "world:domain_documents", "ratio": 0.7},
            {"path": "world:general_documents", "ratio": 0.7},
        ]
    )
    args = [
        "fit",
        "--config",
        str(BASE_EXPERIMENT),
        f"--data.init_args.train_sources={sources}",
        *run_args(tmp_path),
        *small_world_args,
    ]
    code, message = exit_code_and_log(args, caplog)
    assert code == 2 and "train_sources" in message and "sum" in message


def test_sequence_length_above_model_maximum_exits_with_key(
    tmp_path, caplog, small_world_args
) -> None:
    args = [
        "fit",
        "--config",
        str(BASE_EXPERIMENT),
        "--data.init_args.max_length=1024",
        "--trainer.fast_dev_run=true",
    ]
    code, message = exit_code_and_log([*args, *run_args(tmp_path), *small_world_args], caplog)
    assert (
        code == 2
        and "data.init_args.max_length" in message
        and "max_position_embeddings=512" in message
    )


def test_malformed_jsonl_names_file_and_line(tmp_path, caplog, small_world_args) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n')
    sources = json.dumps([{"path": str(data)}])
    args = [
        "fit",
        "--config",
        str(BASE_EXPERIMENT),
        f"--data.init_args.train_sources={sources}",
        "--trainer.fast_dev_run=true",
    ]
    code, message = exit_code_and_log([*args, *run_args(tmp_path), *small_world_args], caplog)
    assert code == 2 and f"{data}:3" in message


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_report_perplexity_per_set(
    subcommand, tmp_path, small_world_args
) -> None:
    args = [
        subcommand,
        "--config",
        str(BASE_EXPERIMENT),
        "--trainer.callbacks=[]",
        *run_args(tmp_path),
        *small_world_args,
    ]
    cli = build_cli(args)
    prefix = "val" if subcommand == "validate" else "test"
    metrics = cli.trainer.callback_metrics
    for name in ("domain", "general"):
        loss = float(metrics[f"{prefix}/{name}/loss"])
        assert 5.0 < loss < 9.0  # an untrained model: close to log(vocab size)
        assert float(metrics[f"{prefix}/{name}/ppl"]) == pytest.approx(math.exp(loss), rel=1e-5)
