"""Document scorers: one interface for every way TRAIT's selection ranks documents.

A `DocumentScorer` maps texts to float64 scores, higher = keep. It is built from a `ScorerSpec`
(`build_scorer`), so a worker process rebuilds it from the spec alone; every scorer also pickles
as "rebuild from my spec" (`__reduce__`), never as its loaded model.

Kinds (each implemented in its own module, imported only when built):

- `fasttext` (`fasttext_classifier.FastTextScorer`): a fastText `.bin` classifier; the score is the
  probability of `label` (the domain or quality classifier trained by `train_classifier`).
- `dsir` (`dsir.DSIRScorer`): DSIR's log importance weight from a fitted `.npz` (hashed unigram +
  bigram features, `dsir.fit_dsir`).
- `perplexity` (`model_scorers.PerplexityScorer`): a causal LM from a local directory; the score is
  minus the mean token NLL of the document's first `max_length` tokens.
- `sequence_classification` (`model_scorers.SequenceClassificationScorer`): an
  `AutoModelForSequenceClassification` from a local directory; the score is the softmax
  probability of class `label_index`.

`fingerprint()` identifies what decides the scores (the kind, the model files' sha256, the
settings), so a rerun with the same fingerprint can skip the scoring.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.errors import ConfigError

KINDS: tuple[str, ...] = ("fasttext", "perplexity", "sequence_classification", "dsir")
_HASH_LIMIT = 256 * 1024 * 1024
"""Files above this size are identified by size and mtime instead of their sha256."""


class DocumentScorer(abc.ABC):
    """Texts -> float64 scores, higher = keep.

    Attributes:
        name: A short name of the scorer, e.g. `fasttext_domain`.
        spec: The spec it was built from (None for a scorer built directly in code).
    """

    name: str = "scorer"
    spec: ScorerSpec | None = None

    @abc.abstractmethod
    def score(self, texts: Sequence[str]) -> np.ndarray:
        """One float64 score per text (same order), higher = keep."""

    def settings(self) -> dict[str, Any]:
        """The settings that change the scores (part of the fingerprint)."""
        return {} if self.spec is None else self.spec.score_settings()

    def model_files(self) -> list[Path]:
        """The files whose content decides the scores (hashed into the fingerprint)."""
        return [] if self.spec is None else model_files(Path(self.spec.path))

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the scores: the kind, the model files' hashes and the settings."""
        return {
            "kind": type(self).__name__,
            "name": self.name,
            "files": files_identity(self.model_files()),
            "settings": self.settings(),
        }

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its spec: unpickling rebuilds it with `build_scorer` (models never travel)."""
        if self.spec is None:
            raise TypeError(f"{type(self).__name__} without a spec cannot be pickled")
        return (build_scorer, (self.spec,))


@dataclass
class ScorerSpec:
    """How to build a `DocumentScorer`.

    Args:
        kind: `fasttext`, `perplexity`, `sequence_classification` or `dsir`.
        path: The model: a fastText `.bin` file, a DSIR `.npz` file, or a local
            `save_pretrained` directory (perplexity, sequence classification).
        label: fastText: the label whose probability is the score.
        batch_size: Model scorers: texts per forward pass.
        max_length: Model scorers: a text is cut to its first `max_length` tokens.
        device: Model scorers: torch device (`cpu`, `cuda`, `cuda:1`).
        dtype: Model scorers: dtype of the weights.
        label_index: Sequence classification: the class whose probability is the score.
        tokenizer: Model scorers: tokenizer directory; default: the model's own directory.
        name: The scorer's name in logs and manifests; default: the kind.
    """

    kind: Literal["fasttext", "perplexity", "sequence_classification", "dsir"]
    path: str
    label: str = "__label__positive"
    batch_size: int = 16
    max_length: int = 512
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    label_index: int = 1
    tokenizer: str | None = None
    name: str | None = None

    def score_settings(self) -> dict[str, Any]:
        """The settings that change a score (not `batch_size`, `device`, `name`, `path`)."""
        keep = {
            "fasttext": ("label",),
            "dsir": (),
            "perplexity": ("max_length", "dtype"),
            "sequence_classification": ("max_length", "dtype", "label_index"),
        }[self.kind]
        settings = {k: v for k, v in asdict(self).items() if k in keep}
        settings["kind"] = self.kind
        return settings

    def validate(self, key: str = "scorer") -> None:
        """Check the values and that the model exists; `ConfigError` naming `<key>.<field>`."""
        if self.kind not in KINDS:
            raise ConfigError(f"{key}.kind", f"must be one of {list(KINDS)}, got {self.kind!r}")
        if not isinstance(self.path, str) or not self.path.strip():
            raise ConfigError(f"{key}.path", "must name the model file or directory")
        for attr, low in (("batch_size", 1), ("max_length", 2), ("label_index", 0)):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key}.{attr}", f"must be an integer >= {low}, got {value!r}")
        path = Path(self.path).expanduser()
        if self.kind in ("fasttext", "dsir"):
            what = "fastText .bin" if self.kind == "fasttext" else "DSIR .npz"
            if not path.is_file():
                raise ConfigError(
                    f"{key}.path",
                    f"no such {what} model file: {self.path!r}"
                    + (" (train it first: python -m datamodules.selection train)"),
                )
        else:
            if not path.is_dir():
                raise ConfigError(
                    f"{key}.path", f"no such model directory: {self.path!r} (a save_pretrained dir)"
                )
            if not (path / "config.json").is_file():
                raise ConfigError(f"{key}.path", f"{self.path!r} has no config.json")
            if self.tokenizer is not None and not Path(self.tokenizer).expanduser().exists():
                raise ConfigError(f"{key}.tokenizer", f"no such tokenizer: {self.tokenizer!r}")


def model_files(path: Path) -> list[Path]:
    """The file itself, or every file of a directory (hidden entries excluded), sorted."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    return []


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_identity(files: Sequence[Path]) -> list[dict[str, Any]]:
    """`{"file", "size", "sha256"}` per file (`mtime_ns` instead of the hash above 256 MiB)."""
    out = []
    for path in files:
        stat = path.stat()
        entry: dict[str, Any] = {"file": path.name, "size": stat.st_size}
        if stat.st_size <= _HASH_LIMIT:
            entry["sha256"] = file_sha256(path)
        else:
            entry["mtime_ns"] = stat.st_mtime_ns
        out.append(entry)
    return out


def build_scorer(spec: ScorerSpec, *, key: str = "scorer") -> DocumentScorer:
    """The scorer of `spec` (module docstring); a missing model file or directory, or a bad
    setting, is a `ConfigError` naming `<key>.<field>`."""
    if isinstance(spec, dict):
        spec = ScorerSpec(**spec)
    spec.validate(key)
    if spec.kind == "fasttext":
        from datamodules.selection.fasttext_classifier import FastTextScorer

        return FastTextScorer(spec, key=key)
    if spec.kind == "dsir":
        from datamodules.selection.dsir import DSIRScorer

        return DSIRScorer(spec, key=key)
    from datamodules.selection.model_scorers import PerplexityScorer, SequenceClassificationScorer

    if spec.kind == "perplexity":
        return PerplexityScorer(spec, key=key)
    return SequenceClassificationScorer(spec, key=key)


__all__ = [
    "KINDS",
    "DocumentScorer",
    "ScorerSpec",
    "build_scorer",
    "file_sha256",
    "files_identity",
    "model_files",
]
