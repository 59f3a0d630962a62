"""`WorldDataModule`: the pre-training datamodule over the synthetic knowledge world."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from common.errors import ConfigError
from datamodules.pretraining import PretrainingDataModule
from datamodules.sources import SourceSpec
from datamodules.world.config import WorldConfig
from datamodules.world.materialize import WorldArtifacts, materialize_world

WORLD_SCHEME = "world:"
_KEY = "data.init_args"
DEFAULT_WORLD = WorldConfig()


class WorldDataModule(PretrainingDataModule):
    """Pre-training data from the synthetic knowledge world (the embedded default).

    The world is built and its tokenizer trained on first use, cached by fingerprint under
    `world_cache_dir`. A source path `world:<split>` names one of the world's splits
    (general_documents, general_qa, domain_documents, paraphrased_*_documents,
    heldout_*_documents, ...). `evaluation_sets()` hands the held-out QA (unseen question
    wording) and the paraphrased biographies (perplexity) to `callbacks.KnowledgeEvalCallback`.

    Args:
        world: Size and shape of the world.
        world_cache_dir: Where worlds are materialized (`<dir>/world-<fingerprint>/`).
        tokenizer: Tokenizer path or hub id; default: the world's own trained tokenizer.
        train_sources: Training sources; default: the new-domain documents (`world:domain_documents`).
        val_sources: Validation sources by name; default: fresh paraphrases of domain and general
            biographies (known wording, so perplexity measures the facts).
        qa_format: Format of the evaluation questions: `chat` (the `chat` base model and what is
            adapted from it) or `plain` (`Question: ... Answer:`, the `pretrained` base model).
            The chat format also evaluates the skills.
        **kwargs: The remaining `PretrainingDataModule` arguments (max_length, micro_batch_size, ...).
    """

    def __init__(
        self,
        world: WorldConfig = DEFAULT_WORLD,
        world_cache_dir: str = ".cache/adaptlm/worlds",
        tokenizer: str | None = None,
        train_sources: list[SourceSpec] | None = None,
        val_sources: dict[str, SourceSpec] | None = None,
        qa_format: Literal["chat", "plain"] = "chat",
        **kwargs: Any,
    ) -> None:
        if train_sources is None:
            train_sources = [SourceSpec(path=f"{WORLD_SCHEME}domain_documents")]
        if val_sources is None:
            val_sources = {
                "domain": SourceSpec(path=f"{WORLD_SCHEME}paraphrased_domain_documents"),
                "general": SourceSpec(path=f"{WORLD_SCHEME}paraphrased_general_documents"),
            }
        super().__init__(
            tokenizer=tokenizer, train_sources=train_sources, val_sources=val_sources, **kwargs
        )
        self.world_config = dataclasses.replace(world)
        self.world_config.validate(f"{_KEY}.world")
        self.world_cache_dir = world_cache_dir
        if qa_format not in ("chat", "plain"):
            raise ConfigError(f"{_KEY}.qa_format", f"must be 'chat' or 'plain', got {qa_format!r}")
        self.qa_format = qa_format
        self._artifacts: WorldArtifacts | None = None

    @property
    def artifacts(self) -> WorldArtifacts:
        """The materialized world (built on first access; safe when several ranks race)."""
        if self._artifacts is None:
            self._artifacts = materialize_world(
                self.world_config, self.world_cache_dir, key_prefix=f"{_KEY}.world"
            )
        return self._artifacts

    def resolve_source(self, spec: SourceSpec) -> SourceSpec:
        """Map `world:<split>` to the split's JSONL file; other paths pass through."""
        if not spec.path.startswith(WORLD_SCHEME):
            return spec
        split = spec.path[len(WORLD_SCHEME) :]
        path = self.artifacts.split_path(split)
        return dataclasses.replace(spec, path=str(path), format="jsonl", name=spec.name or split)

    def resolve_tokenizer_path(self) -> str:
        """The configured tokenizer, else the world's trained tokenizer."""
        if self._tokenizer_arg:
            return self._tokenizer_arg
        return str(self.artifacts.tokenizer_dir)

    def evaluation_sets(self) -> dict[str, dict[str, str]]:
        """Held-out QA (greedy exact match) and text (perplexity): new-domain entities, QA-trained
        general entities, general entities known from documents only, and (chat format) the skills.
        """
        artifacts = self.artifacts
        suffix = "" if self.qa_format == "chat" else "_plain"
        qa = {
            "domain": str(artifacts.split_path(f"qa_eval_domain{suffix}")),
            "general": str(artifacts.split_path(f"qa_eval_general{suffix}")),
            "general_bio_only": str(artifacts.split_path(f"qa_eval_general_bio_only{suffix}")),
        }
        if self.qa_format == "chat":
            for name in artifacts.split_names:
                if name.startswith("skill_") and name.endswith("_test"):
                    qa[name[: -len("_test")]] = str(artifacts.split_path(name))
        return {
            "qa": qa,
            "perplexity": {
                "domain": str(artifacts.split_path("paraphrased_domain_documents")),
                "general": str(artifacts.split_path("paraphrased_general_documents")),
            },
        }
