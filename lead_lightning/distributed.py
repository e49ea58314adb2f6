"""Collectives the callback needs, through Lightning's strategy (one call per round, not per step)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["gather_variable", "broadcast_tensor"]


def _normalise(gathered: Tensor, world_size: int) -> Tensor:
    # With one process `strategy.all_gather` returns the tensor without a leading rank dimension.
    return gathered.unsqueeze(0) if world_size == 1 else gathered


def gather_variable(strategy: Any, tensors: list[Tensor]) -> tuple[list[Tensor], list[int]]:
    """All-gather 1-D CPU tensors whose length differs per rank.

    All ``tensors`` must share this rank's length. Returns each tensor concatenated in rank order and
    the per-rank lengths; identical on every rank.
    """
    world = int(getattr(strategy, "world_size", 1))
    if world == 1:
        return tensors, [tensors[0].numel()]
    device = strategy.root_device
    n = torch.tensor([tensors[0].numel()], device=device)
    lengths = _normalise(strategy.all_gather(n), world).reshape(-1).cpu()
    longest = int(lengths.max())
    out = []
    for t in tensors:
        padded = torch.zeros(longest, dtype=t.dtype, device=device)
        padded[: t.numel()] = t.to(device)
        g = _normalise(strategy.all_gather(padded), world).cpu()
        out.append(torch.cat([g[r, : int(lengths[r])] for r in range(world)]))
    return out, [int(x) for x in lengths.tolist()]


def broadcast_tensor(strategy: Any, t: Tensor) -> Tensor:
    """Rank 0's value of ``t`` on every rank (CPU tensor)."""
    if int(getattr(strategy, "world_size", 1)) == 1:
        return t
    return strategy.broadcast(t.cpu(), src=0)
