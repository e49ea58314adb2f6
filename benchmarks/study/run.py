"""The CPU selection study, run entirely through the app (pre-registered in PROTOCOL.md).

Every run is ``train(compose(overrides, output_dir))``, the same call ``lead-train`` makes:

1. **Base model**: a ``selection=full`` run on the testbed's pre-training split with
   ``save_model=true`` (cached under ``<cache>/base/<key>/``, keyed by its overrides).
2. **Runs**: for every budget, seed and method, the study's common overrides + the cell's
   (``seed``, ``selection.budget``, ``selection.sample_rate``) + the method's overrides, starting
   from the base (``model=hf_local model.path=<base>``). Each run's result is cached as
   ``<cache>/runs/<key>/result.json``, keyed by its overrides: a rerun trains only what is missing.
3. **Report**: ``results.md`` (per budget: mean ± sd over seeds, paired difference against
   ``random`` with a 95% t-interval) and ``plots/``.

A method is a list of app overrides (:data:`METHODS`); a new LEAD option is one more entry, e.g.
``"lead_proportional": ["selection=lead", "selection.allocation=proportional"]``. ``{per_round}``,
``{budget}``, ``{full_pass}`` (pool size / rounds) and ``{pass_seed}`` (a seed that depends on the
study seed only) in an override are filled in per cell. The cell's ``selection.budget`` is added only
to methods whose selection config has one, and a method's own overrides win over the cell's.

    python benchmarks/study/run.py                         # the pre-registered study (PROTOCOL.md)
    python benchmarks/study/run.py --methods random full   # a subset (cached runs are reused)
    python benchmarks/study/run.py --tiny --out /tmp/s     # seconds: the CI smoke size
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# ----------------------------------------------------------------------------- the pre-registered design
SEEDS = [0, 1, 2, 3, 4]
BUDGETS = [0.025, 0.05, 0.1]  # unique examples, as a share of the pool
ROUNDS = 10
STEPS_PER_UNIQUE = 2  # example-steps per run = STEPS_PER_UNIQUE x the budget: per_round = ceil(2 B / rounds)

TESTBED = ["data=testbed", "data.records.data_dir={data_dir}"]
BASE = [  # the base model: tiny Llama pre-trained on the clean, disjoint pre-training split
    *TESTBED,
    "data.records.split=pretrain",
    "model=tiny_llama",
    "model.tokenizer.vocab_size=300",  # bytes + a few merges: letters stay single tokens (copying is learnable)
    "model.net.hidden_size=128",
    "model.net.num_layers=4",
    "model.net.num_heads=4",
    "model.module.lr=1e-3",
    "model.module.warmup_steps=100",
    "model.module.scheduler=constant",  # not annealed: fine-tuning at a lower rate can still improve it
    "data.module.batch_size=32",
    "selection=full",
    "selection.sample_rate=4000",  # one pass over the pre-training split per round
    "rounds=4",
    "seed=0",
    "save_model=true",
]
COMMON = [  # every fine-tuning run
    *TESTBED,
    "model=hf_local",
    "model.path={base}",
    "model.module.lr=1e-4",
    "model.module.scheduler=constant",
    "model.module.warmup_steps=5",
    "clustering=ifd_kmeans",  # the paper's arms: k-means (K=7) on IFD; groups = task families
    f"rounds={ROUNDS}",
]
QUIET = [  # no effect on the numbers
    "logger=none",
    "report.plots=false",
    "report.print_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.profiler={_target_:lightning.pytorch.profilers.SimpleProfiler,dirpath:${paths.output_dir},filename:profile}",
    "pool.cache_dir={cache}/pool",
]

RHO_REFERENCE = [  # Amendment 2: the reference model (125 steps on the clean reference split) and the utility
    "selection.utility=reducible",
    "pool.reference.source=split",
    "pool.reference.max_steps=125",
]
RHO = ["selection=lead", "selection.allocation=proportional", "bandit=uniform", *RHO_REFERENCE]

METHODS: dict[str, list[str]] = {
    "full": ["selection=full"],  # the whole pool, equal example-steps
    # one pass over the pool; its seed does not depend on the budget, so one run per seed serves all budgets
    "full_pass": ["selection=full", "selection.sample_rate={full_pass}", "seed={pass_seed}"],
    "random": ["selection=random"],
    "static_ifd": ["selection=static_ifd"],
    "static_loss": ["selection=static_loss"],
    "iterative_reinference": ["selection=iterative_reinference"],
    "lead": ["selection=lead"],  # LeadConfig's defaults: the paper's mechanics
    "lead_uniform": ["selection=lead", "bandit=uniform"],  # ablation: no MAB
    "lead_random_within": ["selection=random_within"],  # ablation: no IDU
    # Amendment 1 (PROTOCOL.md): LEAD's method options, registered before any of them ran here
    "lead_prop": ["selection=lead", "selection.allocation=proportional", "bandit=uniform"],
    "lead_prop_random_within": [
        "selection=random_within",
        "selection.allocation=proportional",
        "bandit=uniform",
    ],
    "lead_prop_learn": [
        "selection=lead",
        "selection.allocation=proportional",
        "bandit=uniform",
        "selection.learnability=true",
    ],
    "lead_prop_hedge": [
        "selection=lead",
        "selection.allocation=proportional",
        "bandit=hedge",
        "selection.bandit_eta=horizon",
        "selection.reward=first_visit_gain",
        "selection.reward_norm=round",
    ],
    "lead_options": [
        "selection=lead",
        "selection.allocation=proportional",
        "bandit=hedge",
        "selection.bandit_eta=horizon",
        "selection.reward=first_visit_gain",
        "selection.reward_norm=round",
        "selection.learnability=true",
    ],
    # Amendment 2 (PROTOCOL.md): reducible loss (RHO-LOSS), registered before any of them ran here
    "lead_rho": [*RHO],
    "lead_rho_exp3": [*RHO, "bandit=exp3"],
    "lead_rho_hedge": [
        *RHO,
        "bandit=hedge",
        "selection.bandit_eta=horizon",
        "selection.reward=first_visit_gain",
        "selection.reward_norm=round",
    ],
    "lead_rho_single": ["selection=lead", *RHO_REFERENCE],
    "lead_rho_crossfit": [*RHO, "pool.reference.source=crossfit"],
    # Amendment 3: the share of the loss the reference removes, (IDU - ref_loss) / IDU
    "lead_rho_ratio": [*RHO, "selection.utility=reducible_ratio"],
    "lead_rho_ratio_single": ["selection=lead", *RHO_REFERENCE, "selection.utility=reducible_ratio"],
    "lead_rho_ratio_hedge": [
        *RHO,
        "bandit=hedge",
        "selection.bandit_eta=horizon",
        "selection.reward=first_visit_gain",
        "selection.reward_norm=round",
        "selection.utility=reducible_ratio",
    ],
    # context: the reference model's own data and steps (500 clean examples, 1,000 example-steps)
    "reference_alone": ["data.records.split=reference", "selection=full", "selection.sample_rate=100"],
}
"""Method name -> app overrides. Order = the table's order."""
REFERENCE = "random"

TINY = {  # --tiny: a smoke test in seconds (not a result)
    "base": [
        "data.records.pool_size=120",
        "data.records.eval_per_family=6",
        "data.records.pretrain_size=160",
        "model.tokenizer.vocab_size=300",
        "model.net.hidden_size=32",
        "model.net.num_layers=1",
        "selection.sample_rate=160",
        "rounds=1",
    ],
    "run": [
        "data.records.pool_size=120",
        "data.records.eval_per_family=6",
        "data.records.pretrain_size=160",
        "clustering.fn.k=3",
    ],
    "rounds": 2,
}

T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145]
"""Student t 0.975 quantiles for 1..14 degrees of freedom (1.96 beyond)."""


# ----------------------------------------------------------------------------- running
def run_seed(seed: int, budget: float) -> int:
    """The run seed of a (seed, budget) cell: shared by every method of the cell (paired), and
    decorrelated across budgets (bandit draws and shuffles differ between budgets).

    Example:
        >>> run_seed(0, 0.05) == run_seed(0, 0.05), run_seed(0, 0.05) == run_seed(0, 0.1)
        (True, False)
    """
    return int(hashlib.sha256(f"{seed}:{budget!r}".encode()).hexdigest()[:8], 16) % (2**31 - 1)


def key_of(overrides: Sequence[str]) -> str:
    """The cache key of a run: a digest of its overrides (in order)."""
    return hashlib.sha256(json.dumps(list(overrides)).encode()).hexdigest()[:16]


def _fill(overrides: Sequence[str], values: dict[str, Any]) -> list[str]:
    out = []
    for o in overrides:
        for k, v in values.items():
            o = o.replace("{" + k + "}", str(v))
        out.append(o)
    return out


def dedupe(overrides: Sequence[str]) -> list[str]:
    """The overrides with one entry per key, the last one given (Hydra's rule: the last wins).

    Example:
        >>> dedupe(["rounds=3", "seed=1", "rounds=5"])
        ['seed=1', 'rounds=5']
    """
    last = {o.split("=", 1)[0].lstrip("+~"): i for i, o in enumerate(overrides)}
    return [o for i, o in enumerate(overrides) if last[o.split("=", 1)[0].lstrip("+~")] == i]


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item"):
        return x.item()
    return x


def run_cached(overrides: list[str], cache: Path, label: str) -> dict[str, Any]:
    """``train(compose(overrides))`` once; the result is kept in ``<cache>/<key>/result.json``."""
    from lead_lightning.app import compose
    from lead_lightning.train import train

    run_dir = cache / key_of(overrides)
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())  # type: ignore[no-any-return]
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted attempt: start it again
    run_dir.mkdir(parents=True)
    print(f"[study] {label}: training ({run_dir.name})", flush=True)
    r = train(compose(overrides, run_dir / "run"))
    keep = (
        "val_loss",
        "val_metrics",
        "val_curve",
        "trained",
        "selection_s",
        "pool_s",
        "wall_s",
        "stop_reason",
        "method",
        "cluster_names",
        "history",
        "model_dir",
    )
    out = _json_safe({"label": label, "overrides": overrides, **{k: r[k] for k in keep if k in r}})
    result_file.write_text(json.dumps(out, indent=1))
    print(
        f"[study] {label}: macro {out['val_metrics'].get('val/loss_macro')} in {out['wall_s']:.1f} s",
        flush=True,
    )
    return out  # type: ignore[no-any-return]


def _has_budget(overrides: list[str]) -> bool:
    from lead_lightning.app import compose

    return "budget" in compose(overrides, "/tmp/unused").selection


def plan(
    methods: dict[str, list[str]],
    seeds: Sequence[int],
    budgets: Sequence[float],
    base_dir: str,
    values: dict[str, Any],
    pool_size: int,
    rounds: int,
    extra: Sequence[str],
) -> list[dict[str, Any]]:
    """Every run of the study: its method, budget, seed and overrides."""
    runs = []
    common = dedupe(_fill([*COMMON, *QUIET], {**values, "base": base_dir}) + [f"rounds={rounds}", *extra])
    for budget in budgets:
        count = math.ceil(budget * pool_size)
        per_round = math.ceil(STEPS_PER_UNIQUE * count / rounds)
        cell = {"budget": count, "per_round": per_round, "full_pass": math.ceil(pool_size / rounds)}
        for seed in seeds:
            for name, method in methods.items():
                own = _fill(method, {**cell, "pass_seed": run_seed(seed, 1.0)})
                ov = [*common, f"seed={run_seed(seed, budget)}", f"selection.sample_rate={per_round}"]
                if _has_budget([*ov, *own]):
                    ov.append(f"selection.budget={count}")
                ov = dedupe([*ov, *own])  # the method's own settings win
                runs.append({"method": name, "fraction": budget, "seed": seed, "overrides": ov, **cell})
    return runs


# ----------------------------------------------------------------------------- statistics and report
def mean_ci(xs: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the 95% t-interval half-width (NaN for fewer than 2 values) and the sd.

    Example:
        >>> m, h, sd = mean_ci([1.0, 2.0, 3.0])
        >>> m, round(h, 3), sd
        (2.0, 2.484, 1.0)
    """
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan, math.nan
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    sd = statistics.stdev(xs)
    t = T975[len(xs) - 2] if len(xs) - 1 <= len(T975) else 1.96
    return m, t * sd / math.sqrt(len(xs)), sd


def _macro(r: dict[str, Any]) -> float:
    return float(r["val_metrics"].get("val/loss_macro", math.nan))


def _pool_passes(r: dict[str, Any], pool_size: int) -> int:
    offline = 2 * pool_size if r["method"] in ("lead", "static_ifd", "static_loss") else 0
    sources = [o.split("=", 1)[1] for o in r.get("overrides", []) if o.startswith("pool.reference.source=")]
    if sources and sources[-1] != "none":  # the reference model's scoring pass (Amendment 2)
        offline += pool_size
    return offline + sum(int(h.get("forward_passes", 0)) for h in r["history"])


def _fmt(x: float, nd: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def report(
    runs: list[dict[str, Any]],
    results: list[dict[str, Any]],
    out: Path,
    pool_size: int,
    rounds: int,
    header: str,
) -> Path:
    """Write ``results.md`` and ``plots/``; returns the results file."""
    lines = [header, ""]
    by: dict[tuple[str, float, int], dict[str, Any]] = {}
    for run, r in zip(runs, results, strict=True):
        by[(run["method"], run["fraction"], run["seed"])] = r
    methods = list(dict.fromkeys(run["method"] for run in runs))
    budgets = sorted({run["fraction"] for run in runs})
    seeds = sorted({run["seed"] for run in runs})
    families = sorted(k.split("/", 2)[2] for k in results[0]["val_metrics"] if k.startswith("val/loss/"))
    for budget in budgets:
        cell = next(run for run in runs if run["fraction"] == budget)
        lines += [
            f"## Budget {budget:g} of the pool: {cell['budget']} unique examples, {cell['per_round']} per round"
            f" x {rounds} rounds (seeds {seeds})",
            "",
            f"| method | macro loss | Δ vs {REFERENCE} [95% CI] | "
            + " | ".join(families)
            + " | noisy share | dup share | unique | example-steps | run s | selection s | pool fwd |",
            "|---|---:|---:|" + "---:|" * len(families) + "---:|---:|---:|---:|---:|---:|---:|",
        ]
        base_curves = [by[k]["val_curve"][0] for k in by if k[1] == budget and by[k]["val_curve"]]
        if base_curves:
            b0 = base_curves[0]
            fam = " | ".join(_fmt(b0.get(f"val/loss/{f}", math.nan)) for f in families)
            lines.append(f"| base | {_fmt(b0['val/loss_macro'])} | | {fam} | | | | | | | |")
        for m in methods:
            rs = [by[(m, budget, s)] for s in seeds if (m, budget, s) in by]
            if not rs:
                continue
            mac = mean_ci([_macro(r) for r in rs])
            diff = "-"
            if m != REFERENCE and all((REFERENCE, budget, s) in by for s in seeds):
                d = [_macro(by[(m, budget, s)]) - _macro(by[(REFERENCE, budget, s)]) for s in seeds]
                dm, dh, _ = mean_ci(d)
                diff = f"{dm:+.3f} [{dm - dh:+.3f}, {dm + dh:+.3f}]" if math.isfinite(dh) else f"{dm:+.3f}"
            fam = " | ".join(
                _fmt(statistics.fmean(r["val_metrics"].get(f"val/loss/{f}", math.nan) for r in rs))
                for f in families
            )
            tr = [r["trained"] for r in rs]

            def avg(key: str, tr: list[dict[str, Any]] = tr) -> float:
                vals = [t.get(key) for t in tr if t.get(key) is not None]
                return statistics.fmean(vals) if vals else math.nan

            run_s = statistics.fmean(r["wall_s"] - r.get("pool_s", 0.0) for r in rs)
            sel = [r["selection_s"] for r in rs if r.get("selection_s") is not None]
            lines.append(
                f"| {m} | {_fmt(mac[0])} ± {_fmt(mac[2])} | {diff} | {fam} | {_fmt(avg('share_noisy'))} |"
                f" {_fmt(avg('share_duplicate'))} | {avg('unique'):.0f} | {avg('example_steps'):.0f} |"
                f" {run_s:.1f} | {_fmt(statistics.fmean(sel) if sel else math.nan, 2)} |"
                f" {statistics.fmean(_pool_passes(r, pool_size) for r in rs):.0f} |"
            )
        scored = [r.get("pool_s", 0.0) for k, r in by.items() if k[1] == budget]
        lines += [
            "",
            f"Offline stage (score + cluster the pool, cached per cell): up to {max(scored):.1f} s per cell;"
            " `run s` excludes it.",
            "",
        ]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    plots(runs, results, out / "plots", methods, budgets, seeds)
    return path


def plots(
    runs: list[dict[str, Any]],
    results: list[dict[str, Any]],
    out: Path,
    methods: list[str],
    budgets: list[float],
    seeds: list[int],
) -> list[Path]:
    """``macro_loss_curves.png`` (mean over seeds, per budget) and ``diff_vs_random.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    by = {(run["method"], run["fraction"], run["seed"]): r for run, r in zip(runs, results, strict=True)}
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        for m in methods:
            curves = [by[(m, budget, s)]["val_curve"] for s in seeds if (m, budget, s) in by]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs = [c["rounds_trained"] for c in curves[0][:n]]
            ys = [statistics.fmean(c[i]["val/loss_macro"] for c in curves) for i in range(n)]
            ax.plot(xs, ys, marker=".", label=m)
        ax.set(title=f"budget {budget:g}", xlabel="rounds trained", ylabel="held-out macro loss")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "macro_loss_curves.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    others = [m for m in methods if m != REFERENCE]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(others)), 4))
    width = 0.8 / max(1, len(budgets))
    for j, budget in enumerate(budgets):
        ms, hs = [], []
        for m in others:
            d = [
                _macro(by[(m, budget, s)]) - _macro(by[(REFERENCE, budget, s)])
                for s in seeds
                if (m, budget, s) in by and (REFERENCE, budget, s) in by
            ]
            dm, dh, _ = mean_ci(d)
            ms.append(dm)
            hs.append(0.0 if not math.isfinite(dh) else dh)
        xs = [i + j * width for i in range(len(others))]
        ax.bar(xs, ms, width, yerr=hs, capsize=3, label=f"budget {budget:g}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks([i + width * (len(budgets) - 1) / 2 for i in range(len(others))], others, rotation=30)
    ax.set(
        ylabel=f"macro loss - {REFERENCE} (95% CI)",
        title=f"paired difference vs {REFERENCE} (lower is better)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "diff_vs_random.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or reuse) the base and every run, then write the report. Returns paths and results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds; not a result)")
    p.add_argument(
        "--versus",
        default="random",
        help="the method every paired difference is taken against (default random; e.g. an ablation table)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--budgets", type=float, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, help=f"subset of {list(METHODS)}")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every fine-tuning run")
    p.add_argument("--base-set", nargs="*", default=[], help="extra overrides for the base run")
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument(
        "--data-dir", default=os.environ.get("LEAD_DATA_DIR", str(REPO.parent / "shared" / "data"))
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)"
    )
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    seeds = args.seeds or ([0] if args.tiny else SEEDS)
    budgets = args.budgets or ([0.1] if args.tiny else BUDGETS)
    names = args.methods or (["random", "lead", "iterative_reinference"] if args.tiny else list(METHODS))
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise SystemExit(f"Unknown method(s) {unknown}; known: {list(METHODS)}.")
    global REFERENCE
    REFERENCE = args.versus
    if REFERENCE not in METHODS:
        raise SystemExit(f"Unknown --versus {REFERENCE!r}; known: {list(METHODS)}.")
    if REFERENCE not in names:
        names = [REFERENCE, *names]  # every difference is against it
    methods = {n: METHODS[n] for n in METHODS if n in names}
    cache = args.cache.resolve()
    values = {"data_dir": args.data_dir, "cache": cache}
    rounds = TINY["rounds"] if args.tiny else ROUNDS

    base_overrides = dedupe(
        _fill([*BASE, *QUIET], values) + (TINY["base"] if args.tiny else []) + args.base_set
    )
    base = run_cached(base_overrides, cache / "base", "base")
    base_dir = base["model_dir"]
    from hydra.utils import instantiate

    from lead_lightning.app import compose

    extra = (TINY["run"] if args.tiny else []) + args.set
    probe = compose(_fill([*COMMON, *QUIET], {**values, "base": base_dir}) + extra, "/tmp/unused")
    split = instantiate(probe.data.records)
    pool_size = len(split.train)
    runs = plan(methods, seeds, budgets, base_dir, values, pool_size, rounds, extra)
    print(
        f"[study] {len(runs)} runs ({len(methods)} methods x {len(budgets)} budgets x {len(seeds)} seeds)",
        flush=True,
    )
    results = []
    for i, run in enumerate(runs):
        label = f"{run['method']} b={run['fraction']:g} s={run['seed']} ({i + 1}/{len(runs)})"
        results.append(run_cached(run["overrides"], cache / "runs", label))
    header = (
        "# Study results (generated by `benchmarks/study/run.py`; protocol: PROTOCOL.md)\n\n"
        f"Pool {pool_size} examples; base: macro held-out loss before fine-tuning (same for every run);"
        " `macro loss` = mean over seeds ± sd of the final held-out clean loss, macro-averaged over families;"
        f" `Δ vs {REFERENCE}` = mean paired difference (same cell seed) with its 95% t-interval (negative ="
        f" better than {REFERENCE}); shares are of example-steps; `run s` = wall time of the run without the offline stage;"
        " `selection s` = time in the selection callback's hooks (SimpleProfiler); `pool fwd` = forward"
        " passes over the pool for selection (offline scoring 2N for LEAD and static methods, rescoring for"
        " iterative re-inference).\n\n"
        f"Command: `python benchmarks/study/run.py {' '.join(argv if argv is not None else sys.argv[1:])}`."
        f" Base run: {Path(base_dir).parent.parent.name}."
    )
    path = report(runs, results, args.out, pool_size, rounds, header)
    print(f"[study] wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return {
        "results": results,
        "runs": runs,
        "results_md": path,
        "base": base,
        "plots": sorted((args.out / "plots").glob("*.png")),
    }


if __name__ == "__main__":
    main()
