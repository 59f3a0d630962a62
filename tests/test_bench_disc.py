"""The DiSC benchmark's harness (not its figures): the per-split batches, the vocabulary watch, the
FLOP model and the report of a --quick run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench_disc as B
from tests.helpers import TINY_LLAMA

TINY = {**TINY_LLAMA, "max_position_embeddings": 512}


def tiny_settings(tokenizer_dir: Path) -> B.Settings:
    return B.Settings(
        tokenizer=str(tokenizer_dir),
        model_config=TINY,
        model=None,
        max_length=256,
        chunk_size=16,
        threads=torch.get_num_threads(),
        noise=0.05,
    )


def test_the_per_split_implementation_gives_disc_objective(tiny_tokenizer_dir, tmp_path) -> None:
    args = B.parse_args(["--docs", "3", "--max-length", "256"])
    texts = B.synthetic_texts(3)
    batches = B.build_batches(texts, str(tiny_tokenizer_dir), args, tmp_path)
    tokens = batches["tokens"]
    assert tokens["documents"] == 3 and tokens["per_split"]["micro_batches"] == 3
    # The per-split teacher reads every context + target: more than the documents themselves.
    assert tokens["per_split"]["teacher_tokens"] > tokens["disc"]["teacher_tokens"]
    assert tokens["disc"]["teacher_tokens"] == tokens["document_tokens"]
    assert tokens["per_split"]["student_tokens"] == tokens["disc"]["student_tokens"]
    settings = tiny_settings(tiny_tokenizer_dir)
    objective = {}
    for variant in ("disc", "per_split"):
        module, optimizer = B.build_variant(variant, settings)
        objective[variant] = B.make_step(variant, module, optimizer, batches)()
    assert objective["disc"] > 1e-4
    assert objective["per_split"] == pytest.approx(objective["disc"], rel=1e-5)
    shape = B.model_shape(module)
    flops = B.expected_flops(batches, shape)
    assert set(flops) == set(B.VARIANTS) and min(flops.values()) > 0


def test_the_vocabulary_watch_sees_logits_in_any_shape_but_not_weights() -> None:
    vocab, hidden = 50, 8
    weight = torch.randn(vocab, hidden)
    mode = B.vocab_watch(vocab, (vocab, hidden))
    with mode:
        torch.zeros(vocab, hidden) + weight  # weight-shaped: ignored
        weight.t().contiguous()  # its transpose: ignored
        torch.empty(7, vocab)  # a chunk of 7 rows
    assert mode.largest[0] == 7
    with mode:
        torch.zeros(2, 6, vocab)  # [B, T, V] logits: 12 rows
    assert mode.largest[0] == 12 and mode.largest[1] == [2, 6, vocab]
    with mode:
        torch.randn(3, 6, hidden) @ weight.t()  # computed logits, whatever the ops' shapes
    assert mode.largest[0] == 18


def test_forward_flops_count_the_linear_layers_and_dense_attention() -> None:
    shape = {"decoder_matmul_params": 1000, "hidden": 4, "layers": 2, "vocab": 10}
    assert B.forward_flops([3, 5], shape) == 2 * 1000 * 8 + 4 * 2 * 4 * (9 + 25)


@pytest.mark.slow
def test_a_quick_run_writes_the_report(tmp_path) -> None:
    config = tmp_path / "model.yaml"
    config.write_text(json.dumps(TINY))  # JSON is YAML
    out = tmp_path / "report.json"
    threads = torch.get_num_threads()
    try:
        rc = B.main(
            [
                "--quick",
                "--documents",
                "synthetic",
                "--docs",
                "4",
                "--steps",
                "1",
                "--repeats",
                "2",
                "--warmup",
                "1",
                "--mem-steps",
                "1",
                "--threads",
                "1",
                "--chunk-size",
                "16",
                "--model-config",
                str(config),
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["timing"]) == set(B.VARIANTS)
    for variant in B.VARIANTS:
        timing = report["timing"][variant]
        assert len(timing["times"]) == 2 and timing["best"] <= timing["median"]
        memory = report["memory"][variant]
        assert "error" not in memory, memory
        assert memory["peak_rss"] > 0 and memory["peak_live"] >= memory["student_bytes"]
    assert report["memory"]["ft"]["teacher_bytes"] == 0
    assert report["memory"]["disc"]["teacher_bytes"] == report["memory"]["disc"]["student_bytes"]
    checks = report["checks"]
    assert set(checks) == {"speedup", "vs_ft", "memory", "no_vocab_tensor"}
    for name in ("speedup", "vs_ft"):
        assert {"median", "best", "flop_expectation", "ok"} <= set(checks[name])
    assert {"rss", "live", "ok"} <= set(checks["memory"])
    watch = checks["no_vocab_tensor"]
    assert watch["ok"] and watch["largest_rows"] <= 16 < watch["threshold_rows"]
    assert report["vocab_watch"]["disc_default_chunk"]["largest_rows"] == watch["threshold_rows"]
    text = out.with_suffix(".md").read_text()
    assert "FLOP expectation" in text and "per-split ÷ DiSC" in text
