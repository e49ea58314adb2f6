"""Shared, session-scoped fixtures: a small generated pool and a BPE tokenizer trained on it offline."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _lead_cache_dir(tmp_path_factory, monkeypatch):  # noqa: ANN001, ANN202
    """Each test gets its own `lead-train` score cache (`pool.cache_dir`), never the repository's."""
    monkeypatch.setenv("LEAD_CACHE_DIR", str(tmp_path_factory.mktemp("lead-cache")))


@pytest.fixture(scope="session")
def small_pool():  # noqa: ANN201 - imports kept inside so collecting unrelated tests stays fast
    from lead_lightning.data import generate_pool

    return generate_pool(120, seed=0)


@pytest.fixture(scope="session")
def tokenizer(small_pool):  # noqa: ANN001, ANN201
    from lead_lightning.models import train_bpe_tokenizer

    texts = [r.prompt for r in small_pool] + [r.response for r in small_pool]
    return train_bpe_tokenizer(texts, vocab_size=400)
