"""Builders that turn the composed config into objects: tokenizer, model, datamodule, selection.

The pool index (the offline stage) is built by :mod:`lead_lightning.app.offline`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from lead_lightning.app.data import Split
from lead_lightning.base import RoundSelectionCallback
from lead_lightning.data import InstructionDataModule, InstructionRecord
from lead_lightning.models import CausalLMModule, load_causal_lm, load_tokenizer, train_bpe_tokenizer
from lead_lightning.pool import PoolIndex

__all__ = [
    "build_datamodule",
    "build_selection",
    "local_causal_lm",
    "local_tokenizer",
    "pool_bpe_tokenizer",
]


def pool_bpe_tokenizer(records: Sequence[InstructionRecord], vocab_size: int = 512) -> Any:
    """A byte-level BPE trained offline on the pool's prompts and responses."""
    return train_bpe_tokenizer((f"{r.prompt} {r.response}" for r in records), vocab_size=vocab_size)


def local_tokenizer(
    records: Sequence[InstructionRecord], path: str | PathLike[str], vocab_size: int | None = None
) -> Any:
    """The tokenizer saved with a local checkpoint.

    ``records`` and ``vocab_size`` (the BPE size an experiment such as ``gsm8k_cpu`` sets for a
    tokenizer trained on the pool) are ignored: the checkpoint has its own tokenizer.
    """
    return load_tokenizer(path)


def local_causal_lm(vocab_size: int, path: str | PathLike[str], dtype: str | None = None) -> Any:
    """A causal LM from a local directory; its vocabulary must cover the tokenizer's."""
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = load_causal_lm(path, **kwargs)
    n_embed = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    if n_embed < vocab_size:
        raise ValueError(
            f"The model in {path} embeds {n_embed} tokens but its tokenizer has {vocab_size}; use the"
            " tokenizer saved with the checkpoint."
        )
    return model


def build_datamodule(
    make: Callable[..., InstructionDataModule], split: Split, tokenizer: Any
) -> tuple[InstructionDataModule, list[InstructionRecord]]:
    """The datamodule over the pool; examples it must exclude are dropped from the pool (warned)."""
    dm = make(train_records=split.train, tokenizer=tokenizer, val_records=split.val)
    dm.setup("fit")
    if len(dm.excluded_ids) == 0:
        return dm, list(split.train)
    drop = set(dm.excluded_ids.tolist())
    records = [r for i, r in enumerate(split.train) if i not in drop]
    rank_zero_warn(f"{len(drop)} pool examples whose prompt fills `max_length` are left out of the pool.")
    dm = make(train_records=records, tokenizer=tokenizer, val_records=split.val)
    dm.setup("fit")
    return dm, records


def build_inputs(cfg: Any) -> tuple[Split, InstructionDataModule, list[InstructionRecord], CausalLMModule]:
    """What ``lead-train`` builds from its composed config before the offline stage: the records, the
    datamodule over the pool (excluded examples dropped), the pool records and the model module.

    Returns:
        ``(split, datamodule, pool records, module)``.
    """
    from hydra.utils import instantiate

    split = instantiate(cfg.data.records)
    tokenizer = instantiate(cfg.model.tokenizer)(split.train)
    dm, records = build_datamodule(instantiate(cfg.data.module), split, tokenizer)
    net = instantiate(cfg.model.net)(vocab_size=len(tokenizer))
    module = instantiate(cfg.model.module)(model=net, lora=instantiate(cfg.peft) if cfg.peft else None)
    return split, dm, records, module


def build_selection(config: Any, pool: PoolIndex) -> RoundSelectionCallback:
    """The selection callback of an instantiated ``selection=`` config (``LeadConfig`` or a baseline's)."""
    if not hasattr(config, "build"):
        raise TypeError(
            f"`selection` must instantiate a selection config (lead_lightning.config), got {type(config).__name__}."
        )
    return config.build(pool)  # type: ignore[no-any-return]
