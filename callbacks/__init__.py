"""Callbacks that observe training: knowledge evaluation, throughput, export (one per file)."""

from callbacks.export import ExportCallback, atomic_directory, export_pretrained
from callbacks.knowledge_eval import (
    KnowledgeEvalCallback,
    QARecord,
    greedy_generate,
    heldout_nll,
    load_qa_records,
    load_texts,
    normalize_answer,
)
from callbacks.throughput import ThroughputCallback

__all__ = [
    "ExportCallback",
    "KnowledgeEvalCallback",
    "QARecord",
    "ThroughputCallback",
    "atomic_directory",
    "export_pretrained",
    "greedy_generate",
    "heldout_nll",
    "load_qa_records",
    "load_texts",
    "normalize_answer",
]
