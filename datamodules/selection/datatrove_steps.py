"""TRAIT's document scorers as datatrove pipeline steps, run by datatrove's local or SLURM executor.

`build_pipeline(corpus, scorer, output_dir, threshold)` gives three steps:

- `CorpusReader(corpus)`: the documents of our `CorpusSpec` (`iter_corpus`), task `rank` of
  `world_size` reading shard `rank` by position, exactly as `score_corpus(num_shards=world_size)`
  does (datatrove's own readers shard by file: one big file would go to one task);
- `ScoreFilter(scorer, threshold)`: a `BaseFilter` that builds its scorer from the `ScorerSpec` in
  the worker, the first time it scores (the step pickles without it), scores documents in
  batches, stores the score in `doc.metadata[key]` and keeps documents whose score is ≥
  `threshold` (None: keeps all, annotation only). With `output_dir` it also writes every
  document's `{"id", "score", "kept"}` to the same shard files and done files as `score_corpus`
  (`output_dir/shards/`, atomically), and the task that finds every shard done merges them into
  `output_dir/scores.jsonl` + `scores_manifest.json`: the same scores, in corpus order;
- `KeptWriter(output_dir / "kept")`: the kept documents as `{id_field, text_field, key}` JSONL,
  one file per task (`kept-00000-of-00002.jsonl`), written atomically: a corpus itself.

`run_datatrove(..., executor="local" | "slurm")` builds them and runs them with
`LocalPipelineExecutor(tasks, workers)` or submits them with `SlurmPipelineExecutor` (partition,
time, CPUs, memory, … from `SlurmOptions`; `submit=False` builds it without submitting). Before
running, datatrove's completion markers are reconciled with our done files: a task is skipped
only when its done file carries this run's fingerprint (corpus identity, scorer fingerprint,
threshold, key) and its kept file exists; any other task is redone.

Command line (user errors: one line, exit status 2):

```
python -m datamodules.selection.datatrove_steps --corpus.path web.jsonl \\
    --scorer.kind fasttext --scorer.path model.bin --threshold 0.5 \\
    --output_dir runs/selection --executor local --tasks 2 --workers 2
python -m datamodules.selection.datatrove_steps ... --executor slurm --tasks 64 \\
    --slurm.partition cpu --slurm.time 04:00:00 --slurm.cpus_per_task 2
```
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from datatrove.data import Document as DatatroveDocument
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from common.atomic import atomic_file
from common.errors import AdaptLMError, ConfigError
from datamodules.selection.corpus import CorpusSpec, CorpusStats, iter_corpus
from datamodules.selection.scorers import DocumentScorer, ScorerSpec, build_scorer
from datamodules.selection.sharded import (
    PRELOAD,
    ShardError,
    ShardFailed,
    ShardResult,
    check_corpus,
    clear_done,
    fingerprint_base,
    limit_torch_threads,
    merge_shards,
    new_stats,
    parse_command,
    read_done,
    run_main,
    score_batch,
    shard_path,
    worker_environment,
    write_done,
)
from datamodules.selection.sharded import (
    build_parser as build_command_parser,
)

log = logging.getLogger("datamodules.selection.datatrove_steps")  # also when run as __main__

ScorerFactory = Callable[[ScorerSpec], DocumentScorer]
KEPT_DIR = "kept"
LOGS_DIR = "datatrove_logs"

_READ_STATS: dict[tuple[str, int, int], CorpusStats] = {}
"""The live `CorpusStats` of each `CorpusReader` task in this process, keyed by
`(stats_key, rank, world_size)`: how the `ScoreFilter` of the same pipeline learns what was read
and skipped (the two steps run in the same process, one generator feeding the other)."""


def kept_path(kept_dir: str | Path, rank: int, world_size: int) -> Path:
    return Path(kept_dir) / f"kept-{rank:05d}-of-{world_size:05d}.jsonl"


@contextlib.contextmanager
def _shard_errors(rank: int, world_size: int) -> Iterator[None]:
    """Errors of a task as picklable `ShardError` (user errors, message kept) / `ShardFailed`: a
    `DataError` does not survive the trip back from a pool worker."""
    try:
        yield
    except (ShardError, ShardFailed):
        raise
    except AdaptLMError as err:
        raise ShardError(rank, world_size, str(err), type(err).__name__) from err
    except Exception as err:
        raise ShardFailed(
            rank, world_size, f"{type(err).__name__}: {err}", traceback.format_exc()
        ) from err


class CorpusReader(PipelineStep):
    """Our `CorpusSpec` as a datatrove reader: task `rank` of `world_size` yields the documents at
    positions `p % world_size == rank` (bad records skipped and counted, as `iter_corpus` does)."""

    name = "adaptlm corpus"
    type = "📖 - READER"

    def __init__(self, corpus: CorpusSpec, stats_key: str | None = None) -> None:
        super().__init__()
        self.corpus = corpus
        self.stats_key = stats_key

    def run(
        self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1
    ) -> DocumentsPipeline:
        if data:
            yield from data
        stats = new_stats()
        if self.stats_key is not None:
            _READ_STATS[(self.stats_key, rank, world_size)] = stats
        with _shard_errors(rank, world_size):
            for doc in iter_corpus(self.corpus, stats, shard_index=rank, num_shards=world_size):
                document = DatatroveDocument(text=doc.text, id=str(doc.id))
                self.stat_update("documents")
                self.update_doc_stats(document)
                yield document
        if stats.skipped:
            self.stat_update("skipped", value=int(stats.skipped))
            for problem in stats.problems[:20]:
                log.warning("skipped: %s", problem)


class ScoreFilter(BaseFilter):
    """One of our scorers as a datatrove filter (module docstring).

    Args:
        scorer: what to build in the worker (`build_scorer`, or `scorer_factory`).
        threshold: keep documents whose score is ≥ it; None keeps all (annotates only).
        key: the metadata key of the score.
        batch_size: documents per `score` call.
        output_dir: also write every document's score to `output_dir/shards/` (the layout of
            `score_corpus`) and merge when every shard is done; None: no score files.
        fingerprint: the run's `fingerprint_base` (`build_pipeline` computes it in the parent);
            None: computed in the worker from the scorer alone.
        stats_key: `CorpusReader.stats_key` of the pipeline's reader (its counts go into the done
            file), or None.
        threads: torch threads in the worker (None: `OMP_NUM_THREADS`, else torch's default;
            `run_datatrove` gives 1 per local worker, `cpus_per_task` per SLURM task).
        scorer_factory: a picklable `ScorerSpec -> DocumentScorer` instead of `build_scorer`.
        exclusion_writer: a datatrove writer for the dropped documents.
    """

    name = "adaptlm score"
    type = "🔻 - FILTER"

    def __init__(
        self,
        scorer: ScorerSpec,
        threshold: float | None = None,
        *,
        key: str = "score",
        batch_size: int = 256,
        output_dir: str | Path | None = None,
        fingerprint: dict[str, Any] | None = None,
        stats_key: str | None = None,
        threads: int | None = None,
        scorer_factory: ScorerFactory | None = None,
        exclusion_writer=None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        self.scorer_spec = scorer
        self.threshold = None if threshold is None else float(threshold)
        self.key = key
        self.output_dir = None if output_dir is None else str(output_dir)
        self.fingerprint = fingerprint
        self.stats_key = stats_key
        self.threads = threads
        self.scorer_factory = scorer_factory
        self._scorer: DocumentScorer | None = None
        self._out = None
        self._counts = [0, 0]  # scored, kept

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_scorer"] = None  # built in the worker, never pickled
        state["_out"] = None
        return state

    @property
    def scorer(self) -> DocumentScorer:
        if self._scorer is None:
            self._scorer = (self.scorer_factory or build_scorer)(self.scorer_spec)
            if self.threads:
                limit_torch_threads(self.threads)
            else:
                limit_torch_threads_if_set()
        return self._scorer

    def keep(self, score: float) -> bool:
        return self.threshold is None or score >= self.threshold

    def filter(self, doc: DatatroveDocument) -> bool:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[DatatroveDocument]) -> list[bool]:
        scores = score_batch(self.scorer, [doc.text for doc in batch])
        decisions = []
        lines = []
        for doc, score in zip(batch, scores):
            value = float(score)
            doc.metadata[self.key] = value
            kept = self.keep(value)
            decisions.append(kept)
            lines.append(json.dumps({"id": doc.id, "score": value, "kept": kept}) + "\n")
        self._counts[0] += len(batch)
        self._counts[1] += sum(decisions)
        if self._out is not None:
            self._out.write("".join(lines))
        return decisions

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._counts = [0, 0]
        if self.output_dir is None:
            with _shard_errors(rank, world_size):
                yield from super().run(data, rank, world_size)
            return
        output_dir = Path(self.output_dir)
        with _shard_errors(rank, world_size):
            base = self.fingerprint or fingerprint_base_without_corpus(self)
            clear_done(output_dir, rank, world_size)
            started, cpu_started = time.perf_counter(), time.process_time()
            target = shard_path(output_dir, rank, world_size)
            with atomic_file(target) as tmp, tmp.open("w", encoding="utf-8") as out:
                self._out = out
                try:
                    yield from super().run(data, rank, world_size)
                finally:
                    self._out = None
            stats = _READ_STATS.pop((self.stats_key, rank, world_size), None)
            scored, kept = self._counts
            result = ShardResult(
                shard_index=rank,
                num_shards=world_size,
                documents=scored,
                read=int(stats.read) if stats is not None else scored,
                skipped=int(stats.skipped) if stats is not None else 0,
                problems=[str(p) for p in stats.problems] if stats is not None else [],
                wall_s=time.perf_counter() - started,
                cpu_s=time.process_time() - cpu_started,
                bytes=target.stat().st_size,
                token=uuid.uuid4().hex,
                kept=kept,
            )
            write_done(output_dir, result, base)
            log.info(
                "task %d of %d: %d documents scored, %d kept, %.2f s", rank, world_size, scored,
                kept, result.wall_s,
            )  # fmt: skip
            merge_shards(output_dir, world_size, base, run={"engine": "datatrove"})


def limit_torch_threads_if_set() -> None:
    if "OMP_NUM_THREADS" in os.environ:
        limit_torch_threads()


def fingerprint_base_without_corpus(step: ScoreFilter) -> dict[str, Any]:
    """A `ScoreFilter` used after another reader: the scorer's fingerprint and the decision
    settings, no corpus identity."""
    return {
        "schema": 1,
        "corpus": None,
        "scorer": json.loads(json.dumps(step.scorer.fingerprint(), sort_keys=True, default=str)),
        **decision_settings(step.threshold, step.key),
    }


def decision_settings(threshold: float | None, key: str) -> dict[str, Any]:
    return {"engine": "datatrove", "threshold": threshold, "key": key}


class KeptWriter(PipelineStep):
    """The documents that reach it as `{id_field, text_field, key}` JSONL, one file per task
    (`kept-{rank:05d}-of-{world_size:05d}.jsonl`), written atomically; passes them on."""

    name = "adaptlm kept jsonl"
    type = "💽 - WRITER"

    def __init__(
        self,
        output_dir: str | Path,
        *,
        key: str = "score",
        id_field: str = "id",
        text_field: str = "text",
    ) -> None:
        super().__init__()
        self.output_dir = str(output_dir)
        self.key = key
        self.id_field = id_field or "id"
        self.text_field = text_field

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        target = kept_path(self.output_dir, rank, world_size)
        with atomic_file(target) as tmp, tmp.open("w", encoding="utf-8") as out:
            for doc in data or ():
                record = {self.id_field: doc.id, self.text_field: doc.text}
                if self.key in doc.metadata:
                    record[self.key] = doc.metadata[self.key]
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.stat_update("written")
                yield doc


# ----------------------------------------------------------------------------------- pipeline


def build_pipeline(
    corpus: CorpusSpec,
    scorer: ScorerSpec,
    output_dir: str | Path,
    threshold: float | None = None,
    *,
    key: str = "score",
    batch_size: int = 256,
    write_kept: bool = True,
    threads: int | None = None,
    scorer_factory: ScorerFactory | None = None,
) -> list[PipelineStep]:
    """`[CorpusReader, ScoreFilter, KeptWriter]` (module docstring); the scorer is built here once
    for the run's fingerprint (the steps carry only its spec)."""
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be an integer ≥ 1, got {batch_size!r}")
    check_corpus(corpus)
    output_dir = Path(output_dir)
    local = (scorer_factory or build_scorer)(scorer)
    base = fingerprint_base(corpus, local, decision_settings(threshold, key))
    del local
    stats_key = f"{output_dir.resolve()}:{uuid.uuid4().hex[:8]}"
    steps: list[PipelineStep] = [
        CorpusReader(corpus, stats_key=stats_key),
        ScoreFilter(
            scorer,
            threshold,
            key=key,
            batch_size=batch_size,
            output_dir=output_dir,
            fingerprint=base,
            stats_key=stats_key,
            threads=threads,
            scorer_factory=scorer_factory,
        ),
    ]
    if write_kept:
        id_field = getattr(corpus, "id_field", None) or "id"
        text_field = getattr(corpus, "text_field", "text")
        steps.append(
            KeptWriter(output_dir / KEPT_DIR, key=key, id_field=id_field, text_field=text_field)
        )
    return steps


@dataclass
class SlurmOptions:
    """What `SlurmPipelineExecutor` gets besides the pipeline, the tasks and the workers."""

    partition: str | None = None
    """SLURM partition (required for `executor: slurm`)."""
    time: str = "04:00:00"
    """Time limit of each array task."""
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    gpus_per_task: int = 0
    job_name: str = "adaptlm_scoring"
    qos: str = "normal"
    venv_path: str | None = None
    """`source`d in each task; default: this interpreter's venv `bin/activate` when there is one."""
    env_command: str | None = None
    """A shell command run instead of activating `venv_path` (e.g. `module load …; conda activate …`)."""
    sbatch_args: dict[str, str] = field(default_factory=dict)
    """Extra `#SBATCH --key=value` lines (`account`, `constraint`, …)."""
    max_array_size: int = 1001
    slurm_logs_folder: str | None = None


@dataclass
class DatatroveRun:
    """What `run_datatrove` did: the merged scores (None until every task has finished, e.g. right
    after a SLURM submission), where the kept documents and the logs go, and the executor."""

    scores: Path | None
    kept_dir: Path | None
    logging_dir: Path
    executor: Any
    pipeline: list[PipelineStep]
    job_id: str | None = None


def build_executor(
    pipeline: list[PipelineStep],
    executor: Literal["local", "slurm"],
    *,
    tasks: int,
    workers: int,
    logging_dir: str | Path,
    slurm: SlurmOptions | None = None,
    start_method: str = "forkserver",
):
    """The datatrove executor of the pipeline: `LocalPipelineExecutor(tasks, workers)` (workers
    started with `start_method`), or `SlurmPipelineExecutor` with `slurm`'s settings."""
    if not isinstance(tasks, int) or tasks < 1:
        raise ConfigError("tasks", f"must be an integer ≥ 1, got {tasks!r}")
    if not isinstance(workers, int) or (workers < 1 and workers != -1):
        raise ConfigError("workers", f"must be an integer ≥ 1 (or -1: all tasks), got {workers!r}")
    if executor == "local":
        import multiprocess
        from datatrove.executor import LocalPipelineExecutor

        if start_method == "forkserver":  # datatrove's pool: preload our modules once
            multiprocess.get_context("forkserver").set_forkserver_preload(PRELOAD)

        return LocalPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            workers=min(workers, tasks) if workers != -1 else -1,
            logging_dir=str(logging_dir),
            skip_completed=True,
            start_method=start_method,
        )
    if executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        slurm = slurm or SlurmOptions()
        if not slurm.partition:
            raise ConfigError("slurm.partition", "executor 'slurm' needs a partition")
        venv = slurm.venv_path
        if venv is None and slurm.env_command is None:
            activate = Path(sys.prefix) / "bin" / "activate"
            venv = str(activate) if sys.prefix != sys.base_prefix and activate.is_file() else None
        return SlurmPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            workers=workers,
            time=slurm.time,
            partition=slurm.partition,
            cpus_per_task=slurm.cpus_per_task,
            mem_per_cpu_gb=slurm.mem_per_cpu_gb,
            gpus_per_task=slurm.gpus_per_task,
            job_name=slurm.job_name,
            qos=slurm.qos,
            venv_path=venv,
            env_command=slurm.env_command,
            sbatch_args=dict(slurm.sbatch_args),
            max_array_size=slurm.max_array_size,
            logging_dir=str(logging_dir),
            slurm_logs_folder=slurm.slurm_logs_folder,
            skip_completed=True,
        )
    raise ConfigError("executor", f"expected 'local' or 'slurm', got {executor!r}")


def reconcile_completions(
    output_dir: Path, logging_dir: Path, tasks: int, base: dict[str, Any], write_kept: bool
) -> list[int]:
    """Make datatrove's `completions/` markers agree with our done files: a task counts as
    complete only when its done file carries `base` (and its kept file exists); the markers of
    other tasks are removed (logged) so that datatrove reruns them. Returns the complete tasks."""
    completions = logging_dir / "completions"
    complete = []
    for rank in range(tasks):
        marker = completions / f"{rank:05d}"
        done = read_done(output_dir, rank, tasks, base) is not None
        if done and write_kept:
            done = kept_path(output_dir / KEPT_DIR, rank, tasks).is_file()
        if done:
            complete.append(rank)
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            log.info("task %d of %d already done (same fingerprint); skipping it", rank, tasks)
        elif marker.exists():
            log.info(
                "task %d of %d: outputs missing or fingerprint changed; redoing it", rank, tasks
            )
            marker.unlink()
            clear_done(output_dir, rank, tasks)
    return complete


def run_datatrove(
    corpus: CorpusSpec,
    scorer: ScorerSpec,
    output_dir: str | Path,
    threshold: float | None = None,
    *,
    executor: Literal["local", "slurm"] = "local",
    tasks: int = 1,
    workers: int = 1,
    logging_dir: str | Path | None = None,
    key: str = "score",
    batch_size: int = 256,
    write_kept: bool = True,
    slurm: SlurmOptions | None = None,
    submit: bool = True,
    start_method: str = "forkserver",
    scorer_factory: ScorerFactory | None = None,
) -> DatatroveRun:
    """Score (and filter) `corpus` with datatrove (module docstring).

    Local: runs the tasks (`workers` at a time, BLAS/OpenMP threads 1 each unless
    `OMP_NUM_THREADS` is set) and returns the merged `scores.jsonl`. SLURM: submits the array
    job (`submit=False`: only builds the executor) and returns `scores=None`; the last task to
    finish merges the scores on the cluster.
    """
    output_dir = Path(output_dir)
    logging_dir = Path(logging_dir) if logging_dir is not None else output_dir / LOGS_DIR
    if "OMP_NUM_THREADS" in os.environ:
        threads = None  # the user's
    elif executor == "slurm":
        threads = (slurm or SlurmOptions()).cpus_per_task  # each task owns its CPUs
    else:
        threads = None if workers == 1 else 1
    pipeline = build_pipeline(
        corpus,
        scorer,
        output_dir,
        threshold,
        key=key,
        batch_size=batch_size,
        write_kept=write_kept,
        threads=threads,
        scorer_factory=scorer_factory,
    )
    built = build_executor(
        pipeline,
        executor,
        tasks=tasks,
        workers=workers,
        logging_dir=logging_dir,
        slurm=slurm,
        start_method=start_method,
    )
    base = pipeline[1].fingerprint
    kept_dir = output_dir / KEPT_DIR if write_kept else None
    result = DatatroveRun(None, kept_dir, logging_dir, built, pipeline)
    if executor == "slurm" and not submit:
        return result  # built only: nothing written
    reconcile_completions(output_dir, logging_dir, tasks, base, write_kept)
    if executor == "slurm":
        built.run()  # writes the pickled executor and the sbatch script, calls sbatch
        result.job_id = None if built.job_id is None else str(built.job_id)
        log.info("submitted SLURM job %s (%d tasks)", result.job_id, tasks)
        return result
    started = time.perf_counter()
    with worker_environment() if built.workers > 1 else contextlib.nullcontext():
        built.run()
    wall = time.perf_counter() - started
    run = {"engine": "datatrove", "executor": "local", "tasks": tasks, "workers": workers}
    run["wall_s"] = wall
    result.scores = merge_shards(output_dir, tasks, base, run=run)
    if result.scores is None:
        raise ShardFailed(
            0, tasks, f"datatrove finished but some shard of {output_dir} is not done"
        )
    return result


# ----------------------------------------------------------------------------------- command


@dataclass
class DatatroveCommand:
    """`python -m datamodules.selection.datatrove_steps`: score a corpus with datatrove."""

    corpus: CorpusSpec
    """The corpus to score (`--corpus.path`, `--corpus.text_field`, …)."""
    scorer: ScorerSpec
    """The scorer (`--scorer.kind fasttext --scorer.path model.bin`, …)."""
    output_dir: str
    """Where `shards/`, `scores.jsonl`, `scores_manifest.json`, `kept/` and the logs go."""
    threshold: float | None = None
    """Keep documents with score ≥ threshold (unset: keep all, annotate only)."""
    executor: Literal["local", "slurm"] = "local"
    tasks: int = 1
    """Shards (datatrove tasks); task i reads the documents at positions p % tasks == i."""
    workers: int = 1
    """Tasks run at once (local: processes; SLURM: the array's `%` limit, -1 none)."""
    logging_dir: str | None = None
    """datatrove's logs, stats and completion markers (default: output_dir/datatrove_logs)."""
    key: str = "score"
    """Metadata key (and kept files' field) of the score."""
    batch_size: int = 256
    write_kept: bool = True
    """Write the kept documents to output_dir/kept/."""
    submit: bool = True
    """SLURM: submit the job (false: write nothing, only check the settings)."""
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


PROG = "datamodules.selection.datatrove_steps"


def build_parser() -> Any:
    return build_command_parser(
        DatatroveCommand,
        f"python -m {PROG}",
        "Score a corpus with one of TRAIT's document scorers as a datatrove pipeline (local "
        "executor here, SLURM executor on a cluster); see the module docstring of "
        "datamodules/selection/datatrove_steps.py.",
    )


def run_command(command: DatatroveCommand) -> DatatroveRun:
    return run_datatrove(
        command.corpus,
        command.scorer,
        command.output_dir,
        command.threshold,
        executor=command.executor,
        tasks=command.tasks,
        workers=command.workers,
        logging_dir=command.logging_dir,
        key=command.key,
        batch_size=command.batch_size,
        write_kept=command.write_kept,
        slurm=command.slurm,
        submit=command.submit,
    )


def main(argv: Sequence[str] | None = None) -> DatatroveRun:
    """Entry point: user errors log one line and exit with status 2."""

    def run() -> DatatroveRun:
        return run_command(parse_command(DatatroveCommand, build_parser(), argv))

    result = run_main(PROG, run, log)
    if result.scores is not None:
        print(f"scores: {result.scores}")
        if result.kept_dir is not None:
            print(f"kept documents: {result.kept_dir}")
    elif result.job_id is not None:
        print(f"submitted SLURM job {result.job_id}; logs: {result.logging_dir}")
    return result


__all__ = [
    "CorpusReader",
    "DatatroveCommand",
    "DatatroveRun",
    "KeptWriter",
    "ScoreFilter",
    "SlurmOptions",
    "build_executor",
    "build_parser",
    "build_pipeline",
    "kept_path",
    "main",
    "reconcile_completions",
    "run_datatrove",
]


if __name__ == "__main__":
    # The importable module's `main`: the steps datatrove pickles then name a real module.
    from datamodules.selection.datatrove_steps import main as _main

    _main()
