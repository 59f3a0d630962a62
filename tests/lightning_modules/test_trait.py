"""`TRAITModule` and staged data: the switch at the configured step, a schedule and optimizer
restarted per stage, per-source loss parts, and an exact resume across the switch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from common import ConfigError
from datamodules.pretraining import PretrainingDataModule
from datamodules.sampler import StagedMixture, TrainStage
from datamodules.sources import SourceSpec
from lightning_modules import TRAITModule, WarmupCosineLR
from lightning_modules.trait import StagedLR
from tests.helpers import TINY_LLAMA

DOMAIN = [f"Person {i} studied at Mereth University and works in Orlin." for i in range(12)]
SYNTHETIC = [
    f"Question: Where does person {i} work?\nAnswer: Orlin\nThey work there." for i in range(12)
]
GENERAL = [f"The river Tal {i} flows through three cities to the sea." for i in range(12)]
MICRO_BATCH = 4
ROWS_PER_EPOCH = 8  # two optimizer steps per epoch


def write(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture
def sources(tmp_path: Path) -> list[SourceSpec]:
    return [
        SourceSpec(path=str(write(tmp_path / "domain.jsonl", DOMAIN)), name="domain"),
        SourceSpec(path=str(write(tmp_path / "synthetic.jsonl", SYNTHETIC)), name="synthetic"),
        SourceSpec(path=str(write(tmp_path / "general.jsonl", GENERAL)), name="general"),
    ]


def staged_data(
    tokenizer_dir: Path, sources: list[SourceSpec], tmp_path: Path, stage1_steps: int = 4
) -> PretrainingDataModule:
    return PretrainingDataModule(
        tokenizer=str(tokenizer_dir),
        train_sources=sources,
        max_length=32,
        micro_batch_size=MICRO_BATCH,
        rows_per_epoch=ROWS_PER_EPOCH,
        stages=[
            TrainStage("knowledge", (0.75, 0.0, 0.25), steps=stage1_steps),
            TrainStage("synthetic", (0.0, 0.75, 0.25)),
        ],
        seed=3,
        cache_dir=str(tmp_path / "stores"),
    )


class Record(Callback):
    """Per optimizer step: the batch's sources, the loss and the learning rate used."""

    def __init__(self) -> None:
        self.sources: list[set[int]] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.adam_steps: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.sources.append(set(batch["source_index"].tolist()))
        self.losses.append(float(outputs["loss"]))
        state = trainer.optimizers[0].state
        first = next(iter(module.student.parameters()))
        self.adam_steps.append(float(state[first]["step"]) if first in state else 0.0)


class StopAfter(Callback):
    """Ends the run after `steps` optimizer steps, as a kill would, keeping the configured length."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def module(tokenizer_dir: Path, **kwargs: Any) -> TRAITModule:
    return TRAITModule(
        model_config=TINY_LLAMA,
        tokenizer=str(tokenizer_dir),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
        lr_scheduler=lambda opt: WarmupCosineLR(opt, warmup_steps=2, min_lr_ratio=0.1),
        **kwargs,
    )


def fit(
    data: PretrainingDataModule,
    model: TRAITModule,
    root: Path,
    max_steps: int,
    ckpt: str | None = None,
    save: bool = False,
    stop_after: int | None = None,
) -> Record:
    record = Record()
    callbacks: list[Callback] = [record]
    if stop_after is not None:
        callbacks.append(StopAfter(stop_after))
    if save:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(root / "ckpt"), filename="{step}", every_n_train_steps=1, save_top_k=-1
            )
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=save,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(root),
        callbacks=callbacks,
    )
    torch.manual_seed(0)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    return record


def test_staged_mixture_uses_each_stage_ratios_for_its_epochs() -> None:
    mixture = StagedMixture(
        [5, 7, 3],
        [TrainStage("a", (1.0, 0.0, 0.0), steps=4), TrainStage("b", (0.0, 0.5, 0.5))],
        total_rows=8,
        seed=1,
    )
    mixture.bind(steps_per_epoch=2)
    assert mixture.start_steps() == [0, 4]
    assert [mixture.stage_of_epoch(e) for e in range(4)] == [0, 0, 1, 1]
    for epoch in (0, 1):
        assert np.all(mixture.epoch_samples(epoch) < 5)
    for epoch in (2, 7):
        rows = mixture.epoch_samples(epoch)
        assert len(rows) == 8 and np.all(rows >= 5)
        assert int(np.sum(rows >= 12)) == 4  # half from the third source (rows 12..14)


def test_stage_steps_must_be_whole_epochs() -> None:
    mixture = StagedMixture(
        [4, 4], [TrainStage("a", (1.0, 0.0), steps=3), TrainStage("b", (0.0, 1.0))], total_rows=8
    )
    with pytest.raises(ConfigError, match=r"stages\[0\]\.steps.*multiple of 2"):
        mixture.bind(steps_per_epoch=2)
    with pytest.raises(ConfigError, match=r"stages\[0\]\.steps"):
        StagedMixture([4, 4], [TrainStage("a", (1.0, 0.0)), TrainStage("b", (0.0, 1.0))])
    with pytest.raises(ConfigError, match=r"stages\[1\]\.ratios.*sum to 1"):
        StagedMixture([4, 4], [TrainStage("a", (1.0, 0.0), steps=2), TrainStage("b", (0.5, 0.2))])


def test_stages_exclude_source_ratios(
    tiny_tokenizer_dir: Path, sources: list[SourceSpec], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"data\.init_args\.stages.*per stage only"):
        PretrainingDataModule(
            tokenizer=str(tiny_tokenizer_dir),
            train_sources=sources,
            ratios=[0.5, 0.25, 0.25],
            stages=[{"name": "a", "ratios": [1, 0, 0]}],
        )


def test_switch_at_the_configured_step_with_schedule_and_optimizer_restarted(
    tiny_tokenizer_dir: Path, sources: list[SourceSpec], tmp_path: Path
) -> None:
    data = staged_data(tiny_tokenizer_dir, sources, tmp_path, stage1_steps=4)
    model = module(tiny_tokenizer_dir)
    record = fit(data, model, tmp_path / "run", max_steps=10)
    assert model.stage_starts == [("knowledge", 0), ("synthetic", 4)]
    assert all(s <= {0, 2} for s in record.sources[:4])  # domain + general replay only
    assert all(s <= {1, 2} for s in record.sources[4:])  # synthetic + general replay only
    assert any(0 in s for s in record.sources[:4]) and any(1 in s for s in record.sources[4:])
    # each stage has its own warm-up (2 steps) and cosine over its own length (4, then 6 steps)
    stage1 = WarmupCosineLR(torch.optim.SGD([torch.zeros(1)], lr=1e-2), 2, total_steps=4)
    stage2 = WarmupCosineLR(torch.optim.SGD([torch.zeros(1)], lr=1e-2), 2, total_steps=6)
    expected = [1e-2 * stage1.lr_factor(s) for s in range(4)]
    expected += [1e-2 * stage2.lr_factor(s) for s in range(6)]
    np.testing.assert_allclose(record.lrs, expected, rtol=1e-12)
    # Adam restarts at the switch: its step count after step k of stage 2 is k + 1
    assert record.adam_steps == [1, 2, 3, 4, 1, 2, 3, 4, 5, 6]


def test_whole_run_schedule_and_no_reset(
    tiny_tokenizer_dir: Path, sources: list[SourceSpec], tmp_path: Path
) -> None:
    data = staged_data(tiny_tokenizer_dir, sources, tmp_path, stage1_steps=4)
    record = fit(
        data,
        module(tiny_tokenizer_dir, schedule="whole_run", reset_optimizer=False),
        tmp_path / "r",
        8,
    )
    whole = WarmupCosineLR(torch.optim.SGD([torch.zeros(1)], lr=1e-2), 2, total_steps=8)
    np.testing.assert_allclose(record.lrs, [1e-2 * whole.lr_factor(s) for s in range(8)])
    assert record.adam_steps == list(range(1, 9))


def test_source_parts_sum_to_the_loss(
    tiny_tokenizer_dir: Path, sources: list[SourceSpec], tmp_path: Path
) -> None:
    data = staged_data(tiny_tokenizer_dir, sources, tmp_path)
    data.setup("fit")
    model = module(tiny_tokenizer_dir)
    model.configure_model()
    model.source_names = data.train_source_names
    loader = data.train_dataloader()
    batch = next(iter(loader))
    losses = model.compute_losses(batch)
    parts = torch.stack([losses[f"ce/{name}"] for name in data.train_source_names])
    torch.testing.assert_close(parts.sum(), losses["loss"].detach())
    plain = model.student_loss(batch)
    torch.testing.assert_close(losses["loss"], plain["loss"])
    for i, name in enumerate(data.train_source_names):
        if i not in set(batch["source_index"].tolist()):
            assert float(losses[f"ce/{name}"]) == 0.0


@pytest.mark.parametrize("stop", [3, 5])
def test_resume_across_the_switch_is_exact(
    stop: int, tiny_tokenizer_dir: Path, sources: list[SourceSpec], tmp_path: Path
) -> None:
    """Stop before (3) or after (5) the switch at step 4; the resumed run takes the same steps."""
    full = fit(
        staged_data(tiny_tokenizer_dir, sources, tmp_path),
        module(tiny_tokenizer_dir),
        tmp_path / "full",
        8,
    )
    fit(
        staged_data(tiny_tokenizer_dir, sources, tmp_path),
        module(tiny_tokenizer_dir),
        tmp_path / "part",
        8,
        save=True,
        stop_after=stop,
    )
    ckpt = tmp_path / "part" / "ckpt" / f"step={stop}.ckpt"
    resumed = fit(
        staged_data(tiny_tokenizer_dir, sources, tmp_path),
        module(tiny_tokenizer_dir),
        tmp_path / "resumed",
        8,
        ckpt=str(ckpt),
    )
    assert resumed.sources == full.sources[stop:]
    np.testing.assert_allclose(resumed.lrs, full.lrs[stop:], rtol=1e-12)
    np.testing.assert_allclose(resumed.losses, full.losses[stop:], rtol=1e-5, atol=1e-6)
    assert resumed.adam_steps == full.adam_steps[stop:]


def test_staged_lr_state_holds_no_functions() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    inner = [WarmupCosineLR(optimizer, 1, total_steps=n) for n in (3, 4)]
    staged = StagedLR(optimizer, [list(s.lr_lambdas) for s in inner], [0, 3])
    state = staged.state_dict()
    assert not any(callable(v) for v in state.values())
    assert "stage_factors" not in state and "lr_lambdas" not in state
    torch.save(state, "/dev/null")
