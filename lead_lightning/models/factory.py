"""Causal LMs without a download: tiny ones from a config, or real ones from a local directory."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

__all__ = ["TINY_ARCHS", "load_causal_lm", "tiny_causal_lm"]


def _llama_like(vocab_size: int, hidden: int, layers: int, heads: int, max_position: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": max_position,
    }


def _gpt2(vocab_size: int, hidden: int, layers: int, heads: int, max_position: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "n_embd": hidden,
        "n_layer": layers,
        "n_head": heads,
        "n_positions": max_position,
    }


TINY_ARCHS = {"llama": _llama_like, "qwen2": _llama_like, "mistral": _llama_like, "gpt2": _gpt2}
"""Architectures :func:`tiny_causal_lm` can build, mapped to their config keyword arguments."""


def tiny_causal_lm(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position: int = 256,
    arch: str = "llama",
    seed: int = 0,
    **config_overrides: Any,
) -> PreTrainedModel:
    """A small, randomly initialised Hugging Face causal LM built from a config (nothing downloaded).

    The initialisation depends only on ``seed`` (the global RNG is left untouched), so two calls with
    the same arguments give identical weights.

    Args:
        vocab_size: vocabulary size (``len(tokenizer)``).
        hidden_size: model width; a multiple of ``num_heads``.
        num_layers: transformer blocks.
        num_heads: attention heads.
        max_position: longest sequence.
        arch: one of :data:`TINY_ARCHS`.
        seed: initialisation seed.
        **config_overrides: extra config fields (e.g. ``pad_token_id``, ``eos_token_id``).

    Example:
        >>> model = tiny_causal_lm(vocab_size=300, hidden_size=32)
        >>> model.config.model_type, model.config.hidden_size
        ('llama', 32)
    """
    if arch not in TINY_ARCHS:
        raise ValueError(f"Unknown `arch` {arch!r}; known: {sorted(TINY_ARCHS)}.")
    if hidden_size % num_heads:
        raise ValueError(f"`hidden_size` ({hidden_size}) must be a multiple of `num_heads` ({num_heads}).")
    kwargs = TINY_ARCHS[arch](vocab_size, hidden_size, num_layers, num_heads, max_position)
    config = AutoConfig.for_model(arch, **{**kwargs, **config_overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def load_causal_lm(local_dir: str | PathLike[str], **kwargs: Any) -> PreTrainedModel:
    """Load a causal LM with ``from_pretrained`` from a local directory only (never the Hub).

    Args:
        local_dir: a directory written by ``save_pretrained``.
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``dtype=torch.bfloat16``).

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> tiny_causal_lm(vocab_size=300, hidden_size=32).save_pretrained(d)
        >>> load_causal_lm(d).config.vocab_size
        300
    """
    path = Path(local_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model directory not found: {path}. `load_causal_lm` reads local directories only"
            " (nothing is downloaded)."
        )
    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **kwargs)
