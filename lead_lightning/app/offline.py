"""``lead-train``'s offline stage, done once: the pool index from a ``lead-score`` file, the score
cache, or one scoring pass.

- ``pool.index=path.parquet``: train from a ``lead-score`` index; nothing is scored. Its row count
  must equal the number of pool records, and (``pool.check_provenance``) the records digest it
  stores must equal that of the records ``lead-train`` loaded.
- Otherwise the pool is scored (iu0, IFD[, embeddings]) and clustered, keyed by
  :func:`~lead_lightning.scoring.fingerprint` of everything that determines the result (records,
  model, tokenizer, template, max length, truncation, seed, scoring and clustering settings). With
  ``pool.cache`` (the default) the index is kept as ``<pool.cache_dir>/<fingerprint>.parquet``
  (written atomically) and a later run, sweep job or DDP rank with the same fingerprint loads it
  instead of scoring again. With ``pool.cache=false`` every run scores, and the index is written to
  ``<paths.output_dir>/pool_index.parquet``.
- ``pool.reference.source`` (``split`` | ``jsonl`` | ``crossfit``; default ``none``): after scoring,
  RHO-LOSS reference losses (:mod:`lead_lightning.scoring.reference`) become the index's ``ref_loss``
  column. ``split``: a copy of the model trained on ``data.records`` built again with
  ``split=<pool.reference.split>`` (the testbed's clean ``reference`` split); ``jsonl``: on the
  records of ``pool.reference.path``; ``crossfit``: each of ``pool.reference.folds`` folds of the pool
  scored by a copy trained on the others. The reference settings and records digest join the
  fingerprint only then, so the cache keys of runs without a reference stay as they were.
- Under DDP the pool is scored once: the launcher's rank 0 scores and writes the file; the other
  ranks (``LOCAL_RANK``/``RANK`` > 0 with ``WORLD_SIZE`` > 1, known before any trainer exists) wait
  for it (up to ``pool.wait_timeout_s``) and load it, so every rank trains on the same index. With
  Lightning's own launcher the other ranks start only once rank 0 has built the pool, so they find
  the file at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import torch

    from lead_lightning.data import InstructionDataModule, InstructionRecord
    from lead_lightning.pool import PoolIndex

__all__ = [
    "build_pool",
    "cluster_names",
    "load_pool_index",
    "load_reference_records",
    "pool_fingerprint_parts",
    "wait_for_index",
]

log = logging.getLogger(__name__)

INDEX_NAME = "pool_index.parquet"
"""The index file in the run directory when the cache is off (``pool.cache=false``)."""


def build_pool(
    cfg: DictConfig,
    module: torch.nn.Module,
    dm: InstructionDataModule,
    records: Sequence[InstructionRecord],
) -> tuple[PoolIndex, list[str]]:
    """The pool index ``lead-train`` selects from, and a name per cluster (see the module docstring).

    Args:
        cfg: the composed ``lead-train`` config (``pool``, ``clustering``, ``trainer``, ``seed``,
            ``paths`` are read).
        module: the model that scores (its initial weights), e.g. a ``CausalLMModule``.
        dm: the datamodule over ``records`` (its tokenizer, template, max length and truncation).
        records: the pool, in id order.

    Returns:
        The :class:`~lead_lightning.pool.PoolIndex` (with its ``provenance``) and the cluster names.
    """
    from lead_lightning.app.schema import ClusterInput
    from lead_lightning.scoring import fingerprint
    from lead_lightning.scoring.common import launch_rank, launch_world_size

    pool_cfg = cfg.pool
    if pool_cfg.index:
        pool = load_pool_index(pool_cfg.index, records, check_provenance=pool_cfg.check_provenance)
        source = _reference_source(cfg)
        if source != "none" and getattr(pool, "ref_loss", None) is None:
            raise ValueError(
                f"`pool.reference.source={source}` asks for reference losses, but `pool.index={pool_cfg.index}`"
                " has no `ref_loss` column, and nothing is scored when training from an index file. HINT:"
                " leave `pool.index` unset so that lead-train scores the pool and computes the reference"
                " losses (cached), or set `pool.reference.source=none`."
            )
        if source != "none":
            log.info(f"pool: the reference losses are the `ref_loss` column of {pool_cfg.index}")
        log.info(
            f"pool: training from pool.index={pool_cfg.index} ({len(pool)} examples, {pool.num_clusters}"
            " clusters); nothing scored, the `clustering` settings are not used"
        )
        return pool, cluster_names(pool, records, (pool.provenance or {}).get("cluster_input"))

    reference = load_reference_records(cfg, records)
    parts = pool_fingerprint_parts(cfg, module, dm, records, reference_records=reference)
    fp = fingerprint(**parts)
    if pool_cfg.cache:
        path = Path(str(pool_cfg.cache_dir)).expanduser() / f"{fp}.parquet"
    else:
        path = Path(str(cfg.paths.output_dir)) / INDEX_NAME
    rank = launch_rank()
    if rank > 0 and launch_world_size() > 1:
        pool = wait_for_index(path, fp, timeout_s=float(pool_cfg.wait_timeout_s), rank=rank)
        log.info(f"rank {rank}: loaded the pool index {path} that rank 0 wrote (fingerprint {fp[:12]})")
    else:
        cached = _load_if_fingerprint(path, fp) if pool_cfg.cache else None
        if cached is not None:
            pool = cached
            log.info(f"pool: loaded the cached pool index {path} (fingerprint {fp[:12]}); nothing scored")
        else:
            t0 = time.perf_counter()
            pool = _score_and_cluster(cfg, module, dm, records, parts, fp, reference)
            pool.save(path)  # atomic (tmp + rename): a waiting rank never reads half a file
            log.info(
                f"pool: scored {len(pool)} examples in {time.perf_counter() - t0:.1f} s; wrote {path}"
                f" (fingerprint {fp[:12]})"
            )
    return pool, cluster_names(pool, records, ClusterInput(cfg.clustering.input).value)


def pool_fingerprint_parts(
    cfg: DictConfig,
    module: torch.nn.Module,
    dm: InstructionDataModule,
    records: Sequence[InstructionRecord],
    reference_records: Sequence[InstructionRecord] | None = None,
) -> dict[str, Any]:
    """What determines ``lead-train``'s pool index: :func:`~lead_lightning.scoring.scoring_parts`
    of its records, model, tokenizer and data settings, plus the run's clustering settings.

    With ``pool.reference.source`` other than ``none`` also ``reference``: its settings, the module's
    optimizer settings it trains with and the digest of its records (``reference_records``, loaded
    with :func:`load_reference_records` when not given). Without a reference the parts are exactly
    what they were before reference losses existed, so existing cache entries keep their keys.
    """
    from lead_lightning.app.schema import ClusterInput
    from lead_lightning.scoring import scoring_parts

    clustering = OmegaConf.to_container(cfg.clustering, resolve=True, enum_to_str=True)
    parts = scoring_parts(
        records,
        module,
        dm.tokenizer,
        template=dm.template,
        max_length=dm.max_length,
        seed=int(cfg.seed),
        truncation=dm.truncation,
        embed=ClusterInput(cfg.clustering.input) == ClusterInput.embedding,
        warmup=None,
        clustering=clustering,
    )
    if _reference_source(cfg) != "none":
        if reference_records is None:
            reference_records = load_reference_records(cfg, records)
        parts["reference"] = _reference_parts(cfg, module, dm, reference_records)
    return parts


def _reference_source(cfg: DictConfig) -> str:
    """``pool.reference.source`` as a string (``"none"`` when the config has no reference node)."""
    ref = cfg.pool.get("reference")
    if ref is None:
        return "none"
    source = ref.source
    return str(getattr(source, "value", source))


def _reference_parts(
    cfg: DictConfig,
    module: torch.nn.Module,
    dm: InstructionDataModule,
    reference_records: Sequence[InstructionRecord] | None,
) -> dict[str, Any]:
    """The settings a reference-loss column depends on (for the fingerprint and the provenance)."""
    from lead_lightning.scoring import records_digest

    ref = cfg.pool.reference
    source = _reference_source(cfg)
    hparams = getattr(module, "hparams", {})
    parts: dict[str, Any] = {
        "source": source,
        "max_steps": int(ref.max_steps),
        "lr": float(ref.lr) if ref.lr is not None else None,
        "batch_size": int(ref.batch_size or dm.batch_size),
        "seed": int(cfg.seed),
        "module": {k: hparams[k] for k in sorted(hparams)},  # the optimizer and schedule it trains with
    }
    if source == "crossfit":
        parts["folds"] = int(ref.folds)
    else:
        parts["split" if source == "split" else "path"] = str(ref.split if source == "split" else ref.path)
        parts["records"] = records_digest(reference_records or [])
    return parts


def load_reference_records(
    cfg: DictConfig, records: Sequence[InstructionRecord]
) -> list[InstructionRecord] | None:
    """The records a reference model trains on, as ``pool.reference`` says; ``None`` for ``none`` and
    ``crossfit`` (which trains on the pool itself).

    ``split``: ``data.records`` instantiated again with ``split=<pool.reference.split>``, its ``train``
    part; ``jsonl``: the file ``pool.reference.path`` in ``pool.reference.format``. A reference record
    that is also a pool record (same prompt and response) is warned about: RHO-LOSS assumes the
    reference never trained on the examples it scores.

    Raises:
        ValueError: the data source takes no ``split`` argument, ``path`` is missing, no records, or an
            unknown source.
    """
    import inspect

    from hydra.utils import get_method, instantiate

    source = _reference_source(cfg)
    ref = cfg.pool.reference if source != "none" else None
    if ref is None or source == "crossfit":
        return None
    if source == "split":
        target = cfg.data.records.get("_target_")
        params = inspect.signature(get_method(target)).parameters if target else {}
        if "split" not in params:
            raise ValueError(
                f"`pool.reference.source=split` builds `data.records` again with split={ref.split!r}, but"
                f" its target {target} takes no `split` argument. HINT: use `data=testbed` (its clean"
                " `reference` split), `pool.reference.source=jsonl pool.reference.path=<clean records>`,"
                " or `pool.reference.source=crossfit`."
            )
        out = list(instantiate(cfg.data.records, split=ref.split).train)
        where = f"data.records with split={ref.split!r}"
    elif source == "jsonl":
        from lead_lightning.data import read_records

        if not ref.path:
            raise ValueError(
                "`pool.reference.source=jsonl` needs `pool.reference.path` (a JSONL file of clean records"
                " disjoint from the pool)."
            )
        out = read_records(str(ref.path), format=str(ref.format))
        where = f"pool.reference.path={ref.path}"
    else:
        raise ValueError(f"`pool.reference.source` must be none, split, jsonl or crossfit, got {source!r}.")
    if not out:
        raise ValueError(f"The reference records ({where}) are empty.")
    pool_pairs = {(r.prompt, r.response) for r in records}
    shared = sum((r.prompt, r.response) in pool_pairs for r in out)
    if shared:
        log.warning(
            f"pool: {shared} of {len(out)} reference records ({where}) are also pool records: the reference"
            " model trains on examples it then scores, so their reference losses are too low."
        )
    return out


def _score_and_cluster(
    cfg: DictConfig,
    module: torch.nn.Module,
    dm: InstructionDataModule,
    records: Sequence[InstructionRecord],
    parts: dict[str, Any],
    fp: str,
    reference_records: Sequence[InstructionRecord] | None = None,
) -> PoolIndex:
    """Score the pool (iu0, IFD[, embeddings]) in this process, add the reference losses
    (``pool.reference``), and cluster it."""
    import os

    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.utilities import rank_zero_warn

    from lead_lightning.app.schema import ClusterInput
    from lead_lightning.scoring import ScoringModule, build_pool_index, score_pool

    source = ClusterInput(cfg.clustering.input)
    accelerator = cfg.trainer.get("accelerator", "cpu")
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    devices = [int(os.environ.get("LOCAL_RANK", "0"))] if gpu else 1
    trainer_kwargs = {"accelerator": accelerator, "devices": devices, "enable_progress_bar": False}
    scores = score_pool(ScoringModule(module, embed=source == ClusterInput.embedding), dm, trainer_kwargs)
    if "reference" in parts:
        scores = {**scores, "ref_loss": _reference_losses(cfg, module, dm, reference_records, trainer_kwargs)}
    groups = [r.group for r in records]
    if source == ClusterInput.group:
        column: Any = groups
    elif source == ClusterInput.embedding:
        column = scores["embedding"]
    else:
        column = scores["ifd"].clone()
        bad = ~torch.isfinite(column)
        if bool(bad.any()):  # e.g. a response scored 0 alone: put it with the most difficult
            rank_zero_warn(
                f"{int(bad.sum())} example(s) have a non-finite IFD; clustered as the highest IFD."
            )
            column[bad] = column[~bad].max() if bool((~bad).any()) else 1.0
    clusters = instantiate(cfg.clustering.fn)(column)
    provenance = {
        "fingerprint": fp,
        "records": parts["records"],
        "n_records": len(records),
        "cluster_input": source.value,
        "source": "lead-train",
    }
    if "reference" in parts:
        provenance["reference"] = parts["reference"]
    return build_pool_index(scores, clusters, groups if cfg.clustering.stratify else None, provenance)


def _reference_losses(
    cfg: DictConfig,
    module: torch.nn.Module,
    dm: InstructionDataModule,
    reference_records: Sequence[InstructionRecord] | None,
    trainer_kwargs: dict[str, Any],
) -> torch.Tensor:
    """``pool.reference``'s reference losses of the pool (``Tensor[N]``), timed in the log."""
    from lead_lightning.models import CausalLMModule
    from lead_lightning.scoring import crossfit_reference_losses, reference_losses

    ref = cfg.pool.reference
    source = _reference_source(cfg)
    if not isinstance(module, CausalLMModule):
        raise ValueError(
            f"`pool.reference` trains a copy of the model, which must be a CausalLMModule; `model.module`"
            f" built a {type(module).__name__}."
        )
    kw: dict[str, Any] = {
        "max_steps": int(ref.max_steps),
        "lr": float(ref.lr) if ref.lr is not None else None,
        "batch_size": int(ref.batch_size) if ref.batch_size is not None else None,
        "seed": int(cfg.seed),
        "trainer_kwargs": trainer_kwargs,
    }
    t0 = time.perf_counter()
    if source == "crossfit":
        out = crossfit_reference_losses(module, dm, folds=int(ref.folds), **kw)
        what = f"{int(ref.folds)} cross-fitted references"
    else:
        assert reference_records is not None, "loaded by load_reference_records"
        out = reference_losses(module, dm, reference_records, **kw)
        what = f"a reference trained on {len(reference_records)} {source} records"
    log.info(
        f"pool: reference losses ({what}, {int(ref.max_steps)} steps each) in"
        f" {time.perf_counter() - t0:.1f} s"
    )
    return out


def cluster_names(
    pool: PoolIndex, records: Sequence[InstructionRecord], cluster_input: str | None
) -> list[str]:
    """A name per cluster: the record group it stands for (label clusters), else its mean IFD.

    Example:
        >>> from lead_lightning.data import InstructionRecord
        >>> from lead_lightning.pool import PoolIndex
        >>> recs = [InstructionRecord("q", "a", group=g) for g in ("b", "a", "b")]
        >>> cluster_names(PoolIndex(clusters=[1, 0, 1], iu0=[1.0, 1.0, 1.0]), recs, "group")
        ['a', 'b']
        >>> cluster_names(PoolIndex(clusters=[1, 0, 1], iu0=[1.0, 1.0, 1.0]), recs, "ifd")
        ['c0', 'c1']
    """
    labels = sorted({r.group for r in records})
    if cluster_input == "group" and len(labels) == pool.num_clusters:
        return [str(x) for x in labels]
    ifd = pool.ifd
    if ifd is None:
        return [f"c{k}" for k in range(pool.num_clusters)]
    return [f"c{k} (ifd {float(ifd[pool.clusters == k].nanmean()):.3f})" for k in range(pool.num_clusters)]


def load_pool_index(
    path: str, records: Sequence[InstructionRecord], check_provenance: bool = True
) -> PoolIndex:
    """Load a ``lead-score`` pool index for ``records``, checking that it describes them.

    Args:
        path: the parquet file (``pool.index``).
        records: the pool ``lead-train`` loaded, in id order.
        check_provenance: compare the records digest stored in the index with ``records``'.

    Raises:
        ValueError: the index has another number of rows than ``records``, or (with
            ``check_provenance``) was scored on other records.
    """
    from lead_lightning.pool import PoolIndex
    from lead_lightning.scoring import records_digest

    pool = PoolIndex.load(path)
    hint_records = (
        " lead-train's pool is what `data.records` gives, less the held-out part (`data.records.val_fraction`"
        " of a JSONL pool, unless `data.records.val_path` is set) and less the examples the datamodule"
        " excludes (`data.module.truncation: exclude`)."
    )
    if len(pool) != len(records):
        raise ValueError(
            f"`pool.index={path}` has {len(pool)} rows but lead-train loaded {len(records)} pool records;"
            f" the index must hold one row per record, in the same order.{hint_records} HINT: re-run"
            " lead-score on exactly these records."
        )
    if not check_provenance:
        return pool
    stored = (pool.provenance or {}).get("records")
    if stored is None:
        log.warning(
            f"pool.index={path} stores no provenance (written before lead-score recorded it): whether it"
            " was scored on these records cannot be checked. Rewrite it with the current lead-score."
        )
        return pool
    digest = records_digest(records)
    if stored != digest:
        raise ValueError(
            f"`pool.index={path}` was scored on other records: its records digest is {stored[:16]}, the"
            f" {len(records)} records lead-train loaded digest to {digest[:16]}.{hint_records} HINT: re-run"
            " lead-score on these records, or set `pool.check_provenance=false` to train with it anyway."
        )
    return pool


def _load_if_fingerprint(path: Path, fp: str) -> PoolIndex | None:
    """The index at ``path`` if it is readable and stamped with ``fp``, else ``None`` (warned)."""
    from lead_lightning.pool import PoolIndex

    if not path.is_file():
        return None
    try:
        pool = PoolIndex.load(path)
    except Exception as err:  # a damaged cache entry is rescored, never trusted
        log.warning(f"pool: the cached index {path} cannot be read ({err}); scoring again")
        return None
    stored = (pool.provenance or {}).get("fingerprint")
    if stored != fp:
        log.warning(f"pool: {path} holds fingerprint {str(stored)[:12]}, not {fp[:12]}; scoring again")
        return None
    return pool


def wait_for_index(
    path: str | Path, fp: str, timeout_s: float, rank: int = 1, poll_s: float = 0.5
) -> PoolIndex:
    """Wait until the index rank 0 writes at ``path`` (stamped with fingerprint ``fp``) can be loaded.

    Args:
        path: the file rank 0 writes (atomically).
        fp: the fingerprint this rank computed; a file with another one is not this run's (waited past).
        timeout_s: give up after this many seconds.
        rank: this process's rank (for the message).
        poll_s: seconds between looks.

    Raises:
        TimeoutError: the file did not appear (or kept another fingerprint) within ``timeout_s``.
    """
    from lead_lightning.pool import PoolIndex

    path = Path(path)
    deadline = time.monotonic() + timeout_s
    problem = "it does not exist"
    while True:
        if path.is_file():
            try:
                pool = PoolIndex.load(path)
                stored = (pool.provenance or {}).get("fingerprint")
                if stored == fp:
                    return pool
                problem = f"it holds fingerprint {str(stored)[:12]}, not {fp[:12]}"
            except Exception as err:
                problem = f"it cannot be read ({err})"
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Rank {rank} waited {timeout_s:.0f} s for the pool index that rank 0 scores and writes to"
                f" {path}, but {problem}. HINT: look for an error in rank 0's output; make sure every rank"
                " sees the same `pool.cache_dir` (a shared file system) and builds the same model and"
                " records; or score beforehand with `lead-score --devices N` and pass `pool.index=...`;"
                " or raise `pool.wait_timeout_s`."
            )
        time.sleep(poll_s)
