"""`LeadSelectionCallback`: the Lightning glue of LEAD's in-training data selection.

One Lightning epoch is one LEAD round. Before the round the callback redraws the subset (bandit over
clusters, then top-IDU per group); during it, it records each batch's per-example losses; at round
end it merges the records of all ranks, updates IDU, rewards the bandit and sketches the parameter
update. The maths lives in small modules (:mod:`~lead_lightning.idu`, :mod:`~lead_lightning.sketch`,
:mod:`~lead_lightning.selection`, :mod:`~lead_lightning.bandits`); this class only gathers inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lead_lightning.bandits import BanditPolicy
from lead_lightning.distributed import broadcast_tensor, gather_variable
from lead_lightning.engine import LeadSelector
from lead_lightning.idu import IDUState, RoundRecords
from lead_lightning.pool import PoolIndex
from lead_lightning.sampler import RoundSampler
from lead_lightning.sketch import ParameterSketch

__all__ = ["LeadSelectionCallback"]

log = logging.getLogger(__name__)

Extract = Callable[[Any, Any], "tuple[Tensor, Tensor]"]
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
        self.selector = LeadSelector(
            pool,
            budget=budget,
            sample_rate=sample_rate,
            bandit=bandit,
            arms_per_round=arms_per_round,
            max_uses=max_uses,
            history_weight=history_weight,
            reward=reward,
            within_cluster=within_cluster,
            max_rounds=max_rounds,
            stop_on_budget=stop_on_budget,
            cluster_history=cluster_history,
            seed=seed,
            shuffle=shuffle,
            bandit_kwargs=bandit_kwargs,
        )
        self.sketcher = ParameterSketch(sketch_dim, seed=int(seed))
        self.sampler = RoundSampler(self.current_subset)
        self.val_monitor = val_monitor
        self._extract: Extract = extract or _default_extract
        self._consumed: list[int] = [0]  # samples each rank trained in this round (for a mid-round resume)
        self._round_t0 = 0.0
        self._trainer: pl.Trainer | None = None

    # ------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        sel = self.selector
        return self._generate_state_key(seed=sel.seed, bandit=sel.bandit.name, budget=sel.budget)

    # ------------------------------------------------------------------ public helpers
    @property
    def state(self) -> IDUState:
        """Per-example IDU and use counts."""
        return self.selector.state

    @property
    def bandit(self) -> BanditPolicy:
        """The cluster-choosing bandit policy."""
        return self.selector.bandit

    @property
    def history(self) -> list[dict[str, Any]]:
        """One summary dict per finished round (clusters, counts, rewards, probabilities...)."""
        return self.selector.history

    @property
    def stop_reason(self) -> str | None:
        """Why selection stopped training (``None`` while it has not)."""
        return self.selector.stop_reason

    def current_subset(self) -> Tensor:
        """This round's selected ids (drawn on first request; identical on every rank)."""
        return self.selector.current_subset()

    def dataloader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` over ``dataset`` that trains this round's subset (passes ``sampler``)."""
        if "shuffle" in kwargs or "sampler" in kwargs or "batch_sampler" in kwargs:
            raise ValueError("`shuffle`, `sampler` and `batch_sampler` are set by the callback; drop them.")
        return DataLoader(dataset, sampler=self.sampler, **kwargs)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        self.sampler.set_distributed(trainer.global_rank, trainer.world_size)
        if len(self._consumed) != trainer.world_size:
            self._consumed = [0] * trainer.world_size
        reload = getattr(trainer, "reload_dataloaders_every_n_epochs", 0)
        if reload == 0:
            # The fit loop reads the loader's length once unless it reloads; a round's size changes.
            setattr(trainer, "reload_dataloaders_every_n_epochs", 1)  # noqa: B010
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
        if self.selector.sketch_start is None:
            self.selector.sketch_start = self._sketch(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_wiring(trainer)
        self.current_subset()
        self._round_t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ids, losses = self._extract(outputs, batch)
        if (
            not isinstance(losses, Tensor)
            or losses.dim() != 1
            or not isinstance(ids, Tensor)
            or ids.dim() != 1
        ):
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
            raise ValueError(
                f"Batch ids must be pool ids in [0, {n}), got min {int(ids.min())}, max {int(ids.max())}."
            )
        if ids.unique().numel() != ids.numel():
            raise ValueError(
                f"Batch holds duplicated ids: {ids.tolist()[:16]}. Each example must appear once."
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.selector.subset is None:
            return  # this round was already closed when its checkpoint was loaded
        self._close_round(trainer, pl_module)

    def _close_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sel = self.selector
        records = self.state.carried.cat(self._gather_records(trainer))
        self.state.carried = RoundRecords.empty()
        val = None
        if sel.reward == "val_loss_drop":
            metric = trainer.callback_metrics.get(self.val_monitor)
            if metric is None:
                raise KeyError(
                    f"`reward='val_loss_drop'` needs {self.val_monitor!r} logged by validation every round;"
                    f" available: {sorted(trainer.callback_metrics)}."
                )
            val = float(metric)
        e = sel.close_round(records, self._sketch(trainer, pl_module), val)
        e["round_time_s"] = time.perf_counter() - self._round_t0
        self._consumed = [0] * len(self._consumed)
        if e["n_missed"]:
            rank_zero_warn(
                f"LEAD round {e['round']}: {e['n_missed']} of {e['n_selected']} selected examples were not trained"
                " (limit_train_batches, drop_last or max_steps?); they keep their IDU and use count."
            )
        if e["nan_skipped"]:
            rank_zero_warn(
                f"LEAD round {e['round']}: skipped {e['nan_skipped']} non-finite per-example loss(es); IDU unchanged."
            )
        self._log(trainer, e)
        if sel.stop_reason is not None:
            trainer.should_stop = True
            rank_zero_info(f"LEAD stops training after round {e['round']}: {sel.stop_reason}.")

    # ------------------------------------------------------------------ round end helpers
    def _gather_records(self, trainer: pl.Trainer | None) -> RoundRecords:
        local = self.state.take_records()
        if trainer is None or trainer.world_size == 1:
            self._consumed[0] += len(local)
            return local
        (ids, loss, lr), counts = gather_variable(
            trainer.strategy, [local.ids.double(), local.loss.double(), local.lr]
        )
        self._consumed = [c + x for c, x in zip(self._consumed, counts, strict=True)]
        return RoundRecords(ids.to(torch.int64), loss.float(), lr)

    def _sketch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        params = [p for p in pl_module.parameters() if p.requires_grad]
        return broadcast_tensor(trainer.strategy, self.sketcher(params))

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
            f"LEAD round {e['round']}: clusters {e['arms']}, {e['n_selected']} examples, raw reward"
            f" {e['reward_raw']}, unique {e['unique_seen']}/{self.selector.budget}"
        )

    # ------------------------------------------------------------------ checkpointing
    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_trainer"] = None  # never pickle the Trainer with the callback
        return d

    def state_dict(self) -> dict[str, Any]:
        mid_round = self.selector.subset is not None
        if mid_round:
            # fold this rank's (under DDP: every rank's) records of the unfinished round into `carried`
            self.state.carried = self.state.carried.cat(self._gather_records(self._trainer))
        return {
            "version": _STATE_VERSION,
            "selector": self.selector.state_dict(),
            "mid_round": mid_round,
            "carried": self.state.carried.to_dict() if mid_round else None,
            "consumed": list(self._consumed),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        s = state_dict
        self.selector.load_state_dict(s["selector"])
        if s.get("mid_round"):
            consumed = list(s["consumed"])
            world = self._trainer.world_size if self._trainer is not None else 1
            if len(consumed) != world:
                raise ValueError(
                    f"Cannot resume a LEAD round mid-way with {world} process(es): it was checkpointed with"
                    f" {len(consumed)}. HINT: resume from an epoch-end checkpoint instead."
                )
            self.state.carried = RoundRecords.from_dict(s["carried"])
            self._consumed = consumed
            shard = -(-len(self.selector.current_subset()) // world)
            self._round_t0 = time.perf_counter()
            if self._trainer is not None and min(consumed) >= shard:
                # Saved after the round's last batch but before its epoch end: Lightning resumes into the
                # next epoch without calling `on_train_epoch_end`, so the round is closed here (the
                # restored weights are the round-end weights).
                self._close_round(self._trainer, self._trainer.lightning_module)
            else:
                self.sampler.skip_next(
                    consumed[self._trainer.global_rank if self._trainer is not None else 0]
                )
        else:
            self.selector.subset = None
            self.state.carried = RoundRecords.empty()
