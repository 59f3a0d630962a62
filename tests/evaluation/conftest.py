"""Fixtures of the evaluation tests: a tiny Llama exported with `save_pretrained`, and eval sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.callbacks.conftest import QA_LINES, tiny_llama, write_jsonl

TEXTS = [
    "Alice Varen was born in Orlin in 1987.",
    "Bram Oster works for Kestrel Labs as an engineer and lives in Dunmore.",
    "The river Tal flows.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 appear too, and then some more words follow.",
]


@pytest.fixture
def exported_model(tiny_tokenizer: Any, tmp_path: Path) -> Path:
    """A seeded tiny Llama and the tiny tokenizer saved together, as `ExportCallback` writes them."""
    directory = tmp_path / "export"
    tiny_llama(tiny_tokenizer, seed=5).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def eval_files(tmp_path: Path) -> dict[str, Path]:
    """A QA file with two attributes and a text file."""
    qa = [
        {"prompt": p, "answer": a, "entity": f"e{i}", "attribute": attr}
        for i, ((p, a), attr) in enumerate(
            zip(QA_LINES * 2, ["birth_city", "employer", "birth_city", "employer"])
        )
    ]
    return {
        "qa": write_jsonl(tmp_path / "qa.jsonl", qa),
        "ppl": write_jsonl(tmp_path / "ppl.jsonl", [{"text": t} for t in TEXTS]),
    }
