"""`lm_losses` / `per_example_lm_loss` against Hugging Face's own causal-LM loss (the reference)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from lead_lightning import lm_losses, per_example_lm_loss

VOCAB = 97


@pytest.fixture(scope="module")
def llama_batch():
    """A tiny random Llama and a right-padded batch with prompt prefixes masked in the labels."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        initializer_range=0.5,  # large weights: per-example losses clearly differ from each other
    )
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    B, T = 4, 12
    input_ids = torch.randint(0, VOCAB, (B, T), generator=g)
    lengths = [12, 9, 7, 10]  # tokens before right padding
    prompts = [3, 2, 4, 1]  # prompt tokens (not scored)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    labels = input_ids.clone()
    for i, (n, p) in enumerate(zip(lengths, prompts, strict=True)):
        attention_mask[i, :n] = 1
        labels[i, :p] = -100
        labels[i, n:] = -100
        input_ids[i, n:] = 0  # pad token
    with torch.no_grad():
        out = model(input_ids, attention_mask=attention_mask, labels=labels)
    return model, input_ids, attention_mask, labels, out


def test_per_example_loss_equals_hf_loss_of_each_example_alone(llama_batch):
    model, input_ids, attention_mask, labels, out = llama_batch
    res = lm_losses(out.logits, labels)
    with torch.no_grad():
        for i in range(input_ids.shape[0]):
            ref = model(
                input_ids[i : i + 1], attention_mask=attention_mask[i : i + 1], labels=labels[i : i + 1]
            ).loss
            torch.testing.assert_close(res.per_example_loss[i], ref, rtol=1e-5, atol=1e-5)
    # per_example_lm_loss is the same reduction
    torch.testing.assert_close(per_example_lm_loss(out.logits, labels), res.per_example_loss)


def test_batch_loss_equals_hf_batch_loss(llama_batch):
    _, _, _, labels, out = llama_batch
    res = lm_losses(out.logits, labels)
    torch.testing.assert_close(res.loss, out.loss, rtol=1e-6, atol=1e-6)
    # token-weighted mean: the per-example means weighted by their scored-token counts
    weighted = (res.per_example_loss * res.n_tokens).sum() / res.n_tokens.sum()
    torch.testing.assert_close(res.loss, weighted, rtol=1e-6, atol=1e-6)


def test_n_tokens_counts_shifted_scored_positions(llama_batch):
    _, _, _, labels, out = llama_batch
    # scored = labels at positions 1..T-1 that are not -100 (position 0 has nothing predicting it)
    expected = (labels[:, 1:] != -100).sum(dim=1)
    assert torch.equal(lm_losses(out.logits, labels).n_tokens, expected)
    assert expected.tolist() == [12 - 3, 9 - 2, 7 - 4, 10 - 1]


def test_per_example_losses_are_not_the_batch_mean(llama_batch):
    """Official bug: batch-size-1 assumption gave every example of a batch the batch mean."""
    _, _, _, labels, out = llama_batch
    res = lm_losses(out.logits, labels)
    assert not torch.allclose(res.per_example_loss, res.loss.expand_as(res.per_example_loss), atol=1e-3)
    assert res.per_example_loss.unique().numel() == res.per_example_loss.numel()


def test_logits_are_shifted_against_labels():
    """Logit at t scores token t+1; the official code scored logit t against token t."""
    V = 5
    labels = torch.tensor([[-100, 2, 3, 4]])
    logits = torch.zeros(1, 4, V)
    logits[0, 0, 2] = 4.0  # predicts labels[1]
    logits[0, 1, 3] = 4.0  # predicts labels[2]
    logits[0, 2, 4] = 4.0  # predicts labels[3]
    logits[0, 3, 0] = 9.0  # the last logit predicts nothing

    def slow_ce(lg, tok):
        return -(float(lg[tok]) - math.log(sum(math.exp(float(x)) for x in lg)))

    shifted = sum(slow_ce(logits[0, t], int(labels[0, t + 1])) for t in range(3)) / 3
    unshifted = sum(slow_ce(logits[0, t], int(labels[0, t])) for t in range(1, 4)) / 3
    got = per_example_lm_loss(logits, labels)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(shifted, rel=1e-5)
    assert abs(shifted - unshifted) > 1.0  # the test would catch an unshifted implementation
    assert got.item() == pytest.approx(-F.log_softmax(torch.tensor([4.0, 0, 0, 0, 0]), 0)[0].item(), rel=1e-5)


def test_example_without_scored_tokens_is_nan():
    logits = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 1, 2, 3], [5, -100, -100, -100], [-100, -100, -100, 6]])
    res = lm_losses(logits, labels)
    # example 1 only has a label at position 0, which no logit predicts
    assert res.n_tokens.tolist() == [3, 0, 1]
    assert torch.isnan(res.per_example_loss[1])
    assert torch.isfinite(res.per_example_loss[[0, 2]]).all()
    assert torch.isfinite(res.loss)  # the batch loss ignores the empty example


def test_custom_ignore_index():
    logits = torch.randn(2, 4, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, 4, -100]])
    other = torch.where(labels == -100, torch.full_like(labels, 0), labels)
    a = lm_losses(logits, labels)
    b = lm_losses(logits, torch.where(labels == -100, torch.full_like(labels, -1), labels), ignore_index=-1)
    torch.testing.assert_close(a.per_example_loss, b.per_example_loss)
    # with a non-matching ignore_index the padding is scored and the result changes
    assert not torch.allclose(a.per_example_loss, lm_losses(logits, other, ignore_index=-1).per_example_loss)


def test_half_precision_logits_give_float32_losses():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 1, 2, 3, 4], [-100, -100, 4, 5, -100]])
    res = lm_losses(logits.bfloat16(), labels)
    assert res.per_example_loss.dtype == torch.float32
    torch.testing.assert_close(
        res.per_example_loss, lm_losses(logits.bfloat16().float(), labels).per_example_loss
    )


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape"),
    [((2, 4, 5), (2, 5)), ((2, 4, 5), (3, 4)), ((2, 4), (2, 4)), ((2, 4, 5), (2, 4, 1)), ((8, 5), (8,))],
)
def test_shape_mismatch_raises(logits_shape, labels_shape):
    with pytest.raises(ValueError, match=r"`logits` must be \[B, T, V\] and `labels` \[B, T\]"):
        lm_losses(torch.zeros(logits_shape), torch.zeros(labels_shape, dtype=torch.long))
