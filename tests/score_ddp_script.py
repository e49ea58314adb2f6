"""Run by tests/test_scoring.py: `score_pool` under `strategy="ddp"` on 2 CPU processes (gloo).

Lightning relaunches this script for rank 1, so arguments are parsed only under `__main__` and
everything the ranks build (pool, tokenizer, model) is deterministic. Each rank writes its merged
scores to `<out>/merged_rank<r>.pt` and what it did to `<out>/rank<r>.json`; shards go to
`<out>/shards`.

Usage: python tests/score_ddp_script.py OUT_DIR [POOL_SIZE]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from lead_lightning.data import InstructionDataModule, generate_pool
from lead_lightning.models import CausalLMModule, tiny_causal_lm, train_bpe_tokenizer
from lead_lightning.scoring import ScoringModule, score_pool

POOL_SIZE = 51  # odd: the two ranks get different numbers of examples


def build(n: int = POOL_SIZE, seed: int = 0) -> tuple[CausalLMModule, InstructionDataModule]:
    """The tiny model and the datamodule both the DDP run and the single-process reference score."""
    records = generate_pool(n, seed=seed)
    texts = [r.prompt for r in records] + [r.response for r in records]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    lm = CausalLMModule(tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, seed=seed))
    dm = InstructionDataModule(records, tokenizer, max_length=96, batch_size=4, eval_batch_size=4)
    return lm.eval(), dm


def main(out: Path, n: int = POOL_SIZE) -> None:
    lm, dm = build(n)
    module = ScoringModule(lm)
    trainer_kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "enable_progress_bar": False,
    }
    scores = score_pool(module, dm, trainer_kwargs, shard_dir=out / "shards")
    rank = torch.distributed.get_rank()
    torch.save(scores, out / f"merged_rank{rank}.pt")
    info = {
        "rank": rank,
        "world_size": torch.distributed.get_world_size(),
        "examples_seen": module.examples_seen,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    torch.distributed.barrier()
    # Tear the process group down, then leave without the interpreter's finalisers: a gloo group torn
    # down during interpreter shutdown intermittently aborts (exit code 134) after the work is done.
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:]))
