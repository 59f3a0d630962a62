"""DSIR, the importance-resampling baseline of TRAIT's selection (Xie et al. 2023, 2302.03169).

Features: the text is lowercased and split into word tokens (runs of word characters, and runs of
other non-space characters: a word-punct split like DSIR's); every unigram and every bigram of
adjacent tokens (`"a b"`) is hashed into one of `num_buckets` buckets with a stable hash (the
first 8 bytes of its blake2b digest, little-endian, modulo `num_buckets`; never Python's salted
`hash()`), so a document is a vector of bucket counts.

Fitting (`fit_dsir`): the target distribution `p_t` comes from the in-domain documents, the raw
distribution `p_r` from the corpus to select from; both are smoothed bag-of-buckets estimates,
`p(b) = (count(b) + smoothing) / (total + smoothing * num_buckets)` (add-one by default). A
document's log importance weight is `log w = sum_b count(b) * (log p_t(b) - log p_r(b))`, which is
what `DSIRScorer` returns (higher = more like the target).

Selection (`gumbel_order`, then `select.fill_budget`): DSIR resamples without replacement in
proportion to `w`; the Gumbel top-k trick does it exactly: order the documents by `log w + G`
with `G` standard Gumbel noise from `numpy.random.default_rng(seed)`, and take them in that
order until the token budget is filled. Same seed, same order; another seed, another draw.

The fitted model is one `.npz` (`log_ratio`, the two count vectors, `num_buckets`, `smoothing`)
with a `.json` beside it (settings, counts, fingerprint of the inputs).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_file
from common.errors import ConfigError, DataError
from datamodules.selection.scorers import DocumentScorer, ScorerSpec

log = logging.getLogger(__name__)

VERSION = 1
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_MEMO_LIMIT = 1 << 20


@dataclass
class DSIRSettings:
    """DSIR's features and smoothing.

    Args:
        num_buckets: Hash buckets of the unigram + bigram features.
        smoothing: Pseudo-count added to every bucket of both distributions (1: add-one).
    """

    num_buckets: int = 10000
    smoothing: float = 1.0

    def validate(self, key: str) -> None:
        """`ConfigError` naming `<key>.<field>` for a bad value."""
        if (
            isinstance(self.num_buckets, bool)
            or not isinstance(self.num_buckets, int)
            or self.num_buckets < 1
        ):
            raise ConfigError(
                f"{key}.num_buckets", f"must be an integer >= 1, got {self.num_buckets!r}"
            )
        if not isinstance(self.smoothing, int | float) or not self.smoothing > 0:
            raise ConfigError(f"{key}.smoothing", f"must be > 0, got {self.smoothing!r}")


def tokens(text: str) -> list[str]:
    """The lowercased word-punct tokens of `text`."""
    return _TOKEN.findall(text.lower())


def ngrams(text: str) -> list[str]:
    """The unigrams and the bigrams (`"a b"`) of `text`'s tokens."""
    words = tokens(text)
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def stable_bucket(feature: str, num_buckets: int) -> int:
    """The bucket of one feature: blake2b's first 8 bytes (little-endian) modulo `num_buckets`."""
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_buckets


class HashedNgrams:
    """Texts -> bucket ids of their unigram and bigram features (memoized per feature)."""

    def __init__(self, num_buckets: int) -> None:
        self.num_buckets = num_buckets
        self._memo: dict[str, int] = {}

    def buckets(self, text: str) -> np.ndarray:
        """The bucket of every feature occurrence of `text` (int64)."""
        memo = self._memo
        if len(memo) > _MEMO_LIMIT:
            memo.clear()
        out = []
        for feature in ngrams(text):
            bucket = memo.get(feature)
            if bucket is None:
                bucket = memo[feature] = stable_bucket(feature, self.num_buckets)
            out.append(bucket)
        return np.asarray(out, dtype=np.int64)

    def counts(self, texts: Iterable[str]) -> np.ndarray:
        """The summed bucket counts of `texts` (int64 `[num_buckets]`)."""
        total = np.zeros(self.num_buckets, dtype=np.int64)
        for text in texts:
            b = self.buckets(text)
            if b.size:
                total += np.bincount(b, minlength=self.num_buckets)
        return total


def log_distribution(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """`log p(b)` of the smoothed estimate `(count + smoothing) / (total + smoothing * B)`."""
    counts = counts.astype(np.float64)
    return np.log(counts + smoothing) - np.log(counts.sum() + smoothing * counts.size)


@dataclass
class DSIRModel:
    """A fitted DSIR: the per-bucket log ratio `log p_t - log p_r` and what it came from."""

    log_ratio: np.ndarray
    target_counts: np.ndarray
    raw_counts: np.ndarray
    settings: DSIRSettings

    def log_weights(
        self, texts: Sequence[str], featurizer: HashedNgrams | None = None
    ) -> np.ndarray:
        """`sum_b count(b) * log_ratio[b]` per text (float64)."""
        featurizer = featurizer or HashedNgrams(self.settings.num_buckets)
        return np.fromiter(
            (float(self.log_ratio[featurizer.buckets(t)].sum()) for t in texts),
            dtype=np.float64,
            count=len(texts),
        )

    def save(self, path: str | Path) -> Path:
        """Write the `.npz` atomically."""
        path = Path(path)
        with atomic_file(path) as tmp, tmp.open("wb") as handle:
            np.savez(
                handle,
                version=np.int64(VERSION),
                log_ratio=self.log_ratio,
                target_counts=self.target_counts,
                raw_counts=self.raw_counts,
                num_buckets=np.int64(self.settings.num_buckets),
                smoothing=np.float64(self.settings.smoothing),
            )
        return path

    @classmethod
    def load(cls, path: str | Path, *, key: str = "scorer") -> DSIRModel:
        """Read a `.npz` written by `save`; `ConfigError` naming `<key>.path` otherwise."""
        try:
            with np.load(Path(path)) as data:
                settings = DSIRSettings(int(data["num_buckets"]), float(data["smoothing"]))
                model = cls(
                    np.asarray(data["log_ratio"], dtype=np.float64),
                    np.asarray(data["target_counts"]),
                    np.asarray(data["raw_counts"]),
                    settings,
                )
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"{key}.path", f"{str(path)!r} is not a DSIR .npz: {error}") from None
        if model.log_ratio.shape != (settings.num_buckets,):
            raise ConfigError(
                f"{key}.path", f"{str(path)!r}: log_ratio does not have num_buckets entries"
            )
        return model


def fit_dsir(
    target_texts: Iterable[str], raw_texts: Iterable[str], settings: DSIRSettings | None = None
) -> DSIRModel:
    """Fit the target distribution on `target_texts` (in-domain) and the raw one on `raw_texts`
    (the corpus); `DataError` when either has no feature at all."""
    settings = settings or DSIRSettings()
    settings.validate("dsir")
    featurizer = HashedNgrams(settings.num_buckets)
    target = featurizer.counts(target_texts)
    raw = featurizer.counts(raw_texts)
    if target.sum() == 0:
        raise DataError("dsir target", "the in-domain documents have no word: nothing to fit")
    if raw.sum() == 0:
        raise DataError("dsir raw", "the corpus has no word: nothing to fit")
    log_ratio = log_distribution(target, settings.smoothing) - log_distribution(
        raw, settings.smoothing
    )
    return DSIRModel(log_ratio, target, raw, settings)


def gumbel_order(log_weights: np.ndarray, seed: int) -> np.ndarray:
    """Document indices ordered by `log w + Gumbel noise` (descending; ties by index): taking a
    prefix samples without replacement in proportion to `w`."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    noise = np.random.default_rng(seed).gumbel(size=log_weights.size)
    return np.argsort(-(log_weights + noise), kind="stable")


class DSIRScorer(DocumentScorer):
    """DSIR's log importance weight under a fitted `.npz` (`ScorerSpec(kind="dsir")`)."""

    def __init__(self, spec: ScorerSpec, *, key: str = "scorer") -> None:
        self.spec = spec
        self.name = spec.name or "dsir"
        self.model = DSIRModel.load(spec.path, key=key)
        self.featurizer = HashedNgrams(self.model.settings.num_buckets)

    def settings(self) -> dict[str, Any]:
        """The features' settings (the `.npz`'s hash covers the fitted values)."""
        return {
            "features": "unigram+bigram blake2b",
            "version": VERSION,
            **asdict(self.model.settings),
        }

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """The log importance weight of each text."""
        return self.model.log_weights(texts, self.featurizer)


__all__ = [
    "DSIRModel",
    "DSIRScorer",
    "DSIRSettings",
    "HashedNgrams",
    "fit_dsir",
    "gumbel_order",
    "log_distribution",
    "ngrams",
    "stable_bucket",
    "tokens",
]
