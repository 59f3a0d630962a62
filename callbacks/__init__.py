"""Callbacks that observe training: knowledge evaluation, throughput, export, checkpoints, progress (one per file).

The evaluation functions themselves (exact match, perplexity) live in the `evaluation` package.
"""

from callbacks.export import ExportCallback, export_pretrained
from callbacks.knowledge_eval import KnowledgeEvalCallback
from callbacks.progress import StepProgressBar
from callbacks.throughput import ThroughputCallback

__all__ = [
    "ExportCallback",
    "KnowledgeEvalCallback",
    "StepProgressBar",
    "ThroughputCallback",
    "export_pretrained",
]
