"""YAML with `!include`: a config value taken from another YAML file, for values jsonargparse cannot
load from a path itself.

jsonargparse already accepts a path to a YAML file for a subclass value (`model:`, `data:`, a
logger, the callback list, an optimizer) and for dataclass groups, resolved relative to the file
that names it. A plain mapping such as `model.init_args.model_config` (a `dict`) is not loadable
that way; `model_config: !include ../model/tiny_llama.yaml` is. The path is relative to the file
holding the tag (jsonargparse loads every config file from within its directory), or to the
working directory for a value given on the command line.

The loader is jsonargparse's own YAML loader (same float and timestamp rules) plus the tag; the CLI
selects it with `parser_mode="adaptlm_yaml"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonargparse import get_loader, set_loader

MODE = "adaptlm_yaml"


def _base_loader() -> type:
    from jsonargparse._loaders_dumpers import get_yaml_default_loader

    return get_yaml_default_loader()


class _IncludeLoader(_base_loader()):  # type: ignore[misc]
    """jsonargparse's YAML loader with the `!include <path>` tag."""


def _include(loader: yaml.Loader, node: yaml.Node) -> Any:
    relative = loader.construct_scalar(node)
    path = Path(loader.base_dir, relative) if loader.base_dir else Path(relative)
    if not path.is_file():
        raise yaml.YAMLError(f"!include {relative}: no such file ({path.resolve()})")
    return load_yaml(path.read_text(encoding="utf-8"), base_dir=path.parent)


_IncludeLoader.add_constructor("!include", _include)


def load_yaml(text: str, base_dir: str | Path | None = None) -> Any:
    """Load YAML `text`, resolving `!include` relative to `base_dir` (default: the working directory)."""
    loader = _IncludeLoader(text)
    loader.base_dir = str(base_dir) if base_dir is not None else None
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _load_value(text: str) -> Any:
    """The parser-mode loader: `load_yaml`, keeping jsonargparse's reading of `{a, b}`-like strings."""
    value = load_yaml(text)
    if isinstance(value, dict) and value and all(v is None for v in value.values()):
        if len(value) == 1 and text.strip() == next(iter(value)) + ":":
            return text
        keys = set(text.strip(" {}").replace(" ", "").split(","))
        if keys == set(value):
            return text
    return value


def register() -> str:
    """Register the `adaptlm_yaml` parser mode with jsonargparse (idempotent); return its name."""
    try:
        get_loader(MODE)
    except KeyError:
        set_loader(MODE, _load_value, exceptions=(yaml.YAMLError,))
    return MODE
