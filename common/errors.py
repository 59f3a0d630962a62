"""Errors that reach the user as one actionable line instead of a deep traceback.

`python -m experiments` catches `AdaptLMError`, prints its message and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class AdaptLMError(Exception):
    """Base class for errors caused by the user's input (data, config), not by a bug.

    `latest` holds the most recent instance: jsonargparse re-raises errors from constructors it
    instantiates inside a union type as a plain `ValueError` carrying only their text, and the
    CLI uses `latest` to recognise such a user error by its message.
    """

    latest: AdaptLMError | None = None

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        AdaptLMError.latest = self


def find_user_error(error: BaseException) -> AdaptLMError | None:
    """The `AdaptLMError` behind `error`: in its cause/context chain, or re-raised by text only."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, AdaptLMError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    latest = AdaptLMError.latest
    if latest is not None and str(latest) and str(latest) in str(error):
        return latest
    return None


class ConfigError(AdaptLMError, ValueError):
    """A config value is invalid; the message names the config key and what was expected."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class DataError(AdaptLMError, ValueError):
    """A data source is invalid; the message names the file (and line or record) and what was expected."""

    def __init__(self, source: str | Path, message: str, line: int | None = None) -> None:
        self.source = str(source)
        self.line = line
        where = f"{self.source}:{line}" if line is not None else self.source
        super().__init__(f"{where}: {message}")
