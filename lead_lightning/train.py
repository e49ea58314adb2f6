"""`lead-train`: the Hydra application (configs in the package's ``conf/``).

Composes the config, then: records -> tokenizer -> model (+LoRA) -> offline scoring and clustering
(the pool index) -> the selection callback (LEAD, or a baseline) -> ``Trainer.fit`` with validation
on the held-out set after every round. Prints the per-round table and the output directory, and
returns the final validation loss (the value a Hydra sweeper optimises).

Run ``lead-train`` (the embedded default: tiny model, generated pool, CPU, a few minutes),
``lead-train --help`` for the groups, ``lead-train -m bandit=exp3,uniform selection.sample_rate=0.05,0.1``
for a sweep. In Python: compose a config (``hydra.compose`` with ``return_hydra_config=True``) and
call :func:`train`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Only light imports here: `lead-train --help` and a config error must not import torch or lightning.
from lead_lightning.app.runtime import (
    check_complete,
    check_run_dir,
    echo,
    is_relaunched_rank,
    job_overrides,
    make_loggers,
    resumes,
    run_name,
)
from lead_lightning.app.schema import CONF_DIR, register_configs

__all__ = ["main", "train"]

log = logging.getLogger("lead_lightning.train")  # not __name__: `python -m` makes that "__main__"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one composed config; returns ``val_loss``, ``history``, ``output_dir``, ``wall_s`` and more.

    Also ``val_metrics`` (final ``val/...`` values, per held-out group with ``report.val_groups``),
    ``val_curve``, ``trained`` (example-steps, unique examples, shares of flagged examples),
    ``selection_s`` (with ``trainer.profiler=simple``), ``pool_s`` (the offline stage) and, with
    ``save_model``, ``model_dir``.
    """
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from lead_lightning.app.builders import build_inputs, build_selection
    from lead_lightning.app.offline import build_pool
    from lead_lightning.app.resume import resolve_resume, run_callbacks
    from lead_lightning.app.runtime import ddp_job_of_a_sweep, finish_loggers
    from lead_lightning.monitors import RunMonitors
    from lead_lightning.report import LeadReportCallback

    t0 = time.perf_counter()
    check_complete(cfg)
    selection_config = instantiate(cfg.selection)  # validated here, before any data or model work
    cfg.run_name = run_name(cfg)
    out_dir = Path(cfg.paths.output_dir)
    if not is_relaunched_rank():  # ranks > 0 write into rank 0's directory: the same run
        check_run_dir(out_dir, resuming=resumes(cfg))
    ckpt_path = resolve_resume(cfg.resume, out_dir)  # resume=auto | <file>: found before any work
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    split, dm, records, module = build_inputs(cfg)

    t_pool = time.perf_counter()
    pool, names = build_pool(cfg, module, dm, records)  # a pool.index file, the score cache, or scoring
    pool_s = time.perf_counter() - t_pool
    selection = build_selection(selection_config, pool)
    report = LeadReportCallback(
        selection, names, out_dir, plots=cfg.report.plots, wandb_media=cfg.report.wandb_media
    )
    loggers = make_loggers(cfg)
    monitors = RunMonitors(split.train, records, split.flags, split.val, val_groups=cfg.report.val_groups)
    checkpointing = bool(cfg.trainer.get("enable_checkpointing", True))
    resumable = run_callbacks(out_dir, loggers, checkpointing, cfg.checkpoint.every_n_steps)
    callbacks = [selection, report, *monitors.callbacks, *resumable]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for lg in loggers:
        lg.log_hyperparams({**resolved, "overrides": job_overrides(), "pool_size": len(pool)})  # type: ignore[dict-item]

    with ddp_job_of_a_sweep(trainer):
        if cfg.validate_before and split.val and ckpt_path is None:  # a resumed run has it in its state
            trainer.validate(module, datamodule=dm, verbose=False)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)

    finish_loggers(loggers)
    val = trainer.callback_metrics.get("val/loss")
    result = {
        "val_loss": float(val) if val is not None else math.nan,
        "history": selection.history,
        "evals": report.evals,
        "cluster_names": names,
        "stop_reason": selection.stop_reason,
        "method": selection.method,
        "output_dir": out_dir,
        "plots": report.paths,
        "pool_s": pool_s,
        **monitors.results(trainer, selection),
    }
    if cfg.save_model and trainer.is_global_zero:  # the trained model (LoRA merged) + tokenizer
        result["model_dir"] = module.save_pretrained_model(out_dir / "model", dm.tokenizer)
    result["wall_s"] = time.perf_counter() - t0
    if cfg.report.print_summary and trainer.is_global_zero:
        _print_summary(cfg, pool, result)
    return result


def _print_summary(cfg: DictConfig, pool: Any, r: dict[str, Any]) -> None:
    """The per-round table and the outputs: to stdout, and under Hydra to ``<run dir>/train.log`` too."""
    from lead_lightning.report import format_summary

    method = r["method"]
    lines = [
        f"\nlead-train [{cfg.run_name}]: selection={method}, pool {len(pool)} examples, "
        f"{pool.num_clusters} clusters: {r['cluster_names']}",
        format_summary(r["history"], r["cluster_names"], r["evals"]),
        f"stop reason: {r['stop_reason']}; final val loss {r['val_loss']:.4f}; wall time {r['wall_s']:.1f} s",
        f"outputs: {r['output_dir'].resolve()}",
    ]
    echo(log, "\n".join(lines))


def _compare(cfg: DictConfig) -> bool:
    from lead_lightning.app.compare import should_compare

    return should_compare(cfg) and not is_relaunched_rank()


def _run_baseline(cfg: DictConfig, lead: dict[str, Any]) -> None:
    """``compare_with``: train the baseline on the same data and budget, print both results and the winner."""
    from hydra.utils import instantiate

    from lead_lightning.app.compare import baseline_config, format_comparison

    name = str(cfg.compare_with)
    out = Path(cfg.paths.output_dir) / f"baseline_{name}"
    echo(log, f"\ncompare_with={name}: training the {name} baseline on the same data and budget in {out}")
    base = train(baseline_config(cfg, instantiate(cfg.selection), out))
    echo(log, "\n" + format_comparison(lead, base, name))


def _hydra_task(cfg: DictConfig) -> float:
    import torch
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        result = train(cfg)
        if _compare(cfg):
            _run_baseline(cfg, result)
        return result["val_loss"]
    except SIGTERMException as err:  # stopped by a signal: never exit 0 (Lightning's own has status 0)
        raise SystemExit(err.code or 143) from err
    finally:
        # A gloo/NCCL group left to interpreter shutdown can abort the process after the work is done.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def main() -> None:
    """Console entry point ``lead-train`` (Hydra parses the command line here, never at import)."""
    import hydra

    if not CONF_DIR.is_dir():
        raise FileNotFoundError(
            f"lead-train's configs are not at {CONF_DIR}. HINT: the package ships them in"
            " `lead_lightning/conf/`; reinstall it (`pip install .` or `pip install -e .`)."
        )
    register_configs()
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(_hydra_task)()


if __name__ == "__main__":
    main()
