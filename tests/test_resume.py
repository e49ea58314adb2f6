"""Resuming from epoch-end and mid-epoch checkpoints reproduces an uninterrupted run bit-exactly."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from _toy import ToyDataModule, ToyDataset, ToyModule, all_method_options, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lead_lightning import LeadSelectionCallback

EPOCHS = 6
SETTINGS = {
    "paper": {"budget": 0.5, "sample_rate": 0.3, "arms_per_round": 2, "seed": 5},
    # every method option beyond the paper at once (their state must resume exactly too)
    "options": {"budget": 0.5, "sample_rate": 0.3, "seed": 5, **all_method_options(EPOCHS)},
}


def _run(tmp_path, ckpt_path=None, save=False, setting="paper"):  # noqa: ANN001
    pl.seed_everything(0)
    ds = ToyDataset(n=160)
    cb = LeadSelectionCallback(ds.pool(), **SETTINGS[setting])
    callbacks: list[pl.Callback] = [cb]
    if save:
        callbacks += [
            ModelCheckpoint(
                tmp_path / "steps",
                filename="{epoch}-{step}",
                every_n_train_steps=4,
                save_top_k=-1,
                save_on_train_epoch_end=False,
            ),
            ModelCheckpoint(
                tmp_path / "epochs",
                filename="{epoch}",
                every_n_epochs=1,
                save_top_k=-1,
                save_on_train_epoch_end=True,
            ),
        ]
    module = ToyModule()
    trainer = make_trainer(tmp_path, callbacks, max_epochs=EPOCHS, enable_checkpointing=save)
    trainer.fit(module, ToyDataModule(ds, batch_size=5), ckpt_path=ckpt_path)
    return cb, module


def _comparable(history):  # noqa: ANN001
    return [{k: v for k, v in h.items() if k != "round_time_s"} for h in history]


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def reference(request, tmp_path_factory):  # noqa: ANN001
    tmp = tmp_path_factory.mktemp(f"ref_{request.param}")
    cb, module = _run(tmp, save=True, setting=request.param)
    return tmp, cb, module, request.param


def _assert_same_future(ref_cb, ref_module, cb, module):  # noqa: ANN001
    assert _comparable(cb.history) == _comparable(ref_cb.history)
    assert torch.equal(cb.state.idu, ref_cb.state.idu)
    assert torch.equal(cb.state.uses, ref_cb.state.uses)
    for k, v in ref_cb.bandit.state_dict().items():
        assert torch.equal(torch.as_tensor(cb.bandit.state_dict()[k]), torch.as_tensor(v)), k
    assert torch.equal(module.net.weight, ref_module.net.weight)


def test_resume_from_epoch_end_checkpoint(reference):
    tmp, ref_cb, ref_module, setting = reference
    ckpt = tmp / "epochs" / "epoch=1.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"][ref_cb.state_key]
    assert state["selection"]["round"] == 2 and not state["mid_round"]
    # the state moved after the checkpoint, so this comparison cannot pass trivially
    assert not torch.equal(state["selection"]["idu"]["idu"], ref_cb.state.idu)
    cb, module = _run(tmp / "resume_epoch", ckpt_path=ckpt, setting=setting)
    _assert_same_future(ref_cb, ref_module, cb, module)


def _step_checkpoints(tmp, key):  # noqa: ANN001
    out = []
    for ckpt in (tmp / "steps").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["callbacks"][key]
        if state["mid_round"]:
            n_subset = len(state["selection"]["subset"])
            out.append((ckpt, sum(state["consumed"]) >= n_subset))
    return out


def test_step_checkpoints_cover_partial_and_finished_rounds(reference):
    tmp, ref_cb, _, _ = reference
    kinds = {done for _, done in _step_checkpoints(tmp, ref_cb.state_key)}
    assert kinds == {False, True}


@pytest.mark.slow
def test_resume_from_every_mid_epoch_checkpoint(reference):
    """Every step checkpoint: mid-round, and after a round's last batch but before its epoch end."""
    tmp, ref_cb, ref_module, setting = reference
    ckpts = _step_checkpoints(tmp, ref_cb.state_key)
    assert len(ckpts) >= 4
    for i, (ckpt, _) in enumerate(ckpts):
        cb, module = _run(tmp / f"resume_{i}", ckpt_path=ckpt, setting=setting)
        _assert_same_future(ref_cb, ref_module, cb, module)
