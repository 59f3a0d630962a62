"""Tokenized store: contents, caching by fingerprint, and crash safety."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datamodules import store as store_module
from datamodules.sources import SourceSpec
from datamodules.store import TokenizedStore, store_fingerprint
from tests.datamodules.conftest import DOCS


@pytest.fixture
def tokenize_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the batch size of every tokenizer call made by store builds."""
    calls: list[int] = []
    original = store_module._tokenize_batch

    def counting(tokenizer: Any, texts: list[str]) -> list[list[int]]:
        calls.append(len(texts))
        return original(tokenizer, texts)

    monkeypatch.setattr(store_module, "_tokenize_batch", counting)
    return calls


def test_document_already_ending_with_eos_gets_no_second_eos(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    chat = "Question: Where was Alice Varen born? Answer: Orlin.<|endoftext|>"
    path = write_jsonl("chat.jsonl", [{"text": chat}, {"text": DOCS[0]}])
    store = TokenizedStore.get_or_build(SourceSpec(path=str(path)), tiny_tokenizer, tmp_path / "c")
    eos = tiny_tokenizer.eos_token_id
    first, second = store.document(0).tolist(), store.document(1).tolist()
    assert first == tiny_tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert first[-1] == eos and first[-2] != eos
    assert second == tiny_tokenizer(DOCS[0], add_special_tokens=False)["input_ids"] + [eos]


def test_store_contents_match_direct_tokenization(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("s.jsonl", [{"text": DOCS[0]}, {"text": "  "}, {"text": DOCS[1]}])
    store = TokenizedStore.get_or_build(SourceSpec(path=str(path)), tiny_tokenizer, tmp_path / "c")
    eos = tiny_tokenizer.eos_token_id
    expected = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in DOCS[:2]]
    assert store.num_documents == 2
    assert [store.document(i).tolist() for i in range(2)] == expected
    assert store.tokens.dtype == np.uint32
    assert store.offsets.tolist() == [0, len(expected[0]), len(expected[0]) + len(expected[1])]
    assert store.stats.documents == 2 and store.stats.skipped_empty == 1
    assert store.stats.tokens == sum(map(len, expected))
    manifest = json.loads((store.directory / "manifest.json").read_text())
    assert manifest["counts"] == {"documents": 2, "skipped_empty": 1, "tokens": store.num_tokens}
    assert store.directory.name == manifest["fingerprint"] == store.fingerprint


def test_second_build_does_not_retokenize(
    tiny_tokenizer: Any, docs_jsonl: Path, tmp_path: Path, tokenize_calls: list[int]
) -> None:
    spec = SourceSpec(path=str(docs_jsonl))
    first = TokenizedStore.get_or_build(spec, tiny_tokenizer, tmp_path / "c")
    assert tokenize_calls == [len(DOCS)]
    mtime = (first.directory / "tokens.bin").stat().st_mtime_ns
    second = TokenizedStore.get_or_build(spec, tiny_tokenizer, tmp_path / "c")
    assert tokenize_calls == [len(DOCS)]
    assert second.directory == first.directory
    assert (second.directory / "tokens.bin").stat().st_mtime_ns == mtime
    assert np.array_equal(second.tokens, first.tokens)
    assert TokenizedStore.lookup(spec, tiny_tokenizer, tmp_path / "c") is not None


def test_fingerprint_changes_with_source_settings_and_tokenizer(
    tiny_tokenizer: Any, tiny_tokenizer_dir: Path, write_jsonl: Callable[..., Path]
) -> None:
    from transformers import AutoTokenizer

    path = write_jsonl("f.jsonl", [{"text": "a", "body": "b"}])
    base = store_fingerprint(SourceSpec(path=str(path)), tiny_tokenizer)
    assert store_fingerprint(SourceSpec(path=str(path), name="renamed"), tiny_tokenizer) == base
    assert store_fingerprint(SourceSpec(path=str(path), kind="sample"), tiny_tokenizer) == base
    assert store_fingerprint(SourceSpec(path=str(path), text_field="body"), tiny_tokenizer) != base

    other = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert store_fingerprint(SourceSpec(path=str(path)), other) == base
    other.add_tokens(["<|new|>"])
    assert store_fingerprint(SourceSpec(path=str(path)), other) != base

    write_jsonl("f.jsonl", [{"text": "a changed", "body": "b"}])
    assert store_fingerprint(SourceSpec(path=str(path)), tiny_tokenizer) != base


def test_changed_source_rebuilds(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path, tokenize_calls: list[int]
) -> None:
    path = write_jsonl("r.jsonl", [{"text": "first version"}])
    one = TokenizedStore.get_or_build(SourceSpec(path=str(path)), tiny_tokenizer, tmp_path / "c")
    write_jsonl("r.jsonl", [{"text": "second version"}, {"text": "and more"}])
    two = TokenizedStore.get_or_build(SourceSpec(path=str(path)), tiny_tokenizer, tmp_path / "c")
    assert len(tokenize_calls) == 2
    assert one.directory != two.directory and two.num_documents == 2


def test_crash_during_build_leaves_nothing_loadable(
    tiny_tokenizer: Any,
    docs_jsonl: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tokenize_calls: list[int],
) -> None:
    cache = tmp_path / "c"
    spec = SourceSpec(path=str(docs_jsonl))
    real_save = np.save

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(store_module.np, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        TokenizedStore.get_or_build(spec, tiny_tokenizer, cache)
    assert list(cache.iterdir()) == []  # no final store, temp dir removed
    assert TokenizedStore.lookup(spec, tiny_tokenizer, cache) is None

    monkeypatch.setattr(store_module.np, "save", real_save)
    store = TokenizedStore.get_or_build(spec, tiny_tokenizer, cache)
    assert store.num_documents == len(DOCS)
    assert len(tokenize_calls) == 2
    assert [p.name for p in cache.iterdir()] == [store.fingerprint]


def test_crash_while_writing_the_manifest(
    tiny_tokenizer: Any, docs_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "c"
    spec = SourceSpec(path=str(docs_jsonl))
    real_write_text = Path.write_text

    def crash_on_manifest(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith("manifest"):
            real_write_text(self, '{"version": 1, "finger')  # half-written
            raise KeyboardInterrupt
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        TokenizedStore.get_or_build(spec, tiny_tokenizer, cache)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    assert TokenizedStore.lookup(spec, tiny_tokenizer, cache) is None
    assert TokenizedStore.get_or_build(spec, tiny_tokenizer, cache).num_documents == len(DOCS)


@pytest.mark.parametrize("damage", ["no_manifest", "truncated_tokens", "bad_offsets", "garbage"])
def test_damaged_store_is_rebuilt(
    damage: str,
    tiny_tokenizer: Any,
    docs_jsonl: Path,
    tmp_path: Path,
    tokenize_calls: list[int],
) -> None:
    """A store left by a hard kill of a non-atomic writer (or damaged later) is never loaded."""
    cache = tmp_path / "c"
    spec = SourceSpec(path=str(docs_jsonl))
    good = TokenizedStore.get_or_build(spec, tiny_tokenizer, cache)
    reference = np.array(good.tokens)
    directory = good.directory
    del good
    if damage == "no_manifest":
        (directory / "manifest.json").unlink()
    elif damage == "truncated_tokens":
        data = (directory / "tokens.bin").read_bytes()
        (directory / "tokens.bin").write_bytes(data[: len(data) // 2])
    elif damage == "bad_offsets":
        np.save(directory / "offsets.npy", np.array([0, 5, 3], dtype=np.int64))
    else:
        (directory / "manifest.json").write_text("{not json")
    assert TokenizedStore.lookup(spec, tiny_tokenizer, cache) is None
    rebuilt = TokenizedStore.get_or_build(spec, tiny_tokenizer, cache)
    assert len(tokenize_calls) == 2
    assert rebuilt.directory == directory
    assert np.array_equal(rebuilt.tokens, reference)


def test_store_pickles_without_copying_tokens(
    tiny_tokenizer: Any, docs_jsonl: Path, tmp_path: Path
) -> None:
    store = TokenizedStore.get_or_build(SourceSpec(path=str(docs_jsonl)), tiny_tokenizer, tmp_path)
    blob = pickle.dumps(store)
    assert len(blob) < 2000 + store.offsets.nbytes
    copy = pickle.loads(blob)
    assert np.array_equal(copy.tokens, store.tokens)
    assert isinstance(copy.tokens, np.memmap)


def test_store_is_staged_beside_it_and_orphans_of_killed_builders_are_removed(
    tiny_tokenizer: Any, docs_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from common import atomic

    cache = tmp_path / "c"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic._host_tag()
    orphan = cache / f".tmp-0123abcd-{dead.pid}-{host}0000"  # a builder killed mid-write
    orphan.mkdir()
    (orphan / "tokens.bin").write_bytes(b"\0" * 8)
    staged: list[Path] = []
    real_write = TokenizedStore._write.__func__  # type: ignore[attr-defined]

    def recording(cls: type, spec: Any, tokenizer: Any, tmp: Path, fingerprint: str) -> None:
        staged.append(tmp)
        real_write(cls, spec, tokenizer, tmp, fingerprint)

    monkeypatch.setattr(TokenizedStore, "_write", classmethod(recording))
    store = TokenizedStore.get_or_build(SourceSpec(path=str(docs_jsonl)), tiny_tokenizer, cache)
    assert staged and staged[0].parent == cache  # same filesystem as the store, not $TMPDIR
    assert [p.name for p in cache.iterdir()] == [store.fingerprint]
