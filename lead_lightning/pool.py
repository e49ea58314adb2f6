"""`PoolIndex`: the offline description of the training pool that LEAD selects from.

One row per example, with a stable id ``0..N-1``: its coarse cluster (a bandit arm), its fine group
(task / source inside a cluster), and its initial utility ``iu0`` (the base model's response loss).
Optional columns from offline scoring (``ifd``, ``n_response_tokens``, ``ref_loss``) travel with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PoolIndex", "POOL_SCHEMA_VERSION"]

POOL_SCHEMA_VERSION = 2  # 2: optional `ref_loss` column (files of version 1 still load)
_SCHEMA_KEY = "lead_lightning.pool_schema"
_PROVENANCE_KEY = "lead_lightning.provenance"
_REQUIRED = ("id", "cluster", "group", "iu0")
_OPTIONAL_FLOAT = ("ifd",)
_OPTIONAL_INT = ("n_response_tokens",)


def _as_1d(name: str, values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.bfloat16, torch.float16):
            values = values.float()
        values = values.numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional (one value per example), got shape {arr.shape}.")
    return arr


class PoolIndex:
    """Clusters, groups and initial utilities of a pool of ``N`` examples with ids ``0..N-1``.

    Args:
        clusters: cluster (bandit arm) of each example: integers ``0..K-1``, every cluster non-empty.
        groups: group (task/source) of each example: any labels (ints or strings); ``None`` puts
            every example in one group. Labels are mapped to ``0..G-1``; ``group_names`` keeps them.
        iu0: initial utility of each example (response loss under the base model): finite, >= 0.
        ifd: optional instruction-following difficulty per example (kept for reporting).
        n_response_tokens: optional response length per example (kept for reporting).
        ref_loss: optional reference loss per example (finite, >= 0): the response loss under a
            reference model trained on data disjoint from the example (RHO-LOSS's irreducible-loss
            estimate; ``selection.utility=reducible`` ranks by IDU minus it).
        provenance: optional description of where the index came from, saved with it: ``lead-score``
            and ``lead-train`` store ``fingerprint`` (of everything that determined the scores and
            clusters, :func:`lead_lightning.scoring.fingerprint`), ``records`` (the records' digest,
            :func:`lead_lightning.scoring.records_digest`) and ``n_records``. JSON-able values only.

    Example:
        >>> pool = PoolIndex(clusters=[0, 0, 1, 1], groups=["a", "b", "a", "a"], iu0=[1.0, 2.0, 0.5, 3.0])
        >>> len(pool), pool.num_clusters, pool.group_names
        (4, 2, ['a', 'b'])
    """

    def __init__(
        self,
        clusters: Sequence[int] | np.ndarray | Tensor,
        iu0: Sequence[float] | np.ndarray | Tensor,
        groups: Sequence[Any] | np.ndarray | Tensor | None = None,
        ifd: Sequence[float] | np.ndarray | Tensor | None = None,
        n_response_tokens: Sequence[int] | np.ndarray | Tensor | None = None,
        provenance: Mapping[str, Any] | None = None,
        ref_loss: Sequence[float] | np.ndarray | Tensor | None = None,
    ) -> None:
        c = _as_1d("clusters", clusters)
        u = _as_1d("iu0", iu0)
        n = len(c)
        if n == 0:
            raise ValueError("The pool is empty: `clusters` has no entries.")
        lengths = {"clusters": n, "iu0": len(u)}
        g_arr = None if groups is None else _as_1d("groups", groups)
        if g_arr is not None:
            lengths["groups"] = len(g_arr)
        extra = {}
        for name, values in (("ifd", ifd), ("n_response_tokens", n_response_tokens), ("ref_loss", ref_loss)):
            if values is not None:
                extra[name] = _as_1d(name, values)
                lengths[name] = len(extra[name])
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Pool arrays must all have one entry per example; got lengths {lengths}.")

        if not np.issubdtype(c.dtype, np.integer):
            if np.issubdtype(c.dtype, np.floating) and np.all(np.isfinite(c)) and np.all(c == np.round(c)):
                c = c.astype(np.int64)
            else:
                raise ValueError(f"`clusters` must hold integer cluster ids, got dtype {c.dtype}.")
        if c.min() < 0:
            raise ValueError(f"`clusters` must be >= 0, got min {int(c.min())}.")
        counts = np.bincount(c)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            raise ValueError(
                f"Clusters must be numbered 0..K-1 with none empty; cluster(s) {empty[:10].tolist()} have no"
                f" example (K={len(counts)}). HINT: renumber clusters, e.g. `np.unique(c, return_inverse=True)[1]`."
            )
        if len(counts) > 32767:
            raise ValueError(f"At most 32767 clusters are supported, got {len(counts)}.")

        u = _check_loss("iu0", u)
        if "ref_loss" in extra:
            extra["ref_loss"] = _check_loss("ref_loss", extra["ref_loss"])

        if g_arr is None:
            names: list[Any] = ["all"]
            g_codes = np.zeros(n, dtype=np.int64)
        else:
            names, g_codes = _group_codes(g_arr)

        self.clusters: Tensor = torch.from_numpy(c.astype(np.int64))
        self.groups: Tensor = torch.from_numpy(g_codes.astype(np.int64))
        self.iu0: Tensor = torch.from_numpy(u.astype(np.float32))
        self.group_names: list[Any] = names
        self.ifd: Tensor | None = (
            torch.from_numpy(extra["ifd"].astype(np.float32)) if "ifd" in extra else None
        )
        self.n_response_tokens: Tensor | None = (
            torch.from_numpy(extra["n_response_tokens"].astype(np.int64))
            if "n_response_tokens" in extra
            else None
        )
        self.ref_loss: Tensor | None = (
            torch.from_numpy(extra["ref_loss"].astype(np.float32)) if "ref_loss" in extra else None
        )
        self.provenance: dict[str, Any] | None = dict(provenance) if provenance is not None else None

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        return int(self.clusters.numel())

    @property
    def num_clusters(self) -> int:
        """Number of clusters ``K`` (bandit arms)."""
        return int(self.clusters.max()) + 1

    @property
    def num_groups(self) -> int:
        """Number of distinct groups ``G``."""
        return len(self.group_names)

    def cluster_sizes(self) -> Tensor:
        """Examples per cluster, ``LongTensor[K]``."""
        return torch.bincount(self.clusters, minlength=self.num_clusters)

    def fingerprint(self) -> str:
        """A short hash of clusters, groups, ``iu0`` (and ``ref_loss`` when present), stored in checkpoints
        to catch a different pool.

        ``iu0`` is part of it: a pool with the same clusters but other initial utilities (scored by
        another model, or on other records) must not resume another pool's selection state. So is
        ``ref_loss``: it ranks examples under ``utility="reducible"``.

        Example:
            >>> a = PoolIndex(clusters=[0, 1], iu0=[1.0, 2.0])
            >>> a.fingerprint() == PoolIndex(clusters=[0, 1], iu0=[1.0, 2.0]).fingerprint()
            True
            >>> a.fingerprint() == PoolIndex(clusters=[0, 1], iu0=[1.0, 2.5]).fingerprint()
            False
        """
        import hashlib

        h = hashlib.sha1()
        h.update(self.clusters.numpy().tobytes())
        h.update(self.groups.numpy().tobytes())
        h.update(self.iu0.numpy().tobytes())
        if self.ref_loss is not None:
            h.update(b"ref_loss")
            h.update(self.ref_loss.numpy().tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"PoolIndex(n={len(self)}, clusters={self.num_clusters}, groups={self.num_groups})"

    # ------------------------------------------------------------------ files
    def save(self, path: str | PathLike[str]) -> Path:
        """Write the pool index as a parquet file (columns id, cluster, group, iu0, [ifd, n_response_tokens, ref_loss]).

        Example:
            >>> import tempfile, os
            >>> pool = PoolIndex(clusters=[0, 1], iu0=[1.0, 2.0])
            >>> p = pool.save(os.path.join(tempfile.mkdtemp(), "pool.parquet"))
            >>> PoolIndex.load(p).iu0
            tensor([1., 2.])
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = np.asarray(self.group_names, dtype=object)[self.groups.numpy()]
        cols: dict[str, Any] = {
            "id": pa.array(np.arange(len(self), dtype=np.int64)),
            "cluster": pa.array(self.clusters.numpy().astype(np.int32)),
            "group": pa.array(names.tolist()),
            "iu0": pa.array(self.iu0.numpy()),
        }
        if self.ifd is not None:
            cols["ifd"] = pa.array(self.ifd.numpy())
        if self.n_response_tokens is not None:
            cols["n_response_tokens"] = pa.array(self.n_response_tokens.numpy())
        if self.ref_loss is not None:
            cols["ref_loss"] = pa.array(self.ref_loss.numpy())
        metadata = {_SCHEMA_KEY: str(POOL_SCHEMA_VERSION)}
        if self.provenance is not None:
            metadata[_PROVENANCE_KEY] = json.dumps(self.provenance, sort_keys=True)
        table = pa.table(cols).replace_schema_metadata(metadata)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)  # atomic: a crash never leaves a half-written index
        return path

    @classmethod
    def load(cls, path: str | PathLike[str]) -> PoolIndex:
        """Read a pool index written by :meth:`save` (or by ``lead-score``), checking its schema.

        :attr:`provenance` is what the file stores (``None`` for files written before it existed).

        Example:
            >>> import tempfile, os
            >>> p = os.path.join(tempfile.mkdtemp(), "pool.parquet")
            >>> _ = PoolIndex(clusters=[0, 1], iu0=[1.0, 2.0], provenance={"records": "ab12"}).save(p)
            >>> PoolIndex.load(p).provenance
            {'records': 'ab12'}
        """
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Pool index file not found: {path}")
        table = pq.read_table(path)
        metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        version = metadata.get(_SCHEMA_KEY, str(POOL_SCHEMA_VERSION))
        if not version.isdigit() or int(version) > POOL_SCHEMA_VERSION:
            raise ValueError(
                f"{path} has pool schema version {version!r}; this lead_lightning reads versions up to"
                f" {POOL_SCHEMA_VERSION}. HINT: upgrade lead_lightning, or rewrite the index with this one."
            )
        provenance = json.loads(metadata[_PROVENANCE_KEY]) if _PROVENANCE_KEY in metadata else None
        missing = [c for c in _REQUIRED if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{path} is not a pool index: missing column(s) {missing}; found {table.column_names}."
                f" Required: {list(_REQUIRED)}."
            )
        ids = table.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(len(ids))):
            order = np.argsort(ids, kind="stable")
            if not np.array_equal(ids[order], np.arange(len(ids))):
                raise ValueError(f"{path}: column `id` must be a permutation of 0..N-1 (N={len(ids)}).")
            table = table.take(order)
        col = table.column
        try:
            return cls(
                clusters=col("cluster").to_numpy(),
                groups=np.asarray(col("group").to_pylist(), dtype=object)
                if not _is_numeric(col("group"))
                else col("group").to_numpy(),
                iu0=col("iu0").to_numpy(),
                ifd=col("ifd").to_numpy() if "ifd" in table.column_names else None,
                n_response_tokens=col("n_response_tokens").to_numpy()
                if "n_response_tokens" in table.column_names
                else None,
                provenance=provenance,
                ref_loss=col("ref_loss").to_numpy() if "ref_loss" in table.column_names else None,
            )
        except ValueError as err:  # the file is where the bad values are
            raise ValueError(f"{path}: {err}") from None


def _check_loss(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as float64, checked finite and >= 0 (a loss per example)."""
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"`{name}` must hold numbers (a loss per example), got dtype {values.dtype}.")
    u = values.astype(np.float64)
    bad = ~np.isfinite(u) | (u < 0)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"`{name}` must be finite and >= 0 (it is a loss); {len(idx)} bad value(s), first at id"
            f" {int(idx[0])}: {float(u[idx[0]])!r}."
        )
    return u


def _group_codes(labels: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Sorted distinct group labels and each example's code; null or mixed-type labels are errors."""
    if labels.dtype.kind == "f":
        null = np.isnan(labels)
    elif labels.dtype.kind == "O":
        null = np.fromiter(
            (v is None or (isinstance(v, float) and v != v) for v in labels), bool, len(labels)
        )
    else:
        null = np.zeros(len(labels), dtype=bool)
    if null.any():
        idx = np.flatnonzero(null)
        raise ValueError(
            f"`groups` holds {len(idx)} null label(s) (None or NaN), first at id {int(idx[0])}. HINT: give"
            " every example a group (its task or source), or pass `groups=None` for one group."
        )
    try:
        uniq, codes = np.unique(labels, return_inverse=True)
    except TypeError:
        kinds = sorted({type(v).__name__ for v in labels})
        raise ValueError(
            f"`groups` mixes label types {kinds}; labels are sorted, so they must be of one type."
            " HINT: convert them, e.g. `[str(g) for g in groups]`."
        ) from None
    return [x.item() if hasattr(x, "item") else x for x in uniq], codes


def _is_numeric(column: Any) -> bool:
    import pyarrow.types as pat

    return bool(pat.is_integer(column.type) or pat.is_floating(column.type))
