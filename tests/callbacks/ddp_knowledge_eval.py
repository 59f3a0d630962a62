"""`KnowledgeEvalCallback` under 2-process DDP on CPU (gloo), for test_knowledge_eval_ddp.

Usage: python -m tests.callbacks.ddp_knowledge_eval TOKENIZER_DIR QA.jsonl TEXTS.jsonl RESULTS.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoTokenizer

from callbacks import KnowledgeEvalCallback
from tests.callbacks.conftest import TinyCausalLM, cpu_trainer, pad_batch


def main() -> None:
    tokenizer_dir, qa_path, texts_path, results_path = sys.argv[1:5]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    batch = pad_batch([tokenizer("validation")["input_ids"]], tokenizer.pad_token_id)
    module = TinyCausalLM(tokenizer, seed=3, val_batches=[batch, batch])
    callback = KnowledgeEvalCallback(
        qa_sets={"domain": qa_path},
        perplexity_sets={"general": texts_path},
        results_file=results_path,
        batch_size=2,
    )
    trainer = cpu_trainer(
        Path(results_path).parent, strategy="ddp", devices=2, callbacks=[callback]
    )
    trainer.validate(module, verbose=False)


if __name__ == "__main__":
    main()
