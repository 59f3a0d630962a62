"""`materialize_world`: files, stats, caching, determinism and crash safety."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import atomic as atomic_module
from common.errors import DataError
from datamodules.world import (
    SPLITS,
    WorldArtifacts,
    materialize_world,
    render_split,
    world_fingerprint,
)
from datamodules.world import materialize as materialize_module
from datamodules.world.splits import text_of

from .conftest import file_bytes, small_config


def test_layout_and_stats(small_artifacts: WorldArtifacts, tmp_path: Path) -> None:
    root = small_artifacts.root
    assert root.name == f"world-{world_fingerprint(small_config())}"
    assert small_artifacts.split_names == tuple(SPLITS)
    tokenizer = small_artifacts.load_tokenizer()
    meta = json.loads(small_artifacts.world_json.read_text())
    assert meta["fingerprint"] == small_artifacts.fingerprint
    assert meta["config"] == small_config().to_dict()
    assert len(meta["entities"]) == 16
    assert meta["stats"] == small_artifacts.stats
    assert small_artifacts.stats["tokenizer_vocab_size"] == len(tokenizer)
    for name in SPLITS:
        records = small_artifacts.read_split(name)
        lines = small_artifacts.split_path(name).read_text().splitlines()
        assert len(lines) == len(records) == small_artifacts.stats["splits"][name]["records"]
        assert records or name.startswith("task_"), f"{name} is empty"
        texts = [text_of(r, SPLITS[name].kind) for r in records]
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        assert tokens == small_artifacts.stats["splits"][name]["tokens"]
    world = small_artifacts.load_world()
    assert render_split(world, "qa_eval_domain") == small_artifacts.read_split("qa_eval_domain")
    with pytest.raises(DataError, match="world:bogus: unknown world split"):
        small_artifacts.split_path("bogus")


def test_reuses_a_complete_world(
    small_artifacts: WorldArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("a complete world must not be rebuilt")

    monkeypatch.setattr(materialize_module, "_build", fail)
    again = materialize_world(small_config(), small_artifacts.root.parent)
    assert again.root == small_artifacts.root and again.stats == small_artifacts.stats


def test_same_config_same_bytes_other_seed_other_files(
    small_artifacts: WorldArtifacts, tmp_path: Path
) -> None:
    twin = materialize_world(small_config(), tmp_path / "a")
    assert file_bytes(twin.root) == file_bytes(small_artifacts.root)
    other = materialize_world(small_config(seed=99), tmp_path / "b")
    assert other.fingerprint != small_artifacts.fingerprint
    for name in SPLITS:
        assert other.split_path(name).read_bytes() != small_artifacts.split_path(name).read_bytes()


def test_same_bytes_in_another_process(small_artifacts: WorldArtifacts, tmp_path: Path) -> None:
    """Nothing depends on process state (hash seeds, Rust hash maps in the BPE trainer)."""
    script = (
        "import sys\n"
        "from datamodules.world import WorldConfig, materialize_world\n"
        f"materialize_world(WorldConfig(**{small_config().to_dict()!r}), sys.argv[1])\n"
    )
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "7"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=root, env=env)
    other = tmp_path / small_artifacts.root.name
    assert file_bytes(other) == file_bytes(small_artifacts.root)


def test_crash_mid_write_leaves_nothing_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = []
    real_write = materialize_module._write_jsonl

    def crash_on_third_split(path: Path, records: list) -> None:
        if len(written) == 2:
            path.write_text(json.dumps(records[0]) + "\n")  # a partial file, then the crash
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, records)

    monkeypatch.setattr(materialize_module, "_write_jsonl", crash_on_third_split)
    with pytest.raises(KeyboardInterrupt):
        materialize_world(small_config(), tmp_path)
    assert list(tmp_path.iterdir()) == [], "the temporary directory is removed, no world appears"

    monkeypatch.setattr(materialize_module, "_write_jsonl", real_write)
    built = materialize_world(small_config(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [built.root.name]
    assert len(built.read_split("general_qa")) == built.stats["splits"]["general_qa"]["records"]


def test_incomplete_world_directory_is_rebuilt_and_stale_temps_removed(tmp_path: Path) -> None:
    fingerprint = world_fingerprint(small_config())
    partial = tmp_path / f"world-{fingerprint}"
    partial.mkdir()
    (partial / "general_documents.jsonl").write_text('{"text": "half')
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs: its staging directory is an orphan
    host = atomic_module._host_tag()
    stale = tmp_path / f".tmp-world-{fingerprint}-{child.pid}-{host}dead"
    stale.mkdir()
    (stale / "general_qa.jsonl").write_text("")
    fresh = tmp_path / f".tmp-world-{fingerprint}-{os.getpid()}-{host}beef"  # a live builder
    fresh.mkdir()

    built = materialize_world(small_config(), tmp_path)
    assert built.root == partial
    assert len(built.read_split("general_documents")) == 8 * 3
    assert not stale.exists(), "a leftover of a killed build is cleaned"
    assert fresh.exists(), "a build that may still be running is left alone"


def test_lost_race_reuses_the_winner(
    small_artifacts: WorldArtifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process renames its complete world into place while this one builds."""
    real_build = materialize_module._build
    winner = tmp_path / f"world-{small_artifacts.fingerprint}"

    def build_and_lose(config, fingerprint, directory):  # type: ignore[no-untyped-def]
        stats = real_build(config, fingerprint, directory)
        shutil.copytree(small_artifacts.root, winner)
        return stats

    monkeypatch.setattr(materialize_module, "_build", build_and_lose)
    result = materialize_world(small_config(), tmp_path)
    assert result.root == winner
    assert [p.name for p in tmp_path.iterdir()] == [winner.name]


def test_default_world_sizes(default_artifacts: WorldArtifacts) -> None:
    stats = default_artifacts.stats
    assert (stats["general_entities"], stats["domain_entities"]) == (100, 50)
    splits = stats["splits"]
    assert splits["general_documents"]["records"] == 100 * 5
    assert splits["domain_documents"]["records"] == 50 * 5
    assert splits["general_qa"]["records"] == splits["general_qa_plain"]["records"] == 50 * 6 * 4
    assert splits["qa_eval_general"]["records"] == splits["qa_eval_domain"]["records"]
    assert splits["qa_eval_domain"]["records"] == 50 * 6 * 2
    assert stats["tokenizer_vocab_size"] <= 2048
    pretraining = sum(
        splits[n]["tokens"] for n in ("general_documents", "general_qa_plain", "web_pretraining")
    )
    assert 80_000 < pretraining < 200_000, "small enough for minutes of CPU training"


def test_fingerprint_follows_the_generator_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template edit without a version bump still invalidates cached worlds."""
    before = world_fingerprint(small_config())
    monkeypatch.setattr(materialize_module, "generator_source_hash", lambda: "edited")
    assert world_fingerprint(small_config()) != before
