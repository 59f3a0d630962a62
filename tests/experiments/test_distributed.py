"""Two-process DDP on CPU (gloo) through `python -m experiments`: same objective as one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.experiments.conftest import CONFIG_DIR, REPO
from tests.experiments.test_cli import subprocess_env
from tests.helpers import read_records, steps_view, write_recording_overlay

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

BASE_EXPERIMENT = CONFIG_DIR / "cpt" / "world_tiny.yaml"
DDP = CONFIG_DIR / "trainer" / "ddp_cpu.yaml"


def fit(out: Path, small_world_args: list[str], extra: list[str], ddp: bool) -> dict[int, dict]:
    """Run fit as a subprocess (DDP re-launches the command per rank); return the recorded steps."""
    out.mkdir(parents=True)
    overlay = write_recording_overlay(out, every_n_train_steps=3)
    args = [sys.executable, "-m", "experiments", "fit", "--config", str(BASE_EXPERIMENT)]
    if ddp:
        args += ["--config", str(DDP)]
    args += ["--config", str(overlay), "--trainer.max_steps=6", "--trainer.limit_val_batches=0"]
    args += ["--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}"]
    args += [
        f"--trainer.logger.init_args.save_dir={out}",
        "--data.init_args.max_length=64",
        *small_world_args,
        *extra,
    ]
    result = subprocess.run(
        args, capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return steps_view(read_records(out / "records.jsonl"))


def test_ddp_two_ranks_matches_one_process_and_resumes_across_world_sizes(
    tmp_path, small_world_args
) -> None:
    # same global batch of 4: one process × 4 rows, or two ranks × 2 rows
    single = fit(tmp_path / "single", small_world_args, [], ddp=False)
    two_ranks = fit(
        tmp_path / "ddp", [*small_world_args, "--data.init_args.micro_batch_size=2"], [], ddp=True
    )
    assert sorted(single) == sorted(two_ranks) == list(range(1, 7))
    assert two_ranks[1]["loss"] == pytest.approx(single[1]["loss"], rel=1e-6)
    for step in single:
        assert two_ranks[step]["samples"] == single[step]["samples"], step
        assert two_ranks[step]["tokens"] == single[step]["tokens"], step
        assert two_ranks[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4), step

    # a single-process checkpoint resumed on two ranks continues with the same samples and losses
    checkpoint = tmp_path / "single" / "ckpt" / "step=3.ckpt"
    resumed = fit(
        tmp_path / "resumed",
        [*small_world_args, "--data.init_args.micro_batch_size=2"],
        [f"--ckpt_path={checkpoint}"],
        ddp=True,
    )
    assert sorted(resumed) == [4, 5, 6]
    for step in resumed:
        assert resumed[step]["samples"] == single[step]["samples"], step
        assert resumed[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4), step
