"""Run-time plumbing of ``lead-train``: run directories, config checks, run names, loggers, DDP in a sweep.

Importing this module imports neither torch nor lightning (``lead-train --help`` and a config error
stay fast); the functions that need them import them when called.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = [
    "RUN_MARKER",
    "RunDirGuard",
    "SkipLoggers",
    "check_complete",
    "check_run_dir",
    "claim_run_dir",
    "continue_run",
    "ddp_job_of_a_sweep",
    "echo",
    "finish_loggers",
    "is_relaunched_rank",
    "job_overrides",
    "make_loggers",
    "register_resolvers",
    "resumes",
    "run_name",
]

_DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

RUN_MARKER = ".lead-run.json"
"""The file by which a run (or a sweep) claims its directory; written atomically before Hydra writes."""

_RUN_ID = secrets.token_hex(3)  # one per process: every resolution of `hydra.run.dir` must agree


def register_resolvers() -> None:
    """Register ``${lead.run_id:}``: a short random id, the same for the whole process (idempotent).

    ``conf/train.yaml`` appends it to the run and sweep directories, so two runs started in the same
    second still get directories of their own. DDP ranks that Lightning relaunches are given rank 0's
    directory on their command line (``hydra.run.dir=...``), so they never resolve it.

    Example:
        >>> register_resolvers()
        >>> cfg = OmegaConf.create({"dir": "runs/x_${lead.run_id:}", "again": "${lead.run_id:}"})
        >>> cfg.dir == "runs/x_" + cfg.again and len(cfg.again) == 6
        True
    """
    if not OmegaConf.has_resolver("lead.run_id"):
        OmegaConf.register_new_resolver("lead.run_id", lambda: _RUN_ID)


def is_relaunched_rank() -> bool:
    """Whether this process is a rank other than the first of a distributed run (it joins rank 0's run)."""
    return any(os.environ.get(k, "0").strip() not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _traces(directory: Path) -> list[str]:
    """Files in ``directory`` that only a run leaves: ``history.json`` and checkpoints (any depth)."""
    if not directory.is_dir():
        return []
    found = [p for p in (directory / "history.json",) if p.exists()]
    found += sorted(directory.rglob("*.ckpt"))[:3]
    return [str(p.relative_to(directory)) for p in found]


def _occupied_error(directory: Path, key: str, found: list[str]) -> FileExistsError:
    return FileExistsError(
        f"`{key}` ({directory}) already holds another run's outputs ({', '.join(found)}); this run"
        f" would overwrite them. HINT: leave `{key}` at its default (a new directory for every run),"
        " give a directory of its own, or move the old run away to start it again."
    )


def check_run_dir(
    directory: str | os.PathLike[str], *, resuming: bool = False, key: str = "paths.output_dir"
) -> None:
    """Fail when ``directory`` already holds another run's ``history.json`` or checkpoints.

    Args:
        directory: The run's output directory.
        resuming: ``True`` when the run continues the one in ``directory`` (nothing is checked).
        key: The config key that named the directory (used in the error message).

    Raises:
        FileExistsError: ``directory`` holds another run's outputs.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> check_run_dir(d)  # empty: fine
        >>> _ = (d / "history.json").write_text("{}")
        >>> check_run_dir(d)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileExistsError: `paths.output_dir` (...) already holds another run's outputs (history.json); ...
    """
    directory = Path(directory)
    found = [] if resuming else _traces(directory)
    if found:
        raise _occupied_error(directory, key, found)


def claim_run_dir(directory: str | os.PathLike[str], *, key: str, resuming: bool = False) -> Path:
    """Make ``directory`` this run's own: fail if another run holds it, else mark it atomically.

    Two processes that claim the same directory at the same moment cannot both succeed: the marker
    file :data:`RUN_MARKER` is created with ``O_EXCL``.

    Args:
        directory: The run's (or the sweep's) directory; created when missing.
        key: The config key that named it (``hydra.run.dir`` / ``hydra.sweep.dir``), for the message.
        resuming: ``True`` when continuing the run that holds ``directory`` (nothing is checked).

    Returns:
        The directory.

    Raises:
        FileExistsError: another run (or sweep) holds ``directory``.
    """
    directory = Path(directory)
    if resuming:
        return directory
    found = _traces(directory) + [
        name for name in (RUN_MARKER, "multirun.yaml") if (directory / name).exists()
    ]
    if found:
        raise _occupied_error(directory, key, found)
    directory.mkdir(parents=True, exist_ok=True)
    info = {"run_id": _RUN_ID, "pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv}
    info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        fd = os.open(directory / RUN_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise _occupied_error(directory, key, [RUN_MARKER]) from None
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return directory


def resumes(config: DictConfig) -> bool:
    """Whether the config starts from a checkpoint (a non-empty ``resume``; absent: ``False``).

    Such a run may write into a directory that holds a run's outputs (``check_run_dir``); which
    directory it continues is :class:`RunDirGuard`'s decision.
    """
    return bool(OmegaConf.select(config, "resume", default=None))


def _continues_in_place(resume: Any, directory: Path) -> bool:
    """``resume=auto``, or a checkpoint file inside ``directory``: the run in ``directory`` goes on."""
    if not resume:
        return False
    if resume == "auto":
        return True
    return Path(str(resume)).expanduser().resolve().is_relative_to(directory.resolve())


def _running(pid: Any) -> bool:
    """Whether ``pid`` (on this host) is a live process, and (where ``/proc`` tells) a lead_lightning one."""
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return not cmdline.exists() or b"lead" in cmdline.read_bytes()
    except OSError:
        return True


def continue_run(directory: str | os.PathLike[str], *, key: str) -> Path:
    """Make ``directory``, which holds an earlier run, this process's again (``resume``).

    Fails when it holds no run, or when that run is still running on this host; else records this
    process in its claim :data:`RUN_MARKER` (atomically), so that a third process sees it running.

    Args:
        directory: The run's (or the sweep's) directory.
        key: The config key that named it (``hydra.run.dir`` / ``hydra.sweep.dir``), for the message.

    Returns:
        The directory.

    Raises:
        FileNotFoundError: ``directory`` holds no run.
        FileExistsError: the run in ``directory`` is still running.
    """
    directory = Path(directory)
    marker = directory / RUN_MARKER
    if not marker.is_file() and not _traces(directory):
        raise FileNotFoundError(
            f"`resume`: {directory} holds no lead-train run to continue. HINT: name the run's directory,"
            f" e.g. `lead-train resume=auto {key}=outputs/lead/runs/<run>` (each run prints it at its end)."
        )
    info: dict[str, Any] = json.loads(marker.read_text()) if marker.is_file() else {}
    if info.get("host") == socket.gethostname() and _running(info.get("pid")):
        raise FileExistsError(
            f"`{key}` ({directory}) belongs to a run that is still running (pid {info['pid']}, started"
            f" {info.get('started')}). HINT: stop it first (SIGTERM stops it at the next step and leaves a"
            " checkpoint), then resume."
        )
    resumed = [*info.get("resumed", []), time.strftime("%Y-%m-%dT%H:%M:%S%z")]
    info.update(pid=os.getpid(), host=socket.gethostname(), argv=sys.argv, resumed=resumed)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f"{RUN_MARKER}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(marker)
    return directory


class RunDirGuard(Callback):
    """Hydra callback: claims the run (or sweep) directory before Hydra writes anything into it.

    Listed under ``hydra.callbacks`` in ``conf/train.yaml``. Ranks that Lightning relaunches into
    rank 0's directory belong to rank 0's run and are let through. A directory held by another run
    ends the process with the error (exit code 1): Hydra turns an exception raised in a callback into
    a warning and runs the job anyway, but lets ``SystemExit`` through.

    With ``resume=auto`` (or ``resume=`` a checkpoint inside the directory) the run in the directory
    continues: it must hold a run that is not running any more (:func:`continue_run`). With
    ``resume=`` a checkpoint elsewhere, the directory is claimed as for a new run.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.sweep.dir")

    @staticmethod
    def _claim(config: DictConfig, key: str) -> None:
        if is_relaunched_rank():
            return
        directory = Path(str(OmegaConf.select(config, key)))
        try:
            if _continues_in_place(OmegaConf.select(config, "resume", default=None), directory):
                continue_run(directory, key=key)
            else:
                claim_run_dir(directory, key=key)
        except (FileExistsError, FileNotFoundError) as e:
            raise SystemExit(f"Error: {e}") from e


def job_overrides() -> list[str]:
    """This job's command-line overrides (``[]`` outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(cfg: DictConfig) -> str:
    """``cfg.run_name``, else the job's overrides (``bandit=uniform,selection.sample_rate=0.05``), else ``default``."""
    if cfg.run_name:
        return str(cfg.run_name)
    return ",".join(o for o in job_overrides() if not o.startswith("logger=")) or "default"


def _missing(node: Any, key: str = "") -> list[str]:
    if isinstance(node, dict):
        return [m for k, v in node.items() for m in _missing(v, f"{key}.{k}" if key else str(k))]
    if isinstance(node, list):
        return [m for i, v in enumerate(node) for m in _missing(v, f"{key}[{i}]")]
    return [key] if isinstance(node, str) and node == "???" else []


def check_complete(cfg: DictConfig) -> None:
    """Fail before any work when a key is still ``???`` (all of them named, interpolations unresolved)."""
    missing = sorted(_missing(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        raise ValueError(
            f"The config leaves {missing} unset (`???`). HINT: give them on the command line, e.g."
            f" `lead-train {missing[0]}=...`."
        )


class SkipLoggers(logging.Filter):
    """A logging filter that drops the records of whole logger trees.

    ``conf/train.yaml`` puts it on Hydra's console handler for ``lightning``: Lightning prints its
    messages to stderr with a handler of its own, so the console would show them twice; the log
    file (``train.log``) still receives them.

    Args:
        names: Logger names whose records (their children's too) are dropped.

    Example:
        >>> f = SkipLoggers(["lightning"])
        >>> [f.filter(logging.makeLogRecord({"name": n})) for n in ("lightning.pytorch", "lightningx", "lead")]
        [False, True, True]
    """

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = tuple(names)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == n or record.name.startswith(n + ".") for n in self.names)


def _writes_to_stdout(logger: logging.Logger) -> bool:
    node: logging.Logger | None = logger
    while node is not None:
        if any(getattr(h, "stream", None) in (sys.stdout, sys.__stdout__) for h in node.handlers):
            return True
        node = node.parent if node.propagate else None
    return False


def echo(logger: logging.Logger, text: str) -> None:
    """Log ``text`` at INFO (under Hydra: the console and ``<run dir>/train.log``), and print it when
    no handler of ``logger`` writes to stdout (a plain Python call of ``train``), so it is shown once.
    """
    logger.info(text)
    if not (logger.isEnabledFor(logging.INFO) and _writes_to_stdout(logger)):
        print(text, flush=True)


_CSV_LOGGERS = ("lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.csv_logs.CSVLogger")
_WANDB_LOGGERS = ("lightning.pytorch.loggers.WandbLogger", "lightning.pytorch.loggers.wandb.WandbLogger")


def make_loggers(cfg: DictConfig) -> list[Any]:
    """Every logger of the ``logger`` group (a dict of ``_target_`` configs, or null), ready to resume.

    Lightning's ``CSVLogger`` is built as :class:`~lead_lightning.app.resume.ResumableCSVLogger` (a
    resumed run continues ``metrics.csv``); a ``WandbLogger`` gets the run directory's W&B run id and
    ``resume="allow"`` (a resumed run logs to the same W&B run), unless the config gives an ``id``.
    """
    from hydra.utils import instantiate

    if not cfg.logger:
        return []
    loggers = []
    for c in cfg.logger.values():
        if c is None or "_target_" not in c:
            continue
        if c._target_ in _CSV_LOGGERS:
            loggers.append(instantiate(c, _target_="lead_lightning.app.resume.ResumableCSVLogger"))
        elif c._target_ in _WANDB_LOGGERS and not c.get("id"):
            from lead_lightning.app.resume import wandb_run_id

            loggers.append(instantiate(c, id=wandb_run_id(cfg.paths.output_dir), resume="allow"))
        else:
            loggers.append(instantiate(c))
    return loggers


def finish_loggers(loggers: list[Any]) -> None:
    """End W&B runs and wait until their files are complete; the next job of a sweep starts its own run.

    ``wandb.Run.finish()`` returns before W&B's service process has written and closed the run's files
    (its last message to the service is fire-and-forget): right after it, ``run-*.wandb`` may still
    hold only its 7-byte header. ``wandb.teardown()`` waits for the service to finish every run, so
    when this returns the offline run is complete (readable, ready for ``wandb sync``).
    """
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    finished = False
    for lg in loggers:
        if isinstance(lg, WandbLogger) and rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            lg.experiment.finish()
            finished = True
    if finished:
        import wandb

        if wandb.run is None:  # a run the caller started outside lead-train stays theirs
            wandb.teardown()


@contextmanager
def ddp_job_of_a_sweep(trainer: pl.Trainer) -> Iterator[None]:
    """Keep a ``-m`` sweep from re-running on rank 1, and let every job of it start its own processes.

    Lightning's DDP launcher starts ranks > 0 by re-running ``sys.argv`` plus ``hydra.run.dir=<run.dir>``;
    in a sweep that would start the whole sweep again. Point it at this job (its overrides, its
    directory); afterwards tear the process group down and restore the launcher's environment
    variables, so the next job launches fresh ranks instead of waiting for this job's.
    """
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if (
        trainer.world_size < 2
        or os.environ.get("LOCAL_RANK", "0") != "0"
        or not HydraConfig.initialized()
        or HydraConfig.get().mode != RunMode.MULTIRUN
    ):
        yield
        return
    hc, argv, env = HydraConfig.get(), sys.argv, {k: os.environ.get(k) for k in _DDP_ENV}
    sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(hc):  # type: ignore[arg-type]
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
