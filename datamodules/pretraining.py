"""`PretrainingDataModule`: sources → tokenized stores → packed rows → mixture → loader."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from common import ConfigError, DataError, load_tokenizer
from datamodules.packing import PackedDataset, PackedRows, collate_rows
from datamodules.sampler import (
    GlobalStepBatchSampler,
    Mixture,
    ResumableDataLoader,
    StagedMixture,
    TrainStage,
    check_one_step_per_epoch,
    validate_ratios,
)
from datamodules.sources import SourceSpec, as_source_spec
from datamodules.store import TokenizedStore

log = logging.getLogger(__name__)

_KEY = "data.init_args"


class PretrainingDataModule(L.LightningDataModule):
    """Pre-training data: documents (and samples) tokenized once, packed into rows, mixed by ratio.

    Every train batch is the dict of `docs/design.md` (`input_ids`, `labels`, `position_ids`,
    `attention_mask`, `sample_index`, `step_weight`, and `loss_weights` under `sample` weighting).
    A sample source with `prompt_field` (SFT with masked prompts) has `labels = -100` on its prompt
    tokens, and its step weights and `loss_weights` count its completion targets only.
    The train order is a seeded permutation
    per epoch cut into global steps of `micro_batch_size × trainer.accumulate_grad_batches ×
    trainer.world_size` samples; the loader's checkpointed state is one global counter, so a resumed
    run (also with another number of ranks, same global batch) sees exactly the same samples.

    Args:
        tokenizer: Tokenizer path or hub id, loaded with `AutoTokenizer` (offline: it must be local
            or cached). The pad token defaults to EOS when the tokenizer has none. Subclasses may
            provide it instead (`resolve_tokenizer_path`).
        train_sources: Training sources. With `ratio`s (all or none, summing to 1) an epoch holds
            `ratio × rows_per_epoch` rows of each source, repeated or subsampled per epoch.
        val_sources: Validation sources by name; one validation loader per name, in this order.
        max_length: Row length in tokens (the model's context; checked against it by the module).
        micro_batch_size: Rows per training micro-batch on each rank.
        val_batch_size: Rows per validation batch; default `micro_batch_size`.
        packing: Pack several documents/samples into each row (`position_ids` restart at every
            document). If false, one document (split into `max_length` chunks) or sample per row,
            padded.
        rows_per_epoch: Rows in one training epoch; default the sum of the sources' natural rows.
        ratios: The train sources' token ratios in `train_sources` order, replacing their own
            `ratio`s: one key for a sweep over the mixture (e.g. `[0.3, 0.1, 0.3, 0.3]`).
        stages: Train in stages over the same train sources (TRAIT's two-stage training): each
            stage gives the sources' token ratios and its optimizer steps (a whole number of
            epochs; the last stage runs to the end). Replaces the sources' `ratio`s and `ratios`
            (leave those unset). A resume inside or across stages is exact: the stage of an epoch
            is fixed by the config. `train_stage_starts()` gives each stage's first step.
        seed: Seed of the epoch order and of the mixture's subsampling.
        num_workers: DataLoader worker processes.
        cache_dir: Directory of the tokenized stores (`<cache_dir>/<fingerprint>/`).
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        train_sources: list[SourceSpec] | None = None,
        val_sources: dict[str, SourceSpec] | None = None,
        max_length: int = 512,
        micro_batch_size: int = 8,
        val_batch_size: int | None = None,
        packing: bool = True,
        rows_per_epoch: int | None = None,
        ratios: list[float] | None = None,
        stages: list[TrainStage] | None = None,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str = ".cache/adaptlm/stores",
    ) -> None:
        super().__init__()
        self._check_int("max_length", max_length, 2)
        self._check_int("micro_batch_size", micro_batch_size, 1)
        if val_batch_size is not None:
            self._check_int("val_batch_size", val_batch_size, 1)
        if rows_per_epoch is not None:
            self._check_int("rows_per_epoch", rows_per_epoch, 1)
        self._check_int("num_workers", num_workers, 0)
        if not train_sources and not val_sources:
            raise ConfigError(f"{_KEY}.train_sources", "give at least one train or val source")
        self.train_sources = [
            as_source_spec(s, f"{_KEY}.train_sources[{i}]")
            for i, s in enumerate(train_sources or [])
        ]
        self.val_sources = {
            str(name): as_source_spec(s, f"{_KEY}.val_sources.{name}")
            for name, s in (val_sources or {}).items()
        }
        if ratios is not None:
            if not isinstance(ratios, (list, tuple)) or len(ratios) != len(self.train_sources):
                raise ConfigError(
                    f"{_KEY}.ratios",
                    f"needs one ratio per train source ({len(self.train_sources)}), got {ratios!r}",
                )
            self.train_sources = [
                replace(spec, ratio=ratio) for spec, ratio in zip(self.train_sources, ratios)
            ]
        self.ratios = validate_ratios(
            [s.ratio for s in self.train_sources],
            f"{_KEY}.ratios" if ratios is not None else f"{_KEY}.train_sources",
        )
        self.stages = self._checked_stages(stages)
        self._tokenizer_arg = tokenizer
        self._max_length = int(max_length)
        self.micro_batch_size = int(micro_batch_size)
        self.val_batch_size = int(val_batch_size or micro_batch_size)
        self.packing = bool(packing)
        self.rows_per_epoch = rows_per_epoch
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.cache_dir = cache_dir
        self._tokenizer: Any = None
        self._tokenizer_path: str | None = None
        self._train_dataset: PackedDataset | None = None
        self._mixture: Mixture | None = None
        self._val_datasets: dict[str, PackedDataset] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        """Per source name: store counts (documents, skipped_empty, tokens), packing counts and,
        for masked prompts, `completion_tokens` (store) and `target_tokens` (rows)."""

    def _checked_stages(self, stages: list[TrainStage] | None) -> list[TrainStage] | None:
        """The stages as `TrainStage`s; they exclude per-source ratios."""
        if stages is None:
            return None
        if self.ratios is not None:
            raise ConfigError(
                f"{_KEY}.stages",
                "give the token ratios per stage only: unset the train sources' `ratio` and "
                "`ratios`",
            )
        checked = []
        for i, stage in enumerate(stages):
            if isinstance(stage, dict):
                unknown = sorted(set(stage) - {"name", "ratios", "steps"})
                if unknown:
                    raise ConfigError(
                        f"{_KEY}.stages[{i}]",
                        f"unknown keys {unknown}; expected name, ratios, steps",
                    )
                stage = TrainStage(
                    name=str(stage.get("name", f"stage{i}")),
                    ratios=tuple(stage.get("ratios") or ()),
                    steps=stage.get("steps"),
                )
            elif not isinstance(stage, TrainStage):
                raise ConfigError(f"{_KEY}.stages[{i}]", f"expected a stage, got {stage!r}")
            checked.append(replace(stage, ratios=tuple(float(r) for r in stage.ratios)))
        if not checked:
            raise ConfigError(f"{_KEY}.stages", "give at least one stage, or leave stages unset")
        return checked

    @staticmethod
    def _check_int(name: str, value: Any, minimum: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{_KEY}.{name}", f"must be an integer >= {minimum}, got {value!r}")

    # -- hooks for subclasses -----------------------------------------------------------------

    def resolve_source(self, spec: SourceSpec) -> SourceSpec:
        """Map a configured source to a readable one (a subclass maps `world:<split>` paths)."""
        return spec

    def resolve_tokenizer_path(self) -> str:
        """The tokenizer path or hub id (a subclass may build one)."""
        if not self._tokenizer_arg:
            raise ConfigError(f"{_KEY}.tokenizer", "a tokenizer path or hub id is required")
        return self._tokenizer_arg

    # -- properties ---------------------------------------------------------------------------

    @property
    def tokenizer_path(self) -> str:
        """Where the tokenizer is loaded from (linkable to the model)."""
        if self._tokenizer_path is None:
            self._tokenizer_path = str(self.resolve_tokenizer_path())
        return self._tokenizer_path

    @property
    def tokenizer(self) -> Any:
        """The loaded `PreTrainedTokenizerBase` (pad token = EOS when missing)."""
        if self._tokenizer is None:
            tokenizer = load_tokenizer(self.tokenizer_path, key=f"{_KEY}.tokenizer")
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def max_length(self) -> int:
        """Row length in tokens."""
        return self._max_length

    @property
    def val_set_names(self) -> list[str]:
        """Names of the validation loaders, in `val_dataloader()` order."""
        return list(self.val_sources)

    @property
    def train_source_names(self) -> list[str]:
        """Names of the train sources, in `train_sources` order (a batch's `source_index` indexes it)."""
        return [spec.name or spec.display_name for spec in self.train_sources]

    @property
    def train_dataset(self) -> PackedDataset:
        """All train rows (after `setup`)."""
        if self._train_dataset is None:
            raise RuntimeError("call setup('fit') first")
        return self._train_dataset

    @property
    def mixture(self) -> Mixture | StagedMixture:
        """The per-epoch row selection (after `setup`)."""
        if self._mixture is None:
            raise RuntimeError("call setup('fit') first")
        return self._mixture

    # -- building -----------------------------------------------------------------------------

    def _resolved(self, spec: SourceSpec, key: str, name: str | None = None) -> SourceSpec:
        """The spec after `resolve_source`, named after the configured one (or `name`)."""
        resolved = self.resolve_source(replace(spec))
        if resolved.name is None:
            resolved = replace(resolved, name=spec.name or name or spec.display_name)
        resolved.validate(key)
        return resolved

    def _resolved_sources(self) -> tuple[list[SourceSpec], dict[str, SourceSpec]]:
        """Train and val sources after `resolve_source` (val sources are named by their key)."""
        train = [
            self._resolved(s, f"{_KEY}.train_sources[{i}]")
            for i, s in enumerate(self.train_sources)
        ]
        val = {
            name: self._resolved(s, f"{_KEY}.val_sources.{name}", name)
            for name, s in self.val_sources.items()
        }
        return train, val

    def _store(self, spec: SourceSpec) -> TokenizedStore:
        return TokenizedStore.get_or_build(spec, self.tokenizer, Path(self.cache_dir))

    def prepare_data(self) -> None:
        """Tokenize every source once (called on one process per node; the stores are cached)."""
        train, val = self._resolved_sources()
        for spec in [*train, *val.values()]:
            self._store(spec)

    def _packed(self, spec: SourceSpec) -> PackedRows:
        store = self._store(spec)
        try:
            rows = PackedRows(
                store,
                self.max_length,
                kind=spec.kind,
                packing=self.packing,
                overlong_policy=spec.overlong_policy,
                loss_weighting=spec.loss_weighting,
                name=spec.display_name,
            )
        except ValueError as err:
            raise DataError(spec.path, str(err)) from None
        stats = {**asdict(store.stats), **asdict(rows.stats)}
        if store.completion_tokens is not None:  # masked prompts (`prompt_field`)
            stats["completion_tokens"] = store.completion_tokens
            stats["target_tokens"] = int(rows.num_target_tokens.sum())
        self.stats[spec.display_name] = stats
        return rows

    @staticmethod
    def _check_one_weighting(train: list[SourceSpec]) -> None:
        """All train sources share one `loss_weighting` (one step has one reduction)."""
        first = train[0].loss_weighting
        for i, spec in enumerate(train):
            if spec.loss_weighting != first:
                raise ConfigError(
                    f"{_KEY}.train_sources[{i}].loss_weighting",
                    f"all train sources must use the same loss weighting; source 0 uses "
                    f"{first!r}, this one {spec.loss_weighting!r}",
                )

    def setup(self, stage: str | None = None) -> None:
        """Load (or build) the stores and lay out rows; the train mixture for `fit`."""
        train, val = self._resolved_sources()
        if stage in (None, "fit") and self._train_dataset is None and train:
            self._check_one_weighting(train)
            parts = [self._packed(spec) for spec in train]
            self._train_dataset = PackedDataset(parts, self.tokenizer.pad_token_id)
            names = [s.display_name for s in train]
            if self.stages is None:
                self._mixture = Mixture(
                    self._train_dataset.source_sizes,
                    self.ratios,
                    total_rows=self.rows_per_epoch,
                    seed=self.seed,
                    names=names,
                )
            else:
                self._mixture = StagedMixture(
                    self._train_dataset.source_sizes,
                    self.stages,
                    total_rows=self.rows_per_epoch,
                    seed=self.seed,
                    names=names,
                    key=f"{_KEY}.stages",
                )
        if stage in (None, "fit", "validate", "test") and not self._val_datasets:
            for name, spec in val.items():
                self._val_datasets[name] = PackedDataset(
                    [self._packed(spec)], self.tokenizer.pad_token_id
                )
        for name, stat in self.stats.items():
            log.info("source %s: %s", name, stat)

    # -- loaders ------------------------------------------------------------------------------

    def _trainer_layout(self) -> tuple[int, int, int, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 1, 0, None
        return (
            int(trainer.accumulate_grad_batches),
            int(trainer.world_size),
            int(trainer.global_rank),
            trainer,
        )

    def train_sampler(
        self, accumulate_grad_batches: int = 1, world_size: int = 1, rank: int = 0
    ) -> GlobalStepBatchSampler:
        """The global-step sampler of the train rows for this layout."""
        if not self.train_sources:
            raise ConfigError(f"{_KEY}.train_sources", "no train sources configured")
        dataset, mixture = self.train_dataset, self.mixture
        sampler = GlobalStepBatchSampler(
            dataset.row_weights,
            micro_batch_size=self.micro_batch_size,
            accumulate_grad_batches=accumulate_grad_batches,
            world_size=world_size,
            rank=rank,
            seed=self.seed,
            epoch_samples=mixture.epoch_samples,
            num_samples=mixture.total_rows,
        )
        check_one_step_per_epoch(
            sampler, mixture.total_rows, "rows", "more data or rows_per_epoch", _KEY
        )
        if isinstance(mixture, StagedMixture):
            mixture.bind(sampler.steps_per_epoch)
        return sampler

    def train_stage_starts(self) -> list[tuple[str, int]]:
        """`(stage name, first optimizer step)` of every stage for the trainer's layout; one
        unnamed stage from step 0 without `stages`."""
        if self.stages is None:
            return [("", 0)]
        mixture = self.mixture
        assert isinstance(mixture, StagedMixture)
        accumulate, world, rank, _ = self._trainer_layout()
        self.train_sampler(accumulate, world, rank)  # binds the stages to this layout
        return [(stage.name, start) for stage, start in zip(self.stages, mixture.start_steps())]

    def train_dataloader(self) -> ResumableDataLoader:
        """This rank's loader in the global-step order, with a resumable state."""
        accumulate, world, rank, trainer = self._trainer_layout()
        sampler = self.train_sampler(accumulate, world, rank)
        return ResumableDataLoader(
            self.train_dataset,
            sampler,
            progress=trainer,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One sequential loader per validation source, in `val_set_names` order."""
        return [
            DataLoader(
                self._val_datasets[name],
                batch_size=self.val_batch_size,
                shuffle=False,
                collate_fn=collate_rows,
                num_workers=self.num_workers,
                pin_memory=torch.cuda.is_available(),
            )
            for name in self.val_set_names
        ]

    def test_dataloader(self) -> list[DataLoader]:
        """`python -m experiments test` evaluates on the validation sources (same loaders)."""
        return self.val_dataloader()


__all__ = ["PretrainingDataModule"]
