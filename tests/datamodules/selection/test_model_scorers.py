"""Model-based quality scores against a direct forward of the same tiny models."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from datamodules.selection.scorers import ScorerSpec, build_scorer
from tests.helpers import TINY_LLAMA

TEXTS = [
    "Alice Varen was born in Orlin in 1987.",
    "Bram Oster works for Kestrel Labs as an engineer and lives in Dunmore.",
    "zq xv 9 ;; Orlin Orlin ) ( 1987 Kestrel",
    "The river Tal flows through three cities before it reaches the sea.",
]


def _config(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        **TINY_LLAMA,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


@pytest.fixture(scope="module")
def causal_dir(tiny_tokenizer, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(tiny_tokenizer))
    # a few steps on the first text, so the model finds it easier than the noise
    ids = torch.tensor([[tiny_tokenizer.eos_token_id, *tiny_tokenizer(TEXTS[0])["input_ids"]]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("causal")
    model.save_pretrained(out)
    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def classifier_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    model = LlamaForSequenceClassification(_config(tiny_tokenizer, num_labels=3))
    out = tmp_path_factory.mktemp("classifier")
    model.save_pretrained(out)
    return out


def _direct_nll(model, tokenizer, text: str, max_length: int) -> float:
    ids = [tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    batch = torch.tensor([ids[:max_length]])
    with torch.no_grad():
        return float(model(input_ids=batch, labels=batch).loss)


@pytest.mark.parametrize("max_length", [128, 8])
def test_perplexity_is_minus_the_mean_token_nll(causal_dir, tiny_tokenizer, max_length):
    from transformers import AutoModelForCausalLM

    spec = ScorerSpec(kind="perplexity", path=str(causal_dir), batch_size=3, max_length=max_length)
    scores = build_scorer(spec).score(TEXTS)
    model = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    expected = [-_direct_nll(model, tiny_tokenizer, t, max_length) for t in TEXTS]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert scores[0] == scores.max()  # the text it was trained on is the most fluent
    assert scores[0] > scores[2]


def test_perplexity_of_an_empty_text_and_pickling(causal_dir):
    scorer = build_scorer(ScorerSpec(kind="perplexity", path=str(causal_dir)))
    scores = scorer.score(["", TEXTS[1]])
    assert scores[0] == -np.inf and np.isfinite(scores[1])
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone.score(TEXTS[:2]) == pytest.approx(scorer.score(TEXTS[:2]))
    assert scorer.score([]).shape == (0,)


def test_sequence_classification_is_the_softmax_of_a_direct_forward(
    classifier_dir, tiny_tokenizer_dir
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = ScorerSpec(
        kind="sequence_classification",
        path=str(classifier_dir),
        tokenizer=str(tiny_tokenizer_dir),
        label_index=2,
        batch_size=3,  # padded batches of different lengths
    )
    scores = build_scorer(spec).score(TEXTS)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    expected = []
    for text in TEXTS:  # one at a time: no padding at all
        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt")).logits
        expected.append(float(torch.softmax(logits.double(), -1)[0, 2]))
    assert scores == pytest.approx(expected, abs=1e-5)


def test_model_scorer_errors_name_the_key(classifier_dir, tiny_tokenizer_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'quality\.path'.*no such model directory"):
        build_scorer(ScorerSpec(kind="perplexity", path=str(tmp_path / "absent")), key="quality")
    with pytest.raises(ConfigError, match=r"'scorer\.label_index'.*3 labels"):
        build_scorer(
            ScorerSpec(
                kind="sequence_classification",
                path=str(classifier_dir),
                tokenizer=str(tiny_tokenizer_dir),
                label_index=3,
            )
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"'scorer\.path'.*no config\.json"):
        build_scorer(ScorerSpec(kind="sequence_classification", path=str(tmp_path / "empty")))
