"""Offline scoring: one ``Trainer.predict`` pass giving iu0, IFD, response length (and embeddings).

``iu0`` is the token-mean response cross-entropy given the prompt; ``ce_alone`` the same response
scored without its prompt; ``ifd = iu0 / ce_alone`` (Li et al., Cherry LLM). Degenerate IFD values
(ratio > 1, non-finite, empty response) are flagged in ``ifd_flag``, never dropped.

With ``shard_dir`` every predict batch is written to its own shard file as soon as it is computed
(each DDP rank writes its own), a rerun after a crash only scores the ids no shard holds yet, and
the shards are merged once, by id, with a check that no id is missing or duplicated.

Under DDP (``devices > 1``, ``shard_dir`` required): inside ``Trainer.predict``, after the process
group is up, rank 0 reads the shard directory and broadcasts the ids left to score, so every rank
predicts a disjoint part of the same list; Lightning's predict sampler splits it without padding. All
ranks meet at a barrier once their shards are on disk, then every rank merges the shards itself and
returns the same full result (the shard directory must be visible to all ranks, e.g. one machine or
a shared file system).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler, Subset

from lead_lightning.losses import lm_losses

__all__ = ["ScoringModule", "ShardWriter", "load_shards", "merge_scores", "score_pool"]

SCORE_KEYS = ("ids", "iu0", "ce_alone", "ifd", "ifd_flag", "n_response_tokens")
_SHARD_RE = re.compile(r"^rank(\d+)_batch(\d+)\.pt$")


def offline_trainer_kwargs(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Trainer arguments of the offline stage (no logger, no checkpoints, a progress bar), then ``overrides``."""
    kwargs: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": True,
    }
    kwargs.update(overrides or {})
    return kwargs


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a ``CausalLMModule`` (or the model itself)."""
    inner = getattr(model, "model", None)
    if isinstance(model, pl.LightningModule) and isinstance(inner, torch.nn.Module):
        return inner
    return model


class ScoringModule(pl.LightningModule):
    """Scores pool batches (from ``InstructionDataModule.predict_dataloader``) for the offline stage.

    Args:
        model: a :class:`~lead_lightning.models.CausalLMModule` (its HF model, LoRA included, is used)
            or a Hugging Face causal LM.
        embed: also return ``embedding``, the last hidden state of the conditioned pass, mean-pooled
            over ``attention_mask``.

    ``predict_step`` returns CPU tensors: ``ids``, ``iu0``, ``ce_alone``, ``ifd``, ``ifd_flag``
    (bool), ``n_response_tokens`` and, with ``embed``, ``embedding`` (float32 ``[B, H]``).
    :attr:`examples_seen` counts the examples this module has scored.
    """

    def __init__(self, model: torch.nn.Module, embed: bool = False) -> None:
        super().__init__()
        self.model = _hf_model(model)
        self.embed = embed
        self.examples_seen = 0

    @torch.no_grad()
    def score(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Conditioned and response-only forward passes of one batch, reduced per example."""
        out = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            use_cache=False,
            output_hidden_states=self.embed,
        )
        cond = lm_losses(out.logits, batch["labels"])
        alone_logits = self.model(
            input_ids=batch["ro_input_ids"], attention_mask=batch["ro_attention_mask"], use_cache=False
        ).logits
        alone = lm_losses(alone_logits, batch["ro_labels"])
        iu0 = cond.per_example_loss.float()
        ce_alone = alone.per_example_loss.float()
        ifd = iu0 / ce_alone
        flag = ~torch.isfinite(ifd) | (ifd > 1) | (cond.n_tokens == 0)
        result = {
            "ids": batch["ids"].long(),
            "iu0": iu0,
            "ce_alone": ce_alone,
            "ifd": ifd,
            "ifd_flag": flag,
            "n_response_tokens": cond.n_tokens.long(),
        }
        if self.embed:
            hidden = out.hidden_states[-1].float()
            mask = batch["attention_mask"].to(hidden.dtype).unsqueeze(-1)
            result["embedding"] = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return {k: v.detach().cpu() for k, v in result.items()}

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.score(batch)

    def predict_step(
        self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        result = self.score(batch)
        self.examples_seen += int(result["ids"].numel())
        return result


class ShardWriter(BasePredictionWriter):
    """Writes each predict batch's result to ``shard_dir/rank{r}_batch{i}.pt`` (atomically).

    ``batch_offset`` shifts the batch number so that a resumed run never overwrites older shards;
    by default (``None``) each rank starts after the highest batch number of its own shards, which no
    other rank writes, so no synchronisation is needed.
    """

    def __init__(self, shard_dir: str | PathLike[str], batch_offset: int | None = None) -> None:
        super().__init__(write_interval="batch")
        self.shard_dir = Path(shard_dir)
        self.batch_offset = batch_offset
        self._offset = batch_offset or 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.batch_offset is None:
            matches = [_SHARD_RE.match(p.name) for p in _shard_files(self.shard_dir)]
            own = [int(m.group(2)) for m in matches if m and int(m.group(1)) == trainer.global_rank]
            self._offset = 1 + max(own, default=-1)
        else:
            self._offset = self.batch_offset

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        path = self.shard_dir / f"rank{trainer.global_rank}_batch{batch_idx + self._offset}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save(prediction, tmp)
        tmp.replace(path)  # a killed run never leaves a half-written shard behind


def _shard_files(shard_dir: Path) -> list[Path]:
    if not shard_dir.is_dir():
        return []
    files = [p for p in shard_dir.iterdir() if _SHARD_RE.match(p.name)]
    return sorted(files, key=lambda p: tuple(int(x) for x in _SHARD_RE.match(p.name).groups()))  # type: ignore[union-attr]


def load_shards(shard_dir: str | PathLike[str]) -> list[dict[str, Tensor]]:
    """Every shard written by :class:`ShardWriter` under ``shard_dir`` (rank, then batch order)."""
    return [torch.load(p, weights_only=True) for p in _shard_files(Path(shard_dir))]


def merge_scores(
    parts: Sequence[Mapping[str, Tensor]], n: int, allowed_missing: Tensor | None = None
) -> dict[str, Tensor]:
    """Concatenate per-batch results and order them by id ``0..n-1``.

    Duplicated ids (a distributed sampler pads ranks by repeating examples; a resumed run may rescore
    one) keep their first occurrence. A missing id is an error, except those in ``allowed_missing``
    (examples the datamodule excluded), which get ``nan`` scores and ``ifd_flag=True``.
    """
    parts = [p for p in parts if p["ids"].numel()]
    if not parts:
        raise RuntimeError(f"No scores to merge: 0 of {n} pool examples were scored.")
    keys = list(parts[0])
    cat = {k: torch.cat([p[k] for p in parts]) for k in keys}
    ids = cat["ids"]
    if int(ids.min()) < 0 or int(ids.max()) >= n:
        raise ValueError(f"Scored ids must be in 0..{n - 1}, got range {int(ids.min())}..{int(ids.max())}.")
    uniq, first = np.unique(ids.numpy(), return_index=True)
    present = torch.zeros(n, dtype=torch.bool)
    present[torch.from_numpy(uniq)] = True
    allowed = torch.zeros(n, dtype=torch.bool)
    if allowed_missing is not None and len(allowed_missing):
        allowed[torch.as_tensor(allowed_missing, dtype=torch.long)] = True
    missing = torch.nonzero(~present & ~allowed).flatten()
    if len(missing):
        raise RuntimeError(
            f"{len(missing)} of {n} pool examples are missing from the scores (first ids:"
            f" {missing[:10].tolist()}); rerun `score_pool` with the same `shard_dir` to score them."
        )
    order = torch.from_numpy(first)
    out: dict[str, Tensor] = {}
    for k, v in cat.items():
        v = v[order]
        full_shape = (n, *v.shape[1:])
        if v.dtype == torch.bool:
            full = torch.ones(full_shape, dtype=torch.bool)  # an unscored example is flagged
        elif v.is_floating_point():
            full = torch.full(full_shape, float("nan"), dtype=v.dtype)
        else:
            full = torch.zeros(full_shape, dtype=v.dtype)
        full[torch.from_numpy(uniq)] = v
        out[k] = full
    out["ids"] = torch.arange(n)
    return out


def _pending_ids(shard_dir: Path, n: int, excluded: Tensor) -> list[int]:
    """Pool ids that no shard under ``shard_dir`` holds yet (excluded ids never need scoring)."""
    done = torch.zeros(n, dtype=torch.bool)
    for part in load_shards(shard_dir):
        done[part["ids"]] = True
    done[excluded] = True
    return torch.nonzero(~done).flatten().tolist()


class _PendingIdsDataModule(pl.LightningDataModule):
    """Predicts the pool ids of an ``InstructionDataModule`` that no shard holds yet, length-bucketed.

    The ids are decided in :meth:`predict_dataloader`, which runs on every rank after the process
    group is up and before any rank predicts: rank 0 reads the shard directory and broadcasts its list,
    so all ranks split the same ids even if another rank is already writing new shards.
    """

    def __init__(self, datamodule: Any, shard_dir: Path, n: int, excluded: Tensor) -> None:
        super().__init__()
        self.dm = datamodule
        self.shard_dir = shard_dir
        self.n = n
        self.excluded = excluded
        self.ids: list[int] = []

    def setup(self, stage: str) -> None:
        self.dm.setup(stage)

    def predict_dataloader(self) -> DataLoader:
        from lead_lightning.data.dataset import LengthBucketBatchSampler

        trainer = self.trainer
        assert trainer is not None, "called by Trainer.predict"
        ids = _pending_ids(self.shard_dir, self.n, self.excluded) if trainer.global_rank == 0 else []
        self.ids = list(trainer.strategy.broadcast(ids, src=0))
        if len(self.ids) == self.n:
            return self.dm.predict_dataloader()
        dataset = self.dm.train_dataset
        subset = Subset(dataset, self.ids)  # items keep their pool id
        batch_sampler = LengthBucketBatchSampler(
            SequentialSampler(subset), self.dm.eval_batch_size, lengths=np.asarray(dataset.lengths)[self.ids]
        )
        return DataLoader(
            subset,
            batch_sampler=batch_sampler,
            num_workers=self.dm.num_workers,
            collate_fn=self.dm._collator(response_only=True),
        )


def score_pool(
    module: torch.nn.Module,
    datamodule: Any,
    trainer_kwargs: Mapping[str, Any] | None = None,
    shard_dir: str | PathLike[str] | None = None,
    embed: bool = False,
    warmup: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Score every pool example in one ``Trainer.predict`` pass; results ordered by id ``0..N-1``.

    Args:
        module: a :class:`ScoringModule`, or a model to wrap in one (``CausalLMModule`` or HF model).
        datamodule: an :class:`~lead_lightning.data.InstructionDataModule`.
        trainer_kwargs: extra ``Trainer`` arguments (e.g. ``devices=2, strategy="ddp"``).
        shard_dir: write one shard per batch here and skip ids already present (resume). Required
            with several devices; every rank must see the same directory.
        embed: with a model (not a ``ScoringModule``), also compute embeddings.
        warmup: off by default. Settings of :func:`~lead_lightning.scoring.warmup_lora`
            (``n_examples``, ``max_steps``, ``seed``, ``lr``, ``batch_size``): the model needs a LoRA
            adapter. Then the pool is scored twice: the base model first (``iu0``,
            ``n_response_tokens``, ``embedding``; its IFD kept as ``ifd_base``), then the adapter is
            trained in place on a random subset and the pool scored again for ``ce_alone``, ``ifd``,
            ``ifd_flag`` and ``iu0_warm`` (``ifd = iu0_warm / ce_alone``). With ``shard_dir`` the passes
            use ``base/`` and ``warm/`` under it and the warmed adapter is kept in ``warmup_state.pt``,
            so a resumed run neither trains again nor rescores finished shards.

    Returns:
        ``{"ids", "iu0", "ce_alone", "ifd", "ifd_flag", "n_response_tokens"[, "embedding"]}`` (with
        ``warmup`` also ``"iu0_warm"`` and ``"ifd_base"``); under DDP every rank returns the same
        full result.
    """
    lm = module
    if not isinstance(module, ScoringModule):
        module = ScoringModule(module, embed=embed)
    if not warmup:
        return _score(module, datamodule, trainer_kwargs, shard_dir)

    from lead_lightning.scoring.warmup import WARMUP_KEYS, warmup_lora

    unknown = set(warmup) - set(WARMUP_KEYS)
    if unknown:
        raise ValueError(f"Unknown `warmup` settings {sorted(unknown)}; known: {list(WARMUP_KEYS)}.")
    root = Path(shard_dir) if shard_dir is not None else None
    base = _score(module, datamodule, trainer_kwargs, root / "base" if root else None)
    warmup_lora(
        lm,
        datamodule,
        trainer_kwargs=trainer_kwargs,
        state_path=root / "warmup_state.pt" if root else None,
        **warmup,
    )
    embed_flag, module.embed = module.embed, False  # embeddings come from the base pass
    try:
        warm = _score(module, datamodule, trainer_kwargs, root / "warm" if root else None)
    finally:
        module.embed = embed_flag
    out = dict(warm)
    out["iu0_warm"] = warm["iu0"]
    out["iu0"] = base["iu0"]  # LEAD's initial uncertainty: the base model's
    out["ifd_base"] = base["ifd"]
    if "embedding" in base:
        out["embedding"] = base["embedding"]
    return out


def _score(
    module: ScoringModule,
    datamodule: Any,
    trainer_kwargs: Mapping[str, Any] | None,
    shard_dir: str | PathLike[str] | None,
) -> dict[str, Tensor]:
    """One scoring pass (see :func:`score_pool`)."""
    datamodule.setup("predict")
    n = len(datamodule.train_dataset)
    excluded = torch.as_tensor(getattr(datamodule, "excluded_ids", torch.zeros(0)), dtype=torch.long)
    kwargs = offline_trainer_kwargs(trainer_kwargs)

    if shard_dir is None:
        trainer = pl.Trainer(**kwargs)
        if trainer.world_size > 1:
            raise ValueError(
                "Scoring on several devices needs a `shard_dir` (each rank writes its shards there)."
            )
        preds = trainer.predict(module, datamodule=datamodule, return_predictions=True)
        return merge_scores(preds or [], n, excluded)  # type: ignore[arg-type]

    shard_dir = Path(shard_dir)
    # Shards are only written inside a `predict` that every rank joins and that ends with a barrier, so
    # all ranks agree on whether anything is left. With a process group already up (a second call in a
    # DDP script), the decision is still left to rank 0's broadcast inside `predict`.
    dist_up = torch.distributed.is_available() and torch.distributed.is_initialized()
    if dist_up or _pending_ids(shard_dir, n, excluded):
        callbacks = [*kwargs.pop("callbacks", []), ShardWriter(shard_dir)]
        trainer = pl.Trainer(callbacks=callbacks, **kwargs)
        source = _PendingIdsDataModule(datamodule, shard_dir, n, excluded)
        trainer.predict(module, datamodule=source, return_predictions=False)
        trainer.strategy.barrier("score_pool")  # every rank's shards are on disk before anyone merges
    return merge_scores(load_shards(shard_dir), n, excluded)
