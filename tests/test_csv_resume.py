"""A resumed ``metrics.csv`` holds every row once, whichever step the checkpoint was taken at.

Lightning logs a step's metrics after the callbacks' ``on_train_batch_end``, where step checkpoints
are written; a checkpoint taken at a logging step must count the row that step is about to log
(found as a 1-in-4 flake of the SIGKILL resume test: the resumed run lost that step's train/loss).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lead_lightning.app.resume import LoggerResume, ResumableCSVLogger


class _Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = ((self.lin(x).squeeze(-1) - y) ** 2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(root: Path, ckpt: Path | None = None) -> list[tuple[int, str]]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(12, 4), torch.randn(12))
    logger = ResumableCSVLogger(save_dir=str(root), name="csv", version="")
    steps = ModelCheckpoint(
        dirpath=root / "ckpt",
        filename="{step}",
        every_n_train_steps=1,
        save_top_k=-1,
        enable_version_counter=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=logger,
        callbacks=[LoggerResume([logger]), steps],
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(1)
    trainer.fit(_Net(), DataLoader(data, batch_size=2), ckpt_path=ckpt)
    with (root / "csv" / "metrics.csv").open(newline="") as f:
        return [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("step", [1, 2, 3, 4])  # checkpoints at logging steps (2, 4) and between them
def test_resume_from_any_step_checkpoint_keeps_every_row_once(tmp_path, step):  # noqa: ANN001
    reference = _fit(tmp_path / "ref")
    assert [s for s, _ in reference] == [1, 3, 5, 7, 9, 11]  # a row every 2nd step, logged at step s + 1
    # a run killed after step `step`: its directory holds the whole file (rows past the checkpoint too)
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "ref", run)
    resumed = _fit(run, run / "ckpt" / f"step={step}.ckpt")
    assert [s for s, _ in resumed] == [s for s, _ in reference]  # every row, once
    kept = [r for r in reference if r[0] + 1 <= step]  # rows logged up to the checkpoint are the killed run's
    assert resumed[: len(kept)] == kept
