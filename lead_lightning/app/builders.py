"""Builders that turn the composed config into objects: tokenizer, model, datamodule, selection.

The pool index (the offline stage) is built by :mod:`lead_lightning.app.offline`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig

from lead_lightning.app.baselines import BaselineSelectionCallback
from lead_lightning.app.data import Split
from lead_lightning.app.schema import SelectionMethod
from lead_lightning.callback import LeadSelectionCallback
from lead_lightning.data import InstructionDataModule, InstructionRecord
from lead_lightning.models import load_causal_lm, load_tokenizer, train_bpe_tokenizer
from lead_lightning.pool import PoolIndex

__all__ = [
    "build_datamodule",
    "build_selection",
    "local_causal_lm",
    "local_tokenizer",
    "pool_bpe_tokenizer",
    "round_size",
]


def pool_bpe_tokenizer(records: Sequence[InstructionRecord], vocab_size: int = 512) -> Any:
    """A byte-level BPE trained offline on the pool's prompts and responses."""
    return train_bpe_tokenizer((f"{r.prompt} {r.response}" for r in records), vocab_size=vocab_size)


def local_tokenizer(records: Sequence[InstructionRecord], path: str | PathLike[str]) -> Any:
    """The tokenizer saved with a local checkpoint (``records`` is ignored)."""
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


def round_size(pool: PoolIndex, sample_rate: float | int, arms_per_round: int) -> int:
    """Examples LEAD draws per round on average over clusters (the baselines' per-round count)."""
    if isinstance(sample_rate, int):
        return sample_rate
    per_cluster = []
    for k in range(pool.num_clusters):
        sizes = torch.bincount(pool.groups[pool.clusters == k])
        per_cluster.append(sum(math.ceil(sample_rate * int(s)) for s in sizes if s > 0))
    return max(1, round(arms_per_round * sum(per_cluster) / len(per_cluster)))


def build_selection(
    cfg: DictConfig, pool: PoolIndex, make_bandit: Callable[..., Any], rounds: int, seed: int
) -> LeadSelectionCallback | BaselineSelectionCallback:
    """The LEAD callback, or the baseline callback for ``selection.method`` full / random / static_ifd."""
    method = SelectionMethod(cfg.method)
    budget, sample_rate = cfg.budget, cfg.sample_rate
    if method != SelectionMethod.lead:
        return BaselineSelectionCallback(
            pool,
            method.value,
            budget=budget,
            per_round=round_size(pool, sample_rate, cfg.arms_per_round),
            seed=seed,
        )
    return LeadSelectionCallback(
        pool,
        budget=budget,
        sample_rate=sample_rate,
        bandit=make_bandit(num_arms=pool.num_clusters),
        arms_per_round=cfg.arms_per_round,
        max_uses=cfg.max_uses,
        history_weight=cfg.history_weight,
        reward=cfg.reward.value,
        within_cluster=cfg.within_cluster.value,
        max_rounds=rounds,
        stop_on_budget=cfg.stop_on_budget,
        cluster_history=cfg.cluster_history.value,
        sketch_dim=cfg.sketch_dim,
        seed=seed,
        shuffle=cfg.shuffle,
    )
