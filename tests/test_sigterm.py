"""SIGTERM: `GracefulStop` stops fit and predict at the next batch boundary, leaving resumable state.

In-process tests send the signal to this process from a callback at a chosen batch, so where it
lands is deterministic; the subprocess tests stop `lead-score` (one process and two DDP ranks) with
SIGTERM sent to the process group once it has written shards (`lead-train`'s are in
tests/test_resume_app.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from _toy import ToyDataModule, ToyDataset, ToyModule, make_trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lead_lightning import LeadSelectionCallback
from lead_lightning.signals import LAST_CHECKPOINT, GracefulStop, StoppedBySignal

EPOCHS = 3


class SignalAt(pl.Callback):
    """Sends SIGTERM to this process at the end of training (or predict) batch ``at`` (a global count)."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def _tick(self) -> None:
        if self.seen == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.seen += 1

    def on_train_batch_end(self, *args: Any) -> None:
        self._tick()

    def on_predict_batch_end(self, *args: Any) -> None:
        self._tick()


def _fit(tmp_path: Path, signal_at: int | None = None, ckpt_path: Path | None = None) -> tuple[Any, Any]:
    pl.seed_everything(0)
    ds = ToyDataset(n=80)
    lead = LeadSelectionCallback(ds.pool(), budget=0.5, sample_rate=0.5, seed=3)
    callbacks: list[pl.Callback] = [lead]
    if signal_at is not None:
        callbacks.append(SignalAt(signal_at))
    callbacks.append(GracefulStop(tmp_path / "checkpoints"))
    module = ToyModule()
    trainer = make_trainer(tmp_path, callbacks, max_epochs=EPOCHS)
    trainer.fit(module, ToyDataModule(ds, batch_size=2), ckpt_path=ckpt_path)
    return lead, module


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):  # noqa: ANN001, ANN201
    return _fit(tmp_path_factory.mktemp("ref"))


def _same(a: Any, b: Any) -> None:
    (lead_a, mod_a), (lead_b, mod_b) = a, b
    strip = [{k: v for k, v in h.items() if k != "round_time_s"} for h in lead_a.history]
    assert strip == [{k: v for k, v in h.items() if k != "round_time_s"} for h in lead_b.history]
    assert torch.equal(lead_a.state.idu, lead_b.state.idu) and torch.equal(
        lead_a.state.uses, lead_b.state.uses
    )
    assert torch.equal(mod_a.net.weight, mod_b.net.weight)


@pytest.mark.parametrize("at", [2, 9], ids=["mid_round", "last_batch_of_round_1"])
def test_sigterm_in_fit_checkpoints_exits_143_and_resumes_exactly(at, uninterrupted, tmp_path):  # noqa: ANN001
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StoppedBySignal) as info:
        _fit(tmp_path, signal_at=at)
    assert info.value.code == 143 and info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is given back
    ckpt = info.value.checkpoint
    assert ckpt is not None and (tmp_path / "checkpoints" / LAST_CHECKPOINT).resolve() == ckpt.resolve()
    saved = torch.load(ckpt, weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("LeadSelectionCallback"))
    if at == 2:  # stopped after the step it was signalled in, mid-round
        assert saved["global_step"] == 3 and state["mid_round"]
    else:  # the round's last step: stopped at the round end instead (after the round closed)
        assert saved["global_step"] == 10 and not state["mid_round"] and state["selection"]["round"] == 2
    _same(_fit(tmp_path / "resumed", ckpt_path=ckpt), uninterrupted)


def test_graceful_stop_validates_signals():
    with pytest.raises(ValueError, match="`signals` must be catchable signal numbers"):
        GracefulStop(signals=[signal.SIGKILL])
    with pytest.raises(ValueError, match="`signals` must be catchable"):
        GracefulStop(signals=[])


class _Writer(BasePredictionWriter):
    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.written: list[int] = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):  # noqa: ANN001, ANN201, D102, E501
        self.written.append(batch_idx)


class _Predictor(pl.LightningModule):
    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return batch


def test_sigterm_in_predict_stops_after_the_written_batch():
    writer = _Writer()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[writer, SignalAt(3), GracefulStop()],
    )
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StoppedBySignal) as info:
        trainer.predict(_Predictor(), torch.utils.data.DataLoader(torch.arange(40), batch_size=4))
    assert info.value.code == 143 and writer.written == [0, 1, 2, 3]  # its batch was written first
    assert signal.getsignal(signal.SIGTERM) == before


def test_lead_score_never_leaves_with_status_0_after_lightnings_own_sigterm(monkeypatch, tmp_path):  # noqa: ANN001
    from lead_lightning.scoring import cli

    def stopped(argv: Any) -> None:
        raise SIGTERMException  # Lightning's, status None (= 0)

    monkeypatch.setattr(cli, "run", stopped)
    with pytest.raises(SystemExit) as info:
        cli.main(["--out", str(tmp_path / "pool.parquet"), "--shard-dir", str(tmp_path / "shards")])
    assert info.value.code == 143


# ----------------------------------------------------------------------------- lead-score subprocesses
def _group_gone(pgid: int, timeout: float = 120.0) -> bool:
    """Poll until no process of the group is left (rank 0 and the ranks it launched)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.ddp
def test_lead_score_stops_on_sigterm_on_every_rank_and_the_same_command_resumes(tmp_path):  # noqa: ANN001
    """Two DDP ranks (one process is covered in-process above: predict stops after the written batch)."""
    devices = 2
    shards, out = tmp_path / "shards", tmp_path / "pool.parquet"
    cmd = [sys.executable, "-m", "lead_lightning.scoring.cli", "--pool-size", "160", "--batch-size", "2"]
    cmd += ["--out", str(out), "--shard-dir", str(shards), "--devices", str(devices), "--accelerator", "cpu"]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not all(list(shards.glob(f"rank{r}_*.pt")) for r in range(devices)):  # every rank is predicting
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no shards written in 300 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: every process of the job
    assert proc.wait(timeout=300) == 143
    assert _group_gone(proc.pid), "a rank is still running"
    text = (tmp_path / "first.log").read_text()
    for rank in range(devices):
        assert f"[rank {rank}] SIGTERM: predict stopped after a batch" in text
    assert "run the same command again to score the rest" in text
    kept = {p: p.stat().st_mtime_ns for p in shards.glob("*.pt")}
    assert devices <= len(kept) < 80  # stopped long before the 80 batches were done
    assert not out.exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "wrote" in again.stdout and "160 examples" in again.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # kept, not scored again
    assert len(list(shards.glob("*.pt"))) > len(kept)
