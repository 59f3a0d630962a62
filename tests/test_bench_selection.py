"""The selection-scoring benchmark's harness (not its figures): a --quick run on synthetic documents
writes a report with every variant's times and docs/s, the 2 ÷ 1 ratios beside their expectation,
and scores equal to the in-process reference."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_selection as B


def test_the_expectation_is_capped_by_the_cores_and_lowered_by_the_start_up() -> None:
    assert B.expectation(10.0, 0.0, 0.0, 2) == {"ceiling": 2.0, "with_startup": 2.0}
    assert B.expectation(10.0, 0.0, 0.0, 1)["with_startup"] == 1.0
    # 8 s of work split in two, plus a 2-process overhead of 1 s: 10 / (1 + 4) = 2 ... capped
    assert B.expectation(10.0, 2.0, 1.0, 4)["with_startup"] == pytest.approx(2.0)
    assert B.expectation(10.0, 2.0, 3.0, 4)["with_startup"] == pytest.approx(10 / 7)


def test_the_corpus_is_repeated_with_unique_ids(tmp_path) -> None:
    records = [{"id": "a", "text": "x y"}, {"id": "b", "text": "z"}]
    path = tmp_path / "c.jsonl"
    assert B.write_corpus(records, 3, path) == 6
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert ids == ["a-r0", "b-r0", "a-r1", "b-r1", "a-r2", "b-r2"]


@pytest.mark.slow
def test_a_quick_run_writes_the_report(tmp_path) -> None:
    out = tmp_path / "report.json"
    rc = B.main(["--quick", "--documents", "synthetic", "--batch-size", "64", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["corpus"]["documents"] == 400 and report["corpus"]["source"] == "synthetic"
    assert 0 < report["corpus"]["kept_at_threshold"] < 400  # the classifier separates something
    assert report["reference"]["docs_per_s"] > 0
    for phase in ("cold", "warm"):
        assert set(report["startup"][phase]) == set(B.VARIANTS)
        assert all(t > 0 for t in report["startup"][phase].values())
    assert set(report["timing"]) == set(B.VARIANTS)
    for variant in B.VARIANTS:
        timing = report["timing"][variant]
        assert len(timing["times"]) == 1 and timing["best"] <= timing["median"]
        assert timing["median_docs_per_s"] == pytest.approx(400 / timing["median"])
        assert timing["same_scores"], variant
        assert len(timing["shard_cpu_s"][0]) == int(variant[-1])  # one entry per shard / task
    checks = report["checks"]
    assert set(checks) == {"sharded_2_vs_1", "datatrove_2_vs_1", "same_scores"}
    for name in ("sharded_2_vs_1", "datatrove_2_vs_1"):
        assert {"median", "best", "expectation", "ceiling", "ok"} <= set(checks[name])
        assert checks[name]["projected_free_cores"] > 0 and checks[name]["cpu_2_vs_1"] > 0
        assert 0 < checks[name]["expectation"] <= checks[name]["ceiling"] <= 2
    assert checks["same_scores"]["ok"]
    text = out.with_suffix(".md").read_text()
    assert "sharded_p2 ÷ sharded_p1" in text and "datatrove_w2 ÷ datatrove_w1" in text
    assert "expectation" in text and report["environment"]["loadavg_end"]
