"""The DiSC table command: its runs' command lines, evaluation cadence, resume rule and table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from experiments import disc_table
from experiments.disc_table import (
    CONFIG_DIR,
    METHODS,
    Run,
    command,
    evaluation_overlay,
    is_complete,
    markdown,
    selection_row,
)


def test_every_method_config_exists_and_sets_max_steps() -> None:
    for method in METHODS.values():
        config = CONFIG_DIR / method.config
        assert disc_table.config_max_steps(config) > 0, method.name
        assert method.lrs and all(lr > 0 for lr in method.lrs)


def test_overlay_adds_step_evaluations_to_the_configs_callbacks(tmp_path: Path) -> None:
    config = CONFIG_DIR / METHODS["disc"].config
    overlay = yaml.safe_load(evaluation_overlay(config, 5, tmp_path).read_text())
    callbacks = overlay["trainer"]["callbacks"]
    knowledge = [c for c in callbacks if c["class_path"].endswith("KnowledgeEvalCallback")]
    assert len(knowledge) == 1
    every = knowledge[0]["init_args"]["every_n_train_steps"]
    assert every == disc_table.config_max_steps(config) // 5
    fragment = yaml.safe_load((CONFIG_DIR / "callbacks" / "world_cpt.yaml").read_text())
    assert [c["class_path"] for c in callbacks] == [c["class_path"] for c in fragment]


def test_command_sets_seed_model_lr_and_log_dir(tmp_path: Path) -> None:
    run = Run(METHODS["ft"], 2, 3e-4, tmp_path / "chat", tmp_path / "seed2")
    args = command(run, tmp_path / "overlay.yaml", ["--trainer.max_steps=4"])
    assert args[1:4] == ["-m", "experiments", "fit"]
    assert "--seed_everything=2" in args and "--data.init_args.world.seed=2" in args
    assert f"--model.init_args.model_name_or_path={tmp_path / 'chat'}" in args
    assert "--model.init_args.optimizer.init_args.lr=0.0003" in args
    assert args[-1] == "--trainer.max_steps=4"
    assert run.results == tmp_path / "seed2" / "ft-lr0.0003" / "version_0" / "knowledge_eval.jsonl"


def write_results(run: Run, rows: list[tuple[str, int, dict]]) -> None:
    run.directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"stage": s, "step": n, "metrics": m}) for s, n, m in rows]
    run.results.write_text("\n".join(lines) + "\n")


BASE = {
    "knowledge/qa_em/domain": 0.05,
    "knowledge/qa_em/general": 0.8,
    "knowledge/qa_em/skill_addition": 0.7,
}


def test_complete_runs_only_and_the_table(tmp_path: Path) -> None:
    runs = [Run(METHODS["ft"], 0, lr, tmp_path, tmp_path / "seed0") for lr in (3e-4, 1e-3)]
    assert not is_complete(runs[0].results)
    learned = dict(BASE, **{"knowledge/qa_em/domain": 0.25, "knowledge/qa_em/general": 0.78})
    broke = dict(BASE, **{"knowledge/qa_em/domain": 0.5, "knowledge/qa_em/general": 0.5})
    write_results(runs[0], [("fit_start", 0, BASE), ("train_step", 8, learned)])
    assert not is_complete(runs[0].results)  # no fit_end row: interrupted
    write_results(runs[0], [("fit_start", 0, BASE), ("fit_end", 8, learned)])
    write_results(runs[1], [("fit_start", 0, BASE), ("fit_end", 8, broke)])
    assert is_complete(runs[0].results)
    row = selection_row("ft", 0, runs, threshold=0.05)
    assert row["selected_lr"] == 3e-4 and row["selected_step"] == 8 and not row["is_base"]
    assert row["metrics"]["knowledge/qa_em/domain"] == 0.25
    table = markdown([row], 0.05)
    assert "| base | 5.0 (5.0) | 80.0 (80.0) |" in table
    assert "| FT | 25.0 (25.0) | 78.0 (78.0) |" in table
    assert "0.0003 @ 8" in table and "| 0.0003, 0.001 |" in table


def test_bad_lr_overrides_exit_with_a_message() -> None:
    assert disc_table.parse_lr_overrides(["ft=1e-4,2e-4"]) == {"ft": (1e-4, 2e-4)}
    with pytest.raises(SystemExit, match="METHOD=lr"):
        disc_table.parse_lr_overrides(["nope=1e-4"])
    with pytest.raises(SystemExit, match="numbers"):
        disc_table.parse_lr_overrides(["ft=fast"])
