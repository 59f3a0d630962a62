"""The train loader inside a real Lightning `Trainer`: its state is checkpointed and restored.

A stand-in module (one weight) records the sample indices it sees; the full model-level resume test
(same losses) lives with the modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.pretraining import PretrainingDataModule
from datamodules.sources import SourceSpec
from tests.datamodules.conftest import DOCS


class Recorder(pl.LightningModule):
    """Records `sample_index` of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch["sample_index"].tolist())
        scale = batch["step_weight"].float()
        return (self.weight * batch["input_ids"].float().mean() / scale).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm: PretrainingDataModule, root: Path, max_steps: int, ckpt: str | None = None) -> Recorder:
    model = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        accumulate_grad_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=[
            ModelCheckpoint(
                dirpath=str(root / "ckpt"), filename="{step}", every_n_train_steps=1, save_top_k=-1
            )
        ],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return model


@pytest.mark.parametrize("where", ["mid_epoch_0", "mid_epoch_1", "end_of_epoch_0"])
def test_resumed_fit_sees_the_same_samples(
    where: str, tiny_tokenizer_dir: Path, write_jsonl: Any, tmp_path: Path
) -> None:
    path = write_jsonl("docs.jsonl", [{"text": t} for t in DOCS * 3])

    def datamodule() -> PretrainingDataModule:
        return PretrainingDataModule(
            tokenizer=str(tiny_tokenizer_dir),
            train_sources=[SourceSpec(path=str(path))],
            max_length=16,
            micro_batch_size=2,
            seed=5,
            cache_dir=str(tmp_path / "stores"),
        )

    dm = datamodule()
    dm.setup("fit")
    steps_per_epoch = dm.train_sampler(accumulate_grad_batches=2).steps_per_epoch
    assert steps_per_epoch >= 4
    total = steps_per_epoch + 4
    resume_step = {
        "mid_epoch_0": 2,
        "mid_epoch_1": steps_per_epoch + 2,
        "end_of_epoch_0": steps_per_epoch,
    }[where]

    full = fit(datamodule(), tmp_path / "full", total)
    assert len(full.seen) == 2 * total
    first_epoch = sorted(i for b in full.seen[: 2 * steps_per_epoch] for i in b)
    assert len(set(first_epoch)) == len(first_epoch)

    part = fit(datamodule(), tmp_path / "part", total)
    ckpt = tmp_path / "part" / "ckpt" / f"step={resume_step}.ckpt"
    state = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]
    loader_state = state["combined_loader"][0]
    epoch, offset = divmod(resume_step, steps_per_epoch)
    if offset == 0:  # saved after the last step of the epoch: that epoch is complete
        epoch, offset = epoch - 1, steps_per_epoch
    assert loader_state["epoch"] == epoch
    assert loader_state["consumed_samples"] == offset * 4
    assert part.seen == full.seen

    resumed = fit(datamodule(), tmp_path / "resumed", total, ckpt=str(ckpt))
    assert resumed.seen == full.seen[2 * resume_step :]
