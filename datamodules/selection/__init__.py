"""TRAIT's in-domain data selection: mine in-domain documents from a general corpus.

- `corpus`: corpora of documents with ids (JSONL, Parquet, HF, `world:<split>`), read tolerantly.
- `scorers`: the `DocumentScorer` interface and `build_scorer(ScorerSpec)`.
- `fasttext_classifier`: train / score fastText domain and quality classifiers.
- `dsir`: the DSIR baseline (hashed n-gram importance weights, Gumbel top-k).
- `model_scorers`: a causal LM's perplexity and a sequence-classification model as quality scores.
- `select`: the one budget rule (`fill_budget`), orders, the quality filter, selection outputs.
- `metrics`: selection precision / recall / low-quality share against ground-truth labels.
- `pipeline`: the whole run of one method from one config (`python -m datamodules.selection run`).
- `sharded` / `datatrove_steps`: sharded, multi-process scoring and datatrove steps.

Heavy modules (fastText, torch, transformers) are imported only where used.
"""

from datamodules.selection.corpus import CorpusSpec, CorpusStats, Document, iter_corpus
from datamodules.selection.scorers import DocumentScorer, ScorerSpec, build_scorer

__all__ = [
    "CorpusSpec",
    "CorpusStats",
    "Document",
    "DocumentScorer",
    "ScorerSpec",
    "build_scorer",
    "iter_corpus",
]
