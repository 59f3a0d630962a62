"""Evaluation of trained models, as a library (used by callbacks and `python -m experiments evaluate`).

`evaluation.knowledge`: greedy exact match on QA sets, held-out perplexity on text sets, and the mean
per-token KL(initial ‖ current) on the same text (forgetting against a reference model).
"""

from evaluation.knowledge import (
    QA_FIELDS,
    QARecord,
    chunks_kl,
    chunks_nll,
    evaluate_knowledge,
    evaluation_sums,
    greedy_generate,
    heldout_kl,
    heldout_nll,
    load_qa_records,
    load_texts,
    metrics_from_sums,
    perplexity_chunks,
    shard,
)

__all__ = [
    "QA_FIELDS",
    "QARecord",
    "chunks_kl",
    "chunks_nll",
    "evaluate_knowledge",
    "evaluation_sums",
    "greedy_generate",
    "heldout_kl",
    "heldout_nll",
    "load_qa_records",
    "load_texts",
    "metrics_from_sums",
    "perplexity_chunks",
    "shard",
]
