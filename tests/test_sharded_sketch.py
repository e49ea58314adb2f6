"""The parameter sketch of sharded parameters (FSDP1, FSDP2 / DTensor, hand-made flat shards).

Each rank sketches its shards with global coordinates and a sum over ranks gives the sketch of the
whole parameters. `sharded_script.py` runs the sharded side in gloo processes started here (Lightning
refuses `strategy="fsdp"` on CPU; torch's FSDP1, FSDP2 and DTensor run on CPU with gloo); this file
compares its sketches with the unsharded ones, their `C_k`, and the decisions of a `LeadSelector` fed
either. Exact mode (parameters <= sketch_dim) must match bitwise: every coordinate has one owner and
the other ranks add +0.0. Hashed mode adds a bucket's terms in another order, so it matches to float64
rounding (bitwise here for float32 parameters: a few float32 terms per bucket sum exactly in float64;
`manual_float64` makes the rounding differ).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from lead_lightning import PoolIndex
from lead_lightning.distributed import LocalShards, _box, all_reduce_sum, local_parameter_shards
from lead_lightning.engine import LeadSelector
from lead_lightning.idu import RoundRecords
from lead_lightning.sketch import ParameterSketch, gradient_coefficient

CASES = (
    "manual",
    "manual_float64",
    "dtensor_rows",
    "dtensor_mixed",
    "dtensor_submesh",
    "dtensor_fallback",
    "fsdp2",
    "fsdp1_orig",
    "fsdp1_flat",
    "fsdp2_hsdp",
    "fsdp1_noshard",
    "fsdp1_hybrid",
)
# replicas, not shards: rank 0 holds everything (on 2 ranks the hybrid meshes are 2 replicas x 1 shard)
WHOLE_ON_RANK0 = {2: {"fsdp2_hsdp", "fsdp1_noshard", "fsdp1_hybrid"}, 4: {"fsdp1_noshard"}}
SCRIPT = Path(__file__).with_name("sharded_script.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(out: Path, world: int, timeout: float = 240.0) -> list[dict]:
    """One process per rank; every rank's sketches (see `sharded_script.py`)."""
    out.mkdir(parents=True, exist_ok=True)
    port = str(_free_port())
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs = []
    for r in range(world):
        log = open(out / f"log{r}.txt", "w")  # noqa: SIM115 - closed below
        cmd = [sys.executable, str(SCRIPT), str(out), str(r), str(world), port]
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + timeout
    try:
        for p, _ in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    for r, (p, _) in enumerate(procs):
        assert p.returncode == 0, (
            f"rank {r} exited {p.returncode}:\n" + (out / f"log{r}.txt").read_text()[-4000:]
        )
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:  # noqa: ANN001
    return _launch(tmp_path_factory.mktemp("sharded2"), world=2)


def _check_against_unsharded(ranks: list[dict]) -> None:
    assert set(ranks[0]) == set(CASES)
    for case in CASES:
        for mode in ("exact", "hashed"):
            for k, row in enumerate(ranks[0][case][mode]):
                sharded, full, _ = row
                where = f"{case}/{mode}/round {k}"
                for other in ranks[1:]:
                    assert torch.equal(other[case][mode][k][0], sharded), f"ranks disagree: {where}"
                if mode == "exact":
                    assert torch.equal(sharded, full), where
                else:
                    torch.testing.assert_close(
                        sharded, full, rtol=1e-13, atol=1e-13 * float(full.abs().max())
                    )


@pytest.mark.ddp
def test_sharded_sketch_is_the_unsharded_sketch(two_ranks):  # noqa: ANN001
    _check_against_unsharded(two_ranks)
    # the tolerance path is exercised: float64 values round differently when summed by shard
    rows = two_ranks[0]["manual_float64"]["hashed"]
    assert any(not torch.equal(s, f) for s, f, _ in rows)


def _check_rank0_alone_differs(ranks: list[dict]) -> None:
    for case in CASES:
        for mode in ("exact", "hashed"):
            for _, full, old in ranks[0][case][mode]:
                if case in WHOLE_ON_RANK0[len(ranks)]:
                    assert torch.equal(old, full), (case, mode)  # replicas: nothing was missing
                else:
                    assert not torch.allclose(old, full), (case, mode)


@pytest.mark.ddp
def test_rank0_shard_alone_is_not_the_sketch(two_ranks):  # noqa: ANN001
    """What the callback did before: rank 0 sketched its own fragment and broadcast it."""
    _check_rank0_alone_differs(two_ranks)


def _updates(rows: list, which: int) -> list[torch.Tensor]:
    return [rows[k + 1][which] - rows[k][which] for k in range(len(rows) - 1)]


@pytest.mark.ddp
def test_gradient_coefficient_is_the_unsharded_one(two_ranks):  # noqa: ANN001
    for case in CASES:
        for mode in ("exact", "hashed"):
            rows = two_ranks[0][case][mode]
            us, uf = _updates(rows, 0), _updates(rows, 1)
            for i in range(1, len(us)):
                for j in range(i):  # u_k from round j, u_prev from round i
                    cs, bs = gradient_coefficient(us[j], us[i])
                    cf, bf = gradient_coefficient(uf[j], uf[i])
                    assert cf > 0
                    if mode == "exact":
                        assert (cs, bs) == (cf, bf), (case, i, j)
                    else:
                        assert cs == pytest.approx(cf, rel=1e-12) and bs == pytest.approx(
                            bf, rel=1e-12, abs=1e-15
                        )


def _run_selector(sketches: list[torch.Tensor]) -> tuple[list[list[int]], LeadSelector]:
    n = 48
    g = torch.Generator().manual_seed(0)
    pool = PoolIndex(
        clusters=torch.arange(n) % 4, groups=torch.arange(n) % 2, iu0=torch.rand(n, generator=g) * 3
    )
    sel = LeadSelector(pool, budget=1.0, sample_rate=6, seed=5, max_uses=8)
    sel.sketch_start = sketches[0]
    subsets = []
    for r, sketch in enumerate(sketches[1:]):
        sub = sel.current_subset()
        subsets.append(sub.tolist())
        loss = torch.sin(sub.double() * 0.7 + r).abs() * 2  # deterministic per (id, round)
        sel.close_round(
            RoundRecords(sub, loss.float(), torch.full((len(sub),), 0.4, dtype=torch.float64)), sketch
        )
    return subsets, sel


def _decisions_hash(sel: LeadSelector) -> str:
    """Everything but the float64 sketches and C_k: IDU, uses, bandit, history."""
    h = hashlib.sha256()
    for t in (sel.state.idu, sel.state.uses, sel.bandit.probabilities()):
        h.update(t.detach().contiguous().numpy().tobytes())
    hist = [{k: v for k, v in e.items() if k not in ("round_time_s", "coef")} for e in sel.history]
    h.update(json.dumps(hist).encode())
    return h.hexdigest()


@pytest.mark.ddp
def test_selector_fed_sharded_sketches_decides_the_same(two_ranks):  # noqa: ANN001
    for case in CASES:
        for mode in ("exact", "hashed"):
            rows = two_ranks[0][case][mode]
            sub_s, sel_s = _run_selector([r[0] for r in rows])
            sub_f, sel_f = _run_selector([r[1] for r in rows])
            assert sub_s == sub_f, (case, mode)
            assert _decisions_hash(sel_s) == _decisions_hash(sel_f), (case, mode)
            if mode == "exact":  # the whole state, sketches and C_k included, bitwise
                assert torch.equal(sel_s.sketch_start, sel_f.sketch_start)
                assert torch.equal(sel_s.coef, sel_f.coef)
            else:
                torch.testing.assert_close(sel_s.coef, sel_f.coef, rtol=1e-12, atol=0)
            if case in WHOLE_ON_RANK0[2]:
                continue
            # the sketch matters: rank 0's fragment alone leads elsewhere
            _, sel_old = _run_selector([r[2] for r in rows])
            assert not torch.allclose(sel_old.coef, sel_f.coef), (case, mode)
            assert _decisions_hash(sel_old) != _decisions_hash(sel_f), (case, mode)


@pytest.mark.ddp
@pytest.mark.slow
def test_four_ranks_hybrid_meshes_and_uneven_shards(tmp_path):  # noqa: ANN001
    """Four ranks: 2 x 2 HYBRID_SHARD / HSDP / dp x tp meshes, ranks with empty shards, other cuts."""
    ranks = _launch(tmp_path, world=4)
    _check_against_unsharded(ranks)
    _check_rank0_alone_differs(ranks)


# ---------------------------------------------------------------------------------------------- in-process
def _params(dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(s, generator=g, dtype=dtype) for s in [(7, 5), (3,), (11, 2), (4, 3, 2)]]


@pytest.mark.parametrize("dim", [4096, 16])
def test_pieces_in_order_are_the_whole_sketch_bitwise(dim):  # noqa: ANN001
    params = _params()
    flat = torch.cat([p.reshape(-1) for p in params])
    sk = ParameterSketch(dim, seed=2, chunk=7)
    cuts = [0, 3, 35, 36, 50, flat.numel()]
    pieces = [(flat[a:b], a) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert torch.equal(sk.sketch_pieces(pieces, flat.numel()), sk(params))


@pytest.mark.parametrize("dim", [4096, 16])
def test_shards_summed_are_the_whole_sketch(dim):  # noqa: ANN001
    params = _params()
    flat = torch.cat([p.reshape(-1) for p in params])
    total = flat.numel()
    sk = ParameterSketch(dim, seed=2)
    ranks = [[(flat[0:20], 0), (flat[60:], 60)], [(flat[20:60], 20)], []]  # uneven; one empty
    summed = sum(sk.sketch_pieces(p, total) for p in ranks)
    if dim >= total:
        assert torch.equal(summed, sk(params))
    else:
        torch.testing.assert_close(summed, sk(params), rtol=1e-13, atol=1e-13)


def test_row_pieces_place_a_block_by_its_row_starts():
    """A column block of a [6, 5] matrix and a middle-dimension block of a [2, 4, 3] tensor."""
    m = torch.arange(30.0).reshape(6, 5)
    t = torch.arange(24.0).reshape(2, 4, 3) + 100
    total = 30 + 24
    sk = ParameterSketch(64, seed=0)  # exact: output index = global index
    col = _box(m[:, 1:3], (6, 5), (0, 1), 0)
    mid = _box(t[:, 1:3, :], (2, 4, 3), (0, 1, 0), 30)
    assert isinstance(col[1], torch.Tensor) and col[1].tolist() == [1, 6, 11, 16, 21, 26]
    assert isinstance(mid[1], torch.Tensor) and mid[1].tolist() == [33, 45]
    out = sk.sketch_pieces([col, mid], total)
    want = torch.zeros(64, dtype=torch.float64)
    want[:30].view(6, 5)[:, 1:3] = m[:, 1:3].double()
    want[30:54].view(2, 4, 3)[:, 1:3, :] = t[:, 1:3, :].double()
    assert torch.equal(out, want)
    rows = _box(m[2:4], (6, 5), (2, 0), 7)  # a row block is one contiguous run
    assert rows[1] == 7 + 10 and rows[0].shape == (10,)


def test_sketch_pieces_checks_its_input():
    sk = ParameterSketch(8)
    with pytest.raises(ValueError, match="does not fit"):
        sk.sketch_pieces([(torch.ones(3), 5)], 7)
    with pytest.raises(ValueError, match="does not fit"):
        sk.sketch_pieces([(torch.ones(2, 3), torch.tensor([0, 5]))], 7)
    with pytest.raises(ValueError, match="No trainable parameters"):
        sk.sketch_pieces([], 0)
    assert torch.equal(sk.sketch_pieces([], 5), torch.zeros(8, dtype=torch.float64))  # a rank with no shard


def test_unsharded_modules_keep_the_replicated_path():
    assert local_parameter_shards(nn.Linear(3, 2)) is None  # no process group: nothing is sharded
    assert all_reduce_sum(object(), torch.ones(2)).tolist() == [1.0, 1.0]  # one process: the tensor itself
    assert LocalShards().total == 0


def test_deepspeed_zero3_is_refused():
    m = nn.Linear(3, 2)
    m.weight.ds_tensor = torch.zeros(3)  # what ZeRO-3 leaves on a partitioned parameter
    with pytest.raises(NotImplementedError, match="ZeRO stage 3"):
        local_parameter_shards(m)
