"""The corpora TRAIT's selection reads: documents with ids, read tolerantly.

A corpus is JSONL (one object per line), Parquet, an HF dataset (a `save_to_disk` directory, or a
dataset name in the local cache with `format: hf`), or `world:<split>` (a split of the synthetic
world, resolved by `resolve_corpus`). Every record must hold a string text (`text_field`) and an
id (`id_field`: a string, or an integer taken as its decimal text; `id_field: null` uses the
record's 0-based position among all records as the id).

Unlike the training readers (`datamodules.sources`), which stop at the first bad record, a corpus
to filter is large and dirty: an unreadable record (a line that is not UTF-8 / JSON / an object,
a missing or non-string text, a missing, ill-typed or duplicate id) is **skipped**, counted in
`CorpusStats` and logged with its file and line (the first `MAX_PROBLEMS` of them; the counts are
complete). A missing file, or a corpus without a single readable document, is a `DataError`.

Sharding (`iter_corpus(..., shard_index=i, num_shards=n)`): the *position* of a document is its
0-based index among the readable documents, so shard `i` yields the documents at positions
`p % n == i` and the shards interleave round-robin back into corpus order
(`datamodules.selection.sharded` relies on it). Every shard reads the whole corpus (to know the
positions and to find duplicate ids) and yields only its own documents; an unreadable record is
counted and logged by the shard `record_index % n` only, so counts summed over the shards are the
corpus's counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from common.errors import ConfigError, DataError
from common.jsonl import BadLine, read_jsonl_lines
from datamodules.sources import ReadStats, SourceSpec, detect_format, read_raw_fields, resolve_files

log = logging.getLogger(__name__)

WORLD_SCHEME = "world:"
FORMATS: tuple[str, ...] = ("auto", "jsonl", "parquet", "hf")
MAX_PROBLEMS = 20
"""Unreadable records described (kept in `CorpusStats.problems` and logged) per read."""


@dataclass
class CorpusSpec:
    """A corpus of documents with ids.

    Args:
        path: A JSONL / Parquet file, a directory or glob of them, an HF dataset (a
            `save_to_disk` directory, or a cached dataset name with `format: hf`), or
            `world:<split>` (a split of the synthetic world of the config's `world`).
        format: `auto` (from the suffixes / directory contents), `jsonl`, `parquet` or `hf`.
        id_field: The field holding each document's id (a string, or an integer); null: the
            record's 0-based position among all records, as a string.
        text_field: The field holding the text.
        split: Split of an HF dataset.
        world_seed: For a `world:<split>` path only: read the split from the world of this seed
            (the config's world otherwise unchanged), e.g. labelled examples from another draw
            of the world, disjoint from the corpus being filtered; null: the config's world.
    """

    path: str
    format: Literal["auto", "jsonl", "parquet", "hf"] = "auto"
    id_field: str | None = "id"
    text_field: str = "text"
    split: str = "train"
    world_seed: int | None = None

    def validate(self, key: str) -> None:
        """Check the values without reading anything; `ConfigError` naming `<key>.<field>`."""
        if not isinstance(self.path, str) or not self.path.strip():
            raise ConfigError(f"{key}.path", "must be a non-empty path")
        if self.format not in FORMATS:
            raise ConfigError(
                f"{key}.format", f"must be one of {list(FORMATS)}, got {self.format!r}"
            )
        if self.id_field is not None and (not isinstance(self.id_field, str) or not self.id_field):
            raise ConfigError(f"{key}.id_field", "must be a field name or null (positions)")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ConfigError(f"{key}.text_field", "must be a field name")
        if self.id_field is not None and self.id_field == self.text_field:
            raise ConfigError(f"{key}.id_field", f"must differ from text_field {self.text_field!r}")
        if self.world_seed is not None:
            if isinstance(self.world_seed, bool) or not isinstance(self.world_seed, int):
                raise ConfigError(
                    f"{key}.world_seed", f"must be an integer, got {self.world_seed!r}"
                )
            if not self.path.startswith(WORLD_SCHEME):
                raise ConfigError(
                    f"{key}.world_seed", f"applies to world:<split> paths only, not {self.path!r}"
                )


@dataclass
class Document:
    """One readable document."""

    id: str
    text: str


@dataclass
class CorpusStats:
    """Counts of one read (of one shard, when sharded: see the module docstring).

    Attributes:
        read: Documents yielded.
        skipped: Unreadable records skipped.
        problems: `"file:line: what"` of the first `MAX_PROBLEMS` skipped records (the counts are
            complete).
    """

    read: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def add_problem(self, problem: str) -> None:
        """Count one skipped record; keep and log its description while under the limit."""
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
            log.warning("skipping an unreadable record: %s", problem)
            if len(self.problems) == MAX_PROBLEMS:
                log.warning(
                    "%d unreadable records so far; further ones are counted, not logged",
                    MAX_PROBLEMS,
                )


# ----------------------------------------------------------------------------------- world paths

WorldSplit = Callable[[str, "int | None"], Path]
"""`(split, world_seed) -> JSONL path` of a materialized world (`WorldSplits`)."""


class WorldSplits:
    """`(split, seed) -> path` of the splits of `world` (a `WorldConfig`) and of its re-seeded
    copies, each world materialized (or reused from `cache_dir`) on its first use only."""

    def __init__(self, world: Any, cache_dir: str | Path, key: str = "world") -> None:
        self.world = world
        self.cache_dir = Path(cache_dir)
        self.key = key
        self._artifacts: dict[int | None, Any] = {}

    def artifacts(self, seed: int | None = None) -> Any:
        """The `WorldArtifacts` of the world (of seed `seed`; None: the config's own seed)."""
        if seed is not None and seed == self.world.seed:
            seed = None
        if seed not in self._artifacts:
            from datamodules.world.materialize import materialize_world

            config = self.world if seed is None else replace(self.world, seed=seed)
            self._artifacts[seed] = materialize_world(config, self.cache_dir, key_prefix=self.key)
        return self._artifacts[seed]

    def __call__(self, split: str, seed: int | None = None) -> Path:
        """The JSONL file of `split` (`DataError` for an unknown split)."""
        return self.artifacts(seed).split_path(split)

    def tokenizer_dir(self) -> Path:
        """The world's trained tokenizer (`AutoTokenizer.from_pretrained` directory)."""
        return self.artifacts(None).tokenizer_dir


def resolve_corpus(
    spec: CorpusSpec, *, key: str, world_split: WorldSplit | None = None
) -> CorpusSpec:
    """`spec` with a `world:<split>` path replaced by the split's JSONL file (read from the world
    of `spec.world_seed` when set); other paths pass through. Validates `spec` first."""
    spec.validate(key)
    if not spec.path.startswith(WORLD_SCHEME):
        return spec
    if world_split is None:
        raise ConfigError(
            f"{key}.path", f"{spec.path!r} names a world split, but no world is given"
        )
    split = spec.path[len(WORLD_SCHEME) :]
    path = world_split(split, spec.world_seed)
    return replace(spec, path=str(path), format="jsonl", world_seed=None)


# ----------------------------------------------------------------------------------- reading


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_MISSING = object()


def _jsonl_records(spec: CorpusSpec) -> Iterator[tuple[str, Any]]:
    """`(where, record_or_problem)` per non-blank line of every JSONL file: the parsed object, or
    a `_Problem` for a line that is not UTF-8, not JSON or not an object."""
    for path in resolve_files(SourceSpec(path=spec.path, format="jsonl"), "jsonl"):
        for number, parsed in read_jsonl_lines(path):
            where = f"{path}:{number}"
            yield where, _Problem(parsed.message) if isinstance(parsed, BadLine) else parsed


@dataclass(frozen=True)
class _Problem:
    message: str


def _raw(spec: CorpusSpec) -> Iterator[tuple[str, Any, Any]]:
    """`(where, id_value, text_value)` per record (`_MISSING` where a field is absent), or
    `(where, _Problem, None)` for a record that cannot even be parsed."""
    fmt = detect_format(SourceSpec(path=spec.path, format=spec.format, split=spec.split))
    if fmt == "text":
        raise DataError(spec.path, "a corpus holds records (jsonl, parquet, hf), not text files")
    if fmt == "jsonl":
        for where, record in _jsonl_records(spec):
            if isinstance(record, _Problem):
                yield where, record, None
                continue
            doc_id = _MISSING if spec.id_field is None else record.get(spec.id_field, _MISSING)
            yield where, doc_id, record.get(spec.text_field, _MISSING)
        return
    source = SourceSpec(path=spec.path, format=fmt, split=spec.split)  # type: ignore[arg-type]
    fields = (spec.text_field,) if spec.id_field is None else (spec.text_field, spec.id_field)
    from datamodules import sources

    for where, values in read_raw_fields(source, ReadStats(), fields, what="corpus documents"):
        text = _MISSING if values[0] is sources._MISSING else values[0]
        doc_id: Any = _MISSING
        if spec.id_field is not None and values[1] is not sources._MISSING:
            doc_id = values[1]
        location = f"{where.source}:{where.line}" if where.line is not None else where.source
        if where.record:
            location = f"{location}: {where.record.rstrip(': ')}"
        yield location, doc_id, text


def _document(
    spec: CorpusSpec, where: str, doc_id: Any, text: Any, index: int, seen: set[str]
) -> Document | str:
    """The record as a `Document`, or the description of why it is unreadable."""
    if isinstance(doc_id, _Problem):
        return f"{where}: {doc_id.message}"
    if text is _MISSING:
        return f"{where}: no field {spec.text_field!r} (text_field)"
    if not isinstance(text, str):
        return f"{where}: field {spec.text_field!r} must be a string, got {_kind(text)}"
    if spec.id_field is None:
        ident = str(index)
    elif doc_id is _MISSING:
        return f"{where}: no field {spec.id_field!r} (id_field; null uses positions)"
    elif isinstance(doc_id, str) and doc_id:
        ident = doc_id
    elif isinstance(doc_id, int) and not isinstance(doc_id, bool):
        ident = str(doc_id)
    else:
        kind = _kind(doc_id)
        return (
            f"{where}: field {spec.id_field!r} must be a non-empty string or an integer, got {kind}"
        )
    if ident in seen:
        return f"{where}: duplicate id {ident!r} (the first record with it is kept)"
    seen.add(ident)
    return Document(ident, text)


def iter_corpus(
    spec: CorpusSpec, stats: CorpusStats, *, shard_index: int = 0, num_shards: int = 1
) -> Iterator[Document]:
    """The readable documents of `spec` in corpus order, only those at positions
    `p % num_shards == shard_index` (module docstring); unreadable records are skipped, counted
    in `stats` and logged with file and line.

    `spec.path` must be a file path here (a `world:` path is resolved by `resolve_corpus`).

    Raises:
        DataError: a missing file or directory, an unreadable Parquet / HF dataset, a corpus without
            a readable document.
        ConfigError: bad shard arguments or settings.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError("num_shards", f"must be an integer >= 1, got {num_shards!r}")
    if (
        isinstance(shard_index, bool)
        or not isinstance(shard_index, int)
        or not 0 <= shard_index < num_shards
    ):
        raise ConfigError(
            "shard_index", f"must be an integer in [0, {num_shards - 1}], got {shard_index!r}"
        )
    if spec.path.startswith(WORLD_SCHEME):
        raise ConfigError("corpus.path", f"{spec.path!r} must be resolved first (resolve_corpus)")
    seen: set[str] = set()
    position = 0
    records = 0
    first_problem: str | None = None
    for index, (where, doc_id, text) in enumerate(_raw(spec)):
        records += 1
        result = _document(spec, where, doc_id, text, index, seen)
        if isinstance(result, str):
            first_problem = first_problem or result
            if index % num_shards == shard_index:
                stats.add_problem(result)
            continue
        if position % num_shards == shard_index:
            stats.read += 1
            yield result
        position += 1
    if position == 0:
        detail = f" (first problem: {first_problem})" if first_problem else ""
        raise DataError(
            spec.path,
            f"no readable document among {records} records{detail}",
        )


def read_corpus(spec: CorpusSpec, stats: CorpusStats | None = None) -> list[Document]:
    """Every readable document of `spec` (already resolved), in corpus order."""
    return list(iter_corpus(spec, stats if stats is not None else CorpusStats()))


__all__ = [
    "FORMATS",
    "MAX_PROBLEMS",
    "WORLD_SCHEME",
    "CorpusSpec",
    "CorpusStats",
    "Document",
    "WorldSplits",
    "iter_corpus",
    "read_corpus",
    "resolve_corpus",
]
