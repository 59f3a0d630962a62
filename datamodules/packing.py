"""Rows of fixed length built from a tokenized store, and the collator that batches them.

A *row* is a sequence of at most `max_length` tokens made of *segments*, each a contiguous range of
the store's tokens placed one after the other from column 0. Every segment restarts `position_ids`
at 0, and the first token of every segment after column 0 gets `labels = -100` (it cannot be
predicted from the previous document). The row layout is computed once for the whole store with
numpy, as three arrays (segment starts, segment lengths, per-row segment pointers); building a row
only copies its few segments.

Layouts:

- `kind=document`, packing: concatenate all documents (each ends with EOS) and cut every
  `max_length` tokens; documents longer than a row continue on the next row. Only the last row
  is padded.
- `kind=document`, no packing: one document per row, split into `max_length` chunks when longer.
- `kind=sample`, packing: greedy sequential packing, a sample is never split; a sample that does not
  fit the current row starts a new one; samples longer than a row are truncated or skipped.
- `kind=sample`, no packing: one sample per row, truncated or skipped when longer than a row.

Padding: `pad_token_id`, `labels = -100`, `attention_mask = 0`, and `position_ids` counting up
from 0 as one pseudo-segment.

Masked prompts: when the store has a loss mask (a source with `prompt_field`), tokens whose mask
is 0 (prompt tokens) also get `labels = -100`, so a segment's targets are its tokens after its first
one whose mask is 1 (the completion). Target counts, row weights and `loss_weights` count only
these.

Loss weights ("Reductions" in `docs/design.md`): a segment of `n` tokens has `n - 1` targets (its
first token is never predicted inside the row; with a loss mask, only those of them with mask 1).
`token` weighting gives every target weight 1 (no `loss_weights` array is emitted); `sample`
weighting gives each of a segment's `k` targets the float32 weight `1 / k`, so every segment with a
target counts once (a sample without any, e.g. a prompt truncated before its completion, weighs 0
and is counted in `PackingStats.samples_without_targets` and logged). `row_weights` (float64, one
per row, computed once per layout) is the exact sum of a row's float32 weights, so the sampler's
`step_weight` equals the sum of the `loss_weights` the step's batches carry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from common import IGNORE_INDEX
from datamodules.store import TokenizedStore

log = logging.getLogger(__name__)

LOSS_WEIGHTINGS = ("token", "sample")
LossWeighting = Literal["token", "sample"]


def segment_token_weight(num_targets: np.ndarray | int) -> np.ndarray:
    """Weight of each target of a segment with `num_targets` targets under `sample` weighting.

    The float32 value `1 / num_targets` (0 where there are none), returned as float64 so that
    `num_targets * weight` is the exact float64 total of the segment's float32 weights.
    """
    n = np.asarray(num_targets, dtype=np.float64)
    weight = np.where(n > 0, 1.0 / np.maximum(n, 1.0), 0.0)
    return weight.astype(np.float32).astype(np.float64)


@dataclass(frozen=True)
class PackingStats:
    """What packing one store produced."""

    rows: int
    overlong: int  # samples longer than a row (kind=sample), truncated or skipped per policy
    overlong_policy: str
    split_documents: int  # documents spread over more than one row (kind=document)
    padding_tokens: int
    samples_without_targets: int = 0  # kind=sample: kept samples with no target (no loss)


def _row_pointers_from_segment_rows(segment_rows: np.ndarray, n_rows: int) -> np.ndarray:
    return np.searchsorted(segment_rows, np.arange(n_rows + 1), side="left").astype(np.int64)


def _pack_documents(offsets: np.ndarray, max_length: int) -> tuple[np.ndarray, ...]:
    n_tokens = int(offsets[-1])
    cuts = np.arange(0, n_tokens, max_length, dtype=np.int64)
    bounds = np.union1d(offsets, cuts)
    seg_start = bounds[:-1]
    seg_len = np.diff(bounds)
    n_rows = len(cuts)
    row_ptr = _row_pointers_from_segment_rows(seg_start // max_length, n_rows)
    return seg_start, seg_len, row_ptr


def _split_documents(offsets: np.ndarray, max_length: int) -> tuple[np.ndarray, ...]:
    lengths = np.diff(offsets)
    chunks = -(-lengths // max_length)
    doc = np.repeat(np.arange(len(lengths)), chunks)
    first_chunk = np.cumsum(chunks) - chunks
    chunk_idx = np.arange(len(doc)) - np.repeat(first_chunk, chunks)
    seg_start = offsets[doc] + chunk_idx * max_length
    seg_len = np.minimum(max_length, offsets[doc + 1] - seg_start)
    row_ptr = np.arange(len(doc) + 1, dtype=np.int64)
    return seg_start, seg_len, row_ptr


_MASK_CHUNK = 1 << 24


def _mask_counts(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`int64`: the number of nonzero `mask[lo[i]:hi[i]]` for every `i` (`lo <= hi`), from prefix
    sums computed chunk by chunk (memory bounded whatever the store's size)."""
    positions = np.concatenate([lo, hi]).astype(np.int64)
    prefix = np.zeros(len(positions), dtype=np.int64)  # prefix[j] = count of nonzero mask[:q_j]
    order = np.argsort(positions, kind="stable")
    sorted_pos = positions[order]
    total = 0
    for start in range(0, len(mask), _MASK_CHUNK):
        stop = min(start + _MASK_CHUNK, len(mask))
        cumsum = np.cumsum(np.asarray(mask[start:stop]) != 0, dtype=np.int64)
        a, b = np.searchsorted(sorted_pos, [start, stop], side="right")
        prefix[order[a:b]] = total + cumsum[sorted_pos[a:b] - start - 1]
        total += int(cumsum[-1])
    n = len(lo)
    return prefix[n:] - prefix[:n]


def _greedy_pack(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Row pointers of next-fit packing of `lengths` (each <= max_length), in order."""
    cum = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cum[1:])
    starts = []
    i, n = 0, len(lengths)
    while i < n:  # one iteration per row, each a binary search
        starts.append(i)
        i = int(np.searchsorted(cum, cum[i] + max_length, side="right")) - 1
    starts.append(n)
    return np.asarray(starts, dtype=np.int64)


class PackedRows:
    """The row layout of one store for one `max_length`, kind and packing mode.

    Args:
        store: The tokenized source.
        max_length: Row length in tokens.
        kind: `document` or `sample` (see the module docstring).
        packing: Pack several documents/samples per row (True) or one per row (False).
        overlong_policy: `truncate` or `skip` for samples longer than a row (kind=sample).
        loss_weighting: `token` (weight 1 per target) or `sample` (each segment counts once); see
            the module docstring.
        name: Name used in logs.
    """

    def __init__(
        self,
        store: TokenizedStore,
        max_length: int,
        *,
        kind: str = "document",
        packing: bool = True,
        overlong_policy: str = "truncate",
        loss_weighting: LossWeighting = "token",
        name: str = "",
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {loss_weighting!r}")
        self.loss_weighting = loss_weighting
        self.store = store
        self.max_length = int(max_length)
        self.name = name or store.directory.name
        offsets = store.offsets
        lengths = np.diff(offsets)
        overlong = 0
        split_documents = 0
        if kind == "document":
            if packing:
                seg_start, seg_len, row_ptr = _pack_documents(offsets, max_length)
                # A document is split when its first and last tokens land in different rows.
                first_row, last_row = offsets[:-1] // max_length, (offsets[1:] - 1) // max_length
                split_documents = int(np.count_nonzero(first_row != last_row))
            else:
                seg_start, seg_len, row_ptr = _split_documents(offsets, max_length)
                split_documents = int(np.count_nonzero(lengths > max_length))
        elif kind == "sample":
            too_long = lengths > max_length
            overlong = int(np.count_nonzero(too_long))
            if overlong_policy == "skip":
                keep = ~too_long
                seg_start, seg_len = offsets[:-1][keep], lengths[keep]
            elif overlong_policy == "truncate":
                seg_start, seg_len = offsets[:-1], np.minimum(lengths, max_length)
            else:
                raise ValueError(f"unknown overlong_policy {overlong_policy!r}")
            if len(seg_len) == 0:
                raise ValueError(f"source {self.name}: every sample is longer than {max_length}")
            if packing:
                row_ptr = _greedy_pack(seg_len, max_length)
            else:
                row_ptr = np.arange(len(seg_len) + 1, dtype=np.int64)
            if overlong:
                verb = "truncated to" if overlong_policy == "truncate" else "skipped: longer than"
                log.warning(
                    "source %s: %d of %d samples %s max_length=%d",
                    self.name,
                    overlong,
                    len(lengths),
                    verb,
                    max_length,
                )
        else:
            raise ValueError(f"unknown kind {kind!r}")
        self.seg_start = np.ascontiguousarray(seg_start, dtype=np.int64)
        self.seg_len = np.ascontiguousarray(seg_len, dtype=np.int64)
        self.row_ptr = row_ptr
        self.loss_mask = store.loss_mask
        real = np.add.reduceat(self.seg_len, row_ptr[:-1]) if len(row_ptr) > 1 else np.zeros(0)
        self.real_lengths = real.astype(np.int64)
        self.num_segments = np.diff(row_ptr)
        # Targets of a segment: its tokens after the first (with a loss mask: those with mask 1).
        if self.loss_mask is None:
            self.seg_targets = self.seg_len - 1
            # Targets of a row: every real token after column 0 except segment starts.
            self.num_target_tokens = np.maximum(self.real_lengths - self.num_segments, 0)
        else:
            self.seg_targets = _mask_counts(
                self.loss_mask, self.seg_start + 1, self.seg_start + self.seg_len
            )
            self.num_target_tokens = self._per_row(self.seg_targets).astype(np.int64)
        without_targets = 0
        if kind == "sample":
            without_targets = int(np.count_nonzero(self.seg_targets == 0))
            if without_targets:
                log.warning(
                    "source %s: %d of %d samples have no target token (%s); they add nothing to "
                    "the loss",
                    self.name,
                    without_targets,
                    len(self.seg_len),
                    "prompt-only after truncation to max_length, or an empty completion"
                    if self.loss_mask is not None
                    else "a single token",
                )
        self.row_weights = self._row_weights()
        self.stats = PackingStats(
            rows=len(self),
            overlong=overlong,
            overlong_policy=overlong_policy if kind == "sample" else "split",
            split_documents=split_documents,
            padding_tokens=int(len(self) * max_length - self.real_lengths.sum()),
            samples_without_targets=without_targets,
        )

    def _per_row(self, per_segment: np.ndarray) -> np.ndarray:
        """Row totals of a per-segment array (every row has at least one segment)."""
        if len(self) == 0:
            return np.zeros(0, dtype=per_segment.dtype)
        return np.add.reduceat(per_segment, self.row_ptr[:-1])

    def _row_weights(self) -> np.ndarray:
        """`float64[rows]`: the exact total of every row's float32 loss weights."""
        if self.loss_weighting == "token" or len(self) == 0:
            return self.num_target_tokens.astype(np.float64)
        targets = self.seg_targets
        per_segment = targets * segment_token_weight(targets)  # exact: 24-bit × small int
        return self._per_row(per_segment).astype(np.float64)

    def __len__(self) -> int:
        return len(self.row_ptr) - 1

    def row(self, index: int, pad_token_id: int) -> dict[str, np.ndarray]:
        """The arrays of row `index`, each of length `max_length` (plus float32 `loss_weights`
        under `sample` weighting)."""
        length = self.max_length
        input_ids = np.full(length, pad_token_id, dtype=np.int64)
        labels = np.full(length, IGNORE_INDEX, dtype=np.int64)
        position_ids = np.zeros(length, dtype=np.int64)
        attention_mask = np.zeros(length, dtype=np.int64)
        weights = np.zeros(length, dtype=np.float32) if self.loss_weighting == "sample" else None
        col = 0
        tokens, loss_mask = self.store.tokens, self.loss_mask
        for seg in range(self.row_ptr[index], self.row_ptr[index + 1]):
            start, n = int(self.seg_start[seg]), int(self.seg_len[seg])
            input_ids[col : col + n] = tokens[start : start + n]
            mask = None if loss_mask is None else np.asarray(loss_mask[start : start + n])
            if mask is None:
                labels[col : col + n] = input_ids[col : col + n]
            else:  # prompt tokens are no targets
                labels[col : col + n] = np.where(mask != 0, input_ids[col : col + n], IGNORE_INDEX)
            if col > 0:
                labels[col] = IGNORE_INDEX
            position_ids[col : col + n] = np.arange(n)
            attention_mask[col : col + n] = 1
            targets = int(self.seg_targets[seg])
            if weights is not None and targets > 0:
                weight = segment_token_weight(targets)
                if mask is None:
                    weights[col + 1 : col + n] = weight
                else:
                    weights[col + 1 : col + n] = np.where(mask[1:] != 0, weight, 0.0)
            col += n
        position_ids[col:] = np.arange(length - col)
        row = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "attention_mask": attention_mask,
        }
        if weights is not None:
            row["loss_weights"] = weights
        return row


class PackedDataset(torch.utils.data.Dataset):
    """Rows of several sources under one global row index (source 0's rows first, and so on).

    `dataset[i]` or `dataset[(i, step_weight)]` returns the arrays of global row `i` plus
    `sample_index`, `source_index` (the row's position in `parts`) and `step_weight` (when given),
    ready for `collate_rows`. All parts must use
    the same `loss_weighting`.

    Args:
        parts: The packed rows of each source, in order.
        pad_token_id: Token id used for padding.
    """

    def __init__(self, parts: Sequence[PackedRows], pad_token_id: int) -> None:
        if not parts:
            raise ValueError("PackedDataset needs at least one source")
        self.parts = list(parts)
        self.pad_token_id = int(pad_token_id)
        sizes = np.array([len(p) for p in self.parts], dtype=np.int64)
        self.row_offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.row_offsets[1:])
        weightings = {p.loss_weighting for p in self.parts}
        if len(weightings) != 1:
            raise ValueError(f"sources of one dataset mix loss weightings {sorted(weightings)}")
        self.loss_weighting: LossWeighting = weightings.pop()
        self.num_target_tokens_array = np.concatenate([p.num_target_tokens for p in self.parts])
        self.row_weights = np.concatenate([p.row_weights for p in self.parts])
        """`float64[rows]`: total loss weight of every row (the sampler's `row_weights`)."""

    def __len__(self) -> int:
        return int(self.row_offsets[-1])

    @property
    def source_sizes(self) -> list[int]:
        """Rows per source."""
        return [len(p) for p in self.parts]

    def num_target_tokens(self, index: int | np.ndarray) -> int | np.ndarray:
        """Target tokens (`labels[1:] != -100`) of row `index` (or of an array of rows)."""
        result = self.num_target_tokens_array[index]
        return int(result) if np.ndim(result) == 0 else result

    def locate(self, index: int) -> tuple[int, int]:
        """(source position, row within that source) of global row `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        part = int(np.searchsorted(self.row_offsets, index, side="right")) - 1
        return part, index - int(self.row_offsets[part])

    def __getitem__(self, key: int | tuple[int, float]) -> dict[str, Any]:
        step_weight = None
        if isinstance(key, tuple):
            key, step_weight = key
        index = int(key)
        part, local = self.locate(index)
        item: dict[str, Any] = self.parts[part].row(local, self.pad_token_id)
        item["sample_index"] = index
        item["source_index"] = part
        if step_weight is not None:
            item["step_weight"] = float(step_weight)
        return item


class KeyedBatches(torch.utils.data.Dataset):
    """Adapter for a `DataLoader` with `batch_size=None` whose sampler yields whole micro-batches
    of keys: `batches[keys]` returns the list of rows that the loader's `collate_fn` (`collate_rows`
    by default) turns into a batch."""

    def __init__(self, dataset: PackedDataset | torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, keys: Sequence[Any]) -> list[dict[str, Any]]:
        return [self.dataset[key] for key in keys]


def collate_rows(
    rows: Sequence[dict[str, Any]], pad_to_multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    """Stack rows into the batch dict of `docs/design.md`.

    Trailing columns that are padding in every row are trimmed (keeping a multiple of
    `pad_to_multiple_of`), so batches of short samples are not padded to `max_length`.
    `loss_weights` (float32) is stacked when the rows carry it (`sample` weighting), and
    `source_index` (long, which train source each row comes from) when they carry it. `step_weight`
    (0-dim float64) is taken from the rows (the sampler's total for the whole optimizer step) or,
    when absent (evaluation), is this batch's total weight.
    """
    keys = ["input_ids", "labels", "position_ids", "attention_mask"]
    if "loss_weights" in rows[0]:
        keys.append("loss_weights")
    batch = {key: torch.from_numpy(np.stack([r[key] for r in rows])) for key in keys}
    width = batch["input_ids"].shape[1]
    used = int(batch["attention_mask"].sum(dim=0).nonzero().max()) + 1 if width else 0
    keep = min(width, -(-used // pad_to_multiple_of) * pad_to_multiple_of)
    if keep < width:
        batch = {k: v[:, :keep].contiguous() for k, v in batch.items()}
    batch["sample_index"] = torch.tensor([int(r["sample_index"]) for r in rows], dtype=torch.long)
    if "source_index" in rows[0]:
        batch["source_index"] = torch.tensor(
            [int(r["source_index"]) for r in rows], dtype=torch.long
        )
    if "step_weight" in rows[0]:
        values = {float(r["step_weight"]) for r in rows}
        if len(values) != 1:
            raise ValueError(f"rows of one micro-batch disagree on step_weight: {values}")
        batch["step_weight"] = torch.tensor(values.pop(), dtype=torch.float64)
    elif "loss_weights" in batch:
        batch["step_weight"] = batch["loss_weights"].to(torch.float64).sum()
    else:
        batch["step_weight"] = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().to(torch.float64)
    return batch


__all__ = [
    "IGNORE_INDEX",
    "LOSS_WEIGHTINGS",
    "KeyedBatches",
    "LossWeighting",
    "PackedDataset",
    "PackedRows",
    "PackingStats",
    "collate_rows",
    "segment_token_weight",
]
