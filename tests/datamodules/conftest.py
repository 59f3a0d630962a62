"""Fixtures of the data-pipeline tests: small source files written in `tmp_path`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

DOCS = [
    "Alice Varen was born in Orlin in 1987.",
    "Bram Oster works for Kestrel Labs as an engineer and lives in Dunmore.",
    "The river Tal flows through three cities before it reaches the sea.",
    "Question: Where was Alice Varen born? Answer: Orlin.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 appear too.",
    "She studied physics at Mereth University.",
    "Bram lives in Dunmore.",
]


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """`write_jsonl(name, records)` writes one JSON value (or a raw string line) per line."""

    def write(name: str, records: Sequence[Any]) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return write


@pytest.fixture
def docs_jsonl(write_jsonl: Callable[..., Path]) -> Path:
    """A valid JSONL file of `DOCS`."""
    return write_jsonl("docs.jsonl", [{"text": t, "id": i} for i, t in enumerate(DOCS)])
