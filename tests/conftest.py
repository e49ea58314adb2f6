"""Shared, session-scoped fixtures: a small generated pool and a BPE tokenizer trained on it offline."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_pool():  # noqa: ANN201 - imports kept inside so collecting unrelated tests stays fast
    from lead_lightning.data import generate_pool

    return generate_pool(120, seed=0)


@pytest.fixture(scope="session")
def tokenizer(small_pool):  # noqa: ANN001, ANN201
    from lead_lightning.models import train_bpe_tokenizer

    texts = [r.prompt for r in small_pool] + [r.response for r in small_pool]
    return train_bpe_tokenizer(texts, vocab_size=400)
