"""`GracefulStop`: on SIGTERM, stop at the next batch boundary on every rank, leaving resumable state.

Schedulers (SLURM, Kubernetes, ``timeout``) stop a job with SIGTERM and kill it after a grace period.
With this callback a ``Trainer`` stops within one training step (or one predict batch) plus the
checkpoint write, on every DDP rank, and every process exits with status ``128 + signal`` (143).

Why not Lightning's own handling (``trainer.received_sigterm``, ``SIGTERMException``)? Its handler
broadcasts a tensor from inside the signal handler and its loops raise ``SIGTERMException`` at
several places that each rank reaches on its own (after a batch, at an epoch end), so under DDP one
rank can leave while the others wait in the next collective; nothing is saved; and
``SIGTERMException`` is a ``SystemExit`` with status 0, so a stopped job looks finished. This
callback replaces Lightning's handler while a loop runs (Lightning restores the original one at
teardown). Its handler only records the signal (and forwards it to the ranks Lightning launched);
the decision is taken in training hooks:

- **fit**: after every optimizer step but an epoch's last (whose validation, which Lightning would not
  run again on resume, comes first) and at every epoch end, the ranks agree
  through ``strategy.reduce_boolean_decision`` (one tiny all-reduce per step under DDP; Lightning's
  own per-step SIGTERM broadcast costs the same), then every rank writes the checkpoint together
  (``trainer.save_checkpoint`` is collective) and raises :class:`StoppedBySignal`.
- **predict** (and a standalone ``validate``): each rank stops after its current batch (after a
  ``BasePredictionWriter`` placed before this callback has written it); no collective, since predict
  ranks may hold different numbers of batches. The signal reaches every rank: Lightning's launcher
  forwards it to the ranks it started.

A signal that arrives before a loop starts (data loading, model building) keeps the default action:
the process ends at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["LAST_CHECKPOINT", "GracefulStop", "StoppedBySignal", "link_last"]

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
"""The link :class:`GracefulStop` (and ``lead-train``'s ``ModelCheckpoint``) points at the newest checkpoint."""


class StoppedBySignal(SIGTERMException):
    """Raised on every rank once a signal has stopped the loop; its exit status is ``128 + signum``.

    A ``SystemExit`` (as Lightning's ``SIGTERMException``, which it subclasses), so the process ends
    with that status unless it is caught; ``checkpoint`` is the file written before stopping (fit).
    """

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.checkpoint = checkpoint


class GracefulStop(Callback):
    """Stop a ``fit``, ``predict`` or ``validate`` at the next batch boundary when a signal arrives.

    Args:
        checkpoint_dir: fit only: where the stop checkpoint ``stop-epoch=E-step=S.ckpt`` is written;
            ``last.ckpt`` in it is pointed at that file (``lead-train resume=auto`` picks it up; older
            stop checkpoints are removed). ``None``: stop without writing a checkpoint.
        signals: the signals that stop the loop (default: SIGTERM).

    Put it after the callbacks whose batch-end work must finish first (a prediction writer, the
    selection callback). Example::

        trainer = pl.Trainer(callbacks=[lead, GracefulStop("checkpoints")])
        trainer.fit(module, datamodule=dm)  # SIGTERM: a checkpoint, then exit status 143
    """

    def __init__(
        self, checkpoint_dir: str | os.PathLike[str] | None = None, signals: Sequence[int] = (signal.SIGTERM,)
    ) -> None:
        super().__init__()
        valid = signal.valid_signals()
        bad = [s for s in signals if s not in valid or s in (signal.SIGKILL, signal.SIGSTOP)]
        if not signals or bad:
            raise ValueError(f"`signals` must be catchable signal numbers, got {list(signals)!r}.")
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: pl.Trainer | None = None

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_previous"], d["_trainer"] = {}, None
        return d

    # ------------------------------------------------------------------ the handler
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        self.received = signum
        launcher = self._trainer.strategy.launcher if self._trainer is not None else None
        if first and launcher is not None:
            launcher.kill(signum)  # the ranks Lightning started (rank 0 only holds them)

    def _install(self, trainer: pl.Trainer) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        for s in self.signals:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handle)

    def _restore(self, reinstate: bool = True) -> None:
        """Give the signals back to the handlers this replaced (``reinstate=False``: leave this one
        installed; Lightning's teardown, which follows, restores the handlers from before the loop)."""
        if reinstate:
            for s, handler in self._previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self._trainer = None

    # ------------------------------------------------------------------ fit
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)  # after Lightning registered its own handler (it restores the original)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Not in the middle of a gradient accumulation, and not after an epoch's last batch: the epoch-end
        # check follows once validation has run (a checkpoint taken before it would resume without it).
        last = batch_idx + 1 >= trainer.num_training_batches
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 and not last:
            self._stop_fit_if_asked(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_fit_if_asked(trainer)  # a signal during the round-end validation or the round close

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def _stop_fit_if_asked(self, trainer: pl.Trainer) -> None:
        asked = self.received is not None
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if not asked:
            return
        signum = self.received if self.received is not None else signal.SIGTERM  # another rank's signal
        path = self._save(trainer) if self.checkpoint_dir is not None else None
        where = f"checkpoint {path}" if path is not None else "no checkpoint (none was asked for)"
        log.warning(  # every rank says it stopped (each DDP rank has its own log)
            f"[rank {trainer.global_rank}] {signal.Signals(signum).name}: stopped at epoch {trainer.current_epoch},"
            f" step {trainer.global_step}; {where}. Resume from it (`Trainer.fit(..., ckpt_path=...)`,"
            " `lead-train resume=auto`)."
        )
        raise StoppedBySignal(signum, path)

    def _save(self, trainer: pl.Trainer) -> Path:
        assert self.checkpoint_dir is not None
        path = self.checkpoint_dir / f"stop-epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt"
        trainer.save_checkpoint(path)  # every rank: the selection callback gathers the round's records
        if trainer.is_global_zero:
            for old in self.checkpoint_dir.glob("stop-*.ckpt"):
                if old != path:
                    old.unlink(missing_ok=True)
            link_last(path)
        trainer.strategy.barrier("lead_graceful_stop")
        return path

    # ------------------------------------------------------------------ predict and validate
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._stop_locally_if_asked(trainer, "predict")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # inside fit, the train hooks decide
            self._install(trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._stop_locally_if_asked(trainer, "validate")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._restore()

    def _stop_locally_if_asked(self, trainer: pl.Trainer, stage: str) -> None:
        if self.received is None:
            return
        signum = self.received
        log.warning(
            f"[rank {trainer.global_rank}] {signal.Signals(signum).name}: {stage} stopped after a batch."
        )
        raise StoppedBySignal(signum)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # After a stop, keep this (flag-only) handler until Lightning's teardown: Lightning's own would
        # broadcast from inside the handler if a second SIGTERM came while the ranks are leaving.
        self._restore(reinstate=not isinstance(exception, StoppedBySignal))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore(reinstate=False)  # Lightning has already restored the handlers from before the loop


def link_last(path: str | os.PathLike[str]) -> Path:
    """Point ``last.ckpt`` beside ``path`` at it, atomically (a new link renamed over the old one).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a.ckpt").write_bytes(b"a")
        >>> link_last(d / "a.ckpt").resolve() == (d / "a.ckpt").resolve()
        True
    """
    path = Path(path)
    last = path.with_name(LAST_CHECKPOINT)
    tmp = path.with_name(f".{LAST_CHECKPOINT}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.name)
    tmp.replace(last)
    return last
