"""Pool and held-out records for ``lead-train`` (the ``data.records`` targets)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from lead_lightning.data import (
    InstructionRecord,
    generate_family,
    generate_pool,
    near_duplicates,
    plant_noise,
    read_bbh,
    read_gsm8k,
    read_records,
)
from lead_lightning.data.records import deduplicate_split

__all__ = [
    "TESTBED_FAMILIES",
    "Split",
    "bbh_sample",
    "generated_split",
    "gsm8k_bbh_split",
    "gsm8k_split",
    "jsonl_split",
    "testbed_split",
]

log = logging.getLogger(__name__)


@dataclass
class Split:
    """The pool (``train``, list position = pool id) and the held-out records (``val``, or ``None``).

    ``flags`` holds record-level flags of the pool, each a list aligned with ``train`` (the testbed's
    ``noisy`` and ``duplicate``); ``lead-train`` reports the share of trained examples carrying each.
    """

    train: list[InstructionRecord]
    val: list[InstructionRecord] | None
    flags: dict[str, list[bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, values in self.flags.items():
            if len(values) != len(self.train):
                raise ValueError(
                    f"Flag `{name}` has {len(values)} values for a pool of {len(self.train)} records."
                )


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
    train = generate_pool(pool_size, seed=seed, families=fams)
    return Split(train, deduplicate_split(train, val))


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
            " downloaded). HINT: set LEAD_DATA_DIR=/path/to/data (holding gsm8k/), LEAD_GSM8K_DIR=/path/to/gsm8k"
            " or `data.records.root=/path/to/gsm8k` (a directory with the official train.jsonl and test.jsonl)."
        )
    train = _limit(
        read_gsm8k(root / "train.jsonl", strip_calculator=strip_calculator), train_limit, "train_limit"
    )
    val = None
    if val_limit != 0:
        val = _limit(
            read_gsm8k(root / "test.jsonl", strip_calculator=strip_calculator), val_limit, "val_limit"
        )
    return Split(train, deduplicate_split(train, val))


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
        val = read_records(val_path, format=format, **reader_kwargs)
        return Split(records, deduplicate_split(records, val))
    if not 0 <= val_fraction < 1:
        raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction!r}.")
    n_val = round(val_fraction * len(records))
    if n_val == 0:
        return Split(records, deduplicate_split(records, None))
    held = set(random.Random(seed).sample(range(len(records)), n_val))
    train = [r for i, r in enumerate(records) if i not in held]
    return Split(train, deduplicate_split(train, [records[i] for i in sorted(held)]))


TESTBED_FAMILIES: dict[str, float] = {
    "copy": 0.30,
    "reverse": 0.25,
    "sort_letters": 0.15,
    "add": 0.20,
    "multiply": 0.10,
}
"""The testbed's default families and their shares of the pool: sizes and difficulties differ.
(``gsm8k`` may be added with a share; its long examples cost a tiny model ~6x the CPU time per step.)"""

_SEED_OFFSETS = {"pool": 0, "noise": 1, "duplicates": 2, "eval": 3, "pretrain": 4, "reference": 5}
"""Each part's seed is ``seed * 1009 + offset``: a new part takes a new offset, so the parts that
exist keep their records (the study's score caches are keyed by them)."""


def _counts(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """``total`` split by ``weights`` with the largest-remainder method (the counts sum to ``total``)."""
    norm = sum(weights.values())
    raw = {k: total * w / norm for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (counts[k] - raw[k], k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def _gsm8k_records(root: Path) -> tuple[list[InstructionRecord], list[InstructionRecord]] | None:
    files = [root / "train.jsonl", root / "test.jsonl"]
    if not all(f.is_file() for f in files):
        return None
    return read_gsm8k(files[0]), read_gsm8k(files[1])


def testbed_split(
    pool_size: int = 3000,
    families: Mapping[str, float] | None = None,
    noisy_families: Sequence[str] = ("reverse", "add"),
    noisy_share: float = 0.25,
    duplicate_share: float = 0.03,
    eval_per_family: int = 100,
    pretrain_size: int = 4000,
    split: str = "pool",
    data_dir: str | PathLike[str] | None = None,
    on_missing: str = "skip",
    seed: int = 0,
    reference_size: int = 500,
) -> Split:
    """The study testbed: a structured pool with planted noise and near-duplicates, clean held-out
    examples per family, and a disjoint clean pre-training split for the base model.

    - **Families** of different sizes (``families``: name -> share of the pool) and difficulty:
      generated ``copy`` < ``reverse`` < ``sort_letters`` < ``add`` < ``multiply`` (see
      :data:`~lead_lightning.data.SYNTHETIC_FAMILIES`) and ``gsm8k`` (read from
      ``<data_dir>/gsm8k``; when absent it is skipped with a warning, or an error with
      ``on_missing="error"``). Each record's ``group`` is its family.
    - **Noise**: in each of ``noisy_families``, ``noisy_share`` of the examples take another
      example's answer (:func:`~lead_lightning.data.plant_noise`); their clean twins stay learnable.
    - **Near-duplicates**: ``duplicate_share`` of the pool are copies of other pool examples with a
      trivially perturbed prompt (a noisy example's copy is noisy too), placed at seeded positions.
    - ``flags["noisy"]`` / ``flags["duplicate"]`` mark them (``split="pool"``).
    - **Held-out** (``val``): ``eval_per_family`` clean examples of every family, none of whose prompts
      is in the pool or the pre-training split (GSM8K: the test file).
    - **Pre-training** (``split="pretrain"``: ``train`` is this split, ``val`` the same held-out set):
      ``pretrain_size`` clean examples in the same family shares, prompts disjoint from the pool and
      the held-out set (GSM8K: training problems not in the pool).
    - **Reference** (``split="reference"``: ``train`` is this split, ``val`` the same held-out set):
      ``reference_size`` clean examples in the same family shares (no planted noise, no duplicates),
      prompts disjoint from the pool, the held-out set and the pre-training split (GSM8K: training
      problems in neither the pool nor the pre-training split). A model trained on it gives each pool
      example's *reference loss* for RHO-LOSS selection (Mindermann et al., ICML 2022; see
      :func:`~lead_lightning.scoring.reference_losses`).

    Every part has its own seed derived from ``seed``, so the pool, held-out, pre-training and
    reference examples never depend on each other's sizes.

    Args:
        pool_size: examples in the pool, near-duplicates included.
        families: family -> share of the pool (0 leaves a family out); default :data:`TESTBED_FAMILIES`.
        noisy_families: families with planted wrong answers.
        noisy_share: share of each noisy family whose answer is wrong.
        duplicate_share: share of the pool that is near-duplicates.
        eval_per_family: held-out clean examples per family.
        pretrain_size: examples in the pre-training split.
        split: ``"pool"`` (train = the pool), ``"pretrain"`` (train = the pre-training split) or
            ``"reference"`` (train = the reference split).
        data_dir: directory holding ``gsm8k/train.jsonl`` and ``gsm8k/test.jsonl``.
        on_missing: ``"skip"`` or ``"error"`` when a family's data files are absent.
        seed: the testbed's seed.
        reference_size: examples in the reference split.

    Example:
        >>> s = testbed_split(200, families={"copy": 0.5, "add": 0.5}, noisy_families=["add"],
        ...                   eval_per_family=5, pretrain_size=40)
        >>> len(s.train), len(s.val), sum(s.flags["noisy"]) > 0, sum(s.flags["duplicate"])
        (200, 10, True, 6)
        >>> p = testbed_split(200, families={"copy": 0.5, "add": 0.5}, noisy_families=["add"],
        ...                   eval_per_family=5, pretrain_size=40, split="pretrain")
        >>> len(p.train), p.val == s.val, {r.prompt for r in p.train} & {r.prompt for r in s.train}
        (40, True, set())
        >>> r = testbed_split(200, families={"copy": 0.5, "add": 0.5}, noisy_families=["add"],
        ...                   eval_per_family=5, pretrain_size=40, split="reference", reference_size=30)
        >>> len(r.train), r.val == s.val, r.flags, {x.prompt for x in r.train} & {x.prompt for x in p.train}
        (30, True, {}, set())
    """
    if split not in ("pool", "pretrain", "reference"):
        raise ValueError(f"`split` must be 'pool', 'pretrain' or 'reference', got {split!r}.")
    if not isinstance(reference_size, int) or reference_size < 1:
        raise ValueError(f"`reference_size` must be a positive int, got {reference_size!r}.")
    if on_missing not in ("skip", "error"):
        raise ValueError(f"`on_missing` must be 'skip' or 'error', got {on_missing!r}.")
    if not 0.0 <= duplicate_share < 1.0:
        raise ValueError(f"`duplicate_share` must be in [0, 1), got {duplicate_share!r}.")
    weights = dict(TESTBED_FAMILIES if families is None else families)
    unknown = sorted(set(weights) - {"gsm8k"} - set(generated_families()))
    if unknown or any(not isinstance(w, (int, float)) or w < 0 for w in weights.values()):
        raise ValueError(
            f"`families` must map known families to shares >= 0, got {weights!r}; unknown: {unknown}."
            f" HINT: choose from {sorted(['gsm8k', *generated_families()])}."
        )
    weights = {k: float(w) for k, w in weights.items() if w > 0}  # share 0: the family is left out
    if not weights:
        raise ValueError("`families` gives no family a share > 0.")
    gsm8k = None
    if "gsm8k" in weights:
        root = Path(data_dir if data_dir is not None else ".") / "gsm8k"
        gsm8k = _gsm8k_records(root)
        if gsm8k is None:
            message = (
                f"The testbed's gsm8k family needs {root}/train.jsonl and test.jsonl, which are absent."
                " HINT: set LEAD_DATA_DIR (or `data.records.data_dir`) to the directory holding gsm8k/,"
                " or drop gsm8k from `data.records.families`."
            )
            if on_missing == "error":
                raise FileNotFoundError(message)
            log.warning(message + " Skipping the gsm8k family.")
            del weights["gsm8k"]
    missing_noisy = sorted(set(noisy_families) - set(weights))
    if missing_noisy:
        raise ValueError(f"`noisy_families` {missing_noisy} are not among the families {sorted(weights)}.")

    n_dup = round(duplicate_share * pool_size)
    if pool_size - n_dup < len(weights):
        raise ValueError(f"`pool_size` ({pool_size}) is too small for {len(weights)} families.")
    sizes = _counts(weights, pool_size - n_dup)

    def part(name: str) -> int:
        return seed * 1009 + _SEED_OFFSETS[name]

    def draw(family: str, n: int, stream: str, exclude: set[str], source: list[InstructionRecord]) -> list:
        if family != "gsm8k":
            return generate_family(family, n, seed=part(stream), exclude=exclude)
        free = [r for r in source if r.prompt not in exclude]
        if n > len(free):
            raise ValueError(f"gsm8k has {len(free)} problems left for the {stream} split, {n} asked.")
        return random.Random(part(stream)).sample(free, n)

    gsm_train, gsm_test = gsm8k if gsm8k is not None else ([], [])
    base: list[InstructionRecord] = []
    for family, n in sizes.items():
        base += draw(family, n, "pool", set(), gsm_train)
    random.Random(part("pool")).shuffle(base)
    used = {r.prompt for r in base}
    val: list[InstructionRecord] = []
    for family in sizes:
        val += draw(family, eval_per_family, "eval", used, gsm_test if family == "gsm8k" else [])
    if split in ("pretrain", "reference"):
        used |= {r.prompt for r in val}
        pre: list[InstructionRecord] = []
        for family, n in _counts(weights, pretrain_size).items():
            pre += draw(family, n, "pretrain", used, gsm_train)
        random.Random(part("pretrain")).shuffle(pre)
        if split == "pretrain":
            return Split(pre, val or None)
        # drawn after the pre-training split, with its own seed: neither the pool, the held-out set
        # nor the pre-training split depends on it
        used |= {r.prompt for r in pre}
        ref: list[InstructionRecord] = []
        for family, n in _counts(weights, reference_size).items():
            ref += draw(family, n, "reference", used, gsm_train)
        random.Random(part("reference")).shuffle(ref)
        return Split(ref, val or None)

    noisy_pool, noisy = plant_noise(base, noisy_families, noisy_share, seed=part("noise"))
    copies, sources = near_duplicates(noisy_pool, n_dup, seed=part("duplicates"))
    records, flags_noisy, flags_dup = list(noisy_pool), list(noisy), [False] * len(noisy_pool)
    rng = random.Random(part("duplicates"))
    for copy, src in zip(copies, sources, strict=True):
        at = rng.randint(0, len(records))
        records.insert(at, copy)
        flags_noisy.insert(at, noisy[src])
        flags_dup.insert(at, True)
    return Split(records, val or None, {"noisy": flags_noisy, "duplicate": flags_dup})


def bbh_sample(
    root: str | PathLike[str],
    n: int,
    seed: int = 0,
    max_chars: int | None = None,
    group: str | None = "bbh",
) -> list[InstructionRecord]:
    """A fixed seeded sample of ``n`` BIG-Bench-Hard examples spread over the tasks in ``root``.

    Tasks are visited round-robin in a seeded order, each contributing its next seeded example, so
    every task is represented once before any appears twice. ``max_chars`` keeps only examples whose
    input + target are at most that many characters (short enough for a short ``max_length``).
    ``group`` replaces every record's group (the task name, :func:`~lead_lightning.data.read_bbh`)
    so the held-out set reports one ``bbh`` family; ``None`` keeps the task names.

    Example:
        >>> import json, os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> for t in ("a", "b"):
        ...     rows = [{"input": f"{t} {i}?", "target": "x"} for i in range(3)]
        ...     _ = open(os.path.join(d, f"{t}.json"), "w").write(json.dumps({"examples": rows}))
        >>> s = bbh_sample(d, 4)
        >>> len(s), sorted(r.prompt[0] for r in s), {r.group for r in s}
        (4, ['a', 'a', 'b', 'b'], {'bbh'})
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}.")
    rng = random.Random(seed)
    by_task: dict[str, list[InstructionRecord]] = {}
    for r in read_bbh(root):
        if max_chars is None or len(r.prompt) + len(r.response) <= max_chars:
            by_task.setdefault(r.group, []).append(r)
    tasks = sorted(by_task)
    rng.shuffle(tasks)
    for t in tasks:
        rng.shuffle(by_task[t])
    if n > sum(len(v) for v in by_task.values()):
        raise ValueError(
            f"{root} has {sum(len(v) for v in by_task.values())} BBH examples that fit, {n} asked."
        )
    out: list[InstructionRecord] = []
    depth = 0
    while len(out) < n:
        for t in tasks:
            if depth < len(by_task[t]) and len(out) < n:
                r = by_task[t][depth]
                out.append(r if group is None else InstructionRecord(r.prompt, r.response, group))
        depth += 1
    return out


def gsm8k_bbh_split(
    pool_size: int = 128,
    gsm8k_eval: int = 30,
    bbh_eval: int = 30,
    reference_size: int = 48,
    split: str = "pool",
    data_dir: str | PathLike[str] | None = None,
    bbh_max_chars: int | None = 500,
    seed: int = 0,
) -> Split:
    """GSM8K training problems as the pool, held-out GSM8K test problems and BIG-Bench-Hard examples
    as the validation set (groups ``gsm8k`` and ``bbh``: ``val/loss/gsm8k``, ``val/loss/bbh`` and
    their mean ``val/loss_macro``), and a clean reference split of other GSM8K training problems.

    The SmolLM2 confirmation study's data (``benchmarks/smollm2_study/PROTOCOL.md``). The GSM8K parts
    are :func:`testbed_split` with ``families={"gsm8k": 1}``, no planted noise and no near-duplicates
    (so pool, held-out and reference problems are the testbed's seeded, disjoint draws; its
    pre-training split takes one problem); BBH is :func:`bbh_sample` of ``<data_dir>/bbh``.

    Args:
        pool_size: GSM8K training problems in the pool.
        gsm8k_eval: GSM8K test problems in the held-out set.
        bbh_eval: BBH examples in the held-out set (0: none).
        reference_size: GSM8K training problems in the reference split (disjoint from the pool).
        split: ``"pool"`` (train = the pool) or ``"reference"`` (train = the reference split); the
            held-out set is the same.
        data_dir: directory holding ``gsm8k/{train,test}.jsonl`` and ``bbh/*.json``.
        bbh_max_chars: keep BBH examples whose input + target are at most this many characters.
        seed: the data seed (pool, held-out and reference draws).
    """
    if split not in ("pool", "reference"):
        raise ValueError(f"`split` must be 'pool' or 'reference', got {split!r}.")
    root = Path(data_dir if data_dir is not None else ".")
    gsm = testbed_split(
        pool_size,
        families={"gsm8k": 1.0},
        noisy_families=(),
        noisy_share=0.0,
        duplicate_share=0.0,
        eval_per_family=gsm8k_eval,
        pretrain_size=1,
        split=split,
        data_dir=root,
        on_missing="error",
        seed=seed,
        reference_size=reference_size,
    )
    val = list(gsm.val or [])
    if bbh_eval:
        val += bbh_sample(root / "bbh", bbh_eval, seed=seed, max_chars=bbh_max_chars)
    return Split(gsm.train, val or None, gsm.flags)


def generated_families() -> list[str]:
    """The clean generated families the testbed can use (``noisy_*`` families excluded).

    Example:
        >>> generated_families()[:2]
        ['add', 'copy']
    """
    from lead_lightning.data import SYNTHETIC_FAMILIES

    return sorted(f for f in SYNTHETIC_FAMILIES if "noisy" not in f)
