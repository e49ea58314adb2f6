"""What a LEAD run did, per round: metrics for any Lightning logger, W&B media, PNG plots, a table.

:class:`LeadReportCallback` sits after the selection callback (LEAD's or a baseline's) and reads its
``history`` (one dict per round, see :meth:`lead_lightning.engine.LeadSelector.close_round`). The
selection callback already logs the round's numbers under ``lead/``; this adds

- ``lead/chosen/cluster_k`` (1 for the clusters drawn this round, else 0) and ``lead/coef/cluster_k``
  (the gradient term ``C_k`` of the chosen clusters), through every logger;
- with a :class:`~lightning.pytorch.loggers.WandbLogger`: IDU histograms of the pool and of the
  round's selection every round, and at the end a cluster x round selection heatmap, a per-cluster
  table and the plots;
- after every round and at the end, ``out_dir/history.json`` (the rounds, the validation losses, the
  cluster names) and ``out_dir/plots/*.png`` (arm probabilities, selection timeline, budget, eval
  loss), each replaced atomically, so a killed run leaves them complete and up to date; the loggers
  are flushed too (``metrics.csv``). Its evaluations are in the checkpoint: a resumed run continues them.

The plot functions take plain lists and return :class:`matplotlib.figure.Figure` objects drawn
without pyplot (the Agg canvas; no display needed), so they also work on a saved ``history.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from lead_lightning.base import RoundSelectionCallback

__all__ = [
    "LeadReportCallback",
    "cluster_table",
    "format_summary",
    "plot_arm_probabilities",
    "plot_budget",
    "plot_eval_loss",
    "plot_selection_timeline",
    "write_plots",
]

History = Sequence[Mapping[str, Any]]


def _figure(title: str, width: float = 7.0, height: float = 4.0) -> tuple[Any, Any]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _names(history: History, names: Sequence[str] | None) -> list[str]:
    k = len(history[0]["selected_per_cluster"]) if history else 0
    return list(names) if names is not None and len(names) == k else [f"cluster {i}" for i in range(k)]


def plot_arm_probabilities(history: History, names: Sequence[str] | None = None) -> Any:
    """Each cluster's bandit probability before each round's draw (baselines: a note)."""
    fig, ax = _figure("Arm probabilities per round")
    rounds = [h["round"] for h in history if h.get("probs")]
    if not rounds:
        ax.text(
            0.5, 0.5, "no bandit in this run (baseline)", ha="center", va="center", transform=ax.transAxes
        )
        return fig
    probs = torch.tensor([h["probs"] for h in history if h.get("probs")])
    for k, name in enumerate(_names(history, names)):
        ax.plot(rounds, probs[:, k].tolist(), marker="o", label=name)
    for h in history:  # mark the drawn arms
        for a in h.get("arms", []):
            ax.scatter([h["round"]], [h["probs"][a]], s=90, facecolors="none", edgecolors="black")
    ax.set(xlabel="round", ylabel="probability (circled: drawn)", ylim=(0, 1))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_selection_timeline(history: History, names: Sequence[str] | None = None) -> Any:
    """Heatmap of examples selected per cluster (rows) and round (columns)."""
    labels = _names(history, names)
    fig, ax = _figure("Examples selected per cluster and round", height=1.2 + 0.45 * max(len(labels), 1))
    if not history:
        return fig
    counts = torch.tensor([h["selected_per_cluster"] for h in history]).T.float()
    im = ax.imshow(counts.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set(xlabel="round", yticks=range(len(labels)), yticklabels=labels)
    ax.set_xticks(range(len(history)), [str(h["round"]) for h in history])
    for k, row in enumerate(counts.tolist()):
        for r, v in enumerate(row):
            if v:
                ax.text(r, k, f"{int(v)}", ha="center", va="center", color="white", fontsize="x-small")
    fig.colorbar(im, ax=ax, label="examples")
    return fig


def plot_budget(history: History, budget: int | None = None) -> Any:
    """Unique examples trained so far (left) and the fraction of the budget spent (right)."""
    fig, ax = _figure("Budget: unique examples trained")
    rounds = [h["round"] for h in history]
    ax.plot(rounds, [h["unique_seen"] for h in history], marker="o", label="unique seen")
    ax.plot(
        rounds, [h["n_selected"] for h in history], marker="s", linestyle="--", label="selected this round"
    )
    if budget:
        ax.axhline(budget, color="grey", linestyle=":", label=f"budget ({budget})")
    ax.set(xlabel="round", ylabel="examples")
    ax2 = ax.twinx()
    ax2.plot(rounds, [h["budget_frac"] for h in history], color="tab:red", alpha=0.4, label="budget fraction")
    ax2.set(ylabel="budget fraction", ylim=(0, 1.05))
    fig.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0.08, 0.9))
    return fig


def plot_eval_loss(evals: Sequence[Mapping[str, Any]]) -> Any:
    """Validation loss against rounds trained (0 = before training)."""
    fig, ax = _figure("Eval loss (held-out set)")
    if not evals:
        ax.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax.transAxes)
        return fig
    ax.plot([e["rounds_trained"] for e in evals], [e["val_loss"] for e in evals], marker="o")
    ax.set(xlabel="rounds trained", ylabel="val/loss (token mean)")
    return fig


def write_plots(
    history: History,
    evals: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    budget: int | None = None,
) -> dict[str, Path]:
    """Write the four PNG plots to ``out_dir``; returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "arm_probabilities": plot_arm_probabilities(history, names),
        "selection_timeline": plot_selection_timeline(history, names),
        "budget": plot_budget(history, budget),
        "eval_loss": plot_eval_loss(evals),
    }
    paths = {}
    for name, fig in figures.items():
        paths[name] = out / f"{name}.png"
        tmp = out / f".{name}.png.tmp"
        fig.savefig(tmp, dpi=110, format="png")
        tmp.replace(paths[name])  # a reader (or a killed run) never sees half a picture
    return paths


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (non-finite floats as ``null``), atomically.

    Example:
        >>> import tempfile
        >>> p = write_json(Path(tempfile.mkdtemp()) / "h.json", {"loss": float("nan"), "round": 1})
        >>> json.loads(p.read_text())
        {'loss': None, 'round': 1}
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=1))
    tmp.replace(path)
    return path


def cluster_table(
    selection: RoundSelectionCallback, names: Sequence[str] | None = None
) -> tuple[list[str], list[list[Any]]]:
    """Per cluster: size, mean iu0 / IFD / current utility, rounds chosen, examples selected, unique seen, last p."""
    pool = selection.pool
    history = selection.history
    utility = selection.utility()
    k_all = pool.num_clusters
    labels = list(names) if names is not None and len(names) == k_all else [str(k) for k in range(k_all)]
    seen = selection.seen()
    columns = [
        "cluster",
        "name",
        "size",
        "iu0_mean",
        "ifd_mean",
        "idu_mean",
        "rounds_chosen",
        "selected",
        "unique_seen",
        "last_prob",
    ]
    rows = []
    for k in range(k_all):
        m = pool.clusters == k
        ifd = float(pool.ifd[m].nanmean()) if pool.ifd is not None else math.nan
        idu = float(utility[m].mean()) if utility is not None else math.nan
        rows.append(
            [
                k,
                labels[k],
                int(m.sum()),
                float(pool.iu0[m].mean()),
                ifd,
                idu,
                sum(k in h.get("arms", []) for h in history),
                sum(h["selected_per_cluster"][k] for h in history),
                int(seen[m].sum()),
                float(history[-1]["probs"][k]) if history and history[-1].get("probs") else math.nan,
            ]
        )
    return columns, rows


def format_summary(
    history: History, names: Sequence[str] | None = None, evals: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The per-round table ``lead-train`` prints."""
    labels = _names(history, names)
    val = {e["rounds_trained"]: e["val_loss"] for e in evals}
    lines = [
        f"{'round':>5} | {'clusters chosen':<24} | {'selected':>8} | {'raw reward':>10} | {'unique':>6}"
        f" | {'budget':>6} | {'val loss':>8} | {'time s':>6}"
    ]
    if 0 in val:
        lines.append(
            f"{'start':>5} | {'':<24} | {'':>8} | {'':>10} | {'':>6} | {'':>6} | {val[0]:>8.4f} | {'':>6}"
        )
    for h in history:
        chosen = ", ".join(labels[a] for a in h.get("arms", [])) or "(baseline)"
        rew = ", ".join(f"{v:+.3f}" for v in h.get("reward_raw", {}).values()) or "-"
        v = val.get(h["round"] + 1, math.nan)
        lines.append(
            f"{h['round']:>5} | {chosen[:24]:<24} | {h['n_selected']:>8} | {rew[:10]:>10} | {h['unique_seen']:>6}"
            f" | {h['budget_frac']:>6.1%} | {v:>8.4f} | {h.get('round_time_s', math.nan):>6.1f}"
        )
    return "\n".join(lines)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


class LeadReportCallback(Callback):
    """Per-round report of a selection callback (LEAD or baseline): loggers, W&B media, PNGs, JSON.

    Put it after the selection callback in ``Trainer(callbacks=[...])``.

    Args:
        selection: the callback whose ``history`` is reported (``LeadSelectionCallback`` or a baseline).
        cluster_names: a name per cluster (bandit arm) for tables and plots.
        out_dir: where ``history.json`` and ``plots/*.png`` are written after every round and at the end
            of fit (``None``: nowhere).
        plots: write the PNG plots. Drawing them takes about half a second, so between round ends they
            are redrawn only once that cost is below 5% of the time since they were last drawn (every
            round of a real run; every few rounds of a tiny one); the end of fit always draws them.
        wandb_media: with a ``WandbLogger``, also log histograms, heatmap, table and plots.
    """

    PLOT_SHARE = 0.05
    """Largest share of the wall time spent redrawing the plots between round ends."""

    def __init__(
        self,
        selection: RoundSelectionCallback,
        cluster_names: Sequence[str] | None = None,
        out_dir: str | Path | None = None,
        plots: bool = True,
        wandb_media: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(selection, RoundSelectionCallback):
            raise TypeError(
                f"`selection` must be a `RoundSelectionCallback` (LEAD or a baseline), got {type(selection).__name__}."
            )
        self.selection = selection
        self.cluster_names = list(cluster_names) if cluster_names is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.plots = plots
        self.wandb_media = wandb_media
        self.evals: list[dict[str, Any]] = []
        self.paths: dict[str, Path] = {}
        self._reported = 0
        self._subset: torch.Tensor | None = None
        self._plot_cost = 0.0  # seconds the last drawing of the plots took
        self._plotted_at = -math.inf  # when it ended (time.monotonic)

    def state_dict(self) -> dict[str, Any]:
        """The evaluations so far and the rounds already logged (a resumed run continues both)."""
        return {"evals": [dict(e) for e in self.evals], "reported": self._reported}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.evals = [dict(e) for e in state_dict.get("evals", [])]
        self._reported = int(state_dict.get("reported", 0))

    @staticmethod
    def _wandb_loggers(trainer: pl.Trainer) -> list[Any]:
        from lightning.pytorch.loggers import WandbLogger

        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._subset = self.selection.current_subset()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or value is None:
            return
        fitting = trainer.state.fn == TrainerFn.FITTING
        self.evals.append(
            {
                "rounds_trained": trainer.current_epoch + 1 if fitting else 0,
                "step": trainer.global_step,
                "val_loss": float(value),
            }
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = self.selection.history
        while self._reported < len(history):
            self._log_round(trainer, history[self._reported])
            self._reported += 1
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.save()  # metrics.csv holds this round too
            due = time.monotonic() - self._plotted_at >= self._plot_cost / self.PLOT_SHARE
            self._write_outputs(plots=self.plots and due)

    def _write_outputs(self, plots: bool) -> None:
        """``history.json`` and (with ``plots``) the PNG plots, each replaced atomically (rank 0 calls it)."""
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "history": self.selection.history,
            "evals": self.evals,
            "cluster_names": self.cluster_names,
            "stop_reason": self.selection.stop_reason,
            "budget": self.selection.budget,
        }
        write_json(self.out_dir / "history.json", record)
        if plots:
            t0 = time.monotonic()
            self.paths = write_plots(
                self.selection.history,
                self.evals,
                self.out_dir / "plots",
                self.cluster_names,
                self.selection.budget,
            )
            self._plotted_at = time.monotonic()
            self._plot_cost = self._plotted_at - t0

    def _log_round(self, trainer: pl.Trainer, e: Mapping[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        k_all = len(e["selected_per_cluster"])
        metrics: dict[str, float] = {
            f"lead/chosen/cluster_{k}": float(k in e.get("arms", [])) for k in range(k_all)
        }
        metrics.update({f"lead/coef/cluster_{k}": float(v) for k, v in e.get("coef", {}).items()})
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        utility = self.selection.utility()
        if not self.wandb_media or utility is None:
            return
        for lg in self._wandb_loggers(trainer):
            import wandb

            media = {"lead/idu_hist/pool": wandb.Histogram(utility.numpy().tolist())}
            if self._subset is not None and self._subset.numel():
                media["lead/idu_hist/selected"] = wandb.Histogram(utility[self._subset].numpy().tolist())
            lg.log_metrics(media, step=trainer.global_step)  # type: ignore[arg-type]

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        history = self.selection.history
        self._write_outputs(plots=self.plots)
        if not self.wandb_media:
            return
        for lg in self._wandb_loggers(trainer):
            import wandb

            columns, rows = cluster_table(self.selection, self.cluster_names)
            lg.log_table("lead/clusters", columns=columns, data=rows)
            heatmap = self.paths.get("selection_timeline")
            images = (
                {"lead/selection_heatmap": heatmap}
                if heatmap
                else {"lead/selection_heatmap": plot_selection_timeline(history, self.cluster_names)}
            )
            images.update({f"lead/plots/{k}": p for k, p in self.paths.items() if k != "selection_timeline"})
            lg.experiment.log(
                {k: wandb.Image(str(v) if isinstance(v, Path) else _to_array(v)) for k, v in images.items()}
            )


def _to_array(fig: Any) -> Any:
    """An RGB array of a figure drawn on the Agg canvas."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]
