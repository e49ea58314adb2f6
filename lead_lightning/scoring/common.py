"""What the scoring pass, the LoRA warm-up and the reference model share: the offline Trainer's
arguments, a seeded few-step fit, the HF model inside a module, and the rank of this process before
any process group exists.

Both :mod:`~lead_lightning.scoring.scorer` and :mod:`~lead_lightning.scoring.warmup` import this
module (and not each other), so neither needs the other's private helpers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["fit_steps", "hf_model", "launch_rank", "launch_world_size", "offline_trainer_kwargs"]


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


def fit_steps(
    module: Any,
    dm: Any,
    ids: list[int],
    *,
    max_steps: int,
    seed: int,
    batch_size: int | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """Train ``module`` in place for ``max_steps`` optimizer steps on examples ``ids`` of ``dm``'s
    training set, in seeded shuffles (repeated as needed); the global RNG is left untouched.

    Used by the LoRA warm-up and the RHO-LOSS reference model (offline stage; one device).

    Args:
        module: a ``LightningModule`` (e.g. a ``CausalLMModule``); put in train mode for the fit.
        dm: a set-up ``InstructionDataModule`` (its dataset, collator, batch size and workers).
        ids: the training set's indices to train on.
        max_steps: optimizer steps.
        seed: seed of the shuffles and of everything random in the fit (dropout, LoRA dropout).
        batch_size: default ``dm.batch_size``.
        trainer_kwargs: ``Trainer`` arguments over :func:`offline_trainer_kwargs` (callbacks dropped).

    Returns:
        The ``Trainer`` that ran the fit.
    """
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Subset

    assert dm.train_dataset is not None, "set the datamodule up first"
    loader = DataLoader(
        Subset(dm.train_dataset, ids),
        batch_size=batch_size or dm.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=dm.num_workers,
        collate_fn=dm.collator,
    )
    kwargs = offline_trainer_kwargs(trainer_kwargs)
    kwargs.update(max_steps=max_steps, max_epochs=-1)
    kwargs.pop("callbacks", None)  # scoring callbacks (shard writers) have no business in training
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        trainer = pl.Trainer(**kwargs)
        module.train()  # Lightning keeps the mode it is given; dropout (LoRA's too) needs train mode
        trainer.fit(module, train_dataloaders=loader)
    return trainer
