"""`lead-score`: score a pool offline, cluster it, write the pool index file.

Run: ``python -m lead_lightning.scoring.cli --help``. Without ``--records`` it scores a generated pool
with a tiny local model (a smoke run, nothing downloaded).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from lead_lightning.scoring.cluster import cluster_embeddings, cluster_ifd, cluster_labels
from lead_lightning.scoring.index import write_pool_index
from lead_lightning.scoring.scorer import ScoringModule, score_pool

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="LEAD offline stage: iu0 / IFD scoring, clustering, pool index.")
    ap.add_argument("--records", help="pool file (or BBH directory); default: a generated pool")
    ap.add_argument("--format", default="alpaca", help="reader for --records (alpaca, chat, gsm8k, bbh)")
    ap.add_argument("--pool-size", type=int, default=200, help="size of the generated pool (no --records)")
    ap.add_argument("--model", help="local Hugging Face model directory; default: a tiny random Llama")
    ap.add_argument("--out", required=True, help="pool index parquet file to write")
    ap.add_argument("--shard-dir", help="per-batch shards (resumable; needed for --devices > 1)")
    ap.add_argument("--clusters", choices=("ifd", "embedding", "label"), default="ifd")
    ap.add_argument("--k", type=int, default=7, help="clusters for ifd/embedding k-means")
    ap.add_argument("--groups", choices=("label", "none"), default="label", help="groups: record.group or one")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--template", default="tulu")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Score, cluster and write the pool index; returns the path, scores and clusters."""
    args = _parser().parse_args(argv)
    from lead_lightning.data import InstructionDataModule, generate_pool, read_records
    from lead_lightning.models import load_causal_lm, load_tokenizer, tiny_causal_lm, train_bpe_tokenizer

    if args.records:
        records = read_records(args.records, format=args.format)
    else:
        records = generate_pool(args.pool_size, seed=args.seed)
    if args.model:
        tokenizer = load_tokenizer(args.model)  # local directory only: nothing is downloaded
        model = load_causal_lm(args.model)
    else:
        tokenizer = train_bpe_tokenizer([r.prompt + " " + r.response for r in records], vocab_size=512)
        model = tiny_causal_lm(len(tokenizer), hidden_size=64, num_layers=2, num_heads=4, seed=args.seed)
    dm = InstructionDataModule(
        records, tokenizer, template=args.template, max_length=args.max_length,
        batch_size=args.batch_size, eval_batch_size=args.batch_size,
    )
    trainer_kwargs: dict[str, Any] = {"accelerator": args.accelerator, "devices": args.devices}
    if args.devices > 1:
        trainer_kwargs["strategy"] = "ddp"
    module = ScoringModule(model, embed=args.clusters == "embedding")
    scores = score_pool(module, dm, trainer_kwargs, shard_dir=args.shard_dir)

    if args.clusters == "ifd":
        ifd = scores["ifd"]
        if not torch.isfinite(ifd).all():
            raise ValueError(
                f"{int((~torch.isfinite(ifd)).sum())} example(s) have a non-finite IFD; use --clusters label."
            )
        clusters = cluster_ifd(ifd, k=args.k, seed=args.seed)
    elif args.clusters == "embedding":
        clusters = cluster_embeddings(scores["embedding"], k=args.k, seed=args.seed)
    else:
        clusters = cluster_labels([r.group for r in records])
    groups = [r.group for r in records] if args.groups == "label" else None
    path = write_pool_index(args.out, scores, clusters, groups)
    torch.save(scores, Path(path).with_suffix(".scores.pt"))
    n_flag = int(scores["ifd_flag"].sum())
    print(f"wrote {path}: {len(records)} examples, {int(clusters.max()) + 1} clusters, {n_flag} IFD flagged")
    return {"path": path, "scores": scores, "clusters": clusters}


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``lead-score``."""
    run(argv)


if __name__ == "__main__":
    main()
