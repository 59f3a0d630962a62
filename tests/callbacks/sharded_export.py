"""Export from a model sharded with FSDP2 over 2 CPU processes; launched by test_export_sharded.

Usage: python -m tests.callbacks.sharded_export TOKENIZER_DIR RUN_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard
from transformers import AutoTokenizer

from callbacks import ExportCallback
from tests.callbacks.conftest import TinyCausalLM, cpu_trainer, pad_batch, qa_sequences


class ShardedTinyCausalLM(TinyCausalLM):
    """Shards every decoder layer and the whole model over the data-parallel mesh."""

    def configure_model(self) -> None:
        super().configure_model()
        mesh = self.device_mesh["data_parallel"]
        for layer in self.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(self.model, mesh=mesh)


def main() -> None:
    tokenizer_dir, run_dir = sys.argv[1:3]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    batch = pad_batch(qa_sequences(tokenizer), tokenizer.pad_token_id)
    # lr 0: the weights stay at their seeded initialization, which the test rebuilds to compare.
    module = ShardedTinyCausalLM(tokenizer, lr=0.0, train_batches=[batch] * 2)
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = cpu_trainer(
        Path(run_dir), strategy=strategy, devices=2, max_steps=1, callbacks=[ExportCallback()]
    )
    trainer.fit(module)
    assert type(module.model.lm_head.weight).__name__ == "DTensor"  # really sharded


if __name__ == "__main__":
    main()
