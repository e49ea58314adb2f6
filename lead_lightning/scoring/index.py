"""Turn offline scores and clusters into the :class:`~lead_lightning.pool.PoolIndex` file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lead_lightning.pool import PoolIndex

__all__ = ["build_pool_index", "write_pool_index"]


def build_pool_index(
    scores: Mapping[str, Tensor],
    clusters: Sequence[int] | np.ndarray | Tensor,
    groups: Sequence[Any] | np.ndarray | Tensor | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> PoolIndex:
    """A :class:`PoolIndex` from :func:`score_pool`'s output (ordered by id) and cluster/group columns.

    ``iu0``, ``ifd``, ``n_response_tokens`` and (when present) ``ref_loss`` are taken from ``scores``; an unscored example (``nan``
    iu0, e.g. one the datamodule excluded) is an error from :class:`PoolIndex` naming its id.
    ``provenance`` (e.g. ``{"fingerprint": ..., "records": ..., "n_records": ...}``) travels with it.

    Example:
        >>> scores = {"ids": torch.arange(3), "iu0": torch.tensor([1.0, 2.0, 3.0])}
        >>> build_pool_index(scores, [0, 1, 1], provenance={"records": "ab12"}).provenance
        {'records': 'ab12'}
    """
    ids = scores["ids"]
    if not torch.equal(ids.cpu(), torch.arange(len(ids))):
        raise ValueError("`scores` must be ordered by id 0..N-1 (as `score_pool` returns them).")
    return PoolIndex(
        clusters=clusters,
        iu0=scores["iu0"],
        groups=groups,
        ifd=scores.get("ifd"),
        n_response_tokens=scores.get("n_response_tokens"),
        provenance=provenance,
        ref_loss=scores.get("ref_loss"),
    )


def write_pool_index(
    path: str | PathLike[str],
    scores: Mapping[str, Tensor],
    clusters: Sequence[int] | np.ndarray | Tensor,
    groups: Sequence[Any] | np.ndarray | Tensor | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Build the pool index and save it as parquet (``PoolIndex.load`` reads it back).

    ``provenance`` is stored in the parquet schema metadata and comes back as
    :attr:`PoolIndex.provenance`: ``lead-score`` stores the ``fingerprint`` of what determined the
    scores and clusters, the ``records`` digest and ``n_records``, which ``lead-train pool.index=...``
    checks against the records it trains on.

    Example:
        >>> import tempfile, os
        >>> scores = {"ids": torch.arange(2), "iu0": torch.tensor([1.0, 2.0])}
        >>> p = write_pool_index(os.path.join(tempfile.mkdtemp(), "p.parquet"), scores, [0, 1],
        ...                      provenance={"n_records": 2})
        >>> PoolIndex.load(p).provenance
        {'n_records': 2}
    """
    return build_pool_index(scores, clusters, groups, provenance).save(path)
