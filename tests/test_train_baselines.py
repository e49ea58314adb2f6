"""Baselines of `lead-train` (full / random / static_ifd) and the per-round count they share with LEAD."""

from __future__ import annotations

import pytest
import torch

from lead_lightning import PoolIndex
from lead_lightning.app.baselines import BaselineSelectionCallback, choose_subset
from lead_lightning.app.builders import round_size


def make_pool(n: int = 40) -> PoolIndex:
    ifd = torch.linspace(0.1, 1.3, n)  # ids with ifd > 1 are degenerate
    return PoolIndex(
        clusters=torch.arange(n) % 4, groups=(torch.arange(n) // 4) % 2, iu0=torch.ones(n), ifd=ifd
    )


def test_full_walks_the_whole_pool_before_repeating():
    cb = BaselineSelectionCallback(make_pool(), "full", budget=0.1, per_round=7, seed=3)
    seen = []
    for r in range(6):  # 42 >= 40: every id once, then the next shuffle starts
        cb.round = r
        sub = cb.current_subset()
        assert sub.numel() == 7
        seen += sub.tolist()
    assert sorted(seen[:40]) == list(range(40))
    assert cb.budget == 40


def test_walk_is_deterministic_and_seeded():
    a = BaselineSelectionCallback(make_pool(), "random", budget=0.5, per_round=5, seed=1)
    b = BaselineSelectionCallback(make_pool(), "random", budget=0.5, per_round=5, seed=1)
    c = BaselineSelectionCallback(make_pool(), "random", budget=0.5, per_round=5, seed=2)
    assert torch.equal(a.current_subset(), b.current_subset())
    assert not torch.equal(a.subset, c.subset)
    assert a.subset.numel() == 20 and set(a.current_subset().tolist()) <= set(a.subset.tolist())


def test_static_ifd_takes_the_highest_valid_ifd():
    pool = make_pool()
    chosen = choose_subset(pool, "static_ifd", 5, seed=0)
    valid = torch.nonzero(pool.ifd <= 1).flatten()
    assert chosen.tolist() == sorted(valid[-5:].tolist())


def test_unknown_method_and_bad_budget_are_errors():
    with pytest.raises(ValueError, match="method"):
        BaselineSelectionCallback(make_pool(), "best", budget=0.1, per_round=2)
    with pytest.raises(ValueError, match="budget"):
        BaselineSelectionCallback(make_pool(), "random", budget=1000, per_round=2)


def test_round_size_matches_lead_draw():
    from lead_lightning.engine import LeadSelector

    pool = make_pool()
    sel = LeadSelector(pool, budget=1.0, sample_rate=0.3, seed=0)
    assert round_size(pool, 0.3, 1) == sel.current_subset().numel() == 4  # 2 groups x ceil(0.3 * 5)
    assert round_size(pool, 12, 1) == 12
