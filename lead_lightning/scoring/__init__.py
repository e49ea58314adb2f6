"""Offline stage: score the pool (iu0, IFD, embeddings), cluster it, write the pool index.

:mod:`~lead_lightning.scoring.reference` adds RHO-LOSS reference losses (the ``ref_loss`` column).

:func:`fingerprint` (with the digests of :mod:`~lead_lightning.scoring.fingerprint`) names what
determined a pool's scores: it keys ``lead-train``'s score cache, stamps ``lead-score``'s shard
directories and is stored as the provenance of a pool index file.
"""

from lead_lightning.scoring.cluster import cluster_embeddings, cluster_ifd, cluster_labels
from lead_lightning.scoring.fingerprint import (
    fingerprint,
    model_digest,
    records_digest,
    scoring_parts,
    tokenizer_digest,
)
from lead_lightning.scoring.index import build_pool_index, write_pool_index
from lead_lightning.scoring.reference import (
    crossfit_folds,
    crossfit_reference_losses,
    reference_datamodule,
    reference_losses,
    train_reference,
)
from lead_lightning.scoring.scorer import (
    ScoringModule,
    ShardWriter,
    check_shard_dir,
    clear_shards,
    load_shards,
    merge_scores,
    score_pool,
)
from lead_lightning.scoring.warmup import warmup_lora

__all__ = [
    "ScoringModule",
    "ShardWriter",
    "build_pool_index",
    "check_shard_dir",
    "clear_shards",
    "cluster_embeddings",
    "cluster_ifd",
    "cluster_labels",
    "crossfit_folds",
    "crossfit_reference_losses",
    "fingerprint",
    "load_shards",
    "merge_scores",
    "model_digest",
    "records_digest",
    "reference_datamodule",
    "reference_losses",
    "score_pool",
    "scoring_parts",
    "tokenizer_digest",
    "train_reference",
    "warmup_lora",
    "write_pool_index",
]
