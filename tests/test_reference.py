"""RHO-LOSS reference losses: a trained copy of the model, held-out and cross-fitted reference losses."""

from __future__ import annotations

import pytest
import torch

from lead_lightning.data import InstructionDataModule, InstructionRecord, generate_family
from lead_lightning.models import CausalLMModule, tiny_causal_lm
from lead_lightning.scoring import (
    ScoringModule,
    crossfit_folds,
    crossfit_reference_losses,
    reference_datamodule,
    reference_losses,
    score_pool,
    train_reference,
)
from lead_lightning.scoring import reference as reference_mod

TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}


def _lm(tokenizer, lora: bool = False) -> CausalLMModule:  # noqa: ANN001
    net = tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return CausalLMModule(net, lora={"r": 4, "alpha": 8, "dropout": 0.1} if lora else None, lr=1e-2)


def _dm(records, tokenizer, **kwargs) -> InstructionDataModule:  # noqa: ANN001
    return InstructionDataModule(
        records, tokenizer, max_length=64, batch_size=8, eval_batch_size=16, **kwargs
    )


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reference_is_a_trained_eval_copy_and_the_original_is_unchanged(small_pool, tokenizer, lora):  # noqa: ANN001
    lm = _lm(tokenizer, lora)
    before = _state(lm)
    rng = torch.random.get_rng_state()
    ref = train_reference(
        lm, small_pool[:24], _dm(small_pool, tokenizer), max_steps=3, trainer_kwargs=TRAINER
    )
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is untouched
    assert ref is not lm and not ref.training and lm.training
    for k, v in _state(lm).items():
        assert torch.equal(v, before[k]), k
    after = _state(ref)
    changed = {k for k in before if not torch.equal(after[k], before[k])}
    if lora:  # only the adapter trains
        assert changed and all("lora_" in k for k in changed)
    else:
        assert changed == set(before)  # every weight trains


def test_the_same_seed_gives_the_same_reference_and_another_seed_another(small_pool, tokenizer):  # noqa: ANN001
    lm, dm = _lm(tokenizer, lora=True), _dm(small_pool, tokenizer)
    kw = {"max_steps": 2, "trainer_kwargs": TRAINER, "batch_size": 4}
    a, b = (_state(train_reference(lm, small_pool[:20], dm, seed=1, **kw)) for _ in range(2))
    c = _state(train_reference(lm, small_pool[:20], dm, seed=2, **kw))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_reference_trained_on_a_family_lowers_the_loss_of_unseen_examples_of_it(tokenizer):  # noqa: ANN001
    train = generate_family("copy", 48, seed=1)
    held = generate_family("copy", 16, seed=2, exclude={r.prompt for r in train})
    lm, dm = _lm(tokenizer), _dm(held, tokenizer)
    base = score_pool(ScoringModule(lm), dm, TRAINER)["iu0"]
    ref_loss = reference_losses(lm, dm, train, max_steps=30, trainer_kwargs=TRAINER)
    assert ref_loss.shape == (16,) and ref_loss.dtype == torch.float32
    assert float(ref_loss.mean()) < 0.8 * float(base.mean())
    torch.testing.assert_close(score_pool(ScoringModule(lm), dm, TRAINER)["iu0"], base)  # lm unchanged


def test_reference_losses_follow_the_pool_order_and_leave_excluded_ids_nan(small_pool, tokenizer):  # noqa: ANN001
    long = InstructionRecord("Copy: " + "x y z " * 60, "ok", group="copy")
    pool = [*small_pool[:11], long, *small_pool[11:20]]
    dm = _dm(pool, tokenizer, truncation="exclude")
    ref_loss = reference_losses(_lm(tokenizer), dm, small_pool[60:80], max_steps=2, trainer_kwargs=TRAINER)
    assert ref_loss.shape == (21,) and ref_loss.dtype == torch.float32
    assert torch.isnan(ref_loss[11]) and bool(torch.isfinite(ref_loss[torch.arange(21) != 11]).all())
    # pool-id order: the same as scoring each example alone with the same reference
    ref = train_reference(_lm(tokenizer), small_pool[60:80], dm, max_steps=2, trainer_kwargs=TRAINER)
    alone = score_pool(ScoringModule(ref), reference_datamodule([pool[3], pool[15]], dm), TRAINER)["iu0"]
    torch.testing.assert_close(ref_loss[[3, 15]], alone)


def test_crossfit_scores_every_example_with_the_fold_model_that_never_trained_on_it(
    small_pool,  # noqa: ANN001
    tokenizer,  # noqa: ANN001
    monkeypatch,  # noqa: ANN001
):
    long = InstructionRecord("Copy: " + "x y z " * 60, "ok", group="copy")
    pool = [*small_pool[:7], long, *small_pool[7:30]]  # id 7 is excluded by the datamodule
    dm = _dm(pool, tokenizer, truncation="exclude")
    trained: list[tuple[list[str], CausalLMModule]] = []
    real = reference_mod.train_reference

    def spy(module, records, like, **kwargs):  # noqa: ANN001, ANN003, ANN202
        ref = real(module, records, like, **kwargs)
        trained.append(([r.prompt for r in records], ref))
        return ref

    monkeypatch.setattr(reference_mod, "train_reference", spy)
    out = crossfit_reference_losses(_lm(tokenizer), dm, folds=3, max_steps=2, seed=5, trainer_kwargs=TRAINER)
    assert out.shape == (31,) and out.dtype == torch.float32
    assert torch.isnan(out[7]) and int(torch.isfinite(out).sum()) == 30

    fold_of = crossfit_folds(31, 3, seed=5, exclude=[7])
    assert len(trained) == 3
    for k, (prompts, ref) in enumerate(trained):
        scored = torch.nonzero(fold_of == k).flatten()
        assert not {pool[i].prompt for i in scored.tolist()} & set(prompts)  # never trained on what it scores
        assert sorted(prompts) == sorted(pool[i].prompt for i in range(31) if fold_of[i] not in (k, -1))
        assert long.prompt not in prompts
        full = score_pool(ScoringModule(ref), _dm(pool, tokenizer, truncation="exclude"), TRAINER)["iu0"]
        torch.testing.assert_close(out[scored], full[scored])  # each fold's values come from its own model


def test_crossfit_folds_are_balanced_seeded_and_skip_excluded_ids():
    f = crossfit_folds(20, 3, seed=0, exclude=torch.tensor([4, 9]))
    assert f[4] == -1 and f[9] == -1 and torch.bincount(f[f >= 0]).tolist() == [6, 6, 6]
    assert torch.equal(f, crossfit_folds(20, 3, seed=0, exclude=[4, 9]))
    assert not torch.equal(f, crossfit_folds(20, 3, seed=1, exclude=[4, 9]))


def test_bad_arguments_are_clear_errors(small_pool, tokenizer):  # noqa: ANN001
    lm, dm = _lm(tokenizer), _dm(small_pool[:10], tokenizer)
    for steps in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="`max_steps` must be a positive int"):
            train_reference(lm, small_pool[:4], dm, max_steps=steps)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="`max_steps` must be a positive int"):
            crossfit_reference_losses(lm, dm, max_steps=steps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`records` is empty"):
        train_reference(lm, [], dm, max_steps=1)
    with pytest.raises(ValueError, match="`records` is empty"):
        reference_losses(lm, dm, [], max_steps=1)
    with pytest.raises(ValueError, match="must be a lead_lightning.models.CausalLMModule"):
        train_reference(lm.model, small_pool[:4], dm, max_steps=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`batch_size`"):
        train_reference(lm, small_pool[:4], dm, max_steps=1, batch_size=0)
    with pytest.raises(ValueError, match="`lr`"):
        train_reference(lm, small_pool[:4], dm, max_steps=1, lr=0.0)
    with pytest.raises(ValueError, match="`folds` must be an int >= 2"):
        crossfit_reference_losses(lm, dm, folds=1, max_steps=1)
    with pytest.raises(ValueError, match="at least `folds`=3 pool examples, got 2"):
        crossfit_folds(2, 3)
    long = InstructionRecord("Copy: " + "x y z " * 60, "ok", group="copy")
    with pytest.raises(ValueError, match="All 1 reference records are excluded"):
        train_reference(lm, [long], _dm(small_pool[:10], tokenizer, truncation="exclude"), max_steps=1)
