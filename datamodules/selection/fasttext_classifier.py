"""fastText classifiers for TRAIT's selection: the domain classifier (in-domain documents against
general ones) and the quality classifier (labelled high against low quality).

Text preparation (`prepare_text`, the same at training and scoring time): fastText reads one line
per example and splits words on whitespace, so every run of whitespace (newlines, tabs, form
feeds, NUL) becomes one space; the text is lowercased (`lowercase`), `__label__` (fastText's label
prefix) loses an underscore on each side, and the text is cut to its first `max_words` words and
`max_chars` characters (fastText reads very long lines slowly, and a
document's first few thousand words decide its domain as well as all of them).

Features (`feature_line`): the prepared words, plus one token per word n-gram of length 2 to
`word_ngrams` (`__ng<b>`, `b` = crc32 of the n-gram modulo `bucket`): fastText's hashed word
n-grams, made explicit. fastText is then trained with `wordNgrams: 1` and every input row
initialized from a seeded `.vec` file (`pretrainedVectors`: uniform in +-1/dim, as fastText's own
initialization). Why: the fastText build here initializes only `threads`/10 of its input matrix
(`DenseMatrix::uniform` fills blocks of a tenth, one per thread), so with `threads < 10` the
other rows hold whatever memory held: the training is not deterministic and often stops with
"Encountered NaN". With every row a word of the `.vec`, nothing is left uninitialized, and one
thread (`threads: 1`, the default) gives the same model for the same seed and data.

Training (`train_fasttext`): each class is split into train and held-out parts by a seeded
permutation (`valid_fraction` of each class, at least one example when the class has two or more;
0: no held-out part), the training lines are shuffled (seeded) into a temporary file and
`fasttext.train_supervised(input, dim, epoch, lr, minCount, seed, thread, loss,
pretrainedVectors)` trains on it. The held-out metrics are precision, recall and F1 of the
positive class at probability 0.5 and the ROC AUC (`metrics.roc_auc`, ties counted one half). The
model is written as `<name>.bin` (atomically) with a `<name>.json` beside it: the metrics, the
settings (text preparation and features included), the data counts, the model file's sha256 and
the training fingerprint (the training data's content and every setting), so a rerun with the
same fingerprint reuses the model (`reusable_model`).

Scoring (`FastTextScorer`, `ScorerSpec(kind="fasttext")`): the probability of `label` (default
`__label__positive`) of each text turned into its feature line with the settings of the `.json`
beside the model (for a model trained elsewhere, without one: the default text preparation and
no added n-grams; such a model applies its own `wordNgrams`).
"""

from __future__ import annotations

import io
import json
import logging
import re
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.atomic import atomic_file
from common.errors import ConfigError, DataError
from datamodules.selection.metrics import binary_metrics
from datamodules.selection.scorers import DocumentScorer, ScorerSpec, file_sha256

log = logging.getLogger(__name__)

VERSION = 1
POSITIVE = "__label__positive"
NEGATIVE = "__label__negative"
_WHITESPACE = re.compile(r"[\s\x00]+")


@dataclass
class TextSettings:
    """How a text becomes one fastText line.

    Args:
        lowercase: Lowercase the text.
        max_words: Keep the first `max_words` words (null: all).
        max_chars: Then keep the first `max_chars` characters (null: all).
    """

    lowercase: bool = True
    max_words: int | None = 2000
    max_chars: int | None = 20000

    def validate(self, key: str) -> None:
        """`ConfigError` naming `<key>.<field>` for a bad value."""
        for attr in ("max_words", "max_chars"):
            value = getattr(self, attr)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(
                    f"{key}.{attr}", f"must be an integer >= 1 or null, got {value!r}"
                )


@dataclass
class FastTextSettings:
    """fastText's training options (`fasttext.train_supervised`) and the text preparation.

    Args:
        word_ngrams: Max length of the hashed word n-grams (1: words only).
        dim: Size of the word vectors.
        epoch: Training epochs.
        lr: Learning rate.
        min_count: Minimal number of occurrences of a word (`minCount`).
        bucket: Hash buckets of the word n-grams (fastText's default is 2,000,000; only the
            buckets that occur become rows of the model); 0: no n-grams.
        loss: `softmax`, `hs`, `ova` or `ns`.
        seed: Seed of fastText's initialization and sampling, and of the held-out split.
        threads: Training threads (1: deterministic).
        text: The text preparation (the scorer applies the same, read from the model's `.json`).
    """

    word_ngrams: int = 2
    dim: int = 32
    epoch: int = 20
    lr: float = 0.5
    min_count: int = 1
    bucket: int = 200000
    loss: Literal["softmax", "hs", "ova", "ns"] = "softmax"
    seed: int = 0
    threads: int = 1
    text: TextSettings = field(default_factory=TextSettings)

    def validate(self, key: str) -> None:
        """`ConfigError` naming `<key>.<field>` for a bad value."""
        for attr, low in (
            ("word_ngrams", 1),
            ("dim", 1),
            ("epoch", 1),
            ("min_count", 1),
            ("bucket", 0),
            ("threads", 1),
            ("seed", 0),
        ):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key}.{attr}", f"must be an integer >= {low}, got {value!r}")
        if not isinstance(self.lr, int | float) or not self.lr > 0:
            raise ConfigError(f"{key}.lr", f"must be > 0, got {self.lr!r}")
        if self.loss not in ("softmax", "hs", "ova", "ns"):
            raise ConfigError(f"{key}.loss", f"must be softmax, hs, ova or ns, got {self.loss!r}")
        self.text.validate(f"{key}.text")


def prepare_text(text: str, settings: TextSettings | None = None) -> str:
    """`text` as one fastText line: whitespace runs (newlines included) -> one space, no
    `__label__`, optionally lowercased, cut to `max_words` words and `max_chars` characters."""
    settings = settings or TextSettings()
    words = _WHITESPACE.split(text.strip())
    if settings.max_words is not None and len(words) > settings.max_words:
        words = words[: settings.max_words]
    line = " ".join(w for w in words if w)
    if settings.lowercase:
        line = line.lower()
    line = line.replace("__label__", "_label_")  # never a label
    if settings.max_chars is not None and len(line) > settings.max_chars:
        line = line[: settings.max_chars].rstrip()
    return line


def feature_line(line: str, word_ngrams: int = 1, bucket: int = 0) -> str:
    """A prepared line plus its hashed word n-gram tokens (`__ng<b>`, module docstring)."""
    if word_ngrams < 2 or bucket < 1 or not line:
        return line
    words = line.split(" ")
    extra = []
    for n in range(2, word_ngrams + 1):
        for start in range(len(words) - n + 1):
            gram = " ".join(words[start : start + n]).encode("utf-8")
            extra.append(f"__ng{zlib.crc32(gram) % bucket}")
    return " ".join([line, *extra]) if extra else line


def _write_init_vectors(path: Path, lines: Sequence[str], settings: FastTextSettings) -> int:
    """The `.vec` of every word of `lines` (labels excluded) seen at least `min_count` times,
    and the end-of-line token, uniform in +-1/dim from `seed`; returns the number of words."""
    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(w for w in line.split(" ")[1:] if w)
    words = sorted(w for w, c in counts.items() if c >= settings.min_count)
    words.append("</s>")
    rng = np.random.default_rng([settings.seed, 1])
    bound = 1.0 / settings.dim
    values = rng.uniform(-bound, bound, size=(len(words), settings.dim)).astype(np.float32)
    body = io.StringIO()
    np.savetxt(body, values, fmt="%.7g")
    rows = body.getvalue().splitlines()
    with path.open("w", encoding="utf-8") as out:
        out.write(f"{len(words)} {settings.dim}\n")
        out.writelines(f"{w} {row}\n" for w, row in zip(words, rows))
    return len(words)


def sidecar_path(model_path: str | Path) -> Path:
    """The `.json` beside a model file (`model.bin` -> `model.json`)."""
    return Path(model_path).with_suffix(".json")


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`(train, valid)` indices of one class: `round(fraction * n)` held out, at least 1 when
    `fraction > 0` and `n >= 2`, never all."""
    order = rng.permutation(n)
    if fraction <= 0 or n < 2:
        return order, order[:0]
    k = min(max(1, round(fraction * n)), n - 1)
    return order[k:], order[:k]


@dataclass
class TrainedClassifier:
    """A trained (or reused) classifier: its model file and the `.json` beside it."""

    model_path: Path
    info: dict[str, Any]
    reused: bool = False

    @property
    def heldout(self) -> dict[str, Any] | None:
        """The held-out metrics (None without a held-out part)."""
        return self.info.get("heldout")


def reusable_model(model_path: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The `.json` of `model_path` when it was trained with `fingerprint` and the model file is
    the one it describes (sha256), else None."""
    model_path = Path(model_path)
    try:
        info = json.loads(sidecar_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("fingerprint") != fingerprint or info.get("version") != VERSION:
        return None
    if not model_path.is_file() or info.get("model_sha256") != file_sha256(model_path):
        return None
    return info


def _check_classes(positives: Sequence[str], negatives: Sequence[str], where: str) -> None:
    if not positives:
        raise DataError(where, "no positive examples: the classifier needs both classes")
    if not negatives:
        raise DataError(where, "no negative examples: the classifier needs both classes")


def train_fasttext(
    positives: Sequence[str],
    negatives: Sequence[str],
    model_path: str | Path,
    settings: FastTextSettings | None = None,
    *,
    valid_fraction: float = 0.1,
    fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
    where: str = "training data",
    key: str = "fasttext",
) -> TrainedClassifier:
    """Train a binary fastText classifier (positives `__label__positive`) and write
    `model_path` plus its `.json` (module docstring).

    Args:
        positives, negatives: The raw texts of each class (prepared here).
        model_path: The `.bin` to write (atomically).
        settings: fastText and text settings.
        valid_fraction: Share of each class held out for the metrics (0: none).
        fingerprint: Recorded in the `.json` (what `reusable_model` compares).
        extra: More entries for the `.json` (sources, counts before balancing).
        where: Names the training data in errors.
        key: The config key of `settings` (for the errors).

    Raises:
        DataError: no positive or no negative example.
    """
    import fasttext

    settings = settings or FastTextSettings()
    settings.validate(key)
    if not 0 <= valid_fraction < 1:
        raise ConfigError("valid_fraction", f"must be in [0, 1), got {valid_fraction!r}")
    _check_classes(positives, negatives, where)
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    pos_train, pos_valid = _split(len(positives), valid_fraction, rng)
    neg_train, neg_valid = _split(len(negatives), valid_fraction, rng)
    features = {"word_ngrams": settings.word_ngrams, "bucket": settings.bucket}

    def line(text: str) -> str:
        return feature_line(prepare_text(text, settings.text), **features)

    lines = [f"{POSITIVE} {line(positives[i])}" for i in pos_train]
    lines += [f"{NEGATIVE} {line(negatives[i])}" for i in neg_train]
    lines = [lines[i] for i in rng.permutation(len(lines))]
    model_path = Path(model_path)
    with tempfile.TemporaryDirectory(prefix="adaptlm-fasttext-") as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        vectors = Path(tmp) / "init.vec"
        rows = _write_init_vectors(vectors, lines, settings)
        try:
            model = fasttext.train_supervised(
                input=str(train_file),
                wordNgrams=1,
                bucket=0,
                dim=settings.dim,
                epoch=settings.epoch,
                lr=float(settings.lr),
                minCount=settings.min_count,
                loss=settings.loss,
                seed=settings.seed,
                thread=settings.threads,
                pretrainedVectors=str(vectors),
                verbose=0,
            )
        except RuntimeError as error:
            if "NaN" not in str(error):
                raise
            raise ConfigError(
                f"{key}.lr", f"fastText training diverged (NaN) at lr={settings.lr}; lower it"
            ) from None
    heldout = None
    if len(pos_valid) and len(neg_valid):
        texts = [positives[i] for i in pos_valid] + [negatives[i] for i in neg_valid]
        truth = np.r_[np.ones(len(pos_valid), bool), np.zeros(len(neg_valid), bool)]
        probs = _label_probs(model, [line(t) for t in texts], POSITIVE)
        heldout = binary_metrics(truth, probs, threshold=0.5)
    with atomic_file(model_path) as tmp_model:
        model.save_model(str(tmp_model))
    info = {
        "version": VERSION,
        "fingerprint": fingerprint,
        "labels": {"positive": POSITIVE, "negative": NEGATIVE},
        "settings": asdict(settings),
        "text": asdict(settings.text),
        "features": features,
        "model_rows": rows,
        "valid_fraction": valid_fraction,
        "counts": {
            "positives": len(positives),
            "negatives": len(negatives),
            "train_positives": len(pos_train),
            "train_negatives": len(neg_train),
            "valid_positives": len(pos_valid),
            "valid_negatives": len(neg_valid),
        },
        "heldout": heldout,
        "model_sha256": file_sha256(model_path),
        "model_bytes": model_path.stat().st_size,
        "train_wall_s": round(time.perf_counter() - started, 3),
        **(extra or {}),
    }
    write_json(sidecar_path(model_path), info)
    if heldout is not None:
        log.info(
            "fastText %s: held-out precision %.3f recall %.3f F1 %.3f AUC %.3f (%d+%d examples, "
            "%.1f s) -> %s",
            model_path.stem,
            heldout["precision"],
            heldout["recall"],
            heldout["f1"],
            heldout["auc"],
            len(pos_valid),
            len(neg_valid),
            info["train_wall_s"],
            model_path,
        )
    return TrainedClassifier(model_path, info)


def write_json(path: str | Path, payload: Any) -> None:
    """Write `payload` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")


def _label_probs(model: Any, lines: Sequence[str], label: str) -> np.ndarray:
    """The probability of `label` for every prepared line (0 when fastText does not return it)."""
    if not lines:
        return np.zeros(0, dtype=np.float64)
    labels, probs = model.predict(list(lines), k=-1)
    out = np.fromiter(
        (dict(zip(names, values)).get(label, 0.0) for names, values in zip(labels, probs)),
        dtype=np.float64,
        count=len(lines),
    )
    return np.clip(out, 0.0, 1.0)  # fastText adds 1e-5 before its log


class FastTextScorer(DocumentScorer):
    """The probability of `spec.label` under a fastText `.bin` model (module docstring)."""

    def __init__(self, spec: ScorerSpec, *, key: str = "scorer") -> None:
        import fasttext

        self.spec = spec
        self.name = spec.name or "fasttext"
        self.label = spec.label
        path = Path(spec.path).expanduser()
        try:
            self.model = fasttext.load_model(str(path))
        except ValueError as error:
            raise ConfigError(
                f"{key}.path", f"{spec.path!r} is not a fastText model: {error}"
            ) from None
        labels = list(self.model.get_labels())
        if self.label not in labels:
            raise ConfigError(
                f"{key}.label", f"{self.label!r} is not a label of {spec.path!r} (labels: {labels})"
            )
        self.text = TextSettings()
        self.features = {"word_ngrams": 1, "bucket": 0}
        try:
            info = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
            self.text = TextSettings(**info["text"])
            self.features = {k: int(v) for k, v in info.get("features", self.features).items()}
        except FileNotFoundError:
            log.info("%s has no .json beside it; preparing texts with the defaults", path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(
                f"{key}.path", f"cannot read {sidecar_path(path)} (the model's settings): {error}"
            ) from None

    def settings(self) -> dict[str, Any]:
        """The label and the text preparation."""
        return {"label": self.label, "text": asdict(self.text), "features": self.features}

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """The probability of the label for each text, float64 in [0, 1]."""
        lines = [feature_line(prepare_text(t, self.text), **self.features) for t in texts]
        return _label_probs(self.model, lines, self.label)


__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "FastTextScorer",
    "FastTextSettings",
    "TextSettings",
    "TrainedClassifier",
    "feature_line",
    "prepare_text",
    "reusable_model",
    "sidecar_path",
    "train_fasttext",
    "write_json",
]
