"""LEAD's selection at pool scale (1e5 .. 1e8 examples, no model): redraw vs its floor, memory, index
build/load, round close.

Per pool size N (K=7 clusters, 8 groups, random iu0, 1% of the examples already used; sample_rate
0.015, budget 2.5%, EXP3):

- redraw: ``LeadSelector.draw`` for one arm (``allocation=single``, the paper) and for all arms
  (``allocation=proportional``), each beside its floor: the bare work a redraw must do, written as
  the most direct torch code (per (cluster, group) stratum of the drawn clusters: gather the use
  counts and IDU of its ids, mask the ineligible, ``torch.topk`` of its quota; then one
  ``torch.randperm`` shuffle), timed interleaved with the redraw in the same run. Median of repeats.
- bytes per example: every per-example tensor of the selector and its ``PoolIndex``, measured from
  the tensors (``LeadSelector.memory_tensors``), for the paper preset and for the options that add
  state (``utility=reducible``: the pool's ``ref_loss``; ``learnability`` / ``reward=loss_drop``:
  the last loss).
- build: ``PoolIndex(...)`` from arrays + ``LeadSelector(...)``; load: ``PoolIndex.load`` of the
  parquet file, and of the memory-mapped directory (``save(format="mmap")``) + ``LeadSelector``.
- round close: ``close_round`` of a round's records (IDU update, reward, bandit update).

Rerun: python benchmarks/bench_redraw.py [--sizes 100000 1000000 10000000] [--huge] [--repeats 5]
(``--huge`` adds 1e8; needs about 6 GB of memory and a few minutes). One torch thread unless
``--threads``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lead_lightning import PoolIndex
from lead_lightning.engine import LeadSelector
from lead_lightning.idu import RoundRecords
from lead_lightning.selection import per_group_quota


def make_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "clusters": rng.integers(0, 7, n, dtype=np.int16),
        "groups": rng.integers(0, 8, n, dtype=np.int16),
        "iu0": (rng.random(n, dtype=np.float32) * 3).astype(np.float32),
    }


def floor_draw(sel: LeadSelector, strata: list[tuple[int, int, int]], gen: torch.Generator) -> torch.Tensor:
    """The bare redraw: top-k of each stratum's eligible IDU, then a shuffle (direct torch code)."""
    order, uses, idu, m = sel.layout.order, sel.state.uses, sel.state.idu, sel.max_uses
    parts = []
    for lo, hi, q in strata:
        ids = order[lo:hi]
        key = torch.where(uses.index_select(0, ids) < m, idu.index_select(0, ids), float("-inf"))
        parts.append(ids[torch.topk(key, q, sorted=False).indices])
    out = torch.cat(parts)
    return out[torch.randperm(out.numel(), generator=gen)]


def floor_strata(sel: LeadSelector, quotas: dict[int, int | None]) -> list[tuple[int, int, int]]:
    """(lo, hi, quota) in ``layout.order`` of every stratum of the clusters in ``quotas`` (not timed)."""
    out = []
    for a, count in quotas.items():
        start = int(sel.layout.offsets[a])
        b = sel.layout.strata[a]
        sizes = torch.tensor([hi - lo for lo, hi in zip(b[:-1], b[1:], strict=True)])
        q = per_group_quota(sizes, sel.sample_rate if count is None else None, count).tolist()
        out += [(start + lo, start + hi, k) for lo, hi, k in zip(b[:-1], b[1:], q, strict=True) if k > 0]
    return out


def time_redraw(sel: LeadSelector, repeats: int) -> tuple[float, float, int]:
    """Median ms of the redraw and of its floor, interleaved; the subset size."""
    sel.subset = None
    sub = sel.draw()  # warm-up, and the arms and quotas the floor must reproduce
    if sel.allocation == "single":
        quotas: dict[int, int | None] = {a: None for a in sel.arms}
    else:
        quotas = {
            a: int(v) for a, v in enumerate(torch.bincount(sel.layout.clusters[sub].long()).tolist()) if v
        }
    strata = floor_strata(sel, quotas)
    gen = torch.Generator().manual_seed(0)
    floor_draw(sel, strata, gen)
    t_draw, t_floor = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        floor_draw(sel, strata, gen)
        t_floor.append(time.perf_counter() - t0)
        sel.subset = None
        t0 = time.perf_counter()
        sel.draw()
        t_draw.append(time.perf_counter() - t0)
    return 1000 * statistics.median(t_draw), 1000 * statistics.median(t_floor), sub.numel()


def time_close(sel: LeadSelector, repeats: int) -> float:
    g = torch.Generator().manual_seed(1)
    sketch = torch.zeros(4096, dtype=torch.float64)
    ts = []
    for r in range(repeats):
        sub = sel.current_subset()
        recs = RoundRecords(
            sub, torch.rand(sub.numel(), generator=g), torch.full((sub.numel(),), 2e-5, dtype=torch.float64)
        )
        sketch = sketch + r
        t0 = time.perf_counter()
        sel.close_round(recs, sketch)
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def seen_one_percent(sel: LeadSelector, n: int) -> None:
    g = torch.Generator().manual_seed(2)
    sel.state.uses[torch.randint(0, n, (n // 100,), generator=g)] = 1
    sel._recount()


def bench(n: int, repeats: int, workdir: Path) -> dict[str, float]:
    cfg = {"budget": 0.025, "sample_rate": 0.015, "bandit": "exp3", "seed": 0}
    arrays = make_arrays(n)
    t0 = time.perf_counter()
    pool = PoolIndex(**arrays)
    sel = LeadSelector(pool, **cfg)
    build_s = time.perf_counter() - t0
    out: dict[str, float] = {"n": n, "build_s": build_s, "B_paper": sel.nbytes_per_example()}
    out["B_state_only"] = sel.nbytes_per_example(pool=False)

    pq_path = workdir / f"pool{n}.parquet"
    t0 = time.perf_counter()
    pool.save(pq_path)
    out["save_parquet_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mm_path = pool.save(workdir / f"pool{n}.mmap", format="mmap")
    out["save_mmap_s"] = time.perf_counter() - t0
    del pool, sel
    t0 = time.perf_counter()
    p2 = PoolIndex.load(pq_path)
    LeadSelector(p2, **cfg)
    out["load_parquet_s"] = time.perf_counter() - t0
    del p2
    t0 = time.perf_counter()
    pool = PoolIndex.load(mm_path)
    sel = LeadSelector(pool, **cfg)
    out["load_mmap_s"] = time.perf_counter() - t0
    out["B_paper_mmap"] = sel.nbytes_per_example()

    seen_one_percent(sel, n)
    out["redraw_single_ms"], out["floor_single_ms"], out["subset_single"] = time_redraw(sel, repeats)
    out["close_ms"] = time_close(sel, repeats)
    del sel
    # round close at a fixed round size (2000 examples): what depends on N, beyond the round's records
    sel = LeadSelector(pool, **{**cfg, "sample_rate": 2000})
    out["close_2000_ms"] = time_close(sel, repeats)
    del sel
    sel = LeadSelector(pool, allocation="proportional", **cfg)
    seen_one_percent(sel, n)
    out["redraw_prop_ms"], out["floor_prop_ms"], out["subset_prop"] = time_redraw(sel, repeats)
    del sel, pool
    for f in workdir.glob(f"pool{n}*"):
        if f.is_dir():
            for x in f.iterdir():
                x.unlink()
            f.rmdir()
        else:
            f.unlink()
    return out


def extras(n: int = 100_000) -> dict[str, float]:
    """Bytes per example the options beyond the paper add (measured on a small pool)."""
    a = make_arrays(n)
    base = LeadSelector(PoolIndex(**a)).nbytes_per_example()
    ref = PoolIndex(**a, ref_loss=a["iu0"] * 0.5)
    return {
        "utility=reducible (pool ref_loss)": LeadSelector(ref, utility="reducible").nbytes_per_example()
        - base,
        "learnability / reward=loss_drop (last loss)": LeadSelector(
            PoolIndex(**a), learnability=True
        ).nbytes_per_example()
        - base,
        "allocation=proportional": LeadSelector(
            PoolIndex(**a), allocation="proportional"
        ).nbytes_per_example()
        - base,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--huge", action="store_true", help="also 1e8 (about 6 GB of memory, minutes)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = list(args.sizes) + ([100_000_000] if args.huge else [])
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    )
    head = (
        f"{'N':>10} | {'single ms':>9} | {'floor':>6} | {'ratio':>5} | {'all-arm ms':>10} | {'floor':>6} |"
        f" {'ratio':>5} | {'close ms':>8} | {'B/ex':>5} | {'build s':>7} | {'pq load s':>9} | {'mmap load s':>11}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = bench(n, args.repeats, Path(tmp))
            print(
                f"{r['n']:>10} | {r['redraw_single_ms']:>9.1f} | {r['floor_single_ms']:>6.1f} |"
                f" {r['redraw_single_ms'] / r['floor_single_ms']:>5.2f} | {r['redraw_prop_ms']:>10.1f} |"
                f" {r['floor_prop_ms']:>6.1f} | {r['redraw_prop_ms'] / r['floor_prop_ms']:>5.2f} |"
                f" {r['close_ms']:>8.2f} | {r['B_paper']:>5.1f} | {r['build_s']:>7.2f} |"
                f" {r['load_parquet_s']:>9.2f} | {r['load_mmap_s']:>11.2f}",
                flush=True,
            )
            print(
                f"{'':>10}   subsets {r['subset_single']:.0f} / {r['subset_prop']:.0f}; state only"
                f" {r['B_state_only']:.1f} B/ex; mmap-loaded {r['B_paper_mmap']:.1f} B/ex; save parquet"
                f" {r['save_parquet_s']:.2f} s, mmap {r['save_mmap_s']:.2f} s; close of a 2000-example round"
                f" {r['close_2000_ms']:.2f} ms",
                flush=True,
            )
    for name, b in extras().items():
        print(f"extra bytes/example, {name}: +{b:.1f}")
    print("targets: redraw <= 1.5x its floor; <= 24 B/example (paper preset, PoolIndex included)")
    print("rerun: python benchmarks/bench_redraw.py --huge")


if __name__ == "__main__":
    main()
