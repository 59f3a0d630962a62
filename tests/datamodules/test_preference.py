"""Preference pairs: masking, alignment, dropped-pair counts, batches, errors, the world config."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from common import IGNORE_INDEX
from common.atomic import atomic_file
from common.errors import ConfigError, DataError
from datamodules.preference import (
    PairCollator,
    PreferenceDataModule,
    PreferenceSource,
    WorldPreferenceDataModule,
)
from datamodules.sources import SourceSpec

PAIRS = [
    {
        "prompt": "Question: Where was Alice born? Answer:",
        "chosen": " Orlin.",
        "rejected": " Dunmore.",
    },
    {
        "prompt": "Question: Who works for Kestrel? Answer:",
        "chosen": " Bram.",
        "rejected": " I think Alice.",
    },
    {"prompt": "The river Tal flows", "chosen": " to the sea.", "rejected": " up."},
    {"prompt": "Numbers 0 1 2", "chosen": " 3 4 5.", "rejected": " 9 8 7 6 5."},
]


class CorpusPreferenceDataModule(PreferenceDataModule):
    """Pairs derived from a plain-text JSONL corpus (`{"text"}` records), for the method matrix:
    a source path `corpus-pairs:<corpus.jsonl>` is written (once, atomically) as
    `<corpus>.pairs.jsonl` beside it: prompt = the first half of each text's words, chosen = the
    rest, rejected = the rest in reverse order."""

    SCHEME = "corpus-pairs:"

    def resolve_source(self, spec: SourceSpec) -> SourceSpec:
        if not spec.path.startswith(self.SCHEME):
            return spec
        corpus = Path(spec.path[len(self.SCHEME) :])
        out = corpus.with_name(f"{corpus.stem}.pairs.jsonl")
        if not out.exists():
            lines = []
            for line in corpus.read_text().splitlines():
                words = json.loads(line)["text"].split()
                half = len(words) // 2
                rest = words[half:]
                record = {
                    "prompt": " ".join(words[:half]),
                    "chosen": " " + " ".join(rest),
                    "rejected": " " + " ".join(reversed(rest)) + " no",
                }
                lines.append(json.dumps(record))
            with atomic_file(out) as tmp:
                tmp.write_text("\n".join(lines) + "\n")
        return replace(spec, path=str(out), format="jsonl", name=spec.name or "corpus_pairs")


def write_pairs(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def module(tmp_path: Path, tokenizer_dir: Path, path: Path, **kwargs) -> PreferenceDataModule:
    kwargs.setdefault("max_length", 64)
    kwargs.setdefault("micro_batch_size", 2)
    dm = PreferenceDataModule(
        tokenizer=str(tokenizer_dir),
        train_sources=[{"path": str(path)}],
        cache_dir=str(tmp_path / "stores"),
        **kwargs,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_rows_are_prompt_response_eos_with_loss_on_the_response(tmp_path, tiny_tokenizer_dir):
    dm = module(tmp_path, tiny_tokenizer_dir, write_pairs(tmp_path / "p.jsonl", PAIRS))
    tok = dm.tokenizer
    pairs = dm.train_dataset
    assert len(pairs) == len(PAIRS)
    for i, record in enumerate(PAIRS):
        item = pairs[i]
        for side in ("chosen", "rejected"):
            ids, mask = item[f"{side}_ids"], item[f"{side}_mask"]
            assert tok.decode(ids) == record["prompt"] + record[side] + tok.eos_token
            assert tok.decode(ids[mask == 1]) == record[side] + tok.eos_token
            assert ids[-1] == tok.eos_token_id and mask[-1] == 1
            # the prompt's tokens are exactly those of the prompt alone
            prompt_ids = tok(record["prompt"], add_special_tokens=False)["input_ids"]
            assert list(ids[mask == 0]) == prompt_ids
    assert dm.pair_stats["p.jsonl"].pairs == len(PAIRS)


def test_batch_holds_chosen_then_rejected_of_every_pair(tmp_path, tiny_tokenizer_dir):
    dm = module(tmp_path, tiny_tokenizer_dir, write_pairs(tmp_path / "p.jsonl", PAIRS))
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 4 pairs, 2 per micro-batch
    seen = []
    for batch in batches:
        p = batch["pair_index"].tolist()
        seen += p
        assert batch["input_ids"].shape[0] == 2 * len(p)
        assert batch["sample_index"].tolist() == p + p
        assert float(batch["step_weight"]) == 2.0  # pairs of the optimizer step
        assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] <= 64
        for row, pair in enumerate(p + p):
            side = "chosen" if row < len(p) else "rejected"
            item = dm.train_dataset[pair]
            ids, mask = item[f"{side}_ids"], item[f"{side}_mask"]
            n = len(ids)
            assert batch["input_ids"][row, :n].tolist() == ids.tolist()
            assert batch["attention_mask"][row].sum() == n
            expected = np.where(mask == 1, ids, IGNORE_INDEX)
            expected[0] = IGNORE_INDEX
            assert batch["labels"][row, :n].tolist() == expected.tolist()
            assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
            assert batch["position_ids"][row, :n].tolist() == list(range(n))
            assert batch["position_ids"][row, n:].tolist() == list(
                range(batch["input_ids"].shape[1] - n)
            )
    assert sorted(seen) == list(range(len(PAIRS)))


def test_step_weight_counts_pairs_of_the_whole_step(tmp_path, tiny_tokenizer_dir):
    dm = module(tmp_path, tiny_tokenizer_dir, write_pairs(tmp_path / "p.jsonl", PAIRS * 2))
    sampler = dm.train_sampler(accumulate_grad_batches=2, world_size=2, rank=1)
    assert sampler.global_batch_size == 8 and sampler.steps_per_epoch == 1
    assert sampler.step_weights(0).tolist() == [8.0]
    with pytest.raises(ConfigError, match="micro_batch_size"):
        dm.train_sampler(accumulate_grad_batches=4, world_size=2)


def test_empty_and_overlong_pairs_are_counted(tmp_path, tiny_tokenizer_dir, caplog):
    long_prompt = "Alice Varen was born in Orlin in 1987. " * 6
    records = [
        *PAIRS,
        {"prompt": "Q:", "chosen": "", "rejected": " no."},
        {"prompt": "Q:", "chosen": " yes.", "rejected": "   "},
        {"prompt": "", "chosen": " yes.", "rejected": " no."},
        {"prompt": long_prompt, "chosen": " yes.", "rejected": " no."},
        {"prompt": "Q:", "chosen": " yes." * 40, "rejected": " no."},
        {"prompt": "Q:", "chosen": " same.", "rejected": " same."},
    ]
    path = write_pairs(tmp_path / "p.jsonl", records)
    with caplog.at_level(logging.WARNING):
        skip = module(tmp_path, tiny_tokenizer_dir, path, max_length=48)
    stats = skip.pair_stats["p.jsonl"]
    assert (stats.records, stats.pairs) == (10, 5)
    assert (stats.empty_response, stats.no_prompt_token) == (2, 1)
    assert (stats.overlong, stats.skipped_overlong, stats.truncated) == (2, 2, 0)
    assert stats.identical == 1
    assert "skipped 2 of 10 pairs with an empty response" in caplog.text
    assert "longer than max_length=48" in caplog.text
    truncate = module(
        tmp_path, tiny_tokenizer_dir, path, max_length=48, overlong_policy="truncate_prompt"
    )
    stats = truncate.pair_stats["p.jsonl"]
    assert (stats.pairs, stats.overlong, stats.truncated, stats.skipped_overlong) == (6, 2, 1, 1)
    tok = truncate.tokenizer
    cut = truncate.train_dataset[4]  # the long prompt, cut from the left to fit
    for side, text in (("chosen", " yes."), ("rejected", " no.")):
        ids, mask = cut[f"{side}_ids"], cut[f"{side}_mask"]
        assert len(ids) <= 48 and (mask == 0).sum() >= 1
        assert tok.decode(ids[mask == 1]) == text + tok.eos_token
        assert long_prompt.endswith(tok.decode(ids[mask == 0]))
    assert len(cut["chosen_ids"]) == 48 or len(cut["rejected_ids"]) == 48
    # both rows lose the same prompt tokens
    assert list(cut["chosen_ids"][cut["chosen_mask"] == 0]) == list(
        cut["rejected_ids"][cut["rejected_mask"] == 0]
    )


def test_missing_field_is_one_line_naming_file_and_line(tmp_path, tiny_tokenizer_dir):
    path = write_pairs(
        tmp_path / "p.jsonl", [PAIRS[0], {"prompt": "Q:", "chosen": " yes."}, PAIRS[1]]
    )
    with pytest.raises(DataError) as err:
        module(tmp_path, tiny_tokenizer_dir, path)
    message = str(err.value)
    assert message.startswith(f"{path}:2: ")
    assert "'rejected'" in message and "rejected_field" in message and "\n" not in message
    path.write_text(json.dumps({"prompt": "Q:", "chosen": 3, "rejected": "x"}) + "\n")
    with pytest.raises(DataError, match=r":1: field 'chosen' must be a string, got int"):
        module(tmp_path, tiny_tokenizer_dir, path)


def test_configured_field_names_and_parquet(tmp_path, tiny_tokenizer_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    renamed = [{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in PAIRS]
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(renamed), path)
    dm = PreferenceDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        train_sources=[
            {
                "path": str(path),
                "prompt_field": "q",
                "chosen_field": "good",
                "rejected_field": "bad",
            }
        ],
        max_length=64,
        micro_batch_size=2,
        cache_dir=str(tmp_path / "stores"),
    )
    dm.prepare_data()
    dm.setup("fit")
    plain = module(tmp_path, tiny_tokenizer_dir, write_pairs(tmp_path / "p.jsonl", PAIRS))
    for i in range(len(PAIRS)):
        a, b = dm.train_dataset[i], plain.train_dataset[i]
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert dm.train_dataset.fingerprint != plain.train_dataset.fingerprint  # another source


def test_config_errors_name_the_key(tiny_tokenizer_dir):
    with pytest.raises(ConfigError, match=r"train_sources\[0\]\.format"):
        PreferenceDataModule(tokenizer="x", train_sources=[{"path": "a.txt", "format": "text"}])
    with pytest.raises(ConfigError, match=r"train_sources\[0\]\.rejected_field"):
        PreferenceDataModule(
            tokenizer="x", train_sources=[{"path": "a.jsonl", "rejected_field": "chosen"}]
        )
    with pytest.raises(ConfigError, match=r"overlong_policy"):
        PreferenceDataModule(
            tokenizer="x", train_sources=[{"path": "a.jsonl"}], overlong_policy="truncate"
        )
    with pytest.raises(ConfigError, match=r"train_sources"):
        PreferenceDataModule(tokenizer="x")


def test_fingerprint_follows_the_data(tmp_path, tiny_tokenizer_dir):
    path = write_pairs(tmp_path / "p.jsonl", PAIRS)
    first = module(tmp_path, tiny_tokenizer_dir, path).train_dataset.fingerprint
    assert module(tmp_path, tiny_tokenizer_dir, path).train_dataset.fingerprint == first
    write_pairs(path, [*PAIRS[:3], {**PAIRS[3], "rejected": " 1 2."}])
    assert module(tmp_path, tiny_tokenizer_dir, path).train_dataset.fingerprint != first


def test_val_sources_give_sequential_pair_batches(tmp_path, tiny_tokenizer_dir):
    path = write_pairs(tmp_path / "p.jsonl", PAIRS)
    dm = PreferenceDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        train_sources=[{"path": str(path)}],
        val_sources={"held_out": {"path": str(path)}},
        max_length=64,
        micro_batch_size=2,
        val_batch_size=3,
        cache_dir=str(tmp_path / "stores"),
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.val_set_names == ["held_out"]
    assert set(dm.preference_sets()) == {"train", "val/held_out"}
    (loader,) = dm.val_dataloader()
    batches = list(loader)
    assert [b["pair_index"].tolist() for b in batches] == [[0, 1, 2], [3]]
    assert [float(b["step_weight"]) for b in batches] == [3.0, 1.0]
    no_val = module(tmp_path, tiny_tokenizer_dir, path)
    assert no_val.val_dataloader() == []


def test_collator_caps_the_width_at_max_length():
    item = {
        "pair_index": 0,
        "chosen_ids": np.arange(10),
        "chosen_mask": np.r_[np.zeros(5), np.ones(5)].astype(np.uint8),
        "rejected_ids": np.arange(7),
        "rejected_mask": np.r_[np.zeros(5), np.ones(2)].astype(np.uint8),
    }
    batch = PairCollator(pad_token_id=99, max_length=10)([item])
    assert batch["input_ids"].shape == (2, 10)
    assert batch["input_ids"][1, 7:].tolist() == [99, 99, 99]
    assert float(batch["step_weight"]) == 1.0
    assert batch["labels"][0].tolist() == [-100] * 5 + [5, 6, 7, 8, 9]
    assert torch.equal(PairCollator(99, 64)([item])["input_ids"][:, :10], batch["input_ids"])


def test_world_fragment_builds_with_the_smoke_world(tmp_path):
    from datamodules.world.config import WorldConfig
    from experiments.include import load_yaml
    from tests.experiments.conftest import CONFIG_DIR

    path = CONFIG_DIR / "data" / "world_alignment_preference.yaml"
    fragment = load_yaml(path.read_text(), base_dir=path.parent)
    assert fragment["class_path"] == "datamodules.preference.WorldPreferenceDataModule"
    smoke = load_yaml((CONFIG_DIR / "world" / "smoke.yaml").read_text())
    args = {k: v for k, v in fragment["init_args"].items() if k != "world"}
    args["train_sources"] = [PreferenceSource(**s) for s in args["train_sources"]]
    pool = smoke["instructions"]["format_alignment_pool"]
    args["micro_batch_size"] = min(args["micro_batch_size"], pool)  # the smoke pool is small
    dm = WorldPreferenceDataModule(
        world=WorldConfig(**smoke),
        world_cache_dir=str(tmp_path / "worlds"),
        cache_dir=str(tmp_path / "stores"),
        **args,
    )
    dm.prepare_data()
    dm.setup("fit")
    stats = dm.pair_stats["format_alignment_preference"]
    assert stats.records == smoke["instructions"]["format_alignment_pool"] > 0
    assert stats.pairs == stats.records  # nothing dropped at this max_length
    batch = next(iter(dm.train_dataloader()))
    assert batch["pair_index"].numel() == args["micro_batch_size"]
    tok = dm.tokenizer
    row = tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert row.startswith("<|user|>") and "<|assistant|>" in row
    assert row.endswith("<|endoftext|>") and tok.eos_token == "<|endoftext|>"
    response = tok.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX])
    assert "<|assistant|>" not in response and response.endswith("<|endoftext|>")
