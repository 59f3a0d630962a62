"""What every package of adaptlm may import: user-facing errors, the ignore index, tokenizer loading.

Submodules: `common.atomic` (crash-safe files and directories), `common.jsonl` (the validated JSONL
reader), `common.text` (answer normalization for exact match), `common.summary` (score statistics
for manifests). It imports no other adaptlm package (`losses` imports nothing from the project at
all).
"""

from common.errors import AdaptLMError, ConfigError, DataError, find_user_error
from common.paths import resolve_path
from common.tokenizer import load_tokenizer

IGNORE_INDEX = -100
"""Label of a position that carries no loss (PyTorch's and transformers' convention)."""

__all__ = [
    "IGNORE_INDEX",
    "AdaptLMError",
    "ConfigError",
    "DataError",
    "find_user_error",
    "load_tokenizer",
    "resolve_path",
]
