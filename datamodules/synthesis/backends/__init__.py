"""The pluggable passage generators, one ABC (`Backend.generate(requests) -> responses`):

- `world_template` (`WorldTemplateBackend`): the embedded default, templates on the world's
  facts, no model;
- `openai` (`OpenAIBackend`): any OpenAI-compatible chat-completions endpoint (hosted API, vLLM);
- `transformers` (`TransformersBackend`): a local model with batched `generate`.

`BackendConfig.kind` picks one; its settings are the sub-mapping of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.errors import ConfigError
from datamodules.synthesis.backends.base import Backend, GenerationRequest, GenerationResponse
from datamodules.synthesis.backends.local_transformers import (
    TransformersBackend,
    TransformersConfig,
)
from datamodules.synthesis.backends.openai_compat import OpenAIBackend, OpenAIConfig
from datamodules.synthesis.backends.world_template import (
    WorldTemplateBackend,
    WorldTemplateConfig,
)

KINDS = ("world_template", "openai", "transformers")


@dataclass
class BackendConfig:
    """Which generator writes the passages, and its settings.

    Args:
        kind: `world_template` (the embedded default: templates on the world's facts, no
            model), `openai` (an OpenAI-compatible chat-completions endpoint) or `transformers`
            (a local model).
        world_template: Settings of `world_template`.
        openai: Settings of `openai`.
        transformers: Settings of `transformers`.
    """

    kind: Literal["world_template", "openai", "transformers"] = "world_template"
    world_template: WorldTemplateConfig = field(default_factory=WorldTemplateConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    transformers: TransformersConfig = field(default_factory=TransformersConfig)

    def validate(self, key: str = "backend") -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"{key}.kind", f"must be one of {list(KINDS)}, got {self.kind!r}")
        getattr(self, self.kind).validate(f"{key}.{self.kind}")


def build_backend(
    config: BackendConfig,
    *,
    enlightenment: bool,
    marker: str | None = None,
    world_heldout_bio_templates: int = 2,
    key: str = "backend",
) -> Backend:
    """The backend `config.kind` names (a model is loaded only when it first generates)."""
    config.validate(key)
    if config.kind == "world_template":
        return WorldTemplateBackend(
            config.world_template,
            enlightenment=enlightenment,
            marker=marker,
            world_heldout_bio_templates=world_heldout_bio_templates,
        )
    if config.kind == "openai":
        return OpenAIBackend(config.openai, key=f"{key}.openai")
    return TransformersBackend(config.transformers)


__all__ = [
    "KINDS",
    "Backend",
    "BackendConfig",
    "GenerationRequest",
    "GenerationResponse",
    "OpenAIBackend",
    "OpenAIConfig",
    "TransformersBackend",
    "TransformersConfig",
    "WorldTemplateBackend",
    "WorldTemplateConfig",
    "build_backend",
]
