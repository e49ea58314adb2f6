"""Pool and held-out records for ``lead-train`` (the ``data.records`` targets)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from lead_lightning.data import InstructionRecord, generate_pool, read_gsm8k, read_records

__all__ = ["Split", "generated_split", "gsm8k_split", "jsonl_split"]


@dataclass
class Split:
    """The pool (``train``, list position = pool id) and the held-out records (``val``, or ``None``)."""

    train: list[InstructionRecord]
    val: list[InstructionRecord] | None


def _limit(records: list[InstructionRecord], n: int | None, name: str) -> list[InstructionRecord]:
    if n is None:
        return records
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`{name}` must be a positive int or None, got {n!r}.")
    return records[:n]


def generated_split(
    pool_size: int = 2000, val_size: int = 200, families: Sequence[str] | None = None, seed: int = 0
) -> Split:
    """A generated pool of ``pool_size`` examples and ``val_size`` held-out ones (another seed).

    Example:
        >>> s = generated_split(30, 12, seed=0)
        >>> len(s.train), len(s.val)
        (30, 12)
    """
    fams = list(families) if families is not None else None
    val = generate_pool(val_size, seed=seed + 1_000_003, families=fams) if val_size else None
    return Split(generate_pool(pool_size, seed=seed, families=fams), val)


def gsm8k_split(
    root: str | PathLike[str],
    train_limit: int | None = None,
    val_limit: int | None = 200,
    strip_calculator: bool = False,
) -> Split:
    """GSM8K from a local directory holding ``train.jsonl`` (the pool) and ``test.jsonl`` (held out)."""
    root = Path(root)
    missing = [f for f in ("train.jsonl", "test.jsonl") if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"GSM8K not found: {root} lacks {missing}. `data=gsm8k` reads a local copy only (nothing is"
            " downloaded). HINT: set LEAD_GSM8K_DIR=/path/to/gsm8k or `data.records.root=/path/to/gsm8k`"
            " (a directory with the official train.jsonl and test.jsonl)."
        )
    train = _limit(
        read_gsm8k(root / "train.jsonl", strip_calculator=strip_calculator), train_limit, "train_limit"
    )
    val = None
    if val_limit != 0:
        val = _limit(
            read_gsm8k(root / "test.jsonl", strip_calculator=strip_calculator), val_limit, "val_limit"
        )
    return Split(train, val)


def jsonl_split(
    path: str | PathLike[str],
    format: str = "chat",
    val_path: str | PathLike[str] | None = None,
    val_fraction: float = 0.02,
    limit: int | None = None,
    seed: int = 0,
    **reader_kwargs: Any,
) -> Split:
    """A JSONL pool (any :data:`~lead_lightning.data.READERS` format) and a held-out set.

    The held-out set is ``val_path`` when given, else a seeded ``val_fraction`` of the pool (removed
    from it; the remaining examples keep their file order and are renumbered ``0..N-1``).
    """
    records = _limit(read_records(path, format=format, **reader_kwargs), limit, "limit")
    if val_path is not None:
        return Split(records, read_records(val_path, format=format, **reader_kwargs))
    if not 0 <= val_fraction < 1:
        raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction!r}.")
    n_val = round(val_fraction * len(records))
    if n_val == 0:
        return Split(records, None)
    held = set(random.Random(seed).sample(range(len(records)), n_val))
    train = [r for i, r in enumerate(records) if i not in held]
    return Split(train, [records[i] for i in sorted(held)])
