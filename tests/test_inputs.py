"""Inputs checked up front: each bad input is an error (or a warning) that names its cause."""

from __future__ import annotations

import json
import logging
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _toy import ToyDataModule, ToyDataset, ToyModule, make_trainer

from lead_lightning import LeadSelectionCallback, PoolIndex
from lead_lightning.app.data import jsonl_split
from lead_lightning.baselines import RandomSelection
from lead_lightning.config import LeadConfig, RandomConfig
from lead_lightning.data import InstructionRecord, read_bbh, read_records
from lead_lightning.data.records import deduplicate_split


# ----------------------------------------------------------------------------- null groups
@pytest.mark.parametrize("groups", [["a", None, "b", "a"], [1.0, 2.0, math.nan, 1.0]])
def test_null_groups_are_an_error_naming_the_first_one(groups):  # noqa: ANN001
    with pytest.raises(ValueError, match=r"`groups` holds 1 null label\(s\) .*first at id [12]\. HINT"):
        PoolIndex(clusters=[0, 0, 1, 1], iu0=[1.0] * 4, groups=groups)


def test_null_group_in_a_pool_index_file_names_the_file(tmp_path):  # noqa: ANN001
    path = tmp_path / "pool.parquet"
    table = pa.table({"id": [0, 1, 2], "cluster": [0, 0, 1], "group": ["a", None, "b"], "iu0": [1.0] * 3})
    pq.write_table(table, path)
    with pytest.raises(ValueError, match=rf"{path}: `groups` holds 1 null label\(s\) .*first at id 1"):
        PoolIndex.load(path)


# ----------------------------------------------------------------------------- iu0 in the fingerprint
def test_a_checkpoint_from_a_pool_with_other_iu0_is_refused():
    clusters, groups = torch.arange(40) % 4, torch.arange(40) % 2
    ref = LeadSelectionCallback(PoolIndex(clusters=clusters, groups=groups, iu0=torch.ones(40)), seed=0)
    state = ref.state_dict()
    same = LeadSelectionCallback(PoolIndex(clusters=clusters, groups=groups, iu0=torch.ones(40)), seed=0)
    same.load_state_dict(state)  # the same pool loads
    other_iu0 = PoolIndex(clusters=clusters, groups=groups, iu0=torch.linspace(0.5, 2.0, 40))
    other = LeadSelectionCallback(other_iu0, seed=0)
    with pytest.raises(ValueError, match="belongs to another pool .*HINT: resume with the pool index"):
        other.load_state_dict(state)


# ----------------------------------------------------------------------------- non-UTF-8 input
def _alpaca(i: int) -> bytes:
    return json.dumps({"instruction": f"Say {i}.", "output": str(i)}).encode() + b"\n"


@pytest.mark.parametrize("fmt", ["alpaca", "chat", "gsm8k"])
def test_non_utf8_jsonl_names_file_and_line(fmt, tmp_path):  # noqa: ANN001
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"\n  \n" + b'{"instruction": "caf\xe9", "output": "x"}\n')  # line 3 is not UTF-8
    with pytest.raises(ValueError, match=rf"{path}:3: not UTF-8 \(byte 0xe9 at column 21\)\. HINT: convert"):
        read_records(path, format=fmt)


def test_utf8_bom_and_crlf_still_read(tmp_path):  # noqa: ANN001
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _alpaca(0).replace(b"\n", b"\r\n") + b"\r\n" + _alpaca(1))
    assert [r.response for r in read_records(path, format="alpaca")] == ["0", "1"]


def test_non_utf8_bbh_names_file_and_line(tmp_path):  # noqa: ANN001
    path = tmp_path / "navigate.json"
    path.write_bytes(
        b'{"examples": [\n{"input": "Go?", "target": "Yes"},\n{"input": "\xff", "target": "No"}]}'
    )
    with pytest.raises(ValueError, match=rf"{path}:3: not UTF-8 \(byte 0xff at column 12\)"):
        read_bbh(path)


# ----------------------------------------------------------------------------- duplicate records
def test_duplicates_warned_with_counts_and_removed_from_held_out(caplog):  # noqa: ANN001
    rec = [InstructionRecord(f"q{i}", f"a{i}") for i in range(5)]
    pool = [*rec, rec[1], rec[1], rec[3]]  # 3 extra copies of 2 pairs
    held = [rec[3], InstructionRecord("q9", "a9"), InstructionRecord("q1", "other answer")]
    with caplog.at_level(logging.WARNING, logger="lead_lightning.data.records"):
        kept = deduplicate_split(pool, held)
    assert kept == held[1:]  # only the identical (prompt, response) pair is removed
    text = caplog.text
    assert "3 duplicate record(s): 2 (prompt, response) pair(s)" in text and "ids [1, 5, 6]" in text
    assert "Removed 1 of 3 held-out record(s)" in text and "2 held-out record(s) remain" in text


def test_no_duplicates_no_warning_and_all_held_out_removed_gives_none(caplog):  # noqa: ANN001
    pool = [InstructionRecord(f"q{i}", f"a{i}") for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="lead_lightning.data.records"):
        assert deduplicate_split(pool, pool[:2]) is None
        assert deduplicate_split(pool, None) is None
    assert "duplicate record" not in caplog.text and "Removed 2 of 2" in caplog.text


def test_jsonl_split_holds_out_no_copy_of_a_pool_record(tmp_path, caplog):  # noqa: ANN001
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"".join(_alpaca(i % 20) for i in range(60)))  # every record three times
    with caplog.at_level(logging.WARNING, logger="lead_lightning.data.records"):
        split = jsonl_split(path, format="alpaca", val_fraction=0.2, seed=0)
    pool_pairs = {(r.prompt, r.response) for r in split.train}
    assert split.val is None or not any((r.prompt, r.response) in pool_pairs for r in split.val)
    assert "duplicate record(s)" in caplog.text and "held-out record(s) that are also in the" in caplog.text


# ----------------------------------------------------------------------------- int budget
@pytest.mark.parametrize(
    ("make", "warns"),
    [
        (lambda pool: LeadSelectionCallback(pool, budget=5), True),  # 5 of 1000: 0.5%
        (lambda pool: RandomSelection(pool, RandomConfig(budget=1)), True),
        (lambda pool: LeadSelectionCallback(pool, budget=10), False),  # 1%: a plausible count
        (lambda pool: LeadSelectionCallback(pool, LeadConfig(budget=0.001)), False),  # a float fraction
    ],
)
def test_an_int_budget_below_one_percent_is_warned(make, warns, recwarn):  # noqa: ANN001
    pool = PoolIndex(clusters=torch.arange(1000) % 4, iu0=torch.ones(1000))
    make(pool)
    messages = [str(w.message) for w in recwarn if "is an int, so it is a count" in str(w.message)]
    assert len(messages) == int(warns)
    if warns:
        assert "of the pool's 1000 examples" in messages[0] and "HINT: for a fraction" in messages[0]


# ----------------------------------------------------------------------------- non-finite rounds
def _fit_all_nan(tmp_path, limit: int, epochs: int = 5) -> LeadSelectionCallback:  # noqa: ANN001
    ds = ToyDataset(n=80)
    cb = LeadSelectionCallback(ds.pool(), budget=1.0, sample_rate=0.5, max_nonfinite_rounds=limit, seed=0)
    module = ToyModule(nan_ids=tuple(range(80)))  # every per-example loss is NaN
    trainer = make_trainer(tmp_path, [cb], max_epochs=epochs)
    trainer.fit(module, ToyDataModule(ds, batch_size=8))
    return cb


def test_rounds_without_a_finite_loss_stop_the_run(tmp_path):  # noqa: ANN001
    with pytest.raises(
        FloatingPointError, match=r"non-finite .* in 2 rounds in a row \(rounds 0\.\.1\).*HINT"
    ):
        _fit_all_nan(tmp_path, limit=2)


def test_max_nonfinite_rounds_zero_never_stops_and_the_count_is_checkpointed(tmp_path):  # noqa: ANN001
    cb = _fit_all_nan(tmp_path, limit=0, epochs=3)
    assert len(cb.history) == 3 and all(h["nan_skipped"] > 0 for h in cb.history)
    state = cb.state_dict()
    assert state["nonfinite_rounds"] == 3
    fresh = LeadSelectionCallback(cb.pool, budget=1.0, sample_rate=0.5, seed=0)
    fresh.load_state_dict(state)
    assert fresh._nonfinite_rounds == 3


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_max_nonfinite_rounds_is_validated(value):  # noqa: ANN001
    with pytest.raises(ValueError, match="`max_nonfinite_rounds` must be an int >= 0"):
        LeadConfig(max_nonfinite_rounds=value)
    with pytest.raises(ValueError, match="`max_nonfinite_rounds` must be an int >= 0"):
        RandomConfig(max_nonfinite_rounds=value)
