"""DSIR: hashed features, importance weights against a naive computation, seeded Gumbel top-k."""

from __future__ import annotations

import hashlib
import math
import pickle
from collections import Counter

import numpy as np
import pytest

from common.errors import ConfigError, DataError
from datamodules.selection.dsir import (
    DSIRModel,
    DSIRSettings,
    fit_dsir,
    gumbel_order,
    ngrams,
    stable_bucket,
)
from datamodules.selection.scorers import ScorerSpec, build_scorer

TARGET = ["the reactor core heats the water", "Reactor rods, the core!"]
RAW = ["bake the bread", "the reactor is old", "rain on monday", "the core of the bread"]


def test_features_are_lowercased_unigrams_and_bigrams():
    assert ngrams("The Core, hot") == ["the", "core", ",", "hot", "the core", "core ,", ", hot"]
    assert ngrams("") == []


def test_the_bucket_hash_is_blake2b_not_the_salted_hash():
    expected = int.from_bytes(hashlib.blake2b(b"the core", digest_size=8).digest(), "little") % 97
    assert stable_bucket("the core", 97) == expected


def _naive_log_weight(text: str, settings: DSIRSettings) -> float:
    """Dense integer count vectors and the formula written out."""
    b, a = settings.num_buckets, settings.smoothing

    def counts(texts):
        vec = [0] * b
        for t in texts:
            for f in ngrams(t):
                vec[stable_bucket(f, b)] += 1
        return vec

    target, raw, doc = counts(TARGET), counts(RAW), counts([text])
    t_total, r_total = sum(target), sum(raw)
    weight = 0.0
    for bucket in range(b):
        if doc[bucket]:
            log_t = math.log((target[bucket] + a) / (t_total + a * b))
            log_r = math.log((raw[bucket] + a) / (r_total + a * b))
            weight += doc[bucket] * (log_t - log_r)
    return weight


@pytest.mark.parametrize("settings", [DSIRSettings(50, 1.0), DSIRSettings(7, 0.5)])
def test_log_weights_equal_the_naive_computation(settings):
    model = fit_dsir(TARGET, RAW, settings)
    assert model.target_counts.sum() == sum(len(ngrams(t)) for t in TARGET)
    texts = [*RAW, "the reactor core", "", "zebra zebra zebra"]
    got = model.log_weights(texts)
    expected = [_naive_log_weight(t, settings) for t in texts]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert got[-3] > got[0]  # in-domain words weigh more than baking
    counts = Counter(stable_bucket(f, settings.num_buckets) for t in RAW for f in ngrams(t))
    assert model.raw_counts.tolist() == [counts.get(i, 0) for i in range(settings.num_buckets)]


def test_scorer_round_trip_through_the_npz(tmp_path):
    model = fit_dsir(TARGET, RAW, DSIRSettings(64))
    path = model.save(tmp_path / "dsir.npz")
    scorer = build_scorer(ScorerSpec(kind="dsir", path=str(path)))
    assert np.array_equal(scorer.score(RAW), model.log_weights(RAW))
    assert np.array_equal(pickle.loads(pickle.dumps(scorer)).score(RAW), scorer.score(RAW))
    loaded = DSIRModel.load(path)
    assert loaded.settings == DSIRSettings(64) and np.array_equal(loaded.log_ratio, model.log_ratio)
    with pytest.raises(ConfigError, match="'scorer.path'.*no such DSIR"):
        build_scorer(ScorerSpec(kind="dsir", path=str(tmp_path / "absent.npz")))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a DSIR .npz"):
        build_scorer(ScorerSpec(kind="dsir", path=str(tmp_path / "junk.npz")))


def test_gumbel_top_k_is_seeded_and_follows_the_weights():
    weights = np.log(np.r_[np.full(10, 100.0), np.full(990, 1.0)])
    first = gumbel_order(weights, seed=3)
    assert np.array_equal(first, gumbel_order(weights, seed=3))
    assert not np.array_equal(first, gumbel_order(weights, seed=4))
    assert sorted(first.tolist()) == list(range(1000))
    # heavy documents come first far more often than their share (1%) of the corpus
    assert np.isin(first[:20], np.arange(10)).sum() >= 5


def test_fit_needs_words_on_both_sides():
    with pytest.raises(DataError, match="in-domain documents have no word"):
        fit_dsir(["", " "], RAW)
    with pytest.raises(DataError, match="corpus has no word"):
        fit_dsir(TARGET, [""])
    with pytest.raises(ConfigError, match="'dsir.num_buckets'"):
        fit_dsir(TARGET, RAW, DSIRSettings(num_buckets=0))
