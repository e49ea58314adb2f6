"""Tokenize prompt/response pairs once, and collate them into padded, prompt-masked batches.

The prompt (rendered by the template) and the response are tokenized separately and concatenated,
``prompt_ids + response_ids + [eos]``, so the boundary is exact: labels are ``-100`` on every prompt
and padding position and equal the token on every response position (its eos included). The same
token ids serve scoring, training and evaluation. With the tokenizer's chat template
(:class:`~lead_lightning.data.templates.ChatTemplate`) the prompt is the rendered conversation up to
its generation prompt (the template's own special tokens, no others added) and the closing token is
the template's end of turn (SmolLM2: ``<|im_end|>``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lead_lightning.data.records import InstructionRecord
from lead_lightning.data.templates import ChatTemplate, PromptTemplate, get_template

__all__ = [
    "IGNORE_INDEX",
    "InstructionCollator",
    "TRUNCATION_MODES",
    "TruncationStats",
    "fit_to_length",
    "tokenize_records",
]

IGNORE_INDEX = -100
TRUNCATION_MODES = ("error", "exclude", "truncate_prompt")
Truncation = Literal["error", "exclude", "truncate_prompt"]
TokenIds = Sequence[int] | np.ndarray


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids the tokenizer puts in front of a text (e.g. Llama's BOS); suffixes (eos) are not kept."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k : k + len(plain)] == plain:
            return list(with_special[:k])
    return []


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token; set `tokenizer.eos_token` (responses end with it).")
    return int(tokenizer.eos_token_id)


def tokenize_records(
    records: Sequence[InstructionRecord],
    tokenizer: PreTrainedTokenizerBase,
    template: str | PromptTemplate = "auto",
    chunk_size: int = 1024,
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of every record's rendered prompt and of its response followed by eos.

    The prompt gets the tokenizer's leading special tokens (e.g. BOS) if it adds any; the response gets
    none but a final eos. Fast tokenizers process ``chunk_size`` texts per call. With a chat template
    (``template="chat"``, or the default ``"auto"`` for a tokenizer that has one) the prompt holds
    only what the template renders and the response ends with the template's end-of-turn token
    (:meth:`ChatTemplate.end_of_turn_id`); the template is checked to render a reply as its
    generation prompt followed by the reply (:meth:`ChatTemplate.reply_suffix`), else this is an error.

    Example:
        >>> from lead_lightning.models import train_bpe_tokenizer
        >>> tok = train_bpe_tokenizer(["Add: 2 + 3", "5"], vocab_size=300)
        >>> p, r = tokenize_records([InstructionRecord("Add: 2 + 3", "5")], tok)
        >>> tok.decode(p[0]), tok.decode(r[0])
        ('<|user|>\\nAdd: 2 + 3\\n<|assistant|>\\n', '5<eos>')
    """
    tmpl = get_template(template, tokenizer)
    eos_text = tokenizer.eos_token
    if isinstance(tmpl, ChatTemplate):  # the template renders its own BOS / special tokens
        eos, prefix = tmpl.end_of_turn_id(tokenizer), []
    else:
        eos, prefix = _eos_id(tokenizer), _special_prefix(tokenizer)
    prompt_ids: list[list[int]] = []
    response_ids: list[list[int]] = []
    for start in range(0, len(records), chunk_size):
        chunk = records[start : start + chunk_size]
        prompts = [tmpl.render_prompt(r.prompt, r.messages, eos_text, tokenizer) for r in chunk]
        enc_p = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        enc_r = tokenizer([r.response for r in chunk], add_special_tokens=False)["input_ids"]
        prompt_ids.extend(prefix + list(p) for p in enc_p)
        response_ids.extend(list(r) + [eos] for r in enc_r)
    return prompt_ids, response_ids


def fit_to_length(
    prompt_ids: TokenIds, response_ids: TokenIds, max_length: int, truncation: Truncation = "error"
) -> tuple[TokenIds, TokenIds] | None:
    """Cut a prompt/response pair to at most ``max_length`` tokens.

    ``"error"`` and ``"exclude"`` cut the end of the response; ``"truncate_prompt"`` drops the start of
    the prompt first (keeping at least one prompt token), then the end of the response if it alone is
    too long. Returns ``None`` when no response token would remain (the caller raises or excludes).

    Example:
        >>> fit_to_length([1, 2, 3], [7, 8, 9], 4)
        ([1, 2, 3], [7])
        >>> fit_to_length([1, 2, 3], [7, 8, 9], 4, "truncate_prompt")
        ([3], [7, 8, 9])
        >>> fit_to_length([1, 2, 3, 4], [7], 4) is None
        True
    """
    n_p, n_r = len(prompt_ids), len(response_ids)
    if n_p + n_r <= max_length:
        return prompt_ids, response_ids
    if truncation == "truncate_prompt":
        keep_r = min(n_r, max_length - 1)
        return prompt_ids[n_p - (max_length - keep_r) :], response_ids[:keep_r]
    if n_p >= max_length:
        return None
    return prompt_ids, response_ids[: max_length - n_p]


@dataclass
class TruncationStats:
    """Examples collated, cut to ``max_length``, and excluded (response entirely cut off)."""

    n_examples: int = 0
    n_truncated: int = 0
    n_excluded: int = 0


class InstructionCollator:
    """Collate examples into right-padded batches whose labels score only response tokens.

    Each item is a mapping with its pool ``id`` and either pre-tokenized ``prompt_ids`` and
    ``response_ids`` (what :class:`~lead_lightning.data.InstructionDataset` yields) or an
    :class:`InstructionRecord` under ``record`` (tokenized on first sight and cached by id).

    Returns ``input_ids``, ``attention_mask``, ``labels`` (``-100`` on prompt and padding) and ``ids``
    (``LongTensor[B]``, the pool ids), plus with ``response_only=True`` the response alone as
    ``ro_input_ids``, ``ro_attention_mask``, ``ro_labels`` (a start token, unscored, then exactly the
    response tokens scored in ``labels``) for IFD scoring.

    Args:
        tokenizer: Hugging Face tokenizer with an eos token (pad falls back to eos).
        max_length: longest sequence, in tokens.
        template: template name or object; ``"auto"`` (default): the tokenizer's chat template when
            it has one, else ``"tulu"``; must match the one used to pre-tokenize.
        truncation: what to do with an example longer than ``max_length``: ``"error"`` (default)
            cuts the response end but raises if no response token remains; ``"exclude"`` counts and
            drops such an example from the batch; ``"truncate_prompt"`` drops the prompt start first.
        response_only: also return the response-alone tensors.
        pad_to_multiple_of: round the padded length up to a multiple of this.

    Attributes:
        stats: :class:`TruncationStats` accumulated over every call in this process (each DataLoader
            worker counts its own copy; :meth:`InstructionDataset.truncation_report` gives pool-wide
            counts up front).

    Example:
        >>> from lead_lightning.models import train_bpe_tokenizer
        >>> tok = train_bpe_tokenizer(["Add: 2 + 3", "5"], vocab_size=300)
        >>> collate = InstructionCollator(tok, max_length=32)
        >>> batch = collate([{"id": 7, "record": InstructionRecord("Add: 2 + 3", "5")}])
        >>> batch["ids"], (batch["labels"] != -100).sum().item()  # "5" and eos are scored
        (tensor([7]), 2)
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        template: str | PromptTemplate = "auto",
        truncation: Truncation = "error",
        response_only: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"`max_length` must be an int >= 2, got {max_length!r}.")
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"`truncation` must be one of {TRUNCATION_MODES}, got {truncation!r}.")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"`pad_to_multiple_of` must be >= 1 or None, got {pad_to_multiple_of!r}.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.template = get_template(template, tokenizer)
        self.truncation: Truncation = truncation
        self.response_only = response_only
        self.pad_to_multiple_of = pad_to_multiple_of
        eos = _eos_id(tokenizer)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos
        self.start_id = int(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else eos
        self.stats = TruncationStats()
        self._cache: dict[int, tuple[list[int], list[int]]] = {}

    def reset_stats(self) -> None:
        """Zero the truncation counters."""
        self.stats = TruncationStats()

    def _token_ids(self, item: Mapping[str, Any]) -> tuple[int, TokenIds, TokenIds]:
        if not isinstance(item, Mapping) or "id" not in item:
            raise ValueError(
                f"Each item must be a mapping carrying its pool id under `id`, got {item!r:.120}."
                " HINT: index an `InstructionDataset`, or pass {'id': i, 'record': record}."
            )
        pid = int(item["id"])
        if "prompt_ids" in item:
            return pid, item["prompt_ids"], item["response_ids"]
        if pid not in self._cache:
            record = item.get("record")
            if not isinstance(record, InstructionRecord):
                raise ValueError(
                    f"Item with id {pid} has neither `prompt_ids`/`response_ids` nor an InstructionRecord"
                    f" under `record`; keys: {sorted(item)}."
                )
            p, r = tokenize_records([record], self.tokenizer, self.template)
            self._cache[pid] = (p[0], r[0])
        return (pid, *self._cache[pid])

    def _padded_length(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        if not m:
            return longest
        return min(-(-longest // m) * m, max(longest, self.max_length))

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        kept: list[tuple[int, TokenIds, TokenIds]] = []
        for item in items:
            pid, p, r = self._token_ids(item)
            self.stats.n_examples += 1
            if len(p) + len(r) > self.max_length:
                fitted = fit_to_length(p, r, self.max_length, self.truncation)
                if fitted is None:
                    if self.truncation == "error":
                        raise ValueError(
                            f"Example id {pid}: its prompt alone has {len(p)} tokens, >= `max_length`"
                            f" ({self.max_length}), so no response token would be scored. HINT: raise"
                            " `max_length`, or set `truncation='exclude'` (count and drop such examples)"
                            " or `truncation='truncate_prompt'`."
                        )
                    self.stats.n_excluded += 1
                    continue
                self.stats.n_truncated += 1
                p, r = fitted
            kept.append((pid, p, r))

        b = len(kept)
        width = self._padded_length(max((len(p) + len(r) for _, p, r in kept), default=1))
        input_ids = np.full((b, width), self.pad_id, dtype=np.int64)
        labels = np.full((b, width), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        for row, (_, p, r) in enumerate(kept):
            n_p, n = len(p), len(p) + len(r)
            input_ids[row, :n_p] = p
            input_ids[row, n_p:n] = r
            labels[row, n_p:n] = r
            mask[row, :n] = 1
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels),
            "ids": torch.tensor([pid for pid, _, _ in kept], dtype=torch.long),
        }
        if self.response_only:
            batch.update(self._response_alone([r for _, _, r in kept]))
        return batch

    def _response_alone(self, responses: list[TokenIds]) -> dict[str, Tensor]:
        b = len(responses)
        width = self._padded_length(max((1 + len(r) for r in responses), default=1))
        input_ids = np.full((b, width), self.pad_id, dtype=np.int64)
        labels = np.full((b, width), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        for row, r in enumerate(responses):
            n = 1 + len(r)
            input_ids[row, 0] = self.start_id
            input_ids[row, 1:n] = r
            labels[row, 1:n] = r
            mask[row, :n] = 1
        return {
            "ro_input_ids": torch.from_numpy(input_ids),
            "ro_attention_mask": torch.from_numpy(mask),
            "ro_labels": torch.from_numpy(labels),
        }
