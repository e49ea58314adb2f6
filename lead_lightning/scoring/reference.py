"""Reference losses for RHO-LOSS selection: the loss of each pool example under a *reference model*.

RHO-LOSS (Mindermann et al., "Prioritized Training on Points that are Learnable, Worth Learning, and
Not Yet Learnt", ICML 2022) ranks examples by their *reducible loss*: the current training loss minus
the loss of a reference model trained on clean data from the same distribution, so that noisy or
unlearnable examples (high loss under both models) and learnt ones (low loss under the current
model) rank low. The reference model must never have trained on the example it scores.

- :func:`train_reference`: a copy of the model, trained for a few steps on reference records with
  the pool datamodule's tokenizer, template, max length and truncation.
- :func:`reference_losses`: train on held-out clean records (e.g. the testbed's ``reference``
  split), then score the pool with :func:`~lead_lightning.scoring.score_pool` (the ``iu0`` pass).
- :func:`crossfit_reference_losses`: no extra data: the pool is split into seeded folds, and each
  fold is scored by a model trained on the other folds (the paper's "no holdout set" variant).

The result is a float32 ``Tensor[N]`` in pool-id order, the ``ref_loss`` column of a
:class:`~lead_lightning.pool.PoolIndex` (``nan`` for ids the datamodule excluded, as ``iu0``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lead_lightning.scoring.common import fit_steps
from lead_lightning.scoring.scorer import ScoringModule, score_pool

if TYPE_CHECKING:
    from lead_lightning.data import InstructionDataModule, InstructionRecord
    from lead_lightning.models import CausalLMModule

__all__ = [
    "crossfit_folds",
    "crossfit_reference_losses",
    "reference_datamodule",
    "reference_losses",
    "train_reference",
]


def reference_datamodule(
    records: Sequence[InstructionRecord], like: InstructionDataModule
) -> InstructionDataModule:
    """A datamodule over ``records`` with the settings of ``like``: the same tokenizer, template,
    max length, truncation, batch sizes, workers and seed (no held-out set).

    Example:
        >>> from lead_lightning.data import InstructionDataModule, generate_pool
        >>> from lead_lightning.models import train_bpe_tokenizer
        >>> pool = generate_pool(20)
        >>> tok = train_bpe_tokenizer([r.prompt + r.response for r in pool], vocab_size=300)
        >>> dm = InstructionDataModule(pool, tok, template="alpaca", max_length=64)
        >>> ref = reference_datamodule(pool[:5], dm)
        >>> len(ref.train_records), ref.template.name, ref.max_length
        (5, 'alpaca', 64)
    """
    from lead_lightning.data import InstructionDataModule

    return InstructionDataModule(
        list(records),
        like.tokenizer,
        template=like.template,
        max_length=like.max_length,
        batch_size=like.batch_size,
        eval_batch_size=like.eval_batch_size,
        truncation=like.truncation,
        num_workers=like.num_workers,
        seed=like.seed,
    )


def _check_steps(max_steps: Any) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")


def train_reference(
    module: CausalLMModule,
    records: Sequence[InstructionRecord],
    like: InstructionDataModule,
    *,
    max_steps: int,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> CausalLMModule:
    """A reference model: a deep copy of ``module`` trained for ``max_steps`` optimizer steps on ``records``.

    The copy trains what ``module`` trains (every weight, or only the LoRA adapter) with its optimizer
    and schedule settings (AdamW, ``scheduler``, ``warmup_steps``...; a cosine schedule runs over
    ``max_steps``), on ``records`` tokenized exactly as the pool is: a datamodule with ``like``'s
    tokenizer, template, max length and truncation (:func:`reference_datamodule`). ``module`` itself
    is left unchanged; the copy needs the memory of a second model.

    Args:
        module: a :class:`~lead_lightning.models.CausalLMModule` (full-weight or LoRA), e.g. the model
            that will be trained on the pool, before training.
        records: the reference's training records; shuffled with ``seed`` and repeated as needed.
            Examples that ``like``'s truncation mode excludes are left out.
        like: the pool's :class:`~lead_lightning.data.InstructionDataModule` (its settings are used).
        max_steps: optimizer steps (>= 1).
        lr: learning rate; default the module's.
        batch_size: default ``like.batch_size``.
        seed: seed of the shuffle and of dropout; the global RNG is left untouched.
        trainer_kwargs: ``Trainer`` arguments (accelerator, devices, precision...; one device).

    Returns:
        The trained copy, in eval mode.

    Raises:
        ValueError: ``max_steps`` < 1, no records (or all excluded), or ``module`` is not a
            ``CausalLMModule``.

    Example:
        >>> from lead_lightning.data import InstructionDataModule, generate_pool
        >>> from lead_lightning.models import CausalLMModule, tiny_causal_lm, train_bpe_tokenizer
        >>> pool = generate_pool(24)
        >>> tok = train_bpe_tokenizer([r.prompt + r.response for r in pool], vocab_size=300)
        >>> dm = InstructionDataModule(pool, tok, max_length=64, batch_size=4)
        >>> lm = CausalLMModule(tiny_causal_lm(len(tok), hidden_size=32, num_layers=1))
        >>> ref = train_reference(lm, pool[:8], dm, max_steps=2,
        ...                       trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
        >>> ref is lm, ref.training
        (False, False)
    """
    from lead_lightning.models import CausalLMModule

    _check_steps(max_steps)
    if not isinstance(module, CausalLMModule):
        raise ValueError(
            f"`module` must be a lead_lightning.models.CausalLMModule, got {type(module).__name__}."
        )
    if len(records) == 0:
        raise ValueError("`records` is empty: the reference model needs at least one training example.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
    if lr is not None and not lr > 0:
        raise ValueError(f"`lr` must be > 0 or None, got {lr!r}.")
    dm = reference_datamodule(records, like)
    dm.setup("fit")
    dataset = dm.train_dataset
    assert dataset is not None, "set up above"
    ids = np.setdiff1d(np.arange(len(dataset)), np.asarray(dm.excluded_ids, dtype=np.int64)).tolist()
    if not ids:
        raise ValueError(
            f"All {len(records)} reference records are excluded by `truncation={dm.truncation!r}` (their"
            f" prompts fill `max_length`={dm.max_length}). HINT: raise `max_length` or use other records."
        )
    ref = copy.deepcopy(module)  # LightningModule.__getstate__ leaves the trainer out of the copy
    if lr is not None:
        ref.hparams["lr"] = lr
    fit_steps(
        ref, dm, ids, max_steps=max_steps, seed=seed, batch_size=batch_size, trainer_kwargs=trainer_kwargs
    )
    return ref.eval()


def reference_losses(
    module: CausalLMModule,
    pool_dm: InstructionDataModule,
    reference_records: Sequence[InstructionRecord],
    *,
    max_steps: int,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """RHO-LOSS reference losses: train a reference on ``reference_records``, score the pool with it.

    The reference model (:func:`train_reference`) is trained on clean records disjoint from the pool
    (e.g. the testbed's ``reference`` split), then every pool example's response loss given its prompt
    is computed with :func:`~lead_lightning.scoring.score_pool` (its ``iu0`` pass). Selection by
    reducible loss then ranks an example by its current training loss minus this reference loss
    (Mindermann et al., "Prioritized Training on Points that are Learnable, Worth Learning, and Not
    Yet Learnt", ICML 2022).

    Args:
        module: the :class:`~lead_lightning.models.CausalLMModule` to copy (left unchanged).
        pool_dm: the pool's :class:`~lead_lightning.data.InstructionDataModule`.
        reference_records: the reference's training records.
        max_steps, lr, batch_size, seed, trainer_kwargs: as in :func:`train_reference`
            (``trainer_kwargs`` is used for scoring too).

    Returns:
        float32 ``Tensor[N]``, pool-id order; ``nan`` for ids ``pool_dm`` excluded.

    Example:
        >>> from lead_lightning.data import InstructionDataModule, generate_pool
        >>> from lead_lightning.models import CausalLMModule, tiny_causal_lm, train_bpe_tokenizer
        >>> pool, held = generate_pool(16, seed=0), generate_pool(8, seed=1)
        >>> tok = train_bpe_tokenizer([r.prompt + r.response for r in pool], vocab_size=300)
        >>> dm = InstructionDataModule(pool, tok, max_length=64, batch_size=4)
        >>> lm = CausalLMModule(tiny_causal_lm(len(tok), hidden_size=32, num_layers=1))
        >>> ref_loss = reference_losses(lm, dm, held, max_steps=2,
        ...                             trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
        >>> ref_loss.shape, ref_loss.dtype, bool(ref_loss.isfinite().all())
        (torch.Size([16]), torch.float32, True)
    """
    ref = train_reference(
        module,
        reference_records,
        pool_dm,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        trainer_kwargs=trainer_kwargs,
    )
    return score_pool(ScoringModule(ref), pool_dm, trainer_kwargs)["iu0"].float()


def crossfit_folds(n: int, folds: int, seed: int = 0, exclude: Sequence[int] | Tensor = ()) -> Tensor:
    """The fold of each pool id for cross-fitting: ``LongTensor[n]`` in ``0..folds-1``, ``-1`` for ``exclude``.

    The ids not excluded are permuted with ``seed`` and dealt out in turn, so fold sizes differ by at
    most one.

    Example:
        >>> crossfit_folds(6, 2, seed=0, exclude=[5]).tolist()
        [1, 0, 0, 0, 1, -1]
        >>> torch.bincount(crossfit_folds(10, 3)[crossfit_folds(10, 3) >= 0]).tolist()
        [4, 3, 3]
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"`folds` must be an int >= 2, got {folds!r}.")
    excluded = np.asarray(exclude, dtype=np.int64)
    candidates = np.setdiff1d(np.arange(n), excluded)
    if len(candidates) < folds:
        raise ValueError(
            f"Cross-fitting needs at least `folds`={folds} pool examples, got {len(candidates)}"
            f" ({len(np.unique(excluded))} excluded)."
        )
    order = np.random.default_rng(seed).permutation(candidates)
    fold = torch.full((n,), -1, dtype=torch.long)
    fold[torch.from_numpy(order)] = torch.arange(len(order)) % folds
    return fold


def crossfit_reference_losses(
    module: CausalLMModule,
    pool_dm: InstructionDataModule,
    *,
    folds: int = 2,
    max_steps: int,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Reference losses without extra data: each fold of the pool scored by a model trained on the others.

    The pool ids (less those ``pool_dm`` excludes) are dealt into ``folds`` seeded folds
    (:func:`crossfit_folds`). For fold ``k`` a reference model is trained (:func:`train_reference`,
    seed ``seed + k``) on the records of every other fold and scores only fold ``k``'s examples, so
    no example is scored by a model that trained on it. This is RHO-LOSS without a holdout set
    (Mindermann et al., "Prioritized Training on Points that are Learnable, Worth Learning, and Not
    Yet Learnt", ICML 2022). The references train on the pool as it is, noise included; ``folds``
    models are trained, each for ``max_steps`` steps.

    Args:
        module: the :class:`~lead_lightning.models.CausalLMModule` to copy (left unchanged).
        pool_dm: the pool's :class:`~lead_lightning.data.InstructionDataModule`.
        folds: number of folds (>= 2).
        max_steps, lr, batch_size, seed, trainer_kwargs: as in :func:`train_reference`.

    Returns:
        float32 ``Tensor[N]``, pool-id order; ``nan`` for ids ``pool_dm`` excluded.

    Example:
        >>> from lead_lightning.data import InstructionDataModule, generate_pool
        >>> from lead_lightning.models import CausalLMModule, tiny_causal_lm, train_bpe_tokenizer
        >>> pool = generate_pool(16)
        >>> tok = train_bpe_tokenizer([r.prompt + r.response for r in pool], vocab_size=300)
        >>> dm = InstructionDataModule(pool, tok, max_length=64, batch_size=4)
        >>> lm = CausalLMModule(tiny_causal_lm(len(tok), hidden_size=32, num_layers=1))
        >>> ref_loss = crossfit_reference_losses(lm, dm, folds=2, max_steps=1,
        ...     trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
        >>> ref_loss.shape, bool(ref_loss.isfinite().all())
        (torch.Size([16]), True)
    """
    _check_steps(max_steps)
    pool_dm.setup("fit")
    dataset = pool_dm.train_dataset
    assert dataset is not None, "set up above"
    records = list(pool_dm.train_records)
    fold_of = crossfit_folds(len(dataset), folds, seed, pool_dm.excluded_ids)
    out = torch.full((len(dataset),), float("nan"), dtype=torch.float32)
    for k in range(folds):
        train_ids = torch.nonzero((fold_of >= 0) & (fold_of != k)).flatten().tolist()
        score_ids = torch.nonzero(fold_of == k).flatten().tolist()
        ref = train_reference(
            module,
            [records[i] for i in train_ids],
            pool_dm,
            max_steps=max_steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed + k,
            trainer_kwargs=trainer_kwargs,
        )
        fold_dm = reference_datamodule([records[i] for i in score_ids], pool_dm)  # local id j = score_ids[j]
        scores = score_pool(ScoringModule(ref), fold_dm, trainer_kwargs)
        out[torch.as_tensor(score_ids, dtype=torch.long)] = scores["iu0"].float()
    return out
