"""Sharded, multi-process, resumable scoring of a corpus: TRAIT's selection at scale.

`score_corpus(corpus, scorer, output_dir, num_shards=n)` splits the corpus by position (document
`p` belongs to shard `p % n`, as `iter_corpus(..., shard_index=i, num_shards=n)` reads it) and
scores every shard with a scorer built from its `ScorerSpec`:

- `shard_index=None` runs every shard not yet done, in this process (`processes=1`) or in a
  `multiprocessing` pool of `processes` workers (spawned: nothing of the parent's state, each
  worker builds its scorer once, BLAS/OpenMP/torch threads 1 per worker unless `OMP_NUM_THREADS`
  says otherwise);
- `shard_index=i` runs shard `i` alone: one task of a SLURM array job
  (`--shard_index slurm` on the command line reads `SLURM_ARRAY_TASK_ID`).

Layout of `output_dir`:

```
shards/scores-00002-of-00008.jsonl       {"id", "score"} per document of shard 2, in corpus order
shards/scores-00002-of-00008.done.json   fingerprint, counts, problems (file:line), wall time
scores.jsonl                             {"id", "score"} per document, in corpus order
scores_manifest.json                     counts summed, problems aggregated, documents/s
```

Every file is written with `common.atomic.atomic_file` (staged beside it, fsynced, renamed): a
shard killed half-way leaves neither a visible scores file nor a done file (its staging file is
removed by the next writer in that directory). A shard is done when its done file carries the
fingerprint of this run (the corpus's identity: path, fields, and size + mtime of every file;
the scorer's own `fingerprint()`; `num_shards`; the shard index) and its scores file has the
recorded size: a rerun skips it (logged) and redoes a shard whose files are missing or whose
fingerprint differs. Whichever call finds every shard done merges them: global position `p` is
line `p // n` of shard `p % n`, so the shards interleave round-robin into corpus order (the
shard sizes are checked against that). The merge is skipped when the manifest already records
exactly these shards.

A failing shard stops the run with one error naming it: a user error (`AdaptLMError`: bad data,
bad config) becomes a `ShardError` (also an `AdaptLMError`) whose message is the original's
prefixed with the shard; anything else a `ShardFailed` carrying the worker's traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_file
from common.errors import AdaptLMError, ConfigError, DataError
from datamodules.selection.corpus import WORLD_SCHEME, CorpusSpec, CorpusStats, iter_corpus
from datamodules.selection.scorers import DocumentScorer, ScorerSpec, build_scorer

log = logging.getLogger("datamodules.selection.sharded")  # also when run as __main__

SCHEMA = 1
SHARDS_DIR = "shards"
SCORES_FILE = "scores.jsonl"
MANIFEST_FILE = "scores_manifest.json"
MAX_PROBLEMS = 1000
"""Problem lines kept per done file and in the manifest (the counts are always exact)."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PRELOAD = ["__main__", "datamodules.selection.sharded", "datamodules.selection.datatrove_steps"]
"""What a forkserver imports once before forking workers (`__main__`: multiprocessing's default;
a calling script needs its `if __name__ == "__main__":` guard, as with any start method)."""

ScorerFactory = Callable[[ScorerSpec], DocumentScorer]


class ShardError(AdaptLMError):
    """A user error (bad data, bad config) raised while scoring one shard; the message is the
    original one prefixed with `shard <i> of <n>: `."""

    def __init__(self, shard_index: int, num_shards: int, message: str, kind: str = "") -> None:
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.original_message = message
        self.kind = kind
        super().__init__(f"shard {shard_index} of {num_shards}: {message}")

    def __reduce__(self):  # picklable across processes (the default would call cls(message))
        return (type(self), (self.shard_index, self.num_shards, self.original_message, self.kind))


class ShardFailed(RuntimeError):
    """Any other error while scoring one shard (a bug, a crash of the scorer); the message names the
    shard and, when it ran in a worker process, ends with the worker's traceback."""

    def __init__(self, shard_index: int, num_shards: int, message: str, worker_traceback: str = ""):
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.worker_traceback = worker_traceback
        self.original_message = message
        text = f"shard {shard_index} of {num_shards} failed: {message}"
        if worker_traceback:
            text += f"\n--- traceback in the worker ---\n{worker_traceback.rstrip()}"
        super().__init__(text)

    def __reduce__(self):
        args = (self.shard_index, self.num_shards, self.original_message, self.worker_traceback)
        return (type(self), args)


@dataclass
class ShardResult:
    """One shard's outcome (also what its done file records)."""

    shard_index: int
    num_shards: int
    documents: int
    read: int
    skipped: int
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    """CPU seconds of the process while it scored the shard (reading and writing included)."""
    bytes: int = 0
    token: str = ""
    reused: bool = False
    """True when this call found the shard done and did not recompute it."""
    kept: int | None = None
    """Documents kept by a threshold (the datatrove path; None: no threshold decision recorded)."""

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.wall_s if self.wall_s > 0 else float("nan")


# ----------------------------------------------------------------------------------- paths


def shard_path(output_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    """`output_dir/shards/scores-{i:05d}-of-{n:05d}.jsonl`."""
    return Path(output_dir) / SHARDS_DIR / f"scores-{shard_index:05d}-of-{num_shards:05d}.jsonl"


def done_path(output_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    """`output_dir/shards/scores-{i:05d}-of-{n:05d}.done.json`."""
    return shard_path(output_dir, shard_index, num_shards).with_suffix(".done.json")


# ----------------------------------------------------------------------------------- fingerprints


def _plain(value: Any) -> Any:
    """`value` as JSON would give it back (tuples → lists, paths and numpy scalars → text/numbers)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if is_dataclass(obj) and not isinstance(obj, type):
            return asdict(obj)
        return str(obj)

    return json.loads(json.dumps(value, sort_keys=True, default=default))


def corpus_identity(corpus: CorpusSpec) -> dict[str, Any]:
    """What identifies the corpus's content without reading it: its settings, and the path, size
    and mtime (ns) of every file it reads (each file of a directory, hidden entries excluded); a
    path that is no local file (a hub dataset name) is identified by its name."""
    settings = {f.name: getattr(corpus, f.name) for f in fields(corpus)}
    path = Path(corpus.path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    else:
        return _plain({"settings": settings, "local": False})
    root = path.resolve()
    entries = []
    for file in files:
        stat = file.stat()
        name = "." if file == path else str(file.relative_to(path))
        entries.append({"file": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return _plain({"settings": settings, "local": True, "resolved": str(root), "files": entries})


def fingerprint_base(
    corpus: CorpusSpec, scorer: DocumentScorer, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What every shard of one run shares: the corpus's identity, the scorer's fingerprint, and
    `extra` (what else decides a shard's outputs, e.g. the datatrove path's threshold)."""
    base = {"schema": SCHEMA, "corpus": corpus_identity(corpus), "scorer": scorer.fingerprint()}
    return _plain({**base, **(extra or {})})


def shard_fingerprint(base: dict[str, Any], shard_index: int, num_shards: int) -> dict[str, Any]:
    return {**base, "num_shards": num_shards, "shard_index": shard_index}


def read_done(
    output_dir: str | Path, shard_index: int, num_shards: int, base: dict[str, Any]
) -> ShardResult | None:
    """The shard's result when it is done for this fingerprint (done file matching, scores file of
    the recorded size), else None."""
    done = done_path(output_dir, shard_index, num_shards)
    scores = shard_path(output_dir, shard_index, num_shards)
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
        size = scores.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("fingerprint") != shard_fingerprint(base, shard_index, num_shards):
        return None
    if record.get("bytes") != size:
        return None
    return ShardResult(
        shard_index=shard_index,
        num_shards=num_shards,
        documents=int(record["documents"]),
        read=int(record["read"]),
        skipped=int(record["skipped"]),
        problems=list(record.get("problems", [])),
        wall_s=float(record["wall_s"]),
        cpu_s=float(record.get("cpu_s", 0.0)),
        bytes=size,
        token=str(record.get("token", "")),
        reused=True,
        kept=record.get("kept"),
    )


def _write_json(path: Path, value: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


def write_done(output_dir: str | Path, result: ShardResult, base: dict[str, Any]) -> None:
    """The shard's done file, written atomically after its scores file."""
    i, n = result.shard_index, result.num_shards
    record = {
        "fingerprint": shard_fingerprint(base, i, n),
        "documents": result.documents,
        "read": result.read,
        "skipped": result.skipped,
        "problems": result.problems[:MAX_PROBLEMS],
        "wall_s": result.wall_s,
        "cpu_s": result.cpu_s,
        "docs_per_s": None if math.isnan(result.docs_per_s) else result.docs_per_s,
        "bytes": result.bytes,
        "token": result.token,
        "kept": result.kept,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(done_path(output_dir, i, n), record)


def clear_done(output_dir: str | Path, shard_index: int, num_shards: int) -> None:
    """Remove a shard's done file (before it is recomputed)."""
    with contextlib.suppress(FileNotFoundError):
        done_path(output_dir, shard_index, num_shards).unlink()


# ----------------------------------------------------------------------------------- one shard


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_batch(scorer: DocumentScorer, texts: Sequence[str]) -> np.ndarray:
    """`scorer.score(texts)` as float64, checked to give one score per text."""
    scores = np.asarray(scorer.score(texts), dtype=np.float64)
    if scores.shape != (len(texts),):
        raise ValueError(
            f"scorer {getattr(scorer, 'name', type(scorer).__name__)!r} returned scores of shape "
            f"{scores.shape} for {len(texts)} texts"
        )
    return scores


def score_line(doc_id: str, score: float) -> str:
    """One line of a scores file: `{"id", "score"}` (the float's shortest exact repr)."""
    return json.dumps({"id": doc_id, "score": float(score)}) + "\n"


def new_stats() -> CorpusStats:
    return CorpusStats()


def check_corpus(corpus: CorpusSpec, key: str = "corpus") -> None:
    """`ConfigError` for a corpus spec that cannot be read as it is (before any process starts):
    bad settings, or a `world:<split>` path not yet resolved (`corpus.resolve_corpus`);
    `DataError` for a corpus file or directory that does not exist."""
    corpus.validate(key)
    if corpus.path.startswith(WORLD_SCHEME):
        raise ConfigError(
            f"{key}.path",
            f"{corpus.path!r} names a world split: resolve it first (corpus.resolve_corpus), "
            "or run `python -m datamodules.selection score`",
        )
    local = corpus.format != "hf" and not any(c in corpus.path for c in "*?[")
    if local and not Path(corpus.path).expanduser().exists():
        raise DataError(corpus.path, "no such file or directory (corpus.path)")


def score_shard(
    corpus: CorpusSpec,
    scorer: DocumentScorer,
    output_dir: str | Path,
    *,
    shard_index: int,
    num_shards: int,
    base: dict[str, Any],
    batch_size: int = 256,
    progress: bool = True,
    position: int = 0,
) -> ShardResult:
    """Score shard `shard_index` of `num_shards` and write its scores file and done file."""
    from tqdm.auto import tqdm

    target = shard_path(output_dir, shard_index, num_shards)
    clear_done(output_dir, shard_index, num_shards)
    stats = new_stats()
    documents = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    bar = tqdm(
        desc=f"scoring shard {shard_index}/{num_shards}",
        unit="doc",
        position=position,
        leave=False,
        disable=None if progress else True,  # None: only on a terminal
        dynamic_ncols=True,
    )
    with bar, atomic_file(target) as tmp, tmp.open("w", encoding="utf-8") as out:
        docs = iter_corpus(corpus, stats, shard_index=shard_index, num_shards=num_shards)
        for batch in batched(docs, batch_size):
            scores = score_batch(scorer, [doc.text for doc in batch])
            out.write("".join(score_line(doc.id, s) for doc, s in zip(batch, scores)))
            documents += len(batch)
            bar.update(len(batch))
    wall = time.perf_counter() - started
    result = ShardResult(
        shard_index=shard_index,
        num_shards=num_shards,
        documents=documents,
        read=int(stats.read),
        skipped=int(stats.skipped),
        problems=[str(p) for p in stats.problems],
        wall_s=wall,
        cpu_s=time.process_time() - cpu_started,
        bytes=target.stat().st_size,
        token=uuid.uuid4().hex,
    )
    write_done(output_dir, result, base)
    log.info(
        "shard %d of %d: %d documents scored in %.2f s (%.0f docs/s), %d skipped -> %s",
        shard_index,
        num_shards,
        documents,
        wall,
        result.docs_per_s,
        result.skipped,
        target,
    )
    return result


# ----------------------------------------------------------------------------------- merging


def merge_shards(
    output_dir: str | Path,
    num_shards: int,
    base: dict[str, Any],
    *,
    run: dict[str, Any] | None = None,
) -> Path | None:
    """Merge the shards into `scores.jsonl` (corpus order) and write `scores_manifest.json` when
    every shard is done for `base`; return the scores path, or None while some shard is not done.
    Nothing is rewritten when the manifest already records exactly these shards."""
    output_dir = Path(output_dir)
    results = [read_done(output_dir, i, num_shards, base) for i in range(num_shards)]
    if any(r is None for r in results):
        return None
    done: list[ShardResult] = results  # type: ignore[assignment]
    scores = output_dir / SCORES_FILE
    manifest_path = output_dir / MANIFEST_FILE
    tokens = [r.token for r in done]
    fingerprint = {**base, "num_shards": num_shards}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if (
            old.get("fingerprint") == fingerprint
            and old.get("shard_tokens") == tokens
            and old.get("bytes") == scores.stat().st_size
        ):
            log.info("%s is up to date with its %d shards", scores, num_shards)
            return scores

    # Global position p is line p // n of shard p % n: shard i holds ceil((N - i) / n) documents.
    total = sum(r.documents for r in done)
    expected = [max(0, -(-(total - i) // num_shards)) for i in range(num_shards)]
    if [r.documents for r in done] != expected:
        raise ShardFailed(
            0,
            num_shards,
            f"the shards of {output_dir} hold {[r.documents for r in done]} documents, not the "
            f"{expected} that position sharding of {total} documents gives; delete "
            f"{output_dir / SHARDS_DIR} and score again",
        )
    with contextlib.ExitStack() as stack:
        handles = [
            stack.enter_context(shard_path(output_dir, i, num_shards).open("rb"))
            for i in range(num_shards)
        ]
        tmp = stack.enter_context(atomic_file(scores))
        with tmp.open("wb") as out:
            for position in range(total):
                line = handles[position % num_shards].readline()
                if not line.endswith(b"\n"):
                    raise ShardFailed(
                        position % num_shards,
                        num_shards,
                        f"{shard_path(output_dir, position % num_shards, num_shards)} ends early",
                    )
                out.write(line)
    problems = [p for r in done for p in r.problems]
    wall_total = sum(r.wall_s for r in done)
    manifest = {
        "schema": SCHEMA,
        "fingerprint": fingerprint,
        "scores": SCORES_FILE,
        "bytes": scores.stat().st_size,
        "documents": total,
        "read": sum(r.read for r in done),
        "skipped": sum(r.skipped for r in done),
        "problems": problems[:MAX_PROBLEMS],
        "problems_total": sum(r.skipped for r in done),
        "kept": None if any(r.kept is None for r in done) else sum(r.kept for r in done),
        "num_shards": num_shards,
        "shards": [
            {
                "shard_index": r.shard_index,
                "documents": r.documents,
                "read": r.read,
                "skipped": r.skipped,
                "wall_s": r.wall_s,
                "cpu_s": r.cpu_s,
                "docs_per_s": _finite(r.docs_per_s),
                "kept": r.kept,
            }
            for r in done
        ],
        "shard_tokens": tokens,
        "scoring_wall_s": wall_total,
        "scoring_cpu_s": sum(r.cpu_s for r in done),
        "docs_per_s_per_process": _finite(total / wall_total) if wall_total > 0 else None,
        "run": run or {},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(manifest_path, manifest)
    log.info(
        "merged %d shards: %d documents (%d skipped) -> %s",
        num_shards,
        total,
        manifest["skipped"],
        scores,
    )
    return scores


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def read_scores(path: str | Path) -> tuple[list[str], np.ndarray]:
    """`(ids, scores)` of a scores file (`{"id", "score"}` per line), in file order."""
    ids, values = [], []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            ids.append(record["id"])
            values.append(record["score"])
    return ids, np.asarray(values, dtype=np.float64)


# ----------------------------------------------------------------------------------- workers


def _thread_count() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def limit_torch_threads(threads: int | None = None) -> None:
    """Set torch's intra-op threads (when torch is loaded) to `threads` (default: OMP_NUM_THREADS,
    else 1): the scorers' threads in a worker process."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads or _thread_count())


@contextlib.contextmanager
def worker_environment() -> Iterator[None]:
    """`OMP_NUM_THREADS` & co. = 1 while worker processes start, unless the user set them."""
    unset = [name for name in THREAD_VARIABLES if name not in os.environ]
    for name in unset:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


_WORKER: dict[str, Any] = {}


def _init_worker(spec: ScorerSpec, factory: ScorerFactory | None, level: int, threads: int) -> None:
    _WORKER.clear()
    _WORKER.update(spec=spec, factory=factory, scorer=None, threads=threads)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("datamodules.selection").setLevel(level)  # the parent's verbosity


def _worker_scorer() -> DocumentScorer:
    if _WORKER["scorer"] is None:
        factory = _WORKER["factory"] or build_scorer
        _WORKER["scorer"] = factory(_WORKER["spec"])
        limit_torch_threads(_WORKER["threads"])
    return _WORKER["scorer"]


def _worker_shard(job: dict[str, Any]) -> dict[str, Any]:
    """Score one shard in a worker; return its result or a picklable description of its error
    (exceptions with their own `__init__` signature, like `DataError`, do not survive pickling)."""
    try:
        result = score_shard(scorer=_worker_scorer(), **job)
        return {"ok": True, "result": asdict(result)}
    except Exception as err:
        return {
            "ok": False,
            "shard_index": job["shard_index"],
            "user": isinstance(err, AdaptLMError),
            "kind": type(err).__name__,
            "message": str(err),
            "traceback": traceback.format_exc(),
        }


def _raise_worker_error(reply: dict[str, Any], num_shards: int) -> None:
    if reply["user"]:
        raise ShardError(reply["shard_index"], num_shards, reply["message"], reply["kind"])
    raise ShardFailed(
        reply["shard_index"],
        num_shards,
        f"{reply['kind']}: {reply['message']}",
        reply["traceback"],
    )


def _run_in_process(
    scorer: DocumentScorer, jobs: list[dict[str, Any]], num_shards: int
) -> Iterator[ShardResult]:
    for job in jobs:
        try:
            yield score_shard(scorer=scorer, **job)
        except AdaptLMError as err:
            raise ShardError(job["shard_index"], num_shards, str(err), type(err).__name__) from err
        except Exception as err:
            raise ShardFailed(
                job["shard_index"], num_shards, f"{type(err).__name__}: {err}"
            ) from err


def _run_in_pool(
    spec: ScorerSpec,
    factory: ScorerFactory | None,
    jobs: list[dict[str, Any]],
    num_shards: int,
    processes: int,
    start_method: str,
) -> Iterator[ShardResult]:
    """The jobs in a `ProcessPoolExecutor` (a worker that dies — killed, out of memory — breaks
    the pool with an error instead of hanging it); the first failure cancels the jobs not
    started and stops the workers."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor

    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # The server imports this module (and torch, through `datamodules`) once; workers fork
        # from it instead of importing it again each (seconds per worker).
        context.set_forkserver_preload(PRELOAD)
    level = logging.getLogger("datamodules.selection").getEffectiveLevel()
    with worker_environment():
        pool = ProcessPoolExecutor(
            max_workers=min(processes, len(jobs)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(spec, factory, level, _thread_count()),
        )
        pending = {pool.submit(_worker_shard, job): job["shard_index"] for job in jobs}
    failed = True
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                try:
                    reply = future.result()
                except BrokenProcessPool as err:
                    raise ShardFailed(
                        index,
                        num_shards,
                        f"a worker process died ({err}); shards not finished: "
                        f"{sorted([index, *pending.values()])}",
                    ) from err
                except Exception as err:  # e.g. the job could not be pickled
                    raise ShardFailed(index, num_shards, f"{type(err).__name__}: {err}") from err
                if not reply["ok"]:
                    _raise_worker_error(reply, num_shards)
                yield ShardResult(**reply["result"])
        failed = False
    finally:
        if failed:
            _stop(pool)
        pool.shutdown(wait=True, cancel_futures=True)


def _stop(pool: Any) -> None:
    """Terminate the workers of a `ProcessPoolExecutor` (after a failure: fail fast)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()


# ----------------------------------------------------------------------------------- the entry point


def check_sharding(num_shards: int, shard_index: int | None, processes: int, batch_size: int):
    """`ConfigError` naming the key for a shard count, index, process count or batch size that
    cannot work."""
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError("num_shards", f"must be an integer ≥ 1, got {num_shards!r}")
    if shard_index is not None and (
        not isinstance(shard_index, int) or not 0 <= shard_index < num_shards
    ):
        raise ConfigError(
            "shard_index",
            f"must be in 0..{num_shards - 1} for num_shards={num_shards}, got {shard_index!r}",
        )
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError("processes", f"must be an integer ≥ 1, got {processes!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", f"must be an integer ≥ 1, got {batch_size!r}")


def score_corpus(
    corpus: CorpusSpec,
    scorer: ScorerSpec,
    output_dir: str | Path,
    *,
    num_shards: int = 1,
    shard_index: int | None = None,
    processes: int = 1,
    batch_size: int = 256,
    progress: bool = True,
    start_method: str = "forkserver",
    scorer_factory: ScorerFactory | None = None,
) -> Path:
    """Score `corpus` with `scorer` into `output_dir` (module docstring), resumably.

    Args:
        num_shards: shards by position (document `p` in shard `p % num_shards`).
        shard_index: None runs every shard that is not done; `i` runs shard `i` only.
        processes: worker processes for `shard_index=None` (1: this process).
        batch_size: texts per `scorer.score` call.
        progress: tqdm bars (on a terminal only).
        start_method: the pool's `multiprocessing` start method: `forkserver` (default; the
            server preloads this module once, workers fork from it) or `spawn`.
        scorer_factory: a picklable `ScorerSpec -> DocumentScorer` (default `build_scorer`).

    Returns:
        `output_dir/scores.jsonl` once every shard is done (always, for `shard_index=None`);
        the shard's own scores file while other shards of a `shard_index=i` run are missing.

    Raises:
        ConfigError: a bad shard count, index, process count or batch size (and whatever
            `build_scorer` raises for the spec).
        ShardError: a user error (`AdaptLMError`) in a shard, its message kept.
        ShardFailed: any other error in a shard.
    """
    check_sharding(num_shards, shard_index, processes, batch_size)
    check_corpus(corpus)
    if shard_index is None and processes > num_shards:
        log.warning(
            "processes=%d > num_shards=%d: only %d process(es) can work (one shard each); "
            "set num_shards to a multiple of processes",
            processes,
            num_shards,
            num_shards,
        )
    output_dir = Path(output_dir)
    factory = scorer_factory or build_scorer
    started = time.perf_counter()
    local_scorer = factory(scorer)  # its fingerprint decides which shards are done
    limit_torch_threads(torch_threads_default())
    base = fingerprint_base(corpus, local_scorer)
    wanted = range(num_shards) if shard_index is None else [shard_index]
    results: dict[int, ShardResult] = {}
    jobs = []
    for i in wanted:
        done = read_done(output_dir, i, num_shards, base)
        if done is not None:
            log.info(
                "shard %d of %d already done (%d documents, same fingerprint); skipping %s",
                i,
                num_shards,
                done.documents,
                shard_path(output_dir, i, num_shards),
            )
            results[i] = done
        else:
            jobs.append(
                dict(
                    corpus=corpus,
                    output_dir=output_dir,
                    shard_index=i,
                    num_shards=num_shards,
                    base=base,
                    batch_size=batch_size,
                    progress=progress,
                )
            )
    from tqdm.auto import tqdm

    overall = tqdm(
        total=len(wanted),
        initial=len(results),
        desc="shards",
        unit="shard",
        disable=None if progress and len(wanted) > 1 else True,
        position=processes if processes > 1 else 1,
        dynamic_ncols=True,
    )
    with overall:
        if jobs and (processes == 1 or len(jobs) == 1):
            computed = _run_in_process(local_scorer, jobs, num_shards)
        elif jobs:
            del local_scorer  # the workers build their own
            for slot, job in enumerate(jobs):
                job["position"] = slot % processes
            computed = _run_in_pool(
                scorer, scorer_factory, jobs, num_shards, processes, start_method
            )
        else:
            computed = iter(())
        for result in computed:
            results[result.shard_index] = result
            overall.update(1)
    wall = time.perf_counter() - started
    fresh = [r for r in results.values() if not r.reused]
    scored = sum(r.documents for r in fresh)
    run = {
        "wall_s": wall,
        "processes": processes,
        "shards_computed": sorted(r.shard_index for r in fresh),
        "shards_reused": sorted(r.shard_index for r in results.values() if r.reused),
        "documents_scored": scored,
        "docs_per_s": scored / wall if fresh and wall > 0 else None,
    }
    merged = merge_shards(output_dir, num_shards, base, run=run)
    if merged is not None:
        return merged
    assert shard_index is not None  # every shard ran
    log.info(
        "shard %d of %d is done; %s is written when the other shards are",
        shard_index,
        num_shards,
        output_dir / SCORES_FILE,
    )
    return shard_path(output_dir, shard_index, num_shards)


def torch_threads_default() -> int | None:
    """None (torch's own default) unless `OMP_NUM_THREADS` is set."""
    return _thread_count() if "OMP_NUM_THREADS" in os.environ else None


# ----------------------------------------------------------------------------------- command line


@dataclass
class ScoreCommand:
    """`python -m datamodules.selection.sharded`: score a corpus, sharded and resumable."""

    corpus: CorpusSpec
    """The corpus to score (`--corpus.path`, `--corpus.text_field`, …)."""
    scorer: ScorerSpec
    """The scorer (`--scorer.kind fasttext --scorer.path model.bin`, …)."""
    output_dir: str
    """Where `shards/`, `scores.jsonl` and `scores_manifest.json` go."""
    num_shards: int = 1
    """Shards by position: document p belongs to shard p % num_shards."""
    shard_index: str | None = None
    """Run this shard only: an integer, or `slurm` (SLURM_ARRAY_TASK_ID); unset: every shard."""
    processes: int = 1
    """Worker processes when every shard runs here (1: this process)."""
    batch_size: int = 256
    """Texts per score call."""
    progress: bool = True
    """tqdm progress bars (on a terminal only)."""


def build_parser(command: type, prog: str, description: str) -> Any:
    """A jsonargparse parser of the dataclass `command` (its fields' docstrings are the help),
    with `--config` YAML files."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog=prog, description=description, exit_on_error=False, default_env=False
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config file")
    parser.add_class_arguments(command, fail_untyped=True, sub_configs=True)
    return parser


def parse_command(command: type, parser: Any, argv: Sequence[str] | None) -> Any:
    """`command` (a dataclass) from the command line; an unknown or ill-typed option is a
    `ConfigError`."""
    from experiments.config_errors import parse_arguments

    init = parse_arguments(parser, argv)
    values = {k: init[k] for k in command.__dataclass_fields__ if k in init}
    return command(**values)


def run_main(prog: str, run: Callable[[], Any], logger: logging.Logger) -> Any:
    """`experiments.config_errors.run_main`: logging set up, a user error one line and status 2."""
    from experiments.config_errors import run_main as _run_main

    return _run_main(prog, run, logger)


def slurm_shard_index(value: str | int | None) -> int | None:
    """`--shard_index`: an integer, `slurm` (the array task id `SLURM_ARRAY_TASK_ID`) or None."""
    if value is None or isinstance(value, int):
        return value
    if str(value).lower() == "slurm":
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        if task is None:
            raise ConfigError(
                "shard_index",
                "'slurm' needs SLURM_ARRAY_TASK_ID (run it as an sbatch --array task)",
            )
        return int(task)
    try:
        return int(value)
    except ValueError:
        raise ConfigError("shard_index", f"expected an integer or 'slurm', got {value!r}") from None


PROG = "datamodules.selection.sharded"


def main(argv: Sequence[str] | None = None) -> Path:
    """`python -m datamodules.selection.sharded --corpus.path web.jsonl --scorer.kind fasttext
    --scorer.path model.bin --output_dir out --num_shards 8 [--shard_index slurm | --processes 2]`;
    prints the path written (`scores.jsonl`, or the shard's file while others are missing)."""

    def run() -> Path:
        parser = build_parser(
            ScoreCommand,
            f"python -m {PROG}",
            "Score a corpus with one of TRAIT's document scorers, sharded by position, in "
            "several processes or as one task of an array job, resumably (see the module "
            "docstring of datamodules/selection/sharded.py).",
        )
        command: ScoreCommand = parse_command(ScoreCommand, parser, argv)
        return score_corpus(
            command.corpus,
            command.scorer,
            command.output_dir,
            num_shards=command.num_shards,
            shard_index=slurm_shard_index(command.shard_index),
            processes=command.processes,
            batch_size=command.batch_size,
            progress=command.progress,
        )

    path = run_main(PROG, run, log)
    print(path)
    return path


__all__ = [
    "MANIFEST_FILE",
    "SCORES_FILE",
    "ScoreCommand",
    "ShardError",
    "ShardFailed",
    "ShardResult",
    "corpus_identity",
    "done_path",
    "fingerprint_base",
    "main",
    "merge_shards",
    "read_done",
    "read_scores",
    "score_corpus",
    "score_shard",
    "shard_path",
    "slurm_shard_index",
]


if __name__ == "__main__":
    # The importable module's `main`: what the workers unpickle then names a real module.
    from datamodules.selection.sharded import main as _main

    _main()
