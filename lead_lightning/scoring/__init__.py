"""Offline stage: score the pool (iu0, IFD, embeddings), cluster it, write the pool index."""

from lead_lightning.scoring.cluster import cluster_embeddings, cluster_ifd, cluster_labels
from lead_lightning.scoring.index import build_pool_index, write_pool_index
from lead_lightning.scoring.scorer import ScoringModule, ShardWriter, load_shards, merge_scores, score_pool
from lead_lightning.scoring.warmup import warmup_lora

__all__ = [
    "ScoringModule",
    "ShardWriter",
    "build_pool_index",
    "cluster_embeddings",
    "cluster_ifd",
    "cluster_labels",
    "load_shards",
    "merge_scores",
    "score_pool",
    "warmup_lora",
    "write_pool_index",
]
