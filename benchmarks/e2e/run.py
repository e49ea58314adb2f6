"""End-to-end study: LEAD against its baselines on GSM8K + generated tasks (issue 6).

One command::

    python benchmarks/e2e/run.py [--quick | --tiny] [--seeds 0 1 2] [--budgets 0.025 0.05 0.1] [--methods ...]

Steps: (1) a tiny Llama (+ byte-level BPE) pre-trained briefly as a plain LM on the pool's raw text,
cached in ``cache/base/<key>/``; (2) one offline scoring pass of the pool with that base (iu0, IFD),
cached with its measured time; (3) per method x budget x seed one instruction-tuning run from the
base (same model, optimiser, rounds and examples per round), cached as JSON in
``cache/runs/<key>/``; (4) ``results.md`` (mean ± std over seeds) and ``plots/*.png``.

Selection methods are built by the Hydra app (``conf/selection``, ``conf/bandit``, composed the way
``lead-train`` composes them, then :func:`lead_lightning.app.builders.build_selection`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lead_lightning.app.builders import build_selection, pool_bpe_tokenizer
from lead_lightning.data import InstructionDataModule, InstructionRecord, generate_pool, read_gsm8k
from lead_lightning.data.templates import get_template
from lead_lightning.models import CausalLMModule, load_causal_lm, load_tokenizer, tiny_causal_lm
from lead_lightning.scoring import build_pool_index, cluster_ifd, cluster_labels, score_pool

HERE = Path(__file__).resolve().parent
GSM8K_DIR = Path("/work/shared/data/gsm8k")
NOISY = "noisy_add"

METHODS = [
    "full",
    "random",
    "static_ifd",
    "static_loss",
    "lead",
    "lead_uniform",
    "lead_random_within",
    "iterative_reinference",
    "lead_ifd_kmeans",
]
# method -> (selection option, bandit option) of conf/ (None: built here)
APP = {
    "full": ("full", "exp3"),
    "random": ("random", "exp3"),
    "static_ifd": ("static_ifd", "exp3"),
    "lead": ("lead", "exp3"),
    "lead_uniform": ("lead", "uniform"),
    "lead_random_within": ("random_within", "exp3"),
    "lead_ifd_kmeans": ("lead", "exp3"),
    "static_loss": ("static_loss", "exp3"),
    "iterative_reinference": ("iterative_reinference", "exp3"),
}
USES_OFFLINE_SCORES = {
    "static_ifd",
    "static_loss",
    "lead",
    "lead_uniform",
    "lead_random_within",
    "lead_ifd_kmeans",
}
# LEAD's arms: one cluster per task family (label) by default; lead_ifd_kmeans: the paper's 7 IFD k-means
# clusters (no per-family stratification, so it trains the same examples per round as the others).

# Study sizes. rounds x per_round example-steps for every method; per_round = budget * pool / cover_rounds.
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(
        n_gsm8k=600,
        n_gen=600,
        n_eval_gsm8k=60,
        n_eval_gen=90,
        n_acc=10,
        acc_tokens=48,
        vocab=700,
        hidden=48,
        layers=2,
        heads=4,
        max_length=160,
        pretrain_steps=200,
        pretrain_batch=16,
        lr=3e-3,
        batch_size=8,
        rounds=10,
        cover_rounds=3,
        min_per_round=8,
    ),
    "quick": dict(
        n_gsm8k=200,
        n_gen=200,
        n_eval_gsm8k=30,
        n_eval_gen=45,
        n_acc=5,
        acc_tokens=32,
        vocab=500,
        hidden=48,
        layers=2,
        heads=4,
        max_length=128,
        pretrain_steps=60,
        pretrain_batch=16,
        lr=3e-3,
        batch_size=8,
        rounds=5,
        cover_rounds=2,
        min_per_round=8,
    ),
    "tiny": dict(
        n_gsm8k=40,
        n_gen=60,
        n_eval_gsm8k=8,
        n_eval_gen=12,
        n_acc=2,
        acc_tokens=8,
        vocab=300,
        hidden=32,
        layers=1,
        heads=2,
        max_length=96,
        pretrain_steps=5,
        pretrain_batch=8,
        lr=3e-3,
        batch_size=8,
        rounds=2,
        cover_rounds=1,
        min_per_round=8,
    ),
}


# ----------------------------------------------------------------------------- helpers
def _key(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_data(s: dict[str, Any], gsm8k_dir: Path) -> dict[str, Any]:
    """Pool (GSM8K train subsample + generated families incl. the noisy one) and the eval sets."""
    has_gsm8k = (gsm8k_dir / "train.jsonl").is_file() and (gsm8k_dir / "test.jsonl").is_file()
    pool: list[InstructionRecord] = []
    eval_gsm8k: list[InstructionRecord] = []
    if has_gsm8k and s["n_gsm8k"]:
        train = read_gsm8k(gsm8k_dir / "train.jsonl")
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(1234))[: s["n_gsm8k"]]
        pool += [train[i] for i in sorted(idx.tolist())]
        eval_gsm8k = read_gsm8k(gsm8k_dir / "test.jsonl")[: s["n_eval_gsm8k"]]
    else:
        _log(
            f"GSM8K not found in {gsm8k_dir} (train.jsonl/test.jsonl): the pool is generated tasks only;"
            " GSM8K eval loss and accuracy are reported as nan."
        )
    pool += generate_pool(s["n_gen"], seed=0)
    clean = [f for f in ("copy", "reverse", "sort_letters", "add", "multiply")]
    eval_gen = generate_pool(s["n_eval_gen"], seed=1_000_003, families=clean)
    return {"pool": pool, "eval_gsm8k": eval_gsm8k, "eval_gen": eval_gen, "has_gsm8k": bool(eval_gsm8k)}


def pretrain_base(
    s: dict[str, Any], pool: list[InstructionRecord], cache: Path
) -> tuple[Path, dict[str, Any]]:
    """Tokenizer + tiny Llama pre-trained as a plain LM on the pool's raw text; cached by its settings."""
    keys = ("vocab", "hidden", "layers", "heads", "max_length", "pretrain_steps", "pretrain_batch", "lr")
    settings = {k: s[k] for k in keys} | {"pool": _key([(r.prompt, r.response) for r in pool])}
    base = cache / "base" / _key(settings)
    meta_path = base / "meta.json"
    if meta_path.is_file():
        return base, json.loads(meta_path.read_text())
    _log(f"pre-training the base model ({s['pretrain_steps']} steps) -> {base}")
    t0 = time.perf_counter()
    base.mkdir(parents=True, exist_ok=True)
    tok = pool_bpe_tokenizer(pool, vocab_size=s["vocab"])
    tok.save_pretrained(base)
    model = tiny_causal_lm(
        len(tok),
        hidden_size=s["hidden"],
        num_layers=s["layers"],
        num_heads=s["heads"],
        max_position=max(256, s["max_length"]),
        seed=0,
    )
    texts = [f"{r.prompt}\n{r.response}" for r in pool]
    enc = [tok(t)["input_ids"][: s["max_length"] - 1] + [tok.eos_token_id] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"])
    g = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for _ in range(s["pretrain_steps"]):
        rows = [enc[i] for i in torch.randint(len(enc), (s["pretrain_batch"],), generator=g).tolist()]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.save_pretrained(base)
    meta = {
        "settings": settings,
        "pretrain_s": time.perf_counter() - t0,
        "loss_first": losses[0],
        "loss_last": statistics.fmean(losses[-10:]),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    _log(
        f"base ready: LM loss {meta['loss_first']:.3f} -> {meta['loss_last']:.3f} in {meta['pretrain_s']:.1f} s"
    )
    return base, meta


def make_module(base: Path, s: dict[str, Any], lr: float) -> CausalLMModule:
    return CausalLMModule(load_causal_lm(base), lr=lr)


def make_dm(s: dict[str, Any], records: list[InstructionRecord], tok: Any) -> InstructionDataModule:
    dm = InstructionDataModule(
        records,
        tok,
        max_length=s["max_length"],
        batch_size=s["batch_size"],
        eval_batch_size=64,
        truncation="truncate_prompt",
        seed=0,
    )
    dm.setup("fit")
    return dm


def offline_scores(
    base: Path, s: dict[str, Any], data: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], float]:
    """One scoring pass of the pool with the base model (iu0, IFD); cached with its measured time."""
    path = base / "scores.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return blob["scores"], float(blob["time_s"])
    tok = load_tokenizer(base)
    t0 = time.perf_counter()
    scores = score_pool(
        make_module(base, s, s["lr"]),
        make_dm(s, data["pool"], tok),
        {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    )
    dt = time.perf_counter() - t0
    torch.save({"scores": scores, "time_s": dt}, path)
    _log(f"offline scoring of {len(data['pool'])} examples: {dt:.1f} s")
    return scores, dt


def compose_app(selection: str, bandit: str, overrides: list[str]) -> Any:
    """The `lead-train` config for a selection/bandit option (conf/), as the app composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lead_lightning.app import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"selection={selection}", f"bandit={bandit}", "clustering=label", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = "unused"
        del cfg["hydra"]
    return cfg


class Timed:
    """Accumulates the time spent in a callback's selection hooks (the selection cost)."""

    HOOKS = (
        "current_subset",
        "on_train_epoch_start",
        "on_train_batch_end",
        "on_train_epoch_end",
        "on_train_start",
        "on_fit_start",
    )

    def __init__(self, cb: Any) -> None:
        self.s = 0.0
        for name in self.HOOKS:
            fn = getattr(cb, name, None)
            if fn is None:
                continue

            def wrapped(*a: Any, _fn: Any = fn, **k: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    self.s += time.perf_counter() - t0

            setattr(cb, name, wrapped)
        if hasattr(cb, "sampler"):
            cb.sampler._provider = cb.current_subset


class EvalRecorder(Callback):
    """Eval losses (token mean) on GSM8K test and held-out generated tasks after every round."""

    def __init__(self, sets: dict[str, InstructionDataModule], family: torch.Tensor, n_families: int) -> None:
        super().__init__()
        self.sets, self.family, self.n_families = sets, family, n_families
        self.family_steps: list[list[int]] = []  # per round: example-steps per task family
        self._round_steps = torch.zeros(n_families, dtype=torch.long)
        self.curve: list[dict[str, Any]] = []
        self.eval_s, self.example_steps, self._t0 = 0.0, 0, 0.0

    @torch.no_grad()
    def evaluate(self, module: pl.LightningModule) -> dict[str, float]:
        t0 = time.perf_counter()
        was = module.training
        module.eval()
        out = {}
        for name, dm in self.sets.items():
            tot, n = 0.0, 0
            for batch in dm.val_dataloader():
                r = module(batch)
                k = int(r.n_tokens.sum())
                tot, n = tot + float(r.loss) * k, n + k
            out[name] = tot / n if n else math.nan
        module.train(was)
        self.eval_s += time.perf_counter() - t0
        return out

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self.curve.append({"round": -1, "example_steps": 0, "fit_s": 0.0, **self.evaluate(pl_module)})

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.example_steps += int(batch["ids"].numel())
        self._round_steps += torch.bincount(self.family[batch["ids"].cpu()], minlength=self.n_families)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fit_s = time.perf_counter() - self._t0 - self.eval_s
        self.family_steps.append(self._round_steps.tolist())
        self._round_steps = torch.zeros(self.n_families, dtype=torch.long)
        self.curve.append(
            {
                "round": trainer.current_epoch,
                "example_steps": self.example_steps,
                "fit_s": fit_s,
                **self.evaluate(pl_module),
            }
        )


def _number(text: str) -> str | None:
    m = re.search(r"####\s*(-?[\d,\.]+)", text)
    nums = [m.group(1)] if m else re.findall(r"-?\d[\d,]*\.?\d*", text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


@torch.no_grad()
def gsm8k_accuracy(model: Any, tok: Any, records: list[InstructionRecord], max_new_tokens: int) -> float:
    """Exact match of the final number, greedy generation (one problem at a time, no padding)."""
    if not records:
        return math.nan
    model.eval()
    tmpl = get_template("tulu")
    hits = 0
    for r in records:
        ids = torch.tensor([tok(tmpl.render_prompt(r.prompt))["input_ids"]])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        pred = _number(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        hits += int(pred is not None and pred == _number(r.response))
    return hits / len(records)


# ----------------------------------------------------------------------------- one run
def run_one(
    method: str,
    budget_frac: float,
    seed: int,
    s: dict[str, Any],
    data: dict[str, Any],
    base: Path,
    scores: dict[str, torch.Tensor],
    scoring_s: float,
) -> dict[str, Any]:
    tok = load_tokenizer(base)
    pool_records = data["pool"]
    n = len(pool_records)
    groups = [r.group for r in pool_records]
    names = sorted(set(groups))
    if method == "lead_ifd_kmeans":
        ifd = scores["ifd"].clone()
        bad = ~torch.isfinite(ifd)
        ifd[bad] = ifd[~bad].max()
        pool = build_pool_index(scores, cluster_ifd(ifd, k=7, seed=seed))
        names = [f"ifd c{k}" for k in range(pool.num_clusters)]
    else:
        pool = build_pool_index(scores, cluster_labels(groups), groups)
    budget = max(1, round(budget_frac * n))
    per_round = min(budget, max(s["min_per_round"], round(budget / s["cover_rounds"])))
    rounds = s["rounds"]
    pl.seed_everything(seed, workers=True, verbose=False)

    dm = make_dm(s, pool_records, tok)
    module = make_module(base, s, s["lr"])
    if method in APP:
        sel, bandit = APP[method]
        cfg = compose_app(
            sel,
            bandit,
            [
                f"seed={seed}",
                f"rounds={rounds}",
                f"selection.budget={budget}",
                f"selection.sample_rate={per_round}",
            ],
        )
        from hydra.utils import instantiate

        selection = build_selection(instantiate(cfg.selection), pool)
        lr = float(cfg.model.module.lr)
        module = make_module(base, s, lr)
    else:
        raise ValueError(f"unknown method {method!r}; known: {METHODS}")
    timer = Timed(selection)
    eval_sets = {}
    if data["eval_gsm8k"]:
        eval_sets["gsm8k"] = make_dm(s, data["eval_gsm8k"], tok)
    eval_sets["gen"] = make_dm(s, data["eval_gen"], tok)
    for e in eval_sets.values():
        e.val_records, e.val_dataset = e.train_records, e.train_dataset  # reuse the tokenized set as val
    families = sorted(set(groups))
    family = torch.tensor([families.index(g) for g in groups])
    rec = EvalRecorder(eval_sets, family, len(families))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=rounds,
        logger=False,
        callbacks=[selection, rec],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t0
    acc = gsm8k_accuracy(module.model, tok, data["eval_gsm8k"][: s["n_acc"]], s["acc_tokens"])

    rescore_s = sum(float(h.get("rescore_s", 0.0)) for h in selection.history)
    selection_s = timer.s - rescore_s
    offline = scoring_s if method in USES_OFFLINE_SCORES else 0.0
    pool_fwd = (2 * n if method in USES_OFFLINE_SCORES else 0) + getattr(selection, "forward_passes", 0)
    history = [
        {
            k: e[k]
            for k in ("round", "n_selected", "selected_per_cluster", "arms", "probs", "reward")
            if k in e
        }
        for e in selection.history
    ]
    history = json.loads(
        json.dumps(history, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x))
    )
    per_cluster = [sum(h["selected_per_cluster"][k] for h in history) for k in range(len(names))]
    fam_total = [sum(r[k] for r in rec.family_steps) for k in range(len(families))]
    noisy = families.index(NOISY) if NOISY in families else None
    final = rec.curve[-1]
    return {
        "method": method,
        "budget": budget_frac,
        "budget_count": budget,
        "seed": seed,
        "pool_size": n,
        "per_round": per_round,
        "rounds": rounds,
        "rounds_run": len(history),
        "eval_loss_gsm8k": final.get("gsm8k", math.nan),
        "eval_loss_gen": final["gen"],
        "eval_loss_gsm8k_base": rec.curve[0].get("gsm8k", math.nan),
        "eval_loss_gen_base": rec.curve[0]["gen"],
        "gsm8k_accuracy": acc,
        "n_acc": min(s["n_acc"], len(data["eval_gsm8k"])),
        "time": {
            "offline_scoring_s": offline,
            "online_rescoring_s": rescore_s,
            "selection_s": selection_s,
            "training_s": fit_s - rec.eval_s - timer.s,
            "eval_s": rec.eval_s,
        },
        "wall_s": offline + fit_s - rec.eval_s,
        "example_steps": rec.example_steps,
        "pool_forward_passes": pool_fwd,
        # share of the trained example-steps that came from the planted noisy family
        "noisy_share": fam_total[noisy] / sum(fam_total)
        if noisy is not None and sum(fam_total)
        else math.nan,
        "cluster_names": names,
        "selected_per_cluster": per_cluster,
        "families": families,
        "family_steps_per_round": rec.family_steps,
        "history": history,
        "curve": rec.curve,
        "stop_reason": getattr(selection, "stop_reason", None),
    }


# ----------------------------------------------------------------------------- report
def _ms(xs: list[float], fmt: str = "{:.3f}") -> str:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.fmean(xs))} ± {fmt.format(statistics.stdev(xs))}"


def write_table(results: list[dict[str, Any]], path: Path, header: str) -> str:
    cols = [
        "method",
        "eval loss GSM8K",
        "eval loss gen",
        "GSM8K acc",
        "end-to-end s",
        "offline scoring s",
        "re-scoring s",
        "selection s",
        "training s",
        "example-steps",
        "pool fwd passes",
        "noisy share",
    ]
    lines = [header, ""]
    for b in sorted({r["budget"] for r in results}):
        rows = [r for r in results if r["budget"] == b]
        seeds = sorted({r["seed"] for r in rows})
        lines += [
            f"### budget {b:g} of the pool ({rows[0]['budget_count']} unique examples, "
            f"{rows[0]['rounds']} rounds x {rows[0]['per_round']} examples; seeds {seeds})",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        for m in [m for m in METHODS if any(r["method"] == m for r in rows)]:
            rs = [r for r in rows if r["method"] == m]
            t = [r["time"] for r in rs]
            lines.append(
                "| "
                + " | ".join(
                    [
                        m,
                        _ms([r["eval_loss_gsm8k"] for r in rs]),
                        _ms([r["eval_loss_gen"] for r in rs]),
                        _ms([r["gsm8k_accuracy"] for r in rs], "{:.2f}"),
                        _ms([r["wall_s"] for r in rs], "{:.1f}"),
                        _ms([x["offline_scoring_s"] for x in t], "{:.1f}"),
                        _ms([x["online_rescoring_s"] for x in t], "{:.1f}"),
                        _ms([x["selection_s"] for x in t], "{:.2f}"),
                        _ms([x["training_s"] for x in t], "{:.1f}"),
                        _ms([r["example_steps"] for r in rs], "{:.0f}"),
                        _ms([r["pool_forward_passes"] for r in rs], "{:.0f}"),
                        _ms([r["noisy_share"] for r in rs], "{:.3f}"),
                    ]
                )
                + " |"
            )
        base = rows[0]
        lines += [
            "",
            f"Base model before tuning: eval loss GSM8K {base['eval_loss_gsm8k_base']:.3f}, "
            f"gen {base['eval_loss_gen_base']:.3f}.",
            "",
        ]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def headline(results: list[dict[str, Any]]) -> str:
    """Ratios the issue asks for, per budget (means over seeds)."""
    out = []

    def mean(m: str, b: float, f: Any) -> float:
        xs = [f(r) for r in results if r["method"] == m and r["budget"] == b]
        return statistics.fmean(xs) if xs else math.nan

    for b in sorted({r["budget"] for r in results}):
        g = lambda m, f, b=b: mean(m, b, f)  # noqa: E731
        gs, gen = (lambda r: r["eval_loss_gsm8k"]), (lambda r: r["eval_loss_gen"])
        parts = [f"budget {b:g}:"]
        parts.append(
            f"LEAD - full eval loss GSM8K {g('lead', gs) - g('full', gs):+.3f}, gen {g('lead', gen) - g('full', gen):+.3f};"
        )
        parts.append(
            f"iterative/LEAD wall {g('iterative_reinference', lambda r: r['wall_s']) / g('lead', lambda r: r['wall_s']):.2f}x,"
            f" pool fwd {g('iterative_reinference', lambda r: r['pool_forward_passes']) / max(g('lead', lambda r: r['pool_forward_passes']), 1):.2f}x,"
            f" eval loss GSM8K LEAD - iterative {g('lead', gs) - g('iterative_reinference', gs):+.3f};"
        )
        parts.append(
            f"noisy share LEAD {g('lead', lambda r: r['noisy_share']):.3f} vs random {g('random', lambda r: r['noisy_share']):.3f}"
            f" vs iterative {g('iterative_reinference', lambda r: r['noisy_share']):.3f};"
        )
        parts.append(
            f"ablations (eval loss gen/GSM8K) no-MAB {g('lead_uniform', gen):.3f}/{g('lead_uniform', gs):.3f},"
            f" no-IDU {g('lead_random_within', gen):.3f}/{g('lead_random_within', gs):.3f}, LEAD {g('lead', gen):.3f}/{g('lead', gs):.3f}"
        )
        parts.append(
            f"; LEAD with IFD k-means arms: eval loss gen/GSM8K {g('lead_ifd_kmeans', gen):.3f}/{g('lead_ifd_kmeans', gs):.3f},"
            f" noisy share {g('lead_ifd_kmeans', lambda r: r['noisy_share']):.3f}"
        )
        out.append(" ".join(parts))
    return "\n".join(out)


def make_plots(results: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    b = min(r["budget"] for r in results)
    rows = [r for r in results if r["budget"] == b]
    seed = min(r["seed"] for r in rows)
    sets = [k for k in ("gsm8k", "gen") if any(k in c for r in rows for c in r["curve"])]
    for xkey, xlabel, fname in (
        ("example_steps", "example-steps", "eval_loss_vs_example_steps.png"),
        ("wall", "end-to-end wall time (s, offline scoring included)", "eval_loss_vs_wall_time.png"),
    ):
        fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4), squeeze=False)
        for ax, k in zip(axes[0], sets, strict=False):
            for m in METHODS:
                r = next((r for r in rows if r["method"] == m and r["seed"] == seed), None)
                if r is None:
                    continue
                off = r["time"]["offline_scoring_s"]
                xs = [c["example_steps"] if xkey == "example_steps" else off + c["fit_s"] for c in r["curve"]]
                ax.plot(xs, [c.get(k, math.nan) for c in r["curve"]], marker=".", label=m)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"eval loss ({k})")
            ax.set_title(f"budget {b:g}, seed {seed}")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
        paths.append(out / fname)
    lead = next((r for r in rows if r["method"] == "lead" and r["seed"] == seed), None)
    if lead is not None and lead["history"]:
        if lead.get("family_steps_per_round"):
            names, per_round = lead["families"], lead["family_steps_per_round"]
        else:  # a run cached before family counts were recorded (label clusters = families)
            names, per_round = lead["cluster_names"], [h["selected_per_cluster"] for h in lead["history"]]
        fig, ax = plt.subplots(figsize=(7, 4))
        rounds = list(range(len(per_round)))
        bottom = [0.0] * len(rounds)
        for k, name in enumerate(names):
            share = [row[k] / max(1, sum(row)) for row in per_round]
            ax.bar(rounds, share, bottom=bottom, label=name)
            bottom = [x + y for x, y in zip(bottom, share, strict=True)]
        ax.set_xlabel("round")
        ax.set_ylabel("share of the round's trained examples")
        ax.set_title(f"LEAD: task family (= cluster) share per round (budget {b:g}, seed {seed})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "lead_cluster_share.png", dpi=100)
        plt.close(fig)
        paths.append(out / "lead_cluster_share.png")
    return paths


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="small sizes, one budget and one seed (a few minutes)"
    )
    size.add_argument("--tiny", action="store_true", help="smallest sizes (the CI smoke test)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--budgets", type=float, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--out", type=Path, default=HERE, help="results.md and plots/ go here")
    p.add_argument("--gsm8k-dir", type=Path, default=GSM8K_DIR)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--rounds", type=int, default=None, help="override the preset's rounds")
    p.add_argument(
        "--cover-rounds",
        type=int,
        default=None,
        help="override: examples per round = budget / cover_rounds (rounds to spend the unique budget)",
    )
    p.add_argument(
        "--min-per-round", type=int, default=None, help="override the preset's least examples per round"
    )
    args = p.parse_args(argv)
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    s = dict(PRESETS[preset])
    for k in ("rounds", "cover_rounds", "min_per_round"):
        if getattr(args, k) is not None:
            s[k] = getattr(args, k)
    seeds = args.seeds or ([0] if preset != "full" else [0, 1, 2])
    budgets = args.budgets or ([0.05] if preset != "full" else [0.025, 0.05, 0.1])
    torch.set_num_threads(args.threads)  # 1: far faster than 2 on a shared 2-core box

    data = load_data(s, args.gsm8k_dir)
    base, meta = pretrain_base(s, data["pool"], args.cache)
    scores, scoring_s = offline_scores(base, s, data)
    run_dir = args.cache / "runs" / _key({"s": s, "base": base.name, "gsm8k": data["has_gsm8k"], "v": 1})
    run_dir.mkdir(parents=True, exist_ok=True)
    results = []
    t_study = time.perf_counter()
    for b in budgets:
        for seed in seeds:
            for m in args.methods:
                path = run_dir / f"{m}_b{b:g}_s{seed}.json"
                if path.is_file():
                    results.append(json.loads(path.read_text()))
                    continue
                r = run_one(m, b, seed, s, data, base, scores, scoring_s)
                path.write_text(json.dumps(r, indent=1))
                results.append(r)
                _log(
                    f"{m:>22} b={b:g} s={seed}: eval gsm8k {r['eval_loss_gsm8k']:.3f} gen {r['eval_loss_gen']:.3f}"
                    f" acc {r['gsm8k_accuracy']:.2f} wall {r['wall_s']:.1f}s fwd {r['pool_forward_passes']}"
                    f" noisy {r['noisy_share']:.3f}"
                )
    header = (
        f"## Results ({preset} preset: pool {len(data['pool'])} = {s['n_gsm8k'] if data['has_gsm8k'] else 0} GSM8K"
        f" + {s['n_gen']} generated; tiny Llama h={s['hidden']} L={s['layers']}, base LM pre-trained"
        f" {s['pretrain_steps']} steps; eval: {len(data['eval_gsm8k'])} GSM8K test, {len(data['eval_gen'])}"
        f" held-out generated; accuracy on {min(s['n_acc'], len(data['eval_gsm8k']))} GSM8K test problems)\n\n"
        f"Command: `python benchmarks/e2e/run.py {' '.join(argv if argv is not None else sys.argv[1:])}`."
        f" Offline scoring of the pool (once, shared): {scoring_s:.1f} s."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    table = write_table(results, args.out / "results.md", header)
    lines = headline(results)
    with (args.out / "results.md").open("a") as f:
        f.write("\nHeadline (means over seeds):\n\n" + "\n".join(f"- {x}" for x in lines.splitlines()) + "\n")
    plots = make_plots(results, args.out / "plots")
    print(table)
    print(lines)
    _log(f"study done in {time.perf_counter() - t_study:.1f} s; results in {args.out / 'results.md'}")
    return {"results": results, "table": args.out / "results.md", "plots": plots, "run_dir": run_dir}


if __name__ == "__main__":
    main()
