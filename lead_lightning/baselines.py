"""Baseline selection methods, each a :class:`~lead_lightning.base.RoundSelectionCallback`.

Every baseline trains the same number of examples per round as LEAD draws on average
(:func:`round_size`), so a comparison at equal rounds is a comparison at equal example-steps.

- :class:`FullSelection` (``full``): seeded shuffles of the whole pool.
- :class:`RandomSelection` (``random``): ``budget`` examples drawn at random once.
- :class:`StaticIFDSelection` (``static_ifd``): the ``budget`` examples of highest IFD (Cherry LLM).
- :class:`StaticLossSelection` (``static_loss``): the ``budget`` examples of highest base loss (PPL).
- :class:`IterativeReinference` (``iterative_reinference``): rescores the whole pool with the current
  model every round and trains the highest-loss eligible examples; its forward passes are counted.

The first four choose a fixed candidate set once and walk seeded shuffles of it, ``per_round``
ids per round (a walk that reaches the end of a shuffle continues into the next one).
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor

from lead_lightning.base import Extract, RoundSelectionCallback, RoundSummary
from lead_lightning.config import (
    FullConfig,
    IterativeReinferenceConfig,
    RandomConfig,
    StaticIFDConfig,
    StaticLossConfig,
    resolve_config,
)
from lead_lightning.distributed import gather_variable
from lead_lightning.idu import RoundRecords
from lead_lightning.pool import PoolIndex
from lead_lightning.selection import resolve_count, round_size

__all__ = [
    "FullSelection",
    "IterativeReinference",
    "RandomSelection",
    "StaticIFDSelection",
    "StaticLossSelection",
    "choose_subset",
    "round_size",
]


def _top(score: Tensor, k: int) -> Tensor:
    """Ids of the ``k`` highest scores (NaN last, ties by id), sorted by id."""
    key = score.double().nan_to_num(nan=-math.inf)
    return torch.sort(key, descending=True, stable=True).indices[:k].sort().values


def choose_subset(pool: PoolIndex, method: str, budget: int, seed: int) -> Tensor:
    """The ids a static baseline may train on, chosen once before training.

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
        return _top(torch.where(ifd > 1, ifd - 1e9, ifd), budget)  # degenerate IFD (> 1) ranks last
    if method == "static_loss":
        return _top(pool.iu0, budget)
    raise ValueError(
        f"`method` must be one of ['full', 'random', 'static_ifd', 'static_loss'], got {method!r}."
    )


class _BaselineSelection(RoundSelectionCallback):
    """Shared state of the baselines: round counter, seen mask, history, stop on ``max_rounds``."""

    config_class: ClassVar[type] = FullConfig

    def __init__(
        self, pool: PoolIndex, config: Any = None, *, extract: Extract | None = None, **overrides: Any
    ):
        self.config = resolve_config(self.config_class, config, overrides)
        self.seed = int(self.config.seed)
        self.per_round = round_size(pool, self.config.sample_rate, self.config.arms_per_round)
        self.round = 0
        self._subset: Tensor | None = None
        self._seen = torch.zeros(len(pool), dtype=torch.bool)
        self._history: list[RoundSummary] = []
        self._stop_reason: str | None = None
        super().__init__(pool, extract)

    @property
    def history(self) -> list[RoundSummary]:
        return self._history

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    @property
    def round_open(self) -> bool:
        return self._subset is not None

    def seen(self) -> Tensor:
        return self._seen

    def state_key_fields(self) -> dict[str, Any]:
        return {"seed": self.seed, "budget": self.budget}

    def current_subset(self) -> Tensor:
        if self._subset is None:
            self._subset = self.draw() if self._stop_reason is None else torch.empty(0, dtype=torch.int64)
        return self._subset

    def draw(self) -> Tensor:
        """This round's ids (called once per round)."""
        raise NotImplementedError

    def close_round(
        self, records: RoundRecords, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> RoundSummary:
        ids = self.current_subset()
        recs = records.first_occurrence()
        self._seen[recs.ids] = True
        finite = torch.isfinite(recs.loss)
        seen = int(self._seen.sum())
        e: RoundSummary = {
            "round": self.round,
            "method": self.method,
            "arms": [],
            "n_selected": int(ids.numel()),
            "n_missed": int(ids.numel()) - len(recs),
            "selected_per_cluster": torch.bincount(
                self.pool.clusters[ids], minlength=self.pool.num_clusters
            ).tolist(),
            "reward_raw": {},
            "reward": {},
            "probs": [],
            "unique_seen": seen,
            "budget_frac": seen / (self.budget or len(self.pool)),
            "loss_mean_selected": float(recs.loss[finite].double().mean())
            if bool(finite.any())
            else math.nan,
            "nan_skipped": int((~finite).sum()),
        }
        e.update(self._round_extras())  # type: ignore[typeddict-item]
        self._history.append(e)
        self.round += 1
        self._subset = None
        if self.config.max_rounds is not None and self.round >= self.config.max_rounds:
            self._stop_reason = f"max_rounds={self.config.max_rounds} reached"
        return e

    def _round_extras(self) -> dict[str, Any]:
        return {}

    def selection_state(self) -> dict[str, Any]:
        return {
            "pool_size": len(self.pool),
            "round": self.round,
            "seen": self._seen.clone(),
            "history": list(self._history),
            "subset": None if self._subset is None else self._subset.clone(),
            "stop_reason": self._stop_reason,
        }

    def load_selection_state(self, state: dict[str, Any], mid_round: bool) -> None:
        if int(state["pool_size"]) != len(self.pool):
            raise ValueError(
                f"Checkpointed {self.method} state is for a pool of {state['pool_size']} examples, not"
                f" {len(self.pool)}. HINT: resume with the same pool the run was started with (another pool)."
            )
        self.round = int(state["round"])
        self._seen = state["seen"].clone()
        self._history = list(state["history"])
        self._stop_reason = state.get("stop_reason")
        self._subset = state["subset"].clone() if mid_round and state.get("subset") is not None else None


class _WalkSelection(_BaselineSelection):
    """A fixed candidate set, chosen once, walked in seeded shuffles ``per_round`` ids per round."""

    def __init__(
        self, pool: PoolIndex, config: Any = None, *, extract: Extract | None = None, **overrides: Any
    ):
        super().__init__(pool, config, extract=extract, **overrides)
        self._budget = (
            len(pool) if self.method == "full" else resolve_count("budget", self.config.budget, len(pool))
        )
        self.candidates = choose_subset(pool, self.method, self._budget, self.seed)
        self.per_round = min(self.per_round, len(self.candidates))

    @property
    def budget(self) -> int:
        return self._budget

    def draw(self) -> Tensor:
        """Positions ``[r * per_round, (r + 1) * per_round)`` of the seeded walk over the candidates."""
        m, start = len(self.candidates), self.round * self.per_round
        out = []
        for p in range(start // m, (start + self.per_round - 1) // m + 1):
            gen = torch.Generator().manual_seed(self.seed * 7919 + p)
            perm = self.candidates[torch.randperm(m, generator=gen)]
            lo, hi = max(start - p * m, 0), min(start + self.per_round - p * m, m)
            out.append(perm[lo:hi])
        return torch.cat(out)


class FullSelection(_WalkSelection):
    """``full``: seeded shuffles of the whole pool, LEAD's round size per round.

    Example:
        >>> pool = PoolIndex(clusters=[0, 1] * 10, iu0=[1.0] * 20)
        >>> cb = FullSelection(pool, sample_rate=5, seed=0)
        >>> len(cb.current_subset()), cb.budget
        (5, 20)
    """

    method = "full"
    config_class = FullConfig


class RandomSelection(_WalkSelection):
    """``random``: ``budget`` examples drawn at random once, walked in seeded shuffles.

    Example:
        >>> pool = PoolIndex(clusters=[0, 1] * 10, iu0=[1.0] * 20)
        >>> cb = RandomSelection(pool, budget=0.5, sample_rate=4, seed=0)
        >>> set(cb.current_subset().tolist()) <= set(cb.candidates.tolist()), cb.budget
        (True, 10)
    """

    method = "random"
    config_class = RandomConfig


class StaticIFDSelection(_WalkSelection):
    """``static_ifd``: the ``budget`` examples of highest IFD (flagged IFD > 1 last), chosen once."""

    method = "static_ifd"
    config_class = StaticIFDConfig


class StaticLossSelection(_WalkSelection):
    """``static_loss``: the ``budget`` examples of highest base-model loss (``iu0``; PPL selection)."""

    method = "static_loss"
    config_class = StaticLossConfig


class IterativeReinference(_BaselineSelection):
    """Every round, rescore the whole pool's response loss with the current model; train the top ``per_round``.

    Eligible: trained fewer than ``max_uses`` times and, once ``budget`` unique examples are seen, already
    seen. The rescoring is a forward pass per pool example per round (sharded across DDP ranks),
    counted in each round summary (``forward_passes``, ``rescore_s``): this method's selection cost.

    Args:
        pool: the pool index.
        config: :class:`~lead_lightning.config.IterativeReinferenceConfig`.
        dataset: the pool's dataset (index = pool id; default: the datamodule's ``train_dataset``).
        collate_fn: its collate function (default: the datamodule's ``collator``).
        score: ``(pl_module, batch) -> per-example loss`` (default: ``pl_module(batch).per_example_loss``,
            as :class:`~lead_lightning.models.CausalLMModule` returns).
    """

    method = "iterative_reinference"
    config_class = IterativeReinferenceConfig

    def __init__(
        self,
        pool: PoolIndex,
        config: IterativeReinferenceConfig | None = None,
        *,
        dataset: Any = None,
        collate_fn: Any = None,
        score: Any = None,
        extract: Extract | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(pool, config, extract=extract, **overrides)
        self._budget = resolve_count("budget", self.config.budget, len(pool))
        self.uses = torch.zeros(len(pool), dtype=torch.uint8)
        self.dataset, self.collate_fn = dataset, collate_fn
        self._score = score or (lambda module, batch: module(batch).per_example_loss)
        self._next: Tensor | None = None  # the next round's ids, chosen after rescoring
        self.forward_passes = 0
        self._round_passes = 0
        self._round_rescore_s = 0.0

    @property
    def budget(self) -> int:
        return self._budget

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self._subset is None and self._next is None and self._stop_reason is None:
            self._next = self._choose(self._rescore(trainer, pl_module))

    def draw(self) -> Tensor:
        if self._next is None and self._trainer is not None:
            # asked after the last round (Lightning's loop reads the loader's length once more): no rescoring
            return torch.empty(0, dtype=torch.int64)
        if self._next is None:
            raise RuntimeError(
                "IterativeReinference draws after rescoring the pool with the model, which happens in"
                " `on_fit_start`. HINT: add the callback to the Trainer and train with `trainer.fit`."
            )
        out, self._next = self._next, None
        return out

    def close_round(
        self, records: RoundRecords, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> RoundSummary:
        trained = records.first_occurrence().ids
        self.uses[trained] = torch.where(self.uses[trained] < 255, self.uses[trained] + 1, self.uses[trained])
        e = super().close_round(records, trainer, pl_module)
        last = trainer.max_epochs is not None and trainer.max_epochs >= 0 and self.round >= trainer.max_epochs
        if self._stop_reason is None and not last:
            self._next = self._choose(
                self._rescore(trainer, pl_module)
            )  # counted in the next round's summary
        return e

    def _round_extras(self) -> dict[str, Any]:
        # the rescoring that chose this round's subset (done before the round)
        return {"forward_passes": self._round_passes, "rescore_s": self._round_rescore_s}

    def _choose(self, loss: Tensor) -> Tensor:
        key = loss.double().nan_to_num(nan=-math.inf)
        key[self.uses >= self.config.max_uses] = -math.inf
        if int(self._seen.sum()) >= self._budget:
            key[~self._seen] = -math.inf
        order = torch.sort(key, descending=True, stable=True).indices
        order = order[key[order] > -math.inf]
        # stop adding new examples once the unique budget would be exceeded
        new = ~self._seen[order]
        allowed_new = self._budget - int(self._seen.sum())
        keep = ~new | (torch.cumsum(new.to(torch.int64), 0) <= allowed_new)
        chosen = order[keep][: self.per_round]
        if chosen.numel() == 0:
            self._stop_reason = (
                f"no eligible example left (budget {self._budget}, max_uses={self.config.max_uses})"
            )
        return chosen

    @torch.no_grad()
    def _rescore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        t0 = time.perf_counter()
        dm = getattr(trainer, "datamodule", None)
        dataset = self.dataset if self.dataset is not None else getattr(dm, "train_dataset", None)
        collate = self.collate_fn if self.collate_fn is not None else getattr(dm, "collator", None)
        if dataset is None:
            raise ValueError(
                "IterativeReinference needs the pool's dataset to rescore it. HINT: pass `dataset=` (and"
                " `collate_fn=`), or use a datamodule with `train_dataset` and `collator`."
            )
        rank, world = trainer.global_rank, trainer.world_size
        mine = list(range(rank, len(self.pool), world))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, mine), batch_size=self.config.batch_size, collate_fn=collate
        )
        was_training = pl_module.training
        pl_module.eval()
        ids_out, loss_out = [], []
        for batch in loader:
            batch = trainer.strategy.batch_to_device(batch)
            if not isinstance(batch, dict) or "ids" not in batch:
                raise KeyError("IterativeReinference rescores batches that carry `ids` (the pool ids).")
            ids_out.append(batch["ids"].detach().cpu().to(torch.int64))
            loss_out.append(self._score(pl_module, batch).detach().float().cpu())
        pl_module.train(was_training)
        local_ids = torch.cat(ids_out) if ids_out else torch.empty(0, dtype=torch.int64)
        local_loss = torch.cat(loss_out) if loss_out else torch.empty(0)
        (ids_all, loss_all), _ = gather_variable(trainer.strategy, [local_ids.double(), local_loss.double()])
        losses = torch.full((len(self.pool),), math.nan)
        losses[ids_all.to(torch.int64)] = loss_all.float()
        self._round_passes = len(self.pool)
        self.forward_passes += len(self.pool)
        self._round_rescore_s = time.perf_counter() - t0
        return losses

    def selection_state(self) -> dict[str, Any]:
        s = super().selection_state()
        s.update(uses=self.uses.clone(), next=None if self._next is None else self._next.clone())
        s["forward_passes"] = self.forward_passes
        return s

    def load_selection_state(self, state: dict[str, Any], mid_round: bool) -> None:
        super().load_selection_state(state, mid_round)
        self.uses = state["uses"].clone()
        self.forward_passes = int(state.get("forward_passes", 0))
        nxt = state.get("next")
        self._next = nxt.clone() if nxt is not None else None
