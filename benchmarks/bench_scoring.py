"""Throughput of offline scoring: ``score_pool`` (one ``Trainer.predict`` pass) vs a bare loop.

Rerun: python benchmarks/bench_scoring.py [--pool 2000] [--repeats 5] [--batch-size 16] [--threads N]
       [--accelerator cpu|gpu|auto] [--no-progress-bar]

Both arms run the same two forward passes per batch over the same length-bucketed predict dataloader
of a generated pool with a tiny Llama (hidden 128, 4 layers): the prompt+response sequence and the
response alone. "bare" is a plain loop, ``model(input_ids=..., attention_mask=..., use_cache=False)``
twice per batch under ``torch.inference_mode()`` (no loss, nothing kept). "score_pool" is the whole
offline call: a ``Trainer`` built, ``predict`` with the ``ScoringModule`` (which also reduces both
passes to per-example losses, IFD, flags and moves them to the CPU), the default progress bar, and
the merge by id. Runs are interleaved (bare, score_pool, score_pool, bare, ...) after one untimed
warm-up run of each, so drifts in machine load hit both; the table gives median examples/s, by wall
clock and per CPU second of this process (``time.process_time``; steadier on a shared machine, use
it with ``--threads 1``).

Measured once (x86_64 CPU, 2 cores shared with other jobs, ``--threads 1``, torch 2.13, lightning
2.6.6, 2000 examples, batch 16, 5 interleaved repeats, progress bar on):

    arm          median ex/s  median ex/CPU-s   runs (ex/s, wall clock)
    bare               527.7            791.2   343.3, 527.7, 468.9, 600.7, 588.8
    score_pool         495.9            724.7   490.8, 468.4, 588.9, 519.9, 495.9
    score_pool / bare = 0.940 wall clock, 0.916 per CPU second

Under cProfile the forwards are ~86% of ``score_pool``'s time; most of the gap is the per-example
loss reduction of both passes (~3%), the rest Lightning's per-batch hooks and the progress bar.

Target (issue 4): score_pool >= 90% of the bare loop's examples/s.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import lightning.pytorch as pl
import torch

from lead_lightning.data import InstructionDataModule, generate_pool
from lead_lightning.models import tiny_causal_lm, train_bpe_tokenizer
from lead_lightning.scoring import ScoringModule, score_pool


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model: torch.nn.Module, dm: InstructionDataModule, device: torch.device) -> int:
    """The two forwards of scoring, nothing else; returns the number of examples seen."""
    n = 0
    model.eval()
    with torch.inference_mode():
        for batch in dm.predict_dataloader():
            model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            )
            model(
                input_ids=batch["ro_input_ids"].to(device),
                attention_mask=batch["ro_attention_mask"].to(device),
                use_cache=False,
            )
            n += len(batch["ids"])
    _sync(device)
    return n


def lightning_scoring(
    module: ScoringModule, dm: InstructionDataModule, accelerator: str, progress_bar: bool
) -> int:
    scores = score_pool(
        module,
        dm,
        {"accelerator": accelerator, "devices": 1, "enable_progress_bar": progress_bar},
    )
    return len(scores["ids"])


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto")
    ap.add_argument("--no-progress-bar", action="store_true", help="score_pool without its progress bar")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    records = generate_pool(args.pool, seed=0)
    tokenizer = train_bpe_tokenizer(
        [r.prompt for r in records] + [r.response for r in records], vocab_size=512
    )
    model = tiny_causal_lm(len(tokenizer), hidden_size=128, num_layers=4, num_heads=4, seed=0).eval()
    dm = InstructionDataModule(
        records,
        tokenizer,
        max_length=args.max_length,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
    )
    dm.setup("predict")
    module = ScoringModule(model)
    # where Lightning will put the model: the bare loop runs on the same device
    probe = pl.Trainer(accelerator=args.accelerator, devices=1, logger=False)
    device = probe.strategy.root_device
    model.to(device)

    arms: dict[str, Callable[[], int]] = {
        "bare": lambda: bare_loop(model, dm, device),
        "score_pool": lambda: lightning_scoring(module, dm, args.accelerator, not args.no_progress_bar),
    }
    for fn in arms.values():  # untimed warm-up: first-call allocations, lazy imports
        fn()
    rates: dict[str, list[float]] = {name: [] for name in arms}
    cpu_rates: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.repeats):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            model.to(device)  # Lightning may have moved it back to the CPU after predict
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            n = arms[name]()
            rates[name].append(n / (time.perf_counter() - t0))
            cpu_rates[name].append(n / (time.process_time() - c0))

    med = {name: statistics.median(v) for name, v in rates.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpu_rates.items()}
    print(
        f"\n{platform.processor() or platform.machine()}, device {device}, torch {torch.__version__},"
        f" lightning {pl.__version__}, threads {torch.get_num_threads()}, pool {args.pool},"
        f" batch {args.batch_size}, repeats {args.repeats},"
        f" progress bar {'off' if args.no_progress_bar else 'on'}"
    )
    print(f"{'arm':<12}{'median ex/s':>12}{'median ex/CPU-s':>17}   runs (ex/s, wall clock)")
    for name, v in rates.items():
        print(f"{name:<12}{med[name]:>12.1f}{cpu_med[name]:>17.1f}   {', '.join(f'{x:.1f}' for x in v)}")
    ratio = med["score_pool"] / med["bare"]
    cpu_ratio = cpu_med["score_pool"] / cpu_med["bare"]
    print(
        f"score_pool / bare = {ratio:.3f} wall clock, {cpu_ratio:.3f} per CPU second"
        f"  (target >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'})"
    )
    return rates


if __name__ == "__main__":
    main()
