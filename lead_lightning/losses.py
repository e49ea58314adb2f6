"""Per-example causal-LM losses computed from logits the training step already has.

The token cross-entropy is computed once; both the batch loss (token-weighted mean, as Hugging Face
computes ``outputs.loss``) and the per-example response-token means are reductions of that one
tensor, so the per-example values cost no second cross-entropy and no second forward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LMLosses", "lm_losses", "per_example_lm_loss"]


class LMLosses(NamedTuple):
    """Both reductions of one token cross-entropy.

    Attributes:
        loss: scalar, mean over every scored token of the batch (equals HF's ``outputs.loss``).
        per_example_loss: ``Tensor[B]``, mean over each example's scored tokens; ``nan`` for an
            example with no scored token (it carries no information and must not enter IDU).
        n_tokens: ``LongTensor[B]``, scored tokens per example.
    """

    loss: Tensor
    per_example_loss: Tensor
    n_tokens: Tensor


def lm_losses(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> LMLosses:
    """Shifted, masked token cross-entropy reduced two ways (batch mean and per-example mean).

    Logits at position ``t`` predict token ``t + 1``; label positions equal to ``ignore_index``
    (prompt and padding) are not scored.

    Args:
        logits: ``Tensor[B, T, V]``.
        labels: ``LongTensor[B, T]`` with ``ignore_index`` on positions that are not scored.
        ignore_index: label value that masks a position.

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 4, 5)
        >>> labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, 4, -100]])
        >>> out = lm_losses(logits, labels)
        >>> out.per_example_loss  # uniform logits: log(5) for every scored token
        tensor([1.6094, 1.6094])
        >>> out.n_tokens
        tensor([3, 1])
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"`logits` must be [B, T, V] and `labels` [B, T] with the same B and T, got"
            f" logits {tuple(logits.shape)} and labels {tuple(labels.shape)}."
        )
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)).float(),
        shift_labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).view(shift_labels.shape)
    mask = shift_labels != ignore_index
    n_tokens = mask.sum(dim=1)
    per_example_sum = token_loss.sum(dim=1)  # ignored positions are exactly 0 in `token_loss`
    per_example = per_example_sum / n_tokens.to(per_example_sum.dtype)  # 0/0 -> nan, on purpose
    loss = per_example_sum.sum() / n_tokens.sum().clamp_min(1).to(per_example_sum.dtype)
    return LMLosses(loss, per_example, n_tokens)


def per_example_lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Token-mean response loss per example: shifted, prompt/pad-masked, any batch size.

    Equals Hugging Face's ``outputs.loss`` when the batch holds one example.

    Example:
        >>> import torch
        >>> per_example_lm_loss(torch.zeros(1, 3, 4), torch.tensor([[-100, 2, 3]]))
        tensor([1.3863])
    """
    return lm_losses(logits, labels, ignore_index).per_example_loss
