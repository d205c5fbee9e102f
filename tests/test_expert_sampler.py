"""The mixing batch sampler: per-batch shares, epoch coverage, determinism and the DDP split."""

from __future__ import annotations

import numpy as np
import pytest

from ask_the_expert.utils.errors import SuiteError
from datamodules.mixing import MixingBatchSampler, batches_per_epoch

SUBSET = np.arange(0, 120)  # dataset positions of subset images
REST = np.arange(1000, 1700)


@pytest.mark.parametrize(("rho", "batch_size"), [(0.5, 16), (0.8, 32), (0.3, 10), (1.0, 8), (0.0, 8)])
def test_every_batch_has_the_configured_share(rho: float, batch_size: int) -> None:
    sampler = MixingBatchSampler(SUBSET, REST, batch_size, rho, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == batches_per_epoch(len(SUBSET), batch_size, rho)
    want = round(rho * batch_size)
    for batch in batches:
        assert len(batch) == batch_size
        assert np.isin(batch, SUBSET).sum() == want
        assert np.isin(batch, np.concatenate([SUBSET, REST])).all()
    share = np.isin(np.concatenate(batches), SUBSET).mean()
    assert abs(share - rho) <= 0.5 / batch_size + 1e-12  # only rounding separates the share from rho


def test_an_epoch_shows_every_subset_image_about_once() -> None:
    draw = MixingBatchSampler(SUBSET, REST, 16, 0.5, seed=1).global_draw()
    counts = np.bincount(draw[np.isin(draw, SUBSET)], minlength=len(SUBSET))
    assert counts.min() >= 1 and counts.max() <= 2  # ceil() wraps around at most once
    # The rest pool is sampled without replacement until it is exhausted.
    rest = draw[np.isin(draw, REST)]
    assert len(np.unique(rest)) == len(rest)


def test_the_draw_depends_on_seed_and_epoch_only() -> None:
    a = MixingBatchSampler(SUBSET, REST, 16, 0.5, seed=7, epoch=2)
    b = MixingBatchSampler(SUBSET, REST, 16, 0.5, seed=7, epoch=2)
    assert list(a) == list(b)
    assert list(a) != list(MixingBatchSampler(SUBSET, REST, 16, 0.5, seed=8, epoch=2))
    b.set_epoch(3)
    assert list(a) != list(b)
    a.set_epoch(3)
    assert list(a) == list(b)


@pytest.mark.parametrize("rho", [0.5, 0.75])
def test_two_ranks_cover_the_single_process_draw_exactly_once(rho: float) -> None:
    single = MixingBatchSampler(SUBSET, REST, 8, rho, seed=5, epoch=1)
    assert len(single) % 2 == 0  # so that the 2-rank draw has the same length
    ranks = [list(MixingBatchSampler(SUBSET, REST, 8, rho, seed=5, epoch=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) // 2
    union = sorted(tuple(b) for b in ranks[0] + ranks[1])
    assert union == sorted(tuple(b) for b in single)
    # No draw slot twice or lost: the multiset of positions is the single-process one.
    flat = np.sort(np.concatenate([np.concatenate(r) for r in ranks]))
    assert np.array_equal(flat, np.sort(np.concatenate(list(single))))


def test_ranks_pad_to_equal_length_by_extending_the_draw() -> None:
    single = MixingBatchSampler(SUBSET, REST, 16, 0.5, seed=2)  # 15 batches: odd
    assert len(single) % 2 == 1
    ranks = [MixingBatchSampler(SUBSET, REST, 16, 0.5, seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == (len(single) + 1) // 2
    # The longer draw starts with the single-process draw.
    assert np.array_equal(ranks[0].global_draw()[: len(single)], single.global_draw())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": 1.5}, "rho"),
        ({"rho": -0.1}, "rho"),
        ({"rest": []}, "empty"),
        ({"subset": []}, "no training images"),
        ({"rank": 2, "num_replicas": 2}, "rank"),
    ],
)
def test_bad_sampler_settings_raise(kwargs: dict, message: str) -> None:
    args = {"subset": SUBSET, "rest": REST, "batch_size": 8, "rho": 0.5, **kwargs}
    with pytest.raises(SuiteError, match=message):
        MixingBatchSampler(**args)
