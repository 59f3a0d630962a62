"""Launching the table commands' runs: `python -m experiments fit` command lines and logged subprocesses.

The table commands (`experiments.disc_table`, `experiments.mix_cpt_table`, `experiments.trait_table`)
run every training as a subprocess of its own, with a fixed number of threads and its output in one
log file, so that runs can go `--jobs` at a time and a failed run names the file to read. A
`Pipeline` is a chain of `Stage`s (fit runs and data commands) where a stage is reused when complete
and rerun when a stage it reads produced a new output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.selection import candidates_of_run

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("experiments.launch")


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


@dataclass(frozen=True)
class Stage:
    """One subprocess of a pipeline: a `fit` run (its results in `knowledge_eval.jsonl`, its model
    in `export/` unless `needs_export` is false) or a data command — a selection, a synthesis —
    (kind `select`: its output directory's `manifest.json`, whose `fingerprint` tells whether a
    rerun changed the output)."""

    kind: str  # "fit" or "select"
    name: str
    command: tuple[str, ...]
    directory: Path  # the run directory (fit) or the command's output directory
    after: tuple[str, ...] = ()  # the names of the stages whose outputs it reads
    needs_export: bool = True  # a fit stage is complete only with its export/

    @property
    def results(self) -> Path:
        return self.directory / "knowledge_eval.jsonl"

    @property
    def export(self) -> Path:
        return self.directory / "export"

    @property
    def seed_dir(self) -> Path:
        """The directory of the seed's stages."""
        return self.directory.parents[1] if self.kind == "fit" else self.directory.parent

    @property
    def log_file(self) -> Path:
        """The subprocess's output."""
        return self.seed_dir / f"{self.name}.log"

    @property
    def wall_file(self) -> Path:
        """Where a finished stage's wall time is kept."""
        return self.seed_dir / f"{self.name}.wall_s"

    def is_complete(self) -> bool:
        """A fit stage with its final evaluation (and export); a command whose manifest exists."""
        if self.kind == "select":
            return (self.directory / "manifest.json").is_file()
        exported = not self.needs_export or (self.export / "config.json").is_file()
        return is_complete(self.results) and exported


@dataclass
class Pipeline:
    """The stages of one seed's variants that share a stage-1 run, in the order they run."""

    seed: int
    stages: list[Stage] = field(default_factory=list)


def _selection_fingerprint(stage: Stage) -> str | None:
    try:
        manifest = json.loads((stage.directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("fingerprint")


def execute(stage: Stage, threads: int, stale: bool = False) -> tuple[float, bool]:
    """Run one stage; return (its wall time, whether it produced a new output).

    A complete fit stage is reused unless `stale` (a stage it reads from produced a new output).
    A selection always runs: the command itself skips when its output's fingerprint (model,
    candidates, settings) matches, and recomputes when any of them changed."""
    if stage.kind == "fit" and stage.is_complete() and not stale:
        log.info("reusing %s (complete)", stage.directory)
        try:
            return float(stage.wall_file.read_text(encoding="utf-8")), False
        except (OSError, ValueError):
            return 0.0, False
    before = _selection_fingerprint(stage) if stage.kind == "select" else None
    if stage.kind == "fit" and stage.directory.exists():
        shutil.rmtree(stage.directory)  # stale or interrupted: train it again
    log.info("running %s", stage.directory)
    code, wall = run_logged(stage.command, stage.log_file, threads)
    if code != 0 or not stage.is_complete():
        raise RuntimeError(f"{stage.directory} failed with exit code {code}; see {stage.log_file}")
    changed = stage.kind == "fit" or _selection_fingerprint(stage) != before
    if changed:
        stage.wall_file.write_text(f"{wall:.1f}\n", encoding="utf-8")
    log.info("finished %s in %.0f s%s", stage.directory, wall, "" if changed else " (reused)")
    return wall, changed


def run_pipeline(pipeline: Pipeline, threads: int) -> float:
    """Run a pipeline's stages in order, retraining every stage downstream of a new output;
    return their total wall time."""
    renewed: set[str] = set()
    total = 0.0
    for stage in pipeline.stages:
        wall, changed = execute(stage, threads, stale=bool(renewed & set(stage.after)))
        total += wall
        if changed:
            renewed.add(stage.name)
    return total


def last_metrics(stage: Stage) -> dict[str, float]:
    """The metrics of a fit stage's end-of-training evaluation."""
    found, _ = candidates_of_run(stage.results)
    return dict(max(found, key=lambda c: c.step).metrics)


def run_pipelines(pipelines: Sequence[Pipeline], jobs: int) -> tuple[float, int]:
    """Run the pipelines `jobs` at a time, the cores shared among them; return (the subprocesses'
    total wall seconds, threads per subprocess)."""
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        walls = list(pool.map(lambda p: run_pipeline(p, threads), pipelines))
    return sum(walls), threads


def table_footer(
    pipelines: Sequence[Pipeline], wall: float, jobs: int, threads: int, started: float
) -> str:
    """The line under a table: its stages, their wall time and this invocation's."""
    elapsed = time.perf_counter() - started
    return (
        f"\n{sum(len(p.stages) for p in pipelines)} stages, {wall:.0f} s of subprocesses "
        f"(`--jobs {jobs}` pipelines at a time, {threads} thread(s) each); this invocation "
        f"took {elapsed:.0f} s.\n"
    )


def table_parser(
    prog: str,
    description: str,
    variants: Sequence[str],
    default_variants: Sequence[str],
    output: str,
    markdown: str,
) -> argparse.ArgumentParser:
    """The options every table command shares: seeds, variants, jobs, the world models' cache,
    the output and markdown paths, and `--run_arg` (extra overrides of every fit run)."""
    from experiments.world_models import DEFAULT_CACHE_DIR

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(variants),
        default=list(default_variants),
        help="the table's rows, in this order",
    )
    parser.add_argument("--jobs", type=int, default=2, help="pipelines at a time")
    parser.add_argument(
        "--cache_dir", type=Path, default=DEFAULT_CACHE_DIR, help="the world models' cache"
    )
    parser.add_argument("--output", type=Path, default=Path(output))
    parser.add_argument("--markdown", type=Path, default=Path(markdown))
    parser.add_argument(
        "--run_arg",
        action="append",
        default=[],
        metavar="--KEY=VALUE",
        help="an extra override of every fit run, e.g. --run_arg=--trainer.max_steps=4",
    )
    return parser


def write_table(
    rows: Sequence[Mapping[str, object]],
    table: str,
    output: Path,
    markdown: Path,
    command_line: str,
    footer: str,
) -> None:
    """`<output>/results.jsonl` (one row per line) and the markdown file, headed by the command
    that wrote it, both atomically; the table is also printed."""
    from common.atomic import atomic_file

    with atomic_file(output / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    markdown.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(markdown) as tmp:
        tmp.write_text(
            f"<!-- written by `{command_line.strip()}` -->\n\n" + table + footer, encoding="utf-8"
        )
    sys.stdout.write("\n" + table + footer)


__all__ = [
    "REPO",
    "Pipeline",
    "Stage",
    "execute",
    "fit_command",
    "is_complete",
    "last_metrics",
    "run_logged",
    "run_pipeline",
    "run_pipelines",
    "table_footer",
    "table_parser",
    "write_table",
]
