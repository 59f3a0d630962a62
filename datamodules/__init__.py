"""Data: sources → tokenized stores → packed rows → mixture and global-step order → batches.

The synthetic world lives in `datamodules.world` (imported on its own).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AdaptLMError": "common.errors",
    "ConfigError": "common.errors",
    "DataError": "common.errors",
    "IGNORE_INDEX": "datamodules.packing",
    "KeyedBatches": "datamodules.packing",
    "PackedDataset": "datamodules.packing",
    "PackedRows": "datamodules.packing",
    "PackingStats": "datamodules.packing",
    "collate_rows": "datamodules.packing",
    "PretrainingDataModule": "datamodules.pretraining",
    "GlobalStepBatchSampler": "datamodules.sampler",
    "Mixture": "datamodules.sampler",
    "ResumableDataLoader": "datamodules.sampler",
    "SampleKey": "datamodules.sampler",
    "TrainerProgress": "datamodules.sampler",
    "validate_ratios": "datamodules.sampler",
    "ReadStats": "datamodules.sources",
    "SourceSpec": "datamodules.sources",
    "as_source_spec": "datamodules.sources",
    "read_documents": "datamodules.sources",
    "StoreStats": "datamodules.store",
    "TokenizedStore": "datamodules.store",
    "store_fingerprint": "datamodules.store",
}
"""Each public name → the module that defines it, imported on first use: the data commands that
need no training stack (`datamodules.selection`, its datatrove workers) start without Lightning."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
