"""`LeadSelectionCallback`: the Lightning glue of LEAD's in-training data selection.

One Lightning epoch is one LEAD round. Before the round the callback redraws the subset (bandit over
clusters, then top-IDU per group); during it, it records each batch's per-example losses; at round
end it merges the records of all ranks, updates IDU, rewards the bandit and sketches the parameter
update. The maths lives in small modules (:mod:`~lead_lightning.idu`, :mod:`~lead_lightning.sketch`,
:mod:`~lead_lightning.selection`, :mod:`~lead_lightning.bandits`); this class only gathers inputs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lead_lightning.bandits import BanditPolicy, RewardNormalizer, make_bandit
from lead_lightning.distributed import broadcast_tensor, gather_variable
from lead_lightning.idu import IDUState, RoundRecords
from lead_lightning.pool import PoolIndex
from lead_lightning.sampler import RoundSampler
from lead_lightning.selection import (
    ClusterLayout,
    cap_new_examples,
    eligible_mask,
    resolve_count,
    select_in_clusters,
)
from lead_lightning.sketch import ParameterSketch, gradient_coefficient

__all__ = ["LeadSelectionCallback"]

log = logging.getLogger(__name__)

Extract = Callable[[Any, Any], "tuple[Tensor, Tensor]"]
REWARDS = ("idu_drop", "loss_drop", "val_loss_drop")
WITHIN = ("idu", "random")
_STATE_VERSION = 1


def _default_extract(outputs: Any, batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, Mapping) or "ids" not in batch:
        raise KeyError(
            "The training batch carries no `ids` (the pool ids of its examples). HINT: have the collate"
            " function return a dict with an `ids` LongTensor, or pass `extract=lambda outputs, batch: (ids, losses)`."
        )
    if not isinstance(outputs, Mapping) or "per_example_loss" not in outputs:
        raise KeyError(
            "`training_step` must return a dict with `per_example_loss` (Tensor[B], detached), e.g."
            " `lead_lightning.lm_losses(logits, labels)`; got "
            f"{type(outputs).__name__ if not isinstance(outputs, Mapping) else sorted(outputs)}."
        )
    return batch["ids"], outputs["per_example_loss"]


class LeadSelectionCallback(Callback):
    """LEAD data selection inside ``Trainer.fit``: one epoch = one round over a redrawn subset.

    Args:
        pool: clusters, groups and initial utilities of the ``N`` pool examples (ids ``0..N-1``);
            the train dataset's index ``i`` must be pool id ``i``.
        budget: unique examples that may ever be trained on: a fraction in (0, 1] of ``N`` or a count.
        sample_rate: per round, inside each chosen cluster, the fraction in (0, 1] of each group to take
            (LEAD: ``ceil(rate * n_group)``), or an int: examples per round, split across groups.
        bandit: ``"exp3"`` (default), ``"exp3s"``, ``"ucb"``, ``"thompson"``, ``"uniform"``, or a policy object.
        arms_per_round: clusters drawn per round.
        max_uses: times an example may be trained on in all.
        history_weight: ``h`` in ``IDU <- h * IDU + (1 - h) * obs`` (official ``b = 0.1``).
        reward: ``"idu_drop"`` (mean IDU drop of the round's examples), ``"loss_drop"`` (mean loss drop
            since an example's previous visit) or ``"val_loss_drop"`` (drop of ``val_monitor``).
        within_cluster: ``"idu"`` (top IDU per group) or ``"random"`` (the no-IDU ablation).
        max_rounds: stop after this many rounds (``None``: the Trainer's ``max_epochs`` decides).
        stop_on_budget: stop as soon as the unique budget is spent (else revisit seen examples).
        cluster_history: ``"last"`` or ``"first"`` round in which a cluster was trained gives ``d_k``.
        sketch_dim: size of the parameter-update sketch (exact for <= this many trainable params).
        seed: seeds the bandit draws, ``random`` selection, shuffling and the sketch hash.
        shuffle: shuffle the round's subset (official code did not: it trained in group/IDU order).
        bandit_kwargs: extra arguments of the named bandit (e.g. ``{"gamma": 0.1}``).
        extract: ``(outputs, batch) -> (ids, per_example_loss)`` for modules with another contract.
        val_monitor: metric read by ``reward="val_loss_drop"``.

    Example:
        >>> import torch
        >>> from lead_lightning import LeadSelectionCallback, PoolIndex
        >>> pool = PoolIndex(clusters=torch.arange(100) % 4, iu0=torch.rand(100))
        >>> cb = LeadSelectionCallback(pool, budget=0.5, sample_rate=0.2, bandit="exp3", seed=0)
        >>> loader_kwargs = {"sampler": cb.sampler}  # DataLoader(dataset, batch_size=8, **loader_kwargs)
        >>> len(cb.current_subset())  # round 0: 20% of one cluster of 25
        5
    """

    def __init__(
        self,
        pool: PoolIndex,
        budget: float | int = 0.025,
        sample_rate: float | int = 0.015,
        bandit: str | BanditPolicy = "exp3",
        arms_per_round: int = 1,
        max_uses: int = 4,
        history_weight: float = 0.1,
        reward: str = "idu_drop",
        within_cluster: str = "idu",
        max_rounds: int | None = None,
        stop_on_budget: bool = False,
        cluster_history: str = "last",
        sketch_dim: int = 4096,
        seed: int = 42,
        shuffle: bool = True,
        bandit_kwargs: dict[str, Any] | None = None,
        extract: Extract | None = None,
        val_monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        if not isinstance(pool, PoolIndex):
            raise TypeError(f"`pool` must be a `PoolIndex`, got {type(pool).__name__}.")
        n = len(pool)
        self.pool = pool
        self.budget = resolve_count("budget", budget, n)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
            raise ValueError(f"`sample_rate` must be a float in (0, 1] or an int count, got {sample_rate!r}.")
        if isinstance(sample_rate, float):
            if not (0.0 < sample_rate <= 1.0):
                raise ValueError(
                    f"`sample_rate` must be in (0, 1] (a fraction of each group), got {sample_rate!r}."
                    " HINT: pass an int for an absolute number of examples per round."
                )
            self.sample_rate: float | None = float(sample_rate)
            self.examples_per_round: int | None = None
        else:
            self.sample_rate, self.examples_per_round = None, resolve_count("sample_rate", sample_rate, n)
        if not isinstance(arms_per_round, int) or not 1 <= arms_per_round <= pool.num_clusters:
            raise ValueError(
                f"`arms_per_round` must be an int in [1, {pool.num_clusters}] (the number of clusters),"
                f" got {arms_per_round!r}."
            )
        if not isinstance(max_uses, int) or not 1 <= max_uses <= 255:
            raise ValueError(f"`max_uses` must be an int in [1, 255], got {max_uses!r}.")
        if not (isinstance(history_weight, (int, float)) and 0.0 <= history_weight < 1.0):
            raise ValueError(f"`history_weight` must be in [0, 1), got {history_weight!r}.")
        if reward not in REWARDS:
            raise ValueError(f"`reward` must be one of {list(REWARDS)}, got {reward!r}.")
        if within_cluster not in WITHIN:
            raise ValueError(f"`within_cluster` must be one of {list(WITHIN)}, got {within_cluster!r}.")
        if cluster_history not in ("last", "first"):
            raise ValueError(f"`cluster_history` must be 'last' or 'first', got {cluster_history!r}.")
        if max_rounds is not None and (not isinstance(max_rounds, int) or max_rounds < 1):
            raise ValueError(f"`max_rounds` must be a positive int or None, got {max_rounds!r}.")
        self.bandit: BanditPolicy = make_bandit(bandit, pool.num_clusters, **(bandit_kwargs or {}))
        self.arms_per_round = arms_per_round
        self.max_uses = max_uses
        self.history_weight = float(history_weight)
        self.reward = reward
        self.within_cluster = within_cluster
        self.max_rounds = max_rounds
        self.stop_on_budget = stop_on_budget
        self.cluster_history = cluster_history
        self.seed = int(seed)
        self.shuffle = shuffle
        self.val_monitor = val_monitor
        self._extract: Extract = extract or _default_extract

        self.layout = ClusterLayout(pool.clusters, pool.groups)
        self.state = IDUState(pool.iu0)
        self.normalizer = RewardNormalizer()
        self.sketcher = ParameterSketch(sketch_dim, seed=self.seed)
        self.sampler = RoundSampler(self.current_subset)
        self.round = 0
        self.history: list[dict[str, Any]] = []
        self._last_loss: Tensor | None = pool.iu0.clone() if reward == "loss_drop" else None
        self._prev_val: float | None = None
        self._sketch_start: Tensor | None = None
        self._u_prev: Tensor | None = None
        self._u_cluster: dict[int, Tensor] = {}
        self._subset: Tensor | None = None
        self._arms: list[int] = []
        self._probs: Tensor | None = None
        self._coef: Tensor = torch.zeros(pool.num_clusters, dtype=torch.float64)
        self._consumed: list[int] = [0]  # per rank, in this round (restored on a mid-round resume)
        self._stop_reason: str | None = None
        self._round_t0 = 0.0
        self._trainer: pl.Trainer | None = None

    # ------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        return self._generate_state_key(seed=self.seed, bandit=self.bandit.name, budget=self.budget)

    # ------------------------------------------------------------------ public helpers
    def dataloader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` over ``dataset`` that trains this round's subset (passes ``sampler``)."""
        if "shuffle" in kwargs or "sampler" in kwargs or "batch_sampler" in kwargs:
            raise ValueError("`shuffle`, `sampler` and `batch_sampler` are set by the callback; drop them.")
        return DataLoader(dataset, sampler=self.sampler, **kwargs)

    @property
    def stop_reason(self) -> str | None:
        """Why selection stopped training (``None`` while it has not)."""
        return self._stop_reason

    def current_subset(self) -> Tensor:
        """This round's selected ids (drawn on first request; identical on every rank)."""
        if self._subset is None:
            self._draw()
        assert self._subset is not None
        return self._subset

    # ------------------------------------------------------------------ redraw
    def _generator(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.round * 7919 + stream) % (2**63))

    def _budget_left(self) -> int:
        return self.budget - int((self.state.uses > 0).sum())

    def _eligible(self) -> Tensor:
        return eligible_mask(self.state.uses, self.max_uses, self._budget_left())

    def _available_arms(self, eligible: Tensor) -> Tensor:
        counts = torch.bincount(self.layout.clusters.to(torch.int64)[eligible], minlength=self.layout.num_clusters)
        return counts > 0

    def _draw(self) -> None:
        eligible = self._eligible()
        mask = self._available_arms(eligible)
        if self._stop_reason is not None or not bool(mask.any()):
            self._subset, self._arms = torch.empty(0, dtype=torch.int64), []
            return
        n_arms = min(self.arms_per_round, int(mask.sum()))
        self._probs = self.bandit.probabilities(mask)
        self._arms = [int(a) for a in self.bandit.draw(n_arms, self._generator(0), mask)]
        scores = self.state.idu
        if self.within_cluster == "random":
            scores = torch.rand(len(self.state), generator=self._generator(1))
        chosen = select_in_clusters(
            self.layout, self._arms, scores, eligible, self.sample_rate, self.examples_per_round
        )
        chosen = cap_new_examples(chosen, self.state.uses, scores, self._budget_left())
        if self.shuffle and chosen.numel():
            chosen = chosen[torch.randperm(chosen.numel(), generator=self._generator(2))]
        for a in self._arms:
            hist = self._u_cluster.get(a)
            self._coef[a] = gradient_coefficient(hist, self._u_prev)[0]
        self._subset = chosen

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        self.sampler.set_distributed(trainer.global_rank, trainer.world_size)
        if len(self._consumed) != trainer.world_size:
            self._consumed = [0] * trainer.world_size
        reload = trainer.reload_dataloaders_every_n_epochs
        if reload == 0:
            # The fit loop reads the loader's length once unless it reloads; a round's size changes.
            trainer.reload_dataloaders_every_n_epochs = 1
        elif reload != 1:
            raise ValueError(
                f"LeadSelectionCallback needs `Trainer(reload_dataloaders_every_n_epochs=1)` (each round's"
                f" subset has its own size), got {reload}."
            )
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_train_sampler"):
            datamodule.set_train_sampler(self.sampler)

    def _check_wiring(self, trainer: pl.Trainer) -> None:
        from torch.utils._pytree import tree_leaves

        for dl in tree_leaves(trainer.train_dataloader, is_leaf=lambda x: isinstance(x, DataLoader)):
            if getattr(dl, "sampler", None) is self.sampler:
                return
            if getattr(getattr(dl, "batch_sampler", None), "sampler", None) is self.sampler:
                return
        raise RuntimeError(
            "The train dataloader does not draw from LeadSelectionCallback's sampler, so the selection would be"
            " ignored. HINT: build it with `DataLoader(dataset, batch_size=..., sampler=callback.sampler)` or"
            " `callback.dataloader(dataset, batch_size=...)`; the dataset's index i must be pool id i."
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_wiring(trainer)
        if self._sketch_start is None:
            self._sketch_start = self._sketch(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_wiring(trainer)
        self.current_subset()
        self._round_t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ids, losses = self._extract(outputs, batch)
        if not isinstance(losses, Tensor) or losses.dim() != 1 or not isinstance(ids, Tensor) or ids.dim() != 1:
            raise ValueError(
                "`per_example_loss` and `ids` must be 1-D tensors (one value per example), got"
                f" {getattr(losses, 'shape', type(losses))} and {getattr(ids, 'shape', type(ids))}."
            )
        if losses.numel() != ids.numel():
            raise ValueError(
                f"`per_example_loss` has {losses.numel()} values but the batch has {ids.numel()} ids. HINT: compute"
                " it with reduction='none' per example (`lead_lightning.lm_losses`), not a batch mean."
            )
        if ids.device.type == "cpu":  # free to check now; on accelerators it is checked at round end
            self._validate_ids(ids)
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else 0.0
        self.state.record(ids, losses, lr)

    def _validate_ids(self, ids: Tensor) -> None:
        n = len(self.state)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise ValueError(f"Batch ids must be pool ids in [0, {n}), got min {int(ids.min())}, max {int(ids.max())}.")
        if ids.unique().numel() != ids.numel():
            raise ValueError(f"Batch holds duplicated ids: {ids.tolist()[:16]}. Each example must appear once.")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_round(trainer, pl_module)

    # ------------------------------------------------------------------ round end
    def _gather_records(self, trainer: pl.Trainer | None) -> RoundRecords:
        local = self.state.take_records()
        if trainer is None or trainer.world_size == 1:
            self._consumed[0] += len(local)
            return local
        packed = torch.stack([local.ids.double(), local.loss.double(), local.lr])
        counts = torch.zeros(trainer.world_size, dtype=torch.float64)
        counts[trainer.global_rank] = len(local)
        ids, loss, lr, cnt = gather_variable(trainer.strategy, [packed[0], packed[1], packed[2], counts[trainer.global_rank : trainer.global_rank + 1]])
        self._consumed = [c + int(x) for c, x in zip(self._consumed, cnt.tolist())]
        return RoundRecords(ids.to(torch.int64), loss.float(), lr)

    def _sketch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        params = [p for p in pl_module.parameters() if p.requires_grad]
        return broadcast_tensor(trainer.strategy, self.sketcher(params))

    def _finish_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        subset = self.current_subset()
        recs = self.state.carried.cat(self._gather_records(trainer)).first_occurrence()
        self.state.carried = RoundRecords.empty()
        n = len(self.state)
        if len(recs) and (int(recs.ids.min()) < 0 or int(recs.ids.max()) >= n):
            raise ValueError(f"Trained ids must be pool ids in [0, {n}); got min {int(recs.ids.min())}, max {int(recs.ids.max())}.")
        in_subset = torch.isin(recs.ids, subset)
        if not bool(in_subset.all()):
            bad = recs.ids[~in_subset][:8].tolist()
            raise RuntimeError(
                f"Examples {bad} were trained but not selected for round {self.round}. HINT: the dataset's index i"
                " must be pool id i, and the train DataLoader must use `sampler=callback.sampler`."
            )
        missed = subset.numel() - len(recs)
        if missed > 0:
            rank_zero_warn(
                f"LEAD round {self.round}: {missed} of {subset.numel()} selected examples were not trained"
                " (limit_train_batches, drop_last or max_steps?); they keep their IDU and use count."
            )
        finite = torch.isfinite(recs.loss)
        n_nan = int((~finite).sum())
        if n_nan:
            rank_zero_warn(f"LEAD round {self.round}: skipped {n_nan} non-finite per-example loss(es); IDU unchanged.")
            recs = RoundRecords(recs.ids[finite], recs.loss[finite], recs.lr[finite])
        clusters = self.layout.clusters[recs.ids].to(torch.int64)
        before, after = self.state.apply(recs, self._coef[clusters], self.history_weight)

        raw: dict[int, float] = {}
        for a in self._arms:
            m = clusters == a
            if not bool(m.any()):
                continue
            if self.reward == "idu_drop":
                raw[a] = float((before[m] - after[m]).double().mean())
            elif self.reward == "loss_drop":
                assert self._last_loss is not None
                ids_a = recs.ids[m]
                raw[a] = float((self._last_loss[ids_a] - recs.loss[m]).double().mean())
            else:
                raw[a] = self._val_drop(trainer)
        if self._last_loss is not None:
            self._last_loss[recs.ids] = recs.loss
        normed = {a: self.normalizer.normalize(r) for a, r in raw.items()}
        if normed and self._probs is not None:
            self.bandit.update(list(normed), list(normed.values()), self._probs)

        end = self._sketch(trainer, pl_module)
        assert self._sketch_start is not None
        update = end - self._sketch_start
        for a in self._arms:
            if self.cluster_history == "last" or a not in self._u_cluster:
                self._u_cluster[a] = update
        self._u_prev, self._sketch_start = update, end

        entry = self._round_summary(subset, raw, normed, n_nan, before, after)
        self.history.append(entry)
        self._log(trainer, entry)
        self.round += 1
        self._subset, self._consumed = None, [0] * len(self._consumed)
        self._check_stop(trainer)

    def _val_drop(self, trainer: pl.Trainer) -> float:
        val = trainer.callback_metrics.get(self.val_monitor)
        if val is None:
            raise KeyError(
                f"`reward='val_loss_drop'` needs the metric {self.val_monitor!r} logged by validation each round;"
                f" available: {sorted(trainer.callback_metrics)}."
            )
        v = float(val)
        drop = 0.0 if self._prev_val is None else self._prev_val - v
        self._prev_val = v
        return drop

    def _round_summary(
        self, subset: Tensor, raw: dict[int, float], normed: dict[int, float], n_nan: int, before: Tensor, after: Tensor
    ) -> dict[str, Any]:
        seen = int((self.state.uses > 0).sum())
        probs = self._probs.tolist() if self._probs is not None else []
        return {
            "round": self.round,
            "arms": list(self._arms),
            "n_selected": int(subset.numel()),
            "selected_per_cluster": torch.bincount(
                self.layout.clusters[subset].to(torch.int64), minlength=self.layout.num_clusters
            ).tolist(),
            "reward_raw": {int(k): v for k, v in raw.items()},
            "reward": {int(k): v for k, v in normed.items()},
            "probs": probs,
            "coef": {int(a): float(self._coef[a]) for a in self._arms},
            "unique_seen": seen,
            "budget_frac": seen / self.budget,
            "idu_mean_pool": float(self.state.idu.double().mean()),
            "idu_mean_selected": float(after.double().mean()) if after.numel() else math.nan,
            "nan_skipped": n_nan,
            "round_time_s": time.perf_counter() - self._round_t0 if self._round_t0 else math.nan,
        }

    def _log(self, trainer: pl.Trainer, e: dict[str, Any]) -> None:
        metrics: dict[str, float] = {
            "lead/round": e["round"],
            "lead/selected": e["n_selected"],
            "lead/unique_seen": e["unique_seen"],
            "lead/budget_frac": e["budget_frac"],
            "lead/idu_mean_pool": e["idu_mean_pool"],
            "lead/idu_mean_selected": e["idu_mean_selected"],
            "lead/nan_skipped": e["nan_skipped"],
            "lead/round_time_s": e["round_time_s"],
        }
        for k, p in enumerate(e["probs"]):
            metrics[f"lead/prob/cluster_{k}"] = p
        for k, v in e["reward_raw"].items():
            metrics[f"lead/reward_raw/cluster_{k}"] = v
        for k, v in e["reward"].items():
            metrics[f"lead/reward/cluster_{k}"] = v
        for k, c in enumerate(e["selected_per_cluster"]):
            metrics[f"lead/selected/cluster_{k}"] = c
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=trainer.global_step)
        rank_zero_info(
            f"LEAD round {e['round']}: clusters {e['arms']}, {e['n_selected']} examples, reward"
            f" {e['reward_raw']}, unique {e['unique_seen']}/{self.budget}"
        )

    def _check_stop(self, trainer: pl.Trainer) -> None:
        reason = None
        if self.max_rounds is not None and self.round >= self.max_rounds:
            reason = f"max_rounds={self.max_rounds} reached"
        elif self.stop_on_budget and self._budget_left() <= 0:
            reason = f"budget of {self.budget} unique examples spent (stop_on_budget=True)"
        elif not bool(self._eligible().any()):
            reason = (
                f"no eligible example left (budget {self.budget} unique, max_uses={self.max_uses})"
            )
        if reason is not None:
            self._stop_reason = reason
            trainer.should_stop = True
            rank_zero_info(f"LEAD stops training after round {self.round - 1}: {reason}.")

    # ------------------------------------------------------------------ checkpointing
    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_trainer"] = None  # never pickle the Trainer with the callback
        return d

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        mid_round = self._subset is not None
        if mid_round:
            # fold this rank's (and under DDP every rank's) records of the unfinished round into `carried`
            self.state.carried = self.state.carried.cat(self._gather_records(trainer))
        return {
            "version": _STATE_VERSION,
            "pool_size": len(self.state),
            "pool_fingerprint": self.pool.fingerprint(),
            "round": self.round,
            "idu": self.state.state_dict(),
            "bandit": self.bandit.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "sketch_start": self._sketch_start,
            "u_prev": self._u_prev,
            "u_cluster": {int(k): v for k, v in self._u_cluster.items()},
            "last_loss": self._last_loss,
            "prev_val": self._prev_val,
            "stop_reason": self._stop_reason,
            "history": list(self.history),
            "mid_round": mid_round,
            "carried": self.state.carried.to_dict() if mid_round else None,
            "consumed": list(self._consumed),
            "coef": self._coef.clone(),
            "subset": self._subset.clone() if mid_round and self._subset is not None else None,
            "arms": list(self._arms),
            "probs": self._probs,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        s = state_dict
        if s.get("pool_size") != len(self.state) or s.get("pool_fingerprint") != self.pool.fingerprint():
            raise ValueError(
                f"This checkpoint's LEAD state belongs to another pool (size {s.get('pool_size')}, fingerprint"
                f" {s.get('pool_fingerprint')}); this pool has size {len(self.state)}, fingerprint"
                f" {self.pool.fingerprint()}. HINT: resume with the pool index the run was started with."
            )
        self.round = int(s["round"])
        self.state.load_state_dict(s["idu"])
        self.bandit.load_state_dict(s["bandit"])
        self.normalizer.load_state_dict(s["normalizer"])
        self._sketch_start = s["sketch_start"]
        self._u_prev = s["u_prev"]
        self._u_cluster = {int(k): v for k, v in s["u_cluster"].items()}
        self._last_loss = s.get("last_loss")
        self._prev_val = s.get("prev_val")
        self._stop_reason = s.get("stop_reason")
        self.history = list(s.get("history", []))
        self._coef = s["coef"].clone()
        self._arms = list(s.get("arms", []))
        self._probs = s.get("probs")
        if s.get("mid_round"):
            consumed = list(s["consumed"])
            if self._trainer is not None and len(consumed) != self._trainer.world_size:
                raise ValueError(
                    f"Cannot resume a LEAD round mid-way with {self._trainer.world_size} processes: it was"
                    f" checkpointed with {len(consumed)}. HINT: resume from an epoch-end checkpoint instead."
                )
            self._subset = s["subset"].clone()
            self.state.carried = RoundRecords.from_dict(s["carried"])
            self._consumed = consumed
            rank = self._trainer.global_rank if self._trainer is not None else 0
            self.sampler.skip_next(consumed[rank])
        else:
            self._subset = None
            self.state.carried = RoundRecords.empty()
