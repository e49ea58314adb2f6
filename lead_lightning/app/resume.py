"""What makes a ``lead-train`` run resumable: its checkpoints, which one ``resume=`` picks, loggers that continue.

- **Checkpoints**: Lightning's ``ModelCheckpoint`` writes ``<run dir>/checkpoints/round-epoch=E-step=S.ckpt``
  at every round end (and, with ``checkpoint.every_n_steps=N``, ``step-...ckpt`` every N optimizer
  steps); ``last.ckpt`` links to the newest. Each keeps only its newest file.
- **resume**: ``resume=auto`` continues the run of ``hydra.run.dir`` from its newest complete checkpoint
  (``last.ckpt``, else the newest ``*.ckpt``: a run killed while relinking still resumes);
  ``resume=/path/x.ckpt`` starts from that file. Lightning's ``ckpt_path`` restores the model,
  optimizer, loops and every callback (the selection state, the report's evaluations, the CSV rows).
- **Loggers**: ``metrics.csv`` keeps the rows logged up to the checkpoint and drops later ones (they are
  logged again), so a resumed run has each row once (:class:`ResumableCSVLogger`,
  :class:`LoggerResume`); a W&B run keeps its id in the run directory and is resumed
  (:func:`wandb_run_id`, ``resume="allow"``).
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from lead_lightning.signals import LAST_CHECKPOINT

__all__ = [
    "CHECKPOINT_DIR",
    "LoggerResume",
    "MidRoundCheckpoint",
    "ResumableCSVLogger",
    "checkpoint_callbacks",
    "find_checkpoint",
    "resolve_resume",
    "run_callbacks",
    "wandb_run_id",
]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
"""The run directory's subdirectory that holds its checkpoints."""
WANDB_ID_FILE = ".wandb-run-id"
"""The run directory's file that keeps its W&B run id (so a resumed run logs to the same W&B run)."""


def checkpoint_callbacks(out_dir: str | os.PathLike[str], every_n_steps: int = 0) -> list[ModelCheckpoint]:
    """``ModelCheckpoint`` callbacks writing ``<out_dir>/checkpoints``: every round end, and every N steps.

    Args:
        out_dir: The run directory.
        every_n_steps: Also checkpoint every this many optimizer steps (0: only at round ends).

    Returns:
        One callback per trigger (Lightning's triggers are mutually exclusive within one callback);
        each keeps its newest file and points ``last.ckpt`` at it.
    """
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
        raise ValueError(f"`checkpoint.every_n_steps` must be an int >= 0, got {every_n_steps!r}.")
    common: dict[str, Any] = {
        "dirpath": Path(out_dir) / CHECKPOINT_DIR,
        "save_top_k": 1,  # with monitor=None: the newest file of this trigger
        "save_last": "link",  # last.ckpt -> the newest file of either trigger
        "enable_version_counter": False,
        "save_on_train_epoch_end": True,  # the round end: after the round closed, after validation
    }
    callbacks = [ModelCheckpoint(filename="round-{epoch}-{step}", every_n_epochs=1, **common)]
    if every_n_steps:
        callbacks.append(
            MidRoundCheckpoint(filename="step-{epoch}-{step}", every_n_train_steps=every_n_steps, **common)
        )
    return callbacks


class MidRoundCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(every_n_train_steps=N)`` that skips a round's last batch.

    The round-end checkpoint follows that batch once validation has run. A checkpoint taken between
    them resumes without that round's validation (Lightning does not run it again), so the resumed
    run's evaluations would lack one.
    """

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _complete(path: Path) -> bool:
    """Whether ``path`` is a whole checkpoint file (``torch.save`` writes a zip; a cut one lacks its end)."""
    try:
        return path.is_file() and zipfile.is_zipfile(path)
    except OSError:
        return False


def find_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint a resumed run starts from: ``last.ckpt``'s target if complete, else the newest
    complete ``*.ckpt`` of ``<run_dir>/checkpoints`` (``None`` when there is none).

    Example:
        >>> import tempfile
        >>> find_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    directory = Path(run_dir) / CHECKPOINT_DIR
    last = directory / LAST_CHECKPOINT
    if _complete(last):
        return last.resolve()
    files = [p for p in directory.glob("*.ckpt") if not p.is_symlink() and _complete(p)]
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name)) if files else None


def resolve_resume(resume: str | None, run_dir: str | os.PathLike[str]) -> Path | None:
    """The ``ckpt_path`` for ``Trainer.fit``: ``None`` (no ``resume``), the run's newest checkpoint
    (``resume=auto``) or the file ``resume`` names.

    ``resume=auto`` in a run directory without a checkpoint yet (a run stopped before its first round
    ended) starts from round 0, with a warning; one that holds a ``history.json`` but no checkpoint is
    an error (its rounds would be trained again and overwritten).

    Raises:
        FileNotFoundError: ``resume`` names no file.
        ValueError: the file is not a complete checkpoint, or ``resume=auto`` finds a finished round
            without a checkpoint.
    """
    if not resume:
        return None
    run_dir = Path(run_dir)
    if resume == "auto":
        found = find_checkpoint(run_dir)
        if found is not None:
            log.info(f"resume=auto: continuing from {found}")
            return found
        if (run_dir / "history.json").exists():
            raise ValueError(
                f"`resume=auto`: {run_dir} holds a run's history.json but no checkpoint in"
                f" {run_dir / CHECKPOINT_DIR}, so there is nothing to continue from. HINT: the run had"
                " `trainer.enable_checkpointing=false`; start it again in a new directory."
            )
        log.warning(f"resume=auto: no checkpoint in {run_dir / CHECKPOINT_DIR} yet; starting from round 0.")
        return None
    path = Path(resume).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"`resume={resume}`: no such checkpoint file. HINT: a run keeps its checkpoints in"
            f" <run dir>/{CHECKPOINT_DIR}/ (`last.ckpt` is the newest); `resume=auto hydra.run.dir=<run dir>`"
            " picks it."
        )
    if not _complete(path):
        raise ValueError(
            f"`resume={resume}` is not a complete checkpoint (cut short while it was written?). HINT:"
            " `resume=auto` falls back to the newest complete checkpoint of the run."
        )
    return path


def wandb_run_id(run_dir: str | os.PathLike[str]) -> str:
    """The W&B run id of the run in ``run_dir``: read from ``.wandb-run-id``, or made and kept there.

    ``lead-train`` passes it to ``WandbLogger(id=..., resume="allow")``, so a resumed run continues
    its W&B run instead of starting another one.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> wandb_run_id(d) == wandb_run_id(d) and len(wandb_run_id(d)) == 8
        True
    """
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another process of this run wrote it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(run_id + "\n")
    return run_id


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` survives a resume.

    A resumed run continues the file: :meth:`truncate` (called by :class:`LoggerResume` with the row
    count its checkpoint recorded) drops the rows logged after the checkpoint, which the resumed run
    logs again. ``lead-train`` builds every ``CSVLogger`` of the ``logger`` group as this class.
    Arguments: those of ``CSVLogger``.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (rank 0; a placeholder on other ranks), continuing an existing ``metrics.csv``."""
        if not isinstance(self._experiment, ExperimentWriter):
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    def rows_written(self) -> int | None:
        """Flush the buffered rows, then count the data rows of ``metrics.csv`` (``None`` on ranks > 0)."""
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return None
        writer = self.experiment
        writer.save()
        if not os.path.isfile(writer.metrics_file_path):
            return 0
        with open(writer.metrics_file_path, newline="") as f:
            return max(sum(1 for _ in csv.reader(f)) - 1, 0)

    def truncate(self, rows: int) -> None:
        """Keep the header and the first ``rows`` data rows of ``metrics.csv`` (rank 0; atomic rewrite)."""
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return
        writer = self.experiment
        path = writer.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            lines = list(csv.reader(f))
        header, data = lines[:1], lines[1:]
        if len(data) < rows:
            log.warning(f"{path} holds {len(data)} rows, fewer than the {rows} its checkpoint counted.")
        tmp = f"{path}.tmp"
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(header + data[:rows])
        os.replace(tmp, path)


class LoggerResume(Callback):
    """Keeps the CSV loggers' row counts in checkpoints, so a resumed ``metrics.csv`` has every row once.

    ``state_dict`` flushes each :class:`ResumableCSVLogger` and records its rows (a checkpoint must not
    count rows still in memory); ``load_state_dict`` cuts each file back to its count.

    Args:
        loggers: the run's loggers (others than :class:`ResumableCSVLogger` are ignored).
    """

    def __init__(self, loggers: Sequence[Any]) -> None:
        super().__init__()
        self.csv = [lg for lg in loggers if isinstance(lg, ResumableCSVLogger)]
        self._step_row_pending = False

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Lightning logs a step's metrics (one CSV row, every `log_every_n_steps`) after the callbacks'
        # `on_train_batch_end`, where step and stop checkpoints are written (this callback runs before
        # them). A checkpoint taken there must count that row: the resumed run starts at the next step
        # and never logs it again (a resume from a logging step lost its train/loss row).
        lc = trainer._logger_connector
        accumulating = trainer.fit_loop._should_accumulate() and pl_module.automatic_optimization
        self._step_row_pending = bool(
            self.csv and not accumulating and lc.should_update_logs and lc.metrics["log"]
        )

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._step_row_pending = False  # the previous step's row is logged by now

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._step_row_pending = False

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._step_row_pending = False

    def state_dict(self) -> dict[str, Any]:
        pending = int(self._step_row_pending)
        return {"csv_rows": [None if (n := lg.rows_written()) is None else n + pending for lg in self.csv]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for lg, rows in zip(self.csv, state_dict.get("csv_rows", []), strict=False):
            if rows is not None:
                lg.truncate(int(rows))


def run_callbacks(
    out_dir: str | os.PathLike[str], loggers: Sequence[Any], checkpointing: bool, every_n_steps: int = 0
) -> list[Callback]:
    """The callbacks that make a ``lead-train`` run resumable and stoppable, to put after the selection
    and report callbacks: :class:`LoggerResume`, :class:`~lead_lightning.signals.GracefulStop` (its stop
    checkpoint in ``<out_dir>/checkpoints``) and, with ``checkpointing``, :func:`checkpoint_callbacks`.
    """
    from lead_lightning.signals import GracefulStop

    ckpt_dir = Path(out_dir) / CHECKPOINT_DIR
    callbacks: list[Callback] = [LoggerResume(loggers), GracefulStop(ckpt_dir if checkpointing else None)]
    if checkpointing:
        callbacks += checkpoint_callbacks(out_dir, every_n_steps)
    return callbacks
