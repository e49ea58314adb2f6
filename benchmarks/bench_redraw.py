"""Redraw and round-end cost of LEAD's selection at pool sizes 1e5, 1e6, 1e7 (no model involved).

Measures, per pool size: one redraw (bandit draw + eligibility + stratified top-k + budget cap +
shuffle), one round close (IDU update of the round's examples, reward, bandit update), and the bytes
of per-example selection state. Pool: K=7 clusters, 8 groups, random iu0; sample_rate 0.015; budget
2.5%; some examples already used, so eligibility is not trivial.

Rerun: python benchmarks/bench_redraw.py [--sizes 100000 1000000 10000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from lead_lightning import PoolIndex
from lead_lightning.engine import LeadSelector
from lead_lightning.idu import RoundRecords


def bench(n: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    clusters = torch.randint(0, 7, (n,), generator=g)
    groups = torch.randint(0, 8, (n,), generator=g)
    iu0 = torch.rand(n, generator=g) * 3
    pool = PoolIndex(clusters=clusters, groups=groups, iu0=iu0)
    sel = LeadSelector(pool, budget=0.025, sample_rate=0.015, bandit="exp3", seed=0)
    sel.state.uses[torch.randint(0, n, (n // 100,), generator=g)] = 1  # 1% already seen
    sketch = torch.zeros(4096, dtype=torch.float64)
    draw_t, close_t, sizes = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subset = sel.current_subset()
        draw_t.append(time.perf_counter() - t0)
        sizes.append(subset.numel())
        recs = RoundRecords(
            subset,
            torch.rand(subset.numel(), generator=g),
            torch.full((subset.numel(),), 2e-5, dtype=torch.float64),
        )
        t0 = time.perf_counter()
        sel.close_round(recs, sketch)
        close_t.append(time.perf_counter() - t0)
    return {
        "n": n,
        "redraw_ms": 1000 * statistics.median(draw_t),
        "close_ms": 1000 * statistics.median(close_t),
        "subset": statistics.median(sizes),
        "bytes_per_example": sel.nbytes_per_example(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"{'N':>10} | {'redraw ms':>9} | {'round close ms':>14} | {'subset':>7} | {'state B/example':>15}")
    print("-" * 70)
    for n in args.sizes:
        r = bench(n, args.repeats)
        print(
            f"{r['n']:>10} | {r['redraw_ms']:>9.1f} | {r['close_ms']:>14.1f} | {r['subset']:>7.0f} |"
            f" {r['bytes_per_example']:>15.1f}"
        )
    print("targets: redraw 1e6 <= 50 ms, 1e7 <= 500 ms; state <= 16 B/example")
    print("rerun: python benchmarks/bench_redraw.py")


if __name__ == "__main__":
    main()
