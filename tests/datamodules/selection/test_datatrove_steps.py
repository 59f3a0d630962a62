"""Our scorers as datatrove pipeline steps: the local executor's scores and decisions equal
`score_corpus`'s, reruns skip finished tasks, the SLURM executor is built (and its array job
written) without submitting anything."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dill
import numpy as np
import pytest

from common.errors import AdaptLMError, ConfigError
from datamodules.selection import datatrove_steps as D
from datamodules.selection import sharded as S
from datamodules.selection.corpus import CorpusSpec
from datamodules.selection.scorers import ScorerSpec
from tests.datamodules.selection.test_sharded import (
    corpus_lines,
    expected,
    make_scorer,
    spec,
    train_topic_model,
    write_topic_corpus,
)

THRESHOLD = 6.0


@pytest.fixture
def corpus(tmp_path: Path) -> CorpusSpec:
    path = tmp_path / "web.jsonl"
    path.write_text("\n".join(corpus_lines(bad=(5,))) + "\n", encoding="utf-8")
    return CorpusSpec(path=str(path))


def run(corpus: CorpusSpec, out: Path, threshold=THRESHOLD, mode="ok", **kwargs) -> D.DatatroveRun:
    kwargs.setdefault("batch_size", 4)
    return D.run_datatrove(corpus, spec(mode), out, threshold, scorer_factory=make_scorer, **kwargs)


def kept_records(kept_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(kept_dir.glob("kept-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_local_run_with_two_tasks_gives_the_sharded_scores_and_decisions(
    corpus, tmp_path, workers
) -> None:
    result = run(corpus, tmp_path / "dt", tasks=2, workers=workers)
    assert result.scores == tmp_path / "dt" / S.SCORES_FILE
    reference = S.score_corpus(
        corpus, spec(), tmp_path / "sharded", scorer_factory=make_scorer, progress=False
    )
    ids, scores = S.read_scores(result.scores)
    want_ids, want = S.read_scores(reference)
    assert ids == want_ids == expected(corpus)[0]
    np.testing.assert_array_equal(scores, want)

    records = [json.loads(line) for line in result.scores.read_text().splitlines()]
    assert [r["kept"] for r in records] == [bool(s >= THRESHOLD) for s in want]
    assert 0 < sum(r["kept"] for r in records) < len(records)
    kept = kept_records(result.kept_dir)
    by_id = dict(zip(want_ids, want))
    assert sorted(r["id"] for r in kept) == sorted(i for i, s in by_id.items() if s >= THRESHOLD)
    assert all(r["score"] == by_id[r["id"]] and r["text"] for r in kept)
    assert sorted(p.name for p in result.kept_dir.iterdir()) == [
        "kept-00000-of-00002.jsonl",
        "kept-00001-of-00002.jsonl",
    ]

    manifest = json.loads((tmp_path / "dt" / S.MANIFEST_FILE).read_text())
    assert manifest["kept"] == len(kept) and manifest["documents"] == len(want)
    assert manifest["skipped"] == 1 and any(f"{corpus.path}:6" in p for p in manifest["problems"])
    assert manifest["fingerprint"]["threshold"] == THRESHOLD


def test_a_rerun_skips_finished_tasks_and_a_new_threshold_redoes_them(
    corpus, tmp_path, caplog
) -> None:
    out = tmp_path / "dt"
    run(corpus, out, tasks=2)
    shards = {p.name: p.stat().st_mtime_ns for p in (out / S.SHARDS_DIR).iterdir()}
    with caplog.at_level(logging.INFO, logger="datamodules.selection.datatrove_steps"):
        run(corpus, out, tasks=2)
    assert {p.name: p.stat().st_mtime_ns for p in (out / S.SHARDS_DIR).iterdir()} == shards
    assert caplog.text.count("already done") == 2

    (D.kept_path(out / D.KEPT_DIR, 1, 2)).unlink()  # a lost output: that task is redone
    run(corpus, out, tasks=2)
    after = {p.name: p.stat().st_mtime_ns for p in (out / S.SHARDS_DIR).iterdir()}
    assert {n for n in shards if after[n] != shards[n]} == {
        "scores-00001-of-00002.jsonl",
        "scores-00001-of-00002.done.json",
    }
    assert D.kept_path(out / D.KEPT_DIR, 1, 2).is_file()

    result = run(corpus, out, threshold=100.0, tasks=2)  # everything dropped now
    assert kept_records(result.kept_dir) == []
    records = [json.loads(line) for line in result.scores.read_text().splitlines()]
    assert not any(r["kept"] for r in records)


def test_without_a_threshold_every_document_is_kept_and_annotated(corpus) -> None:
    step = D.ScoreFilter(spec(), None, key="domain", batch_size=3, scorer_factory=make_scorer)
    reader = D.CorpusReader(corpus)
    docs = list(step(reader(), rank=0, world_size=1))
    ids, scores = expected(corpus)
    assert [d.id for d in docs] == ids
    np.testing.assert_array_equal([d.metadata["domain"] for d in docs], scores)

    # The step pickles without its scorer (built in the worker, on first use).
    assert step._scorer is not None
    clone = dill.loads(dill.dumps(step))
    assert clone._scorer is None and clone.scorer_spec == step.scorer_spec


def test_a_user_error_in_a_datatrove_worker_is_one_error_naming_the_task(corpus, tmp_path) -> None:
    with pytest.raises(S.ShardError) as info:
        run(corpus, tmp_path / "dt", mode="user-error-after:0", tasks=2, workers=2)
    assert isinstance(info.value, AdaptLMError)
    assert str(info.value).endswith(": labels.jsonl:7: field 'label' must be a string, got int")
    assert str(info.value).startswith("shard ")
    assert not (tmp_path / "dt" / S.SCORES_FILE).exists()


SLURM = D.SlurmOptions(
    partition="cpu-long",
    time="02:30:00",
    cpus_per_task=2,
    mem_per_cpu_gb=4,
    job_name="trait_scoring",
    qos="high",
    venv_path="/opt/venvs/adaptlm/bin/activate",
    sbatch_args={"account": "proj42"},
)


def test_the_slurm_executor_is_built_with_the_requested_settings(corpus, tmp_path) -> None:
    result = run(
        corpus, tmp_path / "dt", executor="slurm", tasks=3, workers=2, slurm=SLURM, submit=False
    )
    executor = result.executor
    from datatrove.executor import SlurmPipelineExecutor

    assert isinstance(executor, SlurmPipelineExecutor)
    assert (executor.tasks, executor.workers, executor.partition, executor.time) == (
        3,
        2,
        "cpu-long",
        "02:30:00",
    )
    assert (executor.cpus_per_task, executor.mem_per_cpu_gb, executor.job_name) == (
        2,
        4,
        "trait_scoring",
    )
    assert executor.qos == "high" and executor.venv_path == SLURM.venv_path
    assert executor._sbatch_args == {"account": "proj42"}
    assert result.scores is None and result.job_id is None
    assert not (tmp_path / "dt" / S.SHARDS_DIR).exists()  # nothing ran, nothing was submitted
    with pytest.raises(ConfigError, match="slurm.partition"):
        D.build_executor(result.pipeline, "slurm", tasks=3, workers=1, logging_dir=tmp_path)
    with pytest.raises(ConfigError, match="'tasks'"):
        D.build_executor(result.pipeline, "local", tasks=0, workers=1, logging_dir=tmp_path)


def test_a_slurm_array_job_is_written_and_its_tasks_merge_on_the_cluster(
    corpus, tmp_path, monkeypatch
) -> None:
    """Submission with `sbatch` replaced by a recorder; then each array task run here as SLURM
    would run it (`launch_pickled_pipeline`: the pickled executor with SLURM_ARRAY_TASK_ID)."""
    import datatrove.executor.slurm as slurm

    submitted = []

    def fake_sbatch(contents, job_id_retriever, *args):
        submitted.append((contents, args))
        return str(1000 + len(submitted))

    monkeypatch.setattr(slurm, "launch_slurm_job", fake_sbatch)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    out = tmp_path / "dt"
    result = run(corpus, out, executor="slurm", tasks=3, workers=2, slurm=SLURM)
    assert (
        result.job_id == "1001" and len(submitted) == 2
    )  # the array job + datatrove's stats merge
    script = submitted[0][0]
    for line in (
        "#SBATCH --partition=cpu-long",
        "#SBATCH --time=02:30:00",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem-per-cpu=4G",
        "#SBATCH --job-name=trait_scoring",
        "#SBATCH --array=0-2%2",
        "#SBATCH --qos=high",
        "#SBATCH --account=proj42",
        "source /opt/venvs/adaptlm/bin/activate",
    ):
        assert line in script, line
    assert "launch_pickled_pipeline" in script
    pickled = result.logging_dir / "executor.pik"
    assert pickled.is_file() and not (out / S.SCORES_FILE).exists()

    monkeypatch.setattr(slurm, "expand_slurm_nodelist", lambda nodelist: ["node1"])
    monkeypatch.setenv("SLURM_NODELIST", "node1")
    for task in (1, 0, 2):
        with pickled.open("rb") as f:
            executor = dill.load(f)
        assert executor.pipeline[1]._scorer is None
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        executor.run()
        assert (out / S.SCORES_FILE).exists() == (task == 2)  # the last task to finish merges
    ids, scores = S.read_scores(out / S.SCORES_FILE)
    assert ids == expected(corpus)[0]
    np.testing.assert_array_equal(scores, expected(corpus)[1])


def test_the_command_line(corpus, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(D, "build_scorer", make_scorer)
    out = tmp_path / "dt"
    base = ["--corpus.path", corpus.path, "--scorer.kind", "fasttext", "--scorer.path", "ok"]
    base += ["--output_dir", str(out), "--tasks", "2", "--batch_size", "4"]
    result = D.main([*base, "--threshold", str(THRESHOLD), "--executor", "local", "--workers", "1"])
    assert result.scores == out / S.SCORES_FILE
    assert f"scores: {out / S.SCORES_FILE}" in capsys.readouterr().out
    np.testing.assert_array_equal(S.read_scores(result.scores)[1], expected(corpus)[1])
    for bad in (
        ["--tasks", "0"],
        ["--executor", "cloud"],
        ["--executor", "slurm", "--submit", "false"],  # no partition
        ["--threshold", "high"],
        ["--slurm.partitions", "cpu"],
    ):
        with pytest.raises(SystemExit) as info:
            D.main([*base, *bad])
        assert info.value.code == 2, bad


def test_the_command_line_with_a_fasttext_model_scores_as_score_corpus_does(tmp_path) -> None:
    fasttext_model = train_topic_model(tmp_path / "domain.bin")
    corpus = write_topic_corpus(tmp_path / "web.jsonl")
    out = tmp_path / "dt"
    argv = ["--corpus.path", corpus.path, "--scorer.kind", "fasttext"]
    argv += ["--scorer.path", str(fasttext_model), "--output_dir", str(out)]
    argv += ["--threshold", "0.5", "--executor", "local", "--tasks", "2", "--workers", "1"]
    result = D.main(argv)
    reference = S.score_corpus(
        corpus, ScorerSpec(kind="fasttext", path=str(fasttext_model)), tmp_path / "sharded"
    )
    ids, scores = S.read_scores(result.scores)
    assert ids == S.read_scores(reference)[0]
    np.testing.assert_array_equal(scores, S.read_scores(reference)[1])
    kept = sorted(r["id"] for r in kept_records(result.kept_dir))
    assert kept == sorted(i for i, s in zip(ids, scores) if s >= 0.5)
    assert kept == sorted(f"p{i}" for i in range(0, 60, 2))  # the domain documents
