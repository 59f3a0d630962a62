"""Sharded, multi-process, resumable scoring (`datamodules.selection.sharded.score_corpus`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from common.errors import AdaptLMError, ConfigError, DataError
from datamodules.selection import sharded as S
from datamodules.selection.corpus import CorpusSpec
from datamodules.selection.scorers import DocumentScorer, ScorerSpec

WORDS = tuple(f"w{i}" for i in range(19))


class LengthScorer(DocumentScorer):
    """A deterministic test scorer: words + a fraction from the characters (distinct floats).

    `spec.path` picks a behaviour: `ok` (any other text: another fingerprint), `crash-after:K`
    (a `RuntimeError` once more than K documents were scored), `user-error-after:K` (a
    `DataError`) or `die-after:K` (the process exits at once: in a worker only)."""

    name = "length"

    def __init__(self, spec: ScorerSpec) -> None:
        self.mode = spec.path
        self.scored = 0

    def _limit(self) -> int | None:
        return int(self.mode.rsplit(":", 1)[1]) if "-after:" in self.mode else None

    def score(self, texts: Sequence[str]) -> np.ndarray:
        limit = self._limit()
        if limit is not None and self.scored + len(texts) > limit:
            if self.mode.startswith("die"):
                os._exit(3)  # a worker killed (out of memory, a signal)
            if self.mode.startswith("user-error"):
                raise DataError("labels.jsonl", "field 'label' must be a string, got int", 7)
            raise RuntimeError(f"the scorer crashed after {self.scored} documents")
        self.scored += len(texts)
        return np.array(
            [len(t.split()) + (sum(map(ord, t)) % 997) / 997 for t in texts], dtype=np.float64
        )

    def fingerprint(self) -> dict:
        return {"name": self.name, "mode": self.mode}


def make_scorer(spec: ScorerSpec) -> DocumentScorer:
    """The test factory (module-level: picklable, importable by spawned workers)."""
    return LengthScorer(spec)


def spec(mode: str = "ok") -> ScorerSpec:
    return ScorerSpec(kind="fasttext", path=mode)


def corpus_lines(n: int = 23, bad: Sequence[int] = ()) -> list[str]:
    """`n` valid records (ids `d00`…) with a malformed line inserted at each index of `bad`."""
    rng = np.random.default_rng(0)
    lines = [
        json.dumps(
            {"id": f"d{i:02d}", "text": " ".join(rng.choice(WORDS, int(rng.integers(2, 12))))}
        )
        for i in range(n)
    ]
    for at in bad:
        lines.insert(at, '{"id": "broken", "text": ')
    return lines


@pytest.fixture
def corpus(tmp_path: Path) -> CorpusSpec:
    path = tmp_path / "web.jsonl"
    path.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    return CorpusSpec(path=str(path))


def expected(corpus: CorpusSpec) -> tuple[list[str], np.ndarray]:
    """The ids and scores of every valid record, in file order, scored in one call."""
    records = []
    for line in Path(corpus.path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r["id"] for r in records], LengthScorer(spec()).score([r["text"] for r in records])


def run(corpus: CorpusSpec, out: Path, mode: str = "ok", **kwargs) -> Path:
    kwargs.setdefault("batch_size", 4)
    return S.score_corpus(
        corpus, spec(mode), out, scorer_factory=make_scorer, progress=False, **kwargs
    )


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / S.SHARDS_DIR).iterdir())}


@pytest.mark.parametrize(("num_shards", "processes"), [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_sharded_scores_equal_the_unsharded_ones(corpus, tmp_path, num_shards, processes) -> None:
    path = run(corpus, tmp_path / "out", num_shards=num_shards, processes=processes)
    assert path == tmp_path / "out" / S.SCORES_FILE
    ids, scores = S.read_scores(path)
    want_ids, want = expected(corpus)
    assert ids == want_ids  # corpus order
    np.testing.assert_array_equal(scores, want)  # the same float64 values
    manifest = json.loads((tmp_path / "out" / S.MANIFEST_FILE).read_text())
    assert manifest["documents"] == 23 and manifest["num_shards"] == num_shards
    assert [s["documents"] for s in manifest["shards"]] == ([23] if num_shards == 1 else [8, 8, 7])
    assert manifest["run"]["documents_scored"] == 23 and manifest["run"]["docs_per_s"] > 0
    for i in range(num_shards):
        shard_ids, _ = S.read_scores(S.shard_path(tmp_path / "out", i, num_shards))
        assert shard_ids == want_ids[i::num_shards]  # position p lives in shard p % n


def test_a_rerun_skips_finished_shards_and_redoes_missing_or_changed_ones(
    corpus, tmp_path, caplog
) -> None:
    out = tmp_path / "out"
    run(corpus, out, num_shards=3)
    before = mtimes(out)
    merged = (out / S.SCORES_FILE).stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="datamodules.selection.sharded"):
        run(corpus, out, num_shards=3)
    assert mtimes(out) == before and (out / S.SCORES_FILE).stat().st_mtime_ns == merged
    assert caplog.text.count("already done") == 3

    # A missing scores file, then a missing done file: only that shard is recomputed.
    S.shard_path(out, 1, 3).unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="datamodules.selection.sharded"):
        run(corpus, out, num_shards=3)
    after = mtimes(out)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"scores-00001-of-00003.jsonl", "scores-00001-of-00003.done.json"}
    assert caplog.text.count("already done") == 2
    S.done_path(out, 2, 3).unlink()
    before, after = after, (run(corpus, out, num_shards=3), mtimes(out))[1]
    assert {n for n in before if after[n] != before[n]} == {
        "scores-00002-of-00003.jsonl",
        "scores-00002-of-00003.done.json",
    }

    # A done file of another fingerprint (another scorer wrote it): only that shard is redone.
    done = S.done_path(out, 0, 3)
    record = json.loads(done.read_text())
    record["fingerprint"]["scorer"]["mode"] = "another model"
    done.write_text(json.dumps(record))
    before = mtimes(out)
    run(corpus, out, num_shards=3)
    after = mtimes(out)
    assert {n for n in before if after[n] != before[n]} == {
        "scores-00000-of-00003.jsonl",
        "scores-00000-of-00003.done.json",
    }
    ids, scores = S.read_scores(out / S.SCORES_FILE)
    assert ids == expected(corpus)[0]
    np.testing.assert_array_equal(scores, expected(corpus)[1])

    # Another scorer or a changed corpus: every shard is redone.
    before = mtimes(out)
    run(corpus, out, mode="ok-v2", num_shards=3)
    assert all(mtimes(out)[n] != before[n] for n in before)
    with open(corpus.path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "d23", "text": "alpha beta"}) + "\n")
    before = mtimes(out)
    run(corpus, out, mode="ok-v2", num_shards=3)
    assert all(mtimes(out)[n] != before[n] for n in before)
    assert S.read_scores(out / S.SCORES_FILE)[0][-1] == "d23"


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def test_a_crash_in_a_shard_leaves_no_partial_file_and_no_done_file(corpus, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(
        S.ShardFailed, match=r"shard 0 of 1 failed: RuntimeError: the scorer crashed after 8"
    ):
        run(corpus, out, mode="crash-after:10")  # batches of 4: fails in the third batch
    assert visible(out / S.SHARDS_DIR) == []  # no scores file, no done file
    assert not list((out / S.SHARDS_DIR).iterdir())  # and no staging file either
    assert not (out / S.SCORES_FILE).exists() and not (out / S.MANIFEST_FILE).exists()

    # In one shard of three: the shards before it are done and kept, it is not.
    with pytest.raises(S.ShardFailed, match="shard 2 of 3"):
        run(corpus, out, mode="crash-after:16", num_shards=3)
    assert visible(out / S.SHARDS_DIR) == [
        "scores-00000-of-00003.done.json",
        "scores-00000-of-00003.jsonl",
        "scores-00001-of-00003.done.json",
        "scores-00001-of-00003.jsonl",
    ]


def test_a_crash_in_a_worker_names_the_shard_and_a_rerun_completes(corpus, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(S.ShardFailed, match=r"shard \d of 2 failed: RuntimeError") as info:
        run(corpus, out, mode="crash-after:5", num_shards=2, processes=2)
    assert "traceback in the worker" in str(info.value)
    assert not (out / S.SCORES_FILE).exists()
    assert not any(p.name.endswith(".done.json") for p in (out / S.SHARDS_DIR).iterdir())
    path = run(corpus, out, num_shards=2, processes=2)
    np.testing.assert_array_equal(S.read_scores(path)[1], expected(corpus)[1])
    assert visible(out / S.SHARDS_DIR) == sorted(
        [f"scores-0000{i}-of-00002.{ext}" for i in range(2) for ext in ("jsonl", "done.json")]
    )
    assert not [p for p in (out / S.SHARDS_DIR).iterdir() if p.name.startswith(".tmp-")]


def test_a_worker_that_dies_is_an_error_not_a_hang(corpus, tmp_path) -> None:
    with pytest.raises(S.ShardFailed, match="a worker process died"):
        run(corpus, tmp_path / "out", mode="die-after:5", num_shards=2, processes=2)
    assert not (tmp_path / "out" / S.SCORES_FILE).exists()
    assert not list((tmp_path / "out" / S.SHARDS_DIR).glob("*.done.json"))


@pytest.mark.parametrize("processes", [1, 2])
def test_a_user_error_in_a_shard_keeps_its_message(corpus, tmp_path, processes) -> None:
    with pytest.raises(S.ShardError) as info:
        run(corpus, tmp_path / "out", mode="user-error-after:0", num_shards=2, processes=processes)
    error = info.value
    assert isinstance(error, AdaptLMError) and error.kind == "DataError"
    assert str(error) == (
        f"shard {error.shard_index} of 2: labels.jsonl:7: field 'label' must be a string, got int"
    )


def test_bad_records_are_counted_across_shards_with_file_and_line(tmp_path) -> None:
    path = tmp_path / "web.jsonl"
    path.write_text("\n".join(corpus_lines(bad=(5, 11))) + "\n", encoding="utf-8")
    corpus = CorpusSpec(path=str(path))
    out = tmp_path / "out"
    ids, _ = S.read_scores(run(corpus, out, num_shards=3))
    assert len(ids) == 23 and ids == expected(corpus)[0]
    manifest = json.loads((out / S.MANIFEST_FILE).read_text())
    assert manifest["skipped"] == 2 and manifest["documents"] == 23
    assert sum(s["skipped"] for s in manifest["shards"]) == 2
    assert any(f"{path}:6" in p for p in manifest["problems"])
    assert any(f"{path}:12" in p for p in manifest["problems"])


def test_array_tasks_run_one_shard_each_and_the_last_merges(corpus, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    for i in (2, 0):
        assert run(corpus, out, num_shards=3, shard_index=i) == S.shard_path(out, i, 3)
        assert not (out / S.SCORES_FILE).exists()
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert S.slurm_shard_index("slurm") == 1
    path = run(corpus, out, num_shards=3, shard_index=S.slurm_shard_index("slurm"))
    assert path == out / S.SCORES_FILE
    ids, scores = S.read_scores(path)
    assert ids == expected(corpus)[0]
    np.testing.assert_array_equal(scores, expected(corpus)[1])


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_shards": 3, "shard_index": 3}, "shard_index"),
        ({"num_shards": 3, "shard_index": -1}, "shard_index"),
        ({"num_shards": 0}, "num_shards"),
        ({"processes": 0}, "processes"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_sharding_arguments_are_config_errors(corpus, tmp_path, kwargs, key) -> None:
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        run(corpus, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_missing_or_unresolved_corpus_fails_before_anything_starts(tmp_path) -> None:
    missing = CorpusSpec(path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or directory"):
        run(missing, tmp_path / "out", num_shards=2, processes=2)
    with pytest.raises(ConfigError, match="config key 'corpus.path'.*world split"):
        run(CorpusSpec(path="world:web_corpus"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_line(corpus, tmp_path, monkeypatch, capsys, caplog) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(S, "build_scorer", make_scorer)
    base = ["--corpus.path", corpus.path, "--scorer.kind", "fasttext", "--scorer.path", "ok"]
    base += ["--output_dir", str(out), "--num_shards", "2", "--progress", "false"]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    assert S.main([*base, "--shard_index", "slurm"]) == S.shard_path(out, 0, 2)
    assert S.main([*base, "--shard_index", "1"]) == out / S.SCORES_FILE
    assert capsys.readouterr().out.splitlines()[-1] == str(out / S.SCORES_FILE)
    for bad, key in (
        (["--shard_index", "2"], "shard_index"),
        (["--shard_index", "last"], "shard_index"),
        (["--processes", "two"], "processes"),
        (["--shards", "2"], "shards"),
    ):
        caplog.clear()
        with pytest.raises(SystemExit) as info:
            S.main([*base, *bad])
        assert info.value.code == 2, bad
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and f"config key '{key}'" in errors[0], errors
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID"):
        S.slurm_shard_index("slurm")


# ----------------------------------------------------------------------------------- fastText

DOMAIN = ["reactor", "neutron", "lattice", "coolant", "isotope", "uranium", "flux", "rod"]
GENERAL = ["recipe", "butter", "football", "weather", "garden", "holiday", "market", "song"]
FILLER = ["the", "a", "of", "and", "in", "with", "for", "on"]


def topic_documents(words: Sequence[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.permutation([*rng.choice(words, 6), *rng.choice(FILLER, 4)]).tolist())
        for _ in range(n)
    ]


def train_topic_model(out: Path) -> Path:
    """A small fastText domain classifier (`train_fasttext`: seeded, one thread) at `out`."""
    from datamodules.selection.fasttext_classifier import FastTextSettings, train_fasttext

    settings = FastTextSettings(dim=16, epoch=20, bucket=20000, lr=0.5)
    positives, negatives = topic_documents(DOMAIN, 60, 0), topic_documents(GENERAL, 60, 1)
    return train_fasttext(positives, negatives, out, settings, valid_fraction=0).model_path


@pytest.fixture(scope="module")
def fasttext_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_topic_model(tmp_path_factory.mktemp("fasttext") / "domain.bin")


def write_topic_corpus(path: Path, n: int = 30) -> CorpusSpec:
    texts = [
        t
        for pair in zip(topic_documents(DOMAIN, n, 5), topic_documents(GENERAL, n, 6))
        for t in pair
    ]
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    return CorpusSpec(path=str(path))


def test_a_real_fasttext_scorer_in_two_worker_processes(fasttext_model, tmp_path) -> None:
    from datamodules.selection.scorers import build_scorer

    corpus = write_topic_corpus(tmp_path / "web.jsonl")
    scorer = ScorerSpec(kind="fasttext", path=str(fasttext_model))
    path = S.score_corpus(corpus, scorer, tmp_path / "out", num_shards=3, processes=2, batch_size=7)
    ids, scores = S.read_scores(path)
    records = [json.loads(line) for line in Path(corpus.path).read_text().splitlines()]
    assert ids == [r["id"] for r in records]
    np.testing.assert_array_equal(scores, build_scorer(scorer).score([r["text"] for r in records]))
    assert (scores[0::2] > 0.5).all() and (scores[1::2] < 0.5).all()  # domain, general, ...
    manifest = json.loads((tmp_path / "out" / S.MANIFEST_FILE).read_text())
    assert manifest["fingerprint"]["scorer"]["files"][0]["sha256"]  # the model's content


def test_workers_get_one_thread_unless_told_otherwise(monkeypatch) -> None:
    for name in S.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    with S.worker_environment():
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "3"
