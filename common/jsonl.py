"""The one validated JSONL reader: one JSON object per line, errors naming file, line and column."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.errors import DataError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, record)` for every non-blank line of the JSONL file `path`.

    Blank lines are separators, not records; a UTF-8 byte-order mark is ignored. The line's own
    newline is removed before parsing, so a JSON error's column is the column in that line.

    Raises:
        DataError: `"<path>:<line>: ..."` for a line that is not UTF-8, not JSON or not an object
            (with the column of the error), `"<path>: ..."` for a missing/unreadable or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a regular file")
    records = 0
    try:
        handle = path.open("rb")
    except OSError as err:
        raise DataError(path, f"cannot read the file ({err.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\r\n")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.start + 1].hex()
                raise DataError(
                    path,
                    f"not valid UTF-8 (byte 0x{bad} at column {err.start + 1}); "
                    "re-encode the file as UTF-8",
                    number,
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    path,
                    f"malformed JSON ({err.msg} at column {err.colno}); expected one JSON object "
                    "per line",
                    number,
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    path, f"record must be a JSON object, got {type(record).__name__}", number
                )
            records += 1
            yield number, record
    if records == 0:
        raise DataError(path, "empty file: expected at least one JSON object per line")


__all__ = ["read_jsonl"]
