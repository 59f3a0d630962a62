"""PretrainingDataModule: batches, configuration errors, hooks, and loader resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common import IGNORE_INDEX
from common.errors import ConfigError, DataError
from datamodules import store as store_module
from datamodules.packing import collate_rows
from datamodules.pretraining import PretrainingDataModule
from datamodules.sampler import ResumableDataLoader
from datamodules.sources import SourceSpec

WORDS = ["alpha", "born", "in", "Orlin", "river", "the", "sea", "Bram", "works", "7", "!"]


def texts(n: int, seed: int, max_words: int = 25) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [
        {"text": " ".join(rng.choice(WORDS, size=int(rng.integers(1, max_words))))}
        for _ in range(n)
    ]


@pytest.fixture
def sources(write_jsonl: Callable[..., Path]) -> dict[str, Path]:
    return {
        "web": write_jsonl("web.jsonl", texts(40, seed=1)),
        "qa": write_jsonl("qa.jsonl", texts(30, seed=2, max_words=8)),
        "val": write_jsonl("val.jsonl", texts(8, seed=3)),
        "val2": write_jsonl("val2.jsonl", texts(5, seed=4)),
    }


def make_dm(tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path, **kw: Any):
    args: dict[str, Any] = {
        "tokenizer": str(tiny_tokenizer_dir),
        "train_sources": [
            SourceSpec(path=str(sources["web"]), name="web"),
            SourceSpec(path=str(sources["qa"]), name="qa", kind="sample"),
        ],
        "max_length": 16,
        "micro_batch_size": 2,
        "cache_dir": str(tmp_path / "stores"),
    }
    args.update(kw)
    return PretrainingDataModule(**args)


@dataclass
class StubProgress:
    """Stands in for the trainer: the loader reads only these two counters."""

    global_step: int = 0
    current_epoch: int = 0


def consume(loader: ResumableDataLoader, progress: StubProgress, accumulate: int, steps: int):
    """Iterate like Lightning: bump global_step after every `accumulate` micro-batches; stop after
    `steps` optimizer steps (leaving the iterator, with its prefetched batches, behind)."""
    seen: list[list[int]] = []
    for j, batch in enumerate(loader):
        seen.append(batch["sample_index"].tolist())
        if (j + 1) % accumulate == 0:
            progress.global_step += 1
            if len(seen) == steps * accumulate:
                break
    return seen


# -- batches ----------------------------------------------------------------------------------


def test_train_batches_follow_the_contract(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path, val_sources=None)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.max_length == 16 and dm.tokenizer_path == str(tiny_tokenizer_dir)
    assert dm.stats["web"]["documents"] == 40 and dm.stats["qa"]["rows"] > 0
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    batches = list(loader)
    assert len(batches) == len(loader) == len(dm.train_dataset) // 2
    for batch in batches:
        assert set(batch) == {
            "input_ids", "labels", "position_ids", "attention_mask", "sample_index",
            "source_index", "step_weight",
        }  # fmt: skip
        assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].dtype == torch.long
        assert batch["step_weight"].shape == () and batch["step_weight"].dtype == torch.float64
        brute = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        assert float(batch["step_weight"]) == brute  # one micro-batch per step here
        for i, row in zip(batch["sample_index"].tolist(), batch["input_ids"]):
            expected = dm.train_dataset[i]["input_ids"][: row.shape[0]]
            assert row.tolist() == expected.tolist()
    seen = [i for b in batches for i in b["sample_index"].tolist()]
    assert len(set(seen)) == len(seen) == (len(dm.train_dataset) // 2) * 2


def test_step_weight_spans_accumulation_and_ranks(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path)
    dm.setup("fit")
    samplers = [dm.train_sampler(accumulate_grad_batches=2, world_size=2, rank=r) for r in (0, 1)]
    per_rank = [list(s) for s in samplers]
    for k in range(samplers[0].steps_per_epoch):
        keys = [key for r in (0, 1) for m in (0, 1) for key in per_rank[r][2 * k + m]]
        brute = sum(int((dm.train_dataset[i]["labels"][1:] != IGNORE_INDEX).sum()) for i, _ in keys)
        assert {t for _, t in keys} == {brute}


def test_mixture_ratios_and_rows_per_epoch(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    specs = [
        SourceSpec(path=str(sources["web"]), name="web", ratio=0.25),
        SourceSpec(path=str(sources["qa"]), name="qa", kind="sample", ratio=0.75),
    ]
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path, train_sources=specs, rows_per_epoch=40)
    dm.setup("fit")
    n_web = dm.train_dataset.source_sizes[0]
    indices = [i for b in dm.train_dataloader() for i in b["sample_index"].tolist()]
    assert len(indices) == 40
    assert sum(i < n_web for i in indices) == 10


def test_ratios_replace_the_sources_ratios_and_rows_name_their_source(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path, ratios=[0.25, 0.75], rows_per_epoch=40)
    assert [s.ratio for s in dm.train_sources] == [0.25, 0.75]
    assert dm.train_source_names == ["web", "qa"]
    dm.setup("fit")
    n_web = dm.train_dataset.source_sizes[0]
    batches = list(dm.train_dataloader())
    indices = [i for b in batches for i in b["sample_index"].tolist()]
    sources_of = [s for b in batches for s in b["source_index"].tolist()]
    assert sum(i < n_web for i in indices) == 10
    assert sources_of == [0 if i < n_web else 1 for i in indices]
    with pytest.raises(ConfigError, match=r"data\.init_args\.ratios.*one ratio per train source"):
        make_dm(tiny_tokenizer_dir, sources, tmp_path, ratios=[1.0])
    with pytest.raises(ConfigError, match=r"data\.init_args\.ratios.*sum to 1"):
        make_dm(tiny_tokenizer_dir, sources, tmp_path, ratios=[0.5, 0.6])


def test_val_loaders_by_name_in_order(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    val = {
        "zeta": SourceSpec(path=str(sources["val"])),
        "alpha": SourceSpec(path=str(sources["val2"]), kind="sample"),
    }
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path, val_sources=val, val_batch_size=3)
    dm.setup("validate")
    assert dm.val_set_names == ["zeta", "alpha"]
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    batches = list(loaders[1])
    assert [i for b in batches for i in b["sample_index"].tolist()] == list(
        range(len(loaders[1].dataset))
    )
    for b in batches:
        assert float(b["step_weight"]) == int((b["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_prepare_data_then_setup_tokenizes_once(
    tiny_tokenizer_dir: Path,
    sources: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    original = store_module._tokenize_batch
    monkeypatch.setattr(
        store_module, "_tokenize_batch", lambda t, x: calls.append(len(x)) or original(t, x)
    )
    val = {"val": SourceSpec(path=str(sources["val"]))}
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path, val_sources=val)
    dm.prepare_data()
    assert len(calls) == 3
    make_dm(tiny_tokenizer_dir, sources, tmp_path, val_sources=val).setup("fit")
    assert len(calls) == 3


# -- hooks and configuration ------------------------------------------------------------------


def test_subclass_hooks_resolve_sources_and_tokenizer(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    class Mapped(PretrainingDataModule):
        def resolve_source(self, spec: SourceSpec) -> SourceSpec:
            if spec.path.startswith("demo:"):
                return replace(spec, path=str(sources[spec.path.split(":", 1)[1]]))
            return spec

        def resolve_tokenizer_path(self) -> str:
            return str(tiny_tokenizer_dir)

    dm = Mapped(
        train_sources=[SourceSpec(path="demo:web")],
        val_sources={"held": SourceSpec(path="demo:val")},
        max_length=16,
        cache_dir=str(tmp_path / "stores"),
    )
    dm.setup("fit")
    assert dm.tokenizer_path == str(tiny_tokenizer_dir)
    assert set(dm.stats) == {"demo:web", "held"}  # configured names, val sources by key
    assert len(dm.train_dataset) > 0 and dm.val_set_names == ["held"]


def test_pad_token_defaults_to_eos(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    config = json.loads((tmp_path / "nopad" / "tokenizer_config.json").read_text())
    assert config.get("pad_token") is None
    dm = make_dm(tmp_path / "nopad", sources, tmp_path)
    assert dm.tokenizer.pad_token_id == dm.tokenizer.eos_token_id is not None


@pytest.mark.parametrize(
    ("kwargs", "key", "text"),
    [
        ({"max_length": 1}, "max_length", "must be an integer >= 2, got 1"),
        ({"micro_batch_size": 0}, "micro_batch_size", "must be an integer >= 1"),
        ({"val_batch_size": -1}, "val_batch_size", "must be an integer >= 1"),
        ({"rows_per_epoch": 0}, "rows_per_epoch", ">= 1"),
        ({"num_workers": -1}, "num_workers", ">= 0"),
        ({"train_sources": [], "val_sources": None}, "train_sources", "at least one"),
        ({"train_sources": [{"path": "x.jsonl", "format": "csv"}]}, "train_sources[0].format", ""),
        (
            {"train_sources": [{"path": "a", "ratio": 0.5}, {"path": "b", "ratio": 0.4}]},
            "train_sources[1].ratio",
            "ratios must sum to 1, got 0.9",
        ),
        ({"tokenizer": None}, "tokenizer", "a tokenizer path or hub id is required"),
    ],
)
def test_configuration_errors_name_the_key(
    kwargs: dict[str, Any], key: str, text: str, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    base: dict[str, Any] = {
        "tokenizer": str(tiny_tokenizer_dir),
        "train_sources": [SourceSpec(path="unused.jsonl")],
    }
    base.update(kwargs)
    with pytest.raises(ConfigError) as info:
        dm = PretrainingDataModule(**base)
        _ = dm.tokenizer_path
    assert info.value.key == f"data.init_args.{key}"
    assert text in str(info.value)


def test_unloadable_tokenizer_and_bad_source_are_one_line(
    tmp_path: Path, tiny_tokenizer_dir: Path, write_jsonl: Callable[..., Path]
) -> None:
    dm = PretrainingDataModule(
        tokenizer=str(tmp_path / "missing-tokenizer"),
        train_sources=[SourceSpec(path="x.jsonl")],
    )
    with pytest.raises(ConfigError, match="cannot load tokenizer"):
        _ = dm.tokenizer
    bad = write_jsonl("bad.jsonl", [{"text": "ok"}, "{oops"])
    dm = PretrainingDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        train_sources=[SourceSpec(path=str(bad))],
        cache_dir=str(tmp_path / "stores"),
    )
    with pytest.raises(DataError, match=rf"^{bad}:2: malformed JSON"):
        dm.prepare_data()
    assert not any((tmp_path / "stores").glob("*/manifest.json"))


def test_global_batch_larger_than_epoch_is_a_config_error(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path, rows_per_epoch=3)
    dm.setup("fit")
    with pytest.raises(ConfigError, match="an epoch has 3 rows but one optimizer step needs 4"):
        dm.train_sampler(accumulate_grad_batches=2)


# -- resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_workers", "stop_epoch", "stop_step"),
    [(0, 0, 3), (2, 0, 5), (0, 1, 2)],
)
def test_loader_resumes_exactly(
    tiny_tokenizer_dir: Path,
    sources: dict[str, Path],
    tmp_path: Path,
    num_workers: int,
    stop_epoch: int,
    stop_step: int,
) -> None:
    accumulate = 2
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path, num_workers=num_workers)
    dm.setup("fit")
    steps_per_epoch = dm.train_sampler(accumulate).steps_per_epoch

    def loader(progress: StubProgress) -> ResumableDataLoader:
        return ResumableDataLoader(
            dm.train_dataset,
            dm.train_sampler(accumulate),
            progress=progress,
            num_workers=num_workers,
        )

    # Uninterrupted: epochs 0 and 1.
    progress = StubProgress()
    full = loader(progress)
    reference = []
    for epoch in (0, 1):
        progress.current_epoch = epoch
        reference.append(consume(full, progress, accumulate, steps_per_epoch))

    # Interrupted after `stop_step` optimizer steps of `stop_epoch`; workers ran ahead.
    progress = StubProgress(global_step=stop_epoch * steps_per_epoch, current_epoch=stop_epoch)
    first = loader(progress)
    consume(first, progress, accumulate, stop_step)
    state = first.state_dict()
    assert state["epoch"] == stop_epoch
    assert state["consumed_samples"] == stop_step * 2 * accumulate

    resumed_progress = StubProgress(global_step=progress.global_step, current_epoch=stop_epoch)
    resumed = loader(resumed_progress)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state  # before iterating, the loaded state is reported
    rest = consume(resumed, resumed_progress, accumulate, steps_per_epoch)
    assert rest == reference[stop_epoch][stop_step * accumulate :]
    # The next epoch starts from its beginning.
    if stop_epoch == 0:
        resumed_progress.current_epoch = 1
        assert consume(resumed, resumed_progress, accumulate, steps_per_epoch) == reference[1]


def test_resume_with_another_world_size(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    """World 2 × micro 2 saved, world 1 × micro 2 × accumulate 2 resumed: same global steps."""
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path)
    dm.setup("fit")
    progress = StubProgress()
    ranks = [
        ResumableDataLoader(
            dm.train_dataset, dm.train_sampler(1, world_size=2, rank=r), progress=progress
        )
        for r in (0, 1)
    ]
    iters = [iter(r) for r in ranks]
    steps_done = 3
    for _ in range(steps_done):
        for it in iters:
            next(it)
        progress.global_step += 1
    states = [r.state_dict() for r in ranks]
    assert states[0] == states[1]

    single = ResumableDataLoader(
        dm.train_dataset, dm.train_sampler(2), progress=StubProgress(global_step=steps_done)
    )
    single.load_state_dict(states[0])
    resumed = [b["sample_index"].tolist() for b in single]
    order = dm.train_sampler(1).epoch_order(0)
    g = 4
    expected = [
        order[k * g + m * 2 : k * g + m * 2 + 2].tolist()
        for k in range(steps_done, single.global_sampler.steps_per_epoch)
        for m in (0, 1)
    ]
    assert resumed == expected


def test_resume_without_trainer_counts_delivered_batches(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path)
    dm.setup("fit")
    loader = dm.train_dataloader()
    full = [b["sample_index"].tolist() for b in loader]
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    assert state["consumed_samples"] == 4 * 2 and state["epoch"] == 0
    fresh = dm.train_dataloader()
    fresh.load_state_dict(state)
    assert [b["sample_index"].tolist() for b in fresh] == full[4:]


def test_loader_collate_fn_defaults_to_collate_rows(
    tiny_tokenizer_dir: Path, sources: dict[str, Path], tmp_path: Path
) -> None:
    dm = make_dm(tiny_tokenizer_dir, sources, tmp_path)
    dm.setup("fit")
    default = ResumableDataLoader(dm.train_dataset, dm.train_sampler())
    assert default.collate_fn is collate_rows
    seen: list[int] = []

    def keys_only(rows: list[dict[str, Any]]) -> list[int]:
        seen.append(len(rows))
        return [int(r["sample_index"]) for r in rows]

    custom = ResumableDataLoader(dm.train_dataset, dm.train_sampler(), collate_fn=keys_only)
    assert [b for b in custom] == [b["sample_index"].tolist() for b in default]
    assert seen and set(seen) == {2}
    assert custom.state_dict()["consumed_samples"] == len(seen) * 2
