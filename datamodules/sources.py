"""Data sources: what to read (`SourceSpec`) and readers that validate every record.

A reader yields the text of each document in a fixed order and raises one `DataError` naming the
file and line (JSONL, text) or record index (Parquet, HF datasets) on the first bad record. Empty or
whitespace-only documents are skipped and counted in `ReadStats`, never silently dropped.

A record's text comes from one of (all rendered here, in `read_samples`, the one reader):

- `text_field`: the field itself (the default);
- `template`: a `str.format` template over the record's fields, e.g. `"{instruction}\n{response}"`
  (Mix-CPT's format-free conversion of instruction and preference records to plain text);
- `messages_field`: a multi-turn chat rendered with `chat_template` (`datamodules.chat_template`).

`read_samples` yields `Sample(text, loss_spans)`: `loss_spans` None means every token is a target;
otherwise the `[start, end)` character spans whose tokens get loss (the store turns them into a
per-token mask, see `store.loss_span_mask`): the completion after `prompt_field` / `template_prompt`
(one span from the prompt's end to the text's end; the prompt must be a prefix of the text, else a
`DataError` naming the record), or the assistant turns of a chat. `read_records` keeps the older
`(text, prompt)` view of prompt sources, `read_documents` the texts alone.
"""

from __future__ import annotations

import abc
import glob
import hashlib
import logging
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from common.errors import ConfigError, DataError
from common.jsonl import read_jsonl
from datamodules.chat_template import (
    PLAIN,
    TOKENIZER,
    ChatError,
    ChatRenderer,
    check_chat_template,
    check_messages,
)

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
        text_field: The field (JSONL, HF) or column (Parquet) holding the text (not read with
            `template` or `messages_field`, which render the text).
        split: Split of an HF dataset (`load_dataset` or a saved `DatasetDict`); ignored otherwise.
        kind: `document` (pre-training text: may be split across rows) or `sample` (a chat, a pair:
            never split; a sample longer than the row is handled by `overlong_policy`).
        ratio: Token-level mixture ratio among the train sources (give all or none; they must sum to
            1). Ignored for validation sources.
        overlong_policy: For `kind: sample`: `truncate` keeps the first `max_length` tokens, `skip`
            drops the sample. Either way the count is logged.
        loss_weighting: How the loss of an optimizer step averages over its targets. `token`: every
            target token weighs 1 (the token mean; with a masked prompt or chat, the mean over
            the completion or assistant tokens).
            `sample`: each sample/document segment of a row weighs 1 in all, its targets
            `1 / n_targets` each (the per-sample mean; with a masked prompt or chat, over its
            completion or assistant targets). All train sources must use the same one.
        prompt_field: For `kind: sample` (SFT with masked prompts): the field (JSONL, HF) or column
            (Parquet) holding each record's prompt, a prefix of its `text_field` (the whole sample).
            Tokens lying entirely inside the prompt (end offset <= prompt length) get no loss
            (`labels = -100`): the loss is on the completion and its end token only. A record whose
            prompt is not a prefix of its text is an error. Needs a fast tokenizer. Default: none
            (every token is a target).
        template: A Python `str.format` template over the record's fields (JSONL, Parquet, HF),
            rendered as the record's text instead of `text_field` (which is then not read and must
            stay at its default), e.g. `"{instruction}\n{response}"` or `"{instruction}\n{chosen}"`
            (Mix-CPT's format-free text: an instruction sample or a preference pair's prompt and
            chosen answer as plain text). Only plain `{field}` placeholders; `{{` and `}}` are
            literal braces. Every named field must be a string. Default: none.
        template_prompt: With `template` and `kind: sample`: a template over the same fields
            rendering the prompt part, which must be a prefix of the rendered text; its tokens get
            no loss, with the same rule as `prompt_field` (e.g. `"{instruction}\n"`). Default: none.
        messages_field: For `kind: sample`: the field (JSONL, HF) or column (Parquet) holding a
            multi-turn chat, a list of `{"role": ..., "content": ...}` turns (roles `system`,
            `user`, `assistant`, `tool`). It is rendered with `chat_template` into the text (so
            `text_field` is not read and must stay at its default); only the assistant turns get
            loss: their content and the template's end-of-turn text after it (e.g. `<|im_end|>`,
            EOS), not the role headers, and not the EOS the store appends after the chat. A
            chat without an assistant turn is kept, without targets, and counted. Needs a fast tokenizer (except with `plain`). Default: none.
        chat_template: How `messages_field` chats become text: `tokenizer` (the tokenizer's own
            chat template, as `apply_chat_template(..., tokenize=False)` renders it), an inline
            Jinja template (a value containing `{{` or `{%`), a path to a `.jinja` file, or
            `plain` (format-free: the turn contents joined by newlines, no role markers, loss on
            every token). Text the template writes (a BOS too) is tokenized as is: no other special
            tokens are added.
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
    template: str | None = None
    template_prompt: str | None = None
    messages_field: str | None = None
    chat_template: str = TOKENIZER

    @property
    def display_name(self) -> str:
        """The configured name, or the last component of the path."""
        if self.name:
            return self.name
        stem = Path(str(self.path).rstrip("/")).name
        return stem or str(self.path)

    @property
    def has_loss_mask(self) -> bool:
        """Whether some tokens of a sample get no loss (the store then writes a loss mask)."""
        return (
            self.prompt_field is not None
            or self.template_prompt is not None
            or (self.messages_field is not None and self.chat_template != PLAIN)
        )

    def config_key(self, attr: str) -> str:
        """The config key of field `attr`, for errors raised after `validate` (which records the
        spec's key); `source <name>.<attr>` for a spec never validated."""
        key = getattr(self, "_config_key", None) or f"source {self.display_name}"
        return f"{key}.{attr}"

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
        self._validate_rendering(key)
        self._config_key = key

    def _validate_rendering(self, key: str) -> None:
        """Check `template`, `template_prompt`, `messages_field` and `chat_template`."""
        rendered = {
            "template": self.template,
            "template_prompt": self.template_prompt,
            "messages_field": self.messages_field,
        }
        for attr, value in rendered.items():
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{key}.{attr}", "must be a non-empty string or null")
            if value is not None and self.format == "text":
                raise ConfigError(
                    f"{key}.{attr}", "text files have no fields; use jsonl, parquet or hf records"
                )
        for attr in ("template", "template_prompt"):
            value = getattr(self, attr)
            if value is not None:
                try:
                    names = template_fields(value)
                except ValueError as err:
                    raise ConfigError(f"{key}.{attr}", f"{err}: {value!r}") from None
                if not names:
                    raise ConfigError(f"{key}.{attr}", f"names no field: {value!r}")
        replaces_text = "template" if self.template is not None else None
        if self.messages_field is not None:
            replaces_text = "messages_field"
            for other in ("template", "template_prompt", "prompt_field"):
                if getattr(self, other) is not None:
                    raise ConfigError(
                        f"{key}.{other}",
                        "cannot be combined with messages_field (a chat is rendered by "
                        "chat_template, its loss goes to the assistant turns)",
                    )
            if self.kind != "sample":
                raise ConfigError(
                    f"{key}.messages_field",
                    f"a chat is a sample: it needs `kind: sample` (never split), got kind "
                    f"{self.kind!r}",
                )
            check_chat_template(self.chat_template, f"{key}.chat_template")
        elif self.chat_template != TOKENIZER:
            raise ConfigError(f"{key}.chat_template", "only applies with messages_field")
        if replaces_text is not None and self.text_field != "text":
            raise ConfigError(
                f"{key}.text_field",
                f"is not read when {replaces_text} is set (it renders the text); remove it",
            )
        if self.template is not None and self.prompt_field is not None:
            raise ConfigError(
                f"{key}.prompt_field",
                "cannot be combined with template; mask the prompt with template_prompt",
            )
        if self.template_prompt is not None:
            if self.template is None:
                raise ConfigError(
                    f"{key}.template_prompt",
                    "needs template (it renders the prompt part of the template's text)",
                )
            if self.kind != "sample":
                raise ConfigError(
                    f"{key}.template_prompt",
                    f"masked prompts need `kind: sample` (a sample is never split), got kind "
                    f"{self.kind!r}",
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
    assistant_turns: int = 0
    """Assistant turns of the kept chats (`messages_field`)."""
    chats_without_assistant: int = 0
    """Kept chats without an assistant turn: no target token under assistant-only loss."""


class Sample(NamedTuple):
    """One rendered record.

    Attributes:
        text: The document or sample text.
        loss_spans: Sorted `[start, end)` character spans of `text` whose tokens get loss, or None
            when every token does.
    """

    text: str
    loss_spans: tuple[tuple[int, int], ...] | None


def template_fields(template: str) -> tuple[str, ...]:
    """The field names a `str.format` template uses, in order of first use; `ValueError` for an
    invalid template or one with positional, attribute, index, conversion or format-spec fields."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(
            f"not a valid format string ({err}; write literal braces as '{{{{' and '}}}}')"
        ) from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError("positional placeholders ('{}', '{0}') name no field; write '{field}'")
        if conversion or spec:
            raise ValueError(
                f"placeholder {{{name}...}}: only plain '{{field}}' placeholders are supported "
                "(no '!conversion' or ':format')"
            )
        if "." in name or "[" in name:
            raise ValueError(
                f"placeholder {{{name}}}: attribute and index access are not supported; name a "
                "top-level field"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


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


def read_documents(
    spec: SourceSpec, stats: ReadStats, tokenizer: Any | None = None
) -> Iterator[str]:
    """Yield the non-empty texts of `spec` in order; count skipped empty ones in `stats`
    (`tokenizer`: for a chat source rendered with the tokenizer's template)."""
    for text, _spans in read_samples(spec, stats, tokenizer):
        yield text


def read_records(
    spec: SourceSpec, stats: ReadStats, tokenizer: Any | None = None
) -> Iterator[tuple[str, str | None]]:
    """Yield `(text, prompt)` for the non-empty texts of `spec` in order (`prompt` is None without
    `spec.prompt_field` / `spec.template_prompt`, else a validated prefix of `text`); count skipped
    empty ones in `stats`. A masked chat source has one loss span per assistant turn, not a
    prompt: read it with `read_samples`."""
    if spec.messages_field is not None and spec.has_loss_mask:
        raise ValueError(
            f"source {spec.display_name} is a chat with assistant-only loss; use read_samples"
        )
    for text, spans in read_samples(spec, stats, tokenizer):
        yield text, (None if spans is None else text[: spans[0][0]])


def read_samples(
    spec: SourceSpec, stats: ReadStats, tokenizer: Any | None = None
) -> Iterator[Sample]:
    """Yield a `Sample` (text and loss spans) for every non-empty rendered record of `spec` in
    order; count skipped empty ones (and chat statistics) in `stats`.

    `tokenizer` is needed only by a `messages_field` source whose `chat_template` is `tokenizer`
    (its template) or a Jinja template (the special-token variables); a missing template is a
    `ConfigError` naming the source's `chat_template` key.
    """
    render = _record_renderer(spec, stats, tokenizer)
    fields = render.fields if render is not None else _fields(spec)
    for where, values in _READERS[detect_format(spec)](spec, stats, fields, render is not None):
        if render is not None:
            sample = render(where, dict(zip(fields, values)))
        else:  # text_field (and prompt_field): validated strings
            text = values[0]
            sample = Sample(text, ((len(values[1]), len(text)),) if len(values) > 1 else None)
        if sample.text.strip():
            stats.documents += 1
            if render is not None:
                render.count(sample)
            yield sample
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
    if spec.messages_field is not None:
        log.info(
            "source %s: %d chats, %d assistant turns%s",
            spec.display_name,
            stats.documents,
            stats.assistant_turns,
            "" if spec.has_loss_mask else " (plain: loss on every token)",
        )
        if stats.chats_without_assistant:
            log.warning(
                "source %s: %d of %d chats have no assistant turn (kept, without target tokens)",
                spec.display_name,
                stats.chats_without_assistant,
                stats.documents,
            )


@dataclass(frozen=True)
class _Where:
    """Where a record is, for its `DataError`: the file (or dataset), and the line or record."""

    source: str
    line: int | None = None
    record: str = ""

    def error(self, message: str) -> DataError:
        return DataError(self.source, f"{self.record}{message}", self.line)


_MISSING: Any = object()
"""The value of a field a record does not have (raw reading)."""


def _kind_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _RecordRenderer(abc.ABC):
    """Renders one raw record (its requested fields, `_MISSING` where absent) to a `Sample`."""

    fields: tuple[str, ...]

    @abc.abstractmethod
    def __call__(self, where: _Where, record: dict[str, Any]) -> Sample:
        """The sample of one record (a `DataError` through `where` when it cannot be rendered)."""

    def count(self, sample: Sample) -> None:  # noqa: B027 (an optional hook: a no-op by default)
        """Update the read statistics for a kept sample."""


class _TemplateRenderer(_RecordRenderer):
    """`template` (and `template_prompt`) over the record's string fields."""

    def __init__(self, spec: SourceSpec) -> None:
        assert spec.template is not None
        self.template = spec.template
        self.prompt = spec.template_prompt
        self.names = template_fields(spec.template)
        self.prompt_names = template_fields(spec.template_prompt) if spec.template_prompt else ()
        self.fields = tuple(dict.fromkeys((*self.names, *self.prompt_names)))

    @staticmethod
    def _format(
        where: _Where, record: dict[str, Any], template: str, names: tuple[str, ...], setting: str
    ) -> str:
        values: dict[str, str] = {}
        for name in names:
            value = record.get(name, _MISSING)
            if value is _MISSING:
                raise where.error(f"field {name!r} missing ({setting} {template!r})")
            if not isinstance(value, str):
                raise where.error(
                    f"field {name!r} must be a string, got {_kind_name(value)} "
                    f"({setting} {template!r})"
                )
            values[name] = value
        return template.format_map(values)

    def __call__(self, where: _Where, record: dict[str, Any]) -> Sample:
        text = self._format(where, record, self.template, self.names, "template")
        if self.prompt is None:
            return Sample(text, None)
        prompt = self._format(where, record, self.prompt, self.prompt_names, "template_prompt")
        what = _prefix_mismatch(text, prompt)
        if what is not None:
            raise where.error(
                f"the rendered template_prompt is not a prefix of the rendered template: {what}; "
                f"template_prompt {self.prompt!r} must render the start of template "
                f"{self.template!r}"
            )
        return Sample(text, ((len(prompt), len(text)),))


class _ChatRecordRenderer(_RecordRenderer):
    """`messages_field` rendered with `chat_template`: loss spans on the assistant turns."""

    def __init__(self, spec: SourceSpec, stats: ReadStats, tokenizer: Any | None) -> None:
        assert spec.messages_field is not None
        self.field = spec.messages_field
        self.fields = (spec.messages_field,)
        self.stats = stats
        self.renderer = chat_renderer(spec, tokenizer)
        self._assistant_turns = 0

    def __call__(self, where: _Where, record: dict[str, Any]) -> Sample:
        value = record.get(self.field, _MISSING)
        if value is _MISSING:
            raise where.error(f"field {self.field!r} missing; set `messages_field`")
        try:
            rendered = self.renderer(check_messages(value))
        except ChatError as err:
            raise where.error(f"field {self.field!r}: {err}") from None
        self._assistant_turns = rendered.assistant_turns
        return Sample(rendered.text, rendered.loss_spans)

    def count(self, sample: Sample) -> None:
        self.stats.assistant_turns += self._assistant_turns
        if sample.loss_spans is not None and not sample.loss_spans:
            self.stats.chats_without_assistant += 1


def chat_renderer(spec: SourceSpec, tokenizer: Any | None) -> ChatRenderer:
    """The `ChatRenderer` of a `messages_field` source (`ConfigError` naming its `chat_template`
    key when `tokenizer` has no chat template and the spec asks for it)."""
    return ChatRenderer.from_setting(
        spec.chat_template,
        tokenizer,
        key=spec.config_key("chat_template"),
        source=spec.display_name,
    )


def _record_renderer(
    spec: SourceSpec, stats: ReadStats, tokenizer: Any | None
) -> _RecordRenderer | None:
    """The renderer of a `template` or `messages_field` source; None for `text_field` reading."""
    if spec.messages_field is not None:
        return _ChatRecordRenderer(spec, stats, tokenizer)
    if spec.template is not None:
        return _TemplateRenderer(spec)
    return None


def _fields(spec: SourceSpec) -> tuple[str, ...]:
    """The fields a reader extracts: the text, then the prompt when there is one."""
    if spec.prompt_field is None:
        return (spec.text_field,)
    return (spec.text_field, spec.prompt_field)


def _prefix_mismatch(text: str, prompt: str) -> str | None:
    """None if `prompt` is a prefix of `text`, else how they differ."""
    if text.startswith(prompt):
        return None
    at = next(
        (i for i, (a, b) in enumerate(zip(text, prompt)) if a != b), min(len(text), len(prompt))
    )
    if at == len(text):
        return f"the prompt is longer than the text ({len(prompt)} > {len(text)} characters)"
    return (
        f"they differ at character {at} (prompt {prompt[at : at + 20]!r}, "
        f"text {text[at : at + 20]!r})"
    )


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
    what = _prefix_mismatch(values[0], values[1])
    if what is None:
        return
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
        raise DataError(
            source, f"field {field_name!r} must be a string, got {_kind_name(value)}", line
        )
    return value


def _read_jsonl(
    spec: SourceSpec, stats: ReadStats, fields: tuple[str, ...], raw: bool = False
) -> Iterator[tuple[_Where, tuple[Any, ...]]]:
    """`(where, values)` per record: validated strings, or with `raw` whatever the fields hold
    (`_MISSING` where absent)."""
    settings = ("text_field", "prompt_field")
    for path in resolve_files(spec, "jsonl"):
        source = str(path)
        stats.files.append(source)
        for line_no, record in read_jsonl(path):
            where = _Where(source, line_no)
            if raw:
                if not isinstance(record, dict):
                    raise where.error(f"record must be a JSON object, got {_kind_name(record)}")
                yield where, tuple(record.get(name, _MISSING) for name in fields)
                continue
            values = tuple(
                _field_text(record, name, source, line_no, "record", setting)
                for name, setting in zip(fields, settings)
            )
            _check_prompt(values, fields, source, line_no)
            yield where, values


def _read_text(
    spec: SourceSpec, stats: ReadStats, fields: tuple[str, ...], raw: bool = False
) -> Iterator[tuple[_Where, tuple[Any, ...]]]:
    if len(fields) > 1 or raw:
        raise DataError(
            spec.path,
            "text files have no fields, so `prompt_field`, `template` or `messages_field` cannot "
            "be read; use jsonl, parquet or hf records",
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
        yield _Where(source), (text,)


def _read_parquet(
    spec: SourceSpec, stats: ReadStats, fields: tuple[str, ...], raw: bool = False
) -> Iterator[tuple[_Where, tuple[Any, ...]]]:
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
        if not raw:
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
        present = [name for name in fields if name in schema.names]
        if not present:  # raw reading: the first record lacks every field (the renderer says)
            yield _Where(source, None, "record 0 (0-based row): "), tuple(_MISSING for _ in fields)
            continue
        index = 0
        for batch in pf.iter_batches(batch_size=_BATCH, columns=present):
            columns = {name: batch.column(i).to_pylist() for i, name in enumerate(present)}
            for i in range(batch.num_rows):
                where = _Where(source, None, f"record {index} (0-based row): ")
                values = tuple(columns[n][i] if n in columns else _MISSING for n in fields)
                index += 1
                if not raw:
                    if None in values:
                        raise where.error(f"{fields[values.index(None)]!r} is null")
                    if len(values) > 1:
                        _check_prompt(values, fields, source, None, where.record)
                yield where, values


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
    spec: SourceSpec, stats: ReadStats, fields: tuple[str, ...], raw: bool = False
) -> Iterator[tuple[_Where, tuple[Any, ...]]]:
    ds = _load_hf(spec)
    source = f"{spec.path}[{spec.split}]"
    stats.files.append(str(spec.path))
    if not raw:
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
    present = [name for name in fields if name in ds.column_names]
    if not present:  # raw reading: the first record lacks every field (the renderer says which)
        yield _Where(source, None, "record 0: "), tuple(_MISSING for _ in fields)
        return
    index = 0
    for batch in ds.select_columns(present).iter(batch_size=_BATCH):
        for row in zip(*(batch[name] for name in present)):
            where = _Where(source, None, f"record {index}: ")
            by_name = dict(zip(present, row))
            values = tuple(by_name.get(name, _MISSING) for name in fields)
            index += 1
            if not raw:
                if None in values:
                    raise where.error(f"{fields[values.index(None)]!r} is null")
                if len(values) > 1:
                    _check_prompt(values, fields, source, None, where.record)
            yield where, values


_READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "text": _read_text, "hf": _read_hf}


def read_raw_fields(
    spec: SourceSpec, stats: ReadStats, fields: tuple[str, ...], what: str = "records"
) -> Iterator[tuple[_Where, tuple[Any, ...]]]:
    """`(where, values)` of every record of a jsonl, parquet or hf `spec`, in order: whatever the
    `fields` hold, `_MISSING` where absent (the caller validates them and names its settings);
    `where.error(...)` is a `DataError` naming the file and line or record. Text files have no
    fields: a `DataError` saying `what` the source must hold."""
    fmt = detect_format(spec)
    if fmt == "text":
        raise DataError(spec.path, f"{what} are records (jsonl, parquet, hf), not text")
    return _READERS[fmt](spec, stats, fields, True)


__all__ = [
    "FORMATS",
    "KINDS",
    "OVERLONG_POLICIES",
    "ReadStats",
    "Sample",
    "SourceSpec",
    "as_source_spec",
    "chat_renderer",
    "detect_format",
    "read_documents",
    "read_raw_fields",
    "read_records",
    "read_samples",
    "resolve_files",
    "source_fingerprint",
    "template_fields",
]
