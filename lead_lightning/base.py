"""`RoundSelectionCallback`: what every round-based selection method shares (LEAD and the baselines).

One Lightning training epoch is one round: the method draws the round's subset (``current_subset``),
the train loader trains it once through :attr:`~RoundSelectionCallback.sampler`, and at the epoch
end the method closes the round with the per-example records of every rank (``close_round``). This
base owns everything around those two operations: sampler and datamodule wiring, the dataloader
reload, per-step recording (ids, per-example loss, and the learning rate the step trained with),
the one per-round gather across ranks, timing, the typed :class:`RoundSummary`, logging, the stop
decision (agreed through the strategy), ``state_key``, checkpointing and mid-round resume.

A subclass implements :meth:`current_subset`, :attr:`round_open`, :meth:`close_round`,
:attr:`history`, :attr:`stop_reason`, :meth:`seen`, :meth:`selection_state` and
:meth:`load_selection_state`; see :mod:`lead_lightning.baselines` for small examples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lead_lightning.distributed import gather_variable
from lead_lightning.idu import RecordBuffer, RoundRecords
from lead_lightning.pool import PoolIndex
from lead_lightning.sampler import RoundSampler

__all__ = ["Extract", "RoundSelectionCallback", "RoundSummary", "default_extract"]

Extract = Callable[[Any, Any], "tuple[Tensor, Tensor]"]
STATE_VERSION = 2
"""Version of :meth:`RoundSelectionCallback.state_dict` (1: before the base class; loads too)."""


class RoundSummary(TypedDict, total=False):
    """One finished round, as every method reports it (``history`` entries; ``history.json`` rows).

    Keys every method fills: ``round``, ``method``, ``n_selected``, ``n_missed``, ``selected_per_cluster``,
    ``unique_seen``, ``budget_frac``, ``nan_skipped``, ``loss_mean_selected``, ``round_time_s``,
    ``arms``, ``probs``, ``reward_raw``, ``reward`` (empty for methods without a bandit).
    LEAD adds ``coef``, ``idu_mean_pool``, ``idu_mean_selected``; iterative re-inference adds
    ``forward_passes`` and ``rescore_s``.
    """

    round: int
    method: str
    n_selected: int
    n_missed: int
    selected_per_cluster: list[int]
    unique_seen: int
    budget_frac: float
    nan_skipped: int
    loss_mean_selected: float
    round_time_s: float
    arms: list[int]
    probs: list[float]
    reward_raw: dict[int, float]
    reward: dict[int, float]
    coef: dict[int, float]
    idu_mean_pool: float
    idu_mean_selected: float
    forward_passes: int
    rescore_s: float


def default_extract(outputs: Any, batch: Any) -> tuple[Tensor, Tensor]:
    """``(batch["ids"], outputs["per_example_loss"])``, with errors that say what is missing."""
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


class RoundSelectionCallback(Callback):
    """Base of every selection callback: one epoch = one round over a subset the method draws.

    Args:
        pool: the pool index (ids ``0..N-1`` = the train dataset's indices).
        extract: ``(outputs, batch) -> (ids, per_example_loss)`` for modules with another contract.

    The train ``DataLoader`` must draw from :attr:`sampler` (or use :meth:`dataloader`); a datamodule
    with a ``set_train_sampler(sampler)`` method is wired automatically.
    """

    method: str = "base"
    """Short name of the method (``lead``, ``random``...): round summaries and logs."""

    def __init__(self, pool: PoolIndex, extract: Extract | None = None) -> None:
        super().__init__()
        if not isinstance(pool, PoolIndex):
            raise TypeError(f"`pool` must be a `PoolIndex`, got {type(pool).__name__}.")
        self.pool = pool
        self.sampler = RoundSampler(self.current_subset)
        self._extract: Extract = extract or default_extract
        self._buffer = RecordBuffer()
        self._carried = RoundRecords.empty()  # this round's records folded from every rank (checkpoint)
        self._consumed: list[int] = [0]  # samples each rank trained in this round (for a mid-round resume)
        self._pending_close = False
        self._step_lr: float | Tensor = 0.0
        self._round_t0 = 0.0
        self._trainer: pl.Trainer | None = None
        self._nonfinite_rounds = 0  # rounds in a row in which no loss was finite
        self._warn_count_budget()

    # ------------------------------------------------------------------ what a method implements
    def current_subset(self) -> Tensor:
        """This round's selected ids (drawn on first request; identical on every rank)."""
        raise NotImplementedError

    @property
    def round_open(self) -> bool:
        """Whether this round's subset has been drawn and the round is not closed yet."""
        raise NotImplementedError

    def close_round(
        self, records: RoundRecords, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> RoundSummary:
        """Apply the round's records (merged across ranks; may hold padding duplicates) and advance.

        Returns the round's summary, already appended to :attr:`history`.
        """
        raise NotImplementedError

    @property
    def history(self) -> list[RoundSummary]:
        """One summary per finished round."""
        raise NotImplementedError

    @property
    def stop_reason(self) -> str | None:
        """Why selection stops training (``None`` while it does not)."""
        raise NotImplementedError

    def seen(self) -> Tensor:
        """``BoolTensor[N]``: examples trained at least once."""
        raise NotImplementedError

    def selection_state(self) -> dict[str, Any]:
        """The method's state (plain tensors, numbers, lists, str-keyed dicts)."""
        raise NotImplementedError

    def load_selection_state(self, state: dict[str, Any], mid_round: bool) -> None:
        """Restore :meth:`selection_state`; ``mid_round``: the round in it was not closed."""
        raise NotImplementedError

    @property
    def budget(self) -> int | None:
        """Unique examples the method may train (``None``: no limit)."""
        return None

    def utility(self) -> Tensor | None:
        """Per-example utility the method ranks by, if it keeps one (LEAD: IDU)."""
        return None

    def on_selection_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called once at ``on_train_start``, after the wiring check (LEAD: the first parameter sketch)."""

    def state_key_fields(self) -> dict[str, Any]:
        """The behaviour-changing settings that name this callback's checkpoint entry."""
        return {}

    @property
    def max_nonfinite_rounds(self) -> int:
        """Rounds in a row without one finite loss after which training stops with an error (0: never)."""
        return int(getattr(getattr(self, "config", None), "max_nonfinite_rounds", 3))

    def _warn_count_budget(self) -> None:
        """An int ``budget`` is a count of examples; below 1% of the pool a fraction was probably meant."""
        budget = getattr(getattr(self, "config", None), "budget", None)
        if isinstance(budget, int) and not isinstance(budget, bool) and budget < 0.01 * len(self.pool):
            rank_zero_warn(
                f"{type(self).__name__}: `budget={budget}` is an int, so it is a count: {budget} of the pool's"
                f" {len(self.pool)} examples ({budget / len(self.pool):.2%}). HINT: for a fraction of the pool"
                " write a float (`budget=0.05` is 5% of it, `budget=1.0` all of it)."
            )

    # ------------------------------------------------------------------ identity and helpers
    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self.state_key_fields())

    def dataloader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` over ``dataset`` that trains this round's subset (passes ``sampler``)."""
        if "shuffle" in kwargs or "sampler" in kwargs or "batch_sampler" in kwargs:
            raise ValueError("`shuffle`, `sampler` and `batch_sampler` are set by the callback; drop them.")
        return DataLoader(dataset, sampler=self.sampler, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_trainer"] = None  # never pickle the Trainer with the callback
        return d

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
                f"{type(self).__name__} needs `Trainer(reload_dataloaders_every_n_epochs=1)` (each round's"
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
            f"The train dataloader does not draw from {type(self).__name__}'s sampler, so the selection would"
            " be ignored. HINT: build it with `DataLoader(dataset, batch_size=..., sampler=callback.sampler)` or"
            " `callback.dataloader(dataset, batch_size=...)`; the dataset's index i must be pool id i."
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A checkpoint taken after a round's last batch but before its epoch end resumes into the next
        # epoch without `on_train_epoch_end`; the restored weights are the round-end weights, so the
        # round is closed here, in a training hook, before the next subset is asked for.
        if self._pending_close:
            self._pending_close = False
            self._finish_round(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_wiring(trainer)
        self.on_selection_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_wiring(trainer)
        self.current_subset()
        self._round_t0 = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The rate this step trains with: Lightning steps a step-interval scheduler (and, on a round's
        # last batch, an epoch-interval one) before `on_train_batch_end`.
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self._step_lr = optimizer.param_groups[0]["lr"] if optimizer is not None else 0.0

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
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(
                f"Batch ids must be an integer tensor (the pool ids), got dtype {ids.dtype}. HINT: collate them"
                " as `torch.long`; float ids lose precision above 2**24 and would update the wrong examples."
            )
        if losses.numel() != ids.numel():
            raise ValueError(
                f"`per_example_loss` has {losses.numel()} values but the batch has {ids.numel()} ids. HINT: compute"
                " it with reduction='none' per example (`lead_lightning.lm_losses`), not a batch mean."
            )
        if ids.device.type == "cpu":  # free to check now; on accelerators it is checked at round end
            self._validate_ids(ids)
        self._buffer.record(ids, losses, self._step_lr)

    def _validate_ids(self, ids: Tensor) -> None:
        n = len(self.pool)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise ValueError(
                f"Batch ids must be pool ids in [0, {n}), got min {int(ids.min())}, max {int(ids.max())}."
            )
        if ids.unique().numel() != ids.numel():
            raise ValueError(
                f"Batch holds duplicated ids: {ids.tolist()[:16]}. Each example must appear once."
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.round_open:
            return  # this round was already closed (see `on_fit_start`)
        self._finish_round(trainer, pl_module)

    # ------------------------------------------------------------------ round end
    def _finish_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records = self._carried.cat(self._gather_records(trainer))
        self._carried = RoundRecords.empty()
        no_finite_loss = len(records) > 0 and not bool(torch.isfinite(records.loss).any())
        e = self.close_round(records, trainer, pl_module)
        e["round_time_s"] = time.perf_counter() - self._round_t0
        self._consumed = [0] * len(self._consumed)
        if e.get("n_missed"):
            rank_zero_warn(
                f"{self.method} round {e['round']}: {e['n_missed']} of {e['n_selected']} selected examples were not"
                " trained (limit_train_batches, drop_last or max_steps?); they keep their state and use count."
            )
        if e.get("nan_skipped"):
            rank_zero_warn(
                f"{self.method} round {e['round']}: skipped {e['nan_skipped']} non-finite per-example loss(es): each"
                " counts a use (so it is not redrawn forever) and leaves the example's utility unchanged."
            )
        self._log(trainer, e)
        self._check_nonfinite(e, no_finite_loss)
        stop = trainer.strategy.reduce_boolean_decision(self.stop_reason is not None, all=False)
        if stop:
            trainer.should_stop = True
            rank_zero_info(f"{self.method} stops training after round {e['round']}: {self.stop_reason}.")

    def _check_nonfinite(self, e: RoundSummary, no_finite_loss: bool) -> None:
        """Stop with an error after ``max_nonfinite_rounds`` rounds in a row without one finite loss.

        The records are merged across ranks, so every rank counts alike and raises together.
        """
        self._nonfinite_rounds = self._nonfinite_rounds + 1 if no_finite_loss else 0
        limit = self.max_nonfinite_rounds
        if limit and self._nonfinite_rounds >= limit:
            first = e["round"] - self._nonfinite_rounds + 1
            raise FloatingPointError(
                f"{self.method}: every per-example loss was non-finite (NaN or inf) in {self._nonfinite_rounds}"
                f" rounds in a row (rounds {first}..{e['round']}): the model learns nothing. HINT: lower the"
                " learning rate, clip gradients (`trainer.gradient_clip_val=1.0`), train in 32-bit precision,"
                f" or check the data; `max_nonfinite_rounds` (now {limit}) sets the limit, 0 never stops."
            )

    def _gather_records(self, trainer: pl.Trainer | None) -> RoundRecords:
        local = self._buffer.take()
        if trainer is None or trainer.world_size == 1:
            self._consumed[0] += len(local)
            return local
        (ids, loss, lr), counts = gather_variable(
            trainer.strategy, [local.ids.double(), local.loss.double(), local.lr]
        )
        self._consumed = [c + x for c, x in zip(self._consumed, counts, strict=True)]
        return RoundRecords(ids.to(torch.int64), loss.float(), lr)

    def _log(self, trainer: pl.Trainer, e: RoundSummary) -> None:
        metrics: dict[str, float] = {"lead/selected": float(e["n_selected"])}
        for key in (
            "round",
            "unique_seen",
            "budget_frac",
            "nan_skipped",
            "round_time_s",
            "loss_mean_selected",
            "idu_mean_pool",
            "idu_mean_selected",
            "forward_passes",
        ):
            if key in e:
                metrics[f"lead/{key}"] = float(e[key])  # type: ignore[literal-required]
        for k, p in enumerate(e.get("probs", [])):
            metrics[f"lead/prob/cluster_{k}"] = p
        for k, v in e.get("reward_raw", {}).items():
            metrics[f"lead/reward_raw/cluster_{k}"] = v
        for k, v in e.get("reward", {}).items():
            metrics[f"lead/reward/cluster_{k}"] = v
        for k, c in enumerate(e["selected_per_cluster"]):
            metrics[f"lead/selected/cluster_{k}"] = c
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=trainer.global_step)
        rank_zero_info(self.describe_round(e))

    def describe_round(self, e: RoundSummary) -> str:
        """One line about a finished round (printed at ``info`` level)."""
        budget = self.budget
        return f"{self.method} round {e['round']}: {e['n_selected']} examples, unique {e['unique_seen']}" + (
            f"/{budget}" if budget is not None else ""
        )

    # ------------------------------------------------------------------ checkpointing (pure copies)
    def state_dict(self) -> dict[str, Any]:
        """A copy of the state: the method's, and this round's records so far if a round is open.

        Under DDP the other ranks' records are folded in by :meth:`on_save_checkpoint` (a collective,
        run on every rank by ``Trainer.save_checkpoint``); this method never communicates.
        """
        mid_round = self.round_open
        carried, consumed = self._carried, list(self._consumed)
        if mid_round:
            local = self._buffer.peek()
            carried = carried.cat(local)
            rank = self._trainer.global_rank if self._trainer is not None else 0
            consumed[rank] += len(local)
        return {
            "version": STATE_VERSION,
            "selection": self.selection_state(),
            "mid_round": mid_round,
            "carried": carried.to_dict() if mid_round else None,
            "consumed": consumed,
            "nonfinite_rounds": self._nonfinite_rounds,
        }

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.world_size > 1 and self.round_open:
            # fold every rank's records of the unfinished round into `carried`, then store the full state
            self._carried = self._carried.cat(self._gather_records(trainer))
            checkpoint.setdefault("callbacks", {})[self.state_key] = self.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        s = state_dict
        version = int(s.get("version", 1))
        if version > STATE_VERSION:
            raise ValueError(
                f"This checkpoint's selection state has version {version}; this lead_lightning reads up to"
                f" {STATE_VERSION}. HINT: upgrade lead_lightning to resume it."
            )
        mid_round = bool(s.get("mid_round"))
        self.load_selection_state(s["selection"] if version >= 2 else s["selector"], mid_round)
        self._buffer = RecordBuffer()
        self._pending_close = False
        self._nonfinite_rounds = int(s.get("nonfinite_rounds", 0))
        if not mid_round:
            self._carried = RoundRecords.empty()
            return
        consumed = [int(c) for c in s["consumed"]]
        world = self._trainer.world_size if self._trainer is not None else 1
        if len(consumed) != world:
            raise ValueError(
                f"Cannot resume a {self.method} round mid-way with {world} process(es): it was checkpointed with"
                f" {len(consumed)}. HINT: resume from an epoch-end checkpoint instead."
            )
        self._carried = RoundRecords.from_dict(s["carried"])
        self._consumed = consumed
        self._round_t0 = time.perf_counter()
        shard = -(-len(self.current_subset()) // world)
        if self._trainer is not None and min(consumed) >= shard:
            self._pending_close = True  # closed in `on_fit_start`, once the weights are restored
        else:
            rank = self._trainer.global_rank if self._trainer is not None else 0
            self.sampler.skip_next(consumed[rank])
