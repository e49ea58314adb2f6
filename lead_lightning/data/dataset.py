"""`InstructionDataset` (pre-tokenized pool, index == pool id) and a length-bucketing batch sampler."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from lead_lightning.data.collate import tokenize_records
from lead_lightning.data.records import InstructionRecord
from lead_lightning.data.templates import PromptTemplate, get_template

__all__ = ["InstructionDataset", "LengthBucketBatchSampler"]


class _Ragged:
    """Variable-length int32 rows stored flat (one array + offsets): compact for large pools."""

    def __init__(self, rows: Sequence[Sequence[int]]) -> None:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        self.offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.values = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(self.offsets[-1]))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]


class InstructionDataset(Dataset[dict[str, Any]]):
    """A pool of instruction records, tokenized once; item ``i`` is pool id ``i``.

    An item is ``{"id": i, "prompt_ids": int32 array, "response_ids": int32 array}`` (untruncated;
    the collator cuts to its ``max_length`` and counts what it cuts).

    Args:
        records: the pool, in pool-id order.
        tokenizer: Hugging Face tokenizer with an eos token.
        template: prompt template name or object (the same one everywhere); ``"auto"`` (default): the
            tokenizer's chat template when it has one, else ``"tulu"`` (see
            :func:`~lead_lightning.data.templates.get_template`).
        max_length: the collator's ``max_length``; when given, :attr:`lengths` is clipped to it and
            :meth:`truncation_report` can be called without an argument.

    Example:
        >>> from lead_lightning.data import generate_pool
        >>> from lead_lightning.models import train_bpe_tokenizer
        >>> pool = generate_pool(12)
        >>> tok = train_bpe_tokenizer([r.prompt + r.response for r in pool], vocab_size=300)
        >>> ds = InstructionDataset(pool, tok, max_length=64)
        >>> item = ds[3]
        >>> item["id"], tok.decode(item["response_ids"]) == pool[3].response + "<eos>"
        (3, True)
    """

    def __init__(
        self,
        records: Sequence[InstructionRecord],
        tokenizer: PreTrainedTokenizerBase,
        template: str | PromptTemplate = "auto",
        max_length: int | None = None,
    ) -> None:
        if len(records) == 0:
            raise ValueError("`records` is empty: the pool must hold at least one example.")
        self.records = records
        self.template = get_template(template, tokenizer)
        self.max_length = max_length
        prompt_ids, response_ids = tokenize_records(records, tokenizer, self.template)
        self._prompt = _Ragged(prompt_ids)
        self._response = _Ragged(response_ids)
        self.prompt_lengths: np.ndarray = self._prompt.lengths()
        """Tokens per rendered prompt (BOS included when the tokenizer adds one)."""
        self.response_lengths: np.ndarray = self._response.lengths()
        """Tokens per response (its eos included)."""

    def __len__(self) -> int:
        return len(self._prompt.offsets) - 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"pool id {index} out of range for a pool of {len(self)} examples")
        return {"id": i, "prompt_ids": self._prompt[i], "response_ids": self._response[i]}

    @property
    def lengths(self) -> np.ndarray:
        """Sequence length per example (prompt + response), clipped to ``max_length`` when set."""
        total = self.prompt_lengths + self.response_lengths
        return total if self.max_length is None else np.minimum(total, self.max_length)

    @property
    def groups(self) -> list[str]:
        """Group label of every example, in pool-id order."""
        return [r.group for r in self.records]

    def truncation_report(self, max_length: int | None = None) -> dict[str, Any]:
        """Which examples a collator with this ``max_length`` would cut.

        Returns:
            ``{"max_length", "n_examples", "n_truncated", "response_cut_off_ids"}``: examples longer
            than ``max_length``, and the ids whose prompt alone fills it (no response token would be
            left unless the prompt is truncated), as a ``LongTensor``.
        """
        max_length = self.max_length if max_length is None else max_length
        if max_length is None:
            raise ValueError("Give `max_length` (here or to the constructor).")
        total = self.prompt_lengths + self.response_lengths
        return {
            "max_length": max_length,
            "n_examples": len(self),
            "n_truncated": int((total > max_length).sum()),
            "response_cut_off_ids": torch.from_numpy(np.flatnonzero(self.prompt_lengths >= max_length)),
        }


class LengthBucketBatchSampler(BatchSampler):
    """Batches of indices of similar length (longest first), to cut padding waste when scoring.

    Follows PyTorch's ``BatchSampler`` interface (``sampler``, ``batch_size``, ``drop_last``), so when
    it is created inside a ``*_dataloader`` hook Lightning can swap in its distributed sampler: under
    DDP ``Trainer.predict`` each rank then buckets its own disjoint shard of the pool.

    Args:
        sampler: the indices to batch (e.g. ``SequentialSampler(dataset)``, or an iterable of ids).
        batch_size: indices per batch.
        drop_last: drop the last, smaller batch.
        lengths: length of every index of the dataset (e.g. ``InstructionDataset.lengths``).
        shuffle: shuffle the order of the batches (each epoch differently, seeded).
        seed: seed of that shuffle.

    Example:
        >>> list(LengthBucketBatchSampler(range(5), batch_size=2, lengths=[3, 9, 1, 7, 5]))
        [[1, 3], [4, 0], [2]]
    """

    def __init__(
        self,
        sampler: Sampler[int] | Iterable[int],
        batch_size: int,
        drop_last: bool = False,
        *,
        lengths: Sequence[int] | np.ndarray,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.lengths = np.asarray(lengths)
        self.shuffle = shuffle
        self.seed = seed
        self._epoch = 0

    def __iter__(self) -> Iterator[list[int]]:
        indices = np.fromiter(iter(self.sampler), dtype=np.int64)
        order = indices[np.argsort(-self.lengths[indices], kind="stable")]
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            rng = np.random.default_rng((self.seed, self._epoch))
            batches = [batches[j] for j in rng.permutation(len(batches))]
            self._epoch += 1
        yield from batches

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
