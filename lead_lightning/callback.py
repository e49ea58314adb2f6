"""`LeadSelectionCallback`: LEAD as a :class:`~lead_lightning.base.RoundSelectionCallback`.

The base owns the Lightning glue (sampler wiring, per-step records, the per-round gather, logging,
checkpoints, mid-round resume); this subclass only connects it to :class:`~lead_lightning.LeadSelector`
(the draw: bandit + top-IDU; the close: IDU update, reward) and to the parameter-update sketch.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lead_lightning.bandits import BanditPolicy
from lead_lightning.base import Extract, RoundSelectionCallback, RoundSummary
from lead_lightning.config import LeadConfig, resolve_config
from lead_lightning.distributed import all_reduce_sum, broadcast_tensor, local_parameter_shards
from lead_lightning.engine import LeadSelector
from lead_lightning.idu import IDUState, RoundRecords
from lead_lightning.pool import PoolIndex
from lead_lightning.sketch import ParameterSketch

__all__ = ["LeadSelectionCallback"]


class LeadSelectionCallback(RoundSelectionCallback):
    """LEAD data selection inside ``Trainer.fit``: one epoch = one round over a redrawn subset.

    Args:
        pool: clusters, groups and initial utilities of the ``N`` pool examples (ids ``0..N-1``);
            the train dataset's index ``i`` must be pool id ``i``.
        config: every LEAD setting (:class:`~lead_lightning.LeadConfig`; default ``LeadConfig()``).
        extract: ``(outputs, batch) -> (ids, per_example_loss)`` for modules with another contract.
        **overrides: fields of :class:`~lead_lightning.LeadConfig` that replace those of ``config``
            (``budget``, ``sample_rate``, ``bandit``, ``max_uses``, ``seed``...).

    Example:
        >>> import torch
        >>> from lead_lightning import LeadConfig, LeadSelectionCallback, PoolIndex
        >>> pool = PoolIndex(clusters=torch.arange(100) % 4, iu0=torch.rand(100))
        >>> cb = LeadSelectionCallback(pool, LeadConfig(budget=0.5, sample_rate=0.2), seed=0)
        >>> loader_kwargs = {"sampler": cb.sampler}  # DataLoader(dataset, batch_size=8, **loader_kwargs)
        >>> len(cb.current_subset())  # round 0: 20% of one cluster of 25
        5
    """

    method = "lead"

    def __init__(
        self,
        pool: PoolIndex,
        config: LeadConfig | None = None,
        *,
        extract: Extract | None = None,
        **overrides: Any,
    ) -> None:
        self.config: LeadConfig = resolve_config(LeadConfig, config, overrides)
        self.selector = LeadSelector(pool, self.config)
        self.sketcher = ParameterSketch(self.config.sketch_dim, seed=int(self.config.seed))
        super().__init__(pool, extract)

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
    def history(self) -> list[RoundSummary]:
        """One summary per finished round (clusters, counts, rewards, probabilities...)."""
        return self.selector.history  # type: ignore[return-value]

    @property
    def stop_reason(self) -> str | None:
        """Why selection stopped training (``None`` while it has not)."""
        return self.selector.stop_reason

    @property
    def budget(self) -> int:
        return self.selector.budget

    @property
    def round_open(self) -> bool:
        return self.selector.subset is not None

    def current_subset(self) -> Tensor:
        """This round's selected ids (drawn on first request; identical on every rank)."""
        return self.selector.current_subset()

    def seen(self) -> Tensor:
        return self.selector.state.uses > 0

    def utility(self) -> Tensor:
        """The current IDU of every pool example."""
        return self.selector.state.idu

    def state_key_fields(self) -> dict[str, Any]:
        sel = self.selector
        return {"seed": sel.seed, "bandit": sel.bandit.name, "budget": sel.budget}

    # ------------------------------------------------------------------ round boundaries
    def on_selection_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.selector.sketch_start is None:
            self.selector.sketch_start = self._sketch(trainer, pl_module)

    def close_round(
        self, records: RoundRecords, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> RoundSummary:
        val = None
        if self.config.reward == "val_loss_drop":
            metric = trainer.callback_metrics.get(self.config.val_monitor)
            if metric is None:
                raise KeyError(
                    f"`reward='val_loss_drop'` needs {self.config.val_monitor!r} logged by validation every round;"
                    f" available: {sorted(trainer.callback_metrics)}."
                )
            # every rank uses rank 0's value, so every rank makes the same bandit update
            val = float(
                broadcast_tensor(trainer.strategy, torch.tensor([float(metric)], dtype=torch.float64))
            )
        return self.selector.close_round(records, self._sketch(trainer, pl_module), val)  # type: ignore[return-value]

    def _sketch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        """Sketch of the trainable parameters, identical on every rank.

        Replicated parameters (single device, DDP, DeepSpeed ZeRO 1/2): rank 0's sketch, broadcast.
        Sharded ones (FSDP, DTensor): each rank sketches its shards with global coordinates and the
        sum over ranks is the sketch of the whole vector (broadcast from rank 0 after the sum, so no
        backend's reduction order can leave ranks with different bits).
        """
        strategy = trainer.strategy
        shards = local_parameter_shards(pl_module, root=getattr(strategy, "model", None))
        if shards is None:
            params = [p for p in pl_module.parameters() if p.requires_grad]
            return broadcast_tensor(strategy, self.sketcher(params))
        local = self.sketcher.sketch_pieces(shards.pieces, shards.total)
        return broadcast_tensor(strategy, all_reduce_sum(strategy, local))

    def describe_round(self, e: RoundSummary) -> str:
        return (
            f"LEAD round {e['round']}: clusters {e['arms']}, {e['n_selected']} examples, raw reward"
            f" {e['reward_raw']}, unique {e['unique_seen']}/{self.selector.budget}"
        )

    # ------------------------------------------------------------------ state
    def selection_state(self) -> dict[str, Any]:
        return self.selector.state_dict()

    def load_selection_state(self, state: dict[str, Any], mid_round: bool) -> None:
        self.selector.load_state_dict(state)
        if not mid_round:
            self.selector.subset = None
