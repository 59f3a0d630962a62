"""The objective does not depend on how a step is split, and a resumed run replays an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from datamodules.world import WorldConfig, WorldDataModule
from experiments.cli import build_cli
from lightning_modules import CausalLMModule
from tests.experiments.conftest import CONFIG_DIR, SMALL_WORLD
from tests.helpers import TINY_LLAMA, cpu_trainer, read_records, steps_view, write_recording_overlay

BASE_EXPERIMENT = CONFIG_DIR / "cpt" / "world_tiny.yaml"


class CaptureFirstStep(pl.Callback):
    """Keep the gradients and the logged loss of the first optimizer step."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}
        self.loss: float | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.loss is None and "train/loss" in trainer.callback_metrics:
            self.loss = float(trainer.callback_metrics["train/loss"])


def first_step(
    cli_cache: Path, tmp_path: Path, micro_batch_size: int, accumulate: int
) -> CaptureFirstStep:
    data = WorldDataModule(
        world=WorldConfig(**SMALL_WORLD),
        world_cache_dir=str(cli_cache / "worlds"),
        cache_dir=str(cli_cache / "stores"),
        max_length=64,
        micro_batch_size=micro_batch_size,
        val_sources={},
    )
    module = CausalLMModule(
        model_config=TINY_LLAMA, tokenizer=data.tokenizer_path, max_length=64, total_steps=1
    )
    capture = CaptureFirstStep()
    trainer = cpu_trainer(
        tmp_path, max_steps=1, accumulate_grad_batches=accumulate, callbacks=[capture]
    )
    trainer.fit(module, datamodule=data)
    return capture


def test_batch_4_equals_batch_1_times_accumulation_4(cli_cache, tmp_path) -> None:
    whole = first_step(cli_cache, tmp_path / "a", micro_batch_size=4, accumulate=1)
    split = first_step(cli_cache, tmp_path / "b", micro_batch_size=1, accumulate=4)
    assert whole.loss == pytest.approx(split.loss, rel=1e-6)
    assert whole.grads.keys() == split.grads.keys()
    for name, grad in whole.grads.items():
        torch.testing.assert_close(split.grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def record_run(tmp_path: Path, name: str, extra: list[str], small_world_args: list[str]) -> Path:
    """A CLI fit of the tiny experiment with a step recorder and checkpoints every 5 steps."""
    out = tmp_path / name
    out.mkdir(parents=True)
    overlay = write_recording_overlay(out, every_n_train_steps=5)
    args = [
        "fit",
        "--config",
        str(BASE_EXPERIMENT),
        "--config",
        str(overlay),
        "--trainer.max_steps=12",
    ]
    args += [
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
    ]
    # An epoch of 30-48 rows: the 12 steps of 4 rows cross into the second epoch.
    short_epoch = [
        "--data.init_args.world.document_style=single_mention",
        "--data.init_args.world.train_paraphrases=3",
    ]
    args += ["--data.init_args.max_length=64", *small_world_args, *short_epoch, *extra]
    build_cli(args)
    return out


def test_resume_mid_epoch_replays_the_uninterrupted_run(tmp_path, small_world_args) -> None:
    full = record_run(tmp_path, "full", [], small_world_args)
    uninterrupted = steps_view(read_records(full / "records.jsonl"))
    checkpoint = full / "ckpt" / "step=5.ckpt"
    loader_state = torch.load(checkpoint, weights_only=False)["loops"]["fit_loop"]["state_dict"][
        "combined_loader"
    ][0]
    assert loader_state["epoch"] == 0 and loader_state["consumed_samples"] == 5 * 4, loader_state
    # the checkpoint is mid-epoch, and the replayed steps cross into the next epoch
    assert uninterrupted[5]["epoch"] == uninterrupted[6]["epoch"] == 0
    assert uninterrupted[12]["epoch"] >= 1

    resumed = record_run(tmp_path, "resumed", [f"--ckpt_path={checkpoint}"], small_world_args)
    replay = steps_view(read_records(resumed / "records.jsonl"))
    assert sorted(replay) == list(range(6, 13))
    for step in range(6, 13):
        assert replay[step]["samples"] == uninterrupted[step]["samples"], step
        assert replay[step]["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-6), step
