"""The deterministic, resumable training order (see `docs/design.md`).

- `Mixture` decides which rows make up an epoch: every source contributes `ratio × total_rows` rows,
  repeated (upsampled) or subsampled with an RNG seeded by `(seed, epoch, source)`.
- `GlobalStepBatchSampler` permutes the epoch's rows with an RNG seeded by `(seed, epoch)` and cuts
  the order into global steps of `G = micro_batch_size × accumulate_grad_batches × world_size`
  samples; rank `r`, micro-batch `m` of step `k` takes `order[k·G + m·world·B + r·B : … + B]`.
  A step's `step_weight` sums the epoch's row weights (`GlobalStepBatchSampler.epoch_row_weights`:
  the same every epoch, or per epoch from an `epoch_weights` callable or a subclass).
- `ResumableDataLoader` keeps one global counter `{"epoch", "consumed_samples"}` derived from the
  trainer's progress, so a resumed run (any world size with the same `G`) sees exactly the samples
  of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.errors import ConfigError
from datamodules.packing import KeyedBatches, PackedDataset, collate_rows

log = logging.getLogger(__name__)

SampleKey = tuple[int, float]
"""`(sample_index, step_weight)`: a row of the dataset and the total loss weight of the whole
optimizer step it belongs to (all micro-batches, all ranks; see "Reductions" in `docs/design.md`)."""

_RATIO_TOLERANCE = 1e-6


def validate_ratios(
    ratios: Sequence[float | None], key: str = "data.init_args.train_sources"
) -> list[float] | None:
    """Check mixture ratios: all or none given, non-negative, summing to 1 (within 1e-6).

    Returns the ratios as floats, or None when none is given. `key` is the config key of the list.
    """
    given = [r is not None for r in ratios]
    if not any(given):
        return None
    if not all(given):
        missing = given.index(False)
        raise ConfigError(
            f"{key}[{missing}].ratio",
            "give a ratio for every train source or for none "
            f"(ratios given: {[r for r in ratios]})",
        )
    values = [float(r) for r in ratios]  # type: ignore[arg-type]
    for i, r in enumerate(values):
        if not math.isfinite(r) or r < 0:
            raise ConfigError(
                f"{key}[{i}].ratio", f"ratios must be finite and non-negative, got {r}"
            )
    total = sum(values)
    if abs(total - 1.0) > _RATIO_TOLERANCE:
        raise ConfigError(
            f"{key}[{len(values) - 1}].ratio",
            f"ratios must sum to 1, got {total:g} ({' + '.join(f'{r:g}' for r in values)})",
        )
    return values


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to `total`, each the floor or ceiling of `weights × total`."""
    raw = weights * total
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


class Mixture:
    """Which global rows form each epoch, for sources concatenated in a `PackedDataset`.

    Args:
        source_sizes: Rows of each source (its natural size).
        ratios: Token-level ratios (all rows have the same length, so token ratio = row ratio), or
            None to take every source in its natural proportion.
        total_rows: Rows per epoch; default: the sum of the natural sizes.
        seed: Seed of the per-epoch subsampling.
        names: Source names for the log.
    """

    def __init__(
        self,
        source_sizes: Sequence[int],
        ratios: Sequence[float] | None = None,
        *,
        total_rows: int | None = None,
        seed: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        self.sizes = np.asarray(source_sizes, dtype=np.int64)
        if self.sizes.ndim != 1 or len(self.sizes) == 0 or np.any(self.sizes <= 0):
            raise ValueError(f"every source needs at least one row, got sizes {list(self.sizes)}")
        self.offsets = np.zeros(len(self.sizes) + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=self.offsets[1:])
        self.seed = int(seed)
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.sizes))]
        natural = int(self.sizes.sum())
        self.total_rows = int(total_rows) if total_rows is not None else natural
        if self.total_rows <= 0:
            raise ValueError(f"total_rows must be positive, got {self.total_rows}")
        if ratios is None and self.total_rows == natural:
            self.counts = self.sizes.copy()
        else:
            weights = (
                np.asarray(ratios, dtype=np.float64) if ratios is not None else self.sizes / natural
            )
            self.counts = _largest_remainder(weights, self.total_rows)
        self.repetition = self.counts / self.sizes
        for name, size, count, rep in zip(self.names, self.sizes, self.counts, self.repetition):
            log.info(
                "mixture: source %s contributes %d of %d rows per epoch from %d rows "
                "(repetition factor %.3f)",
                name,
                count,
                self.total_rows,
                size,
                rep,
            )

    @property
    def is_identity(self) -> bool:
        """True when every epoch is every row exactly once."""
        return bool(np.array_equal(self.counts, self.sizes))

    def epoch_samples(self, epoch: int) -> np.ndarray:
        """Global row ids of epoch `epoch` (`int64[total_rows]`, grouped by source, unshuffled)."""
        if self.is_identity:
            return np.arange(self.total_rows, dtype=np.int64)
        parts = []
        for i, (size, count) in enumerate(zip(self.sizes, self.counts)):
            full, rest = divmod(int(count), int(size))
            rows = [np.tile(np.arange(size, dtype=np.int64), full)]
            if rest:
                rng = np.random.default_rng([self.seed, int(epoch), 1, i])
                rows.append(np.sort(rng.choice(int(size), size=rest, replace=False)))
            parts.append(np.concatenate(rows) + self.offsets[i])
        return np.concatenate(parts)


@dataclass(frozen=True)
class TrainStage:
    """One stage of a staged training run: the train sources' token ratios for its steps.

    Args:
        name: Short name, logged as the stage (e.g. `knowledge`, `synthetic`).
        ratios: Token ratios of the train sources in `train_sources` order (0 leaves a source out
            of the stage), summing to 1.
        steps: Optimizer steps of the stage, a whole number of epochs (`rows_per_epoch` rows each,
            so that a stage starts at an epoch boundary and a resume inside or across stages is
            exact). None for the last stage: it runs to the end of training.
    """

    name: str
    ratios: tuple[float, ...]
    steps: int | None = None


class StagedMixture:
    """A training run in stages over the same train sources: stage k's `Mixture` for its epochs.

    Every stage selects the same number of rows per epoch (`total_rows`), so the sampler's
    layout never changes; a stage covers a whole number of epochs, so the stage of an epoch is a
    pure function of the epoch and the loader's resumable state (epoch, consumed samples) needs
    nothing more. The epochs of a stage are known once the optimizer step's size is
    (`bind(steps_per_epoch)`, called by the data module when it builds the sampler).

    Args:
        source_sizes: Rows of each source.
        stages: The stages, in order; all but the last give `steps`.
        total_rows: Rows per epoch; default the sum of the natural sizes.
        seed: Seed of each stage's subsampling.
        names: Source names for the log.
        key: Config key of the stages, for errors.
    """

    def __init__(
        self,
        source_sizes: Sequence[int],
        stages: Sequence[TrainStage],
        *,
        total_rows: int | None = None,
        seed: int = 0,
        names: Sequence[str] | None = None,
        key: str = "data.init_args.stages",
    ) -> None:
        if not stages:
            raise ConfigError(key, "give at least one stage")
        self.key = key
        self.stages = list(stages)
        for i, stage in enumerate(self.stages):
            last = i == len(self.stages) - 1
            if stage.steps is None and not last:
                raise ConfigError(f"{key}[{i}].steps", "every stage but the last needs its steps")
            if stage.steps is not None and (isinstance(stage.steps, bool) or stage.steps < 1):
                raise ConfigError(f"{key}[{i}].steps", f"must be >= 1, got {stage.steps!r}")
            if len(stage.ratios) != len(source_sizes):
                raise ConfigError(
                    f"{key}[{i}].ratios",
                    f"needs one ratio per train source ({len(source_sizes)}), got "
                    f"{list(stage.ratios)}",
                )
            validate_ratios(list(stage.ratios), f"{key}[{i}].ratios")
        self.mixtures = []
        for stage in self.stages:
            log.info("stage %s:", stage.name)
            self.mixtures.append(
                Mixture(source_sizes, stage.ratios, total_rows=total_rows, seed=seed, names=names)
            )
        self.total_rows = self.mixtures[0].total_rows
        self._start_epochs: list[int] | None = None
        self._steps_per_epoch: int | None = None

    def bind(self, steps_per_epoch: int) -> None:
        """Fix each stage's epochs for optimizer steps of `steps_per_epoch` per epoch."""
        starts, epoch = [], 0
        for i, stage in enumerate(self.stages):
            starts.append(epoch)
            if stage.steps is None:
                continue
            epochs, rest = divmod(stage.steps, steps_per_epoch)
            if rest or epochs == 0:
                raise ConfigError(
                    f"{self.key}[{i}].steps",
                    f"is {stage.steps}, not a whole number of epochs of {steps_per_epoch} "
                    f"optimizer steps ({self.total_rows} rows per epoch): use a multiple of "
                    f"{steps_per_epoch} or change rows_per_epoch",
                )
            epoch += epochs
        self._start_epochs, self._steps_per_epoch = starts, int(steps_per_epoch)

    def _starts(self) -> list[int]:
        if self._start_epochs is None:
            raise RuntimeError("StagedMixture.bind(steps_per_epoch) must be called first")
        return self._start_epochs

    def stage_of_epoch(self, epoch: int) -> int:
        """Index of the stage that `epoch` belongs to (the last stage runs on forever)."""
        starts = self._starts()
        return max(i for i, start in enumerate(starts) if start <= epoch)

    def start_steps(self) -> list[int]:
        """The first optimizer step of every stage."""
        starts = self._starts()
        return [start * int(self._steps_per_epoch or 0) for start in starts]

    def epoch_samples(self, epoch: int) -> np.ndarray:
        """Global row ids of epoch `epoch`: its stage's mixture."""
        return self.mixtures[self.stage_of_epoch(epoch)].epoch_samples(epoch)


class GlobalStepBatchSampler(DistributedSampler):
    """Yields this rank's micro-batches of `SampleKey`s in the global-step order of the design.

    Use it as the `sampler` of a `DataLoader` with `batch_size=None` over `KeyedBatches` (as
    `ResumableDataLoader` does). It subclasses `DistributedSampler` because it is one: it shards by
    rank itself, and Lightning leaves distributed samplers alone instead of injecting its own.

    Args:
        row_weights: `float64` total loss weight of every dataset row (`PackedDataset.row_weights`:
            its target-token count for `token` weighting, completion tokens only for masked
            prompts); a step's `step_weight` is their sum over the step's rows. With
            `epoch_weights` it only gives the number of rows (and the weights of nothing else).
        micro_batch_size: Rows per micro-batch (`B`).
        accumulate_grad_batches: Micro-batches per optimizer step on each rank.
        world_size: Number of ranks.
        rank: This rank.
        seed: Seed of the per-epoch permutation.
        epoch_samples: `epoch -> int64[num_samples]` rows of an epoch (a `Mixture`); default: every
            row once.
        num_samples: Samples per epoch (required with `epoch_samples`).
        shuffle: Permute each epoch (default); False keeps the `epoch_samples` order.
        epoch_weights: `epoch -> float64[len(row_weights)]`, the row weights of one epoch, for data
            whose weights change from epoch to epoch (DiSC: 1 for a document whose draw at that
            epoch keeps a split, else 0); must be a pure function of the epoch, so a resumed run
            gets the same step weights. Default: `row_weights` at every epoch. See
            `epoch_row_weights`, the hook a subclass may override instead.
    """

    def __init__(
        self,
        row_weights: np.ndarray | Sequence[float],
        *,
        micro_batch_size: int,
        accumulate_grad_batches: int = 1,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch_samples: Callable[[int], np.ndarray] | None = None,
        num_samples: int | None = None,
        shuffle: bool = True,
        epoch_weights: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        torch.utils.data.Sampler.__init__(self)
        for name, value in (
            ("micro_batch_size", micro_batch_size),
            ("accumulate_grad_batches", accumulate_grad_batches),
            ("world_size", world_size),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.row_weights = np.asarray(row_weights, dtype=np.float64)
        self.epoch_weights = epoch_weights
        self.micro_batch_size = int(micro_batch_size)
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.num_replicas = self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = True
        self.epoch = 0
        self.start_sample = 0
        if epoch_samples is None:
            n = len(self.row_weights)
            self._epoch_samples: Callable[[int], np.ndarray] = lambda _e: np.arange(n)
            self.epoch_length = n
        else:
            if num_samples is None:
                raise ValueError("num_samples is required with epoch_samples")
            self._epoch_samples = epoch_samples
            self.epoch_length = int(num_samples)
        self.global_batch_size = (
            self.micro_batch_size * self.accumulate_grad_batches * self.world_size
        )
        self.steps_per_epoch = self.epoch_length // self.global_batch_size
        self.dropped_per_epoch = self.epoch_length - self.steps_per_epoch * self.global_batch_size
        self.num_samples = (
            self.steps_per_epoch * self.accumulate_grad_batches * self.micro_batch_size
        )
        self.total_size = self.steps_per_epoch * self.global_batch_size
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None
        if self.dropped_per_epoch:
            log.info(
                "sampler: dropping the last %d of %d samples of every epoch (fewer than one global "
                "batch of %d)",
                self.dropped_per_epoch,
                self.epoch_length,
                self.global_batch_size,
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration."""
        self.epoch = int(epoch)

    def set_start(self, consumed_samples: int) -> None:
        """Start the next iteration after `consumed_samples` samples of the epoch's order."""
        self.start_sample = int(consumed_samples)

    def epoch_row_weights(self, epoch: int) -> np.ndarray:
        """`float64[rows]`: the loss weight of every row at `epoch`, whose sums over a step's rows
        are the `step_weight`s. The per-epoch hook: `epoch_weights(epoch)` when given, else
        `row_weights`. A subclass may override it; like `epoch_weights` it must be a pure function
        of `epoch`. Called once per epoch (the sampler keeps the arrays of its latest epoch)."""
        if self.epoch_weights is None:
            return self.row_weights
        return self.epoch_weights(epoch)

    def _epoch_arrays(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        row_weights = np.asarray(self.epoch_row_weights(epoch), dtype=np.float64)
        if row_weights.shape != self.row_weights.shape:
            raise ValueError(
                f"the row weights of epoch {epoch} have shape {row_weights.shape}, expected "
                f"{self.row_weights.shape} (one per row)"
            )
        samples = np.asarray(self._epoch_samples(epoch), dtype=np.int64)
        if len(samples) != self.epoch_length:
            raise ValueError(f"epoch_samples returned {len(samples)}, expected {self.epoch_length}")
        if self.shuffle:
            samples = samples[
                np.random.default_rng([self.seed, int(epoch)]).permutation(len(samples))
            ]
        usable = samples[: self.total_size]
        step_weights = row_weights[usable].reshape(-1, self.global_batch_size).sum(axis=1)
        empty = int(np.count_nonzero(step_weights == 0))
        if empty:
            log.warning(
                "sampler: %d of %d optimizer steps of epoch %d have no target token (e.g. "
                "prompt-only samples); their loss and gradient are 0",
                empty,
                len(step_weights),
                epoch,
            )
        self._cache = (epoch, samples, step_weights)
        return samples, step_weights

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All sample indices of `epoch` in order (including the dropped tail)."""
        return self._epoch_arrays(epoch)[0].copy()

    def step_weights(self, epoch: int) -> np.ndarray:
        """`float64[steps_per_epoch]`: total loss weight (`step_weight`) of every global step."""
        return self._epoch_arrays(epoch)[1].copy()

    def iter_epoch(self, epoch: int, start_sample: int = 0) -> Iterator[list[SampleKey]]:
        """This rank's micro-batches of `epoch` from sample `start_sample` on (a multiple of G)."""
        order, step_weights = self._epoch_arrays(epoch)
        g, b, w = self.global_batch_size, self.micro_batch_size, self.world_size
        if start_sample % g:
            warnings.warn(
                f"resuming at sample {start_sample}, not a multiple of the global batch {g}: "
                "optimizer steps will not line up with the interrupted run",
                stacklevel=2,
            )
        first_step, offset = divmod(start_sample, g)
        return self._iterate(order, step_weights, first_step, offset, g, b, w)

    def _iterate(
        self,
        order: np.ndarray,
        step_weights: np.ndarray,
        first_step: int,
        offset: int,
        g: int,
        b: int,
        w: int,
    ) -> Iterator[list[SampleKey]]:
        for step in range(first_step, self.steps_per_epoch):
            base = step * g + (offset if step == first_step else 0)
            weight = float(step_weights[step])
            for m in range(self.accumulate_grad_batches):
                lo = step * g + m * w * b + self.rank * b
                if lo < base:
                    continue
                yield [(int(i), weight) for i in order[lo : lo + b]]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        # Arguments are bound now, so a later set_epoch() cannot change a running iteration.
        return self.iter_epoch(self.epoch, self.start_sample)

    def __len__(self) -> int:
        """Micro-batches of a whole epoch on this rank."""
        return self.steps_per_epoch * self.accumulate_grad_batches


class TrainerProgress(Protocol):
    """What the loader reads from the trainer (a `lightning.Trainer` satisfies it)."""

    @property
    def global_step(self) -> int: ...

    @property
    def current_epoch(self) -> int: ...


class ResumableDataLoader(DataLoader):
    """The training loader: a `DataLoader` over whole micro-batches with a resumable state.

    Its state is one global counter, `{"epoch", "consumed_samples"}`, computed from the trainer's
    progress (`start + (trainer.global_step - global step when iteration began) × G`), not from how
    far the sampler has run ahead for workers and prefetching. It is the same on every rank.
    Lightning saves it with every checkpoint and loads it on resume before iterating; the next
    iteration then starts at `consumed_samples` if the epoch matches, else at the epoch's start.
    Without a trainer (`progress=None`) the counter follows the micro-batches delivered, and the
    epoch is the sampler's (`set_epoch`).

    Args:
        dataset: The rows: a `PackedDataset`, or any dataset indexed by the sampler's keys.
        sampler: The global-step order of this rank.
        progress: The trainer (anything with `global_step` and `current_epoch`), or None.
        collate_fn: Turns the list of `dataset[key]` items of one micro-batch into the batch
            (picklable, for workers); default `collate_rows`, the batch dict of `docs/design.md`.
        num_workers: Worker processes that build batches.
        pin_memory: Pin batches in page-locked memory (CUDA).
        **kwargs: Further `DataLoader` arguments (not `batch_size`, `sampler`).
    """

    def __init__(
        self,
        dataset: PackedDataset | Dataset,
        sampler: GlobalStepBatchSampler,
        *,
        progress: TrainerProgress | None = None,
        collate_fn: Callable[[list[Any]], Any] = collate_rows,
        num_workers: int = 0,
        pin_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("persistent_workers"):
            raise ValueError("ResumableDataLoader does not support persistent_workers")
        super().__init__(
            KeyedBatches(dataset),
            sampler=sampler,
            batch_size=None,
            collate_fn=collate_fn,
            num_workers=num_workers,
            pin_memory=pin_memory,
            **kwargs,
        )
        self.progress = progress
        self._pending: dict[str, int] | None = None
        self._epoch: int | None = None
        self._start = 0
        self._start_step = 0
        self._delivered = 0

    @property
    def global_sampler(self) -> GlobalStepBatchSampler:
        sampler = self.sampler
        assert isinstance(sampler, GlobalStepBatchSampler)
        return sampler

    def _current_epoch(self) -> int:
        if self.progress is not None:
            return int(self.progress.current_epoch)
        return self.global_sampler.epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        sampler = self.global_sampler
        epoch, start = self._current_epoch(), 0
        if self._pending is not None:
            state, self._pending = self._pending, None
            if int(state["epoch"]) == epoch:
                start = int(state["consumed_samples"])
            else:
                log.info(
                    "loader state is for epoch %s, starting epoch %d from its beginning",
                    state["epoch"],
                    epoch,
                )
        if start >= sampler.total_size:  # the saved epoch was complete: go on with the next one
            epoch, start = epoch + 1, 0
        self._epoch, self._start, self._delivered = epoch, start, 0
        self._start_step = int(self.progress.global_step) if self.progress is not None else 0
        sampler.set_epoch(epoch)
        sampler.set_start(start)
        if start:
            log.info("resuming epoch %d at sample %d", epoch, start)
        iterator = super().__iter__()
        return iterator if self.progress is not None else self._count(iterator)

    def _count(
        self, iterator: Iterator[dict[str, torch.Tensor]]
    ) -> Iterator[dict[str, torch.Tensor]]:
        for batch in iterator:
            self._delivered += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """`{"epoch", "consumed_samples"}`, plus `global_batch_size` and `seed` to check on load."""
        sampler = self.global_sampler
        if self._pending is not None:
            return dict(self._pending)
        if self._epoch is None:
            epoch, consumed = self._current_epoch(), 0
        else:
            if self.progress is not None:
                steps = int(self.progress.global_step) - self._start_step
            else:
                steps = self._delivered // sampler.accumulate_grad_batches
            epoch = self._epoch
            consumed = min(self._start + steps * sampler.global_batch_size, sampler.total_size)
        return {
            "epoch": epoch,
            "consumed_samples": consumed,
            "global_batch_size": sampler.global_batch_size,
            "seed": sampler.seed,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume from `state_dict` at the next iteration."""
        if "epoch" not in state_dict or "consumed_samples" not in state_dict:
            raise ValueError(f"not a ResumableDataLoader state: {state_dict}")
        sampler = self.global_sampler
        saved_g = state_dict.get("global_batch_size", sampler.global_batch_size)
        if saved_g != sampler.global_batch_size:
            log.warning(
                "resuming with global batch %d, the checkpoint used %d: the same samples are "
                "skipped, but optimizer steps do not line up with the interrupted run",
                sampler.global_batch_size,
                saved_g,
            )
        if state_dict.get("seed", sampler.seed) != sampler.seed:
            log.warning(
                "resuming with seed %d, the checkpoint used %s: the order differs",
                sampler.seed,
                state_dict.get("seed"),
            )
        self._pending = {k: int(v) for k, v in state_dict.items()}


def check_one_step_per_epoch(
    sampler: Any, units: int, unit_name: str, remedy: str, key: str = "data.init_args"
) -> None:
    """A `ConfigError` on `micro_batch_size` when an epoch of `units` cannot fill one optimizer step
    of `sampler` (its `steps_per_epoch` is 0); `remedy` ends the message (e.g. "more data")."""
    if sampler.steps_per_epoch > 0:
        return
    raise ConfigError(
        f"{key}.micro_batch_size",
        f"an epoch has {units} {unit_name} but one optimizer step needs "
        f"{sampler.global_batch_size} (micro_batch_size {sampler.micro_batch_size} × "
        f"accumulate_grad_batches {sampler.accumulate_grad_batches} × world_size "
        f"{sampler.world_size}); use smaller batches or {remedy}",
    )


__all__ = [
    "GlobalStepBatchSampler",
    "Mixture",
    "ResumableDataLoader",
    "SampleKey",
    "StagedMixture",
    "TrainStage",
    "TrainerProgress",
    "check_one_step_per_epoch",
    "validate_ratios",
]
