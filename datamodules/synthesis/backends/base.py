"""The generator interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from datamodules.synthesis.problems import ProblemGroup


@dataclass
class GenerationRequest:
    """One passage to write.

    Args:
        id: The passage's stable id.
        messages: The chat messages of the guideline (system, user).
        group: The problems (a template backend writes from their facts).
        attempt: 1 for the first ask, 2 for the first re-ask of a rejected passage, ...
    """

    id: str
    messages: list[dict[str, str]]
    group: ProblemGroup
    attempt: int = 1


@dataclass
class GenerationResponse:
    """A backend's answer to one request: a text to parse, or an `error` (a reject reason).

    Args:
        id: The request's id.
        text: The generated text (None when `error` is set).
        finish_reason: `stop`, or `length` when the token budget cut it (a reject).
        error: A reject reason the backend decided on (`http_404`, `malformed_response`,
            `retries_exhausted`, ...); the text is not parsed.
        detail: One line about the error.
        raw: What the backend received when it could not read it (a malformed body), for
            `rejects.jsonl`.
        retries: Transient failures retried for this request (429, 5xx, timeouts, ...).
        usage: Token counts the backend reported, if any.
    """

    id: str
    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    detail: str | None = None
    raw: str | None = None
    retries: int = 0
    usage: dict[str, Any] | None = field(default=None)


class Backend(ABC):
    """A passage generator: `generate(requests)` yields one response per request as each
    completes (in any order), so the runner can write each result at once."""

    kind: ClassVar[str]
    """The backend's name in configs and outputs (`world_template`, `openai`, `transformers`)."""

    @property
    def model(self) -> str | None:
        """The model's name as written in the outputs (None: no model)."""
        return None

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResponse]:
        """One response per request, yielded as each completes."""

    def identity(self) -> dict[str, Any]:
        """What determines the texts (part of the run's fingerprint); never a secret."""
        return {"kind": self.kind}

    def settings(self) -> dict[str, Any]:
        """Every setting for the manifest; never a secret."""
        return self.identity()

    def close(self) -> None:  # noqa: B027 (optional hook: most backends hold nothing)
        """Release connections, models, threads."""


__all__ = ["Backend", "GenerationRequest", "GenerationResponse"]
