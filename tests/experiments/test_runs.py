"""Where runs write: config beside checkpoints (CSV and W&B), resume in the same run, the final
step checkpointed, crash-safe checkpoint files, and a first run free of known noise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from callbacks.checkpoint import AtomicCheckpointIO
from experiments.cli import CONFIG_FILENAME, build_cli
from tests.experiments.conftest import CONFIG_DIR, REPO

EXPERIMENT = CONFIG_DIR / "cpt" / "world_tiny.yaml"


def short_run(tmp_path: Path, small_world_args: list[str], *extra: str) -> list[str]:
    """A 3-step fit of the tiny CPT experiment with checkpoints every 2 steps, under `tmp_path`."""
    overlay = tmp_path / "ckpt_every_2.yaml"
    overlay.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: callbacks.checkpoint.StepCheckpoint\n"
        "      init_args: {save_last: true, every_n_train_steps: 2, save_top_k: -1}\n"
    )
    return [
        "fit",
        "--config",
        str(EXPERIMENT),
        "--config",
        str(overlay),
        "--trainer.max_steps=3",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *small_world_args,
        *extra,
    ]


def test_final_step_is_checkpointed_and_resume_continues_in_the_same_run(
    tmp_path: Path, small_world_args: list[str]
) -> None:
    first = build_cli(short_run(tmp_path, small_world_args))
    run = Path(first.trainer.log_dir)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [n.split("-")[-1] for n in names] == ["step=2.ckpt", "step=3.ckpt", "last.ckpt"], names
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert (run / CONFIG_FILENAME).is_file()

    resumed = build_cli(
        short_run(
            tmp_path,
            small_world_args,
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            "--trainer.max_steps=5",
        )
    )
    assert Path(resumed.trainer.log_dir) == run
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]  # no version_1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5
    saved = yaml.safe_load((run / CONFIG_FILENAME).read_text())
    assert saved["trainer"]["max_steps"] == 5 and saved["ckpt_path"].endswith("last.ckpt")


def test_wandb_runs_keep_their_own_config_beside_their_checkpoints(
    tmp_path: Path, small_world_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = str(CONFIG_DIR / "trainer" / "wandb.yaml")
    runs = []
    for seed in (1, 2):
        args = short_run(tmp_path, small_world_args, f"--seed_everything={seed}")
        cli = build_cli([*args[:1], "--config", wandb, *args[1:]])
        runs.append(Path(cli.trainer.checkpoint_callback.dirpath).parent)
        cli.trainer.logger.experiment.finish()
    assert runs[0] != runs[1]
    for run, seed in zip(runs, (1, 2)):
        assert yaml.safe_load((run / CONFIG_FILENAME).read_text())["seed_everything"] == seed
        assert list((run / "checkpoints").glob("*.ckpt"))
    assert not list(tmp_path.glob(CONFIG_FILENAME))
    assert not list((tmp_path / "adaptlm").glob(CONFIG_FILENAME))


def test_cli_installs_atomic_checkpoint_io(tmp_path: Path, small_world_args: list[str]) -> None:
    cli = build_cli(short_run(tmp_path, small_world_args)[1:], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_checkpoint_write_that_fails_midway_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(1000)}, target)
    good = target.read_bytes()

    def write_half_then_fail(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(good[: len(good) // 2])
        raise OSError("simulated crash: disk full")

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="simulated crash"):
        io.save_checkpoint({"step": 2, "weights": torch.arange(1000)}, target)
    monkeypatch.undo()
    assert target.read_bytes() == good
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temp file left
    assert io.load_checkpoint(target)["step"] == 1


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from common.atomic import atomic_file

    with atomic_file(Path(sys.argv[1]) / "last.ckpt") as tmp:
        tmp.write_bytes(b"x" * 100_000)  # half-written checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_orphan_of_a_killed_writer_is_removed_on_the_next_start(
    tmp_path: Path, small_world_args: list[str]
) -> None:
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(checkpoints)], env=env, cwd=REPO, timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    orphans = [p.name for p in checkpoints.iterdir()]
    assert len(orphans) == 1 and orphans[0].startswith(".tmp-last.ckpt-"), orphans

    overlay = tmp_path / "fixed_dir.yaml"
    overlay.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: callbacks.checkpoint.StepCheckpoint\n"
        f"      init_args: {{dirpath: {checkpoints}, save_last: true}}\n"
    )
    args = short_run(tmp_path, small_world_args, "--config", str(overlay), "--trainer.max_steps=1")
    build_cli(args)
    names = sorted(p.name for p in checkpoints.iterdir())
    assert len(names) == 2 and names[0].endswith("step=1.ckpt") and names[1] == "last.ckpt", names


NOISE = (
    "Epoch ",
    "/-2",
    "smaller than the logging interval",
    "litlogger",
    "litmodels",
    "kernels-community",
    "LeafSpec",
    "Writing model shards",
    "Traceback",
)


@pytest.mark.slow
def test_first_run_through_the_cli_prints_no_known_noise(tmp_path: Path, cli_cache: Path) -> None:
    """`python -m experiments fit` on the tiny CPT experiment, as a new user runs it (subprocess:
    warnings shown once per process are really shown)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PYTHONWARNINGS": "default",
    }
    command = [
        sys.executable,
        "-m",
        "experiments",
        "fit",
        "--config",
        str(EXPERIMENT),
        "--trainer.max_steps=12",
        "--trainer.val_check_interval=6",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.init_args.world_cache_dir={cli_cache / 'worlds'}",
        f"--data.init_args.cache_dir={cli_cache / 'stores'}",
        "--data.init_args.world.num_general_entities=12",
        "--data.init_args.world.num_domain_entities=12",
    ]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    for phrase in NOISE:
        assert phrase not in output, f"{phrase!r} in the output:\n{output[-3000:]}"
    assert "12/12" in output  # the bar counts optimizer steps against max_steps
