"""Packing against plain-Python reference layouts, and the collator."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common import IGNORE_INDEX
from datamodules.packing import PackedDataset, PackedRows, collate_rows
from datamodules.sources import SourceSpec
from datamodules.store import TokenizedStore

PAD = 1


def make_store(tmp_path: Path, tokenizer: Any, texts: list[str]) -> TokenizedStore:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "src.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return TokenizedStore.get_or_build(SourceSpec(path=str(path)), tokenizer, tmp_path / "cache")


def random_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "born", "in", "Orlin", "river", "the", "sea", "Bram", "works", "7", "!"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)]


def documents(store: TokenizedStore) -> list[list[int]]:
    return [store.document(i).tolist() for i in range(store.num_documents)]


def reference_row(segments: list[list[int]], length: int) -> dict[str, list[int]]:
    """A row from its segments, written the obvious way."""
    ids, labels, pos, mask = [], [], [], []
    for seg in segments:
        for j, tok in enumerate(seg):
            ids.append(tok)
            labels.append(IGNORE_INDEX if j == 0 and ids[:-1] else tok)
            pos.append(j)
            mask.append(1)
    pad = length - len(ids)
    return {
        "input_ids": ids + [PAD] * pad,
        "labels": labels + [IGNORE_INDEX] * pad,
        "position_ids": pos + list(range(pad)),
        "attention_mask": mask + [0] * pad,
    }


def reference_document_packing(docs: list[list[int]], length: int) -> list[list[list[int]]]:
    """Concatenate-and-chunk: rows as lists of segments (a document split by a row end)."""
    rows: list[list[list[int]]] = [[]]
    used = 0
    for doc in docs:
        rest = list(doc)
        while rest:
            if used == length:
                rows.append([])
                used = 0
            take = rest[: length - used]
            rows[-1].append(take)
            used += len(take)
            rest = rest[len(take) :]
    return rows


def reference_sample_packing(
    docs: list[list[int]], length: int, policy: str
) -> list[list[list[int]]]:
    rows: list[list[list[int]]] = []
    used = length
    for doc in docs:
        if len(doc) > length:
            if policy == "skip":
                continue
            doc = doc[:length]
        if used + len(doc) > length:
            rows.append([])
            used = 0
        rows[-1].append(doc)
        used += len(doc)
    return rows


def assert_rows(packed: PackedRows, expected: list[list[list[int]]], length: int) -> None:
    assert len(packed) == len(expected)
    for r, segments in enumerate(expected):
        got = {k: v.tolist() for k, v in packed.row(r, PAD).items()}
        assert got == reference_row(segments, length), f"row {r}"
        labels = np.array(got["labels"])
        brute_targets = int(np.count_nonzero(labels[1:] != IGNORE_INDEX))
        assert packed.num_target_tokens[r] == brute_targets


@pytest.mark.parametrize("length", [2, 7, 16, 64])
def test_document_packing_matches_reference(
    tiny_tokenizer: Any, tmp_path: Path, length: int
) -> None:
    store = make_store(tmp_path, tiny_tokenizer, random_texts(20, seed=length))
    packed = PackedRows(store, length, kind="document", packing=True)
    expected = reference_document_packing(documents(store), length)
    assert_rows(packed, expected, length)
    assert len(packed) == -(-store.num_tokens // length)
    assert packed.stats.padding_tokens == len(packed) * length - store.num_tokens


def test_packed_row_positions_and_labels_by_hand(tiny_tokenizer: Any, tmp_path: Path) -> None:
    store = make_store(tmp_path, tiny_tokenizer, ["Bram", "the sea", "Orlin river"])
    lengths = np.diff(store.offsets).tolist()
    length = sum(lengths)  # everything fits in one row
    row = PackedRows(store, length, kind="document").row(0, PAD)
    starts = np.cumsum([0, *lengths[:-1]])
    expected_pos = np.concatenate([np.arange(n) for n in lengths])
    assert row["position_ids"].tolist() == expected_pos.tolist()
    assert set(np.flatnonzero(row["position_ids"] == 0)) == set(starts)
    assert all(row["labels"][s] == IGNORE_INDEX for s in starts[1:])
    others = np.setdiff1d(np.arange(length), starts[1:])
    assert np.array_equal(row["labels"][others], row["input_ids"][others])
    assert row["attention_mask"].tolist() == [1] * length
    # design.md: L - 1 - d target tokens with d document starts after position 0
    assert PackedRows(store, length, kind="document").num_target_tokens[0] == length - 1 - 2


@pytest.mark.parametrize("length", [5, 12, 40])
def test_document_padding_mode_splits_long_documents(
    tiny_tokenizer: Any, tmp_path: Path, length: int
) -> None:
    store = make_store(tmp_path, tiny_tokenizer, random_texts(15, seed=3))
    packed = PackedRows(store, length, kind="document", packing=False)
    expected = [
        [doc[i : i + length]] for doc in documents(store) for i in range(0, len(doc), length)
    ]
    assert_rows(packed, expected, length)
    assert packed.stats.split_documents == sum(len(d) > length for d in documents(store))


@pytest.mark.parametrize("policy", ["truncate", "skip"])
@pytest.mark.parametrize("length", [6, 20, 64])
def test_sample_packing_never_splits(
    tiny_tokenizer: Any, tmp_path: Path, policy: str, length: int, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path, tiny_tokenizer, random_texts(25, seed=length))
    docs = documents(store)
    overlong = sum(len(d) > length for d in docs)
    with caplog.at_level(logging.WARNING, logger="datamodules.packing"):
        packed = PackedRows(
            store, length, kind="sample", packing=True, overlong_policy=policy, name="qa"
        )
    assert_rows(packed, reference_sample_packing(docs, length, policy), length)
    assert packed.stats.overlong == overlong
    if overlong:
        assert f"source qa: {overlong} of {len(docs)} samples" in caplog.text
    # Every kept sample appears whole (or truncated at its end) inside exactly one row.
    seen = [
        packed.row(r, PAD)["input_ids"][packed.row(r, PAD)["attention_mask"] == 1].tolist()
        for r in range(len(packed))
    ]
    kept = [d[:length] for d in docs if policy == "truncate" or len(d) <= length]
    assert list(itertools.chain(*seen)) == list(itertools.chain(*kept))


@pytest.mark.parametrize("policy", ["truncate", "skip"])
def test_sample_padding_mode(tiny_tokenizer: Any, tmp_path: Path, policy: str) -> None:
    store = make_store(tmp_path, tiny_tokenizer, random_texts(12, seed=5))
    length = 10
    packed = PackedRows(store, length, kind="sample", packing=False, overlong_policy=policy)
    docs = documents(store)
    expected = [[d[:length]] for d in docs if policy == "truncate" or len(d) <= length]
    assert_rows(packed, expected, length)


def test_all_samples_overlong_with_skip_is_an_error(tiny_tokenizer: Any, tmp_path: Path) -> None:
    store = make_store(tmp_path, tiny_tokenizer, ["a long sample of many words here"])
    with pytest.raises(ValueError, match="every sample is longer than 3"):
        PackedRows(store, 3, kind="sample", overlong_policy="skip")


def test_dataset_concatenates_sources_and_collates(tiny_tokenizer: Any, tmp_path: Path) -> None:
    a = PackedRows(make_store(tmp_path / "a", tiny_tokenizer, random_texts(6, 1)), 16)
    b = PackedRows(
        make_store(tmp_path / "b", tiny_tokenizer, ["Bram", "the sea"]), 16, kind="sample"
    )
    ds = PackedDataset([a, b], pad_token_id=PAD)
    assert len(ds) == len(a) + len(b) and ds.source_sizes == [len(a), len(b)]
    assert ds.locate(len(a)) == (1, 0)
    assert np.array_equal(ds.num_target_tokens(np.arange(len(ds))), ds.num_target_tokens_array)
    last = len(ds) - 1
    item = ds[(last, 99)]
    assert item["sample_index"] == last and item["step_weight"] == 99.0
    assert np.array_equal(item["input_ids"], b.row(len(b) - 1, PAD)["input_ids"])

    batch = collate_rows([ds[(last, 5)], ds[(last - 1, 5)]])
    assert batch["step_weight"].shape == () and batch["step_weight"].dtype == torch.float64
    assert float(batch["step_weight"]) == 5.0
    assert batch["sample_index"].tolist() == [last, last - 1]
    assert batch["input_ids"].dtype == torch.long

    # Short rows are trimmed to a multiple of 8; the count without a sampler is over the batch.
    short = collate_rows([ds[last]])
    real = int(b.real_lengths[-1])
    assert real < 16 and short["input_ids"].shape == (1, -(-real // 8) * 8)
    assert short["attention_mask"].sum() == real
    assert float(short["step_weight"]) == ds.num_target_tokens(last)
    with pytest.raises(IndexError):
        ds[len(ds)]
