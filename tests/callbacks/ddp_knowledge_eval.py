"""`KnowledgeEvalCallback` under 2-process DDP on CPU (gloo), for test_knowledge_eval_ddp.

Usage:
    python -m tests.callbacks.ddp_knowledge_eval validate TOKENIZER_DIR QA.jsonl TEXTS.jsonl RESULTS.jsonl
    python -m tests.callbacks.ddp_knowledge_eval fit TOKENIZER_DIR QA.jsonl TEXTS.jsonl RESULTS.jsonl CACHE_DIR

`validate` evaluates once. `fit` runs two fits of one step each from the same initial weights, one
after the other in the same two processes, with the "before" row cached in CACHE_DIR
(`initial_cache_dir`) and the frozen initial model for `initial_kl`; they write RESULTS.jsonl with
`.first` and `.second` before the suffix.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from callbacks import KnowledgeEvalCallback
from tests.callbacks.conftest import TinyCausalLM, cpu_trainer, pad_batch


def run(
    mode: str, tokenizer: Any, qa_path: str, texts_path: str, results_path: Path, cache: str | None
) -> None:
    """One `validate` or `fit` under 2-process DDP."""
    batch = pad_batch([tokenizer("validation")["input_ids"]], tokenizer.pad_token_id)
    fit = mode == "fit"
    module = TinyCausalLM(
        tokenizer, seed=3, val_batches=[batch, batch], train_batches=[batch, batch] if fit else None
    )
    callback = KnowledgeEvalCallback(
        qa_sets={"domain": qa_path},
        perplexity_sets={"general": texts_path},
        results_file=results_path,
        batch_size=2,
        every_n_epochs=0,
        initial_kl=fit,
        initial_cache_dir=cache,
    )
    trainer = cpu_trainer(
        results_path.parent,
        strategy="ddp",
        devices=2,
        callbacks=[callback],
        max_steps=1,
        limit_val_batches=0 if fit else None,
    )
    if fit:
        trainer.fit(module)
    else:
        trainer.validate(module, verbose=False)


def main() -> None:
    mode, tokenizer_dir, qa_path, texts_path, results, *rest = sys.argv[1:]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    results_path = Path(results)
    if mode == "validate":
        run(mode, tokenizer, qa_path, texts_path, results_path, None)
        return
    for attempt in ("first", "second"):
        target = results_path.with_suffix(f".{attempt}{results_path.suffix}")
        run(mode, tokenizer, qa_path, texts_path, target, rest[0])


if __name__ == "__main__":
    main()
