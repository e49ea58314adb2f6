"""Models: the Lightning module for HF causal LMs (optional LoRA), tiny-model and offline-tokenizer factories."""

from lead_lightning.models.factory import TINY_ARCHS, load_causal_lm, tiny_causal_lm
from lead_lightning.models.module import SCHEDULERS, CausalLMModule, LoraSettings, lr_multiplier
from lead_lightning.models.tokenizer import CHAT_SPECIAL_TOKENS, load_tokenizer, train_bpe_tokenizer

__all__ = [
    "CHAT_SPECIAL_TOKENS",
    "SCHEDULERS",
    "TINY_ARCHS",
    "CausalLMModule",
    "LoraSettings",
    "load_causal_lm",
    "load_tokenizer",
    "lr_multiplier",
    "tiny_causal_lm",
    "train_bpe_tokenizer",
]
