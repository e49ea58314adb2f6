"""`RoundSampler`: yields this round's selected pool ids, sharded across DDP ranks.

It subclasses :class:`~torch.utils.data.DistributedSampler` only so that Lightning does not wrap it
in another distributed sampler: it shards itself, the way ``DistributedSampler(shuffle=False,
drop_last=False)`` does (rank-strided, padded by wrapping around so every rank has the same number
of batches; the callback ignores the padding duplicates when it updates IDU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from torch import Tensor
from torch.utils.data import DistributedSampler

__all__ = ["RoundSampler"]


class RoundSampler(DistributedSampler):  # type: ignore[type-arg]
    """Sampler over the current round's subset, provided by a callable (the selection callback).

    The subset is asked for lazily (``len()`` or ``iter()``), which is the moment Lightning's fit
    loop needs it: before ``on_train_epoch_start``.

    Args:
        provider: returns the current round's ids (``LongTensor``, same order on every rank).

    Example:
        >>> import torch
        >>> s = RoundSampler(lambda: torch.tensor([5, 3, 9]))
        >>> s.set_distributed(rank=1, world_size=2)
        >>> len(s), list(s)  # rank 1 of 2: ids 3 and 5 (padding wraps around)
        (2, [3, 5])
    """

    def __init__(self, provider: Callable[[], Tensor]) -> None:  # noqa: D107 - no super().__init__
        self._provider = provider
        self.rank = 0
        self.num_replicas = 1
        self.epoch = 0
        self.shuffle = False
        self.drop_last = False
        self._skip = 0

    def set_distributed(self, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Invalid rank {rank} for world size {world_size}.")
        self.rank, self.num_replicas = rank, world_size

    def skip_next(self, n: int) -> None:
        """Skip the first ``n`` ids of this rank's shard on the next iteration (mid-round resume)."""
        self._skip = max(0, int(n))

    def _shard(self) -> list[int]:
        ids = self._provider().tolist()
        if not ids or self.num_replicas == 1:
            return ids
        total = math.ceil(len(ids) / self.num_replicas) * self.num_replicas
        padded = ids + (ids * math.ceil(total / len(ids)))[: total - len(ids)]
        return padded[self.rank : total : self.num_replicas]

    def __len__(self) -> int:
        # Lightning reads the length before iterating; it must be the full shard even when resuming
        # mid-round, so the epoch ends when the (shorter) iteration is exhausted.
        n = len(self._provider())
        return math.ceil(n / self.num_replicas) if n else 0

    def __iter__(self) -> Iterator[int]:
        shard = self._shard()
        skip, self._skip = self._skip, 0
        return iter(shard[skip:])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
