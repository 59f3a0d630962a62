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


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_sums_over_rank_shards(
    tiny_tokenizer_dir: Path, tiny_tokenizer: Any, tmp_path: Path
) -> None:
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
    results = tmp_path / "results.jsonl"

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "tests.callbacks.ddp_knowledge_eval",
        str(tiny_tokenizer_dir),
        str(qa),
        str(texts),
        str(results),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    (entry,) = [json.loads(line) for line in results.read_text().splitlines()]  # rank 0 writes once
    assert entry["stage"] == "validation"
    assert entry["counts"]["qa/domain"] == 5  # every question once, the padding item not counted
    metrics = entry["metrics"]
    assert metrics["knowledge/qa_em/domain"] == pytest.approx(3 / 5)
    assert metrics["knowledge/qa_em/domain/a"] == pytest.approx(2 / 3)
    assert metrics["knowledge/qa_em/domain/b"] == pytest.approx(1 / 2)
    nll, tokens = reference_nll(model, tiny_tokenizer, [*TEXTS, "One more."])
    assert entry["counts"]["ppl_tokens/general"] == tokens
    assert metrics["knowledge/ppl/general"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
