"""The Mix-CPT benchmark's harness (not its figures): the synthetic pairs, the FLOP model and the
report of a --quick run on a tiny model, with the first step's losses checked across variants."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import _harness as H
from benchmarks import bench_mix_cpt as B
from tests.helpers import TINY_LLAMA

TINY = {**TINY_LLAMA, "max_position_embeddings": 512}


def test_synthetic_pairs_have_a_prompt_and_two_different_responses() -> None:
    pairs = B.synthetic_pairs(5)
    assert len(pairs) == 5
    for pair in pairs:
        assert pair["prompt"].endswith(".") and pair["chosen"].startswith(" ")
        assert pair["chosen"] != pair["rejected"] and pair["rejected"].strip()


def test_the_flop_model_adds_the_teacher_pass_and_its_logits() -> None:
    shape = {
        "decoder_matmul_params": 1000,
        "lora_matmul_params": 100,
        "hidden": 4,
        "layers": 2,
        "vocab": 10,
    }
    batches = {
        "rows": {"input_ids": torch.zeros(2, 8)},
        "dpo": {"input_ids": torch.zeros(4, 6)},
        "tokens": {"rows": {"targets": 14}, "pairs": {"targets": 5}},
    }
    flops = B.expected_flops(batches, shape)
    assert set(flops) == set(B.VARIANTS)
    vh, rows, pairs = 40.0, [8, 8], [6] * 4
    teacher = H.forward_flops(rows, shape)
    assert flops["lssd"] - flops["cpt"] == pytest.approx(teacher + 2 * vh * 14)
    assert flops["lssd_lora"] - flops["cpt_lora"] == pytest.approx(teacher + 2 * vh * 14)
    assert flops["cpt"] - flops["cpt_lora"] == pytest.approx(
        H.linear_flops(rows, shape)
        - 3 * H.linear_flops(rows, shape, "lora_matmul_params")
        + 2 * vh * 14
    )
    assert flops["dpo_cached"] - flops["sft"] == pytest.approx(2 * vh * 5)
    assert flops["dpo_teacher"] - flops["dpo_cached"] == pytest.approx(
        H.forward_flops(pairs, shape) + 2 * vh * 5
    )


def test_a_quick_run_writes_the_report(tmp_path, monkeypatch) -> None:
    def in_process(benchmark, variants, settings, batches_path, args, jobs=None):
        # The workers' code in this process (a fresh process per variant costs ~10 s of imports).
        return {v: B.run_worker(H.worker_spec(v, settings, batches_path, args)) for v in variants}

    monkeypatch.setattr(H, "measure_memory", in_process)
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
                "--rows",
                "2",
                "--pairs",
                "4",
                "--max-length",
                "128",
                "--lora-r",
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
    assert report["tokens"]["rows"]["tensor"] == [2, 128]
    assert report["tokens"]["pairs"]["tensor"][0] == 8
    assert set(report["timing"]) == set(B.VARIANTS)
    for variant in B.VARIANTS:
        timing = report["timing"][variant]
        assert len(timing["times"]) == 2 and timing["best"] <= timing["median"]
        memory = report["memory"][variant]
        assert "error" not in memory, memory
        assert memory["peak_rss"] >= 0 and memory["peak_live"] >= memory["student_bytes"]
    assert set(report["lssd_cost"]["timing"]) == {"teacher_forward", "ce_loss", "lssd_loss"}
    memory = report["memory"]
    assert memory["lssd"]["teacher_bytes"] == memory["lssd"]["student_bytes"]
    assert memory["lssd_lora"]["teacher_bytes"] == 0 == memory["dpo_cached"]["teacher_bytes"]
    assert memory["cpt_lora"]["adam_bytes"] < memory["cpt"]["adam_bytes"]

    # The first step: the same weights and batch, so the same CE with and without LSSD.
    first = report["first_step"]
    assert first["lssd"]["ce"] == pytest.approx(first["cpt"]["ce"], rel=1e-5)
    assert first["lssd_lora"]["ce"] == pytest.approx(first["cpt_lora"]["ce"], rel=1e-5)
    assert first["lssd"]["kl"] > 1e-6 and first["lssd_lora"]["kl"] > 1e-6
    assert first["lssd"]["loss"] == pytest.approx(first["lssd"]["ce"] + first["lssd"]["kl"])
    assert 2.0 < first["cpt"]["ce"] < 10.0  # about log(vocab) for a fresh model
    assert first["dpo_cached"]["loss"] == pytest.approx(first["dpo_teacher"]["loss"], rel=1e-4)
    assert first["dpo_cached"]["loss"] == pytest.approx(0.693, abs=0.05)  # ≈ log 2 at the start

    checks = report["checks"]
    assert set(checks) == {
        "lssd_vs_cpt",
        "lssd_lora_vs_cpt_lora",
        "dpo_cached_vs_sft",
        "dpo_teacher_vs_sft",
        "memory",
        "no_vocab_tensor",
        "first_step",
    }
    for name in B.RATIOS:
        assert {"median", "best", "flop_expectation", "ok"} <= set(checks[name])
    assert 1.0 < checks["lssd_vs_cpt"]["flop_expectation"] < 1.5
    assert (
        checks["dpo_cached_vs_sft"]["flop_expectation"]
        < checks["dpo_teacher_vs_sft"]["flop_expectation"]
    )
    assert {"rss", "live", "ok"} <= set(checks["memory"])
    assert checks["first_step"]["ok"]
    watch = checks["no_vocab_tensor"]
    assert watch["ok"] and watch["largest_rows"] <= 16 < watch["threshold_rows"]
    default = report["vocab_watch"]["lssd_default_chunk"]["largest_rows"]
    assert default == watch["threshold_rows"]
    text = out.with_suffix(".md").read_text()
    assert "FLOP expectation" in text and "lssd ÷ cpt" in text and "dpo_cached ÷ sft" in text
