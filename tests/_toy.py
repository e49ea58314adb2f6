"""A tiny deterministic regression task that follows the LEAD batch contract (ids + per_example_loss)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import Dataset

from lead_lightning import PoolIndex


class ToyDataset(Dataset):
    def __init__(self, n: int = 240, dim: int = 8, clusters: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.randn(dim, generator=g)
        self.cluster = torch.arange(n) % clusters
        noise = torch.randn(n, generator=g) * (0.1 + self.cluster.float())
        self.y = self.x @ w + noise
        self.noise = noise
        self.group = (torch.arange(n) // clusters) % 2

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "ids": torch.tensor(i)}

    def pool(self) -> PoolIndex:
        iu0 = (self.y**2).float()  # the loss of a zero-initialised model
        # the irreducible loss (what the true weights leave): RHO-LOSS's reference loss
        ref = (self.noise**2).float()
        return PoolIndex(clusters=self.cluster, groups=self.group, iu0=iu0, ref_loss=ref)


class ToyModule(pl.LightningModule):
    def __init__(self, dim: int = 8, lr: float = 0.05, nan_ids: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = nn.Linear(dim, 1)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)
        self.lr = lr
        self.nan_ids = set(nan_ids)
        self.trained: list[list[int]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        pred = self.net(batch["x"]).squeeze(-1)
        per_ex = (pred - batch["y"]) ** 2
        self.trained.append(batch["ids"].tolist())
        if self.nan_ids:
            bad = torch.tensor([i in self.nan_ids for i in batch["ids"].tolist()])
            per_ex = torch.where(bad, torch.full_like(per_ex, float("nan")), per_ex)
            loss = per_ex[~bad].mean() if (~bad).any() else (pred * 0).sum()
        else:
            loss = per_ex.mean()
        return {"loss": loss, "per_example_loss": per_ex.detach()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class ToyDataModule(pl.LightningDataModule):
    def __init__(self, dataset: ToyDataset, batch_size: int = 8) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.train_sampler = None

    def set_train_sampler(self, sampler) -> None:  # noqa: ANN001
        self.train_sampler = sampler

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=self.train_sampler
        )


def make_trainer(tmp_path, callbacks, max_epochs: int = 4, **kw: Any) -> pl.Trainer:  # noqa: ANN001
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=kw.pop("devices", 1),
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def all_method_options(rounds: int) -> dict[str, Any]:
    """Every LEAD option beyond the paper at once (resume and DDP tests run them together)."""
    return {
        "allocation": "proportional",
        "bandit": "hedge",
        "bandit_eta": "horizon",
        "reward": "first_visit_gain",
        "reward_norm": "round",
        "reward_smoothing": 0.5,
        "pacing": True,
        "learnability": True,
        "utility": "reducible",
        "max_rounds": rounds,
    }
