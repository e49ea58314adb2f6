"""`SweepReport`: a ``lead-train -m`` sweep ends with a comparison of its jobs, written and printed.

A Hydra callback (listed under ``hydra.callbacks`` in ``conf/train.yaml``). Each job writes
``job.json`` into its own directory when it ends (its overrides, final val loss, wall time); when the
sweep ends, the jobs' ``job.json`` and ``history.json`` are read back and the sweep directory gets

- ``comparison.md`` / ``comparison.csv``: one row per job: overrides -> final val loss, unique
  examples trained, example-steps, rounds, wall time (sorted by val loss; the table is printed too);
- ``eval_curves.png``: every job's held-out loss after each round.

So runs can be compared without W&B. Reading the files back (rather than keeping rows in memory)
works with any Hydra launcher.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = ["SweepReport", "collect_jobs", "format_comparison"]

log = logging.getLogger("lead_lightning.sweep")
COLUMNS = ["job", "overrides", "val_loss", "unique_trained", "example_steps", "rounds", "wall_s"]


class SweepReport(Callback):
    """Hydra callback: per-job ``job.json``; at the end of a multirun, the comparison of all jobs."""

    def __init__(self, plot: bool = True) -> None:
        self.plot = plot
        self._t0 = 0.0

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from lead_lightning.app.runtime import is_relaunched_rank

        if is_relaunched_rank():
            return
        value = getattr(job_return, "_return_value", None)
        val = float(value) if isinstance(value, (int, float)) else math.nan
        out = Path(
            str(
                OmegaConf.select(config, "hydra.runtime.output_dir") or getattr(job_return, "working_dir", "")
            )
        )
        record = {
            "overrides": list(getattr(job_return, "overrides", None) or []),
            "val_loss": None if math.isnan(val) else val,
            "wall_s": time.perf_counter() - self._t0,
            "status": str(getattr(getattr(job_return, "status", None), "name", "UNKNOWN")),
        }
        if out.is_dir():
            (out / "job.json").write_text(json.dumps(record, indent=1))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from lead_lightning.app.runtime import is_relaunched_rank

        if is_relaunched_rank():
            return
        sweep = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        rows, curves = collect_jobs(sweep)
        if not rows:
            return
        table = format_comparison(rows)
        (sweep / "comparison.md").write_text(f"# Sweep comparison: {sweep}\n\n{table}\n")
        with (sweep / "comparison.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        if self.plot and any(curves.values()):
            _plot_curves(curves, sweep / "eval_curves.png")
        log.info(f"\nSweep comparison ({len(rows)} jobs; {sweep / 'comparison.md'}):\n{table}")
        print(f"\nSweep comparison ({len(rows)} jobs; {sweep / 'comparison.md'}):\n{table}", flush=True)


def collect_jobs(sweep: str | Path) -> tuple[list[dict[str, Any]], dict[str, list[tuple[int, float]]]]:
    """Rows (one per job directory holding ``job.json``) and eval curves ``label -> [(rounds, loss)]``.

    Example:
        >>> collect_jobs("/nonexistent")
        ([], {})
    """
    sweep = Path(sweep)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[int, float]]] = {}
    if not sweep.is_dir():
        return rows, curves
    jobs = sorted(
        (p for p in sweep.iterdir() if (p / "job.json").is_file()), key=lambda p: (len(p.name), p.name)
    )
    for job in jobs:
        rec = json.loads((job / "job.json").read_text())
        label = ",".join(rec.get("overrides", [])) or job.name
        history: list[dict[str, Any]] = []
        evals: list[dict[str, Any]] = []
        if (job / "history.json").is_file():
            data = json.loads((job / "history.json").read_text())
            history, evals = data.get("history", []), data.get("evals", [])
        val = rec.get("val_loss")
        rows.append(
            {
                "job": job.name,
                "overrides": label,
                "val_loss": math.nan if val is None else float(val),
                "unique_trained": history[-1].get("unique_seen") if history else None,
                "example_steps": sum(
                    int(h.get("n_selected", 0)) - int(h.get("n_missed", 0)) for h in history
                ),
                "rounds": len(history),
                "wall_s": round(float(rec.get("wall_s", math.nan)), 1),
            }
        )
        curves[label] = [
            (int(e["rounds_trained"]), float(e["val_loss"])) for e in evals if e.get("val_loss") is not None
        ]
    rows.sort(key=lambda r: (math.isnan(r["val_loss"]), r["val_loss"]))
    return rows, curves


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows (best val loss first).

    Example:
        >>> print(format_comparison([{"job": "0", "overrides": "bandit=uniform", "val_loss": 1.5,
        ...     "unique_trained": 10, "example_steps": 40, "rounds": 4, "wall_s": 2.0}]))
        | job | overrides | val loss | unique trained | example-steps | rounds | wall s |
        |---|---|---|---|---|---|---|
        | 0 | bandit=uniform | 1.5000 | 10 | 40 | 4 | 2.0 |
    """
    lines = [
        "| job | overrides | val loss | unique trained | example-steps | rounds | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val = "n/a" if math.isnan(r["val_loss"]) else f"{r['val_loss']:.4f}"
        lines.append(
            f"| {r['job']} | {r['overrides'] or '(defaults)'} | {val} | {r['unique_trained']} |"
            f" {r['example_steps']} | {r['rounds']} | {r['wall_s']} |"
        )
    return "\n".join(lines)


def _plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, pts in curves.items():
        if pts:
            xs, ys = zip(*sorted(pts), strict=True)
            ax.plot(xs, ys, marker="o", ms=3, label=label[:60])
    ax.set_xlabel("rounds trained")
    ax.set_ylabel("held-out loss")
    ax.set_title("Eval loss per job")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
