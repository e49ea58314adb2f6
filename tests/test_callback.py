"""Integration tests of LeadSelectionCallback through a real Trainer (CPU, toy regression module)."""

from __future__ import annotations

import pickle

import lightning.pytorch as pl
import pytest
import torch
from _toy import ToyDataModule, ToyDataset, ToyModule, make_trainer
from torch.utils.data import DataLoader

from lead_lightning import LeadSelectionCallback, PoolIndex


class Recorder(pl.Callback):
    """Records, per round, the subset the LEAD callback drew and what the module trained."""

    def __init__(self, lead: LeadSelectionCallback) -> None:
        self.lead = lead
        self.subsets: list[list[int]] = []
        self.trained: list[list[int]] = []
        self.num_batches: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):  # noqa: ANN001
        self.subsets.append(self.lead.current_subset().tolist())
        self.trained.append([])
        self.num_batches.append(int(trainer.num_training_batches))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        self.trained[-1].extend(batch["ids"].tolist())


def uneven_pool(ds: ToyDataset) -> PoolIndex:
    n = len(ds)
    sizes = [20, 50, 70, n - 140]
    clusters = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
    return PoolIndex(clusters=clusters, groups=ds.group, iu0=(ds.y**2).float())


@pytest.mark.parametrize("accumulate", [1, 3])
def test_every_selected_example_trained_exactly_once_per_round(tmp_path, accumulate):
    ds = ToyDataset(n=240)
    cb = LeadSelectionCallback(uneven_pool(ds), budget=0.6, sample_rate=0.3, max_uses=2, seed=3)
    rec = Recorder(cb)
    trainer = make_trainer(tmp_path, [cb, rec], max_epochs=8, accumulate_grad_batches=accumulate)
    trainer.fit(ToyModule(), ToyDataModule(ds, batch_size=7))
    sizes = [len(s) for s in rec.subsets]
    assert len(set(sizes)) > 1, "the test needs rounds of different sizes"
    for subset, trained, nb in zip(rec.subsets, rec.trained, rec.num_batches, strict=False):
        assert sorted(trained) == sorted(subset)  # each selected example once, nothing else
        assert nb == -(-len(subset) // 7)  # the fit loop saw this round's length, not a stale one
    assert [h["n_selected"] for h in cb.history] == sizes
    # uses count exactly the rounds an example was trained in
    counts = torch.zeros(len(ds), dtype=torch.int64)
    for t in rec.trained:
        counts[torch.tensor(t)] += 1
    assert torch.equal(cb.state.uses.to(torch.int64), counts)
    assert int(counts.max()) <= 2


def test_idu_updated_with_formula_and_rewards_move_bandit(tmp_path):
    ds = ToyDataset(n=120)
    cb = LeadSelectionCallback(ds.pool(), budget=1.0, sample_rate=0.5, history_weight=0.25, seed=0)
    rec = Recorder(cb)
    p0 = cb.bandit.probabilities().clone()
    module = ToyModule()
    losses: dict[int, float] = {}

    class LossSpy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            for i, v in zip(batch["ids"].tolist(), outputs["per_example_loss"].tolist(), strict=False):
                losses[i] = v

    trainer = make_trainer(tmp_path, [cb, rec, LossSpy()], max_epochs=1)
    trainer.fit(module, ToyDataModule(ds))
    ids = torch.tensor(rec.subsets[0])
    # round 0: C_k = 0, so IDU = h * iu0 + (1 - h) * loss
    expect = (
        0.25 * ds.pool().iu0[ids].double() + 0.75 * torch.tensor([losses[i] for i in ids.tolist()]).double()
    )
    torch.testing.assert_close(cb.state.idu[ids].double(), expect, rtol=1e-6, atol=1e-6)
    untouched = torch.ones(len(ds), dtype=torch.bool)
    untouched[ids] = False
    assert torch.equal(cb.state.idu[untouched], ds.pool().iu0[untouched])
    # the reward reached the bandit (official code: reward always 0, the bandit never learned)
    assert cb.history[0]["reward"] and not torch.allclose(cb.bandit.probabilities(), p0)


def test_second_round_uses_gradient_term(tmp_path):
    ds = ToyDataset(n=120)
    cb = LeadSelectionCallback(ds.pool(), budget=1.0, sample_rate=0.5, arms_per_round=2, seed=0)
    trainer = make_trainer(tmp_path, [cb], max_epochs=3)
    trainer.fit(ToyModule(), ToyDataModule(ds))
    assert cb.history[0]["coef"] == {a: 0.0 for a in cb.history[0]["arms"]}  # first round: C = 0
    later = [c for h in cb.history[1:] for c in h["coef"].values()]
    assert later and all(c > 0 for c in later)


def test_nan_losses_are_skipped_counted_and_warned(tmp_path):
    """Defect (c): a non-finite loss leaves IDU alone but counts the use (else it is redrawn every round)."""
    ds = ToyDataset(n=80)
    pool = PoolIndex(clusters=torch.zeros(80, dtype=torch.int64), iu0=(ds.y**2).float())
    cb = LeadSelectionCallback(pool, budget=1.0, sample_rate=1.0, seed=0, shuffle=False)
    bad = (0, 5, 17)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.warns(UserWarning, match="skipped 3 non-finite"):
        trainer.fit(ToyModule(nan_ids=bad), ToyDataModule(ds))
    assert cb.history[0]["nan_skipped"] == 3
    idx = torch.tensor(bad)
    assert torch.equal(cb.state.idu[idx], pool.iu0[idx]) and cb.state.uses[idx].tolist() == [1, 1, 1]
    assert torch.isfinite(cb.state.idu).all()


def test_stops_when_nothing_eligible(tmp_path):
    ds = ToyDataset(n=40)
    pool = PoolIndex(clusters=torch.arange(40) % 2, iu0=(ds.y**2).float())
    cb = LeadSelectionCallback(pool, budget=10, sample_rate=0.5, max_uses=1, seed=0)
    trainer = make_trainer(tmp_path, [cb], max_epochs=20)
    trainer.fit(ToyModule(), ToyDataModule(ds))
    assert cb.stop_reason is not None and "no eligible" in cb.stop_reason
    assert int((cb.state.uses > 0).sum()) == 10 and trainer.current_epoch < 20


def test_max_rounds_and_stop_on_budget(tmp_path):
    ds = ToyDataset(n=40)
    cb = LeadSelectionCallback(ds.pool(), budget=1.0, sample_rate=0.5, max_rounds=2, seed=0)
    make_trainer(tmp_path, [cb], max_epochs=10).fit(ToyModule(), ToyDataModule(ds))
    assert len(cb.history) == 2 and "max_rounds" in cb.stop_reason
    cb = LeadSelectionCallback(ds.pool(), budget=5, sample_rate=0.5, stop_on_budget=True, seed=0)
    make_trainer(tmp_path, [cb], max_epochs=10).fit(ToyModule(), ToyDataModule(ds))
    assert len(cb.history) == 1 and "budget" in cb.stop_reason


def test_budget_is_never_exceeded(tmp_path):
    ds = ToyDataset(n=200)
    cb = LeadSelectionCallback(ds.pool(), budget=0.1, sample_rate=0.4, max_uses=4, seed=1)
    make_trainer(tmp_path, [cb], max_epochs=10).fit(ToyModule(), ToyDataModule(ds))
    assert max(h["unique_seen"] for h in cb.history) == 20
    assert int((cb.state.uses > 0).sum()) == 20


@pytest.mark.parametrize("bandit", ["exp3", "exp3s", "ucb", "thompson", "uniform"])
@pytest.mark.parametrize("within", ["idu", "random"])
def test_every_bandit_and_within_cluster_rule_runs(tmp_path, bandit, within):
    ds = ToyDataset(n=80)
    cb = LeadSelectionCallback(
        ds.pool(), budget=1.0, sample_rate=0.25, bandit=bandit, within_cluster=within, seed=0
    )
    make_trainer(tmp_path, [cb], max_epochs=3).fit(ToyModule(), ToyDataModule(ds))
    assert len(cb.history) == 3 and all(h["n_selected"] > 0 for h in cb.history)


def test_idu_selection_prefers_high_idu():
    pool = PoolIndex(clusters=torch.zeros(10, dtype=torch.int64), iu0=torch.arange(10, dtype=torch.float32))
    cb = LeadSelectionCallback(pool, budget=1.0, sample_rate=0.3, seed=0)
    assert sorted(cb.current_subset().tolist()) == [7, 8, 9]


# ---------------------------------------------------------------------------------------------- errors
class _NoPerExample(ToyModule):
    def training_step(self, batch, batch_idx):  # noqa: ANN001
        return super().training_step(batch, batch_idx)["loss"]


class _WrongShape(ToyModule):
    def training_step(self, batch, batch_idx):  # noqa: ANN001
        out = super().training_step(batch, batch_idx)
        return {"loss": out["loss"], "per_example_loss": out["per_example_loss"].mean().reshape(1)}


class _ShiftedIds(ToyDataset):
    def __init__(self, shift: int, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.shift = shift

    def __getitem__(self, i):  # noqa: ANN001
        item = super().__getitem__(i)
        item["ids"] = torch.tensor(i + self.shift)
        return item


class _DupIds(ToyDataset):
    def __getitem__(self, i):  # noqa: ANN001
        item = super().__getitem__(i)
        item["ids"] = torch.tensor(0)
        return item


@pytest.mark.parametrize(
    ("module", "dataset", "exc", "match"),
    [
        (_NoPerExample, ToyDataset, KeyError, "per_example_loss"),
        (_WrongShape, ToyDataset, ValueError, "has 1 values but the batch has 8 ids"),
        (ToyModule, lambda n: _ShiftedIds(1000, n=n), ValueError, r"pool ids in \[0, 80\)"),
        (ToyModule, _DupIds, ValueError, "duplicated ids"),
    ],
)
def test_bad_batches_fail_clearly(tmp_path, module, dataset, exc, match):
    ds = dataset(n=80)
    pool = PoolIndex(clusters=torch.zeros(80, dtype=torch.int64), iu0=torch.ones(80))
    cb = LeadSelectionCallback(pool, budget=1.0, sample_rate=0.5, seed=0)
    with pytest.raises(exc, match=match):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(module(), ToyDataModule(ds))


def test_unwired_dataloader_fails_clearly(tmp_path):
    ds = ToyDataset(n=40)
    cb = LeadSelectionCallback(ds.pool(), budget=1.0, sample_rate=0.5, seed=0)
    module = ToyModule()
    module.train_dataloader = lambda: DataLoader(ds, batch_size=8)  # forgot the sampler
    with pytest.raises(RuntimeError, match="sampler=callback.sampler"):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(module)


def test_callback_dataloader_helper_wires_the_sampler(tmp_path):
    ds = ToyDataset(n=40)
    cb = LeadSelectionCallback(ds.pool(), budget=1.0, sample_rate=0.5, seed=0)
    module = ToyModule()
    module.train_dataloader = lambda: cb.dataloader(ds, batch_size=8)
    make_trainer(tmp_path, [cb], max_epochs=2).fit(module)
    assert len(cb.history) == 2
    with pytest.raises(ValueError, match="set by the callback"):
        cb.dataloader(ds, shuffle=True)


def test_reload_every_n_epochs_other_than_one_is_an_error(tmp_path):
    ds = ToyDataset(n=40)
    cb = LeadSelectionCallback(ds.pool(), budget=1.0, sample_rate=0.5, seed=0)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        make_trainer(tmp_path, [cb], max_epochs=1, reload_dataloaders_every_n_epochs=2).fit(
            ToyModule(), ToyDataModule(ds)
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0}, "`budget` must be"),
        ({"budget": -0.5}, "`budget` must be"),
        ({"budget": 1000}, r"\[1, 40\]"),
        ({"sample_rate": 0.0}, r"`sample_rate` must be in \(0, 1\]"),
        ({"sample_rate": 1.5}, r"`sample_rate` must be in \(0, 1\]"),
        (
            {"bandit": "greedy"},
            r"`bandit` must be one of \['exp3', 'exp3s', 'hedge', 'thompson', 'ucb', 'uniform'\]",
        ),
        ({"arms_per_round": 9}, r"`arms_per_round` must be an int in \[1, 4\]"),
        ({"max_uses": 0}, "`max_uses`"),
        ({"history_weight": 1.0}, "`history_weight`"),
        ({"reward": "accuracy"}, "`reward` must be one of"),
        ({"within_cluster": "best"}, "`within_cluster`"),
        ({"cluster_history": "middle"}, "`cluster_history`"),
        ({"max_rounds": 0}, "`max_rounds`"),
        ({"sketch_dim": 0}, "`sketch_dim`"),
    ],
)
def test_constructor_validates_arguments(kwargs, match):
    pool = PoolIndex(clusters=torch.arange(40) % 4, iu0=torch.ones(40))
    with pytest.raises(ValueError, match=match):
        LeadSelectionCallback(pool, **kwargs)


def test_state_key_pickle_and_weights_only_state(tmp_path):
    pool = PoolIndex(clusters=torch.arange(40) % 4, iu0=torch.ones(40))
    cb = LeadSelectionCallback(pool, budget=0.5, seed=7)
    assert cb.state_key == "LeadSelectionCallback{'seed': 7, 'bandit': 'exp3', 'budget': 20}"
    clone = pickle.loads(pickle.dumps(cb))
    assert torch.equal(clone.current_subset(), cb.current_subset())
    torch.save(cb.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    other = LeadSelectionCallback(pool, budget=0.5, seed=7)
    other.load_state_dict(state)
    bigger = LeadSelectionCallback(PoolIndex(clusters=torch.arange(41) % 4, iu0=torch.ones(41)), seed=7)
    with pytest.raises(ValueError, match="another pool"):
        bigger.load_state_dict(state)


class _SchedModule(ToyModule):
    """SGD with a step-interval scheduler that halves the rate after every step."""

    def configure_optimizers(self):  # noqa: ANN201
        opt = torch.optim.SGD(self.parameters(), lr=0.08)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.step_lrs = getattr(self, "step_lrs", [])
        self.step_lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])  # the rate this step uses
        return super().optimizer_step(*args, **kwargs)


def test_recorded_lr_is_the_rate_the_step_trained_with(tmp_path):
    """Defect (a): Lightning steps a step-interval scheduler before `on_train_batch_end`."""
    ds = ToyDataset(n=40)
    cb = LeadSelectionCallback(ds.pool(), budget=1.0, sample_rate=1.0, seed=0, shuffle=False)
    seen: list[float] = []
    original = cb._buffer.record

    def spy(ids, losses, lr):  # noqa: ANN001, ANN202
        seen.append(float(lr))
        return original(ids, losses, lr)

    cb._buffer.record = spy  # type: ignore[method-assign]
    module = _SchedModule()
    make_trainer(tmp_path, [cb], max_epochs=1).fit(module, ToyDataModule(ds, batch_size=4))
    assert len(seen) == 3 and seen == module.step_lrs == [0.08, 0.04, 0.02]


def test_float_ids_are_an_error(tmp_path):
    """Defect (b): float32 ids above 2**24 would update the wrong examples, so any float id is refused."""
    ds = ToyDataset(n=40)
    cb = LeadSelectionCallback(ds.pool(), budget=1.0, sample_rate=0.5, seed=0)
    cb._extract = lambda outputs, batch: (batch["ids"].float(), outputs["per_example_loss"])  # type: ignore[assignment]
    with pytest.raises(ValueError, match="Batch ids must be an integer tensor"):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(ToyModule(), ToyDataModule(ds))
