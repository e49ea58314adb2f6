"""Clusters (bandit arms) for the pool: k-means on IFD, k-means on embeddings, or a label column.

Every function returns ``np.ndarray[int64]`` labels numbered ``0..K-1`` in a deterministic,
interpretable order, so the same inputs and seed always give the same arms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["cluster_embeddings", "cluster_ifd", "cluster_labels"]


def _numpy(x: Any, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"`{name}` must be {ndim}-dimensional, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))
        raise ValueError(
            f"`{name}` has {len(bad)} non-finite value(s) (first at id {int(bad[0])}); drop or impute"
            " flagged examples before clustering."
        )
    return arr


def _renumber(labels: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Map cluster ``c`` to its rank when clusters are sorted by ``key[c]`` (ascending, stable)."""
    order = np.argsort(key, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels].astype(np.int64)


def cluster_ifd(ifd: Sequence[float] | np.ndarray | Tensor, k: int = 7, seed: int = 0) -> np.ndarray:
    """K-means (``n_init=10``, seeded) on the 1-D IFD; cluster 0 has the lowest centre, K-1 the highest.

    Example:
        >>> cluster_ifd([0.1, 0.9, 0.11, 0.5, 0.91, 0.52], k=3).tolist()
        [0, 2, 0, 1, 2, 1]
    """
    from sklearn.cluster import KMeans

    x = _numpy(ifd, "ifd", 1)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}.")
    n_distinct = len(np.unique(x))
    if n_distinct < k:
        raise ValueError(
            f"Cannot make k={k} IFD clusters from {n_distinct} distinct IFD value(s) ({len(x)} examples);"
            " lower `k`."
        )
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x.reshape(-1, 1))
    return _renumber(km.labels_, km.cluster_centers_[:, 0])


def cluster_embeddings(
    emb: np.ndarray | Tensor, k: int, seed: int = 0, minibatch_threshold: int = 20000
) -> np.ndarray:
    """K-means on ``[N, D]`` embeddings (MiniBatchKMeans from ``minibatch_threshold`` examples on).

    Clusters are numbered by size, largest first; ties broken by their smallest member id.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = _numpy(emb, "emb", 2)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}.")
    n_distinct = len(np.unique(x, axis=0))
    if n_distinct < k:
        raise ValueError(f"Cannot make k={k} clusters from {n_distinct} distinct embedding(s); lower `k`.")
    if len(x) >= minibatch_threshold:
        km = MiniBatchKMeans(n_clusters=k, n_init=3, random_state=seed, batch_size=4096).fit(x)
    else:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    raw = km.labels_
    sizes = np.bincount(raw, minlength=k)
    first = np.full(k, len(raw), dtype=np.int64)
    np.minimum.at(first, raw, np.arange(len(raw)))
    # sort by (-size, first member id); lexsort uses the last key as primary
    order = np.lexsort((first, -sizes))
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    labels = rank[raw]
    # a cluster k-means left empty would break 0..K-1 numbering: compact it away
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def cluster_labels(labels: Sequence[Any] | np.ndarray | Tensor) -> np.ndarray:
    """A label column (e.g. task family) as clusters ``0..K-1`` in sorted label order.

    Example:
        >>> cluster_labels(["b", "a", "b"]).tolist()
        [1, 0, 1]
    """
    if isinstance(labels, Tensor):
        labels = labels.cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"`labels` must be a non-empty 1-D column, got shape {arr.shape}.")
    return np.unique(arr, return_inverse=True)[1].reshape(-1).astype(np.int64)
