"""`LeadSelector`: LEAD's round logic without Lightning (redraw, round close, state).

The callback feeds it what a round produced (merged per-example records and a sketch of the
parameters); everything here is deterministic given the state, so every DDP rank that holds the
same state makes the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lead_lightning.allocation import paced_new_cap, proportional_quotas, top_up
from lead_lightning.bandits import BanditPolicy, RewardNormalizer, RoundNormalizer, make_bandit
from lead_lightning.config import REWARDS, WITHIN, LeadConfig, resolve_config
from lead_lightning.idu import IDUState, RoundRecords
from lead_lightning.pool import PoolIndex
from lead_lightning.selection import (
    ClusterLayout,
    cap_new_examples,
    eligible_mask,
    resolve_count,
    round_size,
    select_in_clusters,
)
from lead_lightning.sketch import gradient_coefficient

__all__ = ["LeadSelector", "REWARDS", "WITHIN", "horizon_eta"]

_DEMOTED = 1e6  # subtracted from a demoted example's utility: drawn only when nothing else is eligible


def horizon_eta(bandit: Any, num_arms: int, horizon: int | None, eta: float | str) -> float:
    """The bandit learning rate: ``eta`` itself, or for ``"horizon"`` the rate tuned to ``horizon`` rounds.

    EXP3 / EXP3.S: ``sqrt(2 ln K / (T K))`` (Bubeck and Cesa-Bianchi 2012, Thm. 3.1); Hedge (full
    information): ``sqrt(8 ln K / T)`` (Cesa-Bianchi and Lugosi 2006, Thm. 2.2). ``K = 1`` gives 1.

    Example:
        >>> round(horizon_eta("exp3", 7, 10, "horizon"), 4), round(horizon_eta("hedge", 7, 10, "horizon"), 4)
        (0.2358, 1.2477)
    """
    if eta != "horizon":
        return float(eta)
    assert horizon is not None
    k = max(num_arms, 2)
    if str(getattr(bandit, "name", bandit)).lower() == "hedge":
        return math.sqrt(8 * math.log(k) / horizon)
    return math.sqrt(2 * math.log(k) / (horizon * k))


class LeadSelector:
    """Selection state and the two round-boundary operations: :meth:`draw` and :meth:`close_round`.

    Args:
        pool: the pool index.
        config: the settings (default ``LeadConfig()``); ``overrides`` replace fields of it.

    Example:
        >>> import torch
        >>> from lead_lightning import PoolIndex
        >>> from lead_lightning import LeadConfig
        >>> pool = PoolIndex(clusters=[0, 0, 1, 1], iu0=[1.0, 2.0, 3.0, 4.0])
        >>> sel = LeadSelector(pool, LeadConfig(budget=1.0, sample_rate=0.5, seed=0))
        >>> sub = sel.current_subset()
        >>> recs = RoundRecords(sub, torch.zeros(len(sub)), torch.zeros(len(sub), dtype=torch.float64))
        >>> summary = sel.close_round(recs, sketch_end=torch.zeros(4, dtype=torch.float64))
        >>> summary["round"], sel.round
        (0, 1)
    """

    def __init__(self, pool: PoolIndex, config: LeadConfig | None = None, **overrides: Any) -> None:
        if not isinstance(pool, PoolIndex):
            raise TypeError(f"`pool` must be a `PoolIndex`, got {type(pool).__name__}.")
        self.config = cfg = resolve_config(LeadConfig, config, overrides)
        n = len(pool)
        self.pool = pool
        self.budget = resolve_count("budget", cfg.budget, n)
        if isinstance(cfg.sample_rate, float):
            self.sample_rate: float | None = float(cfg.sample_rate)
            self.examples_per_round: int | None = None
        else:
            self.sample_rate, self.examples_per_round = None, resolve_count("sample_rate", cfg.sample_rate, n)
        if not 1 <= cfg.arms_per_round <= pool.num_clusters:
            raise ValueError(
                f"`arms_per_round` must be an int in [1, {pool.num_clusters}] (the number of clusters),"
                f" got {cfg.arms_per_round!r}."
            )
        bandit_kwargs = dict(cfg.bandit_kwargs)
        if cfg.bandit_eta is not None:
            bandit_kwargs["eta"] = horizon_eta(cfg.bandit, pool.num_clusters, cfg.max_rounds, cfg.bandit_eta)
        self.bandit: BanditPolicy = make_bandit(cfg.bandit, pool.num_clusters, **bandit_kwargs)
        self.allocation = cfg.allocation
        # proportional allocation trains LEAD's average round (the baselines' round size) every round
        self.round_size = self.examples_per_round or round_size(pool, cfg.sample_rate, cfg.arms_per_round)
        self.arms_per_round = cfg.arms_per_round
        self.max_uses = cfg.max_uses
        self.history_weight = float(cfg.history_weight)
        self.reward = cfg.reward
        self.within_cluster = cfg.within_cluster
        self.max_rounds = cfg.max_rounds
        self.stop_on_budget = cfg.stop_on_budget
        self.cluster_history = cfg.cluster_history
        self.seed = int(cfg.seed)
        self.shuffle = cfg.shuffle

        if cfg.utility != "idu" and pool.ref_loss is None:
            raise ValueError(
                f"`utility={cfg.utility!r}` ranks by IDU minus each example's reference loss, but the pool index"
                " has no `ref_loss` column. HINT: score the pool with a reference model (lead-train"
                " `pool.reference.source=split|jsonl|crossfit`, or `PoolIndex(..., ref_loss=...)`)."
            )
        # the layout references the pool's cluster and group tensors (and a memory-mapped index's order)
        self.layout = ClusterLayout(pool.clusters, pool.groups, pool._layout_order, pool._layout_strata)
        self.state = IDUState(pool.iu0)
        self.normalizer: RewardNormalizer | RoundNormalizer = (
            RewardNormalizer()
            if cfg.reward_norm == "history"
            else RoundNormalizer(pool.num_clusters, cfg.reward_smoothing)
        )
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
        keep_last = cfg.reward == "loss_drop" or cfg.learnability  # the latest training loss per example
        self._last_loss: Tensor | None = pool.iu0.clone() if keep_last else None
        self._prev_val: float | None = None
        self._recount()

    # pools up to this size log the pool-mean IDU as the float32 mean of the whole pool (as always: the
    # golden history pins it); larger ones from a float64 running sum, kept up to date with the round's
    # updates (equal up to float rounding), so a round close stays O(round) whatever N
    exact_mean_max: int = 1 << 20

    def _recount(self) -> None:
        """Derived per-cluster counts and the IDU sum (O(N)); kept up to date incrementally at each round close."""
        self._idu_sum = float(torch.sum(self.state.idu, dtype=torch.float64))
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
        uses = self.state.uses if ids is None else self.state.uses.index_select(0, ids)
        return eligible_mask(uses, self.max_uses, self.budget_left())

    def current_subset(self) -> Tensor:
        """This round's selected ids (drawn on first request; identical on every rank)."""
        if self.subset is None:
            self.draw()
        assert self.subset is not None
        return self.subset

    def draw(self) -> Tensor:
        """Redraw: the bandit allocates the round over clusters, then top utility per group, budget cap, shuffle."""
        mask = self.available_clusters()
        if self.stop_reason is not None or not bool(mask.any()):
            self.subset, self.arms = torch.empty(0, dtype=torch.int64), []
            return self.subset
        self.probs = self.bandit.probabilities(mask)
        scores, cap_scores = self._scores()
        if self.allocation == "single":
            n_arms = min(self.arms_per_round, int(mask.sum()))
            self.arms = [int(a) for a in self.bandit.draw(n_arms, self._generator(0), mask)]
            chosen = select_in_clusters(
                self.layout, self.arms, scores, self.eligible, self.sample_rate, self.examples_per_round
            )
        else:
            self.arms = torch.nonzero(mask).flatten().tolist()
            quota = proportional_quotas(
                self._sizes * mask, self.probs, self.round_size, self.config.allocation_floor
            )
            parts = [
                select_in_clusters(self.layout, [a], scores, self.eligible, None, int(quota[a]))
                for a in self.arms
                if int(quota[a]) > 0
            ]
            chosen = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        new_cap = self.budget_left()
        if self.config.pacing:
            assert self.max_rounds is not None
            new_cap = paced_new_cap(new_cap, self.max_rounds - self.round)
        chosen = cap_new_examples(chosen, self.state.uses, cap_scores, new_cap)
        if self.allocation == "proportional" and chosen.numel() < self.round_size:
            chosen = self._top_up(chosen, cap_scores, new_cap)
        if self.shuffle and chosen.numel():
            chosen = chosen[torch.randperm(chosen.numel(), generator=self._generator(2))]
        if self.allocation == "proportional":  # the clusters this round actually trains
            self.arms = torch.unique(self.layout.clusters[chosen].to(torch.int64)).tolist()
        for a in self.arms:
            self.coef[a] = gradient_coefficient(self.u_cluster.get(a), self.u_prev)[0]
        self.subset = chosen
        return chosen

    def _scores(self) -> tuple[Tensor | Callable[[Tensor], Tensor], Tensor]:
        """Per-example ranking key (or a function of ids) for the draw, and the key of the budget cap."""
        if self.within_cluster == "random":
            gen = self._generator(1)

            def scores(ids: Tensor) -> Tensor:
                return torch.rand(ids.numel(), generator=gen)

            return scores, torch.zeros(len(self.state))  # random order already decided; ties by id
        utility = self.state.idu
        if self.config.utility != "idu":
            assert self.pool.ref_loss is not None  # checked in __init__
            # RHO-LOSS (Mindermann et al. 2022): reducible loss = training loss - irreducible loss,
            # with IDU as the training-loss estimate and the reference model's loss as the irreducible
            reducible = utility - self.pool.ref_loss
            # reducible_ratio: its share of the loss, so a high loss that barely falls (a wrong answer)
            # does not outrank a low one that the reference model halves
            utility = reducible if self.config.utility == "reducible" else reducible / utility.clamp_min(1e-6)
        if self.config.learnability:
            utility = utility - _DEMOTED * self.demoted().to(utility.dtype)
        return utility, utility

    def demoted(self) -> Tensor:
        """``BoolTensor[N]``: examples whose latest training loss is not below their offline loss ``iu0``.

        Only with ``learnability=True``: for a noisy example (a wrong answer whose clean twins the model
        learns) the loss rises from the offline score; for a learnable one it falls.
        """
        if self._last_loss is None:
            return torch.zeros(len(self.state), dtype=torch.bool)
        return (self.state.uses > 0) & (self._last_loss >= self.pool.iu0)

    def _top_up(self, chosen: Tensor, scores: Tensor, new_cap: int) -> Tensor:
        """Fill a short proportional round with the next-best eligible examples (new ones within the cap)."""
        ok = self.eligible()
        n_new = int((self.state.uses[chosen] == 0).sum())
        if n_new >= new_cap:
            ok &= self.state.uses > 0
        out = top_up(chosen, self.round_size, torch.nonzero(ok).flatten(), scores)
        return cap_new_examples(out, self.state.uses, scores, new_cap)

    # ------------------------------------------------------------------ round end
    def close_round(
        self, records: RoundRecords, sketch_end: Tensor, val_metric: float | None = None
    ) -> dict[str, Any]:
        """Apply the round's records (already merged across ranks), reward the bandit, store the update.

        Returns the round summary (also appended to :attr:`history`).
        """
        subset = self.current_subset()
        recs = self._check_records(records.first_occurrence(), subset)
        missed = subset.numel() - len(recs)
        finite = torch.isfinite(recs.loss)
        n_nan = int((~finite).sum())
        all_ids = recs.ids
        old_uses_all = self.state.uses[all_ids]
        if n_nan:
            # an example whose loss is not finite still counts the use (else it is redrawn every round)
            self.state.count_uses(all_ids[~finite])
            recs = RoundRecords(recs.ids[finite], recs.loss[finite], recs.lr[finite])
        clusters = self.layout.clusters[recs.ids].to(torch.int64)
        before, after = self.state.apply(recs, self.coef[clusters], self.history_weight)
        self._idu_sum += float(torch.sum(after, dtype=torch.float64) - torch.sum(before, dtype=torch.float64))
        self._account(self.layout.clusters[all_ids].to(torch.int64), old_uses_all, self.state.uses[all_ids])

        first = old_uses_all[finite] == 0 if n_nan else old_uses_all == 0
        raw = self._raw_rewards(recs, clusters, before, after, val_metric, first)
        if isinstance(self.normalizer, RoundNormalizer):
            normed = self.normalizer.normalize(raw)
        else:
            normed = {a: self.normalizer.normalize(r) for a, r in raw.items()}
        if normed and self.probs is not None:
            # proportional allocation observes every arm it trained: full information, no importance weights
            observed = torch.ones_like(self.probs) if self.allocation == "proportional" else self.probs
            self.bandit.update(list(normed), list(normed.values()), observed)

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
            "method": "lead",
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
            "idu_mean_pool": self._idu_mean_pool(),
            "idu_mean_selected": float(after.double().mean()) if after.numel() else math.nan,
            "nan_skipped": n_nan,
            "loss_mean_selected": float(recs.loss.double().mean()) if len(recs) else math.nan,
        }
        self.history.append(summary)
        self.round += 1
        self.subset = None
        self.stop_reason = self._stop_reason()
        return summary

    def _idu_mean_pool(self) -> float:
        n = len(self.state)
        if n <= self.exact_mean_max:
            return float(self.state.idu.mean())  # float32 mean of the pool: O(N), at most 2**20
        return float(torch.tensor(self._idu_sum / n, dtype=torch.float32))

    def _check_records(self, recs: RoundRecords, subset: Tensor) -> RoundRecords:
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
        return recs

    def _raw_rewards(
        self,
        recs: RoundRecords,
        clusters: Tensor,
        before: Tensor,
        after: Tensor,
        val_metric: float | None,
        first: Tensor,
    ) -> dict[int, float]:
        """Raw reward of each drawn arm that trained a finite-loss example this round."""
        if self.reward == "val_loss_drop" and val_metric is None:
            raise ValueError("`reward='val_loss_drop'` needs the validation metric of every round.")
        raw: dict[int, float] = {}
        for a in self.arms:
            m = clusters == a
            if not bool(m.any()):
                continue
            if self.reward == "idu_drop":
                raw[a] = float((before[m] - after[m]).double().mean())
            elif self.reward == "first_visit_gain":
                # offline loss minus the loss just before an example's first step: transfer from the
                # other training, measured on examples not trained yet (a held-out estimate at no cost)
                mf = m & first
                if not bool(mf.any()):
                    continue
                ids = recs.ids[mf]
                raw[a] = float((self.pool.iu0[ids] - recs.loss[mf]).double().mean())
            elif self.reward == "loss_drop":
                assert self._last_loss is not None
                raw[a] = float((self._last_loss[recs.ids[m]] - recs.loss[m]).double().mean())
            else:
                assert val_metric is not None
                raw[a] = 0.0 if self._prev_val is None else self._prev_val - val_metric
        if self._last_loss is not None:
            self._last_loss[recs.ids] = recs.loss
        if val_metric is not None:
            self._prev_val = val_metric
        return raw

    def _stop_reason(self) -> str | None:
        if self.max_rounds is not None and self.round >= self.max_rounds:
            return f"max_rounds={self.max_rounds} reached"
        if self.stop_on_budget and self.budget_left() <= 0:
            return f"budget of {self.budget} unique examples spent (stop_on_budget=True)"
        if not bool(self.available_clusters().any()):
            return f"no eligible example left (budget {self.budget} unique, max_uses={self.max_uses})"
        return None

    def memory_tensors(self) -> dict[str, Tensor]:
        """Every per-example tensor the selector and its pool index hold, each storage once.

        Keys: the pool's columns (``clusters``, ``groups``, ``iu0`` and optional ones), the selection
        state (``idu``, ``uses``, ``last_loss`` with ``learnability`` or ``reward="loss_drop"``) and the
        layout's ``layout_order``. Tensors that share storage (the layout's clusters and groups are the
        pool's own) are listed once.
        """
        named = {f"pool.{k}": v for k, v in self.pool.column_tensors().items()}
        named.update(
            {"state.idu": self.state.idu, "state.uses": self.state.uses, "layout.order": self.layout.order}
        )
        named.update({"layout.clusters": self.layout.clusters, "layout.groups": self.layout.groups})
        if self._last_loss is not None:
            named["state.last_loss"] = self._last_loss
        out: dict[str, Tensor] = {}
        seen: set[tuple[int, int]] = set()
        for name, t in named.items():
            ref = (t.untyped_storage().data_ptr(), t.data_ptr())
            if ref not in seen:
                seen.add(ref)
                out[name] = t
        return out

    def nbytes_per_example(self, pool: bool = True) -> float:
        """Bytes per pool example held by the selection state (IDU, uses, layout) and, with ``pool``,
        the pool index (:meth:`memory_tensors`, measured from the tensors themselves)."""
        total = sum(
            t.element_size() * t.numel()
            for name, t in self.memory_tensors().items()
            if pool or not name.startswith("pool.")
        )
        return total / len(self.state)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "pool_size": len(self.state),
            "pool_fingerprint": self.pool.fingerprint(),
            "round": self.round,
            "idu": self.state.state_dict(),
            "bandit": self.bandit.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "normalizer_kind": type(self.normalizer).__name__,
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
