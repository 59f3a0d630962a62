"""Data sources: what to read (`SourceSpec`) and readers that validate every record.

A reader yields the text of each document in a fixed order and raises one `DataError` naming the
file and line (JSONL, text) or record index (Parquet, HF datasets) on the first bad record. Empty or
whitespace-only documents are skipped and counted in `ReadStats`, never silently dropped.

With `SourceSpec.prompt_field` (SFT with masked prompts), `read_records` yields `(text, prompt)`
pairs, the prompt a prefix of the text (else a `DataError` naming the record); the store then
gives the prompt's tokens no loss.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.errors import ConfigError, DataError
from common.jsonl import read_jsonl

log = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "parquet", "text", "hf")
KINDS = ("document", "sample")
LOSS_WEIGHTINGS = ("token", "sample")
OVERLONG_POLICIES = ("truncate", "skip")

_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_TEXT_SUFFIXES = (".txt", ".text", ".md")
# Sources up to this total size are fingerprinted by content, larger ones by size and mtime.
_CONTENT_HASH_LIMIT = 256 * 1024 * 1024
_BATCH = 1024


@dataclass
class SourceSpec:
    """One data source.

    Args:
        path: A file, a directory or a glob pattern (JSONL, Parquet, text files), a directory
            written by `datasets.Dataset.save_to_disk`, a local directory of data files or a dataset
            name for `datasets.load_dataset` (offline: it must already be in the HF cache).
            Subclasses of the data module may resolve special paths (for example `world:<split>`).
        name: Short name used in logs and statistics; defaults to the file or directory name.
        format: `auto` (from the suffix: .jsonl/.json/.ndjson, .parquet/.pq, .txt/.text/.md, a
            `save_to_disk` directory), `jsonl` (one JSON object per line), `parquet`, `text` (one
            document per file; a directory means all its .txt/.text/.md files, recursively) or `hf`.
        text_field: The field (JSONL, HF) or column (Parquet) holding the text.
        split: Split of an HF dataset (`load_dataset` or a saved `DatasetDict`); ignored otherwise.
        kind: `document` (pre-training text: may be split across rows) or `sample` (a chat, a pair:
            never split; a sample longer than the row is handled by `overlong_policy`).
        ratio: Token-level mixture ratio among the train sources (give all or none; they must sum to
            1). Ignored for validation sources.
        overlong_policy: For `kind: sample`: `truncate` keeps the first `max_length` tokens, `skip`
            drops the sample. Either way the count is logged.
        loss_weighting: How the loss of an optimizer step averages over its targets. `token`: every
            target token weighs 1 (the token mean; with `prompt_field`, the completion-token mean).
            `sample`: each sample/document segment of a row weighs 1 in all, its targets
            `1 / n_targets` each (the per-sample mean; with `prompt_field`, over the completion's
            targets). All train sources must use the same one.
        prompt_field: For `kind: sample` (SFT with masked prompts): the field (JSONL, HF) or column
            (Parquet) holding each record's prompt, a prefix of its `text_field` (the whole sample).
            Tokens lying entirely inside the prompt (end offset <= prompt length) get no loss
            (`labels = -100`): the loss is on the completion and its end token only. A record whose
            prompt is not a prefix of its text is an error. Needs a fast tokenizer. Default: none
            (every token is a target).
    """

    path: str
    name: str | None = None
    format: Literal["auto", "jsonl", "parquet", "text", "hf"] = "auto"
    text_field: str = "text"
    split: str = "train"
    kind: Literal["document", "sample"] = "document"
    ratio: float | None = None
    overlong_policy: Literal["truncate", "skip"] = "truncate"
    loss_weighting: Literal["token", "sample"] = "token"
    prompt_field: str | None = None

    @property
    def display_name(self) -> str:
        """The configured name, or the last component of the path."""
        if self.name:
            return self.name
        stem = Path(str(self.path).rstrip("/")).name
        return stem or str(self.path)

    def validate(self, key: str) -> None:
        """Check the enumerated fields; `key` is the config key of this spec (for the message)."""
        if not str(self.path):
            raise ConfigError(f"{key}.path", "must not be empty")
        for attr, allowed in (
            ("format", FORMATS),
            ("kind", KINDS),
            ("overlong_policy", OVERLONG_POLICIES),
            ("loss_weighting", LOSS_WEIGHTINGS),
        ):
            value = getattr(self, attr)
            if value not in allowed:
                raise ConfigError(f"{key}.{attr}", f"must be one of {list(allowed)}, got {value!r}")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ConfigError(f"{key}.text_field", "must be a non-empty string")
        if self.prompt_field is not None:
            if not isinstance(self.prompt_field, str) or not self.prompt_field:
                raise ConfigError(f"{key}.prompt_field", "must be a non-empty string or null")
            if self.kind != "sample":
                raise ConfigError(
                    f"{key}.prompt_field",
                    f"masked prompts need `kind: sample` (a sample is never split), got kind "
                    f"{self.kind!r}",
                )
            if self.prompt_field == self.text_field:
                raise ConfigError(
                    f"{key}.prompt_field",
                    f"must differ from text_field {self.text_field!r} (the text is the whole "
                    "sample, the prompt its prefix)",
                )
            if self.format == "text":
                raise ConfigError(
                    f"{key}.prompt_field",
                    "text files have no fields; use jsonl, parquet or hf records",
                )


def as_source_spec(value: SourceSpec | dict[str, Any], key: str) -> SourceSpec:
    """Accept a `SourceSpec` or a plain dict (Python callers) and validate it."""
    if isinstance(value, dict):
        try:
            value = SourceSpec(**value)
        except TypeError as err:
            raise ConfigError(key, f"not a valid source: {err}") from None
    if not isinstance(value, SourceSpec):
        raise ConfigError(key, f"expected a source mapping, got {type(value).__name__}")
    value.validate(key)
    return value


@dataclass
class ReadStats:
    """Counts gathered while reading one source."""

    documents: int = 0
    skipped_empty: int = 0
    files: list[str] = field(default_factory=list)


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _is_saved_hf_dir(path: Path) -> bool:
    return path.is_dir() and any(
        (path / marker).is_file()
        for marker in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def detect_format(spec: SourceSpec) -> str:
    """The concrete format of `spec` (resolving `auto` from suffixes and directory contents)."""
    if spec.format != "auto":
        return spec.format
    path = str(spec.path)
    candidates: list[Path]
    if _has_glob(path):
        candidates = [Path(p) for p in sorted(glob.glob(path, recursive=True))]
    else:
        p = Path(path)
        if _is_saved_hf_dir(p):
            return "hf"
        candidates = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    suffixes = {c.suffix.lower() for c in candidates if c.name and not c.name.startswith(".")}
    for fmt, known in (
        ("jsonl", _JSONL_SUFFIXES),
        ("parquet", _PARQUET_SUFFIXES),
        ("text", _TEXT_SUFFIXES),
    ):
        if suffixes and suffixes <= set(known):
            return fmt
    if not candidates or not any(c.exists() for c in candidates):
        raise DataError(
            path,
            "no such file, directory or glob match (set `format: hf` for a dataset name)",
        )
    raise DataError(
        path,
        f"cannot infer the format from suffixes {sorted(suffixes)}; set `format` to one of "
        f"{list(FORMATS[1:])}",
    )


def resolve_files(spec: SourceSpec, fmt: str | None = None) -> list[Path]:
    """The data files of a file-based source in reading order (sorted paths)."""
    fmt = fmt or detect_format(spec)
    path = str(spec.path)
    suffixes = {"jsonl": _JSONL_SUFFIXES, "parquet": _PARQUET_SUFFIXES, "text": _TEXT_SUFFIXES}
    if fmt == "hf":
        p = Path(path)
        return sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []
    if _has_glob(path):
        files = [Path(p) for p in sorted(glob.glob(path, recursive=True)) if Path(p).is_file()]
    elif Path(path).is_dir():
        files = sorted(
            x
            for x in Path(path).rglob("*")
            if x.is_file()
            and x.suffix.lower() in suffixes[fmt]
            and not any(part.startswith(".") for part in x.relative_to(path).parts)
        )
    elif Path(path).is_file():
        files = [Path(path)]
    else:
        raise DataError(path, "no such file or directory")
    if not files:
        raise DataError(path, f"no {fmt} files found (expected suffixes {list(suffixes[fmt])})")
    return files


def source_fingerprint(spec: SourceSpec) -> dict[str, Any]:
    """What identifies the content of a source: its files' paths, sizes and content hashes (size and
    modification time instead of content when the source exceeds 256 MiB, so that a large corpus is
    not re-read at every start), or the `datasets` fingerprint of a dataset loaded by name."""
    fmt = detect_format(spec)
    files = resolve_files(spec, fmt)
    stats = [f.stat() for f in files]
    by_content = sum(st.st_size for st in stats) <= _CONTENT_HASH_LIMIT
    entries = []
    for f, st in zip(files, stats):
        if by_content:
            digest = hashlib.blake2b(f.read_bytes(), digest_size=16).hexdigest()
            entries.append([str(f), st.st_size, digest])
        else:
            entries.append([str(f), st.st_size, st.st_mtime_ns])
    info: dict[str, Any] = {"format": fmt, "files": entries}
    if fmt == "hf":
        info["split"] = spec.split
        if not files:  # a dataset name: identified by the fingerprint `datasets` computes
            info["dataset_fingerprint"] = getattr(_load_hf(spec), "_fingerprint", None)
    return info


def read_documents(spec: SourceSpec, stats: ReadStats) -> Iterator[str]:
    """Yield the non-empty texts of `spec` in order; count skipped empty ones in `stats`."""
    for text, _prompt in read_records(spec, stats):
        yield text


def read_records(spec: SourceSpec, stats: ReadStats) -> Iterator[tuple[str, str | None]]:
    """Yield `(text, prompt)` for the non-empty texts of `spec` in order (`prompt` is None without
    `spec.prompt_field`, else a validated prefix of `text`); count skipped empty ones in `stats`."""
    fmt = detect_format(spec)
    readers = {"jsonl": _read_jsonl, "parquet": _read_parquet, "text": _read_text, "hf": _read_hf}
    fields = _fields(spec)
    for values in readers[fmt](spec, stats, fields):
        text = values[0]
        if text.strip():
            stats.documents += 1
            yield text, (values[1] if len(values) > 1 else None)
        else:
            stats.skipped_empty += 1
    if stats.skipped_empty:
        log.warning(
            "source %s: skipped %d empty or whitespace-only documents (%d kept)",
            spec.display_name,
            stats.skipped_empty,
            stats.documents,
        )
    if stats.documents == 0:
        raise DataError(
            spec.path,
            f"no non-empty documents ({stats.skipped_empty} empty or whitespace-only skipped)",
        )


def _fields(spec: SourceSpec) -> tuple[str, ...]:
    """The fields a reader extracts: the text, then the prompt when there is one."""
    if spec.prompt_field is None:
        return (spec.text_field,)
    return (spec.text_field, spec.prompt_field)


def _check_prompt(
    values: tuple[str, ...],
    fields: tuple[str, ...],
    source: str,
    line: int | None,
    record: str = "",
) -> None:
    """A `DataError` unless the prompt (`values[1]`, if any) is a prefix of the text."""
    if len(values) < 2:
        return
    text, prompt = values[0], values[1]
    if text.startswith(prompt):
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(text, prompt)) if a != b), min(len(text), len(prompt))
    )
    what = (
        f"the prompt is longer than the text ({len(prompt)} > {len(text)} characters)"
        if at == len(text)
        else f"they differ at character {at} (prompt {prompt[at : at + 20]!r}, "
        f"text {text[at : at + 20]!r})"
    )
    raise DataError(
        source,
        f"{record}field {fields[1]!r} is not a prefix of field {fields[0]!r}: {what}; "
        f"the text must be the whole sample, starting with its prompt",
        line,
    )


def _field_text(
    record: Any, field_name: str, source: str, line: int, what: str, setting: str = "text_field"
) -> str:
    """The text field of one decoded record, or a `DataError` saying what was expected."""
    if not isinstance(record, dict):
        raise DataError(source, f"{what} must be a JSON object, got {type(record).__name__}", line)
    if field_name not in record:
        present = ", ".join(repr(k) for k in list(record)[:10]) or "none"
        raise DataError(
            source,
            f"{what} has no field {field_name!r} (fields present: {present}); set `{setting}`",
            line,
        )
    value = record[field_name]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise DataError(source, f"field {field_name!r} must be a string, got {kind}", line)
    return value


def _utf8_error(source: str, data: bytes, err: UnicodeDecodeError, line: int | None) -> DataError:
    bad = data[err.start : err.start + 1].hex()
    return DataError(
        source,
        f"not valid UTF-8 (byte 0x{bad} at byte {err.start}"
        f"{' of the line' if line is not None else ''}); re-encode the file as UTF-8",
        line,
    )


def _read_jsonl(
    spec: SourceSpec, stats: ReadStats, fields: tuple[str, ...]
) -> Iterator[tuple[str, ...]]:
    settings = ("text_field", "prompt_field")
    for path in resolve_files(spec, "jsonl"):
        source = str(path)
        stats.files.append(source)
        for line_no, record in read_jsonl(path):
            values = tuple(
                _field_text(record, name, source, line_no, "record", setting)
                for name, setting in zip(fields, settings)
            )
            _check_prompt(values, fields, source, line_no)
            yield values


def _read_text(
    spec: SourceSpec, stats: ReadStats, fields: tuple[str, ...]
) -> Iterator[tuple[str, ...]]:
    if len(fields) > 1:
        raise DataError(
            spec.path,
            "text files have no fields, so `prompt_field` cannot be read; use jsonl, parquet or "
            "hf records",
        )
    for path in resolve_files(spec, "text"):
        source = str(path)
        stats.files.append(source)
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line_no = data.count(b"\n", 0, err.start) + 1
            line_start = data.rfind(b"\n", 0, err.start) + 1
            bad = data[err.start : err.start + 1].hex()
            raise DataError(
                source,
                f"not valid UTF-8 (byte 0x{bad} at column {err.start - line_start + 1}); "
                "re-encode the file as UTF-8",
                line_no,
            ) from None
        yield (text,)


def _read_parquet(
    spec: SourceSpec, stats: ReadStats, fields: tuple[str, ...]
) -> Iterator[tuple[str, ...]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = ("text_field", "prompt_field")
    for path in resolve_files(spec, "parquet"):
        source = str(path)
        stats.files.append(source)
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(source, f"not a readable Parquet file: {err}") from None
        schema = pf.schema_arrow
        for name, setting in zip(fields, settings):
            if name not in schema.names:
                raise DataError(
                    source, f"no column {name!r} (columns: {schema.names}); set `{setting}`"
                )
            col_type = schema.field(name).type
            if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
                raise DataError(source, f"column {name!r} must be string, got {col_type}")
        if pf.metadata.num_rows == 0:
            raise DataError(source, "empty file: expected at least one row")
        index = 0
        for batch in pf.iter_batches(batch_size=_BATCH, columns=list(fields)):
            columns = [batch.column(i).to_pylist() for i in range(len(fields))]
            for values in zip(*columns):
                if None in values:
                    name = fields[values.index(None)]
                    raise DataError(source, f"record {index} (0-based row): {name!r} is null")
                if len(values) > 1:
                    _check_prompt(values, fields, source, None, f"record {index} (0-based row): ")
                index += 1
                yield values


def _load_hf(spec: SourceSpec) -> Any:
    """Load an HF dataset split: `load_from_disk` for a saved directory, else `load_dataset`."""
    import datasets

    path = Path(str(spec.path))
    try:
        if _is_saved_hf_dir(path):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(spec.path), split=spec.split)
    except Exception as err:  # library errors become one line naming the source
        detail = str(err) or "no details (is a data file empty?)"
        raise DataError(
            spec.path, f"cannot load HF dataset: {type(err).__name__}: {detail}"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if spec.split not in ds:
            raise DataError(spec.path, f"no split {spec.split!r} (splits: {list(ds)})")
        ds = ds[spec.split]
    if not isinstance(ds, datasets.Dataset):
        raise DataError(spec.path, f"expected a map-style dataset, got {type(ds).__name__}")
    return ds


def _read_hf(
    spec: SourceSpec, stats: ReadStats, fields: tuple[str, ...]
) -> Iterator[tuple[str, ...]]:
    ds = _load_hf(spec)
    source = f"{spec.path}[{spec.split}]"
    stats.files.append(str(spec.path))
    for name, setting in zip(fields, ("text_field", "prompt_field")):
        if name not in ds.column_names:
            raise DataError(
                source, f"no column {name!r} (columns: {ds.column_names}); set `{setting}`"
            )
        feature = ds.features[name]
        dtype = getattr(feature, "dtype", None)
        if dtype not in ("string", "large_string"):
            raise DataError(source, f"column {name!r} must be string, got {feature}")
    if len(ds) == 0:
        raise DataError(source, "empty dataset: expected at least one record")
    index = 0
    for batch in ds.select_columns(list(fields)).iter(batch_size=_BATCH):
        for values in zip(*(batch[name] for name in fields)):
            if None in values:
                name = fields[values.index(None)]
                raise DataError(source, f"record {index}: {name!r} is null")
            if len(values) > 1:
                _check_prompt(values, fields, source, None, f"record {index}: ")
            index += 1
            yield values


__all__ = [
    "FORMATS",
    "KINDS",
    "OVERLONG_POLICIES",
    "ReadStats",
    "SourceSpec",
    "as_source_spec",
    "detect_format",
    "read_documents",
    "read_records",
    "resolve_files",
    "source_fingerprint",
]
