"""The SmolLM2-135M confirmation study, run through the app (pre-registered in PROTOCOL.md).

Every training run is ``train(compose(overrides, output_dir))``, the call ``lead-train`` makes, with
the real pretrained SmolLM2-135M-Instruct (``model=smollm2_135m peft=lora``) on ``data=gsm8k_bbh``:

1. **Pool index, once** (shared by every run and seed): the app's offline stage
   (:func:`lead_lightning.app.offline.build_pool`: iu0 + IFD of every pool example under the base
   model, IFD k-means clusters, and the RHO-LOSS reference losses of a reference model trained on
   the clean reference split), written to ``<cache>/pool/<fingerprint>.parquet``. Every run then
   trains from it (``pool.index=<that file>``): nothing is scored again.
2. **Base**: the base model's held-out losses (one validation before any training).
3. **Runs**: seeds x methods at one budget, each cached as ``<cache>/runs/<key>/result.json``
   (keyed by its overrides, :func:`benchmarks/study/run.py:run_cached`): a rerun trains only
   what is missing.
4. **Report**: ``results.md`` (mean ± sd over seeds per held-out family and their mean; paired
   differences against ``random`` with 95% t-intervals).

    python benchmarks/smollm2_study/run.py            # the pre-registered study (PROTOCOL.md)
    python benchmarks/smollm2_study/run.py --tiny     # smoke test (~3 min on the shared box, model loads dominate; 8-example sets; not a result)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

_spec = importlib.util.spec_from_file_location("lead_study_run", REPO / "benchmarks" / "study" / "run.py")
assert _spec is not None and _spec.loader is not None
study = importlib.util.module_from_spec(_spec)
sys.modules["lead_study_run"] = study
_spec.loader.exec_module(study)

# ----------------------------------------------------------------------------- the pre-registered design
SEEDS = [0, 1, 2]
POOL = 128  # GSM8K training problems
BUDGET = 24  # unique examples (18.75% of the pool)
ROUNDS = 3
PER_ROUND = 16  # = ceil(2 x BUDGET / ROUNDS): every method trains 48 example-steps (12 steps of batch 4)
FRACTION = BUDGET / POOL  # the cell's key for study.run_seed
INDEX_SEED = 0  # the study seed whose cell seed scores and clusters the shared pool index
REF_STEPS = 12  # reference model: 12 LoRA steps of batch 4 = one pass over its 48 clean problems

DATA = ["data=gsm8k_bbh", "data.records.data_dir={data_dir}"]
MODEL = [
    "model=smollm2_135m",
    "peft=lora",  # r 8, alpha 16, PEFT's default target modules (q_proj, v_proj)
    "model.module.lr=1e-3",
    "model.module.scheduler=constant",
    "model.module.warmup_steps=0",
]
COMMON = [  # every run (index, base and fine-tuning)
    *DATA,
    *MODEL,
    "clustering=ifd_kmeans",  # the paper's arms: k-means (K=7) on IFD
    f"rounds={ROUNDS}",
    "validate_before=false",  # the base is evaluated once, by its own run
    f"trainer.check_val_every_n_epoch={ROUNDS}",  # validation only after the last round
    "trainer.enable_checkpointing=false",  # a checkpoint holds the whole 135M model: not needed here
]
QUIET = [
    "logger=none",
    "report.plots=false",
    "report.print_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.profiler={_target_:lightning.pytorch.profilers.SimpleProfiler,dirpath:${paths.output_dir},filename:profile}",
    "pool.cache_dir={cache}/pool",
]
REFERENCE_SETTINGS = ["pool.reference.source=split", f"pool.reference.max_steps={REF_STEPS}"]
INDEX = ["selection=lead", "selection.utility=reducible", *REFERENCE_SETTINGS]  # what the index is scored for

METHODS: dict[str, list[str]] = {
    "full": ["selection=full"],  # the whole pool, equal example-steps
    "random": ["selection=random"],
    "lead": ["selection=lead"],  # LeadConfig defaults: one EXP3 arm per round, top-IDU
    "lead_rho": [  # the candidate default: proportional allocation, no bandit tilt, RHO-LOSS reducible loss
        "selection=lead",
        "selection.allocation=proportional",
        "bandit=uniform",
        "selection.utility=reducible",
        *REFERENCE_SETTINGS,
    ],
}
"""Method name -> app overrides. Order = the table's order."""
REFERENCE = "random"
FAMILIES = ["gsm8k", "bbh"]

TINY = {  # --tiny: the same model on 8-example sets (not a result)
    "set": [
        "data.records.pool_size=8",
        "data.records.gsm8k_eval=4",
        "data.records.bbh_eval=4",
        "data.records.reference_size=4",
        "data.module.max_length=96",
        "clustering.fn.k=2",
        "pool.reference.max_steps=1",
    ],
    "pool": 8,
    "budget": 4,
    "rounds": 2,
    "per_round": 4,
}


# ----------------------------------------------------------------------------- running
def build_index(overrides: list[str], cache: Path) -> tuple[str, float]:
    """The app's offline stage once: returns the pool index file and the seconds it took (0 if cached)."""
    import lightning.pytorch as pl

    from lead_lightning.app import compose
    from lead_lightning.app.builders import build_inputs
    from lead_lightning.app.offline import build_pool

    done = cache / "index" / f"{study.key_of(overrides)}.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if Path(info["path"]).is_file():
            return str(info["path"]), float(info["seconds"])
    print("[smollm2] pool index: scoring the pool and training the reference model", flush=True)
    t0 = time.perf_counter()
    cfg = compose(overrides, cache / "index" / "run")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    _, dm, records, module = build_inputs(cfg)
    t1 = time.perf_counter()
    pool, _ = build_pool(cfg, module, dm, records)
    seconds = time.perf_counter() - t1
    # the cache file build_pool wrote or loaded: <pool.cache_dir>/<fingerprint>.parquet
    path = Path(str(cfg.pool.cache_dir)) / f"{(pool.provenance or {})['fingerprint']}.parquet"
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"path": str(path), "seconds": seconds, "overrides": overrides}, indent=1))
    print(f"[smollm2] pool index {path.name}: {seconds:.1f} s (load {t1 - t0:.1f} s)", flush=True)
    return str(path), seconds


def plan(
    seeds: Sequence[int], common: list[str], budget: int, per_round: int, methods: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """Every fine-tuning run: its method, seed and overrides (cell seed = study.run_seed(seed, FRACTION))."""
    runs = []
    for seed in seeds:
        for name, own in methods.items():
            ov = [*common, f"seed={study.run_seed(seed, FRACTION)}", f"selection.sample_rate={per_round}"]
            if study._has_budget([*ov, *own]):
                ov.append(f"selection.budget={budget}")
            runs.append({"method": name, "seed": seed, "overrides": study.dedupe([*ov, *own])})
    return runs


# ----------------------------------------------------------------------------- report
def _loss(r: dict[str, Any], family: str | None) -> float:
    key = "val/loss_macro" if family is None else f"val/loss/{family}"
    v = r.get("val_metrics", {}).get(key)
    return math.nan if v is None else float(v)


def _diff(by: dict[tuple[str, int], dict[str, Any]], m: str, seeds: Sequence[int], family: str | None) -> str:
    if m == REFERENCE or not all((REFERENCE, s) in by and (m, s) in by for s in seeds):
        return "-"
    d = [_loss(by[(m, s)], family) - _loss(by[(REFERENCE, s)], family) for s in seeds]
    dm, dh, _ = study.mean_ci(d)
    return f"{dm:+.4f} [{dm - dh:+.4f}, {dm + dh:+.4f}]" if math.isfinite(dh) else f"{dm:+.4f}"


def report(
    runs: list[dict[str, Any]],
    results: list[dict[str, Any]],
    base: dict[str, Any],
    index_s: float,
    out: Path,
    header: str,
) -> Path:
    """Write ``results.md``; returns its path."""
    by = {(run["method"], run["seed"]): r for run, r in zip(runs, results, strict=True)}
    methods = list(dict.fromkeys(run["method"] for run in runs))
    seeds = sorted({run["seed"] for run in runs})
    fmt = study._fmt
    b0 = base["val_curve"][0] if base.get("val_curve") else base.get("val_metrics", {})
    lines = [
        header,
        "",
        "## Held-out response loss (mean ± sd over seeds; lower is better)",
        "",
        "| method | GSM8K test | BBH | mean of the two | example-steps | unique | run s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| base (no fine-tuning) | {fmt(b0.get('val/loss/gsm8k', math.nan), 4)} |"
        f" {fmt(b0.get('val/loss/bbh', math.nan), 4)} | {fmt(b0.get('val/loss_macro', math.nan), 4)} | 0 | 0 |"
        f" {base.get('wall_s', math.nan):.0f} |",
    ]
    for m in methods:
        rs = [by[(m, s)] for s in seeds if (m, s) in by]
        cells = []
        for fam in [*FAMILIES, None]:
            mu, _, sd = study.mean_ci([_loss(r, fam) for r in rs])
            cells.append(f"{fmt(mu, 4)} ± {fmt(sd, 4)}")
        steps = [r["trained"].get("example_steps", math.nan) for r in rs]
        uniq = [r["trained"].get("unique", math.nan) for r in rs]
        wall = statistics.fmean(r["wall_s"] for r in rs)
        lines.append(
            f"| {m} | {' | '.join(cells)} | {'/'.join(str(int(s)) for s in steps)} |"
            f" {'/'.join(str(int(u)) for u in uniq)} | {wall:.0f} |"
        )
    lines += [
        "",
        f"## Paired difference vs `{REFERENCE}` (method - random, same cell seed; mean [95% t-interval, "
        f"{len(seeds) - 1} df]; negative = lower loss than random)",
        "",
        "| method | GSM8K test | BBH | mean of the two |",
        "|---|---:|---:|---:|",
    ]
    for m in methods:
        if m != REFERENCE:
            lines.append(f"| {m} | " + " | ".join(_diff(by, m, seeds, f) for f in [*FAMILIES, None]) + " |")
    lines += [
        "",
        "## Per run",
        "",
        "| method | seed | cell seed | GSM8K | BBH | mean | example-steps | unique | run s | stop reason |",
    ]
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for run, r in zip(runs, results, strict=True):
        seed_ov = next(o for o in run["overrides"] if o.startswith("seed="))
        lines.append(
            f"| {run['method']} | {run['seed']} | {seed_ov[5:]} | {fmt(_loss(r, 'gsm8k'), 4)} |"
            f" {fmt(_loss(r, 'bbh'), 4)} | {fmt(_loss(r, None), 4)} | {r['trained'].get('example_steps')} |"
            f" {r['trained'].get('unique')} | {r['wall_s']:.0f} | {r.get('stop_reason')} |"
        )
    lines += [
        "",
        f"Shared offline stage (pool index: iu0 + IFD scoring, k-means, reference model training and its"
        f" scoring pass; once for the whole study): {index_s:.0f} s.",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Build (or reuse) the pool index, the base evaluation and every run; write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (~3 min; not a result)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, help=f"subset of {list(METHODS)}")
    p.add_argument(
        "--cache", type=Path, default=None, help="default: <here>/cache (--tiny: <here>/cache/tiny)"
    )
    p.add_argument("--out", type=Path, default=None, help="default: <here> (--tiny: /tmp/smollm2_study_tiny)")
    p.add_argument(
        "--data-dir", default=os.environ.get("LEAD_DATA_DIR", str(REPO.parent / "shared" / "data"))
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core box)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cache = (args.cache or (HERE / "cache" / ("tiny" if args.tiny else ""))).resolve()
    out = args.out or (Path("/tmp/smollm2_study_tiny") if args.tiny else HERE)
    seeds = args.seeds or ([0] if args.tiny else SEEDS)
    names = args.methods or list(METHODS)
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise SystemExit(f"Unknown method(s) {unknown}; known: {list(METHODS)}.")
    if REFERENCE not in names:
        names = [REFERENCE, *names]
    methods = {n: METHODS[n] for n in METHODS if n in names}
    rounds = TINY["rounds"] if args.tiny else ROUNDS
    budget = TINY["budget"] if args.tiny else BUDGET
    per_round = TINY["per_round"] if args.tiny else PER_ROUND
    extra = list(TINY["set"]) if args.tiny else []  # type: ignore[call-overload]
    values = {"data_dir": args.data_dir, "cache": cache}
    common = study._fill([*COMMON, *QUIET], values) + [
        f"rounds={rounds}",
        f"trainer.check_val_every_n_epoch={rounds}",
        *extra,
    ]

    index_ov = study.dedupe([*common, *INDEX, f"seed={study.run_seed(INDEX_SEED, FRACTION)}", *extra])
    index, index_s = build_index(index_ov, cache)
    common = study.dedupe([*common, f"pool.index={index}"])

    # the base model's held-out losses: one validation before a one-step round, none after it
    base_ov = study.dedupe(
        [
            *common,
            "selection=full",
            "selection.sample_rate=4",
            "rounds=1",
            "validate_before=true",
            "trainer.check_val_every_n_epoch=2",
            f"seed={study.run_seed(INDEX_SEED, FRACTION)}",
        ]
    )
    base = study.run_cached(base_ov, cache / "base", "base")

    runs = plan(seeds, common, budget, per_round, methods)
    print(f"[smollm2] {len(runs)} runs ({len(methods)} methods x {len(seeds)} seeds)", flush=True)
    results = []
    for i, run in enumerate(runs):
        label = f"{run['method']} s={run['seed']} ({i + 1}/{len(runs)})"
        results.append(study.run_cached(run["overrides"], cache / "runs", label))
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    header = (
        "# SmolLM2-135M confirmation study: results (generated by `benchmarks/smollm2_study/run.py`;"
        " protocol: PROTOCOL.md)\n\n"
        f"Pool {TINY['pool'] if args.tiny else POOL} GSM8K training problems; budget {budget} unique,"
        f" {per_round} per round x {rounds} rounds; seeds {seeds}. Loss = token-mean response loss on the"
        " held-out set per family (`val/loss/gsm8k`, `val/loss/bbh`); `mean of the two` = `val/loss_macro`."
        " `example-steps` / `unique` list the runs in seed order; `run s` = mean wall time of a run (model"
        " load, training, final validation).\n\n"
        f"Command: `python benchmarks/smollm2_study/run.py {cmd}`. Pool index: `{Path(index).name}`."
    )
    path = report(runs, results, base, index_s, out, header)
    print(f"[smollm2] wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return {"results": results, "runs": runs, "base": base, "results_md": path, "index": index}


if __name__ == "__main__":
    main()
