"""How a round's examples are split over clusters, and how many new examples a round may add.

Pure functions over plain tensors (deterministic, no RNG):

- :func:`proportional_quotas`: every available cluster gets a share of the round in proportion to
  its size, tilted by the bandit's probabilities, with a floor (``allocation="proportional"``; in
  the spirit of online data mixing and DoReMi, which reweight domains rather than pick one).
- :func:`paced_new_cap`: at most ``ceil(budget_left / rounds_left)`` never-seen examples per round,
  so the unique budget is spread over the planned rounds (``pacing=True``).
- :func:`top_up`: fill a round that came out short with the next-best eligible examples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["paced_new_cap", "proportional_quotas", "top_up"]


def _largest_remainder(weights: Tensor, total: int) -> Tensor:
    """Integers proportional to ``weights`` that sum to ``total`` (largest remainder, ties by index)."""
    w = weights.to(torch.float64).clamp_min(0)
    if total <= 0 or float(w.sum()) <= 0:
        return torch.zeros(weights.numel(), dtype=torch.int64)
    exact = w / w.sum() * total
    quota = torch.floor(exact).to(torch.int64)
    spare = total - int(quota.sum())
    if spare > 0:
        quota[torch.sort(-(exact - quota), stable=True).indices[:spare]] += 1
    return quota


def proportional_quotas(sizes: Tensor, probs: Tensor, total: int, floor: float = 0.5) -> Tensor:
    r"""Examples per cluster for a round of ``total`` examples over every available cluster.

    .. math::
        q_k \propto \phi\,\frac{n_k}{\sum_j n_j} + (1 - \phi)\,\frac{n_k\,p_k}{\sum_j n_j\,p_j}

    with ``n_k`` the cluster sizes (0 for unavailable clusters), ``p_k`` the bandit's probabilities
    and ``phi`` = ``floor``: with a uniform bandit the split is proportional to size whatever
    ``floor`` is; ``floor`` is the share of the round that stays proportional to size however
    strongly the bandit tilts (so no available cluster is starved). Rounded by largest remainder.

    Example:
        >>> import torch
        >>> sizes, uniform = torch.tensor([100, 300, 0]), torch.tensor([0.5, 0.5, 0.0])
        >>> proportional_quotas(sizes, uniform, 8).tolist()
        [2, 6, 0]
        >>> proportional_quotas(sizes, torch.tensor([1.0, 0.0, 0.0]), 8, floor=0.5).tolist()
        [5, 3, 0]
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"`floor` must be in [0, 1], got {floor!r}.")
    n = sizes.to(torch.float64).clamp_min(0)
    if float(n.sum()) <= 0:
        return torch.zeros(sizes.numel(), dtype=torch.int64)
    by_size = n / n.sum()
    tilted = n * probs.to(torch.float64).clamp_min(0)
    tilt = tilted / tilted.sum() if float(tilted.sum()) > 0 else by_size
    return _largest_remainder(floor * by_size + (1.0 - floor) * tilt, total)


def paced_new_cap(budget_left: int, rounds_left: int | None) -> int:
    """New (never-seen) examples a round may add: ``ceil(budget_left / rounds_left)``.

    Example:
        >>> paced_new_cap(100, 3), paced_new_cap(100, None), paced_new_cap(0, 3)
        (34, 100, 0)
    """
    if budget_left <= 0:
        return 0
    if rounds_left is None or rounds_left <= 1:
        return budget_left
    return math.ceil(budget_left / rounds_left)


def top_up(chosen: Tensor, want: int, candidates: Tensor, scores: Tensor) -> Tensor:
    """``chosen`` plus the best-scoring ``candidates`` not in it until it holds ``want`` ids.

    Ties by id (lower first). ``candidates`` are the eligible ids that may still be added.

    Example:
        >>> import torch
        >>> top_up(torch.tensor([3]), 3, torch.tensor([0, 1, 2, 3]), torch.tensor([0.1, 0.9, 0.5, 2.0])).tolist()
        [3, 1, 2]
    """
    short = want - chosen.numel()
    if short <= 0 or candidates.numel() == 0:
        return chosen
    rest = candidates[~torch.isin(candidates, chosen)]
    if rest.numel() == 0:
        return chosen
    rest = torch.sort(rest).values
    order = torch.sort(-scores[rest].to(torch.float64), stable=True).indices[:short]
    return torch.cat([chosen, rest[order]])
