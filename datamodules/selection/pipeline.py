"""TRAIT's in-domain data selection from one config: train what a method needs, score the corpus,
select at a token budget, evaluate against ground truth.

Methods (`method`):

- `fasttext`: a fastText domain classifier (positives: in-domain documents, `domain.positives`;
  negatives: general documents, `domain.negatives`) scores the corpus; documents are taken by
  score, highest first, until `budget_tokens` is filled (or all above `threshold`).
- `fasttext_quality`: the same, with the quality filter: candidates outside the top
  `quality.keep_fraction` of the corpus by quality score, or below `quality.threshold`, are dropped
  before the budget is filled. The quality score is a fastText quality classifier trained from
  labelled examples (`quality.classifier`: a labelled source joined by id to its labels,
  positives where `label_field` is in `positive_values`; on the world, another draw of the world,
  `world_seed`, so the examples are disjoint from the corpus), or a model's score
  (`quality.scorer: perplexity | sequence_classification`, `quality.model`: a local directory).
- `dsir`: DSIR's importance weights (target: `domain.positives`, raw: the corpus), Gumbel top-k
  with `seed`, at the same budget.
- `random`: a permutation seeded by `seed`, at the same budget.

Every method ends in `select.fill_budget` (the one budget rule). Sources may be `world:<split>`
paths of the config's `world` (materialized under `world_cache_dir` on first use).

Outputs in `output_dir` (each file atomic): `domain_classifier.bin/.json`,
`quality_classifier.bin/.json`, `dsir.npz/.json` (what the method trains), `scores.jsonl` (the
method's score per document, corpus order; `shards/` and `scores_manifest.json` beside it, from
`sharded.score_corpus`), `quality/scores.jsonl` (the quality scores), `selected.jsonl`,
`metrics.json` (with `labels_path`) and, last, `manifest.json`. The manifest's fingerprint covers
the content of every input (corpus, training sources, labels, model files), the tokenizer and
every setting that changes the selection: a rerun with the same fingerprint whose outputs are
intact does nothing (logged); `force` recomputes everything, including trained models and scores.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.errors import ConfigError, DataError
from common.summary import finite_summary
from datamodules.selection.corpus import (
    WORLD_SCHEME,
    CorpusSpec,
    CorpusStats,
    Document,
    WorldSplits,
    read_corpus,
    resolve_corpus,
)
from datamodules.selection.dsir import DSIRSettings
from datamodules.selection.fasttext_classifier import (
    FastTextSettings,
    TrainedClassifier,
    reusable_model,
    sidecar_path,
    train_fasttext,
)
from datamodules.selection.metrics import (
    EvaluationSettings,
    LabelsSpec,
    evaluate_selection,
    read_labels,
)
from datamodules.selection.scorers import ScorerSpec, build_scorer, files_identity, model_files
from datamodules.selection.select import (
    MANIFEST,
    METRICS,
    SCORES,
    SELECTED,
    VERSION,
    Selection,
    check_budget,
    count_tokens,
    digest,
    fingerprint_of,
    order_by_score,
    quality_mask,
    random_order,
    read_scores,
    reusable_selection,
    select,
    write_json,
    write_selected,
)
from datamodules.sources import SourceSpec, source_fingerprint
from datamodules.world.config import WorldConfig

log = logging.getLogger("datamodules.selection")

Method = Literal["fasttext", "fasttext_quality", "dsir", "random"]
METHODS: tuple[str, ...] = ("fasttext", "fasttext_quality", "dsir", "random")
QUALITY_SCORERS: tuple[str, ...] = ("fasttext", "perplexity", "sequence_classification")
DOMAIN_MODEL = "domain_classifier.bin"
QUALITY_MODEL = "quality_classifier.bin"
DSIR_MODEL = "dsir.npz"
QUALITY_DIR = "quality"


# ----------------------------------------------------------------------------------- settings


def _domain_positives() -> list[CorpusSpec]:
    return [CorpusSpec(path=f"{WORLD_SCHEME}domain_documents", id_field=None)]


def _domain_negatives() -> list[CorpusSpec]:
    return [
        CorpusSpec(path=f"{WORLD_SCHEME}web_pretraining", id_field=None),
        CorpusSpec(path=f"{WORLD_SCHEME}general_documents", id_field=None),
    ]


@dataclass
class DomainClassifierConfig:
    """The fastText domain classifier (and DSIR's target documents: `positives`).

    Args:
        positives: In-domain document sources.
        negatives: General document sources.
        max_per_source: Keep at most this many documents of each source (a seeded sample, corpus
            order kept); null: all.
        balance: Downsample the larger class to the size of the smaller (seeded).
        seed: Seed of the caps and the balancing.
        valid_fraction: Share of each class held out for precision / recall / AUC.
        fasttext: fastText's training options and text preparation.
        model_path: Where the model goes; default `<output_dir>/domain_classifier.bin`.
    """

    positives: list[CorpusSpec] = field(default_factory=_domain_positives)
    negatives: list[CorpusSpec] = field(default_factory=_domain_negatives)
    max_per_source: int | None = None
    balance: bool = False
    seed: int = 0
    valid_fraction: float = 0.1
    fasttext: FastTextSettings = field(default_factory=FastTextSettings)
    model_path: str | None = None


def _quality_source() -> CorpusSpec:
    return CorpusSpec(path=f"{WORLD_SCHEME}web_corpus", world_seed=1000)


@dataclass
class QualityClassifierConfig:
    """The fastText quality classifier, trained from labelled examples.

    Args:
        source: The labelled documents (on the world: another draw's `web_corpus`, `world_seed`).
        labels_path: The labels joined to `source` by id (`world:` paths read from the world of
            `source.world_seed`); null: the labels are fields of the `source` records themselves
            (`label_field` beside the text).
        labels_format: `auto`, `jsonl`, `parquet` or `hf`.
        labels_id_field: The id field of the labels.
        label_field: The labels' field holding the quality.
        positive_values: Values of `label_field` that make a positive (high-quality) example.
        max_per_class: Keep at most this many examples of each class (seeded); null: all.
        balance: Downsample the larger class to the size of the smaller (seeded).
        seed: Seed of the caps and the balancing.
        valid_fraction: Share of each class held out for precision / recall / AUC.
        fasttext: fastText's training options and text preparation.
        model_path: Where the model goes; default `<output_dir>/quality_classifier.bin`.
    """

    source: CorpusSpec = field(default_factory=_quality_source)
    labels_path: str | None = f"{WORLD_SCHEME}web_labels"
    labels_format: Literal["auto", "jsonl", "parquet", "hf"] = "auto"
    labels_id_field: str = "id"
    label_field: str = "quality"
    positive_values: list[Any] = field(default_factory=lambda: ["high"])
    max_per_class: int | None = None
    balance: bool = False
    seed: int = 0
    valid_fraction: float = 0.1
    fasttext: FastTextSettings = field(default_factory=FastTextSettings)
    model_path: str | None = None


@dataclass
class QualityConfig:
    """The quality filter of `fasttext_quality`.

    Args:
        scorer: `fasttext` (the classifier below), `perplexity` (minus the mean token NLL under a
            causal LM) or `sequence_classification` (a classifier's probability of
            `label_index`); the last two read `model`.
        keep_fraction: Keep candidates among the top fraction of the whole corpus by quality
            score; null: no rank cut.
        threshold: Keep candidates whose quality score is at least this; null: no cut.
        classifier: The fastText quality classifier (`scorer: fasttext`).
        model: A local `save_pretrained` directory (`perplexity`, `sequence_classification`).
        tokenizer: The model's tokenizer; default: the model's directory.
        label_index: `sequence_classification`: the class whose probability is the score.
        max_length: Model scorers: a document is cut to this many tokens.
        batch_size: Model scorers: documents per forward pass.
        device: Model scorers: torch device.
        dtype: Model scorers: dtype of the weights.
    """

    scorer: Literal["fasttext", "perplexity", "sequence_classification"] = "fasttext"
    keep_fraction: float | None = None
    threshold: float | None = 0.5
    classifier: QualityClassifierConfig = field(default_factory=QualityClassifierConfig)
    model: str | None = None
    tokenizer: str | None = None
    label_index: int = 1
    max_length: int = 512
    batch_size: int = 16
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def _corpus() -> CorpusSpec:
    return CorpusSpec(path=f"{WORLD_SCHEME}web_corpus")


@dataclass
class SelectionConfig:
    """TRAIT's in-domain data selection (see datamodules/selection/pipeline.py).

    Args:
        method: `fasttext`, `fasttext_quality`, `dsir` or `random`.
        output_dir: Where every output goes (module docstring).
        corpus: The general corpus to select from.
        labels_path: Ground-truth labels of the corpus joined by id (`{"id", "in_domain",
            "quality"}`; `world:` paths read from the world of `corpus.world_seed`); null: no
            evaluation.
        evaluation: Which label fields mean in-domain and low quality.
        tokenizer: The tokenizer that counts tokens: a directory, or `world` (the world's own).
        budget_tokens: Tokens to select (`select.fill_budget`); null: every document above
            `threshold`.
        threshold: Only documents whose domain score is at least this are candidates (fastText
            methods); null: no cut.
        seed: Seed of `random`'s permutation and of DSIR's Gumbel noise.
        domain: The domain classifier (and DSIR's target documents).
        quality: The quality filter (`fasttext_quality`).
        dsir: DSIR's features and smoothing.
        num_shards: Scoring shards (`sharded.score_corpus`).
        processes: Scoring processes.
        batch_size: Texts per scorer call.
        world: The synthetic world of `world:<split>` paths.
        world_cache_dir: Where worlds are materialized (`<dir>/world-<fingerprint>/`).
    """

    method: Method = "fasttext"
    output_dir: str = "runs/selection/world"
    corpus: CorpusSpec = field(default_factory=_corpus)
    labels_path: str | None = f"{WORLD_SCHEME}web_labels"
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    tokenizer: str = "world"
    budget_tokens: int | None = None
    threshold: float | None = None
    seed: int = 0
    domain: DomainClassifierConfig = field(default_factory=DomainClassifierConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dsir: DSIRSettings = field(default_factory=DSIRSettings)
    num_shards: int = 1
    processes: int = 1
    batch_size: int = 256
    world: WorldConfig = field(default_factory=WorldConfig)
    world_cache_dir: str = ".cache/adaptlm/worlds"

    def validate(self) -> None:
        """Check every value without reading data; `ConfigError` naming the key."""
        if self.method not in METHODS:
            raise ConfigError("method", f"must be one of {list(METHODS)}, got {self.method!r}")
        if not str(self.output_dir).strip():
            raise ConfigError("output_dir", "must not be empty")
        self.corpus.validate("corpus")
        if self.budget_tokens is not None and (
            isinstance(self.budget_tokens, bool)
            or not isinstance(self.budget_tokens, int)
            or self.budget_tokens < 1
        ):
            raise ConfigError(
                "budget_tokens", f"must be an integer >= 1 or null, got {self.budget_tokens!r}"
            )
        if self.threshold is not None and not self.method.startswith("fasttext"):
            raise ConfigError("threshold", f"applies to the fastText methods, not {self.method!r}")
        if self.budget_tokens is None and self.threshold is None:
            raise ConfigError(
                "budget_tokens", "is required (or, for the fastText methods, a score threshold)"
            )
        for key in ("num_shards", "processes", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(key, f"must be an integer >= 1, got {value!r}")
        if self.method in ("fasttext", "fasttext_quality", "dsir"):
            _check_sources(self.domain.positives, "domain.positives")
        if self.method.startswith("fasttext"):
            _check_sources(self.domain.negatives, "domain.negatives")
            _check_training(self.domain, "domain")
        if self.method == "fasttext_quality":
            self.validate_quality()
        if self.method == "dsir":
            self.dsir.validate("dsir")

    def validate_quality(self) -> None:
        """Check the quality filter's settings."""
        q = self.quality
        if q.scorer not in QUALITY_SCORERS:
            raise ConfigError(
                "quality.scorer", f"must be one of {list(QUALITY_SCORERS)}, got {q.scorer!r}"
            )
        if q.keep_fraction is not None and not (
            isinstance(q.keep_fraction, int | float) and 0 < q.keep_fraction <= 1
        ):
            raise ConfigError(
                "quality.keep_fraction", f"must be in (0, 1] or null, got {q.keep_fraction!r}"
            )
        if q.scorer == "fasttext":
            q.classifier.source.validate("quality.classifier.source")
            _check_training(q.classifier, "quality.classifier")
            if not q.classifier.positive_values:
                raise ConfigError(
                    "quality.classifier.positive_values", "must name at least one value"
                )
        elif not q.model:
            raise ConfigError(
                "quality.model",
                f"is required for quality.scorer: {q.scorer} (a local model directory)",
            )
        elif not Path(q.model).expanduser().is_dir():
            raise ConfigError(
                "quality.model",
                f"no such model directory: {q.model!r} (a save_pretrained directory)",
            )


def _check_sources(specs: Sequence[CorpusSpec], key: str) -> None:
    if not specs:
        raise ConfigError(key, "must list at least one source")
    for i, spec in enumerate(specs):
        spec.validate(f"{key}[{i}]")


def _check_training(config: DomainClassifierConfig | QualityClassifierConfig, key: str) -> None:
    if not 0 <= config.valid_fraction < 1:
        raise ConfigError(
            f"{key}.valid_fraction", f"must be in [0, 1), got {config.valid_fraction!r}"
        )
    cap_key = "max_per_source" if isinstance(config, DomainClassifierConfig) else "max_per_class"
    cap = getattr(config, cap_key)
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"{key}.{cap_key}", f"must be an integer >= 1 or null, got {cap!r}")
    config.fasttext.validate(f"{key}.fasttext")


# ----------------------------------------------------------------------------------- context


class Context:
    """What the steps of one config share: the worlds, resolved sources, the tokenizer."""

    def __init__(self, config: SelectionConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.worlds = WorldSplits(config.world, config.world_cache_dir)
        self._tokenizer: Any = None

    def resolve(self, spec: CorpusSpec, key: str) -> CorpusSpec:
        """`spec` with `world:` paths resolved to files."""
        return resolve_corpus(spec, key=key, world_split=self.worlds)

    def resolve_labels(
        self, path: str, *, fmt: str, id_field: str, world_seed: int | None, key: str
    ) -> LabelsSpec:
        """A labels file, `world:` paths resolved (from the world of `world_seed`)."""
        if not str(path).strip():
            raise ConfigError(key, "must not be empty")
        if str(path).startswith(WORLD_SCHEME):
            resolved = self.worlds(str(path)[len(WORLD_SCHEME) :], world_seed)
            return LabelsSpec(path=str(resolved), format="jsonl", id_field=id_field)
        return LabelsSpec(path=str(path), format=fmt, id_field=id_field)

    def tokenizer_path(self) -> str:
        """The tokenizer directory (`world`: the world's trained tokenizer)."""
        if self.config.tokenizer == "world":
            return str(self.worlds.tokenizer_dir())
        return self.config.tokenizer

    def tokenizer(self) -> Any:
        """The loaded tokenizer (once)."""
        if self._tokenizer is None:
            from common import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_path(), key="tokenizer")
        return self._tokenizer


def _identity(spec: CorpusSpec) -> dict[str, Any]:
    """The content identity of a resolved source and the fields read from it."""
    source = SourceSpec(path=spec.path, format=spec.format, split=spec.split)  # type: ignore
    return {
        "content": source_fingerprint(source),
        "id_field": spec.id_field,
        "text_field": spec.text_field,
    }


def _labels_identity(spec: LabelsSpec) -> dict[str, Any]:
    source = SourceSpec(path=spec.path, format=spec.format, split=spec.split)  # type: ignore
    return {"content": source_fingerprint(source), "id_field": spec.id_field}


def _sample(n: int, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most `cap` of `range(n)`, a seeded sample in increasing order."""
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))


def _read_sources(
    ctx: Context, specs: Sequence[CorpusSpec], key: str, cap: int | None, seed: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """The texts of every source (each capped at `cap`, seeded) and a summary per source."""
    texts: list[str] = []
    summary = []
    for i, spec in enumerate(specs):
        resolved = ctx.resolve(spec, f"{key}[{i}]")
        stats = CorpusStats()
        docs = read_corpus(resolved, stats)
        keep = _sample(len(docs), cap, np.random.default_rng([seed, i]))
        texts += [docs[j].text for j in keep]
        summary.append(
            {
                "path": spec.path,
                "world_seed": spec.world_seed,
                "read": stats.read,
                "skipped": stats.skipped,
                "used": int(keep.size),
            }
        )
    return texts, summary


def _balance(
    positives: list[str], negatives: list[str], enabled: bool, seed: int
) -> tuple[list[str], list[str]]:
    """Downsample the larger class to the smaller's size (seeded, order kept) when `enabled`."""
    if not enabled or not positives or not negatives:
        return positives, negatives
    rng = np.random.default_rng([seed, 99])
    n = min(len(positives), len(negatives))
    pos = [positives[i] for i in _sample(len(positives), n, rng)]
    neg = [negatives[i] for i in _sample(len(negatives), n, rng)]
    return pos, neg


# ----------------------------------------------------------------------------------- training


def domain_training_fingerprint(ctx: Context) -> str:
    """What decides the domain classifier: its sources' content and its settings."""
    d = ctx.config.domain
    payload = {
        "version": VERSION,
        "kind": "domain",
        "positives": [
            _identity(ctx.resolve(s, f"domain.positives[{i}]")) for i, s in enumerate(d.positives)
        ],
        "negatives": [
            _identity(ctx.resolve(s, f"domain.negatives[{i}]")) for i, s in enumerate(d.negatives)
        ],
        "settings": {
            k: v for k, v in asdict(d).items() if k not in ("positives", "negatives", "model_path")
        },
    }
    return fingerprint_of(payload)


def domain_model_path(config: SelectionConfig) -> Path:
    """The domain classifier's `.bin`."""
    return Path(config.domain.model_path or Path(config.output_dir) / DOMAIN_MODEL)


def quality_model_path(config: SelectionConfig) -> Path:
    """The quality classifier's `.bin`."""
    return Path(config.quality.classifier.model_path or Path(config.output_dir) / QUALITY_MODEL)


def train_domain_classifier(ctx: Context, *, force: bool = False) -> TrainedClassifier:
    """Train (or reuse) the fastText domain classifier.

    Raises:
        DataError: no positive or no negative document.
    """
    d = ctx.config.domain
    _check_sources(d.positives, "domain.positives")
    _check_sources(d.negatives, "domain.negatives")
    _check_training(d, "domain")
    path = domain_model_path(ctx.config)
    fingerprint = domain_training_fingerprint(ctx)
    reused = None if force else _reused_classifier("domain", path, fingerprint)
    if reused is not None:
        return reused
    positives, pos_summary = _read_sources(
        ctx, d.positives, "domain.positives", d.max_per_source, d.seed
    )
    negatives, neg_summary = _read_sources(
        ctx, d.negatives, "domain.negatives", d.max_per_source, d.seed + 1
    )
    read_counts = {"positives_read": len(positives), "negatives_read": len(negatives)}
    positives, negatives = _balance(positives, negatives, d.balance, d.seed)
    return train_fasttext(
        positives,
        negatives,
        path,
        d.fasttext,
        valid_fraction=d.valid_fraction,
        fingerprint=fingerprint,
        extra={
            "kind": "domain",
            "sources": {"positives": pos_summary, "negatives": neg_summary},
            **read_counts,
        },
        where="domain classifier data (domain.positives / domain.negatives)",
        key="domain.fasttext",
    )


def _quality_labels_spec(ctx: Context) -> LabelsSpec | None:
    c = ctx.config.quality.classifier
    if c.labels_path is None:
        return None
    return ctx.resolve_labels(
        c.labels_path,
        fmt=c.labels_format,
        id_field=c.labels_id_field,
        world_seed=c.source.world_seed,
        key="quality.classifier.labels_path",
    )


def quality_training_fingerprint(ctx: Context) -> str:
    """What decides the quality classifier: the labelled source, its labels, the settings."""
    c = ctx.config.quality.classifier
    labels = _quality_labels_spec(ctx)
    payload = {
        "version": VERSION,
        "kind": "quality",
        "source": _identity(ctx.resolve(c.source, "quality.classifier.source")),
        "labels": None if labels is None else _labels_identity(labels),
        "settings": {
            k: v for k, v in asdict(c).items() if k not in ("source", "labels_path", "model_path")
        },
    }
    return fingerprint_of(payload)


def _labelled_records(ctx: Context) -> tuple[list[Document], list[Any], int]:
    """The labelled documents, their labels, and how many had no label (skipped)."""
    c = ctx.config.quality.classifier
    spec = ctx.resolve(c.source, "quality.classifier.source")
    labels_spec = _quality_labels_spec(ctx)
    if labels_spec is None:  # the label is a field of the records themselves
        from datamodules.selection.metrics import read_labels as read_fields

        if spec.id_field is None:
            raise ConfigError(
                "quality.classifier.source.id_field",
                "is needed to read labels from the records (labels_path is null)",
            )
        labels = read_fields(
            LabelsSpec(
                path=spec.path, format=spec.format, id_field=spec.id_field, split=spec.split
            ),
            (c.label_field,),
            key="quality.classifier.source",
        )
    else:
        labels = read_labels(labels_spec, (c.label_field,), key="quality.classifier.labels_path")
    docs = read_corpus(spec)
    kept, values, missing = [], [], 0
    for doc in docs:
        record = labels.get(doc.id)
        if record is None or c.label_field not in record:
            missing += 1
            continue
        kept.append(doc)
        values.append(record[c.label_field])
    if missing:
        log.warning(
            "quality classifier: %d of %d labelled-source documents have no %r label; skipped",
            missing,
            len(docs),
            c.label_field,
        )
    return kept, values, missing


def train_quality_classifier(ctx: Context, *, force: bool = False) -> TrainedClassifier:
    """Train (or reuse) the fastText quality classifier from labelled examples.

    Raises:
        DataError: no positive or no negative example.
    """
    c = ctx.config.quality.classifier
    c.source.validate("quality.classifier.source")
    _check_training(c, "quality.classifier")
    path = quality_model_path(ctx.config)
    fingerprint = quality_training_fingerprint(ctx)
    reused = None if force else _reused_classifier("quality", path, fingerprint)
    if reused is not None:
        return reused
    corpus = ctx.config.corpus
    if (
        ctx.resolve(c.source, "quality.classifier.source").path
        == ctx.resolve(corpus, "corpus").path
    ):
        log.warning(
            "quality classifier: its labelled examples (%s, world_seed %s) are the corpus it "
            "filters; set quality.classifier.source.world_seed to another draw of the world",
            c.source.path,
            c.source.world_seed,
        )
    docs, values, missing = _labelled_records(ctx)
    wanted = list(c.positive_values)
    positives = [d.text for d, v in zip(docs, values) if v in wanted]
    negatives = [d.text for d, v in zip(docs, values) if v not in wanted]
    read_counts = {
        "positives_read": len(positives),
        "negatives_read": len(negatives),
        "unlabelled": missing,
    }
    rng = np.random.default_rng([c.seed, 7])
    positives = [positives[i] for i in _sample(len(positives), c.max_per_class, rng)]
    negatives = [negatives[i] for i in _sample(len(negatives), c.max_per_class, rng)]
    positives, negatives = _balance(positives, negatives, c.balance, c.seed)
    return train_fasttext(
        positives,
        negatives,
        path,
        c.fasttext,
        valid_fraction=c.valid_fraction,
        fingerprint=fingerprint,
        extra={
            "kind": "quality",
            "source": {"path": c.source.path, "world_seed": c.source.world_seed},
            "labels_path": c.labels_path,
            "label_field": c.label_field,
            "positive_values": wanted,
            **read_counts,
        },
        where=(
            f"quality classifier data ({c.source.path}, {c.label_field!r} in {wanted} as "
            "positives, the rest as negatives)"
        ),
        key="quality.classifier.fasttext",
    )


def quality_scorer_spec(ctx: Context) -> ScorerSpec:
    """The `ScorerSpec` of the quality filter's model-based scorer."""
    q = ctx.config.quality
    if not q.model:
        raise ConfigError("quality.model", f"is required for quality.scorer: {q.scorer}")
    return ScorerSpec(
        kind=q.scorer,  # type: ignore[arg-type]
        path=q.model,
        batch_size=q.batch_size,
        max_length=q.max_length,
        device=q.device,
        dtype=q.dtype,
        label_index=q.label_index,
        tokenizer=q.tokenizer,
        name=f"quality_{q.scorer}",
    )


def fit_dsir_model(
    ctx: Context, corpus: CorpusSpec, documents: Sequence[Document], *, force: bool = False
) -> Path:
    """Fit (or reuse) DSIR on `domain.positives` (target) and the corpus (raw); its `.npz`."""
    from datamodules.selection.dsir import fit_dsir

    config = ctx.config
    path = ctx.output_dir / DSIR_MODEL
    payload = {
        "version": VERSION,
        "target": [
            _identity(ctx.resolve(s, f"domain.positives[{i}]"))
            for i, s in enumerate(config.domain.positives)
        ],
        "raw": _identity(corpus),
        "settings": asdict(config.dsir),
    }
    fingerprint = fingerprint_of(payload)
    meta_path = sidecar_path(path)
    if not force and path.is_file():
        try:
            import json

            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("fingerprint") == fingerprint and meta.get("sha256") == files_identity(
                [path]
            )[0].get("sha256"):
                log.info("DSIR model %s is up to date; reusing it", path)
                return path
        except (OSError, ValueError):
            pass
    started = time.perf_counter()
    targets, summary = _read_sources(ctx, config.domain.positives, "domain.positives", None, 0)
    model = fit_dsir(targets, (d.text for d in documents), config.dsir)
    model.save(path)
    write_json(
        meta_path,
        {
            "fingerprint": fingerprint,
            "settings": asdict(config.dsir),
            "target_sources": summary,
            "target_documents": len(targets),
            "raw_documents": len(documents),
            "target_features": int(model.target_counts.sum()),
            "raw_features": int(model.raw_counts.sum()),
            "sha256": files_identity([path])[0].get("sha256"),
            "fit_wall_s": round(time.perf_counter() - started, 3),
        },
    )
    log.info(
        "DSIR fitted on %d target and %d corpus documents -> %s", len(targets), len(documents), path
    )
    return path


# ----------------------------------------------------------------------------------- scoring


def score_documents(
    ctx: Context, corpus: CorpusSpec, scorer: ScorerSpec, output_dir: Path, *, force: bool = False
) -> Path:
    """Score the (resolved) corpus with `scorer` into `output_dir/scores.jsonl` through
    `sharded.score_corpus` (sharded, resumable); `force` drops the shards already done."""
    import importlib.util

    if importlib.util.find_spec("datamodules.selection.sharded") is None:
        log.warning("datamodules.selection.sharded is missing; scoring in this process, unsharded")
        return _score_in_process(corpus, scorer, output_dir, ctx.config.batch_size)
    from datamodules.selection.sharded import score_corpus

    if force:
        shutil.rmtree(output_dir / "shards", ignore_errors=True)
        (output_dir / "scores_manifest.json").unlink(missing_ok=True)
    config = ctx.config
    return Path(
        score_corpus(
            corpus,
            scorer,
            output_dir,
            num_shards=config.num_shards,
            processes=config.processes,
            batch_size=config.batch_size,
        )
    )


def _score_in_process(
    corpus: CorpusSpec, scorer: ScorerSpec, output_dir: Path, batch_size: int = 256
) -> Path:
    """Score the corpus in this process into `output_dir/scores.jsonl` (no shards): the fallback
    when `sharded` is not importable."""
    from datamodules.selection.corpus import iter_corpus
    from datamodules.selection.select import write_scores

    built = build_scorer(scorer)
    docs = list(iter_corpus(corpus, CorpusStats()))
    scores = np.concatenate(
        [
            built.score([d.text for d in docs[i : i + batch_size]])
            for i in range(0, len(docs), batch_size)
        ]
    )
    return write_scores(output_dir / SCORES, [d.id for d in docs], scores)


# ----------------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    """What a run wrote (or found already written)."""

    output_dir: Path
    manifest: dict[str, Any]
    reused: bool = False

    def summary(self) -> dict[str, Any]:
        """The short JSON summary the command prints."""
        m = self.manifest
        return {
            "method": m.get("method"),
            "output_dir": str(self.output_dir),
            "reused": self.reused,
            "selected": m.get("counts", {}).get("selected"),
            "tokens_selected": m.get("tokens_selected"),
            "budget_tokens": m.get("budget_tokens"),
            "classifiers": {k: v.get("heldout") for k, v in m.get("classifiers", {}).items()},
            "metrics": m.get("metrics"),
            "wall_s": m.get("wall_s"),
        }


def _labels_for_evaluation(ctx: Context) -> LabelsSpec | None:
    config = ctx.config
    if config.labels_path is None:
        return None
    return ctx.resolve_labels(
        config.labels_path,
        fmt="auto",
        id_field=config.corpus.id_field or "id",
        world_seed=config.corpus.world_seed,
        key="labels_path",
    )


def run_fingerprint(ctx: Context, corpus: CorpusSpec) -> str:
    """The run's fingerprint (module docstring)."""
    config = ctx.config
    method = config.method
    payload: dict[str, Any] = {
        "version": VERSION,
        "method": method,
        "corpus": _identity(corpus),
        "tokenizer": _tokenizer_identity(ctx),
        "budget_tokens": config.budget_tokens,
        "threshold": config.threshold,
    }
    if method in ("random", "dsir"):
        payload["seed"] = config.seed
    if method.startswith("fasttext"):
        payload["domain"] = domain_training_fingerprint(ctx)
    if method == "fasttext_quality":
        q = config.quality
        payload["quality"] = {
            "scorer": q.scorer,
            "keep_fraction": q.keep_fraction,
            "threshold": q.threshold,
        }
        if q.scorer == "fasttext":
            payload["quality"]["classifier"] = quality_training_fingerprint(ctx)
        else:
            spec = quality_scorer_spec(ctx)
            payload["quality"]["model"] = files_identity(model_files(Path(spec.path)))
            payload["quality"]["settings"] = spec.score_settings()
    if method == "dsir":
        payload["dsir"] = {
            "settings": asdict(config.dsir),
            "target": [
                _identity(ctx.resolve(s, f"domain.positives[{i}]"))
                for i, s in enumerate(config.domain.positives)
            ],
        }
    labels = _labels_for_evaluation(ctx)
    payload["labels"] = None if labels is None else _labels_identity(labels)
    payload["evaluation"] = asdict(config.evaluation)
    return fingerprint_of(payload)


def _tokenizer_identity(ctx: Context) -> str:
    from datamodules.store import tokenizer_fingerprint

    return tokenizer_fingerprint(ctx.tokenizer())


def _output_files(config: SelectionConfig) -> list[str]:
    files = [SELECTED]
    if config.method != "random":
        files.append(SCORES)
    if config.labels_path is not None:
        files.append(METRICS)
    return files


def run_selection(config: SelectionConfig, *, force: bool = False) -> RunResult:
    """Run one method end to end into `config.output_dir` (module docstring).

    Raises:
        ConfigError: a bad setting, a budget above the corpus's tokens, a missing model file.
        DataError: a missing corpus file, a corpus without a readable document, no positive or no
            negative training example.
    """
    config.validate()
    started = time.perf_counter()
    ctx = Context(config)
    corpus = ctx.resolve(config.corpus, "corpus")
    fingerprint = run_fingerprint(ctx, corpus)
    manifest = (
        None if force else reusable_selection(ctx.output_dir, fingerprint, _output_files(config))
    )
    if manifest is not None:
        log.info(
            "selection: %s already holds the outputs of fingerprint %s; skipping "
            "(--force recomputes)",
            ctx.output_dir,
            fingerprint,
        )
        return RunResult(ctx.output_dir, manifest, reused=True)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    stats = CorpusStats()
    documents = read_corpus(corpus, stats)
    token_counts = count_tokens([d.text for d in documents], ctx.tokenizer())
    total_tokens = int(token_counts.sum())
    if config.budget_tokens is not None:
        check_budget(config.budget_tokens, total_tokens)
    ids = [d.id for d in documents]
    classifiers: dict[str, Any] = {}
    scores = quality = None
    eligible = None
    if config.method == "random":
        order = random_order(len(documents), config.seed)
    elif config.method == "dsir":
        from datamodules.selection.dsir import gumbel_order

        model = fit_dsir_model(ctx, corpus, documents, force=force)
        spec = ScorerSpec(kind="dsir", path=str(model), name="dsir")
        _, scores = read_scores(
            score_documents(ctx, corpus, spec, ctx.output_dir, force=force), ids
        )
        order = gumbel_order(scores, config.seed)
    else:
        domain = train_domain_classifier(ctx, force=force)
        classifiers["domain"] = _classifier_entry(domain)
        spec = ScorerSpec(kind="fasttext", path=str(domain.model_path), name="fasttext_domain")
        _, scores = read_scores(
            score_documents(ctx, corpus, spec, ctx.output_dir, force=force), ids
        )
        order = order_by_score(scores)
        if config.threshold is not None:
            eligible = scores >= config.threshold
        if config.method == "fasttext_quality":
            quality = _quality_scores(ctx, corpus, ids, classifiers, force=force)
            keep = quality_mask(
                quality,
                keep_fraction=config.quality.keep_fraction,
                threshold=config.quality.threshold,
            )
            eligible = keep if eligible is None else eligible & keep
    chosen = select(order, token_counts, budget_tokens=config.budget_tokens, eligible=eligible)
    selected_path = write_selected(ctx.output_dir / SELECTED, documents, chosen.indices)
    files = {SELECTED: digest(selected_path)}
    if scores is not None:
        files[SCORES] = digest(ctx.output_dir / SCORES)
    metrics = None
    labels = _labels_for_evaluation(ctx)
    if labels is not None:
        metrics = _evaluate(
            ctx, labels, [ids[i] for i in chosen.indices], dict(zip(ids, token_counts.tolist()))
        )
        metrics["labels_path"] = config.labels_path
        write_json(ctx.output_dir / METRICS, metrics)
        files[METRICS] = digest(ctx.output_dir / METRICS)
    manifest = _manifest(
        config, fingerprint, stats, documents, total_tokens, chosen, classifiers, metrics, files
    )
    manifest["scores_stats"] = finite_summary(scores)
    manifest["quality_scores_stats"] = finite_summary(quality)
    manifest["wall_s"] = round(time.perf_counter() - started, 3)
    write_json(ctx.output_dir / MANIFEST, manifest)
    log.info(
        "selection %s: %d of %d documents, %d of %s budget tokens -> %s (%.1f s)%s",
        config.method,
        chosen.indices.size,
        len(documents),
        chosen.tokens,
        config.budget_tokens,
        selected_path,
        manifest["wall_s"],
        _metrics_text(metrics),
    )
    return RunResult(ctx.output_dir, manifest)


def _metrics_text(metrics: dict[str, Any] | None) -> str:
    if metrics is None:
        return ""
    return (
        f"; precision {metrics['precision']:.3f} recall {metrics['recall']:.3f} "
        f"low-quality share {metrics['low_quality_share']:.3f}"
    )


def _quality_scores(
    ctx: Context,
    corpus: CorpusSpec,
    ids: Sequence[str],
    classifiers: dict[str, Any],
    *,
    force: bool,
) -> np.ndarray:
    """The quality score of every corpus document (training the classifier first if needed)."""
    q = ctx.config.quality
    if q.scorer == "fasttext":
        trained = train_quality_classifier(ctx, force=force)
        classifiers["quality"] = _classifier_entry(trained)
        spec = ScorerSpec(kind="fasttext", path=str(trained.model_path), name="fasttext_quality")
    else:
        spec = quality_scorer_spec(ctx)
        try:  # a missing or bad model: one error naming quality.model
            build_scorer(spec, key="quality")
        except ConfigError as error:
            if error.key != "quality.path":
                raise
            message = str(error).removeprefix(f"config key '{error.key}': ")
            raise ConfigError("quality.model", message) from None
    path = score_documents(ctx, corpus, spec, ctx.output_dir / QUALITY_DIR, force=force)
    return read_scores(path, ids)[1]


def _classifier_entry(trained: TrainedClassifier) -> dict[str, Any]:
    info = trained.info
    return {
        "model_path": str(trained.model_path),
        "reused": trained.reused,
        "heldout": info.get("heldout"),
        "counts": info.get("counts"),
        "model_sha256": info.get("model_sha256"),
    }


def _evaluate(
    ctx: Context, labels_spec: LabelsSpec, selected_ids: list[str], tokens: dict[str, int] | None
) -> dict[str, Any]:
    ev = ctx.config.evaluation
    labels = read_labels(labels_spec, (ev.in_domain_field, ev.quality_field), key="labels_path")
    return evaluate_selection(selected_ids, labels, ev, token_counts=tokens)


def _reused_classifier(kind: str, path: Path, fingerprint: str) -> TrainedClassifier | None:
    """The `kind` classifier at `path` when it was trained with `fingerprint` (logged), else None."""
    info = reusable_model(path, fingerprint)
    if info is None:
        return None
    log.info("%s classifier %s is up to date (fingerprint %s); reusing it", kind, path, fingerprint)
    return TrainedClassifier(path, info, reused=True)


def _manifest(
    config: SelectionConfig,
    fingerprint: str,
    stats: CorpusStats,
    documents: Sequence[Document],
    total_tokens: int,
    chosen: Selection,
    classifiers: dict[str, Any],
    metrics: dict[str, Any] | None,
    files: dict[str, str],
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "fingerprint": fingerprint,
        "method": config.method,
        "settings": _plain_settings(config),
        "counts": {
            "read": stats.read,
            "skipped": stats.skipped,
            "candidates": chosen.candidates,
            "selected": int(chosen.indices.size),
        },
        "problems": list(stats.problems),
        "corpus_tokens": total_tokens,
        "candidate_tokens": chosen.candidate_tokens,
        "budget_tokens": config.budget_tokens,
        "tokens_selected": chosen.tokens,
        "budget_filled": None
        if config.budget_tokens is None
        else chosen.tokens == config.budget_tokens,
        "classifiers": classifiers,
        "metrics": metrics,
        "files": files,
    }


def _plain_settings(config: SelectionConfig) -> dict[str, Any]:
    settings = asdict(config)
    settings["world"] = config.world.to_dict()
    return settings


# ----------------------------------------------------------------------------------- steps


def select_from_scores(
    config: SelectionConfig,
    *,
    scores_path: str | None,
    quality_scores_path: str | None = None,
    force: bool = False,
) -> RunResult:
    """The `select` step alone: read the corpus and its scores files, apply `config.method`'s
    order (scores descending; DSIR's Gumbel top-k of log weights; random), the threshold and the
    quality filter, fill the budget, and write `selected.jsonl` and `manifest.json`."""
    config.validate()
    started = time.perf_counter()
    ctx = Context(config)
    corpus = ctx.resolve(config.corpus, "corpus")
    if config.method != "random" and not scores_path:
        raise ConfigError("scores", f"is required for method {config.method!r} (a scores.jsonl)")
    if config.method == "fasttext_quality" and not quality_scores_path:
        raise ConfigError(
            "quality_scores", "is required for method fasttext_quality (a scores.jsonl)"
        )
    for key, value in (("scores", scores_path), ("quality_scores", quality_scores_path)):
        if value and not Path(value).is_file():
            raise ConfigError(key, f"no such scores file: {value!r}")
    payload = {
        "version": VERSION,
        "step": "select",
        "method": config.method,
        "corpus": _identity(corpus),
        "tokenizer": _tokenizer_identity(ctx),
        "scores": digest(scores_path) if scores_path and config.method != "random" else None,
        "quality_scores": digest(quality_scores_path)
        if quality_scores_path and config.method == "fasttext_quality"
        else None,
        "budget_tokens": config.budget_tokens,
        "threshold": config.threshold,
        "seed": config.seed if config.method in ("random", "dsir") else None,
        "quality": [config.quality.keep_fraction, config.quality.threshold]
        if config.method == "fasttext_quality"
        else None,
    }
    fingerprint = fingerprint_of(payload)
    manifest = None if force else reusable_selection(ctx.output_dir, fingerprint, [SELECTED])
    if manifest is not None:
        log.info(
            "selection: %s is up to date (fingerprint %s); skipping", ctx.output_dir, fingerprint
        )
        return RunResult(ctx.output_dir, manifest, reused=True)
    stats = CorpusStats()
    documents = read_corpus(corpus, stats)
    ids = [d.id for d in documents]
    token_counts = count_tokens([d.text for d in documents], ctx.tokenizer())
    total_tokens = int(token_counts.sum())
    if config.budget_tokens is not None:
        check_budget(config.budget_tokens, total_tokens)
    eligible = None
    scores = None
    if config.method == "random":
        order = random_order(len(documents), config.seed)
    else:
        _, scores = read_scores(str(scores_path), ids)
        if config.method == "dsir":
            from datamodules.selection.dsir import gumbel_order

            order = gumbel_order(scores, config.seed)
        else:
            order = order_by_score(scores)
            if config.threshold is not None:
                eligible = scores >= config.threshold
    if config.method == "fasttext_quality":
        _, quality = read_scores(str(quality_scores_path), ids)
        keep = quality_mask(
            quality, keep_fraction=config.quality.keep_fraction, threshold=config.quality.threshold
        )
        eligible = keep if eligible is None else eligible & keep
    chosen = select(order, token_counts, budget_tokens=config.budget_tokens, eligible=eligible)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    path = write_selected(ctx.output_dir / SELECTED, documents, chosen.indices)
    manifest = _manifest(
        config,
        fingerprint,
        stats,
        documents,
        total_tokens,
        chosen,
        {},
        None,
        {SELECTED: digest(path)},
    )
    manifest["inputs"] = {"scores": scores_path, "quality_scores": quality_scores_path}
    manifest["scores_stats"] = finite_summary(scores)
    manifest["wall_s"] = round(time.perf_counter() - started, 3)
    write_json(ctx.output_dir / MANIFEST, manifest)
    log.info(
        "selection %s: %d documents, %d tokens -> %s",
        config.method,
        chosen.indices.size,
        chosen.tokens,
        path,
    )
    return RunResult(ctx.output_dir, manifest)


def evaluate_selected(
    config: SelectionConfig, selected: str, output: str | None = None
) -> dict[str, Any]:
    """The `evaluate` step: metrics of a `selected.jsonl` (or a file of `{"id"}` lines) against
    `labels_path`, written to `output` (default: `metrics.json` beside `selected`)."""
    from common.jsonl import read_jsonl

    if config.labels_path is None:
        raise ConfigError("labels_path", "is required to evaluate a selection")
    if not Path(selected).is_file():
        raise ConfigError("selected", f"no such file: {selected!r}")
    ctx = Context(config)
    labels = _labels_for_evaluation(ctx)
    assert labels is not None
    ids: list[str] = []
    texts: list[str] = []
    for line, record in read_jsonl(selected):
        if "id" not in record:
            raise DataError(selected, "a selected record needs an 'id'", line)
        ids.append(str(record["id"]))
        if isinstance(record.get("text"), str):
            texts.append(record["text"])
    tokens = None
    if len(texts) == len(ids):
        counts = count_tokens(texts, ctx.tokenizer())
        tokens = dict(zip(ids, counts.tolist()))
    metrics = _evaluate(ctx, labels, ids, tokens)
    metrics["labels_path"] = config.labels_path
    metrics["selected_path"] = str(selected)
    target = Path(output) if output else Path(selected).with_name(METRICS)
    write_json(target, metrics)
    log.info(
        "evaluation of %s: precision %.3f recall %.3f low-quality share %.3f -> %s",
        selected,
        metrics["precision"],
        metrics["recall"],
        metrics["low_quality_share"],
        target,
    )
    return metrics


def train_classifier(
    config: SelectionConfig, kind: str, *, force: bool = False
) -> TrainedClassifier:
    """The `train` step: the domain (`kind: domain`) or quality (`kind: quality`) classifier."""
    ctx = Context(config)
    if kind == "domain":
        return train_domain_classifier(ctx, force=force)
    if kind == "quality":
        return train_quality_classifier(ctx, force=force)
    raise ConfigError("kind", f"must be 'domain' or 'quality', got {kind!r}")


def replace_config(config: SelectionConfig, **changes: Any) -> SelectionConfig:
    """A copy of `config` with top-level fields changed."""
    return dataclasses.replace(config, **changes)


__all__ = [
    "METHODS",
    "Context",
    "DomainClassifierConfig",
    "QualityClassifierConfig",
    "QualityConfig",
    "RunResult",
    "SelectionConfig",
    "evaluate_selected",
    "run_selection",
    "select_from_scores",
    "train_classifier",
]
