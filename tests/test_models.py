"""Tests for lead_lightning.models: offline tokenizer, tiny-model factory, CausalLMModule (+ LoRA)."""

from __future__ import annotations

import math
import time
import warnings

import lightning.pytorch as pl
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lead_lightning.data import InstructionCollator, InstructionDataModule, generate_pool
from lead_lightning.models import (
    CHAT_SPECIAL_TOKENS,
    CausalLMModule,
    LoraSettings,
    load_causal_lm,
    load_tokenizer,
    lr_multiplier,
    tiny_causal_lm,
    train_bpe_tokenizer,
)

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "max_position": 128}


@pytest.fixture
def model(tokenizer):
    return tiny_causal_lm(len(tokenizer), **TINY, seed=0)


@pytest.fixture
def batch(tokenizer, small_pool):
    return InstructionCollator(tokenizer, max_length=64)(
        [{"id": 100 + i, "record": small_pool[i]} for i in range(6)]
    )


def fit(module, datamodule, max_steps=3):
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=datamodule)
    return trainer


# ---------------------------------------------------------------------- tokenizer
def test_train_bpe_tokenizer_offline_fast(tmp_path):
    texts = [f"{r.prompt}\n{r.response}" for r in generate_pool(3000, seed=1)]
    start = time.perf_counter()
    tok = train_bpe_tokenizer(texts, vocab_size=600, save_dir=tmp_path)
    assert time.perf_counter() - start < 2.0
    assert len(tok) == 600 and tok.padding_side == "right"
    assert (tok.pad_token, tok.eos_token) == ("<pad>", "<eos>")
    for special in CHAT_SPECIAL_TOKENS:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    loaded = load_tokenizer(tmp_path)
    sample = "<|user|>\nReverse the word: héllo 🙂\n<|assistant|>\nolléh<eos>"
    assert loaded(sample)["input_ids"] == tok(sample)["input_ids"]
    assert loaded.decode(loaded(sample)["input_ids"]) == sample  # byte-level: lossless, no unknown token
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`vocab_size` must be >= 261"):
        train_bpe_tokenizer(["a"], vocab_size=100)
    with pytest.raises(FileNotFoundError, match="reads local directories only"):
        load_tokenizer(tmp_path / "missing")


# ---------------------------------------------------------------------- factory
def test_tiny_causal_lm(tmp_path, tokenizer):
    model = tiny_causal_lm(len(tokenizer), **TINY, seed=0)
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (
        "llama",
        32,
        2,
        len(tokenizer),
    )
    same = tiny_causal_lm(len(tokenizer), **TINY, seed=0)
    other = tiny_causal_lm(len(tokenizer), **TINY, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True))
    assert tiny_causal_lm(len(tokenizer), arch="gpt2", **TINY).config.n_embd == 32
    model.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 9, 12]])
    torch.testing.assert_close(load_causal_lm(tmp_path).eval()(ids).logits, model.eval()(ids).logits)
    with pytest.raises(ValueError, match=r"Unknown `arch` 'bert'"):
        tiny_causal_lm(10, arch="bert")
    with pytest.raises(FileNotFoundError, match="reads local directories only"):
        load_causal_lm(tmp_path / "missing")


# ---------------------------------------------------------------------- module: losses
def test_per_example_loss_matches_hf_reference(model, batch):
    module = CausalLMModule(model).eval()
    out = module.training_step(batch, 0)
    assert out["per_example_loss"].shape == (6,) and not out["per_example_loss"].requires_grad
    assert out["loss"].requires_grad
    with torch.no_grad():
        for row in range(6):
            n = int(batch["attention_mask"][row].sum())  # the example alone, unpadded (B=1)
            ref = model(
                input_ids=batch["input_ids"][row : row + 1, :n],
                attention_mask=batch["attention_mask"][row : row + 1, :n],
                labels=batch["labels"][row : row + 1, :n],
            ).loss
            torch.testing.assert_close(out["per_example_loss"][row], ref, rtol=1e-5, atol=1e-5)
        hf_batch = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    torch.testing.assert_close(out["loss"].detach(), hf_batch.loss, rtol=1e-5, atol=1e-6)


def test_only_model_inputs_reach_the_model(model, tokenizer, small_pool):
    seen = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(sorted(kwargs)), with_kwargs=True)
    batch = InstructionCollator(tokenizer, 64, response_only=True)([{"id": 0, "record": small_pool[0]}])
    CausalLMModule(model).training_step(batch, 0)
    assert seen == [["attention_mask", "input_ids", "use_cache"]]


def test_validation_loss_is_token_weighted(model, tokenizer, small_pool):
    val = small_pool[:7]
    dm = InstructionDataModule(small_pool[:8], tokenizer, val_records=val, max_length=64, eval_batch_size=3)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    module = CausalLMModule(model)
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    full = InstructionCollator(tokenizer, 64)([{"id": i, "record": r} for i, r in enumerate(val)])
    with torch.no_grad():
        ref = model(
            input_ids=full["input_ids"], attention_mask=full["attention_mask"], labels=full["labels"]
        ).loss
    assert metrics["val/loss"] == pytest.approx(ref.item(), rel=1e-5)


# ---------------------------------------------------------------------- module: LoRA training and export
def test_lora_trains_only_adapters(model, tokenizer, small_pool):
    module = CausalLMModule(model, lora=LoraSettings(r=4, alpha=8, dropout=0.0), lr=1e-2)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    lora_names = {n for n in before if "lora_" in n}
    assert lora_names and all(module.model.get_parameter(n).requires_grad for n in lora_names)
    dm = InstructionDataModule(small_pool, tokenizer, max_length=64, batch_size=4)
    trainer = fit(module, dm, max_steps=3)
    assert trainer.global_step == 3
    for name, param in module.model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (name in lora_names), name


def test_save_adapter_round_trip(model, tokenizer, small_pool, tmp_path, batch):
    module = CausalLMModule(
        model, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}, lr=1e-2
    )
    fit(module, InstructionDataModule(small_pool, tokenizer, max_length=64, batch_size=4), max_steps=2)
    module.save_adapter(tmp_path / "adapter")
    fresh_base = tiny_causal_lm(len(tokenizer), **TINY, seed=0)
    loaded = PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, module.model.eval()(**inputs).logits)
        untrained = tiny_causal_lm(len(tokenizer), **TINY, seed=0)(**inputs).logits
    assert not torch.equal(loaded(**inputs).logits, untrained)  # the adapter did change the model


def test_save_full_model_without_lora(model, batch, tmp_path):
    module = CausalLMModule(model).eval()
    module.save_adapter(tmp_path / "full")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full", local_files_only=True).eval()
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=batch["input_ids"]).logits, model(input_ids=batch["input_ids"]).logits
        )


def test_factory_callable_and_hparams(tokenizer):
    module = CausalLMModule(
        lambda: tiny_causal_lm(len(tokenizer), **TINY), lora={"r": 2}, scheduler="paper_step"
    )
    assert module.hparams["lora"] == {"r": 2, "alpha": 16, "dropout": 0.05, "target_modules": None}
    assert module.hparams["scheduler"] == "paper_step" and "model" not in module.hparams


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"scheduler": "linear"},
            r"`scheduler` must be one of \('constant', 'cosine', 'paper_step'\), got 'linear'",
        ),
        ({"lr": 0}, r"`lr` must be > 0"),
        ({"lora": {"r": 0}}, r"`r` must be a positive int"),
        ({"lora": 3}, r"`lora` must be a LoraSettings"),
    ],
)
def test_module_validates_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CausalLMModule(model, **kwargs)


# ---------------------------------------------------------------------- schedules
def lrs_over(module, steps):
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_paper_step_schedule(model):
    lrs = lrs_over(CausalLMModule(model, lr=1e-3, scheduler="paper_step"), 40)
    assert lrs == pytest.approx([1e-3 * 0.995 ** (s // 8) for s in range(40)], rel=1e-12)
    assert lrs[7] == 1e-3 and lrs[8] == pytest.approx(0.995e-3)


def test_cosine_and_warmup_schedules(model):
    lrs = lrs_over(CausalLMModule(model, lr=1.0, scheduler="cosine", total_steps=10), 11)
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(11)])
    assert lrs_over(CausalLMModule(model, lr=1.0, warmup_steps=4), 6) == pytest.approx(
        [0.25, 0.5, 0.75, 1, 1, 1]
    )
    assert lr_multiplier(100, "constant") == 1.0


def test_module_starts_in_training_mode_even_from_a_pretrained_checkpoint(tmp_path):
    """`from_pretrained` returns eval mode; LoRA dropout must be active while training."""
    from lead_lightning.models import CausalLMModule, LoraSettings, load_causal_lm, tiny_causal_lm

    tiny_causal_lm(64, hidden_size=16).save_pretrained(tmp_path / "ckpt")
    net = load_causal_lm(tmp_path / "ckpt")
    assert not net.training  # what transformers gives
    module = CausalLMModule(model=net, lora=LoraSettings(r=2, dropout=0.1))
    assert all(m.training for m in module.modules())
