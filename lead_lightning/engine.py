"""`LeadSelector`: LEAD's round logic without Lightning (redraw, round close, state).

The callback feeds it what a round produced (merged per-example records and a sketch of the
parameters); everything here is deterministic given the state, so every DDP rank that holds the
same state makes the same decisions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lead_lightning.bandits import BanditPolicy, RewardNormalizer, make_bandit
from lead_lightning.idu import IDUState, RoundRecords
from lead_lightning.pool import PoolIndex
from lead_lightning.selection import (
    ClusterLayout,
    cap_new_examples,
    eligible_mask,
    resolve_count,
    select_in_clusters,
)
from lead_lightning.sketch import gradient_coefficient

__all__ = ["LeadSelector", "REWARDS", "WITHIN"]

REWARDS = ("idu_drop", "loss_drop", "val_loss_drop")
WITHIN = ("idu", "random")


class LeadSelector:
    """Selection state and the two round-boundary operations: :meth:`draw` and :meth:`close_round`.

    Arguments are those of :class:`~lead_lightning.LeadSelectionCallback` (validated here).

    Example:
        >>> import torch
        >>> from lead_lightning import PoolIndex
        >>> sel = LeadSelector(PoolIndex(clusters=[0, 0, 1, 1], iu0=[1.0, 2.0, 3.0, 4.0]), budget=1.0,
        ...                    sample_rate=0.5, seed=0)
        >>> sub = sel.current_subset()
        >>> recs = RoundRecords(sub, torch.zeros(len(sub)), torch.zeros(len(sub), dtype=torch.float64))
        >>> summary = sel.close_round(recs, sketch_end=torch.zeros(4, dtype=torch.float64))
        >>> summary["round"], sel.round
        (0, 1)
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
        seed: int = 42,
        shuffle: bool = True,
        bandit_kwargs: dict[str, Any] | None = None,
    ) -> None:
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

        self.layout = ClusterLayout(pool.clusters, pool.groups)
        self.state = IDUState(pool.iu0)
        self.normalizer = RewardNormalizer()
        self.round = 0
        self.history: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.sketch_start: Tensor | None = None
        self.u_prev: Tensor | None = None
        self.u_cluster: dict[int, Tensor] = {}
        self.coef = torch.zeros(pool.num_clusters, dtype=torch.float64)
        self.subset: Tensor | None = None
        self.arms: list[int] = []
        self.probs: Tensor | None = None
        self._last_loss: Tensor | None = pool.iu0.clone() if reward == "loss_drop" else None
        self._prev_val: float | None = None
        self._recount()

    def _recount(self) -> None:
        """Derived per-cluster counts (O(N)); kept up to date incrementally at each round close."""
        uses, k = self.state.uses, self.layout.num_clusters
        cl = self.layout.clusters.to(torch.int64)
        self._sizes = torch.bincount(cl, minlength=k)
        self._seen = int((uses > 0).sum())
        self._exhausted = torch.bincount(cl[uses >= self.max_uses], minlength=k)
        self._open_seen = torch.bincount(cl[(uses > 0) & (uses < self.max_uses)], minlength=k)

    def _account(self, clusters: Tensor, old: Tensor, new: Tensor) -> None:
        k, m = self.layout.num_clusters, self.max_uses
        self._seen += int(((old == 0) & (new > 0)).sum())
        self._exhausted += torch.bincount(clusters[(old < m) & (new >= m)], minlength=k)
        self._open_seen += torch.bincount(clusters[(new > 0) & (new < m)], minlength=k)
        self._open_seen -= torch.bincount(clusters[(old > 0) & (old < m)], minlength=k)

    def available_clusters(self) -> Tensor:
        """``BoolTensor[K]``: clusters that still hold an eligible example (the bandit's mask)."""
        if self.budget_left() > 0:
            return self._sizes - self._exhausted > 0
        return self._open_seen > 0

    # ------------------------------------------------------------------ redraw
    def _generator(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.round * 7919 + stream) % (2**63))

    def budget_left(self) -> int:
        """Unique examples that may still be added."""
        return self.budget - self._seen

    def eligible(self, ids: Tensor | None = None) -> Tensor:
        """Eligibility of ``ids`` (default: the whole pool) for the next draw."""
        uses = self.state.uses if ids is None else self.state.uses[ids]
        return eligible_mask(uses, self.max_uses, self.budget_left())

    def current_subset(self) -> Tensor:
        """This round's selected ids (drawn on first request; identical on every rank)."""
        if self.subset is None:
            self.draw()
        assert self.subset is not None
        return self.subset

    def draw(self) -> Tensor:
        """Redraw: the bandit picks clusters, then top-IDU per group, budget cap, seeded shuffle."""
        mask = self.available_clusters()
        if self.stop_reason is not None or not bool(mask.any()):
            self.subset, self.arms = torch.empty(0, dtype=torch.int64), []
            return self.subset
        self.probs = self.bandit.probabilities(mask)
        n_arms = min(self.arms_per_round, int(mask.sum()))
        self.arms = [int(a) for a in self.bandit.draw(n_arms, self._generator(0), mask)]
        if self.within_cluster == "random":
            gen = self._generator(1)

            def scores(ids: Tensor) -> Tensor:
                return torch.rand(ids.numel(), generator=gen)

            cap_scores = torch.zeros(len(self.state))  # random order already decided; ties by id
        else:
            scores = cap_scores = self.state.idu  # type: ignore[assignment]
        chosen = select_in_clusters(
            self.layout, self.arms, scores, self.eligible, self.sample_rate, self.examples_per_round
        )
        chosen = cap_new_examples(chosen, self.state.uses, cap_scores, self.budget_left())
        if self.shuffle and chosen.numel():
            chosen = chosen[torch.randperm(chosen.numel(), generator=self._generator(2))]
        for a in self.arms:
            self.coef[a] = gradient_coefficient(self.u_cluster.get(a), self.u_prev)[0]
        self.subset = chosen
        return chosen

    # ------------------------------------------------------------------ round end
    def close_round(
        self, records: RoundRecords, sketch_end: Tensor, val_metric: float | None = None
    ) -> dict[str, Any]:
        """Apply the round's records (already merged across ranks), reward the bandit, store the update.

        Returns the round summary (also appended to :attr:`history`).
        """
        subset = self.current_subset()
        recs = records.first_occurrence()
        n = len(self.state)
        if len(recs) and (int(recs.ids.min()) < 0 or int(recs.ids.max()) >= n):
            raise ValueError(
                f"Trained ids must be pool ids in [0, {n}); got min {int(recs.ids.min())}, max {int(recs.ids.max())}."
            )
        in_subset = torch.isin(recs.ids, subset)
        if not bool(in_subset.all()):
            bad = recs.ids[~in_subset][:8].tolist()
            raise RuntimeError(
                f"Examples {bad} were trained but not selected for round {self.round}. HINT: the dataset's index i"
                " must be pool id i, and the train DataLoader must use `sampler=callback.sampler`."
            )
        missed = subset.numel() - len(recs)
        finite = torch.isfinite(recs.loss)
        n_nan = int((~finite).sum())
        if n_nan:
            recs = RoundRecords(recs.ids[finite], recs.loss[finite], recs.lr[finite])
        clusters = self.layout.clusters[recs.ids].to(torch.int64)
        old_uses = self.state.uses[recs.ids]
        before, after = self.state.apply(recs, self.coef[clusters], self.history_weight)
        self._account(clusters, old_uses, self.state.uses[recs.ids])

        raw: dict[int, float] = {}
        for a in self.arms:
            m = clusters == a
            if not bool(m.any()):
                continue
            if self.reward == "idu_drop":
                raw[a] = float((before[m] - after[m]).double().mean())
            elif self.reward == "loss_drop":
                assert self._last_loss is not None
                raw[a] = float((self._last_loss[recs.ids[m]] - recs.loss[m]).double().mean())
            else:
                if val_metric is None:
                    raise ValueError("`reward='val_loss_drop'` needs the validation metric of every round.")
                raw[a] = 0.0 if self._prev_val is None else self._prev_val - val_metric
        if self._last_loss is not None:
            self._last_loss[recs.ids] = recs.loss
        if val_metric is not None:
            self._prev_val = val_metric
        normed = {a: self.normalizer.normalize(r) for a, r in raw.items()}
        if normed and self.probs is not None:
            self.bandit.update(list(normed), list(normed.values()), self.probs)

        if self.sketch_start is not None:
            update = sketch_end - self.sketch_start
            for a in self.arms:
                if self.cluster_history == "last" or a not in self.u_cluster:
                    self.u_cluster[a] = update
            self.u_prev = update
        self.sketch_start = sketch_end

        seen = self._seen
        summary = {
            "round": self.round,
            "arms": list(self.arms),
            "n_selected": int(subset.numel()),
            "n_missed": int(missed),
            "selected_per_cluster": torch.bincount(
                self.layout.clusters[subset].to(torch.int64), minlength=self.layout.num_clusters
            ).tolist(),
            "reward_raw": {int(k): v for k, v in raw.items()},
            "reward": {int(k): v for k, v in normed.items()},
            "probs": self.probs.tolist() if self.probs is not None else [],
            "coef": {int(a): float(self.coef[a]) for a in self.arms},
            "unique_seen": seen,
            "budget_frac": seen / self.budget,
            "idu_mean_pool": float(self.state.idu.mean()),  # float32 pairwise sum: fast at 1e7
            "idu_mean_selected": float(after.double().mean()) if after.numel() else math.nan,
            "nan_skipped": n_nan,
        }
        self.history.append(summary)
        self.round += 1
        self.subset = None
        self.stop_reason = self._stop_reason()
        return summary

    def _stop_reason(self) -> str | None:
        if self.max_rounds is not None and self.round >= self.max_rounds:
            return f"max_rounds={self.max_rounds} reached"
        if self.stop_on_budget and self.budget_left() <= 0:
            return f"budget of {self.budget} unique examples spent (stop_on_budget=True)"
        if not bool(self.available_clusters().any()):
            return f"no eligible example left (budget {self.budget} unique, max_uses={self.max_uses})"
        return None

    def nbytes_per_example(self) -> float:
        """Bytes of per-example selection state (IDU, uses, cluster layout) per pool example."""
        return (self.state.nbytes() + self.layout.nbytes()) / len(self.state)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "pool_size": len(self.state),
            "pool_fingerprint": self.pool.fingerprint(),
            "round": self.round,
            "idu": self.state.state_dict(),
            "bandit": self.bandit.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "sketch_start": self.sketch_start,
            "u_prev": self.u_prev,
            "u_cluster": {int(k): v for k, v in self.u_cluster.items()},
            "coef": self.coef.clone(),
            "last_loss": self._last_loss,
            "prev_val": self._prev_val,
            "stop_reason": self.stop_reason,
            "history": list(self.history),
            "subset": None if self.subset is None else self.subset.clone(),
            "arms": list(self.arms),
            "probs": self.probs,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
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
        self.sketch_start, self.u_prev = s["sketch_start"], s["u_prev"]
        self.u_cluster = {int(k): v for k, v in s["u_cluster"].items()}
        self.coef = s["coef"].clone()
        self._last_loss = s.get("last_loss")
        self._prev_val = s.get("prev_val")
        self.stop_reason = s.get("stop_reason")
        self.history = list(s.get("history", []))
        self.subset = None if s.get("subset") is None else s["subset"].clone()
        self.arms = list(s.get("arms", []))
        self.probs = s.get("probs")
        self._recount()
