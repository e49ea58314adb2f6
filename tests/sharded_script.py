"""Run by tests/test_sharded_sketch.py: the parameter sketch of sharded parameters, one process per rank.

``python sharded_script.py OUT RANK WORLD PORT``: joins a gloo process group on 127.0.0.1:PORT and,
for several ways of sharding the same parameters, writes ``OUT/rank<RANK>.pt``: per case, per sketch
size, per round, the sketch the callback computes from this rank's shards (all-reduced), the sketch
of the whole parameters (the unsharded reference) and the sketch of rank 0's shards alone (the
behaviour before sharding was handled). The test compares them in the parent process.

Cases: hand-made flat shards of uneven size (``manual``, and ``manual_float64`` whose float64
values make hashed buckets round differently when summed by shard); DTensors on CPU device meshes
(``dtensor_rows``, ``_mixed``, ``_submesh``, ``_fallback``: see :func:`dtensor`); modules sharded by
FSDP2 ``fully_shard`` (``fsdp2``) and by FSDP1 ``FullyShardedDataParallel`` with ``use_orig_params`` True and False (``fsdp1_orig``,
``fsdp1_flat``), trained a step with SGD between sketches; and replicas that must be counted once:
FSDP2 over a (replicate, shard) mesh (``fsdp2_hsdp``), FSDP1 ``NO_SHARD`` and ``HYBRID_SHARD``
(2 x 2 on 4 ranks; on 2 ranks these three hold whole replicas).
"""

from __future__ import annotations

import copy
import os
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from lightning.fabric.utilities.distributed import _sync_ddp_if_available
from torch import nn

from lead_lightning import LeadSelectionCallback, PoolIndex
from lead_lightning.distributed import all_reduce_sum
from lead_lightning.sketch import ParameterSketch

ROUNDS = 4  # sketches at ROUNDS + 1 round boundaries
DIMS = {"exact": 4096, "hashed": 16}
SHAPES = [(7, 5), (3,), (11, 2), (1,), (4, 3, 2), (13,), (2, 9)]  # 106 elements


class Strategy:
    """What the callback uses of a Lightning strategy, implemented as DDPStrategy/FSDPStrategy do."""

    def __init__(self, world: int, model: nn.Module | None = None) -> None:
        self.world_size = world
        self.root_device = torch.device("cpu")
        self.model = model

    def reduce(self, tensor: torch.Tensor, group=None, reduce_op="mean"):  # noqa: ANN001, ANN201
        return _sync_ddp_if_available(tensor, group, reduce_op=reduce_op)

    def broadcast(self, obj, src: int = 0):  # noqa: ANN001, ANN201
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]


def thetas(seed: int, dtype: torch.dtype = torch.float32) -> list[list[torch.Tensor]]:
    """ROUNDS + 1 parameter states: a random start, then random updates (same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    out = [[torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]]
    for _ in range(ROUNDS):
        out.append([p + 0.3 * torch.randn(p.shape, generator=g, dtype=dtype) for p in out[-1]])
    return out


def callback(dim: int) -> LeadSelectionCallback:
    pool = PoolIndex(clusters=torch.arange(8) % 2, iu0=torch.ones(8))
    return LeadSelectionCallback(pool, budget=1.0, sample_rate=2, sketch_dim=dim, seed=3)


def sketch_module(module: nn.Module, root: nn.Module, world: int, dim: int) -> torch.Tensor:
    """Exactly what `LeadSelectionCallback` computes at a round boundary."""
    trainer = SimpleNamespace(strategy=Strategy(world, root))
    return callback(dim)._sketch(trainer, module)  # type: ignore[arg-type]


def local_tensors(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.to_local() if hasattr(p, "to_local") else p for p in params]


# ---------------------------------------------------------------------------------------------- cases
def manual(rank: int, world: int, dtype: torch.dtype = torch.float32) -> dict:
    """Flat shards of uneven size, cut inside tensors: rank r holds [cuts[r], cuts[r + 1])."""
    total = sum(torch.Size(s).numel() for s in SHAPES)
    cuts = [0, *(total * (2 * r + 1) // (2 * world) + r for r in range(world - 1)), total]
    out: dict = {m: [] for m in DIMS}
    for params in thetas(1, dtype):
        pieces, rank0_pieces, offset = [], [], 0
        for p in params:
            flat = p.reshape(-1)
            for r, mine in ((rank, pieces), (0, rank0_pieces)):
                lo, hi = max(cuts[r], offset), min(cuts[r + 1], offset + flat.numel())
                if lo < hi:
                    mine.append((flat[lo - offset : hi - offset], lo))
            offset += flat.numel()
        for mode, dim in DIMS.items():
            sk = ParameterSketch(dim, seed=3)
            sharded = all_reduce_sum(Strategy(world), sk.sketch_pieces(pieces, total))
            old = sk([v for v, _ in rank0_pieces])  # rank 0's fragment, as if it were everything
            out[mode].append((sharded, sk(params), old))
    return out


class Holder(nn.Module):
    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(p) for p in params])


def dtensor(rank: int, world: int, layout: str) -> dict:
    """``rows``: Shard(0) everywhere. ``mixed``: column shards, a 3-D middle-dimension shard,
    replicated vectors. ``submesh`` (an even world): a (dp, tp) mesh; vectors sharded over the tp
    sub-mesh, matrices over the dp sub-mesh (replicated across the other sub-mesh's copies), 3-D
    tensors over both (Shard(0), Shard(2)). ``fallback`` (an even world): placements read whole with
    ``full_tensor()``: the 3-D tensor (_StridedShard(0), Shard(0)) on the (dp, tp) mesh as FSDP2 over
    tensor parallelism makes such, vectors Partial (rank 0 holds the value, the others zeros)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, _StridedShard, distribute_tensor

    def make(p: torch.Tensor) -> DTensor:
        if layout == "fallback" and p.dim() == 1:
            return DTensor.from_local(p if rank == 0 else torch.zeros_like(p), flat, [Partial()])
        return distribute_tensor(p, *place(p))

    def place(p: torch.Tensor):  # noqa: ANN202
        if layout == "rows":
            return flat, [Shard(0)]
        if layout == "mixed":
            return flat, [{1: Replicate(), 2: Shard(1), 3: Shard(1)}[p.dim()]]
        if layout == "fallback":
            return (
                (grid, [_StridedShard(0, split_factor=2), Shard(0)]) if p.dim() == 3 else (flat, [Shard(0)])
            )
        return {1: (grid["tp"], [Shard(0)]), 2: (grid["dp"], [Shard(0)]), 3: (grid, [Shard(0), Shard(2)])}[
            p.dim()
        ]

    flat = init_device_mesh("cpu", (world,))
    if layout in ("submesh", "fallback"):
        grid = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))

    out: dict = {m: [] for m in DIMS}
    for params in thetas(2):
        dparams = [make(p) for p in params]
        module = Holder(dparams)
        for mode, dim in DIMS.items():
            sk = ParameterSketch(dim, seed=3)
            sharded = sketch_module(module, module, world, dim)
            old = sk(local_tensors(dparams)) if rank == 0 else torch.zeros(dim, dtype=torch.float64)
            out[mode].append((sharded, sk(params), Strategy(world).broadcast(old)))
    return out


class Net(nn.Module):
    """Root-unit parameters before and after a nested unit, and a frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 5)
        self.inner = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
        self.c = nn.Linear(3, 1)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.inner(torch.tanh(self.a(x)))) * self.scale)


def hybrid_mesh(world: int) -> tuple[int, int]:
    """(replicas, shards): 2 x 2 on 4 ranks; on 2 ranks 2 replicas of 1 shard (FSDP1 then runs NO_SHARD)."""
    return (2, world // 2) if world % 2 == 0 and world >= 4 else (world, 1)


def fsdp(rank: int, world: int, kind: str) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    net = Net()
    if kind != "fsdp1_flat":  # FSDP1 with use_orig_params=False wants one requires_grad per unit
        net.a.bias.requires_grad_(False)
    reference = copy.deepcopy(net)
    module = net  # the callback sees the LightningModule; an FSDP1 root wraps it
    if kind.startswith("fsdp2"):
        from torch.distributed.fsdp import fully_shard

        # fsdp2_hsdp: replicated across the first mesh dimension (Replicate, Shard(0) placements)
        if kind == "fsdp2_hsdp":
            mesh = init_device_mesh("cpu", hybrid_mesh(world), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh("cpu", (world,))
        fully_shard(net.inner, mesh=mesh)
        model: nn.Module = fully_shard(net, mesh=mesh)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardingStrategy

        kw: dict = {"device_id": torch.device("cpu"), "use_orig_params": kind != "fsdp1_flat"}
        if kind == "fsdp1_noshard":
            kw["sharding_strategy"] = ShardingStrategy.NO_SHARD
        if kind == "fsdp1_hybrid":
            kw["sharding_strategy"] = ShardingStrategy.HYBRID_SHARD
            kw["device_mesh"] = init_device_mesh(
                "cpu", hybrid_mesh(world), mesh_dim_names=("replicate", "shard")
            )
        net.inner = FSDP(net.inner, **kw)
        model = FSDP(net, **kw)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    g = torch.Generator().manual_seed(5)
    out: dict = {m: [] for m in DIMS}
    for r in range(ROUNDS + 1):
        if r:  # one training step per round (the same batch on every rank)
            x, y = torch.randn(8, 6, generator=g), torch.randn(8, 1, generator=g)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        reference.load_state_dict(full)
        trainable = [p for p in reference.parameters() if p.requires_grad]
        for mode, dim in DIMS.items():
            sk = ParameterSketch(dim, seed=3)
            sharded = sketch_module(module, model, world, dim)
            mine = [p for p in module.parameters() if p.requires_grad]
            old = sk(local_tensors(mine)) if rank == 0 else torch.zeros(dim, dtype=torch.float64)
            out[mode].append((sharded, sk(trainable), Strategy(world).broadcast(old)))
    return out


def main(out: Path, rank: int, world: int, port: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    results = {
        "manual": manual(rank, world),
        "manual_float64": manual(rank, world, torch.float64),
        "dtensor_rows": dtensor(rank, world, "rows"),
        "dtensor_mixed": dtensor(rank, world, "mixed"),
        "dtensor_submesh": dtensor(rank, world, "submesh"),
        "dtensor_fallback": dtensor(rank, world, "fallback"),
        "fsdp2": fsdp(rank, world, "fsdp2"),
        "fsdp1_orig": fsdp(rank, world, "fsdp1_orig"),
        "fsdp1_flat": fsdp(rank, world, "fsdp1_flat"),
        "fsdp2_hsdp": fsdp(rank, world, "fsdp2_hsdp"),
        "fsdp1_noshard": fsdp(rank, world, "fsdp1_noshard"),
        "fsdp1_hybrid": fsdp(rank, world, "fsdp1_hybrid"),
    }
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    # a gloo group left to interpreter shutdown can abort the process after the work is done
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
