"""`InstructionDataModule`: the pool (train), a held-out set (val) and the whole pool for scoring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, SequentialSampler
from transformers import PreTrainedTokenizerBase

from lead_lightning.data.arrow import ArrowRecords
from lead_lightning.data.collate import TRUNCATION_MODES, InstructionCollator, Truncation
from lead_lightning.data.dataset import InstructionDataset, LengthBucketBatchSampler
from lead_lightning.data.records import InstructionRecord
from lead_lightning.data.templates import PromptTemplate, get_template

__all__ = ["InstructionDataModule"]


class InstructionDataModule(pl.LightningDataModule):
    """Instruction data for a LEAD run: dataset index == pool id, batches carry ``ids``.

    ``train_dataloader`` iterates :attr:`train_sampler` (pool ids) when one was set with
    :meth:`set_train_sampler` (the LEAD callback sets its round sampler; it shards across ranks
    itself, so use ``Trainer(use_distributed_sampler=False)``), else shuffles the whole pool.
    ``val_dataloader`` gives the held-out records (eval loss). ``predict_dataloader`` covers the
    whole pool in length-bucketed order with the response-alone tensors for IFD scoring.

    Every example is tokenized once, in :meth:`setup`, which also checks lengths before anything runs
    (a pool given as :class:`~lead_lightning.data.arrow.ArrowRecords` stays in Arrow: setup keeps
    only its token counts and every batch is tokenized when it is loaded, with the same token ids):
    with ``truncation="error"`` an example whose prompt fills ``max_length`` is an error naming its id;
    with ``"exclude"`` those ids are listed in :attr:`excluded_ids` (keep them out of selection). How
    many examples will be cut is warned about and kept in :attr:`truncation_report`.

    Args:
        train_records: the pool, in pool-id order (a sequence of records, or an ``ArrowRecords``).
        tokenizer: Hugging Face tokenizer with an eos token.
        val_records: optional held-out records (e.g. GSM8K test) for ``val/loss``.
        template: prompt template name or object, the same for every stage; ``"chat"``: the
            tokenizer's chat template; ``"auto"`` (default): that when the tokenizer has one, else
            ``"tulu"``.
        max_length: longest sequence in tokens.
        batch_size: training batch size.
        eval_batch_size: validation and predict batch size (default ``batch_size``).
        truncation: ``"error"`` | ``"exclude"`` | ``"truncate_prompt"`` (see :class:`InstructionCollator`).
        num_workers: DataLoader workers.
        seed: seed of the default shuffle.

    Example:
        >>> from lead_lightning.data import generate_pool
        >>> from lead_lightning.models import train_bpe_tokenizer
        >>> pool = generate_pool(20)
        >>> tok = train_bpe_tokenizer([r.prompt + r.response for r in pool], vocab_size=300)
        >>> dm = InstructionDataModule(pool, tok, max_length=64, batch_size=4)
        >>> dm.setup("fit")
        >>> dm.set_train_sampler([5, 2, 9])
        >>> next(iter(dm.train_dataloader()))["ids"]
        tensor([5, 2, 9])
    """

    train_sampler: Sampler[int] | Sequence[int] | None = None

    def __init__(
        self,
        train_records: Sequence[InstructionRecord] | ArrowRecords,
        tokenizer: PreTrainedTokenizerBase,
        val_records: Sequence[InstructionRecord] | None = None,
        template: str | PromptTemplate = "auto",
        max_length: int = 512,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        truncation: Truncation = "error",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(train_records) == 0:
            raise ValueError("`train_records` is empty: the pool must hold at least one example.")
        if val_records is not None and len(val_records) == 0:
            raise ValueError("`val_records` is empty; pass None for no validation.")
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"`truncation` must be one of {TRUNCATION_MODES}, got {truncation!r}.")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        self.save_hyperparameters(ignore=["train_records", "val_records", "tokenizer", "template"])
        self.template = get_template(template, tokenizer)  # "chat"/"auto" resolved from the tokenizer
        self.hparams["template"] = self.template.name  # a plain str: weights_only-safe
        self.train_records = train_records
        self.val_records = val_records
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.truncation: Truncation = truncation
        self.num_workers = num_workers
        self.seed = seed
        self.train_sampler = None
        self.train_dataset: InstructionDataset | None = None
        self.val_dataset: InstructionDataset | None = None
        self.excluded_ids: Tensor = torch.zeros(0, dtype=torch.long)
        self.truncation_report: dict[str, Any] = {}
        self.collator = self._collator(response_only=False)

    def _collator(self, response_only: bool) -> InstructionCollator:
        return InstructionCollator(
            self.tokenizer, self.max_length, self.template, self.truncation, response_only=response_only
        )

    def set_train_sampler(self, sampler: Sampler[int] | Sequence[int] | None) -> None:
        """Train on the pool ids ``sampler`` yields (``None``: back to shuffling the whole pool)."""
        self.train_sampler = sampler

    def setup(self, stage: str | None = None) -> None:
        """Tokenize the pool (and val set) once and check truncation; later calls are no-ops."""
        if self.train_dataset is None:
            if isinstance(self.train_records, ArrowRecords):  # stays in Arrow: tokenized per batch
                self.train_dataset = self.train_records.instruction_dataset(
                    self.tokenizer, self.template, self.max_length
                )
            else:
                self.train_dataset = InstructionDataset(
                    self.train_records, self.tokenizer, self.template, self.max_length
                )
            self.excluded_ids = self._check_lengths(self.train_dataset, "train")
            self.truncation_report = self.train_dataset.truncation_report()
        if self.val_records is not None and self.val_dataset is None:
            self.val_dataset = InstructionDataset(
                self.val_records, self.tokenizer, self.template, self.max_length
            )
            self._check_lengths(self.val_dataset, "val")

    def _check_lengths(self, dataset: InstructionDataset, split: str) -> Tensor:
        report = dataset.truncation_report()
        cut_off = report["response_cut_off_ids"]
        if self.truncation == "truncate_prompt":
            cut_off = cut_off[:0]
        if len(cut_off) and self.truncation == "error":
            raise ValueError(
                f"{len(cut_off)} {split} example(s) have a prompt of >= `max_length` ({self.max_length})"
                f" tokens, so no response token would be scored; ids: {cut_off[:10].tolist()}"
                f"{' ...' if len(cut_off) > 10 else ''}. HINT: raise `max_length`, or set"
                " `truncation='exclude'` or `truncation='truncate_prompt'`."
            )
        n_cut = report["n_truncated"] - len(cut_off)
        if n_cut or len(cut_off):
            rank_zero_warn(
                f"{n_cut} of {len(dataset)} {split} examples are longer than `max_length`"
                f" ({self.max_length}) and will be truncated; {len(cut_off)} excluded."
            )
        return cut_off

    def _loader(self, dataset: InstructionDataset | None, stage: str, **kwargs: Any) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"No {stage} data: call `setup()` first (the Trainer does).")
        return DataLoader(dataset, num_workers=self.num_workers, **kwargs)

    def train_dataloader(self) -> DataLoader:
        """The pool, in :attr:`train_sampler` order when set, else shuffled (seeded)."""
        if self.train_sampler is not None:
            return self._loader(
                self.train_dataset,
                "train",
                batch_size=self.batch_size,
                sampler=self.train_sampler,
                collate_fn=self.collator,
            )
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(
            self.train_dataset,
            "train",
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self.collator,
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The held-out records in order (an empty list when there are none)."""
        if self.val_records is None:
            return []
        return self._loader(
            self.val_dataset, "val", batch_size=self.eval_batch_size, collate_fn=self.collator
        )

    def predict_dataloader(self) -> DataLoader:
        """The whole pool, length-bucketed (longest first), with ``ro_*`` tensors for IFD; ids travel along."""
        if self.train_dataset is None:
            raise RuntimeError("No pool: call `setup()` first (the Trainer does).")
        batch_sampler = LengthBucketBatchSampler(
            SequentialSampler(self.train_dataset), self.eval_batch_size, lengths=self.train_dataset.lengths
        )
        return self._loader(
            self.train_dataset,
            "predict",
            batch_sampler=batch_sampler,
            collate_fn=self._collator(response_only=True),
        )
