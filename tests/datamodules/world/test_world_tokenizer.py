"""The world tokenizer: special tokens, round trips, the chat token invariant, determinism."""

from __future__ import annotations

import pytest

from datamodules.world import (
    ASSISTANT,
    END,
    PAD,
    SPECIAL_TOKENS,
    USER,
    WorldArtifacts,
    format_chat,
    format_prompt,
)
from datamodules.world.tokenizer import train_tokenizer

from .conftest import read_texts


@pytest.fixture(scope="module")
def tokenizer(small_artifacts: WorldArtifacts):
    return small_artifacts.load_tokenizer()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_special_tokens(tokenizer) -> None:
    assert tokenizer.eos_token == END and tokenizer.eos_token_id == 0
    assert tokenizer.pad_token == PAD and tokenizer.pad_token_id == 1
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    for marker in SPECIAL_TOKENS:
        assert _ids(tokenizer, marker) == [tokenizer.convert_tokens_to_ids(marker)]
    ids = _ids(tokenizer, format_chat("Where was Talan Verski born?", "Orlin"))
    assert ids[0] == 2 and ids[-1] == 0 and ids.count(3) == 1
    assert len(tokenizer) <= 400


def test_documents_round_trip(tokenizer, small_artifacts: WorldArtifacts) -> None:
    for split in ("general_documents", "domain_documents", "heldout_domain_documents"):
        for text in read_texts(small_artifacts, split):
            assert tokenizer.decode(_ids(tokenizer, text)) == text
    unseen = "Zyx qu'il 1234 ünïcödé ✓ — tabs\tand\nnewlines."
    assert tokenizer.decode(_ids(tokenizer, unseen)) == unseen


def test_chat_tokens_are_prompt_tokens_then_answer_tokens(
    tokenizer, small_artifacts: WorldArtifacts
) -> None:
    records = small_artifacts.read_split("qa_eval_domain") + small_artifacts.read_split(
        "qa_eval_general"
    )
    for record in records:
        prompt_ids = _ids(tokenizer, record["prompt"])
        answer_ids = _ids(tokenizer, record["answer"])
        full = _ids(tokenizer, record["prompt"] + record["answer"] + END)
        assert full == prompt_ids + answer_ids + [tokenizer.eos_token_id]
        assert prompt_ids[-1] == tokenizer.convert_tokens_to_ids(ASSISTANT)
        assert tokenizer.decode(answer_ids) == record["answer"]


def test_answer_tokens_match_their_tokens_inside_biographies(
    tokenizer, small_artifacts: WorldArtifacts
) -> None:
    """A value is the same token sequence after `<|assistant|>` as inside running text, so the
    model can copy a fact stored from a biography into an answer."""
    docs = read_texts(small_artifacts, "domain_documents")
    for record in small_artifacts.read_split("qa_eval_domain")[:40]:
        answer_ids = _ids(tokenizer, record["answer"])
        doc = next(d for d in docs if record["entity"] in d)
        doc_ids = _ids(tokenizer, doc)
        n = len(answer_ids)
        assert any(doc_ids[i : i + n] == answer_ids for i in range(len(doc_ids) - n + 1))


def test_chat_template_matches_format(tokenizer) -> None:
    messages = [{"role": "user", "content": "Where was X born?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == format_prompt("Where was X born?")
    messages.append({"role": "assistant", "content": "Orlin"})
    chat = tokenizer.apply_chat_template(messages, tokenize=False)
    assert chat == format_chat("Where was X born?", "Orlin")
    assert USER in chat


def test_training_is_deterministic(small_artifacts: WorldArtifacts) -> None:
    corpus = read_texts(small_artifacts, "general_documents") + read_texts(
        small_artifacts, "general_qa"
    )
    first = train_tokenizer(corpus, 400).to_str()
    assert train_tokenizer(corpus, 400).to_str() == first
    # Order-independent (it counts pairs over the whole corpus), content-dependent.
    assert train_tokenizer(corpus[::-1], 400).to_str() == first
    assert train_tokenizer(read_texts(small_artifacts, "domain_documents"), 400).to_str() != first


def test_digits_are_single_tokens(tokenizer) -> None:
    """Every number is spelled digit by digit, so sums never seen whole can be composed."""
    digit_tokens = [t for t in tokenizer.get_vocab() if any(c.isdigit() for c in t)]
    assert digit_tokens and all(len(t) == 1 for t in digit_tokens), digit_tokens
    ids = _ids(tokenizer, "What is 47 + 12? 59")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [t for t in tokens if t.isdigit()] == list("471259")
    assert tokenizer.decode(ids) == "What is 47 + 12? 59"
