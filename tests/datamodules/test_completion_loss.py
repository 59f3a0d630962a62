"""Completion-only loss (SFT with masked prompts): `SourceSpec.prompt_field` through the pipeline.

The store writes a per-token loss mask (0: the token lies entirely inside the prompt), packing puts
`labels = -100` on prompt tokens, and every count behind `step_weight`, `row_weights` and
`loss_weights` counts completion targets only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common import IGNORE_INDEX
from common.errors import ConfigError, DataError
from datamodules.packing import KeyedBatches, PackedDataset, PackedRows, collate_rows
from datamodules.pretraining import PretrainingDataModule
from datamodules.sources import ReadStats, SourceSpec, read_records, source_fingerprint
from datamodules.store import (
    LOSS_MASK,
    TokenizedStore,
    completion_mask,
    store_fingerprint,
    tokenizer_fingerprint,
)
from tests.datamodules.test_loss_weights import LAYOUTS, _segments, _weights

PAD = 1
QUESTION = "Question: Where was Alice Varen born? Answer:"
ANSWER = " Orlin."
WORDS = ["alpha", "born", "in", "Orlin", "river", "the", "sea", "Bram", "works", "7", "!"]


def chats(n: int, seed: int, max_prompt: int = 8, max_answer: int = 6) -> list[dict[str, str]]:
    """Records `{"prompt", "text"}`: `text` is the prompt followed by an answer."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        prompt = "Q: " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, max_prompt)))) + " A:"
        answer = " " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, max_answer))))
        records.append({"prompt": prompt, "text": prompt + answer})
    return records


def sft_spec(path: Path, **kw: Any) -> SourceSpec:
    args: dict[str, Any] = {"path": str(path), "kind": "sample", "prompt_field": "prompt"}
    args.update(kw)
    return SourceSpec(**args)


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- store ------------------------------------------------------------------------------------


def test_hand_computed_mask_and_labels(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    eos = tiny_tokenizer.eos_token_id
    prompt_ids, answer_ids = ids(tiny_tokenizer, QUESTION), ids(tiny_tokenizer, ANSWER)
    full = ids(tiny_tokenizer, QUESTION + ANSWER)
    assert full == prompt_ids + answer_ids  # the case: the prompt ends on a token boundary
    assert len(answer_ids) == 2  # " Orlin", "."
    # the prompt ends inside " Orlin": that token straddles the boundary, so it is a completion one
    straddling = QUESTION + " Or"
    path = write_jsonl(
        "sft.jsonl",
        [
            {"prompt": QUESTION, "text": QUESTION + ANSWER},
            {"prompt": straddling, "text": QUESTION + ANSWER},
            {"prompt": "", "text": "Bram works."},
        ],
    )
    store = TokenizedStore.get_or_build(sft_spec(path), tiny_tokenizer, tmp_path / "c")
    n_prompt = len(prompt_ids)
    expected_mask = [0] * n_prompt + [1, 1, 1]  # " Orlin", ".", the appended EOS
    assert store.document(0).tolist() == [*full, eos]
    assert store.document_mask(0).tolist() == expected_mask
    assert store.document_mask(1).tolist() == expected_mask
    n_bram = len(ids(tiny_tokenizer, "Bram works.")) + 1
    assert store.document_mask(2).tolist() == [1] * n_bram
    assert store.loss_mask.dtype == np.uint8 and len(store.loss_mask) == store.num_tokens
    assert store.completion_tokens == 3 + 3 + n_bram

    manifest = json.loads((store.directory / "manifest.json").read_text())
    assert manifest["loss_mask"]["file"] == LOSS_MASK
    assert manifest["loss_mask"]["completion_tokens"] == store.completion_tokens
    assert manifest["loss_mask"]["prompt_tokens"] == 2 * n_prompt
    assert manifest["source"]["prompt_field"] == "prompt"

    # one sample per row: labels are -100 exactly on the prompt tokens (and nowhere else)
    rows = PackedRows(store, 64, kind="sample", packing=False)
    row = rows.row(0, PAD)
    length = n_prompt + 3
    assert row["labels"][:length].tolist() == [IGNORE_INDEX] * n_prompt + answer_ids + [eos]
    assert (row["labels"][length:] == IGNORE_INDEX).all()
    assert row["input_ids"][:length].tolist() == [*full, eos]
    assert rows.num_target_tokens.tolist() == [3, 3, n_bram - 1]  # the first token: never a target

    # packed: the second sample's start is -100 anyway, its prompt too
    packed = PackedRows(store, 64, kind="sample", packing=True)
    assert len(packed) == 1
    labels = packed.row(0, PAD)["labels"].tolist()
    first = [IGNORE_INDEX] * n_prompt + answer_ids + [eos]
    third = [IGNORE_INDEX, *ids(tiny_tokenizer, "Bram works.")[1:], eos]
    assert labels[: 2 * length + n_bram] == first + first + third
    assert packed.num_target_tokens.tolist() == [3 + 3 + n_bram - 1]
    assert packed.num_target_tokens[0] == sum(t != IGNORE_INDEX for t in labels[1:])


def test_completion_mask_rule() -> None:
    offsets = [(0, 2), (2, 5), (5, 9), (9, 9)]
    assert completion_mask(offsets, 5).tolist() == [0, 0, 1, 1]
    assert completion_mask(offsets, 6).tolist() == [0, 0, 1, 1]  # (5, 9) straddles: completion
    assert completion_mask(offsets, 9).tolist() == [0, 0, 0, 0]
    assert completion_mask(offsets, 0).tolist() == [1, 1, 1, 1]
    assert completion_mask([], 3).tolist() == []


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 24])
def test_mask_counts_are_exact_whatever_the_chunk(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datamodules import packing

    monkeypatch.setattr(packing, "_MASK_CHUNK", chunk)
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 2, size=50).astype(np.uint8)
    lo = rng.integers(0, 51, size=40)
    hi = np.minimum(lo + rng.integers(0, 12, size=40), 50)
    got = packing._mask_counts(mask, lo, hi)
    assert got.tolist() == [int(mask[a:b].sum()) for a, b in zip(lo, hi)]


def test_text_ending_with_its_own_eos(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    text = QUESTION + ANSWER + "<|endoftext|>"
    path = write_jsonl("eos.jsonl", [{"prompt": QUESTION, "text": text}])
    store = TokenizedStore.get_or_build(sft_spec(path), tiny_tokenizer, tmp_path / "c")
    assert store.document(0).tolist() == ids(tiny_tokenizer, text)  # no second EOS
    assert store.document_mask(0).tolist() == [0] * len(ids(tiny_tokenizer, QUESTION)) + [1] * 3


def _old_fingerprint(spec: SourceSpec, tokenizer: Any) -> str:
    """`store_fingerprint` as it was before masked prompts existed."""
    payload = {
        "version": 1,
        "dtype": "uint32",
        "eos": "append-unless-present",
        "source": source_fingerprint(spec),
        "text_field": spec.text_field,
        "split": spec.split,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def test_fingerprint_follows_prompt_field_and_is_unchanged_without_it(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    records = [{"text": "Q: a A: b", "prompt": "Q: a", "question": "Q:"}]
    path = write_jsonl("f.jsonl", records)
    plain = SourceSpec(path=str(path), kind="sample")
    base = store_fingerprint(plain, tiny_tokenizer)
    assert base == _old_fingerprint(plain, tiny_tokenizer)  # existing caches stay valid
    masked = store_fingerprint(sft_spec(path), tiny_tokenizer)
    other = store_fingerprint(sft_spec(path, prompt_field="question"), tiny_tokenizer)
    assert len({base, masked, other}) == 3
    # a store without a prompt field has exactly the files it had before
    store = TokenizedStore.get_or_build(plain, tiny_tokenizer, tmp_path / "c")
    assert store.loss_mask is None and store.completion_tokens is None
    assert sorted(p.name for p in store.directory.iterdir()) == [
        "manifest.json",
        "offsets.npy",
        "tokens.bin",
    ]
    assert "loss_mask" not in json.loads((store.directory / "manifest.json").read_text())
    masked_store = TokenizedStore.get_or_build(sft_spec(path), tiny_tokenizer, tmp_path / "c")
    assert masked_store.directory.name == masked != store.directory.name
    assert (masked_store.directory / LOSS_MASK).stat().st_size == masked_store.num_tokens


def test_damaged_mask_is_rebuilt_and_store_pickles(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("s.jsonl", chats(5, seed=0))
    spec = sft_spec(path)
    good = TokenizedStore.get_or_build(spec, tiny_tokenizer, tmp_path / "c")
    reference = np.array(good.loss_mask)
    copy = pickle.loads(pickle.dumps(good))
    assert isinstance(copy.loss_mask, np.memmap) and np.array_equal(copy.loss_mask, reference)
    mask_path = good.directory / LOSS_MASK
    del good, copy
    mask_path.write_bytes(mask_path.read_bytes()[:-1])
    assert TokenizedStore.lookup(spec, tiny_tokenizer, tmp_path / "c") is None
    mask_path.unlink()
    assert TokenizedStore.lookup(spec, tiny_tokenizer, tmp_path / "c") is None
    rebuilt = TokenizedStore.get_or_build(spec, tiny_tokenizer, tmp_path / "c")
    assert np.array_equal(rebuilt.loss_mask, reference)


class _SlowTokenizer:
    """A tokenizer that reports itself as slow (no offsets)."""

    is_fast = False

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **kwargs)


def test_prompt_field_needs_a_fast_tokenizer(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("s.jsonl", chats(2, seed=0))
    with pytest.raises(ConfigError, match="fast tokenizer"):
        TokenizedStore.get_or_build(sft_spec(path), _SlowTokenizer(tiny_tokenizer), tmp_path)


# -- validation -------------------------------------------------------------------------------


def test_bad_prefix_is_one_line_naming_file_and_line(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl(
        "bad.jsonl",
        [
            {"prompt": "Q: a", "text": "Q: a A: b"},
            {"prompt": "Q: b\nmore", "text": "Q: c\nA: b"},
        ],
    )
    with pytest.raises(DataError) as err:
        list(read_records(sft_spec(path), ReadStats()))
    message = str(err.value)
    assert message.startswith(f"{path}:2: field 'prompt' is not a prefix of field 'text'")
    assert "character 3" in message and "\n" not in message
    assert err.value.line == 2

    longer = write_jsonl("longer.jsonl", [{"prompt": "Q: a A: b!", "text": "Q: a A: b"}])
    with pytest.raises(DataError, match=r"longer\.jsonl:1: .*prompt is longer than the text"):
        list(read_records(sft_spec(longer), ReadStats()))

    missing = write_jsonl("missing.jsonl", [{"text": "Q: a"}])
    with pytest.raises(DataError, match=r"missing\.jsonl:1: record has no field 'prompt'.*"):
        list(read_records(sft_spec(missing), ReadStats()))
    with pytest.raises(DataError, match="set `prompt_field`"):
        list(read_records(sft_spec(missing), ReadStats()))


def test_parquet_and_hf_prompts(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = chats(4, seed=1)
    table = {"text": [r["text"] for r in good], "prompt": [r["prompt"] for r in good]}
    pq.write_table(pa.table(table), tmp_path / "ok.parquet", row_group_size=3)
    got = list(read_records(sft_spec(tmp_path / "ok.parquet"), ReadStats()))
    assert got == [(r["text"], r["prompt"]) for r in good]

    bad = {"text": [*table["text"], "x y"], "prompt": [*table["prompt"], "y"]}
    pq.write_table(pa.table(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: record 4 \(0-based row\): field 'prompt'"):
        list(read_records(sft_spec(tmp_path / "bad.parquet"), ReadStats()))
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "nocol.parquet")
    with pytest.raises(DataError, match=r"no column 'prompt'.*set `prompt_field`"):
        list(read_records(sft_spec(tmp_path / "nocol.parquet"), ReadStats()))

    datasets.Dataset.from_dict(table).save_to_disk(str(tmp_path / "saved"))
    got = list(read_records(sft_spec(tmp_path / "saved"), ReadStats()))
    assert got == [(r["text"], r["prompt"]) for r in good]
    datasets.Dataset.from_dict(bad).save_to_disk(str(tmp_path / "saved_bad"))
    with pytest.raises(DataError, match=r"record 4: field 'prompt' is not a prefix"):
        list(read_records(sft_spec(tmp_path / "saved_bad"), ReadStats()))


def test_prompt_field_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config key 'x\.prompt_field': .*kind: sample"):
        SourceSpec(path="a.jsonl", prompt_field="prompt").validate("x")
    with pytest.raises(ConfigError, match=r"x\.prompt_field.*text files have no fields"):
        SourceSpec(path="a", kind="sample", format="text", prompt_field="p").validate("x")
    with pytest.raises(ConfigError, match=r"x\.prompt_field.*must differ"):
        SourceSpec(path="a", kind="sample", prompt_field="text").validate("x")
    with pytest.raises(ConfigError, match=r"x\.prompt_field.*non-empty"):
        SourceSpec(path="a", kind="sample", prompt_field="").validate("x")
    SourceSpec(path="a.jsonl", kind="sample", prompt_field="prompt").validate("x")
    with pytest.raises(ConfigError, match=r"train_sources\[1\]\.prompt_field"):
        PretrainingDataModule(
            tokenizer="unused",
            train_sources=[
                SourceSpec(path="a.jsonl"),
                {"path": "b.jsonl", "prompt_field": "prompt"},  # type: ignore[list-item]
            ],
        )
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    with pytest.raises(DataError, match="text files have no fields"):
        list(read_records(sft_spec(folder), ReadStats()))


# -- weights ----------------------------------------------------------------------------------


def test_sample_weighting_divides_by_completion_targets(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("s.jsonl", chats(12, seed=3))
    store = TokenizedStore.get_or_build(sft_spec(path), tiny_tokenizer, tmp_path / "c")
    rows = PackedRows(store, 96, kind="sample", loss_weighting="sample")
    assert len(rows) < store.num_documents and rows.stats.overlong == 0  # several samples a row
    segments_seen = 0
    for r in range(len(rows)):
        row = rows.row(r, PAD)
        weights, labels = row["loss_weights"], row["labels"]
        assert math.fsum(weights.astype(np.float64)) == rows.row_weights[r]
        assert np.all(weights[labels == IGNORE_INDEX] == 0) and weights[0] == 0
        positions, attention = map(torch.from_numpy, (row["position_ids"], row["attention_mask"]))
        for lo, hi in _segments(positions, attention):
            mask = store.document_mask(segments_seen)  # segments are the documents, in order
            k = int(mask[1:].sum())  # completion targets of this sample
            assert k == int((labels[lo + 1 : hi] != IGNORE_INDEX).sum()) > 0
            seg = weights[lo + 1 : hi]
            assert np.all(seg[mask[1:] == 0] == 0)
            assert np.all(seg[mask[1:] == 1] == np.float32(1 / k))
            assert math.fsum(seg.astype(np.float64)) == pytest.approx(1.0, rel=1e-6)
            segments_seen += 1
    assert segments_seen == store.num_documents


def test_sample_without_completion_targets_is_counted_and_logged(
    tiny_tokenizer: Any,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    long_prompt = "Q: " + " ".join(["river the sea"] * 20) + " A:"
    records = [{"prompt": long_prompt, "text": long_prompt + " Orlin."}, *chats(3, seed=4)]
    path = write_jsonl("s.jsonl", records)
    store = TokenizedStore.get_or_build(sft_spec(path), tiny_tokenizer, tmp_path / "c")
    assert store.document_lengths[0] > 40 >= max(store.document_lengths[1:])
    for weighting in ("token", "sample"):
        with caplog.at_level(logging.WARNING, logger="datamodules.packing"):
            caplog.clear()
            rows = PackedRows(
                store, 40, kind="sample", packing=False, loss_weighting=weighting, name="sft"
            )
        assert rows.stats.samples_without_targets == 1 and rows.stats.overlong == 1
        assert "sft: 1 of 4 samples have no target token" in caplog.text
        first = rows.row(0, PAD)
        assert (first["labels"] == IGNORE_INDEX).all()
        assert rows.num_target_tokens[0] == 0 and rows.row_weights[0] == 0
        assert np.all(np.isfinite(rows.row_weights))
        if weighting == "sample":
            assert not first["loss_weights"].any()
        batch = collate_rows([{**first, "sample_index": 0}])
        assert float(batch["step_weight"]) == 0.0


@pytest.mark.parametrize("weighting", ["token", "sample"])
def test_step_weights_count_completion_targets_for_every_layout(
    weighting: str, tiny_tokenizer_dir: Path, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    sources = {
        "web": write_jsonl("web.jsonl", [{"text": r["text"]} for r in chats(20, seed=5)]),
        "sft": write_jsonl("sft.jsonl", chats(30, seed=6)),
    }
    per_layout: list[list[float]] = []
    for micro, accumulate, world in LAYOUTS:
        dm = PretrainingDataModule(
            tokenizer=str(tiny_tokenizer_dir),
            train_sources=[
                SourceSpec(path=str(sources["web"]), name="web", loss_weighting=weighting),
                sft_spec(sources["sft"], name="sft", loss_weighting=weighting),
            ],
            max_length=32,
            micro_batch_size=micro,
            cache_dir=str(tmp_path / "stores"),
        )
        dm.setup("fit")
        dataset = dm.train_dataset
        sft_rows = dataset.parts[1]
        assert dm.stats["sft"]["target_tokens"] == int(sft_rows.num_target_tokens.sum())
        assert dm.stats["sft"]["completion_tokens"] == dataset.parts[1].store.completion_tokens
        assert "completion_tokens" not in dm.stats["web"]
        steps: dict[int, list[dict[str, torch.Tensor]]] = {}
        for rank in range(world):
            sampler = dm.train_sampler(accumulate, world, rank)
            for j, keys in enumerate(sampler):
                steps.setdefault(j // accumulate, []).append(
                    collate_rows(KeyedBatches(dataset)[keys])
                )
        step_weights = []
        for batches in steps.values():
            values = {float(b["step_weight"]) for b in batches}
            assert len(values) == 1
            step_weight = values.pop()
            total = math.fsum(w for b in batches for w in _weights(b).flatten().tolist())
            assert total == pytest.approx(step_weight, rel=1e-12, abs=0)
            if weighting == "token":
                brute = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
                assert step_weight == brute
            step_weights.append(step_weight)
        per_layout.append(step_weights)
    assert all(w == per_layout[0] for w in per_layout)


def test_step_weights_exclude_prompt_tokens(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("s.jsonl", chats(16, seed=7))
    masked = TokenizedStore.get_or_build(sft_spec(path), tiny_tokenizer, tmp_path / "c")
    plain = TokenizedStore.get_or_build(
        SourceSpec(path=str(path), kind="sample"), tiny_tokenizer, tmp_path / "c"
    )
    assert np.array_equal(masked.tokens, plain.tokens)
    a = PackedDataset([PackedRows(masked, 128, kind="sample")], PAD)
    b = PackedDataset([PackedRows(plain, 128, kind="sample")], PAD)
    assert a.parts[0].stats.overlong == 0
    assert np.all(a.num_target_tokens_array < b.num_target_tokens_array)
    for r in range(len(a)):
        labels = a[r]["labels"]
        assert a.num_target_tokens(r) == int((labels[1:] != IGNORE_INDEX).sum())
    # completion targets = completion tokens minus those at a sample's first position (none here)
    assert int(a.num_target_tokens_array.sum()) == masked.completion_tokens
    assert np.array_equal(a.row_weights, a.num_target_tokens_array.astype(np.float64))


# -- end to end -------------------------------------------------------------------------------


def test_datamodule_batches_have_labels_on_completions_only(
    tiny_tokenizer_dir: Path, tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    records = chats(24, seed=8)
    path = write_jsonl("sft.jsonl", records)
    dm = PretrainingDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        train_sources=[sft_spec(path, name="sft")],
        val_sources={"held": sft_spec(path)},
        max_length=48,
        micro_batch_size=2,
        packing=False,
        cache_dir=str(tmp_path / "stores"),
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.stats["sft"]["samples_without_targets"] == 0
    eos = tiny_tokenizer.eos_token_id
    batches = list(dm.train_dataloader())
    assert len(batches) == len(records) // 2
    for batch in batches:
        targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        assert float(batch["step_weight"]) == targets
        for i, labels, input_ids in zip(batch["sample_index"], batch["labels"], batch["input_ids"]):
            record = records[int(i)]  # one sample per row, rows in record order
            n_prompt = len(ids(tiny_tokenizer, record["prompt"]))
            full = [*ids(tiny_tokenizer, record["text"]), eos]
            assert input_ids[: len(full)].tolist() == full
            assert labels[:n_prompt].tolist() == [IGNORE_INDEX] * n_prompt
            completion = labels[n_prompt : len(full)].tolist()
            assert completion == full[n_prompt:] and completion[-1] == eos
            assert tiny_tokenizer.decode(completion[:-1]) == record["text"][len(record["prompt"]) :]
            assert (labels[len(full) :] == IGNORE_INDEX).all()
    val = next(iter(dm.val_dataloader()[0]))
    assert float(val["step_weight"]) == int((val["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert float(val["step_weight"]) == float(
        dm._val_datasets["held"].num_target_tokens([0, 1]).sum()
    )
