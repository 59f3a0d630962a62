"""The cache key of what is exported once from a GGUF file (its tokenizer, its dequantized weights).

The file is not hashed (98 MB for SmolLM2-135M): its name, size and modification time identify it,
so a reinstalled package gets a fresh export, which is only seconds of work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def gguf_file_fingerprint(gguf_path: Path, version: int, **settings: Any) -> str:
    """A short fingerprint of `gguf_path` (name, size, modification time), the transformers version
    that reads it, the exporter's `version` and its `settings` (e.g. the dtype)."""
    import transformers

    stat = gguf_path.stat()
    payload = {
        "name": gguf_path.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "transformers": transformers.__version__,
        "version": version,
        **settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["gguf_file_fingerprint"]
