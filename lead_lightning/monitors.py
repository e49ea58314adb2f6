"""Run monitors that a study reads: per-group held-out loss, what was trained, selection time.

- :class:`GroupValLoss` breaks the validation loss down by the held-out records' group (task family):
  ``val/loss/<group>`` (token mean within the group) and ``val/loss_macro`` (their unweighted mean,
  every group counting the same however many tokens it has).
- :class:`TrainedExamples` counts how often each pool example was trained, and the share of
  example-steps and of unique examples that carry each record-level flag (e.g. the testbed's
  ``noisy`` and ``duplicate``).
- :class:`RunMonitors` builds both for ``lead-train`` and gathers what they found into its result.
- :func:`profiled_seconds` sums the time a profiler recorded in one callback's hooks (Lightning's
  ``SimpleProfiler`` names them ``[Callback]<state_key>.<hook>``): the selection's own time, with no
  patching of the callback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

__all__ = ["GroupValLoss", "RunMonitors", "TrainedExamples", "profiled_seconds"]


class GroupValLoss(Callback):
    """Log the validation loss per group of the held-out records, and its macro mean.

    Reads ``per_example_loss`` (token mean per example) and ``n_tokens`` from the outputs of
    ``validation_step`` (as :class:`~lead_lightning.models.CausalLMModule` returns them) and the
    batch's ``ids`` (positions in the validation set). Sums are reduced across ranks once per
    validation. Every validation (the one before training included) appends a row to :attr:`evals`.

    Args:
        groups: the group of every held-out record, in validation-set order.
        prefix: metric prefix: ``<prefix>/<group>`` and ``<prefix>_macro``.

    Example:
        >>> cb = GroupValLoss(["add", "copy", "add"])
        >>> cb.names
        ['add', 'copy']
        >>> cb.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 3.0, 2.0]), torch.tensor([1, 1, 3]))
        >>> cb.compute()
        {'val/loss/add': 1.75, 'val/loss/copy': 3.0, 'val/loss_macro': 2.375}
    """

    def __init__(self, groups: Sequence[str], prefix: str = "val/loss") -> None:
        super().__init__()
        if len(groups) == 0:
            raise ValueError("`groups` is empty: give the group of every held-out record.")
        self.names = sorted(set(groups))
        lookup = {g: i for i, g in enumerate(self.names)}
        self.index = torch.tensor([lookup[g] for g in groups], dtype=torch.long)
        self.prefix = prefix
        self.evals: list[dict[str, Any]] = []
        self._reset()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def _reset(self) -> None:
        self._sum = torch.zeros(len(self.names), dtype=torch.float64)
        self._tokens = torch.zeros(len(self.names), dtype=torch.float64)

    def update(self, ids: Tensor, per_example_loss: Tensor, n_tokens: Tensor) -> None:
        """Add a batch: ``ids`` index the held-out records; examples with no scored token are skipped."""
        ids = ids.detach().cpu().long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.index)):
            raise ValueError(
                f"Validation ids must be in [0, {len(self.index)}) (the held-out set), got"
                f" {int(ids.min())}..{int(ids.max())}. HINT: build GroupValLoss with the groups of the"
                " validation records, in their order."
            )
        tokens = n_tokens.detach().cpu().double()
        ok = tokens > 0
        g = self.index[ids[ok]]
        self._sum.index_add_(0, g, per_example_loss.detach().cpu().double()[ok] * tokens[ok])
        self._tokens.index_add_(0, g, tokens[ok])

    def compute(self) -> dict[str, float]:
        """``{<prefix>/<group>: token-mean loss, <prefix>_macro: their mean}`` over groups seen."""
        out: dict[str, float] = {}
        for name, s, t in zip(self.names, self._sum.tolist(), self._tokens.tolist(), strict=True):
            if t > 0:
                out[f"{self.prefix}/{name}"] = s / t
        if out:
            out[f"{self.prefix}_macro"] = sum(out.values()) / len(out)
        return out

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Mapping) or not {"per_example_loss", "n_tokens"} <= set(outputs):
            raise KeyError(
                "GroupValLoss needs `validation_step` to return a dict with `per_example_loss` and"
                " `n_tokens` (as CausalLMModule does)."
            )
        self.update(batch["ids"], outputs["per_example_loss"], outputs["n_tokens"])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.world_size > 1:
            both = trainer.strategy.reduce(
                torch.stack([self._sum, self._tokens]).to(pl_module.device), reduce_op="sum"
            )
            self._sum, self._tokens = both.double().cpu().unbind(0)
        values = self.compute()
        for key, value in values.items():
            pl_module.log(key, value, sync_dist=False)  # already summed over ranks
        fitting = trainer.state.fn == "fit"
        self.evals.append(
            {
                "rounds_trained": trainer.current_epoch + 1 if fitting else 0,
                "step": trainer.global_step,
                **values,
            }
        )


class TrainedExamples(Callback):
    """Count the training steps each pool example took part in; summarise by record-level flags.

    Counts live on the batch's device (no host sync per step) and are summed across ranks at the
    end of training.

    Args:
        pool_size: number of pool examples (ids ``0..pool_size-1``).
        flags: flag name -> one bool per pool example (e.g. ``{"noisy": [...]}``).

    Example:
        >>> cb = TrainedExamples(4, {"noisy": [True, False, False, False]})
        >>> cb.record(torch.tensor([0, 1])); cb.record(torch.tensor([0, 2]))
        >>> cb.summary()
        {'example_steps': 4, 'unique': 3, 'share_noisy': 0.5, 'unique_share_noisy': 0.3333333333333333}
    """

    def __init__(self, pool_size: int, flags: Mapping[str, Sequence[bool]] | None = None) -> None:
        super().__init__()
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"`pool_size` must be a positive int, got {pool_size!r}.")
        self.flags = {k: torch.tensor(list(v), dtype=torch.bool) for k, v in (flags or {}).items()}
        for k, v in self.flags.items():
            if v.numel() != pool_size:
                raise ValueError(f"Flag `{k}` has {v.numel()} values for a pool of {pool_size} examples.")
        self.counts = torch.zeros(pool_size, dtype=torch.long)

    def record(self, ids: Tensor) -> None:
        """Count one step over the examples ``ids``."""
        if self.counts.device != ids.device:
            self.counts = self.counts.to(ids.device)
        self.counts.index_add_(0, ids.long(), torch.ones_like(ids, dtype=torch.long))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.record(batch["ids"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            self.counts = trainer.strategy.reduce(self.counts.to(pl_module.device), reduce_op="sum")
        self.counts = self.counts.cpu()

    def summary(self) -> dict[str, Any]:
        """``example_steps``, ``unique``, and per flag ``share_<flag>`` (of example-steps) and
        ``unique_share_<flag>`` (of unique examples trained); NaN when nothing was trained."""
        counts = self.counts.cpu()
        steps, seen = int(counts.sum()), counts > 0
        out: dict[str, Any] = {"example_steps": steps, "unique": int(seen.sum())}
        for k, flag in self.flags.items():
            out[f"share_{k}"] = int(counts[flag].sum()) / steps if steps else math.nan
            out[f"unique_share_{k}"] = int((seen & flag).sum()) / int(seen.sum()) if steps else math.nan
        return out


def profiled_seconds(profiler: Any, callback: Callback) -> float | None:
    """Seconds a profiler recorded in ``callback``'s hooks (``None`` without a recording profiler).

    Lightning profiles every callback hook as ``[Callback]<state_key>.<hook>``; a profiler that keeps
    ``recorded_durations`` (``SimpleProfiler``: ``Trainer(profiler="simple")``) gives their sum.

    Example:
        >>> from lightning.pytorch.profilers import SimpleProfiler
        >>> cb, prof = GroupValLoss(["a"]), SimpleProfiler()
        >>> prof.recorded_durations[f"[Callback]{cb.state_key}.on_validation_end"] += [0.25, 0.5]
        >>> profiled_seconds(prof, cb)
        0.75
    """
    durations = getattr(profiler, "recorded_durations", None)
    if durations is None:
        return None
    prefix = f"[Callback]{callback.state_key}."
    return float(sum(sum(d) for name, d in durations.items() if name.startswith(prefix)))


class RunMonitors:
    """The monitors of one ``lead-train`` run and the result keys they produce.

    Args:
        train_records: the pool as loaded (``Split.train``), which ``flags`` are aligned with.
        records: the pool actually trained (``train_records`` less any excluded example: the same
            objects, in order); pool id ``i`` is ``records[i]``.
        flags: record-level flags aligned with ``train_records`` (``Split.flags``).
        val_records: the held-out records, or ``None``.
        val_groups: log ``val/loss/<group>`` and ``val/loss_macro`` (when the held-out records have
            two groups or more).

    Example:
        >>> from lead_lightning.data import InstructionRecord
        >>> recs = [InstructionRecord("q", "a", g) for g in ("x", "y", "x")]
        >>> m = RunMonitors(recs, recs[1:], {"noisy": [True, True, False]}, recs, val_groups=True)
        >>> m.trained.flags["noisy"].tolist(), m.group_val.names
        ([True, False], ['x', 'y'])
    """

    def __init__(
        self,
        train_records: Sequence[Any],
        records: Sequence[Any],
        flags: Mapping[str, Sequence[bool]],
        val_records: Sequence[Any] | None,
        val_groups: bool = True,
    ) -> None:
        position = {id(r): i for i, r in enumerate(train_records)}
        keep = [position[id(r)] for r in records]
        self.trained = TrainedExamples(len(records), {k: [v[i] for i in keep] for k, v in flags.items()})
        groups = [r.group for r in val_records] if val_records else []
        self.group_val = GroupValLoss(groups) if val_groups and len(set(groups)) > 1 else None

    @property
    def callbacks(self) -> list[Callback]:
        """The callbacks to add to the Trainer."""
        return [self.trained] + ([self.group_val] if self.group_val is not None else [])

    def results(self, trainer: pl.Trainer, selection: Callback) -> dict[str, Any]:
        """``val_metrics`` (the last validation's ``val/...`` values), ``val_curve`` (per-group rows of
        every validation), ``trained`` (:meth:`TrainedExamples.summary`) and ``selection_s`` (time in
        the selection callback's hooks, with ``trainer.profiler=simple``; else ``None``)."""
        return {
            "val_metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            "val_curve": list(self.group_val.evals) if self.group_val is not None else [],
            "trained": self.trained.summary(),
            "selection_s": profiled_seconds(getattr(trainer, "profiler", None), selection),
        }
