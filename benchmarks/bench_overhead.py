"""Per-step overhead of LeadSelectionCallback on a small LoRA causal-LM training run.

Two arms over the same data, model and optimiser, interleaved (A, B, A, B, ...) so drifts in machine
load hit both: "plain" trains every pool example once per epoch from a shuffled DataLoader; "lead"
trains the same examples once per round through LeadSelectionCallback (sample_rate=1.0 on one
cluster, so the step count is identical) and pays for recording per-example losses, the round-end
merge, IDU update, bandit update, parameter sketch and redraw. Time is measured from the first
batch start to the end of the last ``on_train_epoch_end`` of each run (the callback's round-end work
included), per training step.

Two measures: the paired wall-time ratio of the arms (sensitive to load from other processes on a
shared 2-core machine), and the time spent inside LEAD itself (Lightning's SimpleProfiler around the
callback's hooks, which include the round close, plus the redraws) divided by the step time.

Rerun: python benchmarks/bench_overhead.py [--pool 512] [--epochs 3] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import SimpleProfiler

from lead_lightning import LeadSelectionCallback, PoolIndex
from lead_lightning.data import InstructionDataModule, generate_pool
from lead_lightning.models import CausalLMModule, LoraSettings, tiny_causal_lm, train_bpe_tokenizer


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.t0: float | None = None
        self.t1 = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        self.steps += 1

    def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001
        self.t1 = time.perf_counter()


def run(arm: str, records, tokenizer, epochs: int, seed: int) -> tuple[float, float]:  # noqa: ANN001
    """Returns (seconds per step, seconds per step spent inside LEAD: its hooks and its redraws)."""
    pl.seed_everything(seed, verbose=False)
    model = tiny_causal_lm(len(tokenizer), hidden_size=128, num_layers=4, num_heads=4, seed=seed)
    module = CausalLMModule(model, lora=LoraSettings(r=16, alpha=16, dropout=0.0), lr=1e-3)
    dm = InstructionDataModule(records, tokenizer, max_length=96, batch_size=8, seed=seed)
    timer = StepTimer()
    callbacks: list[pl.Callback] = []
    draw_time = [0.0]
    if arm == "lead":
        pool = PoolIndex(clusters=[0] * len(records), iu0=[1.0] * len(records))
        lead = LeadSelectionCallback(pool, budget=1.0, sample_rate=1.0, max_uses=255, seed=seed)
        draw = lead.selector.draw

        def timed_draw() -> torch.Tensor:
            t = time.perf_counter()
            out = draw()
            draw_time[0] += time.perf_counter() - t
            return out

        lead.selector.draw = timed_draw  # type: ignore[method-assign]
        callbacks.append(lead)
    callbacks.append(timer)  # last: its on_train_epoch_end runs after LEAD's round-end work
    profiler = SimpleProfiler()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        profiler=profiler,
    )
    trainer.fit(module, dm)
    assert timer.t0 is not None
    in_lead = draw_time[0] + sum(
        sum(d) for k, d in profiler.recorded_durations.items() if "LeadSelectionCallback" in k
    )
    return (timer.t1 - timer.t0) / timer.steps, in_lead / timer.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    records = generate_pool(args.pool, seed=0)
    tokenizer = train_bpe_tokenizer([r.prompt + " " + r.response for r in records], vocab_size=512)
    times: dict[str, list[float]] = {"plain": [], "lead": []}
    inside: list[float] = []
    for arm in ("plain", "lead"):  # warm-up, untimed: first-call costs (allocator, kernels) hit neither arm
        run(arm, records, tokenizer, 1, seed=0)
    for r in range(args.repeats):
        order = ("plain", "lead") if r % 2 == 0 else ("lead", "plain")
        for arm in order:
            per_step, in_lead = run(arm, records, tokenizer, args.epochs, seed=r)
            times[arm].append(per_step)
            if arm == "lead":
                inside.append(in_lead / per_step)
    ratios = [b / a for a, b in zip(times["plain"], times["lead"], strict=True)]
    print(
        f"machine: {platform.machine()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    print(
        f"pool {args.pool}, batch 8, {args.epochs} epochs/rounds per run, {args.repeats} interleaved repeats"
    )
    print(f"{'arm':>6} | {'median ms/step':>14} | {'min':>7} | {'max':>7}")
    for arm, ts in times.items():
        ms = [1000 * t for t in ts]
        print(f"{arm:>6} | {statistics.median(ms):>14.2f} | {min(ms):>7.2f} | {max(ms):>7.2f}")
    print(
        f"overhead (median of paired ratios lead/plain - 1): {100 * (statistics.median(ratios) - 1):+.2f}%"
        f"  (pairs: {', '.join(f'{100 * (x - 1):+.1f}%' for x in ratios)})"
    )
    print(
        f"time inside LEAD (its hooks incl. round close + redraws) / step time: median"
        f" {100 * statistics.median(inside):.2f}%, max {100 * max(inside):.2f}%"
    )
    print("target: <= 2%")
    print("rerun: python benchmarks/bench_overhead.py")


if __name__ == "__main__":
    main()
