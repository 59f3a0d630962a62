"""Readers: every format yields the same texts, and every bad input gives one message naming the
file and line (or record)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from common.errors import ConfigError, DataError
from datamodules.sources import (
    ReadStats,
    SourceSpec,
    as_source_spec,
    detect_format,
    read_documents,
    source_fingerprint,
)
from tests.datamodules.conftest import DOCS


def read(spec: SourceSpec) -> tuple[list[str], ReadStats]:
    stats = ReadStats()
    return list(read_documents(spec, stats)), stats


def error_of(spec: SourceSpec) -> str:
    with pytest.raises(DataError) as info:
        read(spec)
    return str(info.value)


# -- formats ----------------------------------------------------------------------------------


def test_jsonl_reads_in_order(docs_jsonl: Path) -> None:
    texts, stats = read(SourceSpec(path=str(docs_jsonl)))
    assert texts == DOCS
    assert stats.documents == len(DOCS) and stats.skipped_empty == 0
    assert stats.files == [str(docs_jsonl)]


def test_jsonl_custom_field_and_blank_lines(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl("c.jsonl", [{"body": "one"}, "", "   ", {"body": "two"}])
    texts, _ = read(SourceSpec(path=str(path), text_field="body"))
    assert texts == ["one", "two"]


def test_directory_and_glob_are_sorted(write_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    write_jsonl("d/b.jsonl", [{"text": "b"}])
    write_jsonl("d/a.jsonl", [{"text": "a"}])
    write_jsonl("d/sub/c.jsonl", [{"text": "c"}])
    assert read(SourceSpec(path=str(tmp_path / "d")))[0] == ["a", "b", "c"]
    assert read(SourceSpec(path=str(tmp_path / "d" / "*.jsonl")))[0] == ["a", "b"]


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": DOCS, "n": list(range(len(DOCS)))}), path, row_group_size=3)
    texts, stats = read(SourceSpec(path=str(path)))
    assert texts == DOCS and stats.documents == len(DOCS)


def test_text_files_one_document_each(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, doc in enumerate(DOCS[:3]):
        (folder / f"{i:02d}.txt").write_text(doc + "\nsecond line\n", encoding="utf-8")
    (folder / "03.txt").write_text("  \n", encoding="utf-8")
    (folder / "notes.bin").write_bytes(b"\xff\xfe")  # not a text suffix: not read
    texts, stats = read(SourceSpec(path=str(folder), format="text"))
    assert texts == [d + "\nsecond line\n" for d in DOCS[:3]]
    assert stats.skipped_empty == 1
    assert detect_format(SourceSpec(path=str(folder / "00.txt"))) == "text"


def test_hf_saved_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"text": DOCS, "id": list(range(len(DOCS)))})
    ds.save_to_disk(str(tmp_path / "saved"))
    spec = SourceSpec(path=str(tmp_path / "saved"))
    assert detect_format(spec) == "hf"
    assert read(spec)[0] == DOCS

    datasets.DatasetDict({"train": ds, "validation": ds.select([0, 1])}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert read(SourceSpec(path=str(tmp_path / "dd"), split="validation"))[0] == DOCS[:2]
    message = error_of(SourceSpec(path=str(tmp_path / "dd"), split="test"))
    assert "no split 'test'" in message and "validation" in message


def test_hf_load_dataset_from_local_data_files(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    write_jsonl("hfdir/train.jsonl", [{"text": t} for t in DOCS])
    write_jsonl("hfdir/test.jsonl", [{"text": "held out"}])
    spec = SourceSpec(path=str(tmp_path / "hfdir"), format="hf", split="test")
    assert read(spec)[0] == ["held out"]
    assert read(SourceSpec(path=str(tmp_path / "hfdir"), format="hf"))[0] == DOCS


def test_hf_unknown_dataset_name_is_one_line() -> None:
    message = error_of(SourceSpec(path="no-such-org/no-such-dataset-xyz", format="hf"))
    assert message.startswith("no-such-org/no-such-dataset-xyz: cannot load HF dataset")
    assert "\n" not in message.strip()


# -- bad input --------------------------------------------------------------------------------


def test_malformed_jsonl_line(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl("bad.jsonl", [{"text": "ok"}, {"text": "fine"}, '{"text": "broken'])
    message = error_of(SourceSpec(path=str(path)))
    assert message.startswith(f"{path}:3: malformed JSON")
    assert "one JSON object per line" in message


def test_malformed_jsonl_error_names_the_column_in_the_line(
    write_jsonl: Callable[..., Path],
) -> None:
    # The closing brace is missing after 40 characters: the error is at column 41 of line 2, not
    # at column 1 of the (virtual) line after the newline.
    path = write_jsonl("bad.jsonl", [{"text": "ok"}, '{"text": "' + "a" * 29 + '"'])
    assert error_of(SourceSpec(path=str(path))).startswith(
        f"{path}:2: malformed JSON (Expecting ',' delimiter at column 41)"
    )


def test_missing_text_field(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl("m.jsonl", [{"text": "ok"}, {"body": "x", "id": 2}])
    message = error_of(SourceSpec(path=str(path)))
    assert message.startswith(f"{path}:2: record has no field 'text'")
    assert "'body'" in message and "text_field" in message


def test_wrongly_typed_text_field(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl("t.jsonl", [{"text": "ok"}, {"text": "ok"}, {"text": 17}])
    assert str(error_of(SourceSpec(path=str(path)))) == (
        f"{path}:3: field 'text' must be a string, got int"
    )
    path = write_jsonl("n.jsonl", [{"text": None}])
    assert (
        error_of(SourceSpec(path=str(path))) == f"{path}:1: field 'text' must be a string, got null"
    )


def test_jsonl_record_not_an_object(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl("l.jsonl", [{"text": "ok"}, ["a", "list"]])
    assert error_of(SourceSpec(path=str(path))).startswith(
        f"{path}:2: record must be a JSON object, got list"
    )


def test_empty_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert error_of(SourceSpec(path=str(path))).startswith(f"{path}: empty file")


def test_non_utf8_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    message = error_of(SourceSpec(path=str(path)))
    assert message.startswith(f"{path}:2: not valid UTF-8 (byte 0xe9")
    assert "re-encode" in message


def test_non_utf8_text_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(b"line one\nline two\nna\xefve\n")
    message = error_of(SourceSpec(path=str(path)))
    assert message.startswith(f"{path}:3: not valid UTF-8 (byte 0xef at column 3)")


def test_parquet_bad_inputs(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = tmp_path / "missing.parquet"
    pq.write_table(pa.table({"body": ["a"]}), missing)
    assert error_of(SourceSpec(path=str(missing))).startswith(f"{missing}: no column 'text'")

    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), typed)
    assert error_of(SourceSpec(path=str(typed))) == (
        f"{typed}: column 'text' must be string, got int64"
    )

    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None]}), nulls)
    assert error_of(SourceSpec(path=str(nulls))) == (
        f"{nulls}: record 2 (0-based row): 'text' is null"
    )

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    assert error_of(SourceSpec(path=str(empty))).startswith(f"{empty}: empty file")

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    assert error_of(SourceSpec(path=str(garbage))).startswith(f"{garbage}: not a readable Parquet")


def test_hf_bad_inputs(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"text": [1, 2]}).save_to_disk(str(tmp_path / "typed"))
    message = error_of(SourceSpec(path=str(tmp_path / "typed")))
    assert message.startswith(f"{tmp_path / 'typed'}[train]: column 'text' must be string")

    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "missing"))
    assert "no column 'text'" in error_of(SourceSpec(path=str(tmp_path / "missing")))

    datasets.Dataset.from_dict({"text": ["a", None]}).save_to_disk(str(tmp_path / "null"))
    assert error_of(SourceSpec(path=str(tmp_path / "null"))).endswith("record 1: 'text' is null")

    empty = datasets.Dataset.from_dict({"text": ["a"]}).filter(lambda _: False)
    empty.save_to_disk(str(tmp_path / "empty"))
    assert error_of(SourceSpec(path=str(tmp_path / "empty"))) == (
        f"{tmp_path / 'empty'}[train]: empty dataset: expected at least one record"
    )

    (tmp_path / "emptyfiles").mkdir()
    (tmp_path / "emptyfiles" / "train.jsonl").write_text("")
    message = error_of(SourceSpec(path=str(tmp_path / "emptyfiles"), format="hf"))
    assert message.startswith(f"{tmp_path / 'emptyfiles'}: cannot load HF dataset")


def test_missing_path_and_unknown_suffix(tmp_path: Path) -> None:
    assert "no such file" in error_of(SourceSpec(path=str(tmp_path / "nope.jsonl")))
    odd = tmp_path / "data.csv"
    odd.write_text("text\nx\n")
    assert "cannot infer the format" in error_of(SourceSpec(path=str(odd)))


def test_empty_documents_are_counted_and_logged(
    write_jsonl: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl("e.jsonl", [{"text": "a"}, {"text": ""}, {"text": " \n\t"}, {"text": "b"}])
    with caplog.at_level(logging.WARNING, logger="datamodules.sources"):
        texts, stats = read(SourceSpec(path=str(path), name="mine"))
    assert texts == ["a", "b"]
    assert (stats.documents, stats.skipped_empty) == (2, 2)
    assert "source mine: skipped 2 empty or whitespace-only documents (2 kept)" in caplog.text


def test_only_empty_documents_is_an_error(write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl("allempty.jsonl", [{"text": ""}, {"text": "  "}])
    assert error_of(SourceSpec(path=str(path))) == (
        f"{path}: no non-empty documents (2 empty or whitespace-only skipped)"
    )


# -- spec validation and fingerprints ---------------------------------------------------------


def test_spec_validation_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        as_source_spec({"path": "x.jsonl", "kind": "chat"}, "data.init_args.train_sources[2]")
    assert str(info.value).startswith("config key 'data.init_args.train_sources[2].kind'")
    with pytest.raises(ConfigError, match=r"train_sources\[0\].*overlong_policy"):
        as_source_spec(
            SourceSpec(path="x", overlong_policy="drop"),  # type: ignore[arg-type]
            "data.init_args.train_sources[0]",
        )
    with pytest.raises(ConfigError, match="not a valid source"):
        as_source_spec({"path": "x", "colour": "red"}, "k")
    assert as_source_spec({"path": "d/x.jsonl"}, "k").display_name == "x.jsonl"


def test_source_fingerprint_follows_content(docs_jsonl: Path) -> None:
    spec = SourceSpec(path=str(docs_jsonl))
    first = source_fingerprint(spec)
    assert source_fingerprint(spec) == first
    docs_jsonl.write_text(docs_jsonl.read_text() + json.dumps({"text": "more"}) + "\n")
    assert source_fingerprint(spec) != first


def test_large_sources_are_fingerprinted_by_size_and_mtime(
    docs_jsonl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from datamodules import sources

    spec = SourceSpec(path=str(docs_jsonl))
    small = source_fingerprint(spec)
    os.utime(docs_jsonl, ns=(1, 1))
    assert source_fingerprint(spec) == small  # content unchanged: same fingerprint
    monkeypatch.setattr(sources, "_CONTENT_HASH_LIMIT", 0)
    large = source_fingerprint(spec)
    assert large != small
    os.utime(docs_jsonl, ns=(2, 2))
    assert source_fingerprint(spec) != large
