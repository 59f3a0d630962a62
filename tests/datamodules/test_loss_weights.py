"""Per-unit reductions, data side: `loss_weights`, `step_weight` and `SourceSpec.loss_weighting`.

Over a whole epoch and for every layout of the same global batch, each step's micro-batches carry
one `step_weight` that equals (float64, fsum) the total of their weights over all ranks; `sample`
weighting gives every segment a total weight of 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common import IGNORE_INDEX
from common.errors import ConfigError
from datamodules.packing import KeyedBatches, PackedRows, collate_rows
from datamodules.pretraining import PretrainingDataModule
from datamodules.sources import SourceSpec
from tests.datamodules.test_packing import make_store

LAYOUTS = [(4, 1, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2)]  # micro-batch, accumulation, world size
WORDS = ["alpha", "born", "in", "Orlin", "river", "the", "sea", "Bram", "works", "7", "!"]


def _texts(n: int, seed: int, max_words: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [
        {"text": " ".join(rng.choice(WORDS, size=int(rng.integers(1, max_words))))}
        for _ in range(n)
    ]


@pytest.fixture
def sources(write_jsonl: Callable[..., Path]) -> dict[str, Path]:
    return {
        "web": write_jsonl("web.jsonl", _texts(30, seed=1, max_words=25)),
        "qa": write_jsonl("qa.jsonl", _texts(30, seed=2, max_words=8)),
    }


def _dm(tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path, weighting: str, micro: int):
    return PretrainingDataModule(
        tokenizer=str(tokenizer_dir),
        train_sources=[
            SourceSpec(path=str(sources["web"]), name="web", loss_weighting=weighting),
            SourceSpec(path=str(sources["qa"]), name="qa", kind="sample", loss_weighting=weighting),
        ],
        max_length=16,
        micro_batch_size=micro,
        cache_dir=str(tmp_path / "stores"),
    )


def _weights(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float64 weight of every position (column t: the loss of predicting `labels[:, t]`)."""
    if "loss_weights" in batch:
        return batch["loss_weights"].to(torch.float64)
    weights = (batch["labels"] != IGNORE_INDEX).to(torch.float64)
    weights[:, 0] = 0.0  # never predicted
    return weights


def _segments(row_positions: torch.Tensor, row_mask: torch.Tensor) -> list[tuple[int, int]]:
    real = int(row_mask.sum())
    starts = [t for t in range(real) if int(row_positions[t]) == 0] + [real]
    return list(itertools.pairwise(starts))


@pytest.mark.parametrize("weighting", ["token", "sample"])
def test_step_weight_is_the_total_of_the_steps_weights_for_every_layout(
    weighting: str, tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    per_layout: list[list[float]] = []
    for micro, accumulate, world in LAYOUTS:
        dm = _dm(tiny_tokenizer_dir, sources, tmp_path, weighting, micro)
        dm.setup("fit")
        dataset = dm.train_dataset
        assert dataset.loss_weighting == weighting
        steps: dict[int, list[dict[str, torch.Tensor]]] = {}
        for rank in range(world):
            sampler = dm.train_sampler(accumulate, world, rank)
            for j, keys in enumerate(sampler):
                steps.setdefault(j // accumulate, []).append(
                    collate_rows(KeyedBatches(dataset)[keys])
                )
        assert len(steps) == sampler.steps_per_epoch > 0
        step_weights = []
        for batches in steps.values():
            assert len(batches) == accumulate * world
            values = {float(b["step_weight"]) for b in batches}
            assert len(values) == 1, "every micro-batch of a step carries the same step_weight"
            assert all(b["step_weight"].dtype == torch.float64 for b in batches)
            assert all(b["step_weight"].shape == () for b in batches)
            step_weight = values.pop()
            total = math.fsum(w for b in batches for w in _weights(b).flatten().tolist())
            assert total == pytest.approx(step_weight, rel=1e-12, abs=0)
            segments_with_targets = 0
            for b in batches:
                assert ("loss_weights" in b) == (weighting == "sample")
                weights = _weights(b)
                assert torch.all(weights[b["labels"] == IGNORE_INDEX] == 0)
                assert torch.all(weights[:, 0] == 0)
                if weighting == "token":
                    continue
                assert b["loss_weights"].dtype == torch.float32
                assert b["loss_weights"].shape == b["labels"].shape
                for r in range(b["labels"].shape[0]):
                    for lo, hi in _segments(b["position_ids"][r], b["attention_mask"][r]):
                        seg_total = math.fsum(weights[r, lo:hi].tolist())
                        if hi - lo > 1:
                            segments_with_targets += 1
                            assert seg_total == pytest.approx(1.0, rel=1e-6)
                        else:
                            assert seg_total == 0
            if weighting == "sample":
                assert step_weight == pytest.approx(segments_with_targets, rel=1e-6)
            else:
                brute = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
                assert step_weight == brute
            step_weights.append(step_weight)
        per_layout.append(step_weights)
    assert all(w == per_layout[0] for w in per_layout), "same steps whatever the layout"


def test_sample_weighting_resumes_exactly_with_the_same_state(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    states = {}
    for weighting in ("token", "sample"):
        dm = _dm(tiny_tokenizer_dir, sources, tmp_path, weighting, 2)
        dm.setup("fit")
        full = list(dm.train_dataloader())
        loader = dm.train_dataloader()
        iterator = iter(loader)
        for _ in range(3):
            next(iterator)
        states[weighting] = loader.state_dict()
        resumed = dm.train_dataloader()
        resumed.load_state_dict(states[weighting])
        rest = list(resumed)
        assert len(rest) == len(full) - 3
        for got, want in zip(rest, full[3:]):
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in got)
    assert states["token"] == states["sample"]
    assert set(states["sample"]) == {"epoch", "consumed_samples", "global_batch_size", "seed"}


def test_row_weights_are_computed_once_per_layout(tiny_tokenizer: Any, tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", tiny_tokenizer, ["Bram works in Orlin", "the sea", "7"])
    rows = PackedRows(store, 8, kind="sample", loss_weighting="sample")
    assert rows.row_weights.dtype == np.float64 and rows.row_weights.shape == (len(rows),)
    for r in range(len(rows)):
        assert math.fsum(rows.row(r, 0)["loss_weights"].astype(np.float64)) == rows.row_weights[r]


def test_train_sources_must_share_one_weighting(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    dm = PretrainingDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        train_sources=[
            SourceSpec(path=str(sources["web"]), loss_weighting="token"),
            SourceSpec(path=str(sources["qa"]), kind="sample", loss_weighting="sample"),
        ],
        max_length=16,
        micro_batch_size=2,
        cache_dir=str(tmp_path / "stores"),
    )
    with pytest.raises(ConfigError, match=r"train_sources\[1\]\.loss_weighting.*same loss"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match=r"x\.loss_weighting"):
        SourceSpec(path="a.jsonl", loss_weighting="pair").validate("x")  # type: ignore[arg-type]
