"""Mixtures and the global-step order: ratios, determinism, rank layouts, token counts."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from common.errors import ConfigError
from datamodules.sampler import GlobalStepBatchSampler, Mixture, validate_ratios

KEY = "data.init_args.train_sources"


# -- ratios and mixtures ----------------------------------------------------------------------


def test_validate_ratios() -> None:
    assert validate_ratios([None, None]) is None
    assert validate_ratios([0.25, 0.75]) == [0.25, 0.75]
    assert validate_ratios([1 / 3, 1 / 3, 1 / 3]) is not None
    assert validate_ratios([0.0, 1.0]) == [0.0, 1.0]


@pytest.mark.parametrize(
    ("ratios", "key", "text"),
    [
        ([0.5, None], f"{KEY}[1].ratio", "give a ratio for every train source or for none"),
        ([1.2, -0.2], f"{KEY}[1].ratio", "ratios must be finite and non-negative, got -0.2"),
        ([0.5, 0.3], f"{KEY}[1].ratio", "ratios must sum to 1, got 0.8"),
        ([0.5, 0.5 + 2e-6], f"{KEY}[1].ratio", "ratios must sum to 1"),
        ([float("nan"), 1.0], f"{KEY}[0].ratio", "ratios must be finite and non-negative, got nan"),
    ],
)
def test_bad_ratios_name_the_key(ratios: list, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_ratios(ratios, KEY)
    assert info.value.key == key
    assert str(info.value).startswith(f"config key '{key}': {text}")


def test_mixture_counts_follow_ratios(caplog: pytest.LogCaptureFixture) -> None:
    sizes = [10, 40, 7]
    with caplog.at_level(logging.INFO, logger="datamodules.sampler"):
        mix = Mixture(sizes, [0.5, 0.2, 0.3], total_rows=101, seed=3, names=["a", "b", "c"])
    assert mix.counts.sum() == 101
    assert np.all(np.abs(mix.counts - np.array([0.5, 0.2, 0.3]) * 101) < 1)
    assert "source a contributes 51 of 101 rows per epoch from 10 rows" in caplog.text
    assert "repetition factor 5.100" in caplog.text
    for epoch in range(3):
        rows = mix.epoch_samples(epoch)
        assert len(rows) == 101
        per_source = np.bincount(np.searchsorted(mix.offsets, rows, side="right") - 1)
        assert per_source.tolist() == mix.counts.tolist()
        # Upsampled source a (10 rows, 51 wanted): every row 5 times, one row a 6th time.
        a_rows = np.bincount(rows[rows < 10], minlength=10)
        assert sorted(a_rows.tolist()) == [5] * 9 + [6]
        # Downsampled source b (40 rows, 20 wanted): distinct rows.
        b_rows = rows[(rows >= 10) & (rows < 50)]
        assert len(np.unique(b_rows)) == len(b_rows) == 20
    assert np.array_equal(
        mix.epoch_samples(1),
        Mixture(sizes, [0.5, 0.2, 0.3], total_rows=101, seed=3).epoch_samples(1),
    )
    assert not np.array_equal(mix.epoch_samples(0), mix.epoch_samples(1))


def test_mixture_default_is_every_row_once() -> None:
    mix = Mixture([4, 6])
    assert mix.is_identity and mix.total_rows == 10
    assert mix.epoch_samples(5).tolist() == list(range(10))
    natural = Mixture([4, 6], total_rows=5)
    assert natural.counts.tolist() == [2, 3]


# -- sampler ----------------------------------------------------------------------------------


def run_epoch(sampler: GlobalStepBatchSampler, epoch: int = 0, start: int = 0) -> list[list]:
    sampler.set_epoch(epoch)
    sampler.set_start(start)
    return list(sampler)


def global_steps(
    tokens: np.ndarray, micro: int, accumulate: int, world: int, seed: int = 0, epoch: int = 0
) -> list[list[tuple[int, int]]]:
    """Gather every rank's micro-batches into global steps (sets of keys in design order)."""
    per_rank = [
        run_epoch(
            GlobalStepBatchSampler(
                tokens,
                micro_batch_size=micro,
                accumulate_grad_batches=accumulate,
                world_size=world,
                rank=r,
                seed=seed,
            ),
            epoch,
        )
        for r in range(world)
    ]
    steps = []
    n_steps = len(per_rank[0]) // accumulate
    for k in range(n_steps):
        keys = []
        for m in range(accumulate):
            for r in range(world):
                keys.extend(per_rank[r][k * accumulate + m])
        steps.append(keys)
    return steps


@pytest.fixture
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(3, 50, size=37)


def test_sampler_is_deterministic_and_seeded(tokens: np.ndarray) -> None:
    def order(seed: int, epoch: int) -> list:
        s = GlobalStepBatchSampler(tokens, micro_batch_size=4, seed=seed)
        return run_epoch(s, epoch)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_ranks_cover_disjoint_slices(tokens: np.ndarray) -> None:
    world, micro, accumulate = 3, 2, 2
    samplers = [
        GlobalStepBatchSampler(
            tokens,
            micro_batch_size=micro,
            accumulate_grad_batches=accumulate,
            world_size=world,
            rank=r,
        )
        for r in range(world)
    ]
    g = micro * accumulate * world
    per_rank = [[i for batch in run_epoch(s) for i, _ in batch] for s in samplers]
    all_indices = [i for indices in per_rank for i in indices]
    assert len(all_indices) == len(set(all_indices)) == (len(tokens) // g) * g
    order = samplers[0].epoch_order(0)
    assert sorted(order.tolist()) == list(range(len(tokens)))
    assert sorted(all_indices) == sorted(order[: len(all_indices)].tolist())
    assert samplers[0].dropped_per_epoch == len(tokens) % g
    # The design's slice: rank r, micro-batch m of step k takes order[k·G + m·world·B + r·B : +B].
    for r, s in enumerate(samplers):
        batches = run_epoch(s)
        assert len(batches) == len(s)
        for j, batch in enumerate(batches):
            k, m = divmod(j, accumulate)
            lo = k * g + m * world * micro + r * micro
            assert [i for i, _ in batch] == order[lo : lo + micro].tolist()


def test_same_global_steps_for_every_layout(tokens: np.ndarray) -> None:
    reference = global_steps(tokens, micro=4, accumulate=1, world=1, epoch=2)
    assert global_steps(tokens, micro=2, accumulate=1, world=2, epoch=2) == reference
    assert global_steps(tokens, micro=1, accumulate=4, world=1, epoch=2) == reference
    assert global_steps(tokens, micro=1, accumulate=2, world=2, epoch=2) == reference


def test_step_weight_is_a_brute_force_sum(tokens: np.ndarray) -> None:
    steps = global_steps(tokens, micro=2, accumulate=3, world=2)
    assert steps
    for keys in steps:
        brute = sum(int(tokens[i]) for i, _ in keys)
        assert {t for _, t in keys} == {brute}


def test_start_offset_resumes_mid_epoch(tokens: np.ndarray) -> None:
    s = GlobalStepBatchSampler(tokens, micro_batch_size=2, accumulate_grad_batches=2)
    full = run_epoch(s, epoch=1)
    assert run_epoch(s, epoch=1, start=3 * 4) == full[3 * 2 :]


def test_epoch_samples_feed_the_order() -> None:
    mix = Mixture([5, 5], [0.8, 0.2], total_rows=20, seed=1)
    tokens = np.arange(10)
    s = GlobalStepBatchSampler(
        tokens, micro_batch_size=5, epoch_samples=mix.epoch_samples, num_samples=mix.total_rows
    )
    for epoch in (0, 1):
        seen = [i for batch in run_epoch(s, epoch) for i, _ in batch]
        assert sorted(seen) == sorted(mix.epoch_samples(epoch).tolist())
        assert sum(i < 5 for i in seen) == 16


def test_sampler_rejects_bad_layouts(tokens: np.ndarray) -> None:
    with pytest.raises(ValueError, match="rank"):
        GlobalStepBatchSampler(tokens, micro_batch_size=1, world_size=2, rank=2)
    with pytest.raises(ValueError, match="micro_batch_size"):
        GlobalStepBatchSampler(tokens, micro_batch_size=0)


def test_epoch_weights_give_per_epoch_step_weights_and_keep_the_order(tokens: np.ndarray) -> None:
    def weights(epoch: int) -> np.ndarray:
        return (np.arange(len(tokens)) % (epoch + 2) == 0).astype(np.float64)

    plain = GlobalStepBatchSampler(tokens, micro_batch_size=2, accumulate_grad_batches=2, seed=4)
    s = GlobalStepBatchSampler(
        tokens, micro_batch_size=2, accumulate_grad_batches=2, seed=4, epoch_weights=weights
    )
    for epoch in (0, 1, 0):
        assert np.array_equal(s.epoch_row_weights(epoch), weights(epoch))
        assert np.array_equal(s.epoch_order(epoch), plain.epoch_order(epoch))
        batches = run_epoch(s, epoch)
        for step in range(len(batches) // 2):
            keys = batches[2 * step] + batches[2 * step + 1]
            assert {w for _, w in keys} == {float(weights(epoch)[[i for i, _ in keys]].sum())}
    assert np.array_equal(s.row_weights, tokens)  # the constructor's weights are left alone


def test_epoch_row_weights_is_the_subclass_hook(tokens: np.ndarray) -> None:
    class Doubled(GlobalStepBatchSampler):
        def epoch_row_weights(self, epoch: int) -> np.ndarray:
            return self.row_weights * (epoch + 1)

    plain = GlobalStepBatchSampler(tokens, micro_batch_size=4)
    doubled = Doubled(tokens, micro_batch_size=4)
    assert np.array_equal(plain.epoch_row_weights(3), tokens)
    assert np.array_equal(doubled.step_weights(1), 2 * plain.step_weights(1))
    bad = GlobalStepBatchSampler(tokens, micro_batch_size=4, epoch_weights=lambda _e: np.ones(3))
    with pytest.raises(ValueError, match="row weights of epoch 0 have shape"):
        bad.step_weights(0)
