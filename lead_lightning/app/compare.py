"""``compare_with``: a single ``lead-train`` run of LEAD also trains a baseline on the same data and budget.

So the main command answers the question a user has: does LEAD beat random here? The baseline runs
after LEAD in ``<output_dir>/baseline_<name>/`` with the same model initialisation, data, pool index
(read from the score cache: nothing is scored twice), budget, round size, rounds and seed; the two
final validation losses are printed side by side with the example-steps each trained, and which won.
Skipped in ``-m`` sweeps (compare jobs there), multi-process runs, and runs that are not LEAD.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = ["BASELINE_TARGETS", "baseline_config", "format_comparison", "should_compare"]

log = logging.getLogger("lead_lightning.train")

BASELINE_TARGETS = {
    "random": "lead_lightning.config.RandomConfig",
    "full": "lead_lightning.config.FullConfig",
}


def should_compare(cfg: DictConfig) -> bool:
    """Whether this run is a single LEAD run that should also train ``cfg.compare_with``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not cfg.get("compare_with"):
        return False
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return False
    devices, strategy = cfg.trainer.get("devices", 1), str(cfg.trainer.get("strategy", "auto"))
    if str(devices) not in ("1", "None") or "ddp" in strategy or "fsdp" in strategy:
        log.info("compare_with is skipped for multi-process runs (run the baseline with selection=...).")
        return False
    return str(cfg.selection.get("_target_", "")).endswith(".LeadConfig")


def baseline_config(cfg: DictConfig, lead: Any, out_dir: Path) -> DictConfig:
    """``cfg`` with its selection replaced by the baseline ``cfg.compare_with`` at LEAD's budget and round size.

    ``lead`` is the instantiated :class:`~lead_lightning.LeadConfig` of the LEAD run.
    """
    name = str(cfg.compare_with)
    if name not in BASELINE_TARGETS:
        raise ValueError(f"`compare_with` must be one of {sorted(BASELINE_TARGETS)} or null, got {name!r}.")
    node: dict[str, Any] = {
        "_target_": BASELINE_TARGETS[name],
        "sample_rate": lead.sample_rate,
        "arms_per_round": lead.arms_per_round,
        "max_rounds": lead.max_rounds,
        "seed": lead.seed,
    }
    if name != "full":
        node["budget"] = lead.budget
    if lead.allocation == "proportional" and not isinstance(lead.sample_rate, int):
        node["arms_per_round"] = lead.arms_per_round  # LEAD trains round_size() per round: the same count
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.selection = OmegaConf.create(node)
        out.paths.output_dir = str(out_dir)
        out.compare_with = None
        out.run_name = f"{cfg.run_name}+{name}"
    return out


def _steps(history: list[dict[str, Any]]) -> int:
    return sum(int(h.get("n_selected", 0)) - int(h.get("n_missed", 0)) for h in history)


def format_comparison(lead: dict[str, Any], base: dict[str, Any], name: str) -> str:
    """Both final val losses, their example-steps and unique examples, and which won.

    Example:
        >>> h = [{"n_selected": 5, "n_missed": 0, "unique_seen": 5}]
        >>> print(format_comparison({"val_loss": 2.0, "history": h}, {"val_loss": 1.5, "history": h}, "random"))
        LEAD vs random on the same data, budget, round size, rounds and seed (lower val loss is better):
          lead    final val loss 2.0000  (example-steps 5, unique examples 5)
          random  final val loss 1.5000  (example-steps 5, unique examples 5)
          random won by 0.5000. One seed only: benchmarks/study/ gives paired confidence intervals.
    """
    rows = []
    for label, r in (("lead", lead), (name, base)):
        hist = r.get("history") or []
        unique = hist[-1].get("unique_seen") if hist else 0
        rows.append(
            f"  {label:<7} final val loss {r['val_loss']:.4f}  (example-steps {_steps(hist)}, unique examples {unique})"
        )
    a, b = float(lead["val_loss"]), float(base["val_loss"])
    if math.isnan(a) or math.isnan(b):
        verdict = "  no verdict: a run has no validation loss (no held-out data?)."
    elif a < b:
        verdict = f"  LEAD won by {b - a:.4f}."
    elif b < a:
        verdict = f"  {name} won by {a - b:.4f}."
    else:
        verdict = "  a tie."
    verdict += " One seed only: benchmarks/study/ gives paired confidence intervals."
    head = f"LEAD vs {name} on the same data, budget, round size, rounds and seed (lower val loss is better):"
    return "\n".join([head, *rows, verdict])
