"""Run by tests/test_ddp.py: LEAD under `strategy="ddp"` on CPU processes (gloo).

Lightning relaunches this script for the other ranks, so it parses its arguments only under
`__main__`; `LEAD_DDP_WORLD` (default 2) sets the number of processes. Each rank writes what it saw
to `<out>/rank<r>.json`; ranks above 0 see deliberately different losses.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).parent))
from _toy import ToyDataModule, ToyDataset, ToyModule, all_method_options  # noqa: E402

from lead_lightning import LeadSelectionCallback  # noqa: E402


def state_hash(cb: LeadSelectionCallback) -> str:
    h = hashlib.sha256()
    for t in (
        cb.state.idu,
        cb.state.uses,
        cb.bandit.probabilities(),
        cb.selector.sketch_start,
        cb.selector.coef,
    ):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([{k: v for k, v in e.items() if k != "round_time_s"} for e in cb.history]).encode())
    return h.hexdigest()


class RankSkewedModule(ToyModule):
    """Rank r > 0 reports larger losses (rank 1: 3 L + 1), so ranks hold different local values."""

    def training_step(self, batch, batch_idx):  # noqa: ANN001
        out = super().training_step(batch, batch_idx)
        r = self.global_rank
        if r:
            out["per_example_loss"] = out["per_example_loss"] * (2.0 * r + 1.0) + float(r)
        return out


class Spy(pl.Callback):
    def __init__(self, lead: LeadSelectionCallback) -> None:
        self.lead = lead
        self.rounds: list[dict] = []

    def on_train_epoch_start(self, trainer, pl_module):  # noqa: ANN001
        self.rounds.append({"subset": self.lead.current_subset().tolist(), "trained": []})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        if not self.rounds:  # resumed mid-round: on_train_epoch_start is not called again
            self.rounds.append({"subset": self.lead.current_subset().tolist(), "trained": []})
        self.rounds[-1]["trained"].extend(batch["ids"].tolist())

    def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001
        self.rounds[-1]["hash"] = state_hash(self.lead)
        self.rounds[-1]["clusters"] = sorted(
            {int(c) for c in self.lead.pool.clusters[self.rounds[-1]["subset"]]}
        )
        self.rounds[-1]["uses_sum"] = int(self.lead.state.uses.sum())


def main(out: Path, mode: str = "agree", ckpt: str | None = None) -> None:
    """`agree`: 5 rounds, report per round. `save`: also write step checkpoints. `resume`: from `ckpt`."""
    pl.seed_everything(0)
    ds = ToyDataset(n=200)
    settings = {"budget": 0.6, "sample_rate": 13, "seed": 11}
    if os.environ.get("LEAD_DDP_SETTING") == "options":  # every method option beyond the paper at once
        settings |= all_method_options(5)
    cb = LeadSelectionCallback(ds.pool(), **settings)
    spy = Spy(cb)
    callbacks: list[pl.Callback] = [cb, spy]
    if mode == "save":
        callbacks.append(
            ModelCheckpoint(
                out / "ckpt",
                filename="{step}",
                every_n_train_steps=5,
                save_top_k=-1,
                save_on_train_epoch_end=False,
            )
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=int(os.environ.get("LEAD_DDP_WORLD", "2")),
        strategy="ddp",
        max_epochs=5,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=mode == "save",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
    )
    trainer.fit(RankSkewedModule(), ToyDataModule(ds, batch_size=4), ckpt_path=ckpt)
    rank = trainer.global_rank
    result = {"rank": rank, "rounds": spy.rounds, "final_hash": state_hash(cb)}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    trainer.strategy.barrier()
    # Tear the process group down before the interpreter exits, then leave without running the
    # interpreter's finalisers: a gloo process group torn down during interpreter shutdown
    # intermittently aborts (exit code 134) after the work is done.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
