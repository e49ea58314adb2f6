"""Pools held in Arrow, not in Python objects: read once into a memory-mapped file, tokenized per batch.

:meth:`ArrowRecords.from_file` streams a records file through the same reader as
:func:`~lead_lightning.data.read_records` (:func:`~lead_lightning.data.iter_records`: the same
records, in order, the same errors), writes it to an Arrow file (``prompt``, ``response``, ``group``,
``messages`` columns; ``messages`` as canonical JSON, null for single-turn records) ``batch_rows``
rows at a time, and opens that file as a Hugging Face ``datasets.Dataset``, memory-mapped: the pool
costs page cache, not Python objects. Row ``i`` is pool id ``i``.

The file is named by a key of the source (absolute path, size and modification time of every file
read, format, reader arguments), so a second process (a DDP rank, a resumed run) opens the same
file instead of reading the source again; a changed source gets a new key.

:class:`ArrowInstructionDataset` is the :class:`~lead_lightning.data.InstructionDataset` of such a
pool: :meth:`~ArrowInstructionDataset.__init__` tokenizes the pool once, ``chunk_size`` rows at a time,
keeping only the token counts (16 bytes per example) for length bucketing and the truncation check;
each batch (``__getitems__``) is read from Arrow and tokenized again, by the same
:func:`~lead_lightning.data.tokenize_records`, so its token ids are those of the in-memory dataset.
:class:`~lead_lightning.data.InstructionDataModule` builds it when its records are an
:class:`ArrowRecords`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from lead_lightning.data.collate import tokenize_records
from lead_lightning.data.dataset import InstructionDataset
from lead_lightning.data.records import InstructionRecord, iter_records
from lead_lightning.data.templates import PromptTemplate, get_template

__all__ = ["ARROW_FORMAT_VERSION", "ArrowInstructionDataset", "ArrowRecords", "source_key"]

ARROW_FORMAT_VERSION = 1
"""Version of the Arrow file layout; part of the file's key."""

COLUMNS = ("prompt", "response", "group", "messages")
_BATCH = 4096


def _canonical(obj: Any) -> str:
    from lead_lightning.scoring.fingerprint import canonical_json

    return canonical_json(obj)


def _source_files(path: Path, format: str) -> list[Path]:
    if format == "bbh" and path.is_dir():
        return sorted(path.glob("*.json"))
    return [path]


def source_key(path: str | PathLike[str], format: str, **reader_kwargs: Any) -> str:
    """A key of a records source: what it is (absolute path, format, reader arguments) and the size
    and modification time (ns) of every file read. Equal keys name the same Arrow file.

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "pool.jsonl")
        >>> _ = open(p, "w").write("{}\\n")
        >>> source_key(p, "alpaca") == source_key(p, "alpaca"), source_key(p, "alpaca") == source_key(p, "chat")
        (True, False)
    """
    root = Path(path).resolve()
    if not root.exists():
        raise FileNotFoundError(f"No such records file or directory: {path}")
    files = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in _source_files(root, format)]
    spec = {"v": ARROW_FORMAT_VERSION, "format": format, "kwargs": reader_kwargs, "files": files}
    return hashlib.sha256(_canonical(spec).encode()).hexdigest()[:20]


def _write_arrow(path: Path, format: str, out: Path, batch_rows: int, **reader_kwargs: Any) -> int:
    """Stream ``path`` through its reader into an Arrow IPC stream file at ``out`` (atomically)."""
    import pyarrow as pa

    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            cols: dict[str, list[str | None]] = {c: [] for c in COLUMNS}
            for r in iter_records(path, format=format, **reader_kwargs):
                cols["prompt"].append(r.prompt)
                cols["response"].append(r.response)
                cols["group"].append(r.group)
                cols["messages"].append(None if r.messages is None else _canonical(r.messages))
                n += 1
                if len(cols["prompt"]) >= batch_rows:
                    writer.write_batch(
                        pa.record_batch([pa.array(cols[c], pa.string()) for c in COLUMNS], schema=schema)
                    )
                    cols = {c: [] for c in COLUMNS}
            if cols["prompt"]:
                writer.write_batch(
                    pa.record_batch([pa.array(cols[c], pa.string()) for c in COLUMNS], schema=schema)
                )
        if n == 0:
            raise ValueError(f"{path}: no examples found (empty pool)")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return n


class ArrowRecords:
    """A pool of instruction records held in an Arrow table (a memory-mapped ``datasets.Dataset``).

    Behaves as a read-only sequence of :class:`~lead_lightning.data.InstructionRecord` where that
    is cheap: ``len``, ``records[i]`` (one record), ``records[:n]`` (the first ``n``, still in Arrow),
    iteration (one batch of records in memory at a time), plus :meth:`take` and :meth:`iter_batches`
    for batches, :attr:`groups` (the group column, dictionary-decoded: one Python string per distinct
    group) and :meth:`records_digest` (equal to
    :func:`~lead_lightning.scoring.records_digest` of the same records, computed from the columns).

    Args:
        dataset: a ``datasets.Dataset`` with string columns ``prompt``, ``response``, ``group``,
            ``messages`` (canonical JSON or null), as :meth:`from_file` writes.

    Example:
        >>> import json, os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> p = os.path.join(d, "pool.jsonl")
        >>> with open(p, "w") as f:
        ...     for i in range(5):
        ...         _ = f.write(json.dumps({"instruction": f"Add {i} and 1.", "output": str(i + 1)}) + "\\n")
        >>> pool = ArrowRecords.from_file(p, "alpaca", cache_dir=d)
        >>> len(pool), pool[2].response, len(pool[:3]), pool.groups.tolist()[:2]
        (5, '3', 3, ['pool', 'pool'])
        >>> from lead_lightning.data import read_records
        >>> from lead_lightning.scoring import records_digest
        >>> pool.records_digest() == records_digest(read_records(p, "alpaca"))
        True
    """

    def __init__(self, dataset: Any) -> None:
        missing = [c for c in COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(f"An ArrowRecords dataset needs columns {list(COLUMNS)}; missing {missing}.")
        self.dataset = dataset
        self._arrow = dataset.with_format("arrow")

    @classmethod
    def from_file(
        cls,
        path: str | PathLike[str],
        format: str,
        cache_dir: str | PathLike[str],
        batch_rows: int = _BATCH,
        **reader_kwargs: Any,
    ) -> ArrowRecords:
        """Read ``path`` with the ``format`` reader into ``cache_dir/records-<key>.arrow`` (unless a
        file of that key is there already) and open it memory-mapped.

        Args:
            path: the records file (or, for ``"bbh"``, a directory).
            format: a reader name (see :data:`~lead_lightning.data.READERS`).
            cache_dir: where the Arrow file goes (created if missing; shared by DDP ranks).
            batch_rows: records converted and written at a time (the reader's memory bound).
            **reader_kwargs: passed to the reader.
        """
        import datasets

        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        out = cache / f"records-{source_key(path, format, **reader_kwargs)}.arrow"
        if not out.is_file():
            _write_arrow(Path(path), format, out, batch_rows, **reader_kwargs)
        return cls(datasets.Dataset.from_file(str(out), in_memory=False))

    def __len__(self) -> int:
        return int(self.dataset.num_rows)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("ArrowRecords slices must be contiguous (step 1).")
            return ArrowRecords(self.dataset.select(range(start, max(start, stop))))
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"pool id {index} out of range for a pool of {len(self)} examples")
        return self.take([i])[0]

    @staticmethod
    def _records(table: Any) -> list[InstructionRecord]:
        cols = [table.column(c).to_pylist() for c in COLUMNS]
        return [
            InstructionRecord(p, r, g, None if m is None else tuple(json.loads(m)))
            for p, r, g, m in zip(*cols, strict=True)
        ]

    def take(self, indices: Sequence[int] | np.ndarray) -> list[InstructionRecord]:
        """The records of these pool ids, in this order (one batch of Python objects)."""
        return self._records(self._arrow[[int(i) for i in indices]])

    def iter_batches(self, batch_size: int = _BATCH) -> Iterator[tuple[int, list[InstructionRecord]]]:
        """``(start id, records)`` for consecutive batches of at most ``batch_size`` records."""
        for start in range(0, len(self), batch_size):
            yield start, self._records(self._arrow[start : start + batch_size])

    def __iter__(self) -> Iterator[InstructionRecord]:
        for _, batch in self.iter_batches():
            yield from batch

    def iter_columns(self, columns: Sequence[str], batch_size: int = _BATCH) -> Iterator[list[list[Any]]]:
        """Consecutive batches of the named columns as Python lists (no records built)."""
        for start in range(0, len(self), batch_size):
            table = self._arrow[start : start + batch_size]
            yield [table.column(c).to_pylist() for c in columns]

    @property
    def groups(self) -> np.ndarray:
        """The group of every example, in pool-id order: an object array referencing one Python
        string per distinct group (8 bytes per example)."""
        encoded = self._arrow[:]["group"].combine_chunks().dictionary_encode()
        names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
        return names[encoded.indices.to_numpy(zero_copy_only=False)]

    def records_digest(self) -> str:
        """:func:`~lead_lightning.scoring.records_digest` of these records, from the columns."""
        from lead_lightning.scoring.fingerprint import RecordsHasher

        h = RecordsHasher()
        for prompts, responses, groups, messages in self.iter_columns(COLUMNS):
            for row in zip(prompts, responses, groups, messages, strict=True):
                h.update(*row)
        return h.hexdigest()

    def instruction_dataset(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: str | PromptTemplate = "auto",
        max_length: int | None = None,
    ) -> ArrowInstructionDataset:
        """The dataset :class:`~lead_lightning.data.InstructionDataModule` builds for this pool."""
        return ArrowInstructionDataset(self, tokenizer, template, max_length)

    def __repr__(self) -> str:
        return f"ArrowRecords(n={len(self)})"


class ArrowInstructionDataset(InstructionDataset):
    """:class:`~lead_lightning.data.InstructionDataset` of an :class:`ArrowRecords` pool, tokenized
    per batch: items (and so batches) are equal to the in-memory dataset's.

    Only the token counts per example are kept (``prompt_lengths``, ``response_lengths``: the length
    bucketing and truncation check need them); ``__getitems__`` reads a batch's rows from Arrow and
    tokenizes them (torch's ``DataLoader`` calls it once per batch).

    Args:
        records: the pool.
        tokenizer: Hugging Face tokenizer with an eos token.
        template: prompt template name or object (``"auto"``: see ``InstructionDataset``).
        max_length: the collator's ``max_length`` (clips :attr:`lengths`).
        chunk_size: records tokenized at a time while counting tokens.
    """

    def __init__(
        self,
        records: ArrowRecords,
        tokenizer: PreTrainedTokenizerBase,
        template: str | PromptTemplate = "auto",
        max_length: int | None = None,
        chunk_size: int = 1024,
    ) -> None:
        n = len(records)
        if n == 0:
            raise ValueError("`records` is empty: the pool must hold at least one example.")
        self.records = records  # type: ignore[assignment]
        self.tokenizer = tokenizer
        self.template = get_template(template, tokenizer)
        self.max_length = max_length
        self.prompt_lengths = np.empty(n, dtype=np.int64)
        self.response_lengths = np.empty(n, dtype=np.int64)
        for start, batch in records.iter_batches(chunk_size):
            p, r = tokenize_records(batch, tokenizer, self.template, chunk_size=chunk_size)
            self.prompt_lengths[start : start + len(p)] = [len(x) for x in p]
            self.response_lengths[start : start + len(r)] = [len(x) for x in r]

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        ids = [int(i) for i in indices]
        for i in ids:
            if not 0 <= i < len(self):
                raise IndexError(f"pool id {i} out of range for a pool of {len(self)} examples")
        p, r = tokenize_records(self.records.take(ids), self.tokenizer, self.template)  # type: ignore[attr-defined]
        return [
            {
                "id": i,
                "prompt_ids": np.asarray(pi, dtype=np.int32),
                "response_ids": np.asarray(ri, dtype=np.int32),
            }
            for i, pi, ri in zip(ids, p, r, strict=True)
        ]

    @property
    def groups(self) -> list[str]:
        """Group label of every example, in pool-id order (an object array, see :attr:`ArrowRecords.groups`)."""
        return self.records.groups  # type: ignore[attr-defined,no-any-return]
