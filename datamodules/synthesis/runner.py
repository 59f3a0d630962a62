"""The synthesis run: plan the groups, generate, validate, write; resumable and idempotent.

    python -m datamodules.synthesis --config experiments/configs/synthesis/world.yaml \\
        [--output_dir DIR] [--world.seed 1] [--sampler.num_passages 50] [--force]

Outputs in `output_dir` (which holds nothing else):

- `passages.jsonl`: one valid passage per line, `{"id", "index", "text", "problems": [{"task",
  "question", "answer"}], "backend", "model", "enlightenment", "attempt", "retries"}`; `index` is
  the group's position in the plan, `text` the normalized passage (`parse.parse_passage`).
- `rejects.jsonl`: one line per rejected attempt, `{"id", "index", "attempt", "final", "reason",
  "detail", "raw", "finish_reason", "retries", "backend"}` (`raw`: the text or body received),
  kept for inspection; `final` when no attempt is left.
- `manifest.json`: the settings (no secret: an API key's variable name only), the counts over
  the whole output (`requested`, `planned`, `written`, `rejected`, `pending`, `retried`,
  `reasked`, ...) and of this invocation (`this_run`: `generated`, `rejected`, `retried`,
  `skipped_already_done`, `torn_lines_repaired`, ...), the reject reasons, the per-task problem
  counts with the deduplication drops, the shortage of the draw, the token counts (`tokenizer`)
  and the wall time; `complete` once every planned passage is written or finally rejected.
- `plan.json`: the fingerprint of everything the passages depend on (problems, sampler but
  `num_passages`, guideline, validation, the backend's identity), checked on every start: a run
  of other settings into the same directory is an error (`--force` starts over).

**Resumable.** Each result is appended as one JSON line, flushed and fsynced, as it completes.
On start, existing lines are read: an id with a passage, or with `max_attempts` rejects, is done
and skipped; an id with fewer rejects is asked again with the attempts it has left (so raising
`max_attempts` re-asks the rejected ones). A torn last line (killed mid-write) is truncated away
and its id redone. A lock (`.lock`, `flock`) keeps a second run out of the directory. When every
id is done, `passages.jsonl` and `rejects.jsonl` are rewritten atomically in plan order (a
rerun of a complete run generates and writes nothing new; the manifest is refreshed).
Raising `num_passages` later appends groups (the draw is sequential) and keeps the written ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import atomic_file, remove_orphans
from common.errors import ConfigError, DataError
from datamodules.synthesis.backends import Backend, BackendConfig, GenerationRequest, build_backend
from datamodules.synthesis.backends.base import GenerationResponse
from datamodules.synthesis.guideline import Guideline
from datamodules.synthesis.parse import ValidationConfig, parse_passage
from datamodules.synthesis.problems import (
    ProblemGroup,
    SamplerConfig,
    TaskPool,
    TaskSource,
    default_tasks,
    draw_groups,
    pools_fingerprint,
    read_task_pools,
)
from datamodules.world.config import WorldConfig

log = logging.getLogger("datamodules.synthesis")

VERSION = 1
"""Version of the output layout and of the run's rules (part of the fingerprint)."""
PASSAGES = "passages.jsonl"
REJECTS = "rejects.jsonl"
MANIFEST = "manifest.json"
PLAN = "plan.json"
LOCK = ".lock"
OWN_FILES = (PASSAGES, REJECTS, MANIFEST, PLAN, LOCK)
PROGRESS_SECONDS = 30.0


@dataclass
class SynthesisConfig:
    """Settings of TRAIT's task-oriented synthetic passages.

    Args:
        output_dir: Where the outputs go (resumable: a rerun continues there). It holds nothing
            else.
        tasks: The downstream tasks: their training problems (the passages' problems) and test
            problems (kept out of every passage).
        sampler: How problems are drawn into groups, one group per passage.
        guideline: The prompt guideline (templates, enlightenment on or off).
        validation: How strict the parser is.
        backend: The generator (`world_template`, the embedded default; `openai`;
            `transformers`).
        max_attempts: Asks per passage: a rejected one is asked again until this many attempts
            (1: no re-ask). Raising it on a rerun re-asks the rejected ones.
        tokenizer: Count the passages' tokens in the manifest with this tokenizer: `world` (the
            world's), a tokenizer directory or hub id; null: no count.
        world: The synthetic world of `world:<split>` paths (built and cached on first use).
        world_cache_dir: Where worlds are materialized.
    """

    output_dir: str = "runs/synthesis/world"
    tasks: list[TaskSource] = field(default_factory=default_tasks)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guideline: Guideline = field(default_factory=Guideline)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    max_attempts: int = 1
    tokenizer: str | None = None
    world: WorldConfig = field(default_factory=WorldConfig)
    world_cache_dir: str = ".cache/adaptlm/worlds"

    def validate(self) -> None:
        """Check every value without reading data; `ConfigError` naming the key."""
        if not str(self.output_dir):
            raise ConfigError("output_dir", "must not be empty")
        if not isinstance(self.tasks, list) or not self.tasks:
            raise ConfigError("tasks", "must name at least one task")
        for i, task in enumerate(self.tasks):
            if not isinstance(task, TaskSource):
                raise ConfigError(f"tasks[{i}]", "must be {task, train, test}")
        self.sampler.validate("sampler")
        self.guideline.validate("guideline")
        self.validation.validate("validation")
        self.backend.validate("backend")
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise ConfigError("max_attempts", f"must be an integer >= 1, got {self.max_attempts!r}")
        self.world.validate("world")


# ----------------------------------------------------------------------------------- the world


class WorldAccess:
    """The world of `world:<split>` paths and of the `world` tokenizer, materialized on first use."""

    def __init__(self, world: WorldConfig, cache_dir: str | Path) -> None:
        self.world = world
        self.cache_dir = cache_dir
        self._artifacts: Any = None

    def artifacts(self) -> Any:
        if self._artifacts is None:
            from datamodules.world.materialize import materialize_world

            self._artifacts = materialize_world(self.world, self.cache_dir, key_prefix="world")
        return self._artifacts

    def split_path(self, name: str) -> Path:
        return self.artifacts().split_path(name)


# ----------------------------------------------------------------------------------- journals


class Journal:
    """An append-only JSONL file: each record one complete line, written, flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def load(self) -> tuple[list[dict[str, Any]], int]:
        """The records, and 1 when a torn last line (no newline: killed mid-write) was cut off."""
        if not self.path.exists():
            return [], 0
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        torn = 0
        if end < len(data):
            if data[end:].strip():
                torn = 1
                log.warning(
                    "%s: the last line is incomplete (a run was killed while writing it); "
                    "removing it, its passage is redone",
                    self.path,
                )
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
            data = data[:end]
        records = []
        for number, raw in enumerate(data.split(b"\n")[:-1], start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DataError(
                    self.path,
                    f"malformed line ({type(error).__name__}); the file was not written by this "
                    "command or was edited: fix the line or start over with --force",
                    number,
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise DataError(self.path, "a record without a string 'id'", number)
            records.append(record)
        return records, torn

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        assert self._fd is not None, "open() first"
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def rewrite(self, records: Sequence[dict[str, Any]]) -> None:
        """Replace the file atomically with `records` (staged beside it, fsynced, renamed)."""
        with atomic_file(self.path) as tmp:
            tmp.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                encoding="utf-8",
            )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive `flock` on `directory/.lock` (released when the process dies)."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "output_dir", f"another synthesis run is writing to {str(directory)!r}"
            ) from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------- the run


@dataclass
class RunCounts:
    """What one invocation did."""

    generated: int = 0
    rejected: int = 0
    retried: int = 0
    reasked: int = 0
    skipped_already_done: int = 0
    torn_lines_repaired: int = 0
    duplicates_dropped: int = 0
    wall_s: float = 0.0


@dataclass
class SynthesisResult:
    """What a run wrote (or found written)."""

    output_dir: Path
    manifest: dict[str, Any]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def passages(self) -> list[dict[str, Any]]:
        path = self.output_dir / PASSAGES
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def rejects(self) -> list[dict[str, Any]]:
        path = self.output_dir / REJECTS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _hash(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def run_fingerprint(
    config: SynthesisConfig, pools: Sequence[TaskPool], backend: Backend
) -> dict[str, Any]:
    """What the passages depend on (not `num_passages`: raising it appends groups)."""
    sampler = asdict(config.sampler)
    sampler.pop("num_passages")
    payload = {
        "version": VERSION,
        "problems": pools_fingerprint(pools),
        "sampler": sampler,
        "guideline": config.guideline.fingerprint(),
        "validation": asdict(config.validation),
        "backend": backend.identity(),
    }
    return {"fingerprint": _hash(payload), **payload}


def _check_directory(directory: Path, fingerprint: str, *, force: bool) -> None:
    """The directory is ours and of these settings; write `plan.json` when it is new."""
    others = [
        p.name
        for p in directory.iterdir()
        if p.name not in OWN_FILES and not p.name.startswith((".tmp-", ".old-"))
    ]
    if others:
        raise ConfigError(
            "output_dir",
            f"{str(directory)!r} holds other files ({', '.join(sorted(others)[:5])}); "
            "this command owns its output directory: name another one",
        )
    plan = directory / PLAN
    if force:
        for name in (PASSAGES, REJECTS, MANIFEST, PLAN):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
        log.info("--force: removed the previous outputs in %s", directory)
    if plan.exists():
        try:
            found = json.loads(plan.read_text(encoding="utf-8"))["fingerprint"]
        except (ValueError, KeyError, TypeError):
            raise DataError(plan, "unreadable; start over with --force") from None
        if found != fingerprint:
            raise ConfigError(
                "output_dir",
                f"{str(directory)!r} holds passages of other settings (fingerprint {found}, this "
                f"run {fingerprint}): name another output_dir, or pass --force to start over",
            )
        return
    if any((directory / name).exists() for name in (PASSAGES, REJECTS)):
        raise ConfigError(
            "output_dir",
            f"{str(directory)!r} holds passages without {PLAN}: name another output_dir, or pass "
            "--force to start over",
        )
    with atomic_file(plan) as tmp:
        tmp.write_text(
            json.dumps({"version": VERSION, "fingerprint": fingerprint}, indent=2) + "\n",
            encoding="utf-8",
        )


def _check_facts(groups: Sequence[ProblemGroup]) -> None:
    for group in groups:
        for problem in group.problems:
            if not problem.facts:
                source, _, line = problem.where.rpartition(":")
                raise DataError(
                    source or problem.where,
                    "the world_template backend writes passages from a problem's facts, and "
                    "this problem has none (field 'facts')",
                    int(line) if line.isdigit() else None,
                )


def _token_counts(config: SynthesisConfig, world: WorldAccess, texts: list[str]) -> Any:
    if config.tokenizer is None or not texts:
        return None
    if config.tokenizer == "world":
        tokenizer = world.artifacts().load_tokenizer()
    else:
        from common import load_tokenizer

        tokenizer = load_tokenizer(config.tokenizer, key="tokenizer")
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return {
        "tokenizer": config.tokenizer,
        "total": sum(lengths),
        "mean": round(sum(lengths) / len(lengths), 1),
        "min": min(lengths),
        "max": max(lengths),
    }


class _Run:
    """The state of one invocation over one output directory."""

    def __init__(
        self,
        config: SynthesisConfig,
        groups: Sequence[ProblemGroup],
        backend: Backend,
        directory: Path,
    ) -> None:
        self.config = config
        self.groups = list(groups)
        self.by_id = {g.id: g for g in self.groups}
        self.backend = backend
        self.passages = Journal(directory / PASSAGES)
        self.rejects = Journal(directory / REJECTS)
        self.counts = RunCounts()
        self.passage_records: dict[str, dict[str, Any]] = {}
        self.reject_records: list[dict[str, Any]] = []
        self.reject_counts: Counter[str] = Counter()

    # --- state ------------------------------------------------------------------------------

    def load(self) -> None:
        passages, torn_p = self.passages.load()
        rejects, torn_r = self.rejects.load()
        self.counts.torn_lines_repaired = torn_p + torn_r
        foreign = [r["id"] for r in passages + rejects if r["id"] not in self.by_id]
        if foreign:
            raise ConfigError(
                "sampler.num_passages",
                f"{len(foreign)} record(s) in {self.passages.path.parent} belong to no planned "
                f"passage (e.g. {foreign[0]}): was num_passages lowered? raise it back, name "
                "another output_dir, or pass --force to start over",
            )
        for record in passages:
            if record["id"] in self.passage_records:
                self.counts.duplicates_dropped += 1
            else:
                self.passage_records[record["id"]] = record
        if self.counts.duplicates_dropped:
            log.warning(
                "%s: %d repeated passage id(s) dropped",
                self.passages.path,
                self.counts.duplicates_dropped,
            )
        self.reject_records = rejects
        self.reject_counts = Counter(r["id"] for r in rejects)

    def done(self, passage_id: str) -> bool:
        return (
            passage_id in self.passage_records
            or self.reject_counts[passage_id] >= self.config.max_attempts
        )

    # --- one response -----------------------------------------------------------------------

    def _record(self, group: ProblemGroup, response: GenerationResponse) -> bool:
        """Validate and write one response; True when a passage was written."""
        attempt = self.reject_counts[group.id] + 1
        guideline = self.config.guideline
        if response.error is not None:
            reason, detail = response.error, response.detail
            raw = response.raw if response.raw is not None else response.text
        else:
            result = parse_passage(
                response.text,
                group.problems,
                enlightenment=guideline.enlightenment,
                marker=guideline.enlightenment_marker,
                finish_reason=response.finish_reason,
                validation=self.config.validation,
            )
            if result.passage is not None:
                record = {
                    "id": group.id,
                    "index": group.index,
                    "text": result.passage.text,
                    "problems": [p.record() for p in group.problems],
                    "backend": self.backend.kind,
                    "model": self.backend.model,
                    "enlightenment": guideline.enlightenment,
                    "attempt": attempt,
                    "retries": response.retries,
                }
                self.passages.append(record)
                self.passage_records[group.id] = record
                self.counts.generated += 1
                self.counts.retried += response.retries
                return True
            reason, detail, raw = result.reason, result.detail, response.text
        final = attempt >= self.config.max_attempts
        record = {
            "id": group.id,
            "index": group.index,
            "attempt": attempt,
            "final": final,
            "reason": reason,
            "detail": detail,
            "raw": raw,
            "finish_reason": response.finish_reason,
            "retries": response.retries,
            "backend": self.backend.kind,
        }
        self.rejects.append(record)
        self.reject_records.append(record)
        self.reject_counts[group.id] += 1
        self.counts.rejected += 1
        self.counts.retried += response.retries
        log.debug("passage %s rejected (attempt %d): %s: %s", group.id, attempt, reason, detail)
        return False

    # --- the loop ---------------------------------------------------------------------------

    def generate(self) -> None:
        todo = [g for g in self.groups if not self.done(g.id)]
        self.counts.skipped_already_done = len(self.groups) - len(todo)
        if self.counts.skipped_already_done:
            log.info(
                "%d of %d passages already done (written or rejected); %d to generate",
                self.counts.skipped_already_done,
                len(self.groups),
                len(todo),
            )
        total = len(todo)
        finished = 0
        started = last_log = time.perf_counter()
        every = max(1, total // 10)
        self.passages.open()
        self.rejects.open()
        try:
            while todo:
                requests = [
                    GenerationRequest(
                        g.id,
                        self.config.guideline.render(g),
                        g,
                        attempt=self.reject_counts[g.id] + 1,
                    )
                    for g in todo
                ]
                waiting = {g.id for g in todo}
                again = []
                for response in self.backend.generate(requests):
                    if response.id not in waiting:
                        raise RuntimeError(
                            f"backend {self.backend.kind} answered {response.id!r}, which was not "
                            "asked or was answered twice"
                        )
                    waiting.discard(response.id)
                    group = self.by_id[response.id]
                    if not self._record(group, response) and not self.done(group.id):
                        again.append(group)
                    else:
                        finished += 1
                    now = time.perf_counter()
                    if finished % every == 0 or now - last_log > PROGRESS_SECONDS:
                        last_log = now
                        log.info(
                            "synthesis: %d of %d done (%d written, %d rejects, %d retries) "
                            "in %.1f s",
                            finished,
                            total,
                            self.counts.generated,
                            self.counts.rejected,
                            self.counts.retried,
                            now - started,
                        )
                if waiting:
                    raise RuntimeError(
                        f"backend {self.backend.kind} gave no response for {len(waiting)} "
                        "request(s)"
                    )
                self.counts.reasked += len(again)
                if again:
                    log.info("asking again for %d rejected passage(s)", len(again))
                todo = sorted(again, key=lambda g: g.index)
        finally:
            self.passages.close()
            self.rejects.close()

    def finalize(self) -> bool:
        """When every id is done: rewrite both files in plan order if they are not. True then."""
        if not all(self.done(g.id) for g in self.groups):
            return False
        ordered = [self.passage_records[g.id] for g in self.groups if g.id in self.passage_records]
        current, _ = self.passages.load()
        if [r["id"] for r in current] != [r["id"] for r in ordered]:
            self.passages.rewrite(ordered)
        index = {g.id: g.index for g in self.groups}
        rejects = sorted(self.reject_records, key=lambda r: (index[r["id"]], r["attempt"]))
        if rejects != self.reject_records:
            self.rejects.rewrite(rejects)
            self.reject_records = rejects
        return True

    # --- summary ----------------------------------------------------------------------------

    def totals(self) -> dict[str, Any]:
        written = len(self.passage_records)
        finally_rejected = sum(
            1
            for g in self.groups
            if g.id not in self.passage_records
            and self.reject_counts[g.id] >= self.config.max_attempts
        )
        attempted = {r["id"] for r in self.reject_records} | set(self.passage_records)
        attempts = len(self.reject_records) + written
        return {
            "requested": self.config.sampler.num_passages,
            "planned": len(self.groups),
            "written": written,
            "rejected": finally_rejected,
            "pending": len(self.groups) - written - finally_rejected,
            "reject_records": len(self.reject_records),
            "reasked": attempts - len(attempted),
            "retried": sum(r.get("retries", 0) for r in self.passage_records.values())
            + sum(r.get("retries", 0) for r in self.reject_records),
        }


def _settings(config: SynthesisConfig, backend: Backend) -> dict[str, Any]:
    """Every setting for the manifest; the backend's through `settings()` (no secret)."""
    return {
        "output_dir": str(config.output_dir),
        "tasks": [asdict(t) for t in config.tasks],
        "sampler": asdict(config.sampler),
        "guideline": asdict(config.guideline),
        "guideline_fingerprint": config.guideline.fingerprint(),
        "validation": asdict(config.validation),
        "backend": backend.settings(),
        "max_attempts": config.max_attempts,
        "tokenizer": config.tokenizer,
        "world": config.world.to_dict(),
    }


def run_synthesis(
    config: SynthesisConfig,
    *,
    force: bool = False,
    backend: Backend | None = None,
    world: WorldAccess | None = None,
) -> SynthesisResult:
    """Plan, generate, validate and write the passages (see the module docstring).

    `backend`: a backend instance to use instead of building `config.backend` (tests).
    """
    started = time.perf_counter()
    config.validate()
    world = world or WorldAccess(config.world, config.world_cache_dir)
    if backend is None:  # first: a missing API key fails before any data is read
        backend = build_backend(
            config.backend,
            enlightenment=config.guideline.enlightenment,
            marker=config.guideline.enlightenment_marker,
            world_heldout_bio_templates=config.world.num_heldout_bio_templates,
        )
    pools = read_task_pools(config.tasks, world_split=world.split_path)
    draw = draw_groups(pools, config.sampler, config.guideline.fingerprint())
    if backend.kind == "world_template":
        _check_facts(draw.groups)
    plan = run_fingerprint(config, pools, backend)
    directory = Path(config.output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    run = _Run(config, draw.groups, backend, directory)
    complete = False
    with _locked(directory):
        remove_orphans(directory)
        _check_directory(directory, plan["fingerprint"], force=force)
        try:
            run.load()
        except BaseException:
            backend.close()
            raise
        try:
            run.generate()
            complete = run.finalize()
        finally:
            run.counts.wall_s = round(time.perf_counter() - started, 3)
            backend.close()
            texts = [
                run.passage_records[g.id]["text"]
                for g in draw.groups
                if g.id in run.passage_records
            ]
            try:
                tokens = _token_counts(config, world, texts) if complete else None
            except Exception as error:  # the count is a report, never worth losing the run
                log.warning("could not count tokens: %s", error)
                tokens = None
            manifest = {
                "version": VERSION,
                "complete": complete,
                "fingerprint": plan["fingerprint"],
                "backend": backend.kind,
                "model": backend.model,
                "enlightenment": config.guideline.enlightenment,
                "counts": run.totals(),
                "this_run": asdict(run.counts),
                "reject_reasons": dict(
                    sorted(Counter(r["reason"] for r in run.reject_records).items())
                ),
                "problems": {p.task: asdict(p.stats) for p in pools},
                "dedup": {
                    "question_in_test": sum(p.stats.question_in_test for p in pools),
                    "test_entity_leakage": sum(p.stats.test_entity for p in pools),
                    "duplicate_in_train": sum(p.stats.duplicate for p in pools),
                },
                "shortage": draw.shortage,
                "same_task_groups": draw.same_task_groups,
                "tokens": tokens,
                "settings": _settings(config, backend),
            }
            with atomic_file(directory / MANIFEST) as tmp:
                tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    totals = manifest["counts"]
    log.info(
        "synthesis %s: %d of %d passages written (%d this run), %d rejected, %d retries, "
        "%d re-asks%s; %s",
        "complete" if complete else "incomplete",
        totals["written"],
        totals["planned"],
        run.counts.generated,
        totals["rejected"],
        totals["retried"],
        totals["reasked"],
        f", {tokens['total']} tokens ({tokens['tokenizer']} tokenizer)" if tokens else "",
        directory,
    )
    return SynthesisResult(directory, manifest)


# ----------------------------------------------------------------------------------- command


def build_parser() -> Any:
    """The command's jsonargparse parser: `--config` files (with `!include`), every field of
    `SynthesisConfig` as an option (its docstring is the help), and `--force`."""
    from experiments.config_errors import config_parser

    return config_parser(
        "python -m datamodules.synthesis",
        "TRAIT's task-oriented synthetic passages: problems of several downstream tasks into "
        "one passage each (see datamodules/synthesis/).",
        SynthesisConfig,
        "delete the outputs in output_dir and start over",
    )


def parse_config(argv: Sequence[str] | None = None) -> tuple[SynthesisConfig, bool]:
    """`(config, force)` from the command line; an unknown or ill-typed option is a `ConfigError`."""
    from experiments.config_errors import parse_arguments

    init = parse_arguments(build_parser(), argv)
    values = {k: init[k] for k in SynthesisConfig.__dataclass_fields__ if k in init}
    return SynthesisConfig(**values), bool(init.get("force"))


def main(argv: Sequence[str] | None = None) -> SynthesisResult | None:
    """Entry point: user errors (bad data, bad config values) log one line and exit with status 2."""
    from experiments.config_errors import run_main

    def run() -> SynthesisResult | None:
        config, force = parse_config(argv)
        return run_synthesis(config, force=force)

    return run_main("datamodules.synthesis", run, log)


__all__ = [
    "MANIFEST",
    "PASSAGES",
    "PLAN",
    "REJECTS",
    "Journal",
    "RunCounts",
    "SynthesisConfig",
    "SynthesisResult",
    "WorldAccess",
    "build_parser",
    "main",
    "parse_config",
    "run_fingerprint",
    "run_synthesis",
]
