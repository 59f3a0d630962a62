"""KnowledgeEvalCallback under 2-process DDP: disjoint shards, sums over ranks equal one process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.callbacks.conftest import tiny_llama, write_jsonl
from tests.callbacks.test_knowledge_eval import TEXTS, reference_greedy, reference_nll

ROOT = Path(__file__).resolve().parents[2]


def _qa_and_texts(tiny_tokenizer: Any, tmp_path: Path) -> tuple[Any, Path, Path]:
    """The seed-3 tiny model, 5 questions it answers 3 of, and the perplexity texts."""
    model = tiny_llama(tiny_tokenizer, seed=3).eval()
    prompts = ["Question: Where?", "Q:", "The river Tal", "Alice Varen was", "Numbers 0 1 2"]
    predictions = [reference_greedy(model, tiny_tokenizer, p, 16) for p in prompts]
    right = [True, False, True, True, False]  # 3/5; attribute a: 2/3, b: 1/2
    records = [
        {
            "prompt": p,
            "answer": pred if ok else "wrong",
            "entity": f"e{i}",
            "attribute": "ab"[i % 2],
        }
        for i, (p, pred, ok) in enumerate(zip(prompts, predictions, right))
    ]
    qa = write_jsonl(tmp_path / "qa.jsonl", records)
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in [*TEXTS, "One more."]])
    return model, qa, texts


def _run_ddp(*args: str | Path) -> None:
    """Run tests.callbacks.ddp_knowledge_eval in 2 processes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.callbacks.ddp_knowledge_eval", *map(str, args)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_sums_over_rank_shards(
    tiny_tokenizer_dir: Path, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    model, qa, texts = _qa_and_texts(tiny_tokenizer, tmp_path)
    results = tmp_path / "results.jsonl"
    _run_ddp("validate", tiny_tokenizer_dir, qa, texts, results)
    (entry,) = _entries(results)  # rank 0 writes once
    assert entry["stage"] == "validation"
    assert entry["counts"]["qa/domain"] == 5  # every question once, the padding item not counted
    metrics = entry["metrics"]
    assert metrics["knowledge/qa_em/domain"] == pytest.approx(3 / 5)
    assert metrics["knowledge/qa_em/domain/a"] == pytest.approx(2 / 3)
    assert metrics["knowledge/qa_em/domain/b"] == pytest.approx(1 / 2)
    nll, tokens = reference_nll(model, tiny_tokenizer, [*TEXTS, "One more."])
    assert entry["counts"]["ppl_tokens/general"] == tokens
    assert metrics["knowledge/ppl/general"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_initial_cache_is_decided_on_rank_zero_for_every_rank(
    tiny_tokenizer_dir: Path, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    """Under DDP the "before" row is evaluated (sharded over both ranks) and cached by the first of two
    fits from the same weights, read by the second: both ranks take the same branch (a rank evaluating alone would hang in the
    evaluation's collectives), and the reused figures equal the evaluated ones."""
    _, qa, texts = _qa_and_texts(tiny_tokenizer, tmp_path)
    cache = tmp_path / "initial"
    _run_ddp("fit", tiny_tokenizer_dir, qa, texts, tmp_path / "results.jsonl", cache)
    (entry_file,) = list(cache.glob("*.json"))
    first = _entries(tmp_path / "results.first.jsonl")
    second = _entries(tmp_path / "results.second.jsonl")
    assert [e["stage"] for e in first] == [e["stage"] for e in second] == ["fit_start", "fit_end"]
    assert "reused" not in first[0] and second[0]["reused"] == str(entry_file)
    assert first[0]["counts"]["qa/domain"] == 5  # evaluated over both ranks' shards
    assert first[0]["metrics"]["knowledge/qa_em/domain"] == pytest.approx(3 / 5)
    assert second[0]["metrics"] == first[0]["metrics"]
    assert second[0]["counts"] == first[0]["counts"]
    assert json.loads(entry_file.read_text())["metrics"] == first[0]["metrics"]
    assert "reused" not in second[1] and second[1]["metrics"] == first[1]["metrics"]
