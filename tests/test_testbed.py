"""The study testbed (`data=testbed`): structure, planted noise, near-duplicates, disjoint splits."""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

import pytest

from lead_lightning.app.data import TESTBED_FAMILIES
from lead_lightning.app.data import testbed_split as make_testbed  # not `test*`: pytest would collect it
from lead_lightning.data import generate_family, near_duplicates, plant_noise
from lead_lightning.data.synthetic import perturb_prompt

GSM8K_DIR = Path("/work/shared/data")
SMALL = {"pool_size": 400, "eval_per_family": 10, "pretrain_size": 300}


def truth(prompt: str) -> str:
    """The correct answer of a generated prompt (an independent reference)."""
    task, arg = prompt.strip().split(": ", 1)
    arg = arg.strip()
    task = task.lower()
    if task.startswith("copy"):
        return arg
    if task.startswith("reverse"):
        return arg[::-1]
    if task.startswith("sort"):
        return "".join(sorted(arg))
    a, op, b = arg.split()
    return str(int(a) + int(b)) if op == "+" else str(int(a) * int(b))


def norm(prompt: str) -> str:
    return " ".join(prompt.split()).lower()


def test_families_have_their_shares_and_answers_are_right_unless_flagged():
    s = make_testbed(**SMALL)
    n_dup = round(0.03 * 400)
    base = [r for r, d in zip(s.train, s.flags["duplicate"], strict=True) if not d]
    counts = Counter(r.group for r in base)
    total = sum(TESTBED_FAMILIES.values())
    for family, share in TESTBED_FAMILIES.items():
        assert abs(counts[family] - share / total * (400 - n_dup)) <= 1
    for r, noisy in zip(s.train, s.flags["noisy"], strict=True):
        assert (r.response != truth(r.prompt)) == noisy
        assert not noisy or r.group in ("reverse", "add")
    rows = list(zip(s.train, s.flags["noisy"], s.flags["duplicate"], strict=True))
    for family in ("reverse", "add"):
        in_family = [n for r, n, d in rows if r.group == family and not d]
        assert abs(sum(in_family) / len(in_family) - 0.25) < 0.03  # coincident sums stay clean


def test_near_duplicates_are_flagged_copies_with_a_trivially_different_prompt():
    s = make_testbed(**SMALL)
    originals = {norm(r.prompt): r for r, d in zip(s.train, s.flags["duplicate"], strict=True) if not d}
    dups = [r for r, d in zip(s.train, s.flags["duplicate"], strict=True) if d]
    assert len(dups) == round(0.03 * 400)
    for r in dups:
        twin = originals[norm(r.prompt)]
        assert twin.prompt != r.prompt and twin.response == r.response and twin.group == r.group
    # a noisy example's copy is noisy too
    for r, n, d in zip(s.train, s.flags["noisy"], s.flags["duplicate"], strict=True):
        if d:
            assert n == (r.response != truth(r.prompt))


def test_held_out_and_pretraining_splits_are_clean_and_disjoint():
    pool = make_testbed(**SMALL)
    pre = make_testbed(**SMALL, split="pretrain")
    assert pre.val == pool.val and len(pre.train) == 300 and pre.flags == {}
    assert Counter(r.group for r in pool.val) == dict.fromkeys(TESTBED_FAMILIES, 10)
    for r in pool.val + pre.train:
        assert r.response == truth(r.prompt)
    pool_prompts = {norm(r.prompt) for r in pool.train}
    assert not pool_prompts & {norm(r.prompt) for r in pool.val}
    assert not pool_prompts & {norm(r.prompt) for r in pre.train}
    assert not {r.prompt for r in pool.val} & {r.prompt for r in pre.train}


def test_deterministic_and_the_seed_changes_everything():
    a, b = make_testbed(**SMALL), make_testbed(**SMALL)
    assert a == b
    c = make_testbed(**SMALL, seed=1)
    assert {r.prompt for r in a.train} != {r.prompt for r in c.train}
    assert [r.prompt for r in a.val] != [r.prompt for r in c.val]


def test_a_zero_share_leaves_a_family_out():
    s = make_testbed(**SMALL, families={"copy": 0.5, "add": 0.5, "multiply": 0.0}, noisy_families=["add"])
    assert {r.group for r in s.train} == {"copy", "add"}


@pytest.mark.skipif(not (GSM8K_DIR / "gsm8k" / "train.jsonl").is_file(), reason="no local GSM8K copy")
def test_gsm8k_family_from_the_local_copy_is_disjoint_across_splits():
    kw = {**SMALL, "families": {"copy": 0.8, "gsm8k": 0.2}, "noisy_families": [], "data_dir": GSM8K_DIR}
    pool, pre = make_testbed(**kw), make_testbed(**kw, split="pretrain")
    gsm = [r for r in pool.train if r.group == "gsm8k"]
    assert len(gsm) >= 70 and all("####" in r.response for r in gsm)
    assert not {r.prompt for r in gsm} & {r.prompt for r in pre.train}
    assert sum(r.group == "gsm8k" for r in pool.val) == 10


def test_missing_gsm8k_is_skipped_with_a_warning_or_an_error(tmp_path, caplog):  # noqa: ANN001
    kw = {**SMALL, "families": {"copy": 0.8, "gsm8k": 0.2}, "noisy_families": [], "data_dir": tmp_path}
    with caplog.at_level(logging.WARNING):
        s = make_testbed(**kw)
    assert {r.group for r in s.train} == {"copy"} and "Skipping the gsm8k family" in caplog.text
    with pytest.raises(FileNotFoundError, match="HINT: set LEAD_DATA_DIR"):
        make_testbed(**kw, on_missing="error")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "val"}, "`split` must be"),
        ({"split": "reference", "reference_size": -1}, "`reference_size`"),
        ({"families": {"copy": 1.0, "poetry": 1.0}}, "unknown: \\['poetry'\\]"),
        ({"families": {"copy": 0.0}}, "no family a share > 0"),
        ({"noisy_families": ["sort"]}, "`noisy_families` \\['sort'\\]"),
        ({"duplicate_share": 1.0}, "`duplicate_share`"),
        ({"on_missing": "ignore"}, "`on_missing`"),
        ({"pool_size": 3}, "too small"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        make_testbed(**{**SMALL, **kwargs})


def test_noise_rotates_answers_within_a_family_only():
    recs = generate_family("add", 20, seed=3) + generate_family("copy", 20, seed=3)
    out, flags = plant_noise(recs, ["add"], 0.5, seed=0)
    assert sorted(r.response for r in out[:20]) == sorted(r.response for r in recs[:20])
    assert out[20:] == recs[20:] and 9 <= sum(flags) <= 10
    with pytest.raises(ValueError, match="not in the records"):
        plant_noise(recs, ["reverse"], 0.5)


def test_generate_family_guards_against_an_impossible_request():
    with pytest.raises(ValueError, match="Unknown family"):
        generate_family("poetry", 3)
    with pytest.raises(ValueError, match="distinct"):
        generate_family("add", 10, exclude={f"Add: {a} + {b}" for a in range(1000) for b in range(1000)})


def test_perturbations_keep_the_words():
    rng = random.Random(0)
    for _ in range(50):
        p = perturb_prompt("Reverse the word: abc", rng)
        assert p != "Reverse the word: abc" and norm(p) == norm("Reverse the word: abc")
    dups, src = near_duplicates(generate_family("copy", 5), 5)
    assert sorted(src) == [0, 1, 2, 3, 4]


# The records digests (lead_lightning.scoring.records_digest, what keys the score caches) of the default
# testbed's parts, computed before the reference split existed: adding a part must not change them.
DEFAULT_DIGESTS = {
    "pool": "3932bf067acd069cfcf91ab50db782ef0104f7bedf5eb3b4edfd0e2fb7a4692c",
    "val": "65c90cda0c689fee6a4c44e8c39e44ef1582f901f7f0d19d2fe52b2e611a9cd5",
    "pretrain": "5aea9c65bf150da5ca6d4f4cf31b35c9e8e077b0c6499a9f3eaa006a7e78fe3d",
}
DEFAULT_FLAGS_SHA = "73b9aa682e03a499"  # sha256 of the pool's flags as sorted JSON, first 16 hex digits


def test_the_default_pool_val_and_pretrain_splits_are_unchanged():
    import hashlib
    import json

    from lead_lightning.scoring import records_digest

    pool, pre = make_testbed(), make_testbed(split="pretrain")
    assert records_digest(pool.train) == DEFAULT_DIGESTS["pool"]
    assert records_digest(pool.val) == DEFAULT_DIGESTS["val"]
    assert records_digest(pre.train) == DEFAULT_DIGESTS["pretrain"]
    assert records_digest(pre.val) == DEFAULT_DIGESTS["val"]
    flags = hashlib.sha256(json.dumps(pool.flags, sort_keys=True).encode()).hexdigest()[:16]
    assert flags == DEFAULT_FLAGS_SHA


def test_reference_split_is_clean_in_the_pool_shares_and_disjoint_from_every_other_split():
    pool = make_testbed(**SMALL)
    pre = make_testbed(**SMALL, split="pretrain")
    ref = make_testbed(**SMALL, split="reference", reference_size=200)
    assert len(ref.train) == 200 and ref.val == pool.val and ref.flags == {}
    counts = Counter(r.group for r in ref.train)
    total = sum(TESTBED_FAMILIES.values())
    for family, share in TESTBED_FAMILIES.items():
        assert abs(counts[family] - share / total * 200) <= 1
    assert all(r.response == truth(r.prompt) for r in ref.train)  # no planted noise
    prompts = [norm(r.prompt) for r in ref.train]
    assert len(set(prompts)) == len(prompts)  # no near-duplicates
    for other in (pool.train, pool.val, pre.train):
        assert not set(prompts) & {norm(r.prompt) for r in other}
    assert make_testbed(**SMALL, split="reference", reference_size=200) == ref  # deterministic
    # its size changes no other split
    assert make_testbed(**SMALL, reference_size=7) == pool
    assert make_testbed(**SMALL, split="pretrain", reference_size=7) == pre
    with pytest.raises(ValueError, match="`reference_size`"):
        make_testbed(**SMALL, split="reference", reference_size=0)


@pytest.mark.skipif(not (GSM8K_DIR / "gsm8k" / "train.jsonl").is_file(), reason="no local GSM8K copy")
def test_gsm8k_reference_problems_are_training_problems_in_neither_pool_nor_pretrain():
    kw = {**SMALL, "families": {"copy": 0.8, "gsm8k": 0.2}, "noisy_families": [], "data_dir": GSM8K_DIR}
    pool, pre = make_testbed(**kw), make_testbed(**kw, split="pretrain")
    ref = make_testbed(**kw, split="reference", reference_size=100)
    gsm = {r.prompt for r in ref.train if r.group == "gsm8k"}
    assert len(gsm) == 20
    assert not gsm & (
        {r.prompt for r in pool.train} | {r.prompt for r in pre.train} | {r.prompt for r in pool.val}
    )
