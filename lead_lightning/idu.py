"""Instance-level Dynamic Uncertainty (IDU): per-example state and its update.

Per training step nothing is computed: the per-example losses the forward pass produced are
recorded together with their ids and the step's learning rate (a list append, no host sync). At
round end the records of all ranks are merged (one collective) and the IDU update is applied in
one vectorised operation:

.. math::

    \\mathrm{obs}(x) = L(x) - \\eta_s C_{k(x)}, \\qquad
    \\mathrm{IDU}(x) \\leftarrow h\\,\\mathrm{IDU}(x) + (1 - h)\\,\\mathrm{obs}(x)

Each example is trained at most once per round, so applying the update at round end equals
applying it at the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["IDUState", "RecordBuffer", "RoundRecords", "idu_update"]


def idu_update(idu_prev: Tensor, loss: Tensor, lr: Tensor, coef: Tensor, history_weight: float) -> Tensor:
    """One IDU update (vectorised).

    Args:
        idu_prev: current IDU of the examples.
        loss: their per-example loss at the step they were trained (before the update).
        lr: learning rate of that step, per example.
        coef: ``C_k`` of each example's cluster for this round.
        history_weight: ``h``, the weight of the previous IDU (official ``b = 0.1``).

    Example:
        >>> import torch
        >>> idu_update(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.1]), torch.tensor([5.0]), 0.1)
        tensor([0.6500])
    """
    obs = loss - lr * coef
    return history_weight * idu_prev + (1.0 - history_weight) * obs


@dataclass
class RoundRecords:
    """What was trained in a round: ids, their losses and the step learning rates (CPU tensors)."""

    ids: Tensor
    loss: Tensor
    lr: Tensor

    @classmethod
    def empty(cls) -> RoundRecords:
        return cls(torch.empty(0, dtype=torch.int64), torch.empty(0), torch.empty(0, dtype=torch.float64))

    def __len__(self) -> int:
        return int(self.ids.numel())

    def cat(self, other: RoundRecords) -> RoundRecords:
        return RoundRecords(
            torch.cat([self.ids, other.ids]),
            torch.cat([self.loss, other.loss]),
            torch.cat([self.lr, other.lr]),
        )

    def first_occurrence(self) -> RoundRecords:
        """Keep the first record of each id (padding duplicates a distributed sampler adds)."""
        if len(self) == 0:
            return self
        uniq, inverse = torch.unique(self.ids, return_inverse=True)
        pos = torch.arange(len(self))
        first = torch.full((uniq.numel(),), len(self), dtype=torch.int64).scatter_reduce_(
            0, inverse, pos, reduce="amin"
        )
        first = torch.sort(first).values
        return RoundRecords(self.ids[first], self.loss[first], self.lr[first])

    def to_dict(self) -> dict[str, Tensor]:
        return {"ids": self.ids.clone(), "loss": self.loss.clone(), "lr": self.lr.clone()}

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> RoundRecords:
        return cls(d["ids"].to(torch.int64), d["loss"].float(), d["lr"].double())


class RecordBuffer:
    """Per-step records of one process: ``(ids, per-example loss, learning rate)`` of each batch.

    Recording is a list append (no device op, no host sync); :meth:`take` moves everything to the
    CPU in one transfer and empties the buffer; :meth:`peek` does the same without emptying it.

    Example:
        >>> import torch
        >>> buf = RecordBuffer()
        >>> buf.record(torch.tensor([3, 0]), torch.tensor([0.5, 0.25]), 0.1)
        >>> buf.take().ids.tolist(), buf.num_recorded
        ([3, 0], 0)
    """

    def __init__(self) -> None:
        self._ids: list[Tensor] = []
        self._loss: list[Tensor] = []
        self._lr: list[tuple[float | Tensor, int]] = []

    def record(self, ids: Tensor, loss: Tensor, lr: float | Tensor) -> None:
        self._ids.append(ids.detach())
        self._loss.append(loss.detach())
        self._lr.append((lr, ids.numel()))

    @property
    def num_recorded(self) -> int:
        return sum(t.numel() for t in self._ids)

    def peek(self) -> RoundRecords:
        """Everything recorded so far, as CPU tensors; the buffer keeps it."""
        if not self._ids:
            return RoundRecords.empty()
        ids = torch.cat([t.reshape(-1) for t in self._ids]).to("cpu", torch.int64)
        loss = torch.cat([t.reshape(-1).float() for t in self._loss]).to("cpu")
        lr = torch.cat(
            [torch.as_tensor(v, dtype=torch.float64).reshape(1).expand(n).cpu() for v, n in self._lr]
        )
        return RoundRecords(ids, loss, lr)

    def take(self) -> RoundRecords:
        """Everything recorded so far, as CPU tensors; the buffer is emptied."""
        out = self.peek()
        self._ids, self._loss, self._lr = [], [], []
        return out


class IDUState:
    """Per-example selection state: IDU (float32) and use counts (uint8); 5 bytes per example.

    ``uses > 0`` means seen, so no separate flag is stored.

    Example:
        >>> import torch
        >>> st = IDUState(torch.tensor([1.0, 2.0, 3.0]))
        >>> st.record(torch.tensor([2, 0]), torch.tensor([0.5, 0.25]), 0.0)
        >>> recs = st.take_records()
        >>> before, after = st.apply(recs, coef=torch.zeros(2), history_weight=0.0)
        >>> st.idu.tolist(), st.uses.tolist()
        ([0.25, 2.0, 0.5], [1, 0, 1])
    """

    def __init__(self, iu0: Tensor) -> None:
        self.idu: Tensor = iu0.detach().to(torch.float32).clone()
        self.uses: Tensor = torch.zeros(iu0.numel(), dtype=torch.uint8)
        self._buffer = RecordBuffer()

    def __len__(self) -> int:
        return int(self.idu.numel())

    # ------------------------------------------------------------------ per step (hot path)
    def record(self, ids: Tensor, loss: Tensor, lr: float | Tensor) -> None:
        """Remember one batch: no device op, no host sync (see :class:`RecordBuffer`)."""
        self._buffer.record(ids, loss, lr)

    @property
    def num_recorded(self) -> int:
        return self._buffer.num_recorded

    def take_records(self) -> RoundRecords:
        """This process's records since the last call, as CPU tensors (one transfer)."""
        return self._buffer.take()

    # ------------------------------------------------------------------ round end
    def apply(self, records: RoundRecords, coef: Tensor, history_weight: float) -> tuple[Tensor, Tensor]:
        """Apply the IDU update to ``records`` (unique ids, finite losses); count one use each.

        ``coef`` holds ``C_k`` of each record's cluster (one value per record).

        Returns:
            ``(idu_before, idu_after)`` of the updated ids.
        """
        ids = records.ids
        before = self.idu[ids].clone()
        after = idu_update(
            before.double(), records.loss.double(), records.lr, coef.double(), history_weight
        ).float()
        self.idu[ids] = after
        u = self.uses[ids]
        self.uses[ids] = torch.where(u < 255, u + 1, u)
        return before, after

    def count_uses(self, ids: Tensor) -> None:
        """Count one use of ``ids`` without touching their IDU (e.g. their loss was not finite)."""
        u = self.uses[ids]
        self.uses[ids] = torch.where(u < 255, u + 1, u)

    def nbytes(self) -> int:
        return self.idu.element_size() * self.idu.numel() + self.uses.element_size() * self.uses.numel()

    def state_dict(self) -> dict[str, Any]:
        return {"idu": self.idu.clone(), "uses": self.uses.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        idu, uses = state["idu"], state["uses"]
        if idu.numel() != self.idu.numel() or uses.numel() != self.uses.numel():
            raise ValueError(
                f"Checkpointed selection state holds {idu.numel()} examples but the pool has {self.idu.numel()}."
                " HINT: resume with the same pool index the run was started with."
            )
        self.idu = idu.to(torch.float32).clone()
        self.uses = uses.to(torch.uint8).clone()
