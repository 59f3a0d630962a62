"""Errors that reach the user as one actionable line instead of a deep traceback.

`python -m experiments` catches `AdaptLMError`, prints its message and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class AdaptLMError(Exception):
    """Base class for errors caused by the user's input (data, config), not by a bug."""


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
