"""Collectives the callback needs, through Lightning's strategy (one call per round, not per step),
and the local shards of sharded parameters (FSDP, DTensor) with their global coordinates."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["gather_variable", "broadcast_tensor", "all_reduce_sum", "LocalShards", "local_parameter_shards"]


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


def all_reduce_sum(strategy: Any, t: Tensor) -> Tensor:
    """The sum of ``t`` over ranks (CPU tensor), through ``strategy.reduce(..., reduce_op="sum")``.

    Lightning's DDP, FSDP and ModelParallel strategies reduce with ``torch.distributed.all_reduce``
    on the strategy's device (a CUDA tensor for NCCL; gloo takes CPU float64), so ``t`` is copied
    there and back. The caller's tensor is not modified.
    """
    if int(getattr(strategy, "world_size", 1)) == 1:
        return t
    out = strategy.reduce(t.to(strategy.root_device, copy=True), reduce_op="sum")
    return out.cpu()


# ---------------------------------------------------------------------------------------------- shards
@dataclass
class LocalShards:
    """This rank's pieces of the trainable parameter vector, for :meth:`ParameterSketch.sketch_pieces`.

    The vector is every trainable parameter, flattened row-major, in the unsharded module's
    ``parameters()`` order; ``total`` is its length. Each element is in exactly one rank's pieces
    (replicated data: rank 0's copy), so summing the ranks' sketches counts it once.
    """

    pieces: list[tuple[Tensor, int | Tensor]] = field(default_factory=list)
    total: int = 0


def _dtensor_api() -> tuple[Any, Any, Any, Any]:
    """``(DTensor, Shard, Replicate, compute_local_shape_and_global_offset)`` or Nones (old torch)."""
    try:
        from torch.distributed.tensor import DTensor, Replicate, Shard
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    except ImportError:  # torch < 2.5
        try:
            from torch.distributed._tensor import DTensor, Replicate, Shard  # type: ignore[no-redef]
            from torch.distributed._tensor._utils import (  # type: ignore[no-redef]
                compute_local_shape_and_global_offset,
            )
        except ImportError:
            return None, None, None, None
    return DTensor, Shard, Replicate, compute_local_shape_and_global_offset


def _fsdp1_modules(root: nn.Module) -> list[Any]:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return []
    return [m for m in root.modules() if isinstance(m, FullyShardedDataParallel)]


def _refuse_zero3(params: Sequence[Tensor]) -> None:
    if any(hasattr(p, "ds_tensor") for p in params):
        raise NotImplementedError(
            "DeepSpeed ZeRO stage 3 partitions the parameters (`param.ds_tensor`), and the LEAD parameter"
            " sketch does not read those partitions (untested). Use ZeRO stage 1 or 2 (parameters"
            " replicated: supported), or FSDP (`strategy='fsdp'`) / ModelParallelStrategy to shard them."
        )


def _box(
    local: Tensor, gshape: tuple[int, ...], offset: tuple[int, ...], base: int
) -> tuple[Tensor, int | Tensor]:
    """A local block of a tensor of shape ``gshape`` (block origin ``offset``) as a sketch piece.

    The block is a contiguous run of the flattened tensor when every dimension after the first
    one it cuts is whole; otherwise it is rows of equal length, each with its global start.
    """
    lshape = tuple(local.shape)
    stride = [1] * len(gshape)
    for d in range(len(gshape) - 2, -1, -1):
        stride[d] = stride[d + 1] * gshape[d + 1]
    cut = [d for d in range(len(gshape)) if lshape[d] != gshape[d]]
    j = cut[-1] if cut else -1
    if j <= 0:
        return local.reshape(-1), base + (offset[0] * stride[0] if j == 0 else 0)
    starts = torch.tensor([base + offset[j] * stride[j]], dtype=torch.int64)
    for d in range(j):
        along = (torch.arange(lshape[d], dtype=torch.int64) + offset[d]) * stride[d]
        starts = (starts[:, None] + along[None, :]).reshape(-1)
    return local.reshape(starts.numel(), -1), starts


def local_parameter_shards(module: nn.Module, root: nn.Module | None = None) -> LocalShards | None:
    """This rank's pieces of ``module``'s trainable parameters with global coordinates, or ``None``.

    ``None`` (nothing sharded: every rank holds every parameter, the caller sketches them as they
    are) unless a trainable parameter is a DTensor or lives in an FSDP1 ``FlatParameter``.

    * **DTensor** (FSDP2 ``fully_shard``, tensor parallelism): ``to_local()`` is a block of the
      global tensor whose shape and origin ``compute_local_shape_and_global_offset`` gives. A rank
      contributes its block only if its mesh holds global rank 0 and its coordinate is 0 on every
      ``Replicate`` mesh dimension (one copy of replicated data). Other placements (``_StridedShard``
      of FSDP2 over tensor parallelism on the same dimension, ``Partial``) are gathered whole with
      ``full_tensor()`` (one parameter at a time) and contributed by rank 0.
    * **FSDP1** (``FullyShardedDataParallel``, ``use_orig_params`` True or False): each original
      parameter's part of the local flat shard is ``_local_shard[offset_in_shard:][:numel_in_shard]``
      and starts ``intra_param_start_idx`` into that parameter (``FlatParameter._shard_param_infos``).
      A flat parameter sharded over a process group without rank 0 (``HYBRID_SHARD`` replicas) or not
      sharded at all (``NO_SHARD``) is counted from rank 0's group only / rank 0 only. FSDP1 never
      gathers anything here: the alternative, ``summon_full_params``, would materialise every
      parameter every round.
    * Other parameters (replicated on every rank) are contributed by rank 0.

    The global order is the unsharded module's ``parameters()`` order (module pre-order, then
    registration order), rebuilt for FlatParameters from their ``_param_infos``; it is the same on
    every rank. Every rank must hold the same module structure: pipeline parallelism (ranks with
    different layers) is not supported.

    Args:
        module: the model (Lightning's ``pl_module``).
        root: the module that contains the FSDP wrappers (``trainer.strategy.model``: Lightning
            wraps the LightningModule itself in FSDP); default ``module``.

    Raises:
        NotImplementedError: parameters partitioned by DeepSpeed ZeRO stage 3.
    """
    params = list(module.parameters())
    _refuse_zero3(params)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    root = module if root is None else root
    dtensor_cls, shard_cls, replicate_cls, local_box = _dtensor_api()
    fsdp = _fsdp1_modules(root)
    has_dtensor = dtensor_cls is not None and any(isinstance(p, dtensor_cls) for p in params)
    if not fsdp and not has_dtensor:
        return None
    rank = torch.distributed.get_rank()
    pre: dict[int, int] = {}
    for i, m in enumerate(root.modules()):
        pre.setdefault(id(m), i)

    # slots: (order key, global numel, producer of this rank's pieces given the global start)
    slots: list[tuple[tuple[int, int, int], int, Any]] = []
    managed: set[tuple[int, str]] = set()
    for fm in fsdp:
        handle = getattr(fm, "_handle", None)
        if handle is None:
            continue
        flat = handle.flat_param
        for spi in flat._shared_param_infos:
            managed.add((id(spi.module), spi.param_name))
        if handle.uses_sharded_strategy:
            group_ranks = torch.distributed.get_process_group_ranks(fm.process_group)
            counts = 0 in group_ranks
        else:  # NO_SHARD: every rank holds the whole flat parameter
            counts = rank == 0
        local = getattr(flat, "_local_shard", None)
        local = flat.data if local is None else local
        for i, info in enumerate(flat._param_infos):
            managed.add((id(info.module), info.param_name))
            trainable = flat._params[i].requires_grad if flat._params is not None else flat.requires_grad
            if not trainable:
                continue
            sh = flat._shard_param_infos[i]

            def fsdp_pieces(
                start: int, sh: Any = sh, local: Tensor = local, counts: bool = counts
            ) -> Iterator:
                if counts and sh.in_shard and sh.numel_in_shard:
                    part = local[sh.offset_in_shard : sh.offset_in_shard + sh.numel_in_shard]
                    yield part, start + sh.intra_param_start_idx

            slots.append(((pre[id(info.module)], 0, i), int(flat._numels[i]), fsdp_pieces))

    seen: set[int] = set()
    for m in root.modules():
        for j, (name, p) in enumerate(m._parameters.items()):
            if p is None or (id(m), name) in managed or getattr(p, "_is_flat_param", False) or id(p) in seen:
                continue
            seen.add(id(p))
            if not p.requires_grad:
                continue
            if has_dtensor and isinstance(p, dtensor_cls):
                producer = _dtensor_pieces(p, rank, shard_cls, replicate_cls, local_box)
            else:

                def producer(start: int, p: Tensor = p) -> Iterator:
                    if rank == 0:
                        yield p, start

            slots.append(((pre[id(m)], 1, j), int(p.numel()), producer))

    slots.sort(key=lambda s: s[0])
    out = LocalShards()
    for _, numel, producer in slots:
        out.pieces.extend(producer(out.total))
        out.total += numel
    return out


def _dtensor_pieces(p: Any, rank: int, shard_cls: Any, replicate_cls: Any, local_box: Any) -> Any:
    placements = tuple(p.placements)
    mesh = p.device_mesh

    def pieces(start: int) -> Iterator:
        if not all(type(pl) in (shard_cls, replicate_cls) for pl in placements):
            full = p.full_tensor()  # a collective: every rank of the mesh calls it, in the same order
            if rank == 0:
                yield full.detach(), start
            return
        coord = mesh.get_coordinate()
        if coord is None or 0 not in mesh.mesh.reshape(-1).tolist():
            return
        if any(type(pl) is replicate_cls and c != 0 for pl, c in zip(placements, coord, strict=True)):
            return
        local = p.to_local().detach()
        if local.numel() == 0:
            return
        shape, offset = local_box(tuple(p.shape), mesh, placements)
        if tuple(local.shape) != tuple(shape):
            raise RuntimeError(f"DTensor local shape {tuple(local.shape)} is not the expected block {shape}.")
        yield _box(local, tuple(p.shape), tuple(offset), start)

    return pieces
