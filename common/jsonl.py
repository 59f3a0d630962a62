"""The one validated JSONL reader: one JSON object per line, errors naming file, line and column.

`read_jsonl` raises at the first bad line; `read_jsonl_lines` yields a `BadLine` in its place, for
readers that skip and count unreadable records (a web corpus) instead of stopping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import DataError


@dataclass(frozen=True)
class BadLine:
    """A line that is not a JSON object: what is wrong with it, and the hint of how to fix it."""

    message: str
    hint: str


def _parse(raw: bytes, number: int) -> dict[str, Any] | BadLine | None:
    """The record of one raw line (its newline removed), a `BadLine`, or None for a blank line."""
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.start + 1].hex()
        return BadLine(
            f"not valid UTF-8 (byte 0x{bad} at column {err.start + 1})",
            "re-encode the file as UTF-8",
        )
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return BadLine(
            f"malformed JSON ({err.msg} at column {err.colno})", "expected one JSON object per line"
        )
    if not isinstance(record, dict):
        kind = "null" if record is None else type(record).__name__
        return BadLine(f"record must be a JSON object, got {kind}", "")
    return record


def read_jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Yield `(line_number, record or BadLine)` for every non-blank line of the JSONL file `path`.

    Blank lines are separators, not records; a UTF-8 byte-order mark is ignored. The line's own
    newline is removed before parsing, so a JSON error's column is the column in that line.

    Raises:
        DataError: `"<path>: ..."` for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        handle = path.open("rb")
    except OSError as err:
        raise DataError(path, f"cannot read the file ({err.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            parsed = _parse(raw.rstrip(b"\r\n"), number)
            if parsed is not None:
                yield number, parsed


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, record)` for every non-blank line of the JSONL file `path`
    (`read_jsonl_lines`, stopping at the first bad line).

    Raises:
        DataError: `"<path>:<line>: ..."` for a line that is not UTF-8, not JSON or not an object
            (with the column of the error), `"<path>: ..."` for a missing/unreadable or empty file.
    """
    records = 0
    for number, parsed in read_jsonl_lines(path):
        if isinstance(parsed, BadLine):
            message = f"{parsed.message}; {parsed.hint}" if parsed.hint else parsed.message
            raise DataError(Path(path), message, number)
        records += 1
        yield number, parsed
    if records == 0:
        raise DataError(Path(path), "empty file: expected at least one JSON object per line")


__all__ = ["BadLine", "read_jsonl", "read_jsonl_lines"]
