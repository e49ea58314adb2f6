"""`PoolIndex`: the offline description of the training pool that LEAD selects from.

One row per example, with a stable id ``0..N-1``: its coarse cluster (a bandit arm), its fine group
(task / source inside a cluster), and its initial utility ``iu0`` (the base model's response loss).
Optional columns from offline scoring (``ifd``, ``n_response_tokens``, ``ref_loss``) travel with it.

Memory: clusters are int16, groups int16 (int32 past 32767 groups), ``iu0``/``ifd``/``ref_loss``
float32, ``n_response_tokens`` int32: 8 bytes per example for the required columns (int16 groups).
Two file forms: parquet (:meth:`PoolIndex.save`, the interchange format) and a memory-mappable
directory of ``.npy`` files (``save(..., format="mmap")``, or the cache that
``PoolIndex.load(parquet, mmap=True)`` writes next to the parquet file), read with
``np.load(mmap_mode="c")``: copy-on-write mappings of one file, so DDP ranks on one machine share
its pages through the page cache, and the tensors stay writable (a write makes a private copy of
that page, never touches the file), so ``torch.from_numpy`` warns about nothing.
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
_MMAP_META = "meta.json"
_MMAP_SUFFIX = ".mmap"  # the cache directory next to a parquet file: <name>.parquet.mmap/
_FINGERPRINT_CHUNK = 1 << 22


def _as_1d(name: str, values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.bfloat16, torch.float16):
            values = values.float()
        values = values.numpy()
    arr = values if isinstance(values, _Labels) else np.asarray(values)
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
        c = c.astype(np.int16, copy=False)

        u = _check_loss("iu0", u)
        if "ref_loss" in extra:
            extra["ref_loss"] = _check_loss("ref_loss", extra["ref_loss"])

        if g_arr is None:
            names: list[Any] = ["all"]
            g_codes = np.zeros(n, dtype=np.int16)
        else:
            names, g_codes = _group_codes(g_arr)

        self._set(
            clusters=c,
            groups=g_codes,
            group_names=names,
            iu0=u,
            ifd=extra.get("ifd"),
            n_response_tokens=extra.get("n_response_tokens"),
            ref_loss=extra.get("ref_loss"),
            provenance=provenance,
        )

    def _set(
        self,
        clusters: np.ndarray,
        groups: np.ndarray,
        group_names: list[Any],
        iu0: np.ndarray,
        ifd: np.ndarray | None,
        n_response_tokens: np.ndarray | None,
        ref_loss: np.ndarray | None,
        provenance: Mapping[str, Any] | None,
        layout_order: np.ndarray | None = None,
        layout_strata: np.ndarray | None = None,
    ) -> None:
        """Store validated columns in their compact dtypes (no copy when they already have them)."""

        def t(a: np.ndarray | None, dtype: Any) -> Tensor | None:
            if a is None:
                return None
            if a.dtype != dtype or not a.flags.writeable:  # e.g. Arrow's read-only buffers: copied
                a = a.astype(dtype)
            return torch.from_numpy(a)

        self.clusters: Tensor = t(clusters, np.int16)  # type: ignore[assignment]
        self.groups: Tensor = t(groups, _group_dtype(len(group_names)))  # type: ignore[assignment]
        self.iu0: Tensor = t(iu0, np.float32)  # type: ignore[assignment]
        self.group_names: list[Any] = list(group_names)
        self.ifd: Tensor | None = t(ifd, np.float32)
        self.n_response_tokens: Tensor | None = t(n_response_tokens, np.int32)
        self.ref_loss: Tensor | None = t(ref_loss, np.float32)
        self.provenance: dict[str, Any] | None = dict(provenance) if provenance is not None else None
        # (cluster, group, id) order and strata of the selection's ClusterLayout, when a memory-mapped
        # index carries them (shared between processes too); else the layout computes them
        self._layout_order: Tensor | None = t(layout_order, np.int32)
        self._layout_strata: np.ndarray | None = layout_strata
        self._fingerprint: str | None = None
        self._num_clusters = int(clusters.max()) + 1

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        return int(self.clusters.numel())

    @property
    def num_clusters(self) -> int:
        """Number of clusters ``K`` (bandit arms)."""
        return self._num_clusters

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
        if self._fingerprint is None:
            import hashlib

            # the bytes hashed are those of int64 clusters and groups, as before the columns were compact,
            # so checkpoints and caches keyed by it stay valid; converted a chunk at a time
            h = hashlib.sha1()
            for col, dtype in ((self.clusters, np.int64), (self.groups, np.int64), (self.iu0, np.float32)):
                arr = col.numpy()
                for lo in range(0, len(arr), _FINGERPRINT_CHUNK):
                    h.update(arr[lo : lo + _FINGERPRINT_CHUNK].astype(dtype).tobytes())
            if self.ref_loss is not None:
                h.update(b"ref_loss")
                h.update(self.ref_loss.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]  # the index is immutable: computed once
        return self._fingerprint

    def column_tensors(self) -> dict[str, Tensor]:
        """The per-example tensors this index holds (columns, and a memory-mapped index's layout order)."""
        cols = {"clusters": self.clusters, "groups": self.groups, "iu0": self.iu0}
        for name in ("ifd", "n_response_tokens", "ref_loss", "_layout_order"):
            v = getattr(self, name)
            if v is not None:
                cols[name.lstrip("_")] = v
        return cols

    def nbytes(self) -> int:
        """Bytes of the per-example tensors (memory-mapped ones included: their pages are shared)."""
        return sum(v.element_size() * v.numel() for v in self.column_tensors().values())

    def __repr__(self) -> str:
        return f"PoolIndex(n={len(self)}, clusters={self.num_clusters}, groups={self.num_groups})"

    # ------------------------------------------------------------------ files
    def save(self, path: str | PathLike[str], format: str = "parquet") -> Path:  # noqa: A002
        """Write the pool index: a parquet file (``format="parquet"``, columns id, cluster, group, iu0,
        [ifd, n_response_tokens, ref_loss]) or a memory-mappable directory (``format="mmap"``).

        The ``mmap`` directory holds one ``.npy`` file per column (int16 clusters, int16/int32 group
        codes, float32 losses, int32 token counts), the selection layout's (cluster, group, id) order
        (``layout_order.npy``, int32) and strata, and ``meta.json`` (schema version, group names,
        provenance). Both are written atomically.

        Example:
            >>> import tempfile, os
            >>> pool = PoolIndex(clusters=[0, 1], iu0=[1.0, 2.0])
            >>> p = pool.save(os.path.join(tempfile.mkdtemp(), "pool.parquet"))
            >>> PoolIndex.load(p).iu0
            tensor([1., 2.])
            >>> d = pool.save(os.path.join(tempfile.mkdtemp(), "pool.mmap"), format="mmap")
            >>> PoolIndex.load(d).iu0  # a directory is memory-mapped
            tensor([1., 2.])
        """
        if format == "mmap":
            return self._save_mmap(Path(path))
        if format != "parquet":
            raise ValueError(f"`format` must be 'parquet' or 'mmap', got {format!r}.")
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        codes = self.groups.numpy()
        if all(isinstance(x, str) for x in self.group_names):  # built in Arrow: no Python object per example
            group_col = pa.array(self.group_names, type=pa.string()).take(pa.array(codes))
        elif all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in self.group_names):
            group_col = pa.array(np.asarray(self.group_names)[codes])
        else:
            group_col = pa.array(np.asarray(self.group_names, dtype=object)[codes].tolist())
        cols: dict[str, Any] = {
            "id": pa.array(np.arange(len(self), dtype=np.int64)),
            "cluster": pa.array(self.clusters.numpy().astype(np.int32)),
            "group": group_col,
            "iu0": pa.array(self.iu0.numpy()),
        }
        if self.ifd is not None:
            cols["ifd"] = pa.array(self.ifd.numpy())
        if self.n_response_tokens is not None:
            cols["n_response_tokens"] = pa.array(self.n_response_tokens.numpy().astype(np.int64))
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

    def _save_mmap(self, path: Path, source: dict[str, int] | None = None) -> Path:
        import shutil
        import tempfile

        from lead_lightning.selection import layout_order

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
        try:
            for name, col in self.column_tensors().items():
                if name != "layout_order":
                    np.save(tmp / f"{name}.npy", col.numpy())
            order, strata = layout_order(self.clusters, self.groups)
            np.save(tmp / "layout_order.npy", order.numpy())
            np.save(tmp / "layout_strata.npy", strata)
            meta = {
                _SCHEMA_KEY: POOL_SCHEMA_VERSION,
                "n": len(self),
                "group_names": self.group_names,
                "provenance": self.provenance,
                "source": source,
            }
            (tmp / _MMAP_META).write_text(json.dumps(meta, sort_keys=True))
            if path.exists():
                shutil.rmtree(path)
            try:
                tmp.rename(path)  # atomic; another process that wrote the same directory first wins
            except OSError:
                if not (path / _MMAP_META).exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | PathLike[str], mmap: bool = False) -> PoolIndex:
        """Read a pool index written by :meth:`save` (or by ``lead-score``), checking its schema.

        :attr:`provenance` is what the file stores (``None`` for files written before it existed).

        A directory (``save(..., format="mmap")``) is memory-mapped. With ``mmap=True`` a parquet file
        is memory-mapped through a cache directory next to it, ``<file>.mmap/``, written on first use
        (atomically; rewritten when the parquet file's size or modification time changes): DDP ranks
        on one machine that load the same index share its pages instead of holding a copy each.

        Example:
            >>> import tempfile, os
            >>> p = os.path.join(tempfile.mkdtemp(), "pool.parquet")
            >>> _ = PoolIndex(clusters=[0, 1], iu0=[1.0, 2.0], provenance={"records": "ab12"}).save(p)
            >>> PoolIndex.load(p).provenance
            {'records': 'ab12'}
            >>> PoolIndex.load(p, mmap=True).provenance
            {'records': 'ab12'}
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Pool index file not found: {path}")
        if path.is_dir():
            return cls._load_mmap(path)
        if not mmap:
            return cls._load_parquet(path)
        st = path.stat()
        source = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        cache = path.with_name(path.name + _MMAP_SUFFIX)
        if (cache / _MMAP_META).exists():
            try:
                if json.loads((cache / _MMAP_META).read_text()).get("source") == source:
                    return cls._load_mmap(cache)
            except (OSError, ValueError):
                pass  # unreadable or half-replaced: rewrite it
        cls._load_parquet(path)._save_mmap(cache, source)
        return cls._load_mmap(cache)

    @classmethod
    def _load_mmap(cls, path: Path) -> PoolIndex:
        meta_file = path / _MMAP_META
        if not meta_file.exists():
            raise ValueError(f"{path} is a directory but not a memory-mapped pool index (no {_MMAP_META}).")
        meta = json.loads(meta_file.read_text())
        version = meta.get(_SCHEMA_KEY)
        if not isinstance(version, int) or version > POOL_SCHEMA_VERSION:
            raise ValueError(
                f"{path} has pool schema version {version!r}; this lead_lightning reads versions up to"
                f" {POOL_SCHEMA_VERSION}. HINT: upgrade lead_lightning, or rewrite the index with this one."
            )

        def arr(name: str, required: bool = True) -> np.ndarray | None:
            f = path / f"{name}.npy"
            if not f.exists():
                if required:
                    raise ValueError(f"{path}: missing {f.name}.")
                return None
            # copy-on-write mapping: pages shared with every process mapping the file; writable, so
            # torch.from_numpy does not warn, and a write stays private (the file never changes)
            return np.load(f, mmap_mode="c")

        n = int(meta["n"])
        names = list(meta["group_names"])
        c, g, u = arr("clusters"), arr("groups"), arr("iu0")
        assert c is not None and g is not None and u is not None
        cols = {"clusters": c, "groups": g, "iu0": u}
        opt = {k: arr(k, required=False) for k in ("ifd", "n_response_tokens", "ref_loss", "layout_order")}
        lengths = {k: len(v) for k, v in {**cols, **opt}.items() if v is not None}
        expect = {"clusters": np.int16, "groups": _group_dtype(len(names)), "iu0": np.float32}
        expect.update(ifd=np.float32, n_response_tokens=np.int32, ref_loss=np.float32, layout_order=np.int32)
        bad = {k: str(v.dtype) for k, v in {**cols, **opt}.items() if v is not None and v.dtype != expect[k]}
        if set(lengths.values()) != {n} or bad:
            raise ValueError(
                f"{path}: corrupt memory-mapped pool index (lengths {lengths}, n={n}, dtypes {bad})."
            )
        # cheap checks (one read of each column; no copy): cluster and group codes in range, losses valid
        counts = np.bincount(c, minlength=1) if c.min() >= 0 else None
        if (
            counts is None
            or (counts == 0).any()
            or len(counts) > 32767
            or g.min() < 0
            or g.max() >= len(names)
        ):
            raise ValueError(f"{path}: cluster ids or group codes out of range.")
        try:
            _check_loss("iu0", u)
            if opt["ref_loss"] is not None:
                _check_loss("ref_loss", opt["ref_loss"])
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        strata_file = path / "layout_strata.npy"
        pool = cls.__new__(cls)
        pool._set(
            clusters=c,
            groups=g,
            group_names=names,
            iu0=u,
            ifd=opt["ifd"],
            n_response_tokens=opt["n_response_tokens"],
            ref_loss=opt["ref_loss"],
            provenance=meta.get("provenance"),
            layout_order=opt["layout_order"],
            layout_strata=np.load(strata_file) if strata_file.exists() else None,
        )
        if pool._layout_strata is None:
            pool._layout_order = None
        return pool

    @classmethod
    def _load_parquet(cls, path: Path) -> PoolIndex:
        import pyarrow.parquet as pq

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
                groups=col("group").to_numpy() if _is_numeric(col("group")) else _string_labels(col("group")),
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


class _Labels(np.ndarray):
    """Group labels already encoded (a dictionary and its codes): :func:`_group_codes` skips ``np.unique``."""

    names: list[Any]


def _string_labels(column: Any) -> np.ndarray:
    """A string column's labels, dictionary-encoded in Arrow (no Python object per example).

    Nulls stay nulls (``None`` labels), so :func:`_group_codes` reports them as before.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    chunked = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
    if chunked.null_count or not (pa.types.is_string(chunked.type) or pa.types.is_large_string(chunked.type)):
        return np.asarray(chunked.to_pylist(), dtype=object)
    enc = pc.dictionary_encode(chunked.combine_chunks())
    names = enc.dictionary.to_pylist()
    rank = np.argsort(np.asarray(names, dtype=object), kind="stable")  # sorted labels, as np.unique
    code_of = np.empty(len(names), dtype=_group_dtype(len(names)))
    code_of[rank] = np.arange(len(names))
    codes = code_of[enc.indices.to_numpy(zero_copy_only=False)].view(_Labels)
    codes.names = [names[i] for i in rank]
    return codes


def _check_loss(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` checked finite and >= 0 (a loss per example), as float32 (as the index stores it)."""
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"`{name}` must hold numbers (a loss per example), got dtype {values.dtype}.")
    bad = ~np.isfinite(values) | (values < 0) if values.dtype.kind in "fc" else values < 0
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"`{name}` must be finite and >= 0 (it is a loss); {len(idx)} bad value(s), first at id"
            f" {int(idx[0])}: {float(values[idx[0]])!r}."
        )
    return values.astype(np.float32, copy=False)


def _group_dtype(num_groups: int) -> Any:
    return np.int16 if num_groups <= 32767 else np.int32


def _group_codes(labels: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Sorted distinct group labels and each example's code; null or mixed-type labels are errors."""
    if isinstance(labels, _Labels):
        present = np.bincount(labels, minlength=len(labels.names)) > 0
        if present.all():
            return list(labels.names), labels.view(np.ndarray)
        kept = np.flatnonzero(present)  # labels of no example (cannot happen from a column) are dropped
        remap = np.full(len(labels.names), -1, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        return [labels.names[i] for i in kept], remap[labels.view(np.ndarray)].astype(_group_dtype(len(kept)))
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
    if (
        labels.dtype.kind in "iu"
        and len(labels)
        and labels.min() >= 0
        and labels.max() < 4 * len(labels) + 1024
    ):
        # small non-negative integers: np.unique's sorted labels and codes in O(N) (no sort)
        present = np.bincount(labels) > 0
        uniq = np.flatnonzero(present).astype(labels.dtype)
        code_of = (np.cumsum(present) - 1).astype(_group_dtype(len(uniq)))
        return [x.item() for x in uniq], code_of[labels]
    try:
        uniq, codes = np.unique(labels, return_inverse=True)
    except TypeError:
        kinds = sorted({type(v).__name__ for v in labels})
        raise ValueError(
            f"`groups` mixes label types {kinds}; labels are sorted, so they must be of one type."
            " HINT: convert them, e.g. `[str(g) for g in groups]`."
        ) from None
    return [x.item() if hasattr(x, "item") else x for x in uniq], codes.astype(_group_dtype(len(uniq)))


def _is_numeric(column: Any) -> bool:
    import pyarrow.types as pat

    return bool(pat.is_integer(column.type) or pat.is_floating(column.type))
