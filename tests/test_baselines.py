"""Baselines as `RoundSelectionCallback` subclasses: choice, walk, round size, state, and a real fit."""

from __future__ import annotations

import pickle

import pytest
import torch
from _toy import ToyDataModule, ToyDataset, ToyModule, make_trainer

from lead_lightning import PoolIndex
from lead_lightning.base import RoundSelectionCallback
from lead_lightning.baselines import (
    FullSelection,
    IterativeReinference,
    RandomSelection,
    StaticIFDSelection,
    StaticLossSelection,
    choose_subset,
    round_size,
)
from lead_lightning.config import FullConfig, RandomConfig


def make_pool(n: int = 40) -> PoolIndex:
    ifd = torch.linspace(0.1, 1.3, n)  # ids with ifd > 1 are degenerate
    return PoolIndex(
        clusters=torch.arange(n) % 4, groups=(torch.arange(n) // 4) % 2, iu0=torch.arange(n).float(), ifd=ifd
    )


def test_full_walks_the_whole_pool_before_repeating():
    cb = FullSelection(make_pool(), FullConfig(sample_rate=7, seed=3))
    seen = []
    for r in range(6):  # 42 >= 40: every id once, then the next shuffle starts
        cb.round = r
        sub = cb.draw()
        assert sub.numel() == 7
        seen += sub.tolist()
    assert sorted(seen[:40]) == list(range(40))
    assert cb.budget == 40


def test_walk_is_deterministic_and_seeded():
    a = RandomSelection(make_pool(), budget=0.5, sample_rate=5, seed=1)
    b = RandomSelection(make_pool(), RandomConfig(budget=0.5, sample_rate=5, seed=1))
    c = RandomSelection(make_pool(), budget=0.5, sample_rate=5, seed=2)
    assert torch.equal(a.current_subset(), b.current_subset())
    assert not torch.equal(a.candidates, c.candidates)
    assert a.candidates.numel() == 20 and set(a.current_subset().tolist()) <= set(a.candidates.tolist())


def test_static_choices():
    pool = make_pool()
    valid = torch.nonzero(pool.ifd <= 1).flatten()
    assert choose_subset(pool, "static_ifd", 5, seed=0).tolist() == sorted(valid[-5:].tolist())
    assert StaticIFDSelection(pool, budget=5).candidates.tolist() == sorted(valid[-5:].tolist())
    assert StaticLossSelection(pool, budget=5).candidates.tolist() == [35, 36, 37, 38, 39]  # highest iu0


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="method"):
        choose_subset(make_pool(), "best", 3, seed=0)
    with pytest.raises(ValueError, match="budget"):
        RandomSelection(make_pool(), budget=1000)
    with pytest.raises(TypeError, match="Unknown setting"):
        RandomSelection(make_pool(), budgt=0.1)
    with pytest.raises(TypeError, match="`config` must be a `RandomConfig`"):
        RandomSelection(make_pool(), FullConfig())


def test_round_size_matches_lead_draw():
    from lead_lightning.engine import LeadSelector

    pool = make_pool()
    sel = LeadSelector(pool, budget=1.0, sample_rate=0.3, seed=0)
    assert round_size(pool, 0.3, 1) == sel.current_subset().numel() == 4  # 2 groups x ceil(0.3 * 5)
    assert round_size(pool, 12, 1) == 12
    assert RandomSelection(pool, budget=1.0, sample_rate=0.3).per_round == 4


@pytest.mark.parametrize("cls", [FullSelection, RandomSelection, StaticIFDSelection, StaticLossSelection])
def test_baseline_trains_each_drawn_id_once_per_round_and_resumes_state(cls, tmp_path):
    ds = ToyDataset(n=40)
    pool = PoolIndex(clusters=torch.arange(40) % 4, iu0=(ds.y**2).float(), ifd=torch.rand(40))
    kw = {} if cls is FullSelection else {"budget": 0.5}
    cb = cls(pool, sample_rate=6, seed=0, max_rounds=3, **kw)
    assert isinstance(cb, RoundSelectionCallback) and cb.state_key.startswith(cls.__name__)
    module = ToyModule()
    trainer = make_trainer(tmp_path, [cb], max_epochs=10)
    trainer.fit(module, ToyDataModule(ds))
    assert len(cb.history) == 3 and cb.stop_reason == "max_rounds=3 reached"  # stopped by the horizon
    assert [h["n_selected"] for h in cb.history] == [6, 6, 6]
    assert all(h["n_missed"] == 0 and h["method"] == cb.method for h in cb.history)
    trained = torch.tensor([i for b in module.trained for i in b])
    assert trained.numel() == 18 and int(cb.seen().sum()) == trained.unique().numel()
    if cls is not FullSelection:
        assert set(trained.tolist()) <= set(cb.candidates.tolist())
    state = cb.state_dict()
    clone = cls(pool, sample_rate=6, seed=0, max_rounds=3, **kw)
    clone.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert clone.history == cb.history and torch.equal(clone.seen(), cb.seen())
    with pytest.raises(ValueError, match="another pool"):
        cls(PoolIndex(clusters=torch.arange(41) % 4, iu0=torch.ones(41), ifd=torch.rand(41))).load_state_dict(
            state
        )


def test_iterative_reinference_rescores_every_round_and_counts_forward_passes(tmp_path):
    ds = ToyDataset(n=40)
    pool = PoolIndex(clusters=torch.arange(40) % 4, iu0=(ds.y**2).float())
    dm = ToyDataModule(ds)
    scored: list[int] = []

    def score(module, batch):  # noqa: ANN001, ANN202 - the toy module's per-example loss
        scored.append(int(batch["ids"].numel()))
        return (module.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2

    cb = IterativeReinference(pool, budget=1.0, sample_rate=8, max_uses=1, seed=0, dataset=ds, score=score)
    module = ToyModule()
    trainer = make_trainer(tmp_path, [cb], max_epochs=3)
    trainer.fit(module, dm)
    assert len(cb.history) == 3
    # one pass over the pool before each round; none after the last
    assert sum(scored) == 3 * 40 == cb.forward_passes
    assert [h["forward_passes"] for h in cb.history] == [40, 40, 40]
    trained = torch.tensor([i for b in module.trained for i in b])
    assert trained.numel() == 24 and trained.unique().numel() == 24  # max_uses=1: never twice
    # each round trained the highest-loss eligible examples under the model of that moment
    assert cb.history[0]["n_selected"] == 8
