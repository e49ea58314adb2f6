"""Baselines on the same data, rounds and examples per round as LEAD: ``full``, ``random``, ``static_ifd``.

``full`` walks seeded shuffles of the whole pool; ``random`` and ``static_ifd`` choose ``budget``
examples once (at random / highest IFD first, flagged IFD > 1 last) and walk seeded shuffles of
that subset. Each round trains the next ``per_round`` ids of the walk. The callback keeps a history
and logs the LEAD keys that apply to a baseline, so reports and sweeps compare like with like.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lead_lightning.pool import PoolIndex
from lead_lightning.sampler import RoundSampler
from lead_lightning.selection import resolve_count

__all__ = ["BASELINES", "BaselineSelectionCallback", "choose_subset"]

BASELINES = ("full", "random", "static_ifd")


def choose_subset(pool: PoolIndex, method: str, budget: int, seed: int) -> Tensor:
    """The ids a baseline may train on, chosen once before training.

    Example:
        >>> pool = PoolIndex(clusters=[0, 0, 1, 1], iu0=[1.0] * 4, ifd=[0.5, 0.9, 1.2, 0.7])
        >>> choose_subset(pool, "static_ifd", 2, seed=0).tolist()
        [1, 3]
    """
    n = len(pool)
    if method == "full":
        return torch.arange(n)
    if method == "random":
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:budget].sort().values
    if method == "static_ifd":
        if pool.ifd is None:
            raise ValueError("`static_ifd` needs IFD scores in the pool index (scoring computes them).")
        ifd = pool.ifd.double().nan_to_num(nan=-math.inf)
        key = torch.where(ifd > 1, ifd - 1e9, ifd)  # degenerate IFD (> 1) ranks below every valid one
        return torch.sort(key, descending=True, stable=True).indices[:budget].sort().values
    raise ValueError(f"`method` must be one of {list(BASELINES)}, got {method!r}.")


class BaselineSelectionCallback(Callback):
    """Trains a fixed walk over a baseline subset, ``per_round`` examples per round (= epoch).

    Args:
        pool: the pool index (clusters for reporting, IFD for ``static_ifd``).
        method: ``"full"``, ``"random"`` or ``"static_ifd"``.
        budget: unique examples for ``random`` / ``static_ifd`` (fraction or count; ignored by ``full``).
        per_round: examples trained per round.
        seed: seeds the choice and the shuffles.
    """

    def __init__(
        self, pool: PoolIndex, method: str, budget: float | int, per_round: int, seed: int = 42
    ) -> None:
        super().__init__()
        if method not in BASELINES:
            raise ValueError(f"`method` must be one of {list(BASELINES)}, got {method!r}.")
        self.pool, self.method, self.seed = pool, method, int(seed)
        self.budget = len(pool) if method == "full" else resolve_count("budget", budget, len(pool))
        self.subset = choose_subset(pool, method, self.budget, self.seed)
        self.per_round = resolve_count("per_round", int(min(per_round, len(self.subset))), len(pool))
        self.sampler = RoundSampler(self.current_subset)
        self.round = 0
        self.history: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self._seen = torch.zeros(len(pool), dtype=torch.bool)
        self._losses: list[Tensor] = []
        self._t0 = 0.0

    def current_subset(self) -> Tensor:
        """This round's ids: positions ``[r * per_round, (r + 1) * per_round)`` of the seeded walk."""
        m, start = len(self.subset), self.round * self.per_round
        out = []
        for p in range(start // m, (start + self.per_round - 1) // m + 1):
            perm = self.subset[
                torch.randperm(m, generator=torch.Generator().manual_seed(self.seed * 7919 + p))
            ]
            lo, hi = max(start - p * m, 0), min(start + self.per_round - p * m, m)
            out.append(perm[lo:hi])
        return torch.cat(out)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.sampler.set_distributed(trainer.global_rank, trainer.world_size)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_train_sampler"):
            datamodule.set_train_sampler(self.sampler)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._losses = time.perf_counter(), []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, dict) and "per_example_loss" in outputs:
            self._losses.append(outputs["per_example_loss"].detach().float().cpu())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ids = self.current_subset()
        self._seen[ids] = True
        losses = torch.cat(self._losses) if self._losses else torch.zeros(0)
        finite = torch.isfinite(losses)
        seen = int(self._seen.sum())
        e: dict[str, Any] = {
            "round": self.round,
            "arms": [],
            "n_selected": int(ids.numel()),
            "selected_per_cluster": torch.bincount(
                self.pool.clusters[ids], minlength=self.pool.num_clusters
            ).tolist(),
            "reward_raw": {},
            "reward": {},
            "probs": [],
            "unique_seen": seen,
            "budget_frac": seen / self.budget,
            "loss_mean_selected": float(losses[finite].mean()) if bool(finite.any()) else math.nan,
            "nan_skipped": int((~finite).sum()),
            "round_time_s": time.perf_counter() - self._t0,
        }
        self.history.append(e)
        self.round += 1
        metrics = {f"lead/{k}": float(e[k]) for k in ("round", "unique_seen", "budget_frac", "nan_skipped")}
        metrics.update({"lead/selected": e["n_selected"], "lead/round_time_s": e["round_time_s"]})
        metrics["lead/loss_mean_selected"] = e["loss_mean_selected"]
        metrics.update({f"lead/selected/cluster_{k}": c for k, c in enumerate(e["selected_per_cluster"])})
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "seen": self._seen.clone(), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.round = int(state_dict["round"])
        self._seen = state_dict["seen"].clone()
        self.history = list(state_dict.get("history", []))
