"""What the scoring pass and the LoRA warm-up share: the offline Trainer's arguments, the HF model
inside a module, and the rank of this process before any process group exists.

Both :mod:`~lead_lightning.scoring.scorer` and :mod:`~lead_lightning.scoring.warmup` import this
module (and not each other), so neither needs the other's private helpers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["hf_model", "launch_rank", "launch_world_size", "offline_trainer_kwargs"]


def offline_trainer_kwargs(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Trainer arguments of the offline stage (no logger, no checkpoints, a progress bar), then ``overrides``.

    Example:
        >>> offline_trainer_kwargs({"enable_progress_bar": False})["enable_progress_bar"]
        False
    """
    kwargs: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": True,
    }
    kwargs.update(overrides or {})
    return kwargs


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a ``CausalLMModule`` (or the model itself).

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> hf_model(net) is net
        True
    """
    import lightning.pytorch as pl

    inner = getattr(model, "model", None)
    if isinstance(model, pl.LightningModule) and isinstance(inner, torch.nn.Module):
        return inner
    return model


def launch_rank() -> int:
    """This process's rank as its launcher's environment says, before any process group is up.

    ``RANK`` (torchrun) when set; else ``LOCAL_RANK`` on node 0 (Lightning's own launcher re-runs the
    script for ranks > 0 with ``LOCAL_RANK``, ``NODE_RANK`` and ``WORLD_SIZE`` set; on another node the
    value is positive, ``NODE_RANK * WORLD_SIZE + LOCAL_RANK``); else ``SLURM_PROCID``; else 0. It is 0
    for exactly one process of a job: the one that does work all ranks share (scoring the pool,
    clearing shards).

    Example:
        >>> import os
        >>> launch_rank() if "RANK" not in os.environ and "LOCAL_RANK" not in os.environ else 0
        0
    """
    env = os.environ
    if env.get("RANK"):
        return int(env["RANK"])
    if env.get("LOCAL_RANK"):
        node = int(env.get("NODE_RANK") or 0)
        return node * int(env.get("WORLD_SIZE") or 1) + int(env["LOCAL_RANK"])
    if env.get("SLURM_PROCID"):
        return int(env["SLURM_PROCID"])
    return 0


def launch_world_size() -> int:
    """The number of processes the launcher started: ``WORLD_SIZE``, else ``SLURM_NTASKS``, else 1.

    Example:
        >>> launch_world_size() >= 1
        True
    """
    env = os.environ
    return int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1)
