"""A tokenized store: a source's token ids and document boundaries on disk, memory-mapped.

Layout of `cache_dir/<fingerprint>/`:

- `tokens.bin`: all token ids (`uint32`), every document followed by the tokenizer's EOS (not
  appended when the text already ends with it, as a rendered chat may);
- `offsets.npy`: `int64[documents + 1]`, document `i` is `tokens[offsets[i]:offsets[i + 1]]`;
- `loss_mask.bin` (only for a source where some tokens get no loss: `prompt_field`,
  `template_prompt`, or `messages_field` with a Jinja chat template): one `uint8` per token of
  `tokens.bin`, 1 for a target token, 0 for a token without loss (see `loss_span_mask`);
- `manifest.json`: fingerprint, settings and counts, written last.

Texts are rendered by the reader (`sources.read_samples`: `text_field`, `template` or a chat) and
tokenized with `add_special_tokens=False`: the store adds no BOS, so a chat template that writes
its BOS as text gets exactly one; the only token the store adds is the EOS above.

Loss mask (`loss_span_mask`): the reader gives each sample the character spans that get loss (the
completion after a prompt; the assistant turns of a chat). A token has loss iff its character
range `[start, end)` overlaps a span `[a, b)`: `end > a and start < b` (a zero-width token at `p`:
iff `a < p <= b`). With the single span `[len(prompt), len(text))` of a prompt source this is the
prompt rule: a token lying entirely inside the prompt (`end <= len(prompt)`) gets no loss, one
straddling the boundary does. The appended EOS has loss iff the text ends inside a span (always
for a prompt source) and the sample is not a chat: a chat's targets are its assistant turns as the
template renders them, end-of-turn markers included, and nothing after.

The fingerprint hashes the source content (see `sources.source_fingerprint`), the tokenizer (its
serialized `tokenizer.json`, or its vocabulary for tokenizers without one), the EOS id and the store
settings. Each rendering setting (`prompt_field`, `template`, `template_prompt`, `messages_field`
with the chat template's text and variables) enters the fingerprint only when it is set, so stores
of sources without them keep their key. A store is written with `common.atomic.atomic_directory`:
staged beside its final directory, fsynced and renamed into place only when complete (orphans of
killed builders are removed at the next build), and verified against its manifest (the loss mask's
size too) when loaded, so a crash during a build never leaves a store that a later run would load.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_directory
from common.errors import ConfigError
from datamodules.sources import (
    ReadStats,
    SourceSpec,
    chat_renderer,
    detect_format,
    read_samples,
)
from datamodules.sources import source_fingerprint as _source_fingerprint

log = logging.getLogger(__name__)

STORE_VERSION = 1
TOKEN_DTYPE = np.dtype(np.uint32)
MANIFEST = "manifest.json"
TOKENS = "tokens.bin"
OFFSETS = "offsets.npy"
LOSS_MASK = "loss_mask.bin"
MASK_DTYPE = np.dtype(np.uint8)
_MASK_RULE = "prompt-token-iff-end-offset<=len(prompt); eos-is-completion"
# The rule of `loss_span_mask` (template prompts, chats); for one span to the text's end it is
# `_MASK_RULE`, which `prompt_field` stores keep in their fingerprint.
_SPAN_RULE = (
    "loss-iff-token-overlaps-a-loss-span(end>a,start<b;zero-width:a<p<=b); "
    "appended-eos-loss-iff-text-ends-in-a-span"
)
# A chat's loss is its assistant turns as the template renders them, end-of-turn markers included:
# the EOS the store appends after a chat is never a target (ChatML-style templates end a turn with
# `<|im_end|>\n`; an appended `<|im_end|>` EOS would be a second, needless stop target).
_CHAT_RULE = (
    "loss-iff-token-overlaps-a-loss-span(end>a,start<b;zero-width:a<p<=b); "
    "appended-eos-after-a-chat-no-loss"
)
_TOKENIZE_BATCH = 1000


class InvalidStoreError(Exception):
    """A store directory is incomplete or does not match its manifest (triggers a rebuild)."""


@dataclass(frozen=True)
class StoreStats:
    """Counts of a built store."""

    documents: int
    skipped_empty: int
    tokens: int


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides the token ids: the tokenizer's serialized model and
    pre/post-processing (or its vocabulary), its class and its EOS id."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(tokenizer).__name__.encode())
    h.update(str(tokenizer.eos_token_id).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()


def store_fingerprint(spec: SourceSpec, tokenizer: Any) -> str:
    """The cache key of the store of `spec` tokenized by `tokenizer`."""
    payload = {
        "version": STORE_VERSION,
        "dtype": TOKEN_DTYPE.name,
        "eos": "append-unless-present",
        "source": _source_fingerprint(spec),
        "text_field": spec.text_field,
        "split": spec.split,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    # Each key below is absent unless its setting is set: existing stores keep their fingerprint.
    if spec.prompt_field is not None:
        payload["prompt_field"] = spec.prompt_field
        payload["loss_mask"] = _MASK_RULE
    payload.update(_rendering_settings(spec, tokenizer))
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def _rendering_settings(spec: SourceSpec, tokenizer: Any) -> dict[str, Any]:
    """The fingerprint entries of `template`, `template_prompt` and `messages_field` (only those
    set; a chat's entry holds the template's text and variables, so editing the tokenizer's
    template or the .jinja file makes a new store)."""
    settings: dict[str, Any] = {}
    if spec.template is not None:
        settings["template"] = spec.template
    if spec.template_prompt is not None:
        settings["template_prompt"] = spec.template_prompt
    if spec.messages_field is not None:
        settings["messages_field"] = spec.messages_field
        settings["chat"] = chat_renderer(spec, tokenizer).identity()
    if spec.template_prompt is not None:
        settings["loss_mask"] = _SPAN_RULE
    elif spec.messages_field is not None and spec.has_loss_mask:
        settings["loss_mask"] = _CHAT_RULE
    return settings


def _tokenize_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of a batch of documents, without special tokens."""
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    return encoded["input_ids"]


def tokenize_with_offsets(
    tokenizer: Any, texts: list[str]
) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids and character offsets of a batch of documents, without special tokens."""
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        return_offsets_mapping=True,
        verbose=False,
    )
    return encoded["input_ids"], encoded["offset_mapping"]


def loss_span_mask(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]] | None
) -> np.ndarray:
    """`uint8` per token: 1 iff the token's character range `[start, end)` overlaps a loss span
    `[a, b)` (`end > a and start < b`; a zero-width token at `p` iff `a < p <= b`), else 0.
    `spans` None: every token has loss."""
    n = len(offsets)
    if spans is None:
        return np.ones(n, dtype=MASK_DTYPE)
    if not n:
        return np.zeros(0, dtype=MASK_DTYPE)
    bounds = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    zero_width = starts == ends
    mask = np.zeros(n, dtype=bool)
    for a, b in spans:
        mask |= (ends > a) & ((starts < b) | (zero_width & (ends <= b)))
    return mask.astype(MASK_DTYPE)


def completion_mask(offsets: Sequence[tuple[int, int]], prompt_length: int) -> np.ndarray:
    """`uint8` per token: 0 where the token lies entirely inside the prompt (its end offset is at
    most `prompt_length` characters), else 1 (a token straddling the boundary is a completion
    token). `loss_span_mask` with the one span from the prompt's end on."""
    return loss_span_mask(offsets, [(prompt_length, np.iinfo(np.int64).max)])


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


class TokenizedStore:
    """A loaded, verified store (read-only). Build or load one with `TokenizedStore.get_or_build`.

    Attributes:
        directory: The store directory `cache_dir/<fingerprint>`.
        manifest: The parsed manifest.
        tokens: `uint32` memmap of all token ids.
        offsets: `int64[documents + 1]` document boundaries into `tokens`.
        loss_mask: `uint8` memmap aligned with `tokens` (1: a target token, e.g. a completion or
            assistant token; 0: no loss, e.g. a prompt token or a chat's user turn) for a source
            with `prompt_field`, `template_prompt` or a masked chat (`messages_field`), else None.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = self._read_manifest(self.directory)
        self._open_arrays()

    # -- loading ------------------------------------------------------------------------------

    @staticmethod
    def _read_manifest(directory: Path) -> dict[str, Any]:
        path = directory / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InvalidStoreError(f"{path}: unreadable manifest ({err})") from None
        if manifest.get("version") != STORE_VERSION:
            raise InvalidStoreError(f"{path}: store version {manifest.get('version')}")
        if manifest.get("fingerprint") != directory.name:
            raise InvalidStoreError(f"{path}: fingerprint does not match the directory name")
        return manifest

    def _open_arrays(self) -> None:
        counts = self.manifest["counts"]
        n_tokens, n_docs = int(counts["tokens"]), int(counts["documents"])
        dtype = np.dtype(self.manifest["dtype"])
        tokens_path = self.directory / TOKENS
        try:
            size = tokens_path.stat().st_size
            offsets = np.load(self.directory / OFFSETS, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InvalidStoreError(f"{self.directory}: unreadable arrays ({err})") from None
        if size != n_tokens * dtype.itemsize:
            raise InvalidStoreError(f"{tokens_path}: {size} bytes, manifest says {n_tokens} tokens")
        if (
            offsets.dtype != np.int64
            or offsets.shape != (n_docs + 1,)
            or offsets[0] != 0
            or offsets[-1] != n_tokens
            or np.any(np.diff(offsets) <= 0)
        ):
            raise InvalidStoreError(f"{self.directory / OFFSETS}: does not match the manifest")
        self.offsets = offsets
        self.tokens = np.memmap(tokens_path, dtype=dtype, mode="r", shape=(n_tokens,))
        self.loss_mask: np.ndarray | None = None
        if "loss_mask" in self.manifest:
            mask_path = self.directory / LOSS_MASK
            try:
                mask_size = mask_path.stat().st_size
            except OSError as err:
                raise InvalidStoreError(f"{mask_path}: unreadable loss mask ({err})") from None
            if mask_size != n_tokens * MASK_DTYPE.itemsize:
                raise InvalidStoreError(
                    f"{mask_path}: {mask_size} bytes, manifest says {n_tokens} tokens"
                )
            self.loss_mask = np.memmap(mask_path, dtype=MASK_DTYPE, mode="r", shape=(n_tokens,))

    def __getstate__(self) -> dict[str, Any]:
        # Workers reopen the memmap instead of receiving a copy of all tokens.
        return {"directory": self.directory, "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directory = state["directory"]
        self.manifest = state["manifest"]
        self._open_arrays()

    # -- accessors ----------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def stats(self) -> StoreStats:
        return StoreStats(**self.manifest["counts"])

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def document_lengths(self) -> np.ndarray:
        """`int64[documents]` token counts (EOS included)."""
        return np.diff(self.offsets)

    def document(self, index: int) -> np.ndarray:
        """Token ids of document `index` (EOS included)."""
        return np.asarray(self.tokens[self.offsets[index] : self.offsets[index + 1]])

    def document_mask(self, index: int) -> np.ndarray | None:
        """The loss mask of document `index` (1: target token), or None without a mask."""
        if self.loss_mask is None:
            return None
        return np.asarray(self.loss_mask[self.offsets[index] : self.offsets[index + 1]])

    @property
    def completion_tokens(self) -> int | None:
        """Tokens with loss mask 1 (None for a store without a mask)."""
        if self.loss_mask is None:
            return None
        return int(self.manifest["loss_mask"]["completion_tokens"])

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def lookup(
        cls, spec: SourceSpec, tokenizer: Any, cache_dir: str | Path
    ) -> TokenizedStore | None:
        """The cached store for `spec` and `tokenizer` if a complete, valid one exists."""
        directory = Path(cache_dir) / store_fingerprint(spec, tokenizer)
        if not directory.exists():
            return None
        try:
            return cls(directory)
        except InvalidStoreError as err:
            log.warning("ignoring invalid store: %s", err)
            return None

    @classmethod
    def get_or_build(
        cls, spec: SourceSpec, tokenizer: Any, cache_dir: str | Path
    ) -> TokenizedStore:
        """Load the cached store of `spec`, or tokenize the source and write it (atomically)."""
        if tokenizer.eos_token_id is None:
            raise ConfigError("data.init_args.tokenizer", "the tokenizer has no EOS token")
        cache_dir = Path(cache_dir)
        fingerprint = store_fingerprint(spec, tokenizer)
        final = cache_dir / fingerprint
        if final.exists():
            try:
                store = cls(final)
                log.info("source %s: using cached store %s", spec.display_name, final)
                return store
            except InvalidStoreError as err:
                log.warning("rebuilding invalid store: %s", err)
        # Written beside the target, fsynced and renamed into place; a complete store another
        # process published meanwhile is kept (same fingerprint, same content), an invalid one
        # is replaced. Orphans of killed builders in `cache_dir` are removed first.
        with atomic_directory(final, overwrite=final.exists()) as tmp:
            cls._write(spec, tokenizer, tmp, fingerprint)
        return cls(final)

    @classmethod
    def _write(cls, spec: SourceSpec, tokenizer: Any, tmp: Path, fingerprint: str) -> None:
        eos = int(tokenizer.eos_token_id)
        masked = spec.has_loss_mask
        if masked and not getattr(tokenizer, "is_fast", False):
            setting = next(
                name
                for name in ("prompt_field", "template_prompt", "messages_field")
                if getattr(spec, name) is not None
            )
            raise ConfigError(
                "data.init_args.tokenizer",
                f"source {spec.display_name} sets {setting}, which needs a fast tokenizer "
                "(character offsets); this one is not",
            )
        stats = ReadStats()
        lengths: list[int] = []
        n_tokens = completion_tokens = 0
        with contextlib.ExitStack() as files:
            fh = files.enter_context(open(tmp / TOKENS, "wb"))
            mask_fh = files.enter_context(open(tmp / LOSS_MASK, "wb")) if masked else None
            for samples in _batched(read_samples(spec, stats, tokenizer), _TOKENIZE_BATCH):
                texts = [sample.text for sample in samples]
                if masked:
                    encoded, offsets = tokenize_with_offsets(tokenizer, texts)
                else:
                    encoded = _tokenize_batch(tokenizer, texts)
                # every document ends with exactly one EOS (chat texts may carry their own)
                ids = [x if x and x[-1] == eos else [*x, eos] for x in encoded]
                flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
                if flat.size and (flat.min() < 0 or flat.max() > np.iinfo(TOKEN_DTYPE).max):
                    raise ValueError(f"token ids out of {TOKEN_DTYPE.name} range")
                fh.write(flat.astype(TOKEN_DTYPE).tobytes())
                if mask_fh is not None:
                    masks = []
                    for sample, x, y, off in zip(samples, ids, encoded, offsets):
                        mask = loss_span_mask(off, sample.loss_spans)
                        if len(x) > len(y):  # the appended EOS (see `_SPAN_RULE`, `_CHAT_RULE`)
                            spans = sample.loss_spans
                            ends_in_span = spans is None or (
                                bool(spans) and spans[-1][1] >= len(sample.text)
                            )
                            target = ends_in_span and spec.messages_field is None
                            mask = np.append(mask, np.uint8(target))
                        masks.append(mask)
                    flat_mask = np.concatenate(masks).astype(MASK_DTYPE)
                    assert flat_mask.size == flat.size
                    mask_fh.write(flat_mask.tobytes())
                    completion_tokens += int(flat_mask.sum(dtype=np.int64))
                lengths.extend(len(x) for x in ids)
                n_tokens += flat.size
        offsets_array = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets_array[1:])
        np.save(tmp / OFFSETS, offsets_array, allow_pickle=False)
        counts = StoreStats(
            documents=len(lengths), skipped_empty=stats.skipped_empty, tokens=n_tokens
        )
        source: dict[str, Any] = {
            "name": spec.display_name,
            "path": str(spec.path),
            "format": detect_format(spec),
            "text_field": spec.text_field,
            "split": spec.split,
            "files": stats.files,
        }
        for name in ("prompt_field", "template", "template_prompt", "messages_field"):
            if getattr(spec, name) is not None:
                source[name] = getattr(spec, name)
        if spec.messages_field is not None:
            source["chat_template"] = spec.chat_template
            source["chats"] = {
                "assistant_turns": stats.assistant_turns,
                "without_assistant": stats.chats_without_assistant,
            }
        manifest: dict[str, Any] = {
            "version": STORE_VERSION,
            "fingerprint": fingerprint,
            "dtype": TOKEN_DTYPE.name,
            "eos_token_id": eos,
            "source": source,
            "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
            "counts": asdict(counts),
        }
        if masked:
            manifest["loss_mask"] = {
                "file": LOSS_MASK,
                "dtype": MASK_DTYPE.name,
                "rule": (
                    _MASK_RULE
                    if spec.prompt_field is not None
                    else _CHAT_RULE
                    if spec.messages_field is not None
                    else _SPAN_RULE
                ),
                "completion_tokens": completion_tokens,
                "prompt_tokens": n_tokens - completion_tokens,
            }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        log.info(
            "source %s: tokenized %d documents (%d empty skipped), %d tokens%s",
            spec.display_name,
            counts.documents,
            counts.skipped_empty,
            counts.tokens,
            f" ({completion_tokens} with loss, {n_tokens - completion_tokens} without)"
            if masked
            else "",
        )


__all__ = [
    "LOSS_MASK",
    "InvalidStoreError",
    "StoreStats",
    "TokenizedStore",
    "completion_mask",
    "loss_span_mask",
    "store_fingerprint",
    "tokenize_with_offsets",
    "tokenizer_fingerprint",
]
