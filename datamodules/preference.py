"""Preference pairs for DPO: each pair is two right-padded rows (chosen, rejected), loss on replies.

A record holds a prompt and two responses (fields `prompt`, `chosen`, `rejected` by default; JSONL,
Parquet or HF datasets, like any source). A pair becomes the two sequences `prompt + chosen + EOS`
and `prompt + rejected + EOS`. They are tokenized by two `TokenizedStore`s of the same file (cached
by fingerprint), built from `SourceSpec`s with `template: "{prompt}{chosen}"` (and `{rejected}`) and
`template_prompt: "{prompt}"`, so the mask rule is the store's: a token lying entirely inside the
prompt gets no loss, and the loss (the log-probability DPO compares) is on the response and its EOS
(appended unless the text already ends with it; the world's chat end marker is its EOS). The two
stores are aligned by record index from one validating pass over the records' three fields.

Pairs dropped are counted per source and logged (`PreferenceDataModule.pair_stats`), never dropped
silently: an empty (or whitespace-only) response; a prompt with no token of its own (its only token
merges into the response, or it is empty: position 0 is never predicted, so the response's first
token could not be scored); a pair longer than `max_length` under `overlong_policy: skip`.
`truncate_prompt` instead cuts the same number of tokens from the left of both rows (the prompt
keeps at least one token; a pair whose responses alone do not fit is still skipped). Pairs whose
two responses are equal are kept (no preference: zero gradient) and counted.

Batch of `P` pairs (`PairCollator`): rows `[c_0 … c_{P-1}, r_0 … r_{P-1}]`, right-padded to the
longest row (rounded up to a multiple of 8, at most `max_length`): `input_ids`, `labels` (−100 on
prompt tokens, padding and column 0), `position_ids` (0… per row; padding restarts at 0 as its own
pseudo-segment, as `datamodules.packing` pads), `attention_mask`, `pair_index` `[P]` (the pair's
global index in its `PreferencePairs`: stable, the key of precomputed reference log-probs),
`sample_index` `[2P]` (`pair_index` for both rows) and `step_weight` (the number of pairs of the
whole optimizer step: `GlobalStepBatchSampler` with weight 1 per pair, so accumulation and world
size are exact and a resumed run sees the same pairs per step).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common import IGNORE_INDEX, ConfigError, DataError
from datamodules.pretraining import PretrainingDataModule
from datamodules.sampler import (
    GlobalStepBatchSampler,
    ResumableDataLoader,
    check_one_step_per_epoch,
)
from datamodules.sources import _MISSING, ReadStats, SourceSpec, _kind_name, read_raw_fields
from datamodules.store import TokenizedStore
from datamodules.world.config import WorldConfig
from datamodules.world.datamodule import DEFAULT_WORLD, WorldDataModule

log = logging.getLogger(__name__)

_KEY = "data.init_args"

PAIR_OVERLONG_POLICIES = ("skip", "truncate_prompt")
PairOverlongPolicy = Literal["skip", "truncate_prompt"]
PREFERENCE_FORMATS = ("auto", "jsonl", "parquet", "hf")
_PAD_MULTIPLE = 8


# --------------------------------------------------------------------------------- sources


@dataclass
class PreferenceSource:
    """One source of preference pairs.

    Args:
        path: A JSONL or Parquet file, directory or glob, an HF dataset (a `save_to_disk`
            directory or a name in the local cache), or a path a subclass resolves
            (`world:<split>` for `WorldPreferenceDataModule`).
        name: Short name used in logs and statistics; defaults to the file or split name.
        format: `auto` (from the suffix), `jsonl`, `parquet` or `hf`.
        split: Split of an HF dataset.
        prompt_field: The field holding the prompt (for a chat model: the rendered chat up to the
            assistant's turn, e.g. `<|user|>Q<|assistant|>`); it gets no loss.
        chosen_field: The field holding the preferred response (without end marker: EOS is
            appended).
        rejected_field: The field holding the dispreferred response.
    """

    path: str
    name: str | None = None
    format: Literal["auto", "jsonl", "parquet", "hf"] = "auto"
    split: str = "train"
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"

    @property
    def fields(self) -> tuple[str, str, str]:
        """(prompt, chosen, rejected) field names."""
        return (self.prompt_field, self.chosen_field, self.rejected_field)

    def validate(self, key: str) -> None:
        """Check the settings; `key` is the config key of this source."""
        if not str(self.path):
            raise ConfigError(f"{key}.path", "must not be empty")
        if self.format not in PREFERENCE_FORMATS:
            raise ConfigError(
                f"{key}.format",
                f"must be one of {list(PREFERENCE_FORMATS)} (pairs are records, not text files), "
                f"got {self.format!r}",
            )
        for attr, name in zip(("prompt_field", "chosen_field", "rejected_field"), self.fields):
            if not isinstance(name, str) or not name or any(c in name for c in "{}.[]"):
                raise ConfigError(
                    f"{key}.{attr}",
                    f"must be a top-level field name (no braces, dots), got {name!r}",
                )
        if len(set(self.fields)) != 3:
            raise ConfigError(
                f"{key}.rejected_field", f"the three fields must differ: {self.fields}"
            )

    def anchor(self) -> SourceSpec:
        """The `SourceSpec` of this source (path resolution, naming; text = prompt + chosen)."""
        return SourceSpec(
            path=self.path, name=self.name, format=self.format, split=self.split, kind="sample"
        )


def as_preference_source(value: PreferenceSource | dict[str, Any], key: str) -> PreferenceSource:
    """Accept a `PreferenceSource` or a plain dict (Python callers) and validate it."""
    if isinstance(value, dict):
        try:
            value = PreferenceSource(**value)
        except TypeError as err:
            raise ConfigError(key, f"not a valid preference source: {err}") from None
    if not isinstance(value, PreferenceSource):
        raise ConfigError(key, f"expected a preference source mapping, got {type(value).__name__}")
    value.validate(key)
    return value


def response_spec(resolved: SourceSpec, source: PreferenceSource, side: str) -> SourceSpec:
    """The store spec of one side (`chosen` or `rejected`): `prompt + response`, prompt masked."""
    field = source.chosen_field if side == "chosen" else source.rejected_field
    return replace(
        resolved,
        name=f"{resolved.display_name}.{side}",
        kind="sample",
        template=f"{{{source.prompt_field}}}{{{field}}}",
        template_prompt=f"{{{source.prompt_field}}}",
    )


_SETTINGS = ("prompt_field", "chosen_field", "rejected_field")


def read_pair_texts(
    resolved: SourceSpec, source: PreferenceSource, key: str
) -> Iterator[tuple[str, str, str]]:
    """`(prompt, chosen, rejected)` of every record in order; a `DataError` naming the file and
    line (JSONL) or record (Parquet, HF) for a record without one of the fields or with a
    non-string value."""
    fields = source.fields
    for where, values in read_raw_fields(resolved, ReadStats(), fields, "preference pairs"):
        for name, setting, value in zip(fields, _SETTINGS, values):
            if value is _MISSING:
                raise where.error(f"record has no field {name!r}; set `{key}.{setting}`")
            if not isinstance(value, str):
                raise where.error(f"field {name!r} must be a string, got {_kind_name(value)}")
        yield values  # type: ignore[misc]


# --------------------------------------------------------------------------------- pairs


@dataclass
class PairStats:
    """Counts of reading and pairing one source (every record is in exactly one of `pairs`,
    `empty_response`, `no_prompt_token`, `skipped_overlong`)."""

    records: int = 0
    pairs: int = 0  # kept
    empty_response: int = 0  # skipped: an empty or whitespace-only chosen or rejected response
    no_prompt_token: int = 0  # skipped: no token lies entirely inside the prompt
    overlong: int = 0  # pairs with a row longer than max_length (truncated or skipped)
    truncated: int = 0  # overlong pairs kept with a left-truncated prompt
    skipped_overlong: int = 0  # overlong pairs dropped
    identical: int = 0  # kept pairs whose two responses are equal (no preference)
    response_tokens: int = 0  # target tokens of the kept pairs, both rows


@dataclass
class PairPart:
    """The kept pairs of one source: rows of its two stores.

    Attributes:
        name: Source name.
        chosen, rejected: The stores of `prompt + chosen` and `prompt + rejected`.
        chosen_docs, rejected_docs: `int64[pairs]` document indices into the stores.
        cuts: `int64[pairs]` tokens removed from the left of both rows (`truncate_prompt`).
    """

    name: str
    chosen: TokenizedStore
    rejected: TokenizedStore
    chosen_docs: np.ndarray
    rejected_docs: np.ndarray
    cuts: np.ndarray

    def __len__(self) -> int:
        return len(self.chosen_docs)


def _prompt_tokens(mask: np.ndarray) -> int:
    """Leading tokens without loss (the prompt's own tokens)."""
    targets = np.flatnonzero(mask)
    return int(targets[0]) if len(targets) else len(mask)


def pair_sources(
    texts: Sequence[tuple[str, str, str]],
    chosen: TokenizedStore,
    rejected: TokenizedStore,
    *,
    name: str,
    max_length: int,
    overlong_policy: PairOverlongPolicy,
) -> tuple[PairPart, PairStats]:
    """Align the two stores with the records and keep the pairs that fit (see the module docstring).

    A store skips a record whose text (prompt + response) is whitespace-only; the record pass
    tells which, so the alignment is exact. A store whose count disagrees is a `DataError`.
    """
    stats = PairStats(records=len(texts))
    kept_c = np.fromiter(((p + c).strip() != "" for p, c, _ in texts), dtype=bool, count=len(texts))
    kept_r = np.fromiter(((p + r).strip() != "" for p, _, r in texts), dtype=bool, count=len(texts))
    for side, kept, store in (("chosen", kept_c, chosen), ("rejected", kept_r, rejected)):
        if int(kept.sum()) != store.num_documents:
            raise DataError(
                name,
                f"the {side} store has {store.num_documents} texts but the source has "
                f"{int(kept.sum())} non-empty prompt + {side} records: the store does not match "
                "the records (was the file changed while reading?)",
            )
    doc_c = np.cumsum(kept_c) - 1
    doc_r = np.cumsum(kept_r) - 1
    chosen_docs, rejected_docs, cuts = [], [], []
    for i, (_prompt, c, r) in enumerate(texts):
        if not c.strip() or not r.strip():
            stats.empty_response += 1
            continue
        mask_c = chosen.document_mask(int(doc_c[i]))
        mask_r = rejected.document_mask(int(doc_r[i]))
        assert mask_c is not None and mask_r is not None
        prompt_c, prompt_r = _prompt_tokens(mask_c), _prompt_tokens(mask_r)
        if min(prompt_c, prompt_r) == 0:
            stats.no_prompt_token += 1
            continue
        cut = max(len(mask_c), len(mask_r)) - max_length
        if cut > 0:
            stats.overlong += 1
            if overlong_policy == "skip" or cut >= min(prompt_c, prompt_r):
                stats.skipped_overlong += 1
                continue
            stats.truncated += 1
        cut = max(cut, 0)
        stats.pairs += 1
        stats.identical += int(c == r)
        stats.response_tokens += int(mask_c[1:].sum()) + int(mask_r[1:].sum())
        chosen_docs.append(int(doc_c[i]))
        rejected_docs.append(int(doc_r[i]))
        cuts.append(cut)
    part = PairPart(
        name,
        chosen,
        rejected,
        np.asarray(chosen_docs, dtype=np.int64),
        np.asarray(rejected_docs, dtype=np.int64),
        np.asarray(cuts, dtype=np.int64),
    )
    return part, stats


class PreferencePairs(Dataset):
    """Kept pairs of one or more sources under one global pair index (source 0's pairs first).

    `pairs[i]` or `pairs[(i, step_weight)]` gives the item `PairCollator` batches: `pair_index`,
    `chosen_ids`, `chosen_mask`, `rejected_ids`, `rejected_mask` (numpy; mask 1 = target token)
    and `step_weight` when given.

    Args:
        parts: The sources' pairs.
    """

    def __init__(self, parts: Sequence[PairPart]) -> None:
        self.parts = list(parts)
        self.offsets = np.zeros(len(self.parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in self.parts], out=self.offsets[1:])
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[PairPart, int]:
        """(part, local pair index) of global pair `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} out of range [0, {len(self)})")
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part], index - int(self.offsets[part])

    def rows(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(chosen ids, chosen mask, rejected ids, rejected mask) of pair `index`."""
        part, local = self.locate(index)
        cut = int(part.cuts[local])
        out = []
        for store, docs in ((part.chosen, part.chosen_docs), (part.rejected, part.rejected_docs)):
            doc = int(docs[local])
            mask = store.document_mask(doc)
            assert mask is not None
            out += [store.document(doc)[cut:].astype(np.int64), mask[cut:]]
        return out[0], out[1], out[2], out[3]

    def __getitem__(self, key: int | tuple[int, float]) -> dict[str, Any]:
        index, step_weight = key if isinstance(key, tuple) else (key, None)
        index = int(index)
        chosen, chosen_mask, rejected, rejected_mask = self.rows(index)
        item: dict[str, Any] = {
            "pair_index": index,
            "chosen_ids": chosen,
            "chosen_mask": chosen_mask,
            "rejected_ids": rejected,
            "rejected_mask": rejected_mask,
        }
        if step_weight is not None:
            item["step_weight"] = float(step_weight)
        return item

    @property
    def fingerprint(self) -> str:
        """A hash of exactly what the pairs are: the stores (source content, tokenizer, rendering)
        and which documents, cut how, make each pair. Keys caches derived from the pairs."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            for part in self.parts:
                h.update(f"{part.chosen.fingerprint}/{part.rejected.fingerprint}/".encode())
                for array in (part.chosen_docs, part.rejected_docs, part.cuts):
                    h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
                    h.update(b"|")
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class PairCollator:
    """Batches pair items into the DPO batch of the module docstring.

    Args:
        pad_token_id: Token id of the padding.
        max_length: Longest row (rows are never longer; the width is capped here).
        pad_to_multiple_of: Round the batch width up to a multiple of this.
        pad_to_max_length: Pad every batch to `max_length` instead (fixed shapes).
    """

    def __init__(
        self,
        pad_token_id: int,
        max_length: int,
        pad_to_multiple_of: int = _PAD_MULTIPLE,
        pad_to_max_length: bool = False,
    ) -> None:
        self.pad_token_id = int(pad_token_id)
        self.max_length = int(max_length)
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        self.pad_to_max_length = bool(pad_to_max_length)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [(it["chosen_ids"], it["chosen_mask"]) for it in items]
        rows += [(it["rejected_ids"], it["rejected_mask"]) for it in items]
        longest = max(len(ids) for ids, _ in rows)
        multiple = self.pad_to_multiple_of
        width = max(longest, min(self.max_length, -(-longest // multiple) * multiple))
        if self.pad_to_max_length:
            width = max(longest, self.max_length)
        n = len(rows)
        input_ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
        labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros((n, width), dtype=np.int64)
        attention = np.zeros((n, width), dtype=np.int64)
        for b, (ids, mask) in enumerate(rows):
            k = len(ids)
            input_ids[b, :k] = ids
            labels[b, :k] = np.where(mask != 0, ids, IGNORE_INDEX)
            positions[b, :k] = np.arange(k)
            positions[b, k:] = np.arange(width - k)
            attention[b, :k] = 1
        labels[:, 0] = IGNORE_INDEX  # never predicted
        pair_index = torch.tensor([int(it["pair_index"]) for it in items], dtype=torch.long)
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions),
            "attention_mask": torch.from_numpy(attention),
            "pair_index": pair_index,
            "sample_index": pair_index.repeat(2),
        }
        if "step_weight" in items[0]:
            values = {float(it["step_weight"]) for it in items}
            if len(values) != 1:
                raise ValueError(f"pairs of one micro-batch disagree on step_weight: {values}")
            batch["step_weight"] = torch.tensor(values.pop(), dtype=torch.float64)
        else:  # evaluation: this batch's own pairs
            batch["step_weight"] = torch.tensor(float(len(items)), dtype=torch.float64)
        return batch


# --------------------------------------------------------------------------------- data module


class PreferenceDataModule(PretrainingDataModule):
    """Preference pairs for DPO (`lightning_modules.DPOModule`): chosen and rejected of every pair
    in the same micro-batch, loss on the responses, one unit of step weight per pair.

    Batches, masking, the dropped-pair rules and the order: the module docstring of
    `datamodules.preference`. The train order is a seeded permutation of the pairs per epoch, cut
    into optimizer steps of `micro_batch_size × accumulate_grad_batches × world_size` pairs; the
    loader's state `{"epoch", "consumed_samples"}` resumes exactly. Every pair is read once per
    epoch (no ratios). `preference_sets()` hands the pairs to a module that precomputes
    reference log-probabilities (keyed by `pair_index` and `PreferencePairs.fingerprint`).

    Args:
        tokenizer: Tokenizer path or hub id (a fast tokenizer: the prompt mask uses offsets).
        train_sources: Preference sources; their pairs are concatenated.
        val_sources: Held-out preference sources by name (reward accuracy and margin on validation;
            one loader per name).
        max_length: Longest row (prompt + response + EOS) in tokens; see `overlong_policy`.
        micro_batch_size: Pairs per training micro-batch on each rank (2 × rows).
        val_batch_size: Pairs per validation batch; default `micro_batch_size`.
        overlong_policy: A pair with a row longer than `max_length`: `skip` drops it,
            `truncate_prompt` cuts tokens from the left of both rows' prompt (keeping at least one
            prompt token; a pair whose responses alone do not fit is still dropped). Counted and
            logged either way.
        pad_to_max_length: Pad every batch to `max_length` (fixed shapes) instead of its longest
            row rounded up to a multiple of 8. Costs compute on short pairs; gives every forward
            the same shape (compilers; on CPU it also makes a row's log-probs independent of the
            other rows of its batch, bit for bit, so a precomputed reference equals the policy
            exactly before the first step).
        seed: Seed of the epoch order.
        num_workers: DataLoader worker processes.
        cache_dir: Directory of the tokenized stores (`<cache_dir>/<fingerprint>/`). `DPOModule`
            keeps its reference log-probs beside it (`<cache_dir>/../reference_logps`) by default.
        **kwargs: Arguments of a cooperating base (`WorldPreferenceDataModule`'s world).
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        train_sources: list[PreferenceSource] | None = None,
        val_sources: dict[str, PreferenceSource] | None = None,
        max_length: int = 512,
        micro_batch_size: int = 8,
        val_batch_size: int | None = None,
        overlong_policy: PairOverlongPolicy = "skip",
        pad_to_max_length: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str = ".cache/adaptlm/stores",
        **kwargs: Any,
    ) -> None:
        train = [
            as_preference_source(s, f"{_KEY}.train_sources[{i}]")
            for i, s in enumerate(train_sources or [])
        ]
        val = {
            str(name): as_preference_source(s, f"{_KEY}.val_sources.{name}")
            for name, s in (val_sources or {}).items()
        }
        if not train and not val:
            raise ConfigError(f"{_KEY}.train_sources", "give at least one preference source")
        if overlong_policy not in PAIR_OVERLONG_POLICIES:
            raise ConfigError(
                f"{_KEY}.overlong_policy",
                f"must be one of {list(PAIR_OVERLONG_POLICIES)}, got {overlong_policy!r}",
            )
        super().__init__(
            tokenizer=tokenizer,
            train_sources=[s.anchor() for s in train],
            val_sources={name: s.anchor() for name, s in val.items()},
            max_length=max_length,
            micro_batch_size=micro_batch_size,
            val_batch_size=val_batch_size,
            packing=False,
            rows_per_epoch=None,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
            **kwargs,
        )
        self.preference_sources = train
        self.preference_val_sources = val
        self.overlong_policy: PairOverlongPolicy = overlong_policy
        self.pad_to_max_length = bool(pad_to_max_length)
        self._train_pairs: PreferencePairs | None = None
        self._val_pairs: dict[str, PreferencePairs] = {}
        self.pair_stats: dict[str, PairStats] = {}
        """Per source name: the counts of reading and pairing it."""

    # -- building -----------------------------------------------------------------------------

    def _sides(self, resolved: SourceSpec, source: PreferenceSource) -> list[SourceSpec]:
        return [response_spec(resolved, source, side) for side in ("chosen", "rejected")]

    def _all_sources(self) -> list[tuple[str, SourceSpec, PreferenceSource]]:
        """(config key, resolved anchor, source) of every train and val source."""
        train, val = self._resolved_sources()
        out = [
            (f"{_KEY}.train_sources[{i}]", spec, source)
            for i, (spec, source) in enumerate(zip(train, self.preference_sources))
        ]
        out += [
            (f"{_KEY}.val_sources.{name}", val[name], self.preference_val_sources[name])
            for name in val
        ]
        return out

    def _side_stores(
        self, key: str, resolved: SourceSpec, source: PreferenceSource
    ) -> list[TokenizedStore]:
        stores = []
        for attr, spec in zip(("chosen_field", "rejected_field"), self._sides(resolved, source)):
            spec.validate(f"{key}.{attr}")
            stores.append(self._store(spec))
        return stores

    def prepare_data(self) -> None:
        """Validate every record and tokenize both sides of every source once (one process per
        node; the stores are cached)."""
        for key, resolved, source in self._all_sources():
            for _ in read_pair_texts(resolved, source, key):
                pass
            self._side_stores(key, resolved, source)

    def _pairs(self, key: str, resolved: SourceSpec, source: PreferenceSource) -> PairPart:
        texts = list(read_pair_texts(resolved, source, key))  # validates before tokenizing
        chosen, rejected = self._side_stores(key, resolved, source)
        name = resolved.display_name
        part, stats = pair_sources(
            texts,
            chosen,
            rejected,
            name=name,
            max_length=self.max_length,
            overlong_policy=self.overlong_policy,
        )
        self.pair_stats[name] = stats
        self.stats[name] = asdict(stats)
        self._log_stats(name, stats)
        if not len(part):
            raise DataError(resolved.path, f"no pair is kept: {stats}")
        return part

    def _log_stats(self, name: str, stats: PairStats) -> None:
        log.info("preference source %s: %s", name, stats)
        dropped = {
            "with an empty response": stats.empty_response,
            "whose prompt has no token of its own": stats.no_prompt_token,
            f"longer than max_length={self.max_length}": stats.skipped_overlong,
        }
        for what, count in dropped.items():
            if count:
                log.warning(
                    "preference source %s: skipped %d of %d pairs %s",
                    name,
                    count,
                    stats.records,
                    what,
                )
        if stats.truncated:
            log.warning(
                "preference source %s: %d pairs longer than max_length=%d kept with their prompt "
                "truncated from the left",
                name,
                stats.truncated,
                self.max_length,
            )
        if stats.identical:
            log.warning(
                "preference source %s: %d pairs have identical responses (kept; no preference)",
                name,
                stats.identical,
            )

    def setup(self, stage: str | None = None) -> None:
        """Load the stores and pair them: the train pairs for `fit`, val pairs for evaluation."""
        sources = self._all_sources()
        n_train = len(self.preference_sources)
        if stage in (None, "fit") and self._train_pairs is None and n_train:
            self._train_pairs = PreferencePairs([self._pairs(*s) for s in sources[:n_train]])
        if stage in (None, "fit", "validate", "test") and not self._val_pairs:
            for name, s in zip(self.preference_val_sources, sources[n_train:]):
                self._val_pairs[name] = PreferencePairs([self._pairs(*s)])

    # -- accessors ----------------------------------------------------------------------------

    @property
    def train_dataset(self) -> PreferencePairs:  # type: ignore[override]
        """All train pairs (after `setup('fit')`)."""
        if self._train_pairs is None:
            raise RuntimeError("call setup('fit') first")
        return self._train_pairs

    @property
    def val_datasets(self) -> dict[str, PreferencePairs]:
        """Validation pairs by name (after `setup`)."""
        return dict(self._val_pairs)

    def preference_sets(self) -> dict[str, PreferencePairs]:
        """The pairs a module scores with a reference model: `train` (when set up) and
        `val/<name>` for every validation source."""
        sets = {} if self._train_pairs is None else {"train": self._train_pairs}
        sets.update({f"val/{name}": pairs for name, pairs in self._val_pairs.items()})
        return sets

    @property
    def reference_cache_dir(self) -> Path:
        """Where `DPOModule` caches reference log-probs of these pairs by default:
        `reference_logps/` beside the store cache (`.cache/adaptlm/reference_logps`)."""
        return Path(self.cache_dir).parent / "reference_logps"

    def collator(self) -> PairCollator:
        """The collator of train, validation and reference batches."""
        return PairCollator(
            int(self.tokenizer.pad_token_id),
            self.max_length,
            pad_to_max_length=self.pad_to_max_length,
        )

    # -- loaders ------------------------------------------------------------------------------

    def train_sampler(  # type: ignore[override]
        self, accumulate_grad_batches: int = 1, world_size: int = 1, rank: int = 0
    ) -> GlobalStepBatchSampler:
        """The global-step sampler of the train pairs (weight 1 per pair) for this layout."""
        if not self.preference_sources:
            raise ConfigError(f"{_KEY}.train_sources", "no train sources configured")
        pairs = self.train_dataset
        sampler = GlobalStepBatchSampler(
            np.ones(len(pairs), dtype=np.float64),
            micro_batch_size=self.micro_batch_size,
            accumulate_grad_batches=accumulate_grad_batches,
            world_size=world_size,
            rank=rank,
            seed=self.seed,
        )
        check_one_step_per_epoch(sampler, len(pairs), "pairs", "more pairs", _KEY)
        return sampler

    def train_dataloader(self) -> ResumableDataLoader:
        """This rank's loader in the global-step order, with a resumable state."""
        accumulate, world, rank, trainer = self._trainer_layout()
        return ResumableDataLoader(
            self.train_dataset,
            self.train_sampler(accumulate, world, rank),
            progress=trainer,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One sequential loader of pairs per validation source, in `val_set_names` order."""
        return [
            DataLoader(
                self._val_pairs[name],
                batch_size=self.val_batch_size,
                shuffle=False,
                collate_fn=self.collator(),
                num_workers=self.num_workers,
                pin_memory=torch.cuda.is_available(),
            )
            for name in self.val_set_names
        ]


class WorldPreferenceDataModule(PreferenceDataModule, WorldDataModule):
    """`PreferenceDataModule` over the synthetic world: `world:<split>` source paths and the
    world's tokenizer (`WorldDataModule`). Default train source: the small format-alignment pool
    (`world:format_alignment_preference`, Mix-CPT's stage 2); `world:preference_pairs` is the large
    one. Default: no validation sources.

    Args:
        world: Size and shape of the world (see `WorldDataModule`).
        world_cache_dir: Where worlds are materialized.
        train_sources: Preference sources; default `world:format_alignment_preference`.
        qa_format: Format of the evaluation questions, `chat` or `plain`.
        **kwargs: The `PreferenceDataModule` arguments.
    """

    def __init__(
        self,
        world: WorldConfig = DEFAULT_WORLD,
        world_cache_dir: str = ".cache/adaptlm/worlds",
        train_sources: list[PreferenceSource] | None = None,
        qa_format: Literal["chat", "plain"] = "chat",
        **kwargs: Any,
    ) -> None:
        if train_sources is None:
            train_sources = [PreferenceSource(path="world:format_alignment_preference")]
        super().__init__(
            world=world,
            world_cache_dir=world_cache_dir,
            train_sources=train_sources,
            qa_format=qa_format,
            **kwargs,
        )


__all__ = [
    "PAIR_OVERLONG_POLICIES",
    "PairCollator",
    "PairPart",
    "PairStats",
    "PreferenceDataModule",
    "PreferencePairs",
    "PreferenceSource",
    "WorldPreferenceDataModule",
    "as_preference_source",
    "pair_sources",
    "read_pair_texts",
    "response_spec",
]
