"""Corpus reading: formats, tolerant skipping of bad records with file:line, ids, sharding."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from common.errors import ConfigError, DataError
from datamodules.selection.corpus import (
    MAX_PROBLEMS,
    CorpusSpec,
    CorpusStats,
    WorldSplits,
    iter_corpus,
    read_corpus,
    resolve_corpus,
)
from tests.datamodules.selection.conftest import smoke_world

RECORDS = [{"id": f"d{i}", "text": f"document number {i}\nsecond line"} for i in range(7)]


def _ids(spec: CorpusSpec, **kwargs: int) -> list[str]:
    return [d.id for d in iter_corpus(spec, CorpusStats(), **kwargs)]


def test_jsonl_parquet_and_hf_give_the_same_documents(tmp_path, write_jsonl):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write_jsonl("c.jsonl", RECORDS)
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), parquet)
    hf_dir = tmp_path / "hf"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(hf_dir))
    read = {
        name: read_corpus(CorpusSpec(path=str(path)))
        for name, path in (("jsonl", jsonl), ("parquet", parquet), ("hf", hf_dir))
    }
    expected = [(r["id"], r["text"]) for r in RECORDS]
    for name, docs in read.items():
        assert [(d.id, d.text) for d in docs] == expected, name


def test_bad_records_are_skipped_counted_and_named_by_file_and_line(write_jsonl, caplog):
    lines = [
        RECORDS[0],
        "{not json",
        {"id": "x1"},  # no text
        {"id": "x2", "text": 5},  # text not a string
        RECORDS[1],
        {"text": "no id here"},
        {"id": "d0", "text": "a duplicate id"},
        "[1, 2]",
        "",  # a blank line is a separator, not a record
        {"id": 17, "text": "an integer id is its decimal text"},
        {"id": True, "text": "a boolean is no id"},
        RECORDS[2],
    ]
    path = write_jsonl("bad.jsonl", lines)
    stats = CorpusStats()
    with caplog.at_level(logging.WARNING, logger="datamodules.selection.corpus"):
        docs = list(iter_corpus(CorpusSpec(path=str(path)), stats))
    assert [d.id for d in docs] == ["d0", "d1", "17", "d2"]
    assert stats.read == 4 and stats.skipped == 7
    lines_named = [p.split(": ", 1)[0] for p in stats.problems]
    assert lines_named == [f"{path}:{n}" for n in (2, 3, 4, 6, 7, 8, 11)]
    assert "malformed JSON" in stats.problems[0]
    assert "no field 'text'" in stats.problems[1]
    assert "must be a string, got int" in stats.problems[2]
    assert "no field 'id'" in stats.problems[3]
    assert "duplicate id 'd0'" in stats.problems[4]
    assert "JSON object" in stats.problems[5]
    assert "got bool" in stats.problems[6]
    logged = [r.getMessage() for r in caplog.records]
    assert sum(f"{path}:2:" in m for m in logged) == 1  # logged once


def test_problems_kept_up_to_the_limit_counts_complete(write_jsonl):
    path = write_jsonl("many.jsonl", ["{bad"] * (MAX_PROBLEMS + 5) + [RECORDS[0]])
    stats = CorpusStats()
    assert len(read_corpus(CorpusSpec(path=str(path)), stats)) == 1
    assert stats.skipped == MAX_PROBLEMS + 5 and len(stats.problems) == MAX_PROBLEMS


def test_parquet_bad_rows_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "a", "text": "one"}, {"id": "b", "text": None}, {"id": None, "text": "three"}]
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    stats = CorpusStats()
    assert [d.id for d in read_corpus(CorpusSpec(path=str(path)), stats)] == ["a"]
    assert stats.skipped == 2
    assert stats.problems[0].startswith(f"{path}: record 1 (0-based row): ")
    assert stats.problems[1].startswith(f"{path}: record 2 (0-based row): ")


def test_positions_as_ids_and_other_fields(write_jsonl):
    path = write_jsonl("c.jsonl", [{"body": "a"}, "{bad", {"body": "c"}])
    spec = CorpusSpec(path=str(path), id_field=None, text_field="body")
    assert [(d.id, d.text) for d in read_corpus(spec)] == [("0", "a"), ("2", "c")]


def test_shards_partition_the_readable_documents_by_position(write_jsonl):
    lines = [RECORDS[0], "{bad", *RECORDS[1:], {"id": "d3", "text": "duplicate"}]
    spec = CorpusSpec(path=str(write_jsonl("c.jsonl", lines)))
    whole = _ids(spec)
    assert whole == [r["id"] for r in RECORDS]
    shards = [_ids(spec, shard_index=i, num_shards=3) for i in range(3)]
    assert shards == [whole[i::3] for i in range(3)]
    stats = [CorpusStats() for _ in range(3)]
    for i in range(3):
        list(iter_corpus(spec, stats[i], shard_index=i, num_shards=3))
    assert sum(s.read for s in stats) == len(whole)
    assert sum(s.skipped for s in stats) == 2  # each bad record counted by one shard only
    with pytest.raises(ConfigError, match="shard_index"):
        _ids(spec, shard_index=3, num_shards=3)


def test_missing_and_empty_corpora_are_data_errors(tmp_path, write_jsonl):
    with pytest.raises(DataError, match="no such file"):
        read_corpus(CorpusSpec(path=str(tmp_path / "absent.jsonl")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no readable document among 0 records"):
        read_corpus(CorpusSpec(path=str(empty)))
    bad = write_jsonl("bad.jsonl", ["{bad", {"id": "a"}])
    with pytest.raises(DataError, match=r"no readable document among 2 records \(first problem: "):
        read_corpus(CorpusSpec(path=str(bad)))


def test_spec_validation_names_the_key():
    with pytest.raises(ConfigError, match="'corpus.world_seed'"):
        CorpusSpec(path="a.jsonl", world_seed=3).validate("corpus")
    with pytest.raises(ConfigError, match="'corpus.format'"):
        CorpusSpec(path="a.jsonl", format="csv").validate("corpus")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'corpus.path'"):
        resolve_corpus(CorpusSpec(path="world:web_corpus"), key="corpus")


def test_world_paths_resolve_with_and_without_a_world_seed(world_cache: Path):
    worlds = WorldSplits(smoke_world(), world_cache)
    own = resolve_corpus(CorpusSpec(path="world:web_corpus"), key="corpus", world_split=worlds)
    other = resolve_corpus(
        CorpusSpec(path="world:web_corpus", world_seed=1000), key="corpus", world_split=worlds
    )
    assert own.format == "jsonl" and Path(own.path).is_file() and own.world_seed is None
    assert Path(own.path).parent != Path(other.path).parent
    own_texts = {d.text for d in read_corpus(own)}
    other_texts = {d.text for d in read_corpus(other)}
    assert len(own_texts) == smoke_world().web.num_documents
    assert len(own_texts & other_texts) < len(own_texts) // 2  # another draw of the world
    with pytest.raises(DataError, match="unknown world split"):
        resolve_corpus(CorpusSpec(path="world:nope"), key="corpus", world_split=worlds)
