"""Data: sources → tokenized stores → packed rows → mixture and global-step order → batches.

The synthetic world lives in `datamodules.world` (imported on its own).
"""

from common.errors import AdaptLMError, ConfigError, DataError
from datamodules.packing import (
    IGNORE_INDEX,
    KeyedBatches,
    PackedDataset,
    PackedRows,
    PackingStats,
    collate_rows,
)
from datamodules.pretraining import PretrainingDataModule
from datamodules.sampler import (
    GlobalStepBatchSampler,
    Mixture,
    ResumableDataLoader,
    SampleKey,
    TrainerProgress,
    validate_ratios,
)
from datamodules.sources import ReadStats, SourceSpec, as_source_spec, read_documents
from datamodules.store import StoreStats, TokenizedStore, store_fingerprint

__all__ = [
    "IGNORE_INDEX",
    "AdaptLMError",
    "ConfigError",
    "DataError",
    "GlobalStepBatchSampler",
    "KeyedBatches",
    "Mixture",
    "PackedDataset",
    "PackedRows",
    "PackingStats",
    "PretrainingDataModule",
    "ReadStats",
    "ResumableDataLoader",
    "SampleKey",
    "SourceSpec",
    "StoreStats",
    "TokenizedStore",
    "TrainerProgress",
    "as_source_spec",
    "collate_rows",
    "read_documents",
    "store_fingerprint",
    "validate_ratios",
]
