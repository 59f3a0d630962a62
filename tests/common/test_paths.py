"""`pkg:<module>` paths resolve to an installed package's directory without importing it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from common import ConfigError, resolve_path


def test_plain_paths_are_unchanged() -> None:
    assert resolve_path("/some/dir", key="k") == "/some/dir"
    assert resolve_path("HuggingFaceTB/SmolLM2-135M", key="k") == "HuggingFaceTB/SmolLM2-135M"


def test_package_paths_resolve_without_importing(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "adaptlm_fake_weights"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "model.gguf").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert resolve_path("pkg:adaptlm_fake_weights", key="k") == str(package)
    assert resolve_path("pkg:adaptlm_fake_weights/model.gguf", key="k") == str(
        package / "model.gguf"
    )
    assert "adaptlm_fake_weights" not in sys.modules


def test_missing_package_names_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"^config key 'model.init_args.model_name_or_path': .*not installed"
    ):
        resolve_path("pkg:no_such_package_xyz", key="model.init_args.model_name_or_path")
