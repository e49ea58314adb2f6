"""`RoundSampler`: sharding like DistributedSampler(shuffle=False, drop_last=False), skip, laziness."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DistributedSampler

from lead_lightning.sampler import RoundSampler

SUBSET = torch.tensor([17, 3, 42, 8, 0, 99, 5])


def make(ids, rank=0, world_size=1):
    s = RoundSampler(lambda: ids)
    s.set_distributed(rank=rank, world_size=world_size)
    return s


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 13])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_cover_the_subset_with_equal_lengths(n, world_size):
    ids = SUBSET.repeat(2)[:n] + torch.arange(n) * 1000  # distinct ids, not sorted
    shards = [list(make(ids, r, world_size)) for r in range(world_size)]
    lengths = {len(s) for s in shards}
    assert len(lengths) == 1  # every rank has the same number of batches
    assert lengths == {len(make(ids, 0, world_size))}
    flat = [i for s in shards for i in s]
    assert set(flat) == set(ids.tolist())
    total = len(flat)
    assert total == -(-n // world_size) * world_size
    counts = Counter(flat)
    assert sum(c - 1 for c in counts.values()) == total - n  # padding only repeats ids
    assert all(c <= 2 for c in counts.values()) or n < world_size


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_equal_torch_distributed_sampler(world_size):
    """Reference: DistributedSampler over positions, unshuffled, padded by wrapping around."""
    for n in (1, 3, 5, 7, 10):
        ids = SUBSET.repeat(2)[:n]
        for r in range(world_size):
            ref = DistributedSampler(
                range(n), num_replicas=world_size, rank=r, shuffle=False, drop_last=False
            )
            assert list(make(ids, r, world_size)) == [int(ids[p]) for p in ref]
            assert len(make(ids, r, world_size)) == len(ref)


def test_single_process_yields_subset_in_order():
    assert list(make(SUBSET)) == SUBSET.tolist()
    assert len(make(SUBSET)) == 7


def test_docstring_example():
    s = make(torch.tensor([5, 3, 9]), rank=1, world_size=2)
    assert (len(s), list(s)) == (2, [3, 5])


def test_provider_is_read_lazily():
    current = {"ids": torch.tensor([1, 2, 3])}
    s = RoundSampler(lambda: current["ids"])
    assert list(s) == [1, 2, 3]
    current["ids"] = torch.tensor([7, 8])
    assert len(s) == 2 and list(s) == [7, 8]


@pytest.mark.parametrize("world_size", [1, 3])
def test_skip_next_skips_only_the_next_iteration(world_size):
    s = make(SUBSET, rank=0, world_size=world_size)
    full = list(s)
    s.skip_next(2)
    assert len(s) == len(full)  # len is unchanged by a pending skip
    assert list(s) == full[2:]
    assert len(s) == len(full)
    assert list(s) == full  # the skip applied once


def test_skip_next_more_than_shard_and_negative():
    s = make(SUBSET)
    s.skip_next(100)
    assert list(s) == []
    assert list(s) == SUBSET.tolist()
    s.skip_next(-3)
    assert list(s) == SUBSET.tolist()


def test_is_a_distributed_sampler():
    """So that Lightning's `use_distributed_sampler` leaves it alone instead of wrapping it."""
    s = make(SUBSET)
    assert isinstance(s, DistributedSampler)
    s.set_epoch(3)
    assert s.epoch == 3
    assert list(s) == SUBSET.tolist()  # the epoch does not reshuffle


@pytest.mark.parametrize("world_size", [1, 2])
def test_empty_subset(world_size):
    for r in range(world_size):
        s = make(torch.empty(0, dtype=torch.long), r, world_size)
        assert len(s) == 0
        assert list(s) == []


@pytest.mark.parametrize(("rank", "world_size"), [(0, 0), (2, 2), (-1, 2), (5, 4)])
def test_invalid_rank(rank, world_size):
    with pytest.raises(ValueError, match=rf"Invalid rank {rank} for world size {world_size}"):
        RoundSampler(lambda: SUBSET).set_distributed(rank=rank, world_size=world_size)
