"""fastText classifiers: text preparation, train / score round trip, the model's .json, errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from common.errors import ConfigError, DataError
from datamodules.selection.fasttext_classifier import (
    FastTextSettings,
    TextSettings,
    prepare_text,
    reusable_model,
    sidecar_path,
    train_fasttext,
)
from datamodules.selection.scorers import ScorerSpec, build_scorer
from datamodules.selection.scorers import file_sha256 as sha256

DOMAIN = [
    "reactor",
    "neutron",
    "lattice",
    "coolant",
    "isotope",
    "turbine",
    "uranium",
    "moderator",
    "flux",
    "rod",
]
GENERAL = [
    "recipe",
    "butter",
    "football",
    "weather",
    "garden",
    "holiday",
    "market",
    "song",
    "river",
    "breakfast",
]
FILLER = ["the", "a", "of", "and", "in", "with", "for", "on"]
FAST = FastTextSettings(dim=16, epoch=20, bucket=20000, lr=0.5)


def _documents(words: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        picked = rng.choice(words, size=6).tolist() + rng.choice(FILLER, size=4).tolist()
        rng.shuffle(picked)
        docs.append(" ".join(picked))
    return docs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("fasttext") / "domain.bin"
    positives = _documents(DOMAIN, 60, 0)
    negatives = _documents(GENERAL, 80, 1)
    return train_fasttext(positives, negatives, out, FAST, valid_fraction=0.25, fingerprint="f1")


def test_prepare_text_makes_one_line_cut_and_lowercased():
    text = "First LINE\nsecond\tline\r\n\n  third\x00word\x0bend"
    assert prepare_text(text) == "first line second line third word end"
    assert (
        prepare_text(text, TextSettings(lowercase=False)) == "First LINE second line third word end"
    )
    long = " ".join(f"w{i}" for i in range(5000))
    assert prepare_text(long, TextSettings(max_words=3, max_chars=None)) == "w0 w1 w2"
    cut = prepare_text(long, TextSettings(max_words=None, max_chars=10))
    assert len(cut) <= 10 and "\n" not in cut
    assert prepare_text("") == ""
    assert prepare_text("say __LABEL__positive now") == "say _label_positive now"


def test_train_and_score_round_trip_on_separable_data(trained):
    heldout = trained.heldout
    assert heldout["precision"] >= 0.9 and heldout["recall"] >= 0.9 and heldout["auc"] >= 0.95
    assert (heldout["positives"], heldout["negatives"]) == (15, 20)
    info = json.loads(sidecar_path(trained.model_path).read_text())
    assert info["model_sha256"] == sha256(trained.model_path)
    assert info["counts"]["train_positives"] == 45 and info["counts"]["train_negatives"] == 60
    assert info["settings"]["dim"] == 16 and info["text"] == {
        "lowercase": True,
        "max_words": 2000,
        "max_chars": 20000,
    }
    scorer = build_scorer(ScorerSpec(kind="fasttext", path=str(trained.model_path)))
    pos = scorer.score(_documents(DOMAIN, 20, 5))
    neg = scorer.score(_documents(GENERAL, 20, 6))
    assert pos.dtype == np.float64 and pos.shape == (20,)
    assert pos.min() > neg.max()
    assert np.all((pos >= 0) & (pos <= 1))
    negative = build_scorer(
        ScorerSpec(kind="fasttext", path=str(trained.model_path), label="__label__negative")
    )
    assert np.allclose(
        negative.score(["reactor flux"]) + scorer.score(["reactor flux"]), 1, atol=1e-4
    )


def test_newlines_and_very_long_documents_are_scored(trained):
    scorer = build_scorer(ScorerSpec(kind="fasttext", path=str(trained.model_path)))
    one_line = "Reactor neutron lattice and the coolant"
    multi = "Reactor\nneutron\n\nlattice and\tthe coolant\n"
    huge = one_line + " " + " ".join(["butter"] * 50000)
    scores = scorer.score([one_line, multi, huge, ""])
    assert scores[0] == pytest.approx(scores[1])
    assert scores.shape == (4,) and np.all(np.isfinite(scores))
    truncated = scorer.score([one_line + " " + " ".join(["butter"] * 1995)])
    assert scores[2] == pytest.approx(truncated[0])  # only the first max_words words count


def test_scorer_pickles_as_its_spec(trained):
    spec = ScorerSpec(kind="fasttext", path=str(trained.model_path))
    scorer = build_scorer(spec)
    clone = pickle.loads(pickle.dumps(scorer))
    texts = _documents(DOMAIN, 3, 9) + _documents(GENERAL, 3, 9)
    assert np.array_equal(clone.score(texts), scorer.score(texts))
    assert clone.fingerprint() == scorer.fingerprint()
    assert scorer.fingerprint()["files"][0]["sha256"] == sha256(trained.model_path)


def test_training_is_deterministic_and_reusable(trained, tmp_path):
    again = train_fasttext(
        _documents(DOMAIN, 60, 0),
        _documents(GENERAL, 80, 1),
        tmp_path / "again.bin",
        FAST,
        valid_fraction=0.25,
        fingerprint="f1",
    )
    assert sha256(again.model_path) == sha256(trained.model_path)
    assert reusable_model(again.model_path, "f1") is not None
    assert reusable_model(again.model_path, "other") is None
    again.model_path.write_bytes(b"changed")
    assert reusable_model(again.model_path, "f1") is None


def test_no_positives_or_no_negatives_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no positive examples"):
        train_fasttext([], ["a b"], tmp_path / "m.bin", FAST)
    with pytest.raises(DataError, match="no negative examples"):
        train_fasttext(["a b"], [], tmp_path / "m.bin", FAST)
    assert not (tmp_path / "m.bin").exists()


def test_missing_model_and_unknown_label_are_config_errors(trained, tmp_path):
    with pytest.raises(ConfigError, match=r"'quality\.path'.*no such fastText"):
        build_scorer(ScorerSpec(kind="fasttext", path=str(tmp_path / "nope.bin")), key="quality")
    with pytest.raises(ConfigError, match=r"'scorer\.label'.*__label__positive"):
        build_scorer(ScorerSpec(kind="fasttext", path=str(trained.model_path), label="__label__x"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"'scorer\.path'.*not a fastText model"):
        build_scorer(ScorerSpec(kind="fasttext", path=str(junk)))
