"""DiSC's data: documents split into (context, target) pairs, packed for one teacher pass per document.

DiSC (Distillation via Split Contexts, `../shared/docs/methods.md`) distils a teacher that reads
`context + target` into a student that reads `target` alone. Reference semantics (the authors' code):

- **Sentences.** Each document is sentence-split (`split_sentences`: a regex, no download; NLTK punkt
  as an option), each sentence stripped of surrounding whitespace and tokenized on its own, without
  special tokens. The document's token sequence is the concatenation of its sentences' tokens (no
  BOS, no separator: a sentence does not see the space before it, as in the reference).
- **Draw** (`split_mode`, `num_splits = k`), for a document of `n` sentences:

  - `random` (default, the paper): `k-1` indices drawn uniformly without replacement from `1..n-1`
    (all of them when `k-1 > n-1`), plus `n-1`, sorted, deduplicated;
  - `middle` (ablation "middle-only"): the single index `n // 2`;
  - `uniform` (ablation "fixed uniform sentences"): `m = min(k, n-1)` evenly spaced indices
    `max(1, round((n-1)/m · j))` for `j = 1..m` (Python's round; the last is `n-1`), the same at
    every visit;
  - `random_tokens` (ablation "random token positions"): sentence boundaries are ignored; the
    document's `T` tokens are cut at `m = min(k, T-2)` positions drawn without replacement from
    `1..T-2`; each cut starts a target that runs to the next cut (the last one to the end). As in
    the reference, that is `k` cuts, so `k` targets like the other modes;
  - `last`: the single index `n-1`, the same at every visit. CD-base
    (`SelfGeneratedContextDataModule`) reads each document as two segments, the document and the
    model's continuation of it, so its one target is the continuation and its context the document.

  A draw is a pure function of `(seed, visit, document index)` (`draw_rng`), the visit being the
  epoch: a fresh draw at every epoch, and a resumed run draws exactly what the interrupted one did.
- **Pairs.** For sentence index `i`: context = sentences `0..i-1`, target = sentence `i` alone. A
  target with fewer than 2 tokens is skipped (and counted): it has no position to distil.
- **Skipped documents** (counted and logged at `setup`): documents with `n < 2` sentences
  (`random_tokens`: fewer than 4 tokens), and documents longer than `max_length` under
  `overlong_policy: skip`. Under `truncate` (default) a long document keeps its longest prefix of
  whole sentences that fits `max_length` (counted), before the `n < 2` rule.

**Exact and cheap layout** (`pack_documents`). Every context + target is a prefix of the document's
token sequence, so a causal teacher reading the document once gives the reference's distributions at
every target position: one teacher row segment per document (up to the end of its last kept
target), several documents packed per teacher row with `position_ids` restarting at 0. The student
reads each target alone, several targets packed per row, positions restarting at 0 per target.
`teacher_rows[b, t]` maps student position `t` of row `b` to the teacher's flattened hidden-state
row that is aligned with it (`lightning_modules.forward.TeacherInputs`): for a target of length `L`
at context length `c`, student positions `0..L-2` ↔ teacher positions `c..c+L-2` of its document.

**Reduction** ("Reductions" in `../shared/docs/architecture.md`): each of the `L-1` predicted
tokens of a target of a document with `|I|` kept splits weighs `1/((L-1)·|I|)`, and `step_weight`
is the number of documents of the optimizer step with at least one kept split (all micro-batches,
all ranks, from the seeded draw, so no communication). The step objective is then exactly "mean
over the target's tokens, then over the document's splits, then over documents".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import torch

from common import IGNORE_INDEX, ConfigError, DataError
from datamodules.fictional.datamodule import (
    DEFAULT_GGUF_FILE,
    DEFAULT_MODEL_DIR,
    FictionalDataModule,
)
from datamodules.pretraining import PretrainingDataModule
from datamodules.sampler import (
    GlobalStepBatchSampler,
    ResumableDataLoader,
    check_one_step_per_epoch,
)
from datamodules.self_generated import SelfGeneratingMixin, SelfGeneration, read_texts
from datamodules.sources import ReadStats, SourceSpec, read_documents
from datamodules.world.config import WorldConfig
from datamodules.world.datamodule import DEFAULT_WORLD, WorldDataModule

log = logging.getLogger(__name__)

_KEY = "data.init_args"

SPLIT_MODES = ("random", "middle", "uniform", "random_tokens", "last")
RANDOM_MODES = ("random", "random_tokens")
"""The split modes that draw afresh at every visit (the others are fixed)."""
SplitMode = Literal["random", "middle", "uniform", "random_tokens", "last"]
SENTENCE_SPLITTERS = ("regex", "nltk")
SentenceSplitter = Literal["regex", "nltk"]
OVERLONG_POLICIES = ("truncate", "skip")

MIN_TARGET_TOKENS = 2
"""A target needs 2 tokens: its first is given, the rest are predicted."""

MIN_DOCUMENT_TOKENS = 4
"""`random_tokens` needs at least 4 tokens (the reference's rule)."""

DEFAULT_SENTENCE_BOUNDARY = (
    r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+(?![a-z])"  # end punctuation + space
    r"|\s*\n\s*\n\s*"  # a blank line
)
"""Whitespace after `.`, `!` or `?` (optionally closed by a quote or bracket) and before a character
that is not a lowercase ASCII letter, or a blank line. Abbreviations ("Dr. Smith") are split too;
use `sentence_splitter: nltk` for punkt's rules."""

_DRAW_TAG = 0xD15C  # keeps the draw's RNG stream apart from the sampler's ([seed, epoch])


# --------------------------------------------------------------------------------- sentences


def split_sentences(text: str, pattern: str | re.Pattern[str] | None = None) -> list[str]:
    """The sentences of `text`: cut at every match of `pattern` (the match is dropped), stripped,
    empty pieces removed. Default pattern: `DEFAULT_SENTENCE_BOUNDARY`."""
    regex = re.compile(pattern if pattern is not None else DEFAULT_SENTENCE_BOUNDARY)
    pieces, start = [], 0
    for match in regex.finditer(text):
        if match.end() == 0 or match.start() < start:
            continue
        pieces.append(text[start : match.start()])
        start = match.end()
    pieces.append(text[start:])
    return [s for s in (p.strip() for p in pieces) if s]


def make_sentence_splitter(
    kind: SentenceSplitter = "regex",
    pattern: str | None = None,
    key: str = f"{_KEY}.sentence_splitter",
) -> Callable[[str], list[str]]:
    """A `text -> sentences` function: the regex splitter (`pattern`, default
    `DEFAULT_SENTENCE_BOUNDARY`) or NLTK's punkt (`nltk.sent_tokenize`; never downloads anything)."""
    if kind == "regex":
        try:
            regex = re.compile(pattern if pattern is not None else DEFAULT_SENTENCE_BOUNDARY)
        except re.error as error:
            raise ConfigError(
                f"{_KEY}.sentence_pattern", f"not a valid regular expression: {error}"
            ) from None
        return partial(split_sentences, pattern=regex)
    if kind != "nltk":
        raise ConfigError(key, f"must be one of {list(SENTENCE_SPLITTERS)}, got {kind!r}")
    if pattern is not None:
        raise ConfigError(
            f"{_KEY}.sentence_pattern", "applies to sentence_splitter 'regex' only; remove it"
        )
    try:
        import nltk
    except ImportError:
        raise ConfigError(
            key,
            "'nltk' needs the nltk package and its punkt data (pip install nltk; python -m "
            "nltk.downloader punkt_tab), or use 'regex'",
        ) from None
    try:
        nltk.sent_tokenize("One. Two.")
    except LookupError:
        raise ConfigError(
            key,
            "'nltk' is installed but its punkt data is missing (python -m nltk.downloader "
            "punkt_tab), or use 'regex'",
        ) from None
    return _nltk_sentences


def _nltk_sentences(text: str) -> list[str]:
    """NLTK punkt's sentences of `text`, stripped, empty ones removed."""
    import nltk

    return [s for s in (p.strip() for p in nltk.sent_tokenize(text)) if s]


# --------------------------------------------------------------------------------- the draw


def draw_rng(seed: int, visit: int, document: int) -> np.random.Generator:
    """The RNG of one visit (epoch) of one document: a pure function of its three integers."""
    return np.random.default_rng([int(seed), int(visit), int(document), _DRAW_TAG])


def draw_sentence_indices(n: int, num_splits: int, rng: np.random.Generator) -> list[int]:
    """DiSC's rule: `min(k-1, n-1)` indices from `1..n-1` without replacement, plus `n-1`, sorted
    and deduplicated (empty for `n < 2`)."""
    if n < 2:
        return []
    drawn = rng.choice(np.arange(1, n), size=min(num_splits - 1, n - 1), replace=False)
    return sorted({*map(int, drawn), n - 1})


def middle_sentence_index(n: int) -> list[int]:
    """The `middle` ablation: `[n // 2]` (empty for `n < 2`)."""
    return [n // 2] if n >= 2 else []


def uniform_sentence_indices(n: int, num_splits: int) -> list[int]:
    """The `uniform` ablation: `min(k, n-1)` evenly spaced indices ending at `n-1` (the reference's
    `max(1, round((n-1)/m · j))`, j = 1..m), the same at every visit."""
    if n < 2:
        return []
    m = min(num_splits, n - 1)
    step = (n - 1) / m
    return sorted({max(1, round(step * (j + 1))) for j in range(m)})


def draw_token_cuts(total: int, num_splits: int, rng: np.random.Generator) -> list[int]:
    """The `random_tokens` ablation: `min(k, T-2)` sorted cut positions from `1..T-2` without
    replacement (empty for `T < 4`)."""
    if total < MIN_DOCUMENT_TOKENS:
        return []
    cuts = rng.choice(np.arange(1, total - 1), size=min(num_splits, total - 2), replace=False)
    return sorted(map(int, cuts))


def target_spans(
    sentence_lengths: Sequence[int],
    *,
    mode: SplitMode = "random",
    num_splits: int = 5,
    rng: np.random.Generator | None = None,
) -> list[tuple[int, int]]:
    """The drawn targets of one document as `(start, end)` token spans of its token sequence (the
    context is `[0, start)`), before short targets are skipped. `rng` is needed by the random modes."""
    offsets = np.concatenate([[0], np.cumsum(np.asarray(sentence_lengths, dtype=np.int64))])
    n = len(sentence_lengths)
    if mode == "random_tokens":
        total = int(offsets[-1])
        cuts = draw_token_cuts(total, num_splits, _need(rng, mode))
        ends = [*cuts[1:], total]
        return list(zip(cuts, ends))
    if mode == "random":
        indices = draw_sentence_indices(n, num_splits, _need(rng, mode))
    elif mode == "middle":
        indices = middle_sentence_index(n)
    elif mode == "uniform":
        indices = uniform_sentence_indices(n, num_splits)
    elif mode == "last":
        indices = [n - 1] if n >= 2 else []
    else:
        raise ValueError(f"split_mode must be one of {SPLIT_MODES}, got {mode!r}")
    return [(int(offsets[i]), int(offsets[i + 1])) for i in indices]


def _need(rng: np.random.Generator | None, mode: str) -> np.random.Generator:
    if rng is None:
        raise ValueError(f"split_mode {mode!r} draws at random: pass rng (see draw_rng)")
    return rng


# --------------------------------------------------------------------------------- one document


@dataclass(frozen=True)
class DocumentSplits:
    """One visit of one document: what the teacher reads and where the kept targets lie.

    Attributes:
        tokens: The teacher's input: the document's tokens up to the end of its last kept target
            (empty when no split is kept).
        splits: `(context_length, target_length)` of every kept split, in order (target length ≥ 2).
        skipped_targets: Drawn targets shorter than `MIN_TARGET_TOKENS` (not in `splits`).
    """

    tokens: np.ndarray
    splits: tuple[tuple[int, int], ...] = ()
    skipped_targets: int = 0

    @property
    def weights(self) -> list[float]:
        """The float32 weight `1/((L-1)·|I|)` of each predicted token of each kept split."""
        kept = len(self.splits)
        return [float(np.float32(1.0 / ((length - 1) * kept))) for _, length in self.splits]


def document_splits(tokens: np.ndarray, spans: Sequence[tuple[int, int]]) -> DocumentSplits:
    """Keep the spans with at least `MIN_TARGET_TOKENS` tokens; cut the teacher input after the last."""
    kept = tuple((int(a), int(b) - int(a)) for a, b in spans if b - a >= MIN_TARGET_TOKENS)
    end = max((c + length for c, length in kept), default=0)
    return DocumentSplits(
        tokens=np.asarray(tokens[:end], dtype=np.int64),
        splits=kept,
        skipped_targets=len(spans) - len(kept),
    )


def draw_document(
    tokens: np.ndarray,
    sentence_lengths: Sequence[int],
    *,
    mode: SplitMode,
    num_splits: int,
    seed: int,
    visit: int,
    document: int,
) -> DocumentSplits:
    """The splits of one document (its token sequence and sentence lengths) at one visit: a pure
    function of its arguments."""
    rng = draw_rng(seed, visit, document) if mode in RANDOM_MODES else None
    spans = target_spans(sentence_lengths, mode=mode, num_splits=num_splits, rng=rng)
    return document_splits(tokens, spans)


def split_document(
    sentences: Sequence[Sequence[int]],
    *,
    mode: SplitMode = "random",
    num_splits: int = 5,
    seed: int = 0,
    visit: int = 0,
    document: int = 0,
) -> DocumentSplits:
    """Draw and build the splits of one document (its sentences' token ids) for one visit."""
    lengths = [len(s) for s in sentences]
    tokens = np.fromiter((t for s in sentences for t in s), dtype=np.int64, count=sum(lengths))
    return draw_document(
        tokens,
        lengths,
        mode=mode,
        num_splits=num_splits,
        seed=seed,
        visit=visit,
        document=document,
    )


# --------------------------------------------------------------------------------- packing


def _next_fit(lengths: Sequence[int], width: int) -> list[tuple[int, int]]:
    """(row, column) of every item packed in order, a new row when the current one is full."""
    places, row, col = [], 0, 0
    for length in lengths:
        if col and col + length > width:
            row, col = row + 1, 0
        places.append((row, col))
        col += length
    return places


def _row_layout(
    lengths: Sequence[int], max_length: int, multiple: int
) -> tuple[list[tuple[int, int]], int, int]:
    """Next-fit places of items of `lengths`, the row count (1 when there are none) and the row
    width: the used columns rounded up to `multiple`, at most `max_length`."""
    places = _next_fit(lengths, max_length)
    rows = places[-1][0] + 1 if places else 1
    used = max((c + n for (_, c), n in zip(places, lengths)), default=0)
    width = min(max_length, max(multiple, -(-used // multiple) * multiple))
    return places, rows, width


def _pad_positions(position_ids: np.ndarray, ends: np.ndarray) -> None:
    """Padding after each row's last segment: one pseudo-segment counting from 0 (as `collate_rows`)."""
    width = position_ids.shape[1]
    for r, end in enumerate(ends):
        position_ids[r, end:] = np.arange(width - end)


def pack_documents(
    documents: Sequence[DocumentSplits],
    *,
    max_length: int,
    pad_token_id: int,
    pad_to_multiple_of: int = 8,
) -> dict[str, torch.Tensor]:
    """Teacher and student rows of some documents (the batch keys of `SplitContextDataModule` but
    `sample_index` and `step_weight`).

    Teacher: every document with a kept split, packed in order into rows of at most `max_length`
    (`teacher_input_ids`, `teacher_position_ids` restarting per document, `teacher_attention_mask`).
    Student: every kept target, packed in order into rows of at most `max_length` (`input_ids`,
    `labels` = the target with its first token -100, `position_ids` restarting per target,
    `attention_mask`, `loss_weights`), and `teacher_rows`: for student position `t` the index of the
    aligned position in the teacher's flattened `[rows · width]` hidden states (0 where no loss).
    Trailing padding is trimmed to a multiple of `pad_to_multiple_of`. With no kept split at all,
    one all-padding row each (no loss).
    """
    kept = [d for d in documents if d.splits]
    for d in kept:
        if len(d.tokens) > max_length:
            raise ValueError(
                f"a document of {len(d.tokens)} tokens exceeds max_length {max_length}"
            )
    teacher_places, rows_t, width_t = _row_layout(
        [len(d.tokens) for d in kept], max_length, pad_to_multiple_of
    )
    t_ids = np.full((rows_t, width_t), pad_token_id, dtype=np.int64)
    t_pos = np.zeros((rows_t, width_t), dtype=np.int64)
    t_mask = np.zeros((rows_t, width_t), dtype=np.int64)
    ends = np.zeros(rows_t, dtype=np.int64)
    for d, (r, c) in zip(kept, teacher_places):
        n = len(d.tokens)
        t_ids[r, c : c + n] = d.tokens
        t_pos[r, c : c + n] = np.arange(n)
        t_mask[r, c : c + n] = 1
        ends[r] = c + n
    _pad_positions(t_pos, ends)

    targets = [
        (d, r * width_t + c, ctx, length, weight)
        for d, (r, c) in zip(kept, teacher_places)
        for (ctx, length), weight in zip(d.splits, d.weights)
    ]
    student_places, rows_s, width_s = _row_layout(
        [t[3] for t in targets], max_length, pad_to_multiple_of
    )
    ids = np.full((rows_s, width_s), pad_token_id, dtype=np.int64)
    labels = np.full((rows_s, width_s), IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros((rows_s, width_s), dtype=np.int64)
    mask = np.zeros((rows_s, width_s), dtype=np.int64)
    weights = np.zeros((rows_s, width_s), dtype=np.float32)
    rows = np.zeros((rows_s, width_s), dtype=np.int64)
    ends = np.zeros(rows_s, dtype=np.int64)
    for (d, base, ctx, length, weight), (r, c) in zip(targets, student_places):
        piece = d.tokens[ctx : ctx + length]
        ids[r, c : c + length] = piece
        labels[r, c + 1 : c + length] = piece[1:]
        pos[r, c : c + length] = np.arange(length)
        mask[r, c : c + length] = 1
        weights[r, c + 1 : c + length] = weight
        rows[r, c : c + length - 1] = base + ctx + np.arange(length - 1)
        ends[r] = c + length
    _pad_positions(pos, ends)
    arrays = {
        "input_ids": ids,
        "labels": labels,
        "position_ids": pos,
        "attention_mask": mask,
        "loss_weights": weights,
        "teacher_input_ids": t_ids,
        "teacher_position_ids": t_pos,
        "teacher_attention_mask": t_mask,
        "teacher_rows": rows,
    }
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


@dataclass(frozen=True)
class SplitContextCollator:
    """Turns a micro-batch of `SplitContextDataset` items into the batch dict (picklable for workers).

    `step_weight` is the sampler's total for the whole optimizer step when the items carry it, else
    this batch's own count of documents with a kept split.
    """

    max_length: int
    pad_token_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        documents = [item["document"] for item in items]
        batch = pack_documents(
            documents,
            max_length=self.max_length,
            pad_token_id=self.pad_token_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        batch["sample_index"] = torch.tensor([int(i["sample_index"]) for i in items])
        if "step_weight" in items[0]:
            values = {float(i["step_weight"]) for i in items}
            if len(values) != 1:
                raise ValueError(f"items of one micro-batch disagree on step_weight: {values}")
            step_weight = values.pop()
        else:
            step_weight = float(sum(1 for d in documents if d.splits))
        batch["step_weight"] = torch.tensor(step_weight, dtype=torch.float64)
        batch["skipped_targets"] = torch.tensor(sum(d.skipped_targets for d in documents))
        return batch


# --------------------------------------------------------------------------------- dataset


@dataclass
class EpochSplitStats:
    """What one epoch's draw gives over the whole dataset (logged once per epoch)."""

    documents: int = 0
    drawn_targets: int = 0
    kept_targets: int = 0
    skipped_targets: int = 0  # shorter than MIN_TARGET_TOKENS
    documents_without_targets: int = 0  # every drawn target skipped: weight 0 this epoch


class SplitContextDataset(torch.utils.data.Dataset):
    """Sentence-tokenized documents and their per-visit draws.

    `dataset[(d, step_weight, visit)]` (as `SplitContextSampler` yields) or `dataset[d]` (visit 0)
    returns `{"document": DocumentSplits, "sample_index": d[, "step_weight"]}` for
    `SplitContextCollator`.

    Args:
        documents: Per document, its sentences' token ids.
        mode: The `split_mode` (see the module docstring).
        num_splits: `k`.
        seed: Seed of the draws.
    """

    def __init__(
        self,
        documents: Sequence[Sequence[Sequence[int]]],
        *,
        mode: SplitMode = "random",
        num_splits: int = 5,
        seed: int = 0,
    ) -> None:
        if mode not in SPLIT_MODES:
            raise ValueError(f"split_mode must be one of {SPLIT_MODES}, got {mode!r}")
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.mode: SplitMode = mode
        self.num_splits = int(num_splits)
        self.seed = int(seed)
        lengths = [len(s) for doc in documents for s in doc]
        self.sentence_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.sentence_offsets[1:])
        self.tokens = np.fromiter(
            (t for doc in documents for s in doc for t in s),
            dtype=np.int64,
            count=int(self.sentence_offsets[-1]),
        )
        self.document_sentences = np.zeros(len(documents) + 1, dtype=np.int64)
        np.cumsum([len(doc) for doc in documents], out=self.document_sentences[1:])
        self._epoch_stats: dict[int, EpochSplitStats] = {}

    def __len__(self) -> int:
        return len(self.document_sentences) - 1

    def sentence_lengths(self, document: int) -> np.ndarray:
        """Token count of each sentence of `document`."""
        lo, hi = self.document_sentences[document], self.document_sentences[document + 1]
        return np.diff(self.sentence_offsets[lo : hi + 1])

    def sentences(self, document: int) -> list[list[int]]:
        """The sentences' token ids of `document`."""
        lo, hi = self.document_sentences[document], self.document_sentences[document + 1]
        bounds = self.sentence_offsets[lo : hi + 1]
        return [self.tokens[a:b].tolist() for a, b in pairwise(bounds)]

    def document(self, document: int, visit: int) -> DocumentSplits:
        """The splits of `document` at visit (epoch) `visit`: a pure function of them and the seed."""
        lo = self.sentence_offsets[self.document_sentences[document]]
        hi = self.sentence_offsets[self.document_sentences[document + 1]]
        return draw_document(
            self.tokens[lo:hi],
            self.sentence_lengths(document).tolist(),
            mode=self.mode,
            num_splits=self.num_splits,
            seed=self.seed,
            visit=visit,
            document=document,
        )

    def document_weights(self, visit: int) -> np.ndarray:
        """`float64[documents]`: 1 for a document with a kept split at `visit`, else 0 (the
        sampler's row weights, so `step_weight` counts documents). Logs the epoch's counts once."""
        weights = np.zeros(len(self), dtype=np.float64)
        stats = EpochSplitStats(documents=len(self))
        for d in range(len(self)):
            splits = self.document(d, visit)
            kept = len(splits.splits)
            stats.kept_targets += kept
            stats.skipped_targets += splits.skipped_targets
            weights[d] = 1.0 if kept else 0.0
            stats.documents_without_targets += 0 if kept else 1
        stats.drawn_targets = stats.kept_targets + stats.skipped_targets
        if visit not in self._epoch_stats:
            self._epoch_stats[visit] = stats
            log.info(
                "split contexts, epoch %d: %d targets drawn over %d documents, %d kept",
                visit,
                stats.drawn_targets,
                stats.documents,
                stats.kept_targets,
            )
            if stats.skipped_targets:
                log.warning(
                    "split contexts, epoch %d: skipped %d of %d drawn targets with fewer than %d "
                    "tokens; %d documents have no kept target this epoch (weight 0)",
                    visit,
                    stats.skipped_targets,
                    stats.drawn_targets,
                    MIN_TARGET_TOKENS,
                    stats.documents_without_targets,
                )
        return weights

    def epoch_stats(self, visit: int) -> EpochSplitStats:
        """The counts of `visit`'s draw (computed on first use)."""
        if visit not in self._epoch_stats:
            self.document_weights(visit)
        return self._epoch_stats[visit]

    def __getitem__(self, key: int | tuple[int, float, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, step_weight, visit = key
            item: dict[str, Any] = {"step_weight": float(step_weight)}
        else:
            index, visit, item = key, 0, {}
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"document {index} out of range for {len(self)} documents")
        item["document"] = self.document(index, int(visit))
        item["sample_index"] = index
        return item


class SplitContextSampler(GlobalStepBatchSampler):
    """The global-step order of `GlobalStepBatchSampler` over documents, with per-epoch weights.

    A document's weight at an epoch (the base's `epoch_weights`) is 1 when its draw keeps a split,
    else 0 (`SplitContextDataset.document_weights`), so `step_weight` is the number of documents of
    the step that carry a loss. Keys are `(document, step_weight, epoch)` so the dataset draws for
    the right visit.

    Args:
        dataset: The documents.
        **kwargs: `GlobalStepBatchSampler` arguments but `row_weights` and `epoch_weights`
            (micro_batch_size = documents).
    """

    def __init__(self, dataset: SplitContextDataset, **kwargs: Any) -> None:
        self.dataset = dataset
        super().__init__(
            np.ones(len(dataset), dtype=np.float64),  # one row per document; weights per epoch
            epoch_weights=dataset.document_weights,
            **kwargs,
        )

    def iter_epoch(self, epoch: int, start_sample: int = 0) -> Iterator[list[Any]]:
        """This rank's micro-batches of `(document, step_weight, epoch)` keys."""
        batches = super().iter_epoch(epoch, start_sample)
        return ([(i, w, epoch) for i, w in keys] for keys in batches)


class SplitContextLoader(ResumableDataLoader):
    """`ResumableDataLoader` (its resumable `{"epoch", "consumed_samples"}` state) with DiSC's collator."""

    def __init__(
        self,
        dataset: SplitContextDataset,
        sampler: SplitContextSampler,
        collator: SplitContextCollator,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, sampler, collate_fn=collator, **kwargs)


# --------------------------------------------------------------------------------- data module


@dataclass
class SourceSplitStats:
    """Counts of reading, sentence-splitting and tokenizing one train source."""

    documents: int = 0  # non-empty documents read
    skipped_empty: int = 0
    kept_documents: int = 0
    unsplittable: int = 0  # fewer than 2 sentences (random_tokens: fewer than 4 tokens)
    overlong: int = 0  # longer than max_length: truncated to whole sentences, or skipped
    dropped_sentences: int = 0  # sentences cut off by truncation
    sentences: int = 0  # of the kept documents
    tokens: int = 0  # of the kept documents


class SplitContextDataModule(PretrainingDataModule):
    """DiSC's training data: documents sentence-split, drawn into (context, target) pairs, packed so
    that the teacher reads each document once and the student each target alone.

    Every train batch holds `input_ids`, `labels`, `position_ids`, `attention_mask`, `loss_weights`
    (the student's packed targets), `teacher_input_ids`, `teacher_position_ids`,
    `teacher_attention_mask`, `teacher_rows` (for `lightning_modules.forward.TeacherInputs`),
    `sample_index` (document indices), `skipped_targets` (drawn targets < 2 tokens in this batch) and
    `step_weight` (documents with a kept split in the whole optimizer step). The semantics: the module
    docstring of `datamodules.split_context`. Train documents are read and tokenized sentence by
    sentence in `setup` (in memory, not cached on disk). Validation sources are plain packed rows
    (perplexity), as in `PretrainingDataModule`.

    The train order is the `PretrainingDataModule`'s: a seeded permutation of the documents per
    epoch, cut into optimizer steps of `micro_batch_size × accumulate_grad_batches × world_size`
    documents; the loader's state `{"epoch", "consumed_samples"}` resumes exactly, and the draws of
    an epoch are a pure function of (seed, epoch, document index).

    Args:
        tokenizer: Tokenizer path or hub id (see `PretrainingDataModule`).
        train_sources: Document sources (`kind`, `ratio`, `prompt_field` and `loss_weighting` do not
            apply: every document is read once per epoch, its weighting is DiSC's).
        val_sources: Validation sources by name (packed rows, perplexity).
        max_length: Longest document (teacher row) and row length in tokens; see `overlong_policy`.
        micro_batch_size: Documents per training micro-batch on each rank (all their splits).
        val_batch_size: Rows per validation batch; default `micro_batch_size`.
        num_splits: `k`, the number of targets drawn per document (`random`: k-1 random + the last).
        split_mode: `random` (DiSC), or the ablations `middle`, `uniform`, `random_tokens`;
            `last` (the last sentence alone).
        sentence_splitter: `regex` (no download; `sentence_pattern`) or `nltk` (punkt, installed
            with its data).
        sentence_pattern: Regex of the boundary between two sentences (dropped) for the `regex`
            splitter; default `DEFAULT_SENTENCE_BOUNDARY`.
        overlong_policy: A document longer than `max_length` tokens: `truncate` keeps its longest
            prefix of whole sentences that fits, `skip` drops it. Counted and logged either way.
        seed: Seed of the epoch order and of the draws.
        num_workers: DataLoader worker processes.
        cache_dir: Directory of the validation sources' tokenized stores.
        **kwargs: Arguments of a cooperating base (`WorldSplitContextDataModule`'s world).
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        train_sources: list[SourceSpec] | None = None,
        val_sources: dict[str, SourceSpec] | None = None,
        max_length: int = 512,
        micro_batch_size: int = 1,
        val_batch_size: int | None = None,
        num_splits: int = 5,
        split_mode: SplitMode = "random",
        sentence_splitter: SentenceSplitter = "regex",
        sentence_pattern: str | None = None,
        overlong_policy: Literal["truncate", "skip"] = "truncate",
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str = ".cache/adaptlm/stores",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer,
            train_sources=train_sources,
            val_sources=val_sources,
            max_length=max_length,
            micro_batch_size=micro_batch_size,
            val_batch_size=val_batch_size,
            packing=True,
            rows_per_epoch=None,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
            **kwargs,
        )
        self._check_int("num_splits", num_splits, 1)
        if split_mode not in SPLIT_MODES:
            raise ConfigError(
                f"{_KEY}.split_mode", f"must be one of {list(SPLIT_MODES)}, got {split_mode!r}"
            )
        if overlong_policy not in OVERLONG_POLICIES:
            raise ConfigError(
                f"{_KEY}.overlong_policy",
                f"must be one of {list(OVERLONG_POLICIES)}, got {overlong_policy!r}",
            )
        for i, spec in enumerate(self.train_sources):
            key = f"{_KEY}.train_sources[{i}]"
            if spec.ratio is not None:
                raise ConfigError(
                    f"{key}.ratio",
                    "split-context data reads every document once per epoch; remove it",
                )
            if spec.prompt_field is not None:
                raise ConfigError(
                    f"{key}.prompt_field", "split-context data has no prompts; remove it"
                )
            if spec.loss_weighting != "token":
                raise ConfigError(
                    f"{key}.loss_weighting",
                    "DiSC fixes its own weighting (per target, split and document); remove it",
                )
        self.num_splits = int(num_splits)
        self.split_mode: SplitMode = split_mode
        self.sentence_splitter = sentence_splitter
        self.sentence_pattern = sentence_pattern
        self.overlong_policy = overlong_policy
        self.splitter = make_sentence_splitter(sentence_splitter, sentence_pattern)
        self._split_dataset: SplitContextDataset | None = None
        self.split_stats: dict[str, SourceSplitStats] = {}
        """Per train source name: the counts of reading and splitting it."""

    @property
    def split_dataset(self) -> SplitContextDataset:
        """The train documents (after `setup('fit')`)."""
        if self._split_dataset is None:
            raise RuntimeError("call setup('fit') first")
        return self._split_dataset

    @property
    def train_dataset(self) -> SplitContextDataset:  # type: ignore[override]
        """The train documents (after `setup('fit')`)."""
        return self.split_dataset

    def prepare_data(self) -> None:
        """Tokenize the validation sources into stores (train documents are split in `setup`)."""
        _, val = self._resolved_sources()
        for spec in val.values():
            self._store(spec)

    def _read_source(self, spec: SourceSpec) -> tuple[list[list[list[int]]], SourceSplitStats]:
        """The kept documents of one source as sentences' token ids, and the source's counts."""
        read = ReadStats()
        stats = SourceSplitStats()
        documents: list[list[list[int]]] = []
        texts = list(read_documents(spec, read))
        stats.documents, stats.skipped_empty = read.documents, read.skipped_empty
        for start in range(0, len(texts), 1000):
            sentence_lists = [self.splitter(text) for text in texts[start : start + 1000]]
            flat = [s for sentences in sentence_lists for s in sentences]
            encoded = self._tokenize(flat)
            at = 0
            for sentences in sentence_lists:
                ids = [list(x) for x in encoded[at : at + len(sentences)] if len(x)]
                at += len(sentences)
                document = self._fit(ids, stats)
                if document is not None:
                    documents.append(document)
        stats.kept_documents = len(documents)
        return documents, stats

    def _tokenize(self, sentences: list[str]) -> list[list[int]]:
        """Token ids of each sentence on its own, without special tokens."""
        if not sentences:
            return []
        return self.tokenizer(
            sentences,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]

    def _fit(self, sentences: list[list[int]], stats: SourceSplitStats) -> list[list[int]] | None:
        """The document within `max_length` (or None when skipped), counting what happens."""
        total = sum(len(s) for s in sentences)
        if total > self.max_length:
            stats.overlong += 1
            if self.overlong_policy == "skip":
                return None
            kept, used = [], 0
            for s in sentences:
                if used + len(s) > self.max_length:
                    break
                kept.append(s)
                used += len(s)
            stats.dropped_sentences += len(sentences) - len(kept)
            sentences, total = kept, used
        if self.split_mode == "random_tokens":
            unsplittable = total < MIN_DOCUMENT_TOKENS
        else:
            unsplittable = len(sentences) < 2
        if unsplittable:
            stats.unsplittable += 1
            return None
        stats.sentences += len(sentences)
        stats.tokens += total
        return sentences

    def _log_source(self, name: str, stats: SourceSplitStats) -> None:
        log.info("split-context source %s: %s", name, stats)
        if stats.unsplittable:
            rule = (
                f"fewer than {MIN_DOCUMENT_TOKENS} tokens"
                if self.split_mode == "random_tokens"
                else "fewer than 2 sentences"
            )
            log.warning(
                "split-context source %s: skipped %d of %d documents with %s",
                name,
                stats.unsplittable,
                stats.documents,
                rule,
            )
        if stats.overlong:
            what = (
                f"truncated to whole sentences ({stats.dropped_sentences} sentences dropped)"
                if self.overlong_policy == "truncate"
                else "skipped"
            )
            log.warning(
                "split-context source %s: %d documents longer than max_length=%d %s",
                name,
                stats.overlong,
                self.max_length,
                what,
            )

    def setup(self, stage: str | None = None) -> None:
        """Read and split the train documents (`fit`); validation rows as `PretrainingDataModule`."""
        train, _ = self._resolved_sources()
        if stage in (None, "fit") and self._split_dataset is None and train:
            documents: list[list[list[int]]] = []
            for spec in train:
                docs, stats = self._read_source(spec)
                self.split_stats[spec.display_name] = stats
                self._log_source(spec.display_name, stats)
                documents += docs
            if not documents:
                raise DataError(
                    ", ".join(s.display_name for s in train),
                    f"no document can be split: {dict(self.split_stats)}",
                )
            self._split_dataset = SplitContextDataset(
                documents, mode=self.split_mode, num_splits=self.num_splits, seed=self.seed
            )
        super().setup("validate" if stage in (None, "fit") else stage)

    def collator(self) -> SplitContextCollator:
        """The collator of the train batches."""
        return SplitContextCollator(self.max_length, int(self.tokenizer.pad_token_id))

    def train_sampler(  # type: ignore[override]
        self, accumulate_grad_batches: int = 1, world_size: int = 1, rank: int = 0
    ) -> SplitContextSampler:
        """The global-step sampler of the train documents for this layout."""
        if not self.train_sources:
            raise ConfigError(f"{_KEY}.train_sources", "no train sources configured")
        dataset = self.split_dataset
        sampler = SplitContextSampler(
            dataset,
            micro_batch_size=self.micro_batch_size,
            accumulate_grad_batches=accumulate_grad_batches,
            world_size=world_size,
            rank=rank,
            seed=self.seed,
        )
        check_one_step_per_epoch(sampler, len(dataset), "documents", "more documents", _KEY)
        return sampler

    def train_dataloader(self) -> SplitContextLoader:  # type: ignore[override]
        """This rank's loader in the global-step order, with a resumable state."""
        accumulate, world, rank, trainer = self._trainer_layout()
        return SplitContextLoader(
            self.split_dataset,
            self.train_sampler(accumulate, world, rank),
            self.collator(),
            progress=trainer,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )


class WorldSplitContextDataModule(SplitContextDataModule, WorldDataModule):
    """`SplitContextDataModule` over the synthetic world: `world:<split>` source paths and the
    world's tokenizer (`WorldDataModule`), DiSC's splits for training. Default train source: the
    new-domain documents; default validation: the world's paraphrases (see `WorldDataModule`).

    Args:
        world: Size and shape of the world (see `WorldDataModule`).
        world_cache_dir: Where worlds are materialized.
        qa_format: Format of the evaluation questions, `chat` or `plain`.
        **kwargs: The `SplitContextDataModule` arguments.
    """

    def __init__(
        self,
        world: WorldConfig = DEFAULT_WORLD,
        world_cache_dir: str = ".cache/adaptlm/worlds",
        qa_format: Literal["chat", "plain"] = "chat",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            world=world, world_cache_dir=world_cache_dir, qa_format=qa_format, **kwargs
        )


class FictionalSplitContextDataModule(SplitContextDataModule, FictionalDataModule):
    """`SplitContextDataModule` over the fictional corpus (`datamodules.fictional`): `fictional:<name>`
    source paths, the GGUF model's own tokenizer and the corpus's evaluation sets
    (`FictionalDataModule`), DiSC's splits for training. Default train source: the 32 fictional
    documents; no validation sources.

    Args:
        tokenizer: The directory of the GGUF file (or `pkg:<module>`), or with
            `tokenizer_gguf_file: null` any tokenizer path or hub id.
        tokenizer_gguf_file: The GGUF file to take the tokenizer from.
        tokenizer_cache_dir: Where the exported tokenizer directory is kept.
        **kwargs: The `SplitContextDataModule` arguments.
    """

    def __init__(
        self,
        tokenizer: str | None = DEFAULT_MODEL_DIR,
        tokenizer_gguf_file: str | None = DEFAULT_GGUF_FILE,
        tokenizer_cache_dir: str = ".cache/adaptlm/tokenizers",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer,
            tokenizer_gguf_file=tokenizer_gguf_file,
            tokenizer_cache_dir=tokenizer_cache_dir,
            **kwargs,
        )


class SelfGeneratedContextDataModule(SelfGeneratingMixin, SplitContextDataModule):
    """CD-base's data: the teacher reads a document and the model's own continuation of it, the
    student the continuation alone (DiSC's baseline "context distillation", fed to `DiSCModule`).

    In `prepare_data` every train document is continued by the run's initial model (or
    `generation.model_name_or_path`) and cached (`datamodules.self_generated`; `generation.prompt:
    continue`, what an unset `prompt` means here; `rephrase` distils on rewrites instead). Each kept generation makes
    one training document of two segments, the document's tokens and the continuation's (each
    stripped and tokenized on its own without special tokens, as DiSC's sentences), read with
    `split_mode: last`: its one target is the continuation, its context the whole document. So the
    teacher reads `document + continuation`, the student the continuation from position 0; student
    positions `0..L-2` align with teacher positions `c..c+L-2`; each predicted token weighs
    `1/(L-1)` and `step_weight` counts the step's (document, continuation) pairs: DiSC's reduction
    with one split per document. With `num_samples > 1` every sample is its own pair.

    A pair longer than `max_length` keeps its document and the longest prefix of the continuation
    that fits (`overlong_policy: truncate`) or is dropped (`skip`); a pair left with a continuation
    under 2 tokens is skipped. Both are counted (`split_stats`: `overlong`, `unsplittable`) and
    logged; generations are counted by `generated[<source>].stats`.

    Args:
        generation: What to generate (`SelfGeneration`); default: sampled continuations (`prompt:
            continue`) by the run's own initial model.
        generation_cache_dir: Where generations are cached (`<dir>/<prompt>-<fingerprint>/`).
        **kwargs: The `SplitContextDataModule` arguments but the split settings (`split_mode`,
            `num_splits`, `sentence_splitter`, `sentence_pattern`), which CD-base fixes.
    """

    def __init__(
        self,
        generation: SelfGeneration | None = None,
        generation_cache_dir: str = ".cache/adaptlm/generations",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            split_mode="last",
            num_splits=1,
            sentence_splitter="regex",
            sentence_pattern=None,
            **kwargs,
        )
        self._init_generation(generation, generation_cache_dir, "continue")

    def prepare_data(self) -> None:
        """Generate (or find cached) the train documents' continuations; tokenize validation."""
        super().prepare_data()
        train, _ = self._resolved_sources()
        for spec in train:
            self.self_generated(spec)

    def _read_source(self, spec: SourceSpec) -> tuple[list[list[list[int]]], SourceSplitStats]:
        """Per kept generation, `[document tokens, continuation tokens]`, and the source's counts."""
        read = ReadStats()
        texts = read_texts(spec, read)
        stats = SourceSplitStats(documents=read.documents, skipped_empty=read.skipped_empty)
        records = self.self_generated(spec, texts).records
        document_ids = self._tokenize(texts)
        documents = []
        for record, continuation in zip(records, self._tokenize([r.text for r in records])):
            pair = self._fit([list(document_ids[record.source_index]), list(continuation)], stats)
            if pair is not None:
                documents.append(pair)
        stats.kept_documents = len(documents)
        return documents, stats

    def _fit(self, sentences: list[list[int]], stats: SourceSplitStats) -> list[list[int]] | None:
        """The pair within `max_length` (the continuation cut), or None when skipped; counted."""
        document, continuation = sentences
        room = self.max_length - len(document)
        if len(continuation) > room:
            stats.overlong += 1
            if self.overlong_policy == "skip":
                return None
            continuation = continuation[: max(room, 0)]
        if len(continuation) < MIN_TARGET_TOKENS:
            stats.unsplittable += 1
            return None
        stats.sentences += 2
        stats.tokens += len(document) + len(continuation)
        return [document, continuation]

    def _log_source(self, name: str, stats: SourceSplitStats) -> None:
        log.info("self-generated contexts %s: %s", name, stats)
        if stats.overlong:
            what = "continuation cut to fit" if self.overlong_policy == "truncate" else "skipped"
            log.warning(
                "self-generated contexts %s: %d (document, continuation) pairs longer than "
                "max_length=%d: %s",
                name,
                stats.overlong,
                self.max_length,
                what,
            )
        if stats.unsplittable:
            log.warning(
                "self-generated contexts %s: skipped %d pairs whose continuation has fewer than %d "
                "tokens within max_length=%d",
                name,
                stats.unsplittable,
                MIN_TARGET_TOKENS,
                self.max_length,
            )


class WorldSelfGeneratedContextDataModule(
    SelfGeneratedContextDataModule, WorldSplitContextDataModule
):
    """`SelfGeneratedContextDataModule` over the synthetic world (`WorldSplitContextDataModule`'s
    `world:<split>` paths and tokenizer). Default train source: the new-domain documents.

    Args:
        world: Size and shape of the world (see `WorldDataModule`).
        world_cache_dir: Where worlds are materialized.
        qa_format: Format of the evaluation questions, `chat` or `plain`.
        **kwargs: The `SelfGeneratedContextDataModule` arguments.
    """

    def __init__(
        self,
        world: WorldConfig = DEFAULT_WORLD,
        world_cache_dir: str = ".cache/adaptlm/worlds",
        qa_format: Literal["chat", "plain"] = "chat",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            world=world, world_cache_dir=world_cache_dir, qa_format=qa_format, **kwargs
        )


class FictionalSelfGeneratedContextDataModule(
    SelfGeneratedContextDataModule, FictionalSplitContextDataModule
):
    """`SelfGeneratedContextDataModule` over the fictional corpus (`FictionalSplitContextDataModule`'s
    `fictional:<name>` paths, GGUF tokenizer and evaluation sets). Default train source: the
    fictional documents, each continued by the run's own initial model.

    Args:
        tokenizer: The directory of the GGUF file (or `pkg:<module>`), or with
            `tokenizer_gguf_file: null` any tokenizer path or hub id.
        tokenizer_gguf_file: The GGUF file to take the tokenizer from.
        tokenizer_cache_dir: Where the exported tokenizer directory is kept.
        **kwargs: The `SelfGeneratedContextDataModule` arguments.
    """

    def __init__(
        self,
        tokenizer: str | None = DEFAULT_MODEL_DIR,
        tokenizer_gguf_file: str | None = DEFAULT_GGUF_FILE,
        tokenizer_cache_dir: str = ".cache/adaptlm/tokenizers",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer,
            tokenizer_gguf_file=tokenizer_gguf_file,
            tokenizer_cache_dir=tokenizer_cache_dir,
            **kwargs,
        )


__all__ = [
    "DEFAULT_SENTENCE_BOUNDARY",
    "MIN_TARGET_TOKENS",
    "RANDOM_MODES",
    "SPLIT_MODES",
    "DocumentSplits",
    "EpochSplitStats",
    "FictionalSelfGeneratedContextDataModule",
    "FictionalSplitContextDataModule",
    "SelfGeneratedContextDataModule",
    "SourceSplitStats",
    "SplitContextCollator",
    "SplitContextDataModule",
    "SplitContextDataset",
    "SplitContextLoader",
    "SplitContextSampler",
    "WorldSelfGeneratedContextDataModule",
    "WorldSplitContextDataModule",
    "document_splits",
    "draw_document",
    "draw_rng",
    "draw_sentence_indices",
    "draw_token_cuts",
    "make_sentence_splitter",
    "middle_sentence_index",
    "pack_documents",
    "split_document",
    "split_sentences",
    "target_spans",
    "uniform_sentence_indices",
]
