"""Run-time plumbing of ``lead-train``: config checks, run names, loggers, DDP inside a Hydra sweep."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, read_write

__all__ = [
    "check_complete",
    "ddp_job_of_a_sweep",
    "finish_loggers",
    "job_overrides",
    "make_loggers",
    "run_name",
]

_DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def job_overrides() -> list[str]:
    """This job's command-line overrides (``[]`` outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(cfg: DictConfig) -> str:
    """``cfg.run_name``, else the job's overrides (``bandit=uniform,selection.sample_rate=0.05``), else ``default``."""
    if cfg.run_name:
        return str(cfg.run_name)
    return ",".join(o for o in job_overrides() if not o.startswith("logger=")) or "default"


def _missing(node: Any, key: str = "") -> list[str]:
    if isinstance(node, dict):
        return [m for k, v in node.items() for m in _missing(v, f"{key}.{k}" if key else str(k))]
    if isinstance(node, list):
        return [m for i, v in enumerate(node) for m in _missing(v, f"{key}[{i}]")]
    return [key] if isinstance(node, str) and node == "???" else []


def check_complete(cfg: DictConfig) -> None:
    """Fail before any work when a key is still ``???`` (all of them named, interpolations unresolved)."""
    missing = sorted(_missing(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        raise ValueError(
            f"The config leaves {missing} unset (`???`). HINT: give them on the command line, e.g."
            f" `lead-train {missing[0]}=...`."
        )


def make_loggers(cfg: DictConfig) -> list[Any]:
    """Every logger of the ``logger`` group (a dict of ``_target_`` configs, or null)."""
    if not cfg.logger:
        return []
    return [instantiate(c) for c in cfg.logger.values() if c is not None and "_target_" in c]


def finish_loggers(loggers: list[Any]) -> None:
    """End W&B runs, so that the next job of a sweep (same process) starts its own run."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger) and rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            lg.experiment.finish()


@contextmanager
def ddp_job_of_a_sweep(trainer: pl.Trainer) -> Iterator[None]:
    """Keep a ``-m`` sweep from re-running on rank 1, and let every job of it start its own processes.

    Lightning's DDP launcher starts ranks > 0 by re-running ``sys.argv`` plus ``hydra.run.dir=<run.dir>``;
    in a sweep that would start the whole sweep again. Point it at this job (its overrides, its
    directory); afterwards tear the process group down and restore the launcher's environment
    variables, so the next job launches fresh ranks instead of waiting for this job's.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if (
        trainer.world_size < 2
        or os.environ.get("LOCAL_RANK", "0") != "0"
        or not HydraConfig.initialized()
        or HydraConfig.get().mode != RunMode.MULTIRUN
    ):
        yield
        return
    hc, argv, env = HydraConfig.get(), sys.argv, {k: os.environ.get(k) for k in _DDP_ENV}
    sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(hc):  # type: ignore[arg-type]
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
