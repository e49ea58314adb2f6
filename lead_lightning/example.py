"""`lead-example`: LEAD end to end on the embedded default (tiny LoRA causal LM, generated pool).

Everything is built locally (no download): a generated instruction pool with task families of
known difficulty and a planted noisy family, a byte-level BPE trained on it, a tiny Llama built
from config. The offline stage is the library's: :func:`~lead_lightning.scoring.score_pool` scores
every example's response loss under the base model (iu0, one ``Trainer.predict`` pass; the fresh
LoRA adapter changes nothing yet); clusters are the task families
(:func:`~lead_lightning.scoring.cluster_labels`). Then ``Trainer.fit`` runs LEAD rounds with
``LeadSelectionCallback`` and prints what each round selected.

Run: ``lead-example`` (or ``python -m lead_lightning.example --help``).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import lightning.pytorch as pl

from lead_lightning.callback import LeadSelectionCallback
from lead_lightning.data import InstructionDataModule, generate_pool
from lead_lightning.models import CausalLMModule, LoraSettings, tiny_causal_lm, train_bpe_tokenizer
from lead_lightning.scoring import build_pool_index, cluster_labels, score_pool


def run(argv: list[str] | None = None) -> dict:
    """Run the example; returns the round history and the family names."""
    ap = argparse.ArgumentParser(description="LEAD on a generated pool with a tiny LoRA causal LM (CPU).")
    ap.add_argument("--pool-size", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--budget", type=float, default=0.25, help="unique examples: fraction of the pool")
    ap.add_argument("--sample-rate", type=float, default=0.15, help="per round: fraction of each group")
    ap.add_argument("--bandit", default="exp3")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    pl.seed_everything(args.seed, verbose=False)
    records = generate_pool(args.pool_size, seed=args.seed)
    families = sorted({r.group for r in records})
    tokenizer = train_bpe_tokenizer([r.prompt + " " + r.response for r in records], vocab_size=512)
    model = tiny_causal_lm(len(tokenizer), hidden_size=64, num_layers=2, num_heads=4, seed=args.seed)
    module = CausalLMModule(model, lora=LoraSettings(r=8, alpha=16, dropout=0.0), lr=3e-3)
    dm = InstructionDataModule(records, tokenizer, max_length=96, batch_size=16, seed=args.seed)
    dm.setup("fit")

    scores = score_pool(module, dm, {"accelerator": "cpu", "devices": 1})
    pool = build_pool_index(scores, cluster_labels([r.group for r in records]))  # cluster k: families[k]
    iu0 = pool.iu0
    print(f"pool: {len(records)} examples, clusters = task families {families}")
    print(
        "mean iu0 per cluster:",
        {f: round(float(iu0[pool.clusters == k].mean()), 3) for k, f in enumerate(families)},
    )

    lead = LeadSelectionCallback(
        pool,
        budget=args.budget,
        sample_rate=args.sample_rate,
        bandit=args.bandit,
        max_rounds=args.rounds,
        seed=args.seed,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=args.rounds,
        callbacks=[lead],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, dm)

    print("\nround | clusters chosen           | selected | raw reward | unique seen")
    for h in lead.history:
        names = ", ".join(families[a] for a in h["arms"])
        rew = ", ".join(f"{v:+.3f}" for v in h["reward_raw"].values())
        print(f"{h['round']:>5} | {names:<25} | {h['n_selected']:>8} | {rew:>10} | {h['unique_seen']}")
    share: Counter[str] = Counter()
    for h in lead.history:
        for k, c in enumerate(h["selected_per_cluster"]):
            share[families[k]] += c
    total = sum(share.values())
    print("selected share per family:", {f: round(share[f] / total, 3) for f in families})
    print(f"stop reason: {lead.stop_reason}; wall time {time.perf_counter() - t0:.1f} s")
    return {"history": lead.history, "families": families}


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``lead-example``."""
    run(argv)


if __name__ == "__main__":
    main()
