"""Offline tokenizers: train a small byte-level BPE on the pool, or load one from a local directory."""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = ["CHAT_SPECIAL_TOKENS", "load_tokenizer", "train_bpe_tokenizer"]

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
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer
