"""Pools at 10^8 (issue 12, part 3): compact memory, memory-mapped index, O(round) round close,
redraws identical to the algorithm before the rewrite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from lead_lightning import LeadConfig, PoolIndex
from lead_lightning.engine import LeadSelector
from lead_lightning.idu import RoundRecords
from lead_lightning.selection import ClusterLayout, per_group_quota, select_in_clusters


def random_pool(n: int, k: int = 5, g: int = 4, seed: int = 0, **extra: object) -> PoolIndex:
    gen = torch.Generator().manual_seed(seed)
    clusters = torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=gen)])
    groups = torch.randint(0, g, (n,), generator=gen)
    iu0 = torch.round(torch.rand(n, generator=gen) * 8) / 4  # coarse: many ties
    return PoolIndex(clusters=clusters, groups=groups, iu0=iu0, **extra)  # type: ignore[arg-type]


# ---------------------------------------------------------------- memory
def test_paper_preset_bytes_per_example_from_the_tensors():
    pool = random_pool(3000, ifd=None)
    sel = LeadSelector(pool, LeadConfig.paper())
    tensors = sel.memory_tensors()
    dtypes = {k: v.dtype for k, v in tensors.items()}
    assert dtypes == {
        "pool.clusters": torch.int16,
        "pool.groups": torch.int16,
        "pool.iu0": torch.float32,
        "state.idu": torch.float32,
        "state.uses": torch.uint8,
        "layout.order": torch.int32,
    }  # the layout's clusters and groups are the pool's tensors, listed once
    assert sel.layout.clusters.data_ptr() == pool.clusters.data_ptr()
    assert sel.layout.groups.data_ptr() == pool.groups.data_ptr()
    measured = sum(t.element_size() * t.numel() for t in tensors.values()) / len(pool)
    assert sel.nbytes_per_example() == measured <= 24
    # options that add state: the reference loss column, the last loss
    ref = PoolIndex(clusters=pool.clusters, groups=pool.groups, iu0=pool.iu0, ref_loss=pool.iu0 * 0.5)
    assert LeadSelector(ref, utility="reducible").nbytes_per_example() == measured + 4
    assert LeadSelector(pool, learnability=True).nbytes_per_example() == measured + 4


def test_many_groups_use_int32_and_fingerprint_is_that_of_int64_columns():
    import hashlib

    n = 40_000
    pool = PoolIndex(clusters=np.arange(n) % 3, groups=np.arange(n), iu0=np.ones(n))
    assert pool.groups.dtype == torch.int32 and pool.clusters.dtype == torch.int16
    h = hashlib.sha1()
    h.update(pool.clusters.numpy().astype(np.int64).tobytes())
    h.update(pool.groups.numpy().astype(np.int64).tobytes())
    h.update(pool.iu0.numpy().tobytes())
    assert pool.fingerprint() == h.hexdigest()[:16]  # unchanged by the compact dtypes


# ---------------------------------------------------------------- memory-mapped index
def _mapped_files(t: torch.Tensor) -> set[str]:
    """Files mapped at the address of ``t``'s data (from /proc/self/maps)."""
    addr, out = t.data_ptr(), set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= addr < hi and len(parts) == 6:
            out.add(parts[5])
    return out


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_mmap_load_is_file_backed_and_equals_the_parquet_load(tmp_path, recwarn):
    pool = PoolIndex(
        clusters=[0, 1, 1, 2, 0, 2, 1],
        groups=["b", "a", "b", "c", "a", "a", "c"],
        iu0=[0.5, 1.0, 2.0, 0.25, 3.0, 1.5, 0.75],
        ifd=[0.1] * 7,
        n_response_tokens=[3, 4, 5, 6, 7, 8, 9],
        ref_loss=[0.1] * 7,
        provenance={"records": "ab"},
    )
    pq = pool.save(tmp_path / "pool.parquet")
    ref = PoolIndex.load(pq)
    mm = PoolIndex.load(pq, mmap=True)  # writes pool.parquet.mmap/ and maps it
    direct = PoolIndex.load(pool.save(tmp_path / "d", format="mmap"))
    for got in (mm, direct):
        for name, t in ref.column_tensors().items():
            assert torch.equal(got.column_tensors()[name], t) and got.column_tensors()[name].dtype == t.dtype
        assert got.group_names == ref.group_names == ["a", "b", "c"]
        assert got.provenance == ref.provenance and got.fingerprint() == ref.fingerprint()
    cache = tmp_path / "pool.parquet.mmap"
    for name in ("clusters", "groups", "iu0", "layout_order"):
        assert str(cache / f"{name}.npy") in _mapped_files(mm.column_tensors()[name])
    assert not [w for w in recwarn if "not writable" in str(w.message)]
    # copy-on-write: a write stays private, the file is unchanged
    mm.iu0[0] = 99.0
    assert float(PoolIndex.load(pq, mmap=True).iu0[0]) == 0.5
    # the selector built on the mapped index draws what the parquet one draws
    a, b = (
        LeadSelector(ref, budget=1.0, sample_rate=0.5),
        LeadSelector(PoolIndex.load(cache), budget=1.0, sample_rate=0.5),
    )
    assert b.layout.order.data_ptr() == b.pool.column_tensors()["layout_order"].data_ptr()
    assert torch.equal(a.current_subset(), b.current_subset())


def test_mmap_cache_is_rewritten_when_the_parquet_changes(tmp_path):
    pq = PoolIndex(clusters=[0, 1], iu0=[1.0, 2.0]).save(tmp_path / "p.parquet")
    assert PoolIndex.load(pq, mmap=True).iu0.tolist() == [1.0, 2.0]
    os.utime(pq, ns=(1, 1))  # another file in its place (other mtime)
    PoolIndex(clusters=[0, 1, 1], iu0=[3.0, 2.0, 1.0]).save(pq)
    assert PoolIndex.load(pq, mmap=True).iu0.tolist() == [3.0, 2.0, 1.0]


# ---------------------------------------------------------------- checkpoints
def test_state_v2_checkpoint_with_int64_era_tensors_loads():
    pool = random_pool(500)
    sel = LeadSelector(pool, budget=0.2, sample_rate=0.1, seed=3)
    for _ in range(3):
        sub = sel.current_subset()
        sel.close_round(
            RoundRecords(sub, torch.rand(sub.numel()), torch.full((sub.numel(),), 1e-3, dtype=torch.float64)),
            torch.zeros(8, dtype=torch.float64),
        )
    state = sel.state_dict()
    # as a state-version-2 checkpoint stored it before the compact dtypes: float64 IDU, int64 uses
    state["idu"] = {"idu": state["idu"]["idu"].double(), "uses": state["idu"]["uses"].long()}
    other = LeadSelector(pool, budget=0.2, sample_rate=0.1, seed=3)
    other.load_state_dict(state)
    assert other.state.idu.dtype == torch.float32 and other.state.uses.dtype == torch.uint8
    assert torch.equal(other.current_subset(), sel.current_subset())


# ---------------------------------------------------------------- round close is O(round)
class _FullPoolOps(TorchFunctionMode):
    """Records every torch op that reads or writes a tensor of ``n`` or more elements, except
    indexing a pool-size tensor with a small index (a gather/scatter of the round's ids)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.hits: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        meta = {"numel", "dim", "size", "element_size", "__len__", "data_ptr", "untyped_storage", "__get__"}
        if name not in meta:
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if name in {"__getitem__", "__setitem__", "index_select"}:
                tensors = tensors[1:]  # the indexed tensor may be pool-size; the index (and value) must not
            if any(t.numel() >= self.n for t in tensors):
                self.hits.append(name)
        out = func(*args, **kwargs)
        if name not in meta and isinstance(out, torch.Tensor) and out.numel() >= self.n and name != "__get__":
            self.hits.append(f"{name} (output)")
        return out


@pytest.mark.parametrize("allocation", ["single", "proportional"])
def test_close_round_touches_only_the_round(allocation, monkeypatch):
    n = 20_000
    monkeypatch.setattr(LeadSelector, "exact_mean_max", 0)  # the running sum at every size
    pool = random_pool(n, k=7, g=3)
    sel = LeadSelector(pool, budget=0.05, sample_rate=0.01, allocation=allocation, seed=1)
    g = torch.Generator().manual_seed(0)
    sketch = torch.zeros(16, dtype=torch.float64)
    for r in range(4):
        sub = sel.current_subset()
        assert 0 < sub.numel() < n // 10
        recs = RoundRecords(
            sub, torch.rand(sub.numel(), generator=g), torch.full((sub.numel(),), 1e-3, dtype=torch.float64)
        )
        if r == 2:
            recs.loss[0] = float("nan")
        sketch = sketch + 1
        mode = _FullPoolOps(n)
        with mode:
            summary = sel.close_round(recs, sketch.clone())
        assert mode.hits == [], mode.hits
        # the running mean equals the pool's mean up to float rounding
        assert summary["idu_mean_pool"] == pytest.approx(float(sel.state.idu.double().mean()), rel=1e-6)


def test_small_pools_log_the_float32_pool_mean_exactly():
    sel = LeadSelector(random_pool(1000), budget=0.5, sample_rate=0.2)
    sub = sel.current_subset()
    s = sel.close_round(
        RoundRecords(sub, torch.rand(sub.numel()), torch.zeros(sub.numel(), dtype=torch.float64)),
        torch.zeros(4, dtype=torch.float64),
    )
    assert s["idu_mean_pool"] == float(sel.state.idu.mean())


# ---------------------------------------------------------------- redraw identical to the old algorithm
def _old_select_in_clusters(clusters, groups, arms, scores, eligible, sample_rate, examples=None):  # noqa: ANN001, ANN202
    """The stratified top-k as it was before the rewrite (frozen copy): two stable sorts for the
    layout, advanced indexing, strata found with unique_consecutive."""
    by_group = torch.sort(groups.to(torch.int64), stable=True).indices
    by_cluster = torch.sort(clusters.to(torch.int64)[by_group], stable=True).indices
    order = by_group[by_cluster]
    k = int(clusters.max()) + 1
    offsets = torch.zeros(k + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(clusters.to(torch.int64), minlength=k), 0)
    seg_ids = torch.cat([order[int(offsets[a]) : int(offsets[a + 1])] for a in arms])
    ok, val = eligible[seg_ids], scores[seg_ids]
    key = torch.where(ok, val.float(), float("-inf"))
    gr = groups[seg_ids]
    bounds = [0]
    for a in arms:
        start, n_a = bounds[-1], int(offsets[a + 1] - offsets[a])
        _, counts = torch.unique_consecutive(gr[start : start + n_a], return_counts=True)
        bounds.extend((start + torch.cumsum(counts, 0)).tolist())
    sizes = torch.tensor([b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)], dtype=torch.int64)
    quota = per_group_quota(sizes, sample_rate, examples).tolist()
    picked = []
    for (lo, hi), q in zip(zip(bounds[:-1], bounds[1:], strict=True), quota, strict=True):
        q = min(q, int(ok[lo:hi].sum()))
        if q == 0:
            continue
        kk = key[lo:hi]
        vals, pos = torch.topk(kk, q, sorted=False)
        thr = vals.min()
        if int((kk == thr).sum()) != int((vals == thr).sum()):
            above = torch.nonzero(kk > thr).flatten()
            pos = torch.cat([above, torch.nonzero(kk == thr).flatten()[: q - above.numel()]])
        pos = torch.sort(pos).values
        picked.append(lo + pos[torch.sort(-kk[pos], stable=True).indices])
    return seg_ids[torch.cat(picked)] if picked else seg_ids[:0]


@pytest.mark.parametrize("seed", range(6))
def test_redraw_identical_to_the_old_algorithm_on_random_pools(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(50, 4000, (1,), generator=gen))
    k, g = int(torch.randint(1, 9, (1,), generator=gen)), int(torch.randint(1, 12, (1,), generator=gen))
    pool = random_pool(n, k=k, g=g, seed=seed)
    scores = torch.round(torch.rand(n, generator=gen) * 5)  # ties
    eligible = torch.rand(n, generator=gen) < 0.7
    lay = ClusterLayout(pool.clusters, pool.groups)
    for arms in ([0], list(range(k)), [k - 1, 0] if k > 1 else [0]):
        for rate, count in ((0.1, None), (None, max(1, n // 20))):
            want = _old_select_in_clusters(pool.clusters, pool.groups, arms, scores, eligible, rate, count)
            got = select_in_clusters(lay, arms, scores, eligible, rate, count)
            assert got.dtype == torch.int64 and torch.equal(got, want)
