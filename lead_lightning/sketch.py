"""Parameter-update sketches and the gradient coefficient ``C_k`` of the IDU formula.

LEAD needs, once per round, the squared norms of two parameter updates and the cosine between
them. Update vectors are never stored whole: a seeded, linear CountSketch of the trainable
parameters is taken at each round boundary, so ``sketch(theta_end) - sketch(theta_start)`` sketches
the update. When the trainable parameter count fits in ``dim`` the sketch is the exact vector.

**Sharded parameters.** Every element is hashed from its *global* index (its position in the
flattened list of all trainable parameters, in ``module.parameters()`` order), so the sketch is a sum
of per-element terms: a rank that holds only a shard sketches its pieces with their global offsets
(:meth:`ParameterSketch.sketch_pieces`, the whole vector's ``total`` deciding exact vs hashed mode)
and a sum over ranks gives the sketch of the whole vector. The callback does this under FSDP
(Lightning's ``FSDPStrategy``: FSDP1 flat parameters, ``use_orig_params`` either way) and under
DTensor parameters (``ModelParallelStrategy``: FSDP2 ``fully_shard``, tensor parallelism); see
:func:`lead_lightning.distributed.local_parameter_shards`. In exact mode the summed sketch is
bitwise the unsharded one (every coordinate has one owner and the other ranks add ``+0.0``); in
hashed mode a bucket's terms are added in another order, so it equals the unsharded sketch to float64
rounding (relative ``~1e-16`` per term; the unsharded sketch on a GPU, summed with atomics, is
itself defined only to that precision).

**DeepSpeed.** ZeRO stages 1 and 2 shard optimizer states and gradients, not the module's
parameters: every rank holds the whole (updated) parameters, so the unsharded path is correct
there. ZeRO stage 3 partitions each parameter into DeepSpeed's own per-parameter buffers
(``param.ds_tensor``; the module holds empty placeholders); it is refused with an error rather
than sketched wrong: the same local-pieces mechanism would cover it, but nothing here can run
DeepSpeed to test it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["ParameterSketch", "gradient_coefficient"]

_P = (1 << 31) - 1  # Mersenne prime for the universal hash


class ParameterSketch:
    """Seeded CountSketch of a parameter list into ``dim`` float64 buckets.

    Hashes are computed on the fly from the element's global index (no per-parameter index table),
    so memory is ``O(dim)`` and the cost is one pass over the parameters, in chunks.

    Args:
        dim: sketch size. Exact (identity map) when the total parameter count is <= ``dim``.
        seed: seed of the hash functions; all ranks must use the same one.
        chunk: elements hashed at a time (bounds temporary memory).

    Example:
        >>> import torch
        >>> sk = ParameterSketch(dim=8, seed=0)
        >>> sk([torch.tensor([3.0, 4.0])])[:3]  # 2 <= 8 parameters: exact
        tensor([3., 4., 0.], dtype=torch.float64)
    """

    def __init__(self, dim: int = 4096, seed: int = 0, chunk: int = 1 << 20) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"`sketch_dim` must be a positive int, got {dim!r}.")
        self.dim = dim
        self.chunk = chunk
        g = torch.Generator().manual_seed(int(seed) + 7919)
        a, b, c, d = torch.randint(1, _P - 1, (4,), generator=g, dtype=torch.int64).tolist()
        self._coef = (a, b, c, d)

    def __call__(self, params: Iterable[Tensor]) -> Tensor:
        """Sketch of the concatenated, flattened ``params`` (CPU float64 ``Tensor[dim]``)."""
        params = [p.detach() for p in params]
        total = sum(p.numel() for p in params)
        self._check_total(total)
        device = params[0].device
        out = torch.zeros(self.dim, dtype=torch.float64, device=device)
        exact = total <= self.dim
        offset = 0
        for p in params:
            self._add_run(out, p.reshape(-1), offset, exact)
            offset += p.numel()
        return out.cpu()

    def sketch_pieces(self, pieces: Iterable[tuple[Tensor, int | Tensor]], total: int) -> Tensor:
        """Sketch of some pieces of a ``total``-element vector, each placed by its global coordinates.

        The sketch is linear, so the sum of the sketches of disjoint pieces that cover the vector
        is the sketch of the vector: shards sketched on their ranks, then summed across ranks.

        Args:
            pieces: ``(values, start)`` pairs. ``start`` an int: ``values`` (flattened row-major) are
                the elements ``start .. start + values.numel() - 1`` of the vector. ``start`` a 1-D
                integer tensor of ``R`` row starts: ``values`` viewed as ``[R, -1]``, row ``r``
                holds the elements from ``start[r]`` on (a block of a sharded tensor that is not
                contiguous in the flat order, e.g. a column shard). Pieces must not overlap.
            total: the element count of the whole vector (all ranks' pieces together): it decides
                exact vs hashed mode exactly as :meth:`__call__` does for the whole vector.

        Returns:
            CPU float64 ``Tensor[dim]``; zeros when this rank holds no piece.

        Example:
            >>> import torch
            >>> sk = ParameterSketch(dim=4, seed=0)
            >>> x = torch.arange(6.0)
            >>> halves = sk.sketch_pieces([(x[:2], 0)], 6) + sk.sketch_pieces([(x[2:], 2)], 6)
            >>> torch.equal(halves, sk([x]))  # two ranks' shards, summed
            True
        """
        self._check_total(total)
        exact = total <= self.dim
        out: Tensor | None = None
        for values, start in pieces:
            values = values.detach()
            if out is None:
                out = torch.zeros(self.dim, dtype=torch.float64, device=values.device)
            if isinstance(start, Tensor):
                self._add_rows(out, values, start, total, exact)
                continue
            start = int(start)
            if start < 0 or start + values.numel() > total:
                raise ValueError(
                    f"A piece of {values.numel()} elements at {start} does not fit a vector of {total}."
                )
            self._add_run(out, values.reshape(-1), start, exact)
        if out is None:
            return torch.zeros(self.dim, dtype=torch.float64)
        return out.cpu()

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check_total(total: int) -> None:
        if total == 0:
            raise ValueError("No trainable parameters to sketch: every parameter has requires_grad=False.")
        if total >= (1 << 32):
            raise ValueError(f"At most 2**32 trainable parameters can be sketched, got {total}.")

    def _add_run(self, out: Tensor, flat: Tensor, offset: int, exact: bool) -> None:
        """Add elements ``offset .. offset + flat.numel() - 1`` (a contiguous run), in chunks."""
        device = out.device
        for start in range(0, flat.numel(), self.chunk):  # float64 copies of one chunk at a time
            vals = flat[start : start + self.chunk].to(device=device, dtype=torch.float64)
            idx = torch.arange(
                offset + start, offset + start + vals.numel(), device=device, dtype=torch.int64
            )
            self._add(out, idx, vals, exact)

    def _add_rows(self, out: Tensor, values: Tensor, starts: Tensor, total: int, exact: bool) -> None:
        """Add a block whose row ``r`` starts at global index ``starts[r]``."""
        starts = starts.reshape(-1).to(device=out.device, dtype=torch.int64)
        rows = starts.numel()
        if values.numel() == 0 or rows == 0:
            return
        block = values.reshape(rows, -1)
        run = block.shape[1]
        if int(starts.min()) < 0 or int(starts.max()) + run > total:
            raise ValueError(f"A block of {rows} rows of {run} elements does not fit a vector of {total}.")
        step = max(1, self.chunk // run)
        cols = torch.arange(run, device=out.device, dtype=torch.int64)
        for r in range(0, rows, step):
            vals = block[r : r + step].reshape(-1).to(device=out.device, dtype=torch.float64)
            idx = (starts[r : r + step, None] + cols).reshape(-1)
            self._add(out, idx, vals, exact)

    def _add(self, out: Tensor, idx: Tensor, vals: Tensor, exact: bool) -> None:
        if exact:
            out.index_add_(0, idx, vals)
        else:
            a, b, c, d = self._coef
            bucket = ((a * idx + b) % _P) % self.dim
            sign = 1.0 - 2.0 * (((c * idx + d) % _P) & 1).to(torch.float64)
            out.index_add_(0, bucket, sign * vals)


def gradient_coefficient(u_k: Tensor | None, u_prev: Tensor | None) -> tuple[float, float]:
    """``C_k`` and ``beta*`` of LEAD's loss-change estimate from two (sketched) update vectors.

    .. math::

        \\rho = \\sqrt{d_k d_{prev}} \\cos\\phi, \\qquad
        \\beta^* = \\mathrm{clip}\\Big(\\frac{d_{prev} - \\rho}{d_k + d_{prev} - 2\\rho}, 0, 1\\Big), \\qquad
        C_k = \\beta^2 d_k + (1-\\beta)^2 d_{prev} + 2\\beta(1-\\beta)\\rho

    i.e. ``C_k = ||beta* u_k + (1 - beta*) u_prev||^2``, the smallest squared norm of a convex
    combination of the two updates. First round (no ``u_prev``): ``C = 0``. Cluster never trained
    (no ``u_k``): ``C = d_prev``. ``0/0`` (identical updates) gives ``beta* = 0.5``.

    Returns:
        ``(C_k, beta*)`` as Python floats.

    Example:
        >>> import torch
        >>> gradient_coefficient(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))  # orthogonal
        (0.5, 0.5)
    """
    if u_prev is None:
        return 0.0, 0.5
    d_prev = float(u_prev.double().pow(2).sum())
    if u_k is None:
        return d_prev, 0.0
    d_k = float(u_k.double().pow(2).sum())
    rho = float((u_k.double() * u_prev.double()).sum())  # = sqrt(d_k d_prev) cos(phi)
    denom = d_k + d_prev - 2.0 * rho  # = ||u_k - u_prev||^2 >= 0
    beta = 0.5 if denom <= 1e-300 else min(1.0, max(0.0, (d_prev - rho) / denom))
    c = beta * beta * d_k + (1.0 - beta) ** 2 * d_prev + 2.0 * beta * (1.0 - beta) * rho
    return max(c, 0.0), beta


def update_stats(u_k: Tensor, u_prev: Tensor) -> tuple[float, float, float]:
    """``(d_k, d_prev, cos_phi)`` of two update vectors (for logging and tests).

    Example:
        >>> import torch
        >>> update_stats(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))[2]  # doctest: +ELLIPSIS
        0.7071...
    """
    d_k = float(u_k.double().pow(2).sum())
    d_prev = float(u_prev.double().pow(2).sum())
    denom = (d_k * d_prev) ** 0.5
    cos = float((u_k.double() * u_prev.double()).sum()) / denom if denom > 0 else 0.0
    return d_k, d_prev, cos
