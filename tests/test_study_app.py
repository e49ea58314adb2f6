"""What the study needs from the app: `compose`, `save_model`, per-family validation, the trained-examples
summary and the profiled selection time."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from hydra.errors import ConfigCompositionException

from lead_lightning.app import compose
from lead_lightning.app.runtime import run_name
from lead_lightning.data import InstructionDataModule, InstructionRecord, generate_family
from lead_lightning.models import CausalLMModule, load_causal_lm, tiny_causal_lm, train_bpe_tokenizer
from lead_lightning.monitors import GroupValLoss, TrainedExamples
from lead_lightning.train import train

TINY_TESTBED = [
    "data=testbed",
    "data.records.pool_size=120",
    "data.records.eval_per_family=6",
    "data.records.pretrain_size=120",
    "data.module.eval_batch_size=16",
    "rounds=2",
    "logger=none",
    "report.plots=false",
    "report.print_summary=false",
    "trainer.enable_progress_bar=false",
]


# ----------------------------------------------------------------------------- compose
def test_compose_is_the_command_line_config(tmp_path):  # noqa: ANN001
    cfg = compose(["selection=random", "rounds=3"], tmp_path / "run")
    assert cfg.selection._target_ == "lead_lightning.config.RandomConfig" and cfg.rounds == 3
    assert cfg.paths.output_dir == str(tmp_path / "run") and "hydra" not in cfg
    assert run_name(cfg) == "selection=random,rounds=3"  # Hydra's runtime config is set
    with pytest.raises(ConfigCompositionException):
        compose(["selection.budgt=0.1"], tmp_path)
    with pytest.raises(TypeError, match="HINT"):
        compose("rounds=3", tmp_path)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- a run and the next one
@pytest.mark.slow
def test_saved_model_is_the_base_of_the_next_run_and_results_hold_the_study_keys(tmp_path):  # noqa: ANN001
    base = train(
        compose(
            [
                *TINY_TESTBED,
                "model.tokenizer.vocab_size=300",
                "model.net.hidden_size=32",
                "model.net.num_layers=1",
                "data.records.split=pretrain",
                "selection=full",
                "selection.sample_rate=40",
                "save_model=true",
                "trainer.profiler=simple",
            ],
            tmp_path / "base",
        )
    )
    model_dir = base["model_dir"]
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    families = ["add", "copy", "multiply", "reverse", "sort_letters"]
    vm = base["val_metrics"]
    assert sorted(k.split("/")[2] for k in vm if k.startswith("val/loss/")) == families
    assert vm["val/loss_macro"] == pytest.approx(sum(vm[f"val/loss/{f}"] for f in families) / 5)
    assert len(base["val_curve"]) == 3 and base["val_curve"][-1]["val/loss_macro"] == pytest.approx(
        vm["val/loss_macro"]
    )
    assert base["trained"] == {"example_steps": 80, "unique": 80}  # the pre-training split has no flags
    assert base["selection_s"] is not None and base["selection_s"] > 0

    run = train(
        compose(
            [
                *TINY_TESTBED,
                "model=hf_local",
                f"model.path={model_dir}",
                "model.module.scheduler=constant",
                "selection=random",
                "selection.budget=20",
                "selection.sample_rate=10",
            ],
            tmp_path / "run",
        )
    )
    # the run starts from exactly the saved model: its first evaluation is the base's last
    assert run["val_curve"][0]["val/loss_macro"] == pytest.approx(vm["val/loss_macro"], rel=1e-5)
    t = run["trained"]
    assert t["example_steps"] == 20 and t["unique"] == 20
    assert 0.0 <= t["share_noisy"] <= 1.0 and 0.0 <= t["unique_share_duplicate"] <= 1.0
    assert run["selection_s"] is None  # no profiler


def test_lora_is_merged_into_the_saved_model(tmp_path):  # noqa: ANN001
    torch.manual_seed(0)
    module = CausalLMModule(tiny_causal_lm(vocab_size=300, hidden_size=32), lora={"r": 4, "dropout": 0.0})
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter (B starts at zero)
    module.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = module.model(input_ids=ids).logits
    path = module.save_pretrained_model(tmp_path / "model")
    merged = load_causal_lm(path).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert any("lora_B" in n for n, _ in module.model.named_parameters())  # the module keeps its adapter


# ----------------------------------------------------------------------------- monitors against references
def _tiny_data() -> tuple[InstructionDataModule, list[InstructionRecord]]:
    val = (
        generate_family("copy", 7, seed=1) + generate_family("add", 5, seed=1) + generate_family("reverse", 4)
    )
    pool = generate_family("copy", 12)
    tok = train_bpe_tokenizer([f"{r.prompt} {r.response}" for r in pool + val], vocab_size=300)
    dm = InstructionDataModule(pool, tok, val_records=val, max_length=64, batch_size=4, eval_batch_size=5)
    return dm, val


def test_group_val_loss_matches_a_per_example_reference():
    dm, val = _tiny_data()
    torch.manual_seed(0)
    module = CausalLMModule(tiny_causal_lm(vocab_size=len(dm.tokenizer), hidden_size=32))
    cb = GroupValLoss([r.group for r in val])
    trainer = pl.Trainer(
        accelerator="cpu", callbacks=[cb], logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    got = trainer.validate(module, datamodule=dm, verbose=False)[0]

    dm.setup("validate")
    sums: dict[str, float] = {}
    tokens: dict[str, int] = {}
    module.eval()
    with torch.no_grad():
        for i, r in enumerate(val):  # one example at a time: no padding, no batching
            out = module(dm.collator([dm.val_dataset[i]]))  # type: ignore[index]
            n = int(out.n_tokens[0])
            sums[r.group] = sums.get(r.group, 0.0) + float(out.per_example_loss[0]) * n
            tokens[r.group] = tokens.get(r.group, 0) + n
    ref = {g: sums[g] / tokens[g] for g in sums}
    for g, v in ref.items():
        assert got[f"val/loss/{g}"] == pytest.approx(v, rel=1e-4)
    assert got["val/loss_macro"] == pytest.approx(sum(ref.values()) / 3, rel=1e-4)
    assert got["val/loss"] == pytest.approx(sum(sums.values()) / sum(tokens.values()), rel=1e-4)
    assert cb.evals[-1]["rounds_trained"] == 0


def test_group_val_loss_rejects_ids_outside_the_held_out_set():
    cb = GroupValLoss(["a", "b"])
    with pytest.raises(ValueError, match="HINT"):
        cb.update(torch.tensor([2]), torch.tensor([1.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="empty"):
        GroupValLoss([])


def test_trained_examples_counts_every_step():
    dm, _ = _tiny_data()
    dm.set_train_sampler([3, 1, 4, 0, 9])
    flags = {"noisy": [i in (1, 9) for i in range(12)]}
    cb = TrainedExamples(12, flags)
    module = CausalLMModule(tiny_causal_lm(vocab_size=len(dm.tokenizer), hidden_size=32))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=[cb],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    assert cb.counts.tolist() == [2, 2, 0, 2, 2, 0, 0, 0, 0, 2, 0, 0]
    s = cb.summary()
    assert s == {"example_steps": 10, "unique": 5, "share_noisy": 0.4, "unique_share_noisy": 0.4}
    with pytest.raises(ValueError, match="Flag `noisy` has 2 values"):
        TrainedExamples(12, {"noisy": [True, False]})
    assert math.isnan(TrainedExamples(3, {"x": [True] * 3}).summary()["share_x"])
