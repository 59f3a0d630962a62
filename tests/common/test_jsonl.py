"""`common.jsonl.read_jsonl`: records with line numbers, and one-line errors naming file:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import DataError
from common.jsonl import BadLine, read_jsonl, read_jsonl_lines


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    return path


def test_records_with_line_numbers_skip_blank_lines_and_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, b'\xef\xbb\xbf{"a": 1}\n\n  \r\n{"b": "x"}\r\n{"c": null}')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"b": "x"}), (5, {"c": None})]


def test_json_error_column_is_the_column_in_the_line(tmp_path: Path) -> None:
    line = '{"text": "' + "a" * 29 + '"'  # 40 characters, the closing brace missing
    assert len(line) == 40
    path = _write(tmp_path, b'{"text": "ok"}\n' + line.encode() + b"\n")
    with pytest.raises(DataError) as info:
        list(read_jsonl(path))
    message = str(info.value)
    assert message.startswith(f"{path}:2: malformed JSON (Expecting ',' delimiter at column 41)")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": 1}\n[1, 2]\n', ":2: record must be a JSON object, got list"),
        (b'{"a": 1}\n"text"\n', ":2: record must be a JSON object, got str"),
        (b'{"a": "caf\xe9"}\n', ":1: not valid UTF-8 (byte 0xe9 at column 11)"),
        (b"", ": empty file"),
        (b"\n \n", ": empty file"),
        (b'{"a": tru}\n', ":1: malformed JSON (Expecting value at column 7)"),
    ],
)
def test_bad_files_are_one_line_naming_file_and_line(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(DataError) as info:
        list(read_jsonl(path))
    assert str(info.value).startswith(f"{path}{expected}")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_lines_mode_yields_bad_lines_in_place_and_goes_on(tmp_path: Path) -> None:
    """`read_jsonl_lines`: every bad line is a `BadLine` with `read_jsonl`'s message, at its line
    number, and reading continues; an empty file is no records (not an error)."""
    path = _write(tmp_path, b'{"a": 1}\n[1]\n{"a": "caf\xe9"}\n\n{"a": tru}\nnull\n{"b": 2}\n')
    got = list(read_jsonl_lines(path))
    assert [n for n, _ in got] == [1, 2, 3, 5, 6, 7]
    assert got[0] == (1, {"a": 1}) and got[-1] == (7, {"b": 2})
    messages = [r.message for _, r in got if isinstance(r, BadLine)]
    assert messages == [
        "record must be a JSON object, got list",
        "not valid UTF-8 (byte 0xe9 at column 11)",
        "malformed JSON (Expecting value at column 7)",
        "record must be a JSON object, got null",
    ]
    assert list(read_jsonl_lines(_write(tmp_path, b"\n"))) == []
    with pytest.raises(DataError, match="file not found"):
        list(read_jsonl_lines(tmp_path / "missing.jsonl"))
