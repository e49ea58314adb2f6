"""The one fingerprint function and the digests of its inputs (records, model, tokenizer, template)."""

from __future__ import annotations

import enum
import os
from pathlib import Path

import pytest
import torch

from lead_lightning.data import InstructionRecord, generate_pool
from lead_lightning.models import CausalLMModule, tiny_causal_lm, train_bpe_tokenizer
from lead_lightning.scoring import fingerprint, model_digest, records_digest, scoring_parts, tokenizer_digest
from lead_lightning.scoring.fingerprint import canonical_json, diff_parts, template_digest


def _lm(seed: int = 0) -> torch.nn.Module:
    return tiny_causal_lm(300, hidden_size=32, num_layers=1, num_heads=2, seed=seed)


class Color(str, enum.Enum):
    red = "red"


def test_fingerprint_is_canonical():
    a = fingerprint(seed=0, clustering={"k": 7, "fn": {"seed": 0}}, tags={"b", "a"})
    b = fingerprint(tags={"a", "b"}, clustering={"fn": {"seed": 0}, "k": 7}, seed=0)
    assert a == b and len(a) == 64 and int(a, 16) >= 0
    assert fingerprint(seed=0) != fingerprint(seed=1)
    assert fingerprint(max_length=512) != fingerprint(max_length="512")  # types are part of it
    assert canonical_json({"c": Color.red, "p": Path("/x"), "t": (1, 2)}) == '{"c":"red","p":"/x","t":[1,2]}'
    with pytest.raises(TypeError, match="Cannot fingerprint a value of type object"):
        fingerprint(model=object())


def test_records_digest_covers_content_order_and_count():
    pool = generate_pool(30, seed=0)
    base = records_digest(pool)
    assert base == records_digest(generate_pool(30, seed=0))
    assert base != records_digest(pool[::-1])  # order: ids are positions
    assert base != records_digest(pool[:29])
    changed = list(pool)
    changed[7] = InstructionRecord(pool[7].prompt, pool[7].response, group=pool[7].group + "x")
    assert base != records_digest(changed)  # the group alone
    # field boundaries cannot shift: ("ab", "c") is not ("a", "bc")
    assert records_digest([InstructionRecord("ab", "c")]) != records_digest([InstructionRecord("a", "bc")])
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    other = [dict(m) for m in chat]
    other[0]["content"] = "Be long."
    r1 = InstructionRecord("Hi", "Hello", messages=tuple(chat))
    r2 = InstructionRecord("Hi", "Hello", messages=tuple(other))
    assert records_digest([r1]) != records_digest([r2])  # the context the template renders


def test_tokenizer_and_template_digests():
    texts = [r.prompt + " " + r.response for r in generate_pool(40, seed=0)]
    t1, t2 = train_bpe_tokenizer(texts, vocab_size=300), train_bpe_tokenizer(texts, vocab_size=300)
    assert tokenizer_digest(t1) == tokenizer_digest(t2)
    assert tokenizer_digest(t1) != tokenizer_digest(train_bpe_tokenizer(texts, vocab_size=320))
    t2.padding_side = "left"
    assert tokenizer_digest(t1) != tokenizer_digest(t2)
    assert template_digest("tulu") == template_digest("tulu") != template_digest("alpaca")


def test_model_digest_small_models_hash_every_weight():
    a = model_digest(_lm(0))
    assert a == model_digest(_lm(0)) != model_digest(_lm(1))
    net = _lm(0)
    with torch.no_grad():
        next(iter(net.parameters())).view(-1)[-1] += 1e-3  # one weight anywhere
    assert model_digest(net) != a
    # a fresh LoRA is a no-op (lora_B = 0): the same digest as the bare model, whatever module holds it
    fresh = CausalLMModule(_lm(0), lora={"r": 4, "alpha": 8})
    assert model_digest(fresh) == a
    with torch.no_grad():
        next(p for n, p in fresh.named_parameters() if "lora_B" in n).add_(0.5)
    assert model_digest(fresh) != a  # a trained adapter changes every score: part of the digest


def test_model_digest_big_models_use_weight_files_or_a_sample(tmp_path):
    net = _lm(0)
    net.save_pretrained(tmp_path / "ckpt")
    from lead_lightning.models import load_causal_lm

    loaded = load_causal_lm(tmp_path / "ckpt")
    by_files = model_digest(loaded, max_full_params=10)  # "big": the weight files stand for the weights
    assert by_files == model_digest(load_causal_lm(tmp_path / "ckpt"), max_full_params=10)
    assert by_files != model_digest(loaded)  # another method than the full hash
    weights = next((tmp_path / "ckpt").glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, (st.st_atime, st.st_mtime + 10))  # the file was replaced
    assert model_digest(loaded, max_full_params=10) != by_files

    net = _lm(0)  # (save_pretrained fills in `config.architectures`: a fresh model here)
    sampled = model_digest(net, max_full_params=10)  # no files on disk: a strided sample of each tensor
    assert sampled == model_digest(_lm(0), max_full_params=10)
    with torch.no_grad():
        net.get_input_embeddings().weight[0, 0] += 1.0  # the first element is always in the sample
    assert model_digest(net, max_full_params=10) != sampled


def test_scoring_parts_change_with_every_setting(tokenizer, small_pool):
    pool = small_pool[:20]
    lm = _lm(0)
    base = {"template": "tulu", "max_length": 96, "seed": 0}
    ref = scoring_parts(pool, lm, tokenizer, **base)
    fp = fingerprint(**ref)
    variants = [
        {"template": "alpaca"},
        {"max_length": 128},
        {"seed": 1},
        {"embed": True},
        {"truncation": "exclude"},
        {"warmup": {"n_examples": 8, "max_steps": 2}},
        {"clustering": {"k": 3}},
    ]
    for change in variants:
        assert fingerprint(**scoring_parts(pool, lm, tokenizer, **{**base, **change})) != fp, change
    assert fingerprint(**scoring_parts(pool[:19], lm, tokenizer, **base)) != fp
    assert fingerprint(**scoring_parts(pool, _lm(1), tokenizer, **base)) != fp
    assert fingerprint(**scoring_parts(list(pool), _lm(0), tokenizer, **base)) == fp
    moved = scoring_parts(pool, lm, tokenizer, **{**base, "seed": 3})
    assert diff_parts(ref, moved) == ["seed (stored 0, now 3)"]
    other = scoring_parts(pool[:19], lm, tokenizer, **base)
    [line] = diff_parts(ref, other)
    assert line.startswith(f"records (stored {ref['records'][:16]}..., now {other['records'][:16]}...")
