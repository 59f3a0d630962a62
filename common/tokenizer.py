"""Loading a tokenizer the same way for the data and the model, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.paths import is_local_path, resolve_path


def load_tokenizer(path: str, *, key: str, gguf_file: str | None = None) -> Any:
    """`AutoTokenizer.from_pretrained(path)` with the pad token defaulting to EOS.

    Args:
        path: A local directory (`save_pretrained` output, or the folder of a GGUF file), a hub id,
            or `pkg:<module>` (an installed package's directory, see `common.paths`).
        key: The config key that named `path`, for the error message.
        gguf_file: A GGUF file inside `path` to read the tokenizer from (transformers' `gguf_file=`).

    Raises:
        ConfigError: naming `key`, when the tokenizer cannot be loaded or has no EOS token.
    """
    from transformers import AutoTokenizer

    path = resolve_path(path, key=key)
    looks_local = is_local_path(path)
    if looks_local and not Path(path).expanduser().exists():
        raise ConfigError(key, f"cannot load tokenizer {path!r}: no such directory")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as error:  # one line naming the key, not a hub traceback
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not looks_local:
            reason = (
                f"{path!r} is not a local directory, and loading it as a hub id failed "
                f"(offline runs need a local path): {reason}"
            )
        raise ConfigError(key, f"cannot load tokenizer {path!r}: {reason}") from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(key, f"tokenizer {path!r} has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
