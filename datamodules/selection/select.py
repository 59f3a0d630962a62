"""Selection from scores: the one budget rule every method shares, the orders, the quality filter
and the selection's outputs.

**The budget rule** (`fill_budget`): walk the documents in the method's order; keep each one whose
tokens still fit in what is left of `budget_tokens`, skip one that does not (a later, shorter one
may still fit); stop when the budget is filled exactly or the order ends. Every method
(fastText, fastText + quality, DSIR, random) uses it, so they compare at the same budget. A budget
larger than the corpus's tokens is a `ConfigError` (`check_budget`).

**Orders**: a classifier's scores descending, ties by corpus position (`order_by_score`); DSIR's
Gumbel top-k (`dsir.gumbel_order`); a seeded permutation for the random baseline
(`random_order`).

**Threshold mode**: with `threshold` set, only documents scoring `>= threshold` are candidates;
without a budget every one of them is selected (in order), with a budget the rule above fills it
from them.

**Quality filter** (`quality_mask`): a candidate survives when it is among the top `keep_fraction`
of the *whole corpus* by quality score (`ceil(keep_fraction * N)` documents, ties by position) and
scores `>= quality_threshold` (each check only when set). The pipeline with the filter: order the
candidates by domain score, drop those the filter rejects, then fill the budget.

Token counts (`count_tokens`): the tokenizer's ids of the text without special tokens (the EOS a
training store appends is not counted).

Outputs (`write_selection`, each file written atomically): `selected.jsonl` (`{"id", "text"}` per
selected document, in selection order: usable directly as a training `document` source) and
`manifest.json` (method, settings, counts, tokens, budget, the fingerprint of the inputs).
`reusable_selection` says whether a directory already holds the outputs of a fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_file
from common.errors import ConfigError, DataError
from datamodules.selection.corpus import Document

log = logging.getLogger(__name__)

VERSION = 1
SELECTED = "selected.jsonl"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
SCORES = "scores.jsonl"


# ----------------------------------------------------------------------------------- the rule


def fill_budget(
    order: Sequence[int] | np.ndarray, token_counts: Sequence[int] | np.ndarray, budget_tokens: int
) -> np.ndarray:
    """The indices kept by the budget rule (module docstring), in `order`'s order."""
    counts = np.asarray(token_counts, dtype=np.int64)
    left = int(budget_tokens)
    kept = []
    for index in np.asarray(order, dtype=np.int64):
        if left <= 0:
            break
        size = int(counts[index])
        if size <= left:
            kept.append(int(index))
            left -= size
    return np.asarray(kept, dtype=np.int64)


def check_budget(budget_tokens: int, total_tokens: int, *, key: str = "budget_tokens") -> None:
    """`ConfigError` for a budget that is not a positive integer or exceeds the corpus's tokens."""
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int) or budget_tokens < 1:
        raise ConfigError(key, f"must be an integer >= 1, got {budget_tokens!r}")
    if budget_tokens > total_tokens:
        raise ConfigError(
            key,
            f"is {budget_tokens} but the corpus has only {total_tokens} tokens; lower it "
            "(selecting everything needs no selection)",
        )


def order_by_score(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Indices by score descending, ties by position; NaN scores last."""
    values = np.asarray(scores, dtype=np.float64)
    keys = np.where(np.isnan(values), np.inf, -values)
    return np.argsort(keys, kind="stable")


def random_order(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of `range(n)` (the random baseline's order)."""
    return np.random.default_rng(seed).permutation(n)


def quality_mask(
    quality_scores: Sequence[float] | np.ndarray,
    *,
    keep_fraction: float | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Which documents pass the quality filter (module docstring): among the top `keep_fraction`
    of all documents and scoring `>= threshold`, each check only when set."""
    values = np.asarray(quality_scores, dtype=np.float64)
    keep = np.ones(values.size, dtype=bool)
    if keep_fraction is not None:
        if not 0 < keep_fraction <= 1:
            raise ConfigError("quality.keep_fraction", f"must be in (0, 1], got {keep_fraction!r}")
        top = np.zeros(values.size, dtype=bool)
        top[order_by_score(values)[: math.ceil(keep_fraction * values.size)]] = True
        keep &= top
    if threshold is not None:
        keep &= values >= threshold
    return keep


def count_tokens(texts: Sequence[str], tokenizer: Any, batch_size: int = 1024) -> np.ndarray:
    """Tokens of each text (no special tokens), int64."""
    out = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        out[start : start + len(chunk)] = [len(row) for row in ids]
    return out


@dataclass
class Selection:
    """What a selection chose and how."""

    indices: np.ndarray
    """Selected corpus positions, in selection order."""
    tokens: int
    candidates: int
    """Documents eligible before the budget (after threshold and quality filter)."""
    candidate_tokens: int
    info: dict[str, Any] = field(default_factory=dict)


def select(
    order: np.ndarray,
    token_counts: np.ndarray,
    *,
    budget_tokens: int | None,
    eligible: np.ndarray | None = None,
) -> Selection:
    """Keep the eligible documents of `order` (all when `eligible` is None) and fill the budget
    from them (all of them without a budget); a budget the candidates cannot fill is logged."""
    order = np.asarray(order, dtype=np.int64)
    if eligible is not None:
        order = order[np.asarray(eligible, dtype=bool)[order]]
    counts = np.asarray(token_counts, dtype=np.int64)
    candidate_tokens = int(counts[order].sum())
    chosen = order if budget_tokens is None else fill_budget(order, counts, budget_tokens)
    tokens = int(counts[chosen].sum())
    if budget_tokens is not None and candidate_tokens < budget_tokens:
        log.warning(
            "the %d candidates hold %d tokens, fewer than the budget of %d: all of them selected",
            order.size,
            candidate_tokens,
            budget_tokens,
        )
    return Selection(chosen, tokens, int(order.size), candidate_tokens)


# ----------------------------------------------------------------------------------- files


def read_scores(path: str | Path, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """`(ids, scores)` of a scores file (`{"id", "score"}` per line); with `ids`, the file must
    hold exactly these documents in this order (else a `DataError`: it scored another corpus)."""
    from common.jsonl import read_jsonl

    path = Path(path)
    got: list[str] = []
    values: list[float] = []
    for line, record in read_jsonl(path):
        if "id" not in record or "score" not in record:
            raise DataError(path, "a scores line needs 'id' and 'score'", line)
        score = record["score"]
        if score is None or isinstance(score, bool) or not isinstance(score, int | float):
            raise DataError(path, f"score must be a number, got {score!r}", line)
        got.append(str(record["id"]))
        values.append(float(score))
    if ids is not None and list(ids) != got:
        first = next(
            (i for i, (a, b) in enumerate(zip(ids, got)) if a != b), min(len(ids), len(got))
        )
        raise DataError(
            path,
            f"does not score this corpus in its order ({len(got)} scores for {len(ids)} documents, "
            f"first difference at position {first}); score the corpus again",
        )
    return got, np.asarray(values, dtype=np.float64)


def write_scores(path: str | Path, ids: Sequence[str], scores: np.ndarray) -> Path:
    """`{"id", "score"}` per document, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as out:
        for doc_id, score in zip(ids, scores):
            out.write(json.dumps({"id": doc_id, "score": float(score)}) + "\n")
    return path


def digest(path: str | Path) -> str:
    """blake2b of a file's content (the manifest's check that an output is the recorded one)."""
    h = hashlib.blake2b(digest_size=16)
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint_of(payload: Any) -> str:
    """A short stable hash of a JSON-able payload."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def write_json(path: str | Path, payload: Any) -> Path:
    """Indented JSON, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def write_selected(path: str | Path, documents: Sequence[Document], indices: np.ndarray) -> Path:
    """`selected.jsonl`: `{"id", "text"}` per selected document, in selection order, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as out:
        for i in indices:
            doc = documents[int(i)]
            out.write(json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n")
    return path


def reusable_selection(
    output_dir: str | Path, fingerprint: str, files: Sequence[str]
) -> dict[str, Any] | None:
    """The manifest of `output_dir` when it records `fingerprint` and every file of `files` is
    there with the recorded hash, else None."""
    output_dir = Path(output_dir)
    try:
        manifest = json.loads((output_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint or manifest.get("version") != VERSION:
        return None
    recorded = manifest.get("files", {})
    for name in files:
        path = output_dir / name
        if not path.is_file() or recorded.get(name) != digest(path):
            return None
    return manifest


__all__ = [
    "MANIFEST",
    "METRICS",
    "SCORES",
    "SELECTED",
    "Selection",
    "check_budget",
    "count_tokens",
    "digest",
    "fill_budget",
    "fingerprint_of",
    "order_by_score",
    "quality_mask",
    "random_order",
    "read_scores",
    "reusable_selection",
    "select",
    "write_json",
    "write_scores",
    "write_selected",
]
