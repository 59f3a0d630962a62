"""Metrics of TRAIT's selection: classifier metrics (precision / recall / F1 / ROC AUC) and a
selection's quality against ground-truth labels (the world's `web_labels`).

`evaluate_selection` compares the selected ids with a labels file of the corpus
(`{"id", "in_domain", "quality", ...}` per document):

- `precision`: share of the selected documents that are in-domain;
- `recall`: share of the corpus's in-domain documents that are selected;
- `low_quality_share`: share of the selected documents that are low quality;
- `in_domain_high_quality_precision`: share of the selected that are in-domain *and* high quality
  (what TRAIT wants: domain data worth training on), and its recall over all such documents;
- token-weighted precision and the tokens selected, when token counts are given.

A selected id without a label is counted (`unlabelled`) and excluded from every share.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import ConfigError, DataError
from common.jsonl import read_jsonl
from datamodules.sources import ReadStats, SourceSpec, detect_format, read_raw_fields, resolve_files

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- classifiers


def roc_auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """The ROC AUC: the probability that a random positive scores above a random negative, ties
    counting one half (the Mann-Whitney U statistic from average ranks); NaN without both
    classes."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average rank (1-based) of each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], s.size]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_metrics(
    labels: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Precision, recall, F1 and accuracy of `score >= threshold` for the positive class, and the
    ROC AUC; counts of each class."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    predicted = s >= threshold
    tp = int((predicted & y).sum())
    fp = int((predicted & ~y).sum())
    fn = int((~predicted & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": float((predicted == y).mean()) if y.size else 0.0,
        "auc": roc_auc(y, s),
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
    }


# ----------------------------------------------------------------------------------- labels


@dataclass
class LabelsSpec:
    """A file of ground-truth labels joined to a corpus by id.

    Args:
        path: JSONL / Parquet / HF dataset, or `world:<split>` (e.g. `world:web_labels`).
        format: `auto`, `jsonl`, `parquet` or `hf`.
        id_field: The id field (matches the corpus's ids).
        split: Split of an HF dataset.
        world_seed: For `world:` paths: the world of this seed (null: the config's).
    """

    path: str
    format: str = "auto"
    id_field: str = "id"
    split: str = "train"
    world_seed: int | None = None


def read_labels(
    spec: LabelsSpec, fields: Sequence[str], *, key: str = "labels"
) -> dict[str, dict[str, Any]]:
    """`id -> {field: value}` of every labels record (`spec.path` resolved: no `world:`); a missing
    field is absent from the record's dict. A record without an id, or a duplicate id, is a
    `DataError` naming it (labels are ground truth: they are not read tolerantly)."""
    if not spec.path or spec.path.startswith("world:"):
        raise ConfigError(f"{key}.path", f"{spec.path!r} must be resolved to a file first")
    names = (spec.id_field, *fields)
    source = SourceSpec(path=spec.path, format=spec.format, split=spec.split)  # type: ignore
    out: dict[str, dict[str, Any]] = {}
    if detect_format(source) == "jsonl":
        rows: Iterable[tuple[Any, dict[str, Any]]] = (
            (f"{path}:{line}", record)
            for path in resolve_files(source, "jsonl")
            for line, record in read_jsonl(path)
        )
    else:
        from datamodules import sources

        rows = (
            (
                f"{where.source} {where.record}".strip(),
                {n: v for n, v in zip(names, values) if v is not sources._MISSING},
            )
            for where, values in read_raw_fields(source, ReadStats(), names, what="labels")
        )
    for where, record in rows:
        ident = record.get(spec.id_field)
        if isinstance(ident, int) and not isinstance(ident, bool):
            ident = str(ident)
        if not isinstance(ident, str) or not ident:
            raise DataError(
                str(where), f"labels record without a string id field {spec.id_field!r}"
            )
        if ident in out:
            raise DataError(str(where), f"duplicate id {ident!r} in the labels")
        out[ident] = {n: record[n] for n in fields if n in record}
    if not out:
        raise DataError(spec.path, "no labels")
    return out


# ----------------------------------------------------------------------------------- selections


@dataclass
class EvaluationSettings:
    """Which label fields mean what.

    Args:
        in_domain_field: The boolean field saying a document is in-domain.
        quality_field: The field holding the quality.
        low_quality_values: Values of `quality_field` that mean low quality.
    """

    in_domain_field: str = "in_domain"
    quality_field: str = "quality"
    low_quality_values: list[Any] = field(default_factory=lambda: ["low"])


def evaluate_selection(
    selected_ids: Sequence[str],
    labels: dict[str, dict[str, Any]],
    settings: EvaluationSettings | None = None,
    *,
    token_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The selection's metrics against `labels` (module docstring); `token_counts`: id -> tokens
    of the selected (and, for token precision, any) documents."""
    settings = settings or EvaluationSettings()
    domain_key, quality_key = settings.in_domain_field, settings.quality_field
    low_values = list(settings.low_quality_values)

    def in_domain(record: dict[str, Any]) -> bool:
        return bool(record.get(domain_key, False))

    def low(record: dict[str, Any]) -> bool:
        return record.get(quality_key) in low_values

    labelled = [i for i in selected_ids if i in labels]
    unlabelled = len(selected_ids) - len(labelled)
    if unlabelled:
        log.warning("%d of the %d selected ids have no label", unlabelled, len(selected_ids))
    domain_total = sum(in_domain(r) for r in labels.values())
    good_total = sum(in_domain(r) and not low(r) for r in labels.values())
    hits = [i for i in labelled if in_domain(labels[i])]
    lows = [i for i in labelled if low(labels[i])]
    good = [i for i in hits if not low(labels[i])]
    n = len(labelled)
    metrics: dict[str, Any] = {
        "selected": len(selected_ids),
        "unlabelled": unlabelled,
        "corpus_documents": len(labels),
        "corpus_in_domain": domain_total,
        "corpus_in_domain_high_quality": good_total,
        "selected_in_domain": len(hits),
        "selected_low_quality": len(lows),
        "precision": len(hits) / n if n else 0.0,
        "recall": len(hits) / domain_total if domain_total else 0.0,
        "low_quality_share": len(lows) / n if n else 0.0,
        "in_domain_high_quality_precision": len(good) / n if n else 0.0,
        "in_domain_high_quality_recall": len(good) / good_total if good_total else 0.0,
    }
    if token_counts is not None:
        tokens = sum(token_counts.get(i, 0) for i in selected_ids)
        domain_tokens = sum(token_counts.get(i, 0) for i in hits)
        metrics["tokens_selected"] = tokens
        metrics["token_precision"] = domain_tokens / tokens if tokens else 0.0
    return metrics


__all__ = [
    "EvaluationSettings",
    "LabelsSpec",
    "binary_metrics",
    "evaluate_selection",
    "read_labels",
    "roc_auc",
]
