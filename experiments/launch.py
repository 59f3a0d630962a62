"""Launching the table commands' runs: `python -m experiments fit` command lines and logged subprocesses.

The table commands (`experiments.disc_table`, `experiments.mix_cpt_table`) run every training as a
subprocess of its own, with a fixed number of threads and its output in one log file, so that runs
can go `--jobs` at a time and a failed run names the file to read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fit_command(
    configs: Sequence[Path | str],
    overrides: Sequence[str],
    save_dir: Path,
    name: str,
) -> list[str]:
    """`python -m experiments fit --config …` logging (CSV) into `<save_dir>/<name>/version_0`."""
    command = [sys.executable, "-m", "experiments", "fit"]
    for config in configs:
        command += ["--config", str(config)]
    return [
        *command,
        f"--trainer.default_root_dir={save_dir / name}",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.logger.init_args.version=0",
        *overrides,
    ]


def is_complete(results: Path) -> bool:
    """True when a `knowledge_eval.jsonl` ends with its run's `fit_end` evaluation."""
    try:
        lines = results.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return bool(lines) and json.loads(lines[-1]).get("stage") == "fit_end"


def run_logged(command: Sequence[str], log_file: Path, threads: int) -> tuple[int, float]:
    """Run `command` from the repository root with `threads` torch threads, stdout and stderr to
    `log_file`; return (exit code, wall seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_file, "w", encoding="utf-8") as output:
        code = subprocess.call(list(command), cwd=REPO, env=env, stdout=output, stderr=output)
    return code, time.perf_counter() - started


__all__ = ["REPO", "fit_command", "is_complete", "run_logged"]
