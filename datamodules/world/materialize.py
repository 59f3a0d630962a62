"""Write a world to disk once: JSONL splits, the trained tokenizer and `world.json`, cached.

The directory is `cache_dir/world-<fingerprint>/`, the fingerprint hashing the config, the
generator version, the registered splits and the `tokenizers` version. It is written with
`common.atomic.atomic_directory` (staged beside it, fsynced, renamed into place in one step; orphans of
killed builders removed at the next build), so a crash never leaves a directory that a later call
would use; a complete directory is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import atomic_directory
from common.errors import DataError
from common.jsonl import read_jsonl
from datamodules.world.config import WorldConfig
from datamodules.world.generator import (
    GENERATOR_VERSION,
    World,
    build_world,
    generator_source_hash,
)
from datamodules.world.splits import SPLITS, Record, render_split, text_of
from datamodules.world.tokenizer import save_tokenizer, train_tokenizer

logger = logging.getLogger(__name__)

WORLD_JSON = "world.json"
TOKENIZER_DIR = "tokenizer"


def world_fingerprint(config: WorldConfig) -> str:
    """16 hex digits identifying everything that determines the files of a world."""
    import tokenizers

    payload = {
        "config": config.to_dict(),
        "generator_version": GENERATOR_VERSION,
        "generator_source": generator_source_hash(),
        "splits": {name: spec.kind for name, spec in SPLITS.items()},
        "tokenizers": tokenizers.__version__,
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class WorldArtifacts:
    """A materialized world on disk.

    Args:
        root: The world's directory, `cache_dir/world-<fingerprint>`.
        config: The config it was built from.
        fingerprint: The fingerprint in the directory name.
        split_names: Names of the splits written (one `<name>.jsonl` each).
        stats: Per split `{"kind", "records", "tokens"}`, plus `"tokenizer"` and entity counts.
    """

    root: Path
    config: WorldConfig
    fingerprint: str
    split_names: tuple[str, ...]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_dir(self) -> Path:
        """Directory of the tokenizer, loadable with `AutoTokenizer.from_pretrained`."""
        return self.root / TOKENIZER_DIR

    @property
    def world_json(self) -> Path:
        """`world.json`: config, attribute schema, entities and stats."""
        return self.root / WORLD_JSON

    def split_path(self, name: str) -> Path:
        """Path of a split's JSONL file; an unknown name raises `DataError`."""
        if name not in self.split_names:
            raise DataError(
                f"world:{name}", f"unknown world split; available: {', '.join(self.split_names)}"
            )
        return self.root / f"{name}.jsonl"

    def read_split(self, name: str) -> list[Record]:
        """All records of a split."""
        return [record for _, record in read_jsonl(self.split_path(name))]

    def load_tokenizer(self) -> Any:
        """The world tokenizer as a transformers `PreTrainedTokenizerFast`."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_dir)

    def load_world(self) -> World:
        """The `World` object (rebuilt from the config; generation is deterministic)."""
        return build_world(self.config, key_prefix="")


def _is_complete(root: Path, fingerprint: str) -> bool:
    """Whether `root` holds a fully written world with this fingerprint."""
    try:
        meta = json.loads((root / WORLD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if meta.get("fingerprint") != fingerprint:
        return False
    files = [root / f"{name}.jsonl" for name in SPLITS]
    files.append(root / TOKENIZER_DIR / "tokenizer.json")
    return all(f.is_file() for f in files)


def _write_jsonl(path: Path, records: list[Record]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _build(config: WorldConfig, fingerprint: str, directory: Path) -> dict[str, Any]:
    """Write every file of the world into `directory`; `world.json` last. Returns the stats."""
    world = build_world(config, key_prefix="")
    texts: dict[str, list[str]] = {}
    for name, spec in SPLITS.items():
        records = render_split(world, name)
        _write_jsonl(directory / f"{name}.jsonl", records)
        texts[name] = [text_of(r, spec.kind) for r in records]

    corpus = [t for name in SPLITS for t in texts[name]]
    tokenizer = train_tokenizer(corpus, config.vocab_size)
    save_tokenizer(tokenizer, directory / TOKENIZER_DIR)

    stats: dict[str, Any] = {
        "general_entities": len(world.general_entities),
        "domain_entities": len(world.domain_entities),
        "attributes": len(world.attribute_names),
        "tokenizer_vocab_size": tokenizer.get_vocab_size(),
        "splits": {},
    }
    for name, spec in SPLITS.items():
        encodings = tokenizer.encode_batch(texts[name], add_special_tokens=False)
        stats["splits"][name] = {
            "kind": spec.kind,
            "records": len(texts[name]),
            "tokens": sum(len(e.ids) for e in encodings),
        }
    meta = {"fingerprint": fingerprint, "stats": stats, **world.to_dict()}
    with open(directory / WORLD_JSON, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return stats


def _log_stats(root: Path, stats: dict[str, Any], verb: str) -> None:
    splits = stats["splits"]
    logger.info(
        "%s world %s: %d general + %d domain entities x %d attributes, tokenizer vocab %d, "
        "%d tokens in all; %s",
        verb,
        root,
        stats["general_entities"],
        stats["domain_entities"],
        stats["attributes"],
        stats["tokenizer_vocab_size"],
        sum(s["tokens"] for s in splits.values()),
        ", ".join(f"{n}={s['records']} records/{s['tokens']} tokens" for n, s in splits.items()),
    )


def materialize_world(
    config: WorldConfig, cache_dir: str | Path, key_prefix: str = "world"
) -> WorldArtifacts:
    """Build the world of `config` under `cache_dir` (or reuse it) and describe it.

    Safe against crashes and against several processes (e.g. DDP ranks) building the same world
    at once: each builds in its own temporary directory, the first rename wins, the others reuse
    its result. Invalid config values raise `ConfigError` naming `<key_prefix>.<field>`.
    """
    config.validate(key_prefix)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = world_fingerprint(config)
    root = cache_dir / f"world-{fingerprint}"
    split_names = tuple(SPLITS)

    def artifacts() -> WorldArtifacts:
        meta = json.loads((root / WORLD_JSON).read_text(encoding="utf-8"))
        return WorldArtifacts(root, config, fingerprint, split_names, meta["stats"])

    if _is_complete(root, fingerprint):
        result = artifacts()
        _log_stats(root, result.stats, "reusing")
        return result
    # Staged beside `root`, fsynced and renamed into place (an incomplete `root`, which this
    # module never writes, is replaced); a complete world another process published meanwhile is
    # kept. Orphans of killed builders in `cache_dir` are removed first.
    if root.exists():
        logger.warning("world directory %s is incomplete; rebuilding it", root)
    started = time.perf_counter()
    with atomic_directory(root, overwrite=root.exists()) as tmp:
        stats = _build(config, fingerprint, tmp)
    if not _is_complete(root, fingerprint):
        raise DataError(root, "the world directory is incomplete after building it")
    logger.info("world built in %.1f s", time.perf_counter() - started)
    _log_stats(root, stats, "built")
    return WorldArtifacts(root, config, fingerprint, split_names, stats)
