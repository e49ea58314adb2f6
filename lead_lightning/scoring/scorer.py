"""Offline scoring: one ``Trainer.predict`` pass giving iu0, IFD, response length (and embeddings).

``iu0`` is the token-mean response cross-entropy given the prompt; ``ce_alone`` the same response
scored without its prompt; ``ifd = iu0 / ce_alone`` (Li et al., Cherry LLM). Degenerate IFD values
(ratio > 1, non-finite, empty response) are flagged in ``ifd_flag``, never dropped.

With ``shard_dir`` every predict batch is written to its own shard file as soon as it is computed
(each DDP rank writes its own), a rerun after a crash only scores the ids no shard holds yet, and
the shards are merged once, by id, with a check that no id is missing or duplicated.

On SIGTERM the pass stops after the current batch (its shard written) on every rank and raises
:class:`~lead_lightning.signals.StoppedBySignal` (exit status 143): a rerun scores only what is left
(:class:`~lead_lightning.signals.GracefulStop`).

Under DDP (``devices > 1``, ``shard_dir`` required): inside ``Trainer.predict``, after the process
group is up, rank 0 reads the shard directory and broadcasts the ids left to score, so every rank
predicts a disjoint part of the same list; Lightning's predict sampler splits it without padding. All
ranks meet at a barrier once their shards are on disk, then every rank merges the shards itself and
returns the same full result (the shard directory must be visible to all ranks, e.g. one machine or
a shared file system).
"""

from __future__ import annotations

import json
import os
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
from lead_lightning.scoring.common import hf_model, offline_trainer_kwargs
from lead_lightning.scoring.warmup import WARMUP_KEYS, warmup_lora
from lead_lightning.signals import GracefulStop

__all__ = [
    "FINGERPRINT_FILE",
    "ScoringModule",
    "ShardWriter",
    "check_shard_dir",
    "clear_shards",
    "load_shards",
    "merge_scores",
    "score_pool",
]

SCORE_KEYS = ("ids", "iu0", "ce_alone", "ifd", "ifd_flag", "n_response_tokens")
_SHARD_RE = re.compile(r"^rank(\d+)_batch(\d+)\.pt$")
FINGERPRINT_FILE = "fingerprint.json"
"""The stamp of a shard directory: the fingerprint and the parts it was computed from."""


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
        self.model = hf_model(model)
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


def _read_shard(path: Path, n: int | None = None) -> dict[str, Tensor]:
    """One shard, with an error naming the file when it cannot be read or holds ids outside ``0..n-1``."""
    try:
        part = torch.load(path, weights_only=True)
    except Exception as err:  # zip reader, unpickler, EOF: all mean the same thing here
        raise RuntimeError(
            f"Shard {path} cannot be read ({type(err).__name__}: {err}). It was cut short or damaged"
            " outside `lead-score` (shards are written atomically). HINT: delete that file and rerun to"
            " rescore its examples, or start again with `lead-score --overwrite`."
        ) from err
    ids = part.get("ids") if isinstance(part, dict) else None
    if not isinstance(ids, Tensor) or ids.dim() != 1:
        raise RuntimeError(f"Shard {path} is not a scoring shard (no 1-D `ids` tensor). HINT: delete it.")
    if n is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise RuntimeError(
            f"Shard {path} holds pool ids up to {int(ids.max())}, but the pool has {n} examples: it was"
            " written for another pool. HINT: start again with `lead-score --overwrite` (in Python:"
            " `clear_shards`), or use another shard directory."
        )
    return part


def load_shards(shard_dir: str | PathLike[str], n: int | None = None) -> list[dict[str, Tensor]]:
    """Every shard written by :class:`ShardWriter` under ``shard_dir`` (rank, then batch order).

    A shard that cannot be read, or (with ``n``) holds ids outside ``0..n-1``, is an error naming it.
    """
    return [_read_shard(p, n) for p in _shard_files(Path(shard_dir))]


def _stamped_files(root: Path) -> list[Path]:
    """What a scoring run leaves under ``root``: shards (also under ``base/`` and ``warm/``), the
    warmed adapter, the fingerprint stamp and temporary files of any of them."""
    found = []
    for d in (root, root / "base", root / "warm"):
        if d.is_dir():
            found += [p for p in d.iterdir() if _SHARD_RE.match(p.name.removesuffix(".tmp"))]
    for name in (FINGERPRINT_FILE, "warmup_state.pt"):
        found += [p for p in root.glob(name + "*") if p.name == name or p.name.endswith(".tmp")]
    return sorted(set(found))


def clear_shards(shard_dir: str | PathLike[str]) -> int:
    """Delete what a scoring run wrote under ``shard_dir`` (its shards, warmed adapter and stamp).

    Other files are left alone (the directory may be shared), as are empty ``base/``/``warm/``
    folders. Returns the number of files deleted.

    Example:
        >>> import tempfile
        >>> clear_shards(tempfile.mkdtemp())
        0
    """
    files = _stamped_files(Path(shard_dir))
    for p in files:
        p.unlink(missing_ok=True)
    return len(files)


def check_shard_dir(shard_dir: str | PathLike[str], parts: Mapping[str, Any]) -> str:
    """Stamp ``shard_dir`` with the fingerprint of ``parts``, or check the stamp that is there.

    Args:
        shard_dir: a shard directory (created when missing).
        parts: what determines the scores, e.g. from
            :func:`~lead_lightning.scoring.scoring_parts`.

    Returns:
        The fingerprint.

    Raises:
        ValueError: the directory is stamped with another fingerprint (the message names the parts
            that differ), or holds shards without a stamp.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> check_shard_dir(d, {"seed": 0}) == check_shard_dir(d, {"seed": 0})
        True
        >>> check_shard_dir(d, {"seed": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Shard directory ... was written for other inputs: seed (stored 0, now 1). ...
    """
    from lead_lightning.scoring.fingerprint import canonical_json, diff_parts, fingerprint

    root = Path(shard_dir)
    fp = fingerprint(**parts)
    stamp = root / FINGERPRINT_FILE
    hint = (
        " HINT: start again with `lead-score --overwrite` (in Python: `clear_shards(shard_dir)`), or"
        " use another shard directory."
    )
    if stamp.is_file():
        try:
            stored = json.loads(stamp.read_text())
            stored_fp, stored_parts = stored["fingerprint"], stored["parts"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"Shard directory stamp {stamp} cannot be read ({err}).{hint}") from err
        if stored_fp != fp:
            causes = ", ".join(diff_parts(stored_parts, parts)) or "the fingerprint"
            raise ValueError(
                f"Shard directory {root} was written for other inputs: {causes}. Its shards would"
                f" mix another run's scores into this one.{hint}"
            )
        return fp
    if any(p.suffix == ".pt" for p in _stamped_files(root)):
        raise ValueError(
            f"Shard directory {root} holds shards but no {FINGERPRINT_FILE}, so what they scored cannot"
            f" be checked (they predate fingerprinted shards, or the stamp was deleted).{hint}"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{FINGERPRINT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(canonical_json({"fingerprint": fp, "parts": dict(parts)}) + "\n")
    tmp.replace(stamp)  # every rank may stamp: the same content, each write atomic
    return fp


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
    for part in load_shards(shard_dir, n):
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
    fingerprint_parts: Mapping[str, Any] | None = None,
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
        fingerprint_parts: what determines the scores (see
            :func:`~lead_lightning.scoring.scoring_parts`). With ``shard_dir``, the directory is
            stamped with their fingerprint before any work, and one stamped with another fingerprint
            (other records, model, tokenizer, template, max length, seed, warm-up...) or holding shards
            without a stamp is an error naming the cause (:func:`check_shard_dir`), instead of
            silently mixing another run's scores in.

    Returns:
        ``{"ids", "iu0", "ce_alone", "ifd", "ifd_flag", "n_response_tokens"[, "embedding"]}`` (with
        ``warmup`` also ``"iu0_warm"`` and ``"ifd_base"``); under DDP every rank returns the same
        full result.
    """
    if shard_dir is not None and fingerprint_parts is not None:
        check_shard_dir(shard_dir, fingerprint_parts)
    lm = module
    if not isinstance(module, ScoringModule):
        module = ScoringModule(module, embed=embed)
    if not warmup:
        return _score(module, datamodule, trainer_kwargs, shard_dir)

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
        trainer = pl.Trainer(callbacks=[*kwargs.pop("callbacks", []), GracefulStop()], **kwargs)
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
        callbacks = [
            *kwargs.pop("callbacks", []),
            ShardWriter(shard_dir),
            GracefulStop(),
        ]  # stop after the write
        trainer = pl.Trainer(callbacks=callbacks, **kwargs)
        source = _PendingIdsDataModule(datamodule, shard_dir, n, excluded)
        trainer.predict(module, datamodule=source, return_predictions=False)
        trainer.strategy.barrier("score_pool")  # every rank's shards are on disk before anyone merges
    return merge_scores(load_shards(shard_dir, n), n, excluded)
