"""Resumable `lead-train`: checkpoints, `resume=auto|<path>`, loggers that continue; killed runs resume exactly.

The end-to-end tests run `lead-train` as a subprocess, stop it with SIGTERM (exit status 143, a
checkpoint at the current step), resume it with `resume=auto`, kill that run with SIGKILL once it
wrote a checkpoint, resume again, and compare with an uninterrupted run: the final history.json
(timing fields excluded), the selection state, the model weights and the CSV metrics (every row once).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from lead_lightning.app.resume import (
    CHECKPOINT_DIR,
    LoggerResume,
    ResumableCSVLogger,
    checkpoint_callbacks,
    find_checkpoint,
    resolve_resume,
    wandb_run_id,
)
from lead_lightning.app.runtime import RUN_MARKER, RunDirGuard, claim_run_dir
from lead_lightning.signals import link_last

RANK_ENV = ("LOCAL_RANK", "NODE_RANK", "RANK")


@pytest.fixture
def rank0(monkeypatch):  # noqa: ANN001, ANN201
    for k in RANK_ENV:
        monkeypatch.delenv(k, raising=False)


def _ckpt(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    return path


# ----------------------------------------------------------------------------- which checkpoint
def test_find_checkpoint_prefers_last_then_the_newest_complete_file(tmp_path):  # noqa: ANN001
    d = tmp_path / CHECKPOINT_DIR
    assert find_checkpoint(tmp_path) is None
    old = _ckpt(d / "round-epoch=0-step=3.ckpt", 3)
    new = _ckpt(d / "round-epoch=1-step=6.ckpt", 6)
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    assert find_checkpoint(tmp_path) == new  # no last.ckpt: the newest complete file
    link_last(old)
    assert find_checkpoint(tmp_path) == old.resolve()  # last.ckpt names the newest state
    old.unlink()  # killed between removing the old file and relinking: last.ckpt dangles
    assert find_checkpoint(tmp_path) == new
    (d / "step-epoch=1-step=7.ckpt").write_bytes(new.read_bytes()[:100])  # cut short while written
    assert find_checkpoint(tmp_path) == new


def test_resolve_resume(tmp_path, caplog):  # noqa: ANN001
    assert resolve_resume(None, tmp_path) is None
    with caplog.at_level(logging.WARNING, logger="lead_lightning.app.resume"):
        assert resolve_resume("auto", tmp_path) is None  # stopped before its first checkpoint
    assert "no checkpoint in" in caplog.text and "starting from round 0" in caplog.text
    (tmp_path / "history.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds a run's history.json but no checkpoint.*HINT"):
        resolve_resume("auto", tmp_path)
    ckpt = _ckpt(tmp_path / CHECKPOINT_DIR / "round-epoch=0-step=3.ckpt", 3)
    assert resolve_resume("auto", tmp_path) == ckpt
    assert resolve_resume(str(ckpt), tmp_path / "elsewhere") == ckpt
    with pytest.raises(FileNotFoundError, match=r"`resume=.*nope.ckpt`: no such checkpoint file\. HINT"):
        resolve_resume(str(tmp_path / "nope.ckpt"), tmp_path)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:50])
    with pytest.raises(ValueError, match="is not a complete checkpoint"):
        resolve_resume(str(cut), tmp_path)


def test_checkpoint_callbacks_write_round_ends_and_every_n_steps(tmp_path):  # noqa: ANN001
    (rounds,) = checkpoint_callbacks(tmp_path)
    assert rounds.dirpath == str((tmp_path / CHECKPOINT_DIR).resolve()) and rounds.save_last == "link"
    both = checkpoint_callbacks(tmp_path, every_n_steps=5)
    assert [cb._every_n_train_steps for cb in both] == [0, 5]
    assert len({cb.state_key for cb in both}) == 2
    with pytest.raises(ValueError, match="`checkpoint.every_n_steps` must be an int >= 0, got -1"):
        checkpoint_callbacks(tmp_path, every_n_steps=-1)


# ----------------------------------------------------------------------------- loggers
def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path, rank0):  # noqa: ANN001
    lg = ResumableCSVLogger(tmp_path, name="csv", version="")
    for step in range(3):
        lg.log_metrics({"a": float(step)}, step=step)
    state = LoggerResume([lg]).state_dict()  # a checkpoint: flushed and counted
    assert state == {"csv_rows": [3]}
    lg.log_metrics({"a": 3.0, "b": 1.0}, step=3)  # logged after the checkpoint, then killed
    lg.save()
    assert len(_rows(tmp_path / "csv" / "metrics.csv")) == 4

    resumed = ResumableCSVLogger(tmp_path, name="csv", version="")
    resumed.log_hyperparams({"x": 1})  # the app logs its config first: the file must survive that
    LoggerResume([resumed]).load_state_dict(state)
    resumed.log_metrics({"a": 3.0, "c": 2.0}, step=3)  # the same step again, with a new column
    resumed.finalize("success")
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]  # every row once
    assert rows[3]["c"] == "2.0" and rows[3]["b"] == "" and rows[0]["a"] == "0.0"


def test_wandb_loggers_keep_their_run_id_and_resume(tmp_path, monkeypatch):  # noqa: ANN001
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import WandbLogger

    from lead_lightning.app.runtime import make_loggers

    cfg = OmegaConf.create(
        {
            "paths": {"output_dir": str(tmp_path)},
            "logger": {
                "csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(tmp_path)},
                "wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "save_dir": str(tmp_path)},
            },
        }
    )
    first, again = make_loggers(cfg), make_loggers(cfg)  # a run, and the same run resumed
    assert isinstance(first[0], ResumableCSVLogger) and isinstance(first[1], WandbLogger)
    run_id = wandb_run_id(tmp_path)
    for wb in (first[1], again[1]):
        assert wb._wandb_init["id"] == run_id and wb._wandb_init["resume"] == "allow"


# ----------------------------------------------------------------------------- the run directory guard
def _guard_cfg(run_dir: Path, resume: str | None) -> Any:
    return OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}}, "resume": resume})


def test_resume_auto_needs_a_run_to_continue(tmp_path, rank0):  # noqa: ANN001
    with pytest.raises(SystemExit, match=r"holds no lead-train run to continue.*HINT.*hydra.run.dir"):
        RunDirGuard().on_run_start(config=_guard_cfg(tmp_path / "new", "auto"))
    assert not (tmp_path / "new").exists()


def test_resume_auto_refuses_a_run_that_is_still_running(tmp_path, rank0):  # noqa: ANN001
    claim_run_dir(tmp_path, key="hydra.run.dir")  # this process's own claim: its pid is alive
    marker = json.loads((tmp_path / RUN_MARKER).read_text())
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # lead_lightning"])
    cmdline = Path(f"/proc/{live.pid}/cmdline")
    for _ in range(200):  # a loaded machine may not have exec'd the child yet: wait for its command line
        if not cmdline.exists() or b"lead" in cmdline.read_bytes():
            break
        time.sleep(0.05)
    try:
        (tmp_path / RUN_MARKER).write_text(json.dumps({**marker, "pid": live.pid}))
        with pytest.raises(SystemExit, match=rf"still running \(pid {live.pid}"):
            RunDirGuard().on_run_start(config=_guard_cfg(tmp_path, "auto"))
    finally:
        live.kill()
        live.wait()
    RunDirGuard().on_run_start(config=_guard_cfg(tmp_path, "auto"))  # it ended: the run continues
    after = json.loads((tmp_path / RUN_MARKER).read_text())
    assert after["pid"] == os.getpid() and after["run_id"] == marker["run_id"] and len(after["resumed"]) == 1


def test_resume_from_a_file_outside_the_run_dir_claims_a_new_directory(tmp_path, rank0):  # noqa: ANN001
    ckpt = _ckpt(tmp_path / "old" / CHECKPOINT_DIR / "last-run.ckpt", 3)
    RunDirGuard().on_run_start(config=_guard_cfg(tmp_path / "new", str(ckpt)))
    assert (tmp_path / "new" / RUN_MARKER).exists()  # a run of its own, starting from that checkpoint
    (tmp_path / "old" / "history.json").write_text("{}")
    RunDirGuard().on_run_start(config=_guard_cfg(tmp_path / "old", str(ckpt)))  # in place: continues


# ----------------------------------------------------------------------------- killed runs resume exactly
def _tiny() -> list[str]:
    from lead_lightning.app.schema import TrainConfig

    compare = ["compare_with=null"] if "compare_with" in TrainConfig.__dataclass_fields__ else []
    return [
        "data.records.pool_size=240",
        "data.records.val_size=32",
        "data.module.max_length=64",
        "data.module.eval_batch_size=128",
        "data.module.batch_size=2",  # 3 steps per round
        "model.tokenizer.vocab_size=300",
        "model.net.hidden_size=32",
        "rounds=3",
        "checkpoint.every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "report.plots=false",
        *compare,
    ]


_CACHE: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _one_score_cache(tmp_path_factory):  # noqa: ANN001, ANN202
    """Every run of this module shares one score cache: the pool is scored once."""
    _CACHE["dir"] = str(tmp_path_factory.mktemp("score_cache"))


def _start(run_dir: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lead_lightning.train", *_tiny(), *extra, f"hydra.run.dir={run_dir}"]
    log = open(f"{run_dir}.log", "a")  # noqa: SIM115 - the child writes it
    env = {**os.environ, "LEAD_CACHE_DIR": _CACHE["dir"]}
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=run_dir.parent, env=env
    )


def _finish(proc: subprocess.Popen, run_dir: Path) -> int:
    """Wait for rank 0, then until no process of its group (the ranks it launched) is left."""
    rc = proc.wait(timeout=600)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return rc
        time.sleep(0.05)
    raise AssertionError(f"a rank of {run_dir} is still running")


def _wait_for(proc: subprocess.Popen, run_dir: Path, ready: Any, what: str) -> None:
    deadline = time.monotonic() + 600
    while not ready():
        assert proc.poll() is None, (
            f"{run_dir} ended before {what}:\n{Path(f'{run_dir}.log').read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, f"{run_dir}: no {what} in 600 s"
        time.sleep(0.01)


def _last_name(run_dir: Path) -> str:
    last = run_dir / CHECKPOINT_DIR / "last.ckpt"
    try:
        return os.readlink(last)
    except OSError:
        return ""


def _comparable(x: Any) -> Any:
    """``x`` without timing fields (``*_s``), tensors as lists."""
    if isinstance(x, dict):
        return {k: _comparable(v) for k, v in x.items() if not str(k).endswith("_s")}
    if isinstance(x, list | tuple):
        return [_comparable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return (str(x.dtype), x.tolist())
    return x


def _outcome(run_dir: Path) -> dict[str, Any]:
    ckpt = torch.load(run_dir / CHECKPOINT_DIR / "last.ckpt", weights_only=True)
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("LeadSelectionCallback")]
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        rows = [
            (r["step"], r.get("lead/round"), r.get("val/loss"), r.get("train/loss"))
            for r in csv.DictReader(f)
        ]
    return {
        "history": _comparable(json.loads((run_dir / "history.json").read_text())),
        "selection": _comparable(ckpt["callbacks"][key]),
        "weights": _comparable(ckpt["state_dict"]),
        "csv": rows,
    }


@pytest.fixture(scope="module", params=["single", pytest.param("ddp", marks=pytest.mark.ddp)])
def uninterrupted(request, tmp_path_factory):  # noqa: ANN001, ANN201
    extra = ["trainer=ddp"] if request.param == "ddp" else []
    run_dir = tmp_path_factory.mktemp(f"ref_{request.param}") / "run"
    assert _finish(_start(run_dir, extra), run_dir) == 0, Path(f"{run_dir}.log").read_text()[-3000:]
    return extra, _outcome(run_dir)


@pytest.mark.slow
def test_a_stopped_then_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):  # noqa: ANN001
    """SIGTERM once training runs (every rank stops, exit 143, a checkpoint at that step); resume=auto;
    SIGKILL (the whole process group) at its next mid-round checkpoint; resume=auto again; compare."""
    extra, reference = uninterrupted
    ranks = 2 if extra else 1
    run_dir = tmp_path / "run"

    proc = _start(run_dir, extra)
    _wait_for(proc, run_dir, lambda: _last_name(run_dir) != "", "checkpoint")
    os.killpg(proc.pid, signal.SIGTERM)
    assert _finish(proc, run_dir) == 143
    logs = [run_dir / "train.log", *(run_dir / f"train_ddp_process_{r}.log" for r in range(1, ranks))]
    for rank, log in enumerate(logs):
        assert f"[rank {rank}] SIGTERM: stopped at epoch" in log.read_text(), log
    stopped = find_checkpoint(run_dir)
    assert stopped is not None and stopped.name.startswith("stop-") and _last_name(run_dir) == stopped.name
    stop_step = torch.load(stopped, weights_only=True)["global_step"]
    assert stop_step < 9  # 3 rounds of 3 steps: not done

    def mid_round_after_the_stop() -> bool:  # a step checkpoint (never written at a round's last step)
        m = re.fullmatch(r"step-epoch=\d+-step=(\d+)\.ckpt", _last_name(run_dir))
        return m is not None and int(m.group(1)) > stop_step

    proc = _start(run_dir, [*extra, "resume=auto"])
    _wait_for(proc, run_dir, mid_round_after_the_stop, "a mid-round checkpoint after the stop")
    os.killpg(proc.pid, signal.SIGKILL)
    _finish(proc, run_dir)
    saved = run_dir / "history.json"  # written at every round end (none yet if killed in round 0)
    assert len(json.loads(saved.read_text())["history"]) < 3 if saved.exists() else stop_step < 3

    proc = _start(run_dir, [*extra, "resume=auto"])
    assert _finish(proc, run_dir) == 0, Path(f"{run_dir}.log").read_text()[-3000:]
    outcome = _outcome(run_dir)
    for key in ("history", "selection", "weights", "csv"):
        assert outcome[key] == reference[key], key
    assert len(json.loads((run_dir / RUN_MARKER).read_text())["resumed"]) == 2
