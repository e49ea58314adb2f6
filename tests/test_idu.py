"""IDU update and per-example state, against the formula written out in Python floats."""

from __future__ import annotations

import random

import pytest
import torch

from lead_lightning.idu import IDUState, RoundRecords, idu_update


def ref_idu(prev: float, loss: float, lr: float, coef: float, h: float) -> float:
    """IDU(x) <- h * IDU(x) + (1 - h) * (L(x) - eta * C_k)  (LEAD_METHOD.md section 3)."""
    obs = loss - lr * coef
    return h * prev + (1.0 - h) * obs


def test_idu_update_matches_formula():
    rng = random.Random(0)
    n = 50
    prev = [rng.uniform(0, 5) for _ in range(n)]
    loss = [rng.uniform(0, 5) for _ in range(n)]
    lr = [rng.choice([2e-5, 1e-3, 0.1, 0.0]) for _ in range(n)]
    coef = [rng.uniform(0, 100) for _ in range(n)]
    for h in (0.0, 0.1, 0.5, 0.9, 1.0):
        got = idu_update(*(torch.tensor(v, dtype=torch.float64) for v in (prev, loss, lr, coef)), h)
        expected = [ref_idu(*args, h) for args in zip(prev, loss, lr, coef, strict=True)]
        assert got.dtype == torch.float64
        assert got.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_idu_update_docstring_value():
    out = idu_update(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.1]), torch.tensor([5.0]), 0.1)
    assert out.item() == pytest.approx(0.1 * 2.0 + 0.9 * (1.0 - 0.5))


def test_history_weight_is_applied():
    """Official bug: `gamma = 1 - b` was computed and never used, so effectively h = 0."""
    args = (
        torch.tensor([3.0, 1.0]),
        torch.tensor([1.0, 2.0]),
        torch.tensor([0.01, 0.01]),
        torch.tensor([2.0, 2.0]),
    )
    no_history = idu_update(*args, 0.0)
    smoothed = idu_update(*args, 0.1)
    assert torch.allclose(no_history, args[1] - args[2] * args[3])  # h = 0: IDU is the observation
    assert not torch.allclose(no_history, smoothed)
    torch.testing.assert_close(smoothed, 0.1 * args[0] + 0.9 * no_history)


# -------------------------------------------------------------------------------------- records
def test_first_occurrence_keeps_first_record_in_original_order():
    ids = [7, 3, 7, 1, 3, 9, 1, 0]
    loss = [float(i) for i in range(len(ids))]
    lr = [0.1 * i for i in range(len(ids))]
    recs = RoundRecords(torch.tensor(ids), torch.tensor(loss), torch.tensor(lr, dtype=torch.float64))
    out = recs.first_occurrence()
    seen, keep = set(), []
    for pos, i in enumerate(ids):  # slow reference
        if i not in seen:
            seen.add(i)
            keep.append(pos)
    assert out.ids.tolist() == [ids[p] for p in keep] == [7, 3, 1, 9, 0]
    assert out.loss.tolist() == [loss[p] for p in keep]
    assert out.lr.tolist() == [lr[p] for p in keep]


def test_first_occurrence_random_against_reference():
    rng = random.Random(1)
    for _ in range(20):
        ids = [rng.randrange(15) for _ in range(rng.randint(1, 40))]
        recs = RoundRecords(
            torch.tensor(ids),
            torch.arange(len(ids), dtype=torch.float32),
            torch.zeros(len(ids), dtype=torch.float64),
        )
        out = recs.first_occurrence()
        assert out.loss.long().tolist() == [p for p, i in enumerate(ids) if i not in ids[:p]]


def test_first_occurrence_empty_and_no_duplicates():
    assert len(RoundRecords.empty().first_occurrence()) == 0
    recs = RoundRecords(
        torch.tensor([4, 2, 0]), torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, dtype=torch.float64)
    )
    assert recs.first_occurrence().ids.tolist() == [4, 2, 0]


def test_records_cat_and_dict_round_trip():
    a = RoundRecords(
        torch.tensor([1, 2]), torch.tensor([0.5, 0.25]), torch.tensor([1e-3, 1e-3], dtype=torch.float64)
    )
    b = RoundRecords(torch.tensor([0]), torch.tensor([2.0]), torch.tensor([5e-4], dtype=torch.float64))
    c = a.cat(b)
    assert len(c) == 3 and c.ids.tolist() == [1, 2, 0] and c.loss.tolist() == [0.5, 0.25, 2.0]
    back = RoundRecords.from_dict(c.to_dict())
    assert torch.equal(back.ids, c.ids) and torch.equal(back.loss, c.loss) and torch.equal(back.lr, c.lr)
    assert back.lr.dtype == torch.float64 and back.ids.dtype == torch.int64


# ---------------------------------------------------------------------------------------- state
def test_state_starts_from_iu0():
    iu0 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    st = IDUState(iu0)
    assert st.idu.dtype == torch.float32 and st.idu.tolist() == [1.0, 2.0, 3.0]
    assert st.uses.dtype == torch.uint8 and st.uses.tolist() == [0, 0, 0]
    assert len(st) == 3 and st.nbytes() == 3 * 5
    st.idu[0] = 9.0
    assert iu0[0] == 1.0  # a copy, not a view


def test_record_take_apply_matches_reference():
    st = IDUState(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    st.record(torch.tensor([3, 0]), torch.tensor([0.5, 0.25]), 0.1)
    st.record(torch.tensor([4]), torch.tensor([1.5]), torch.tensor(0.05))  # lr may be a tensor
    assert st.num_recorded == 3
    recs = st.take_records()
    assert recs.ids.tolist() == [3, 0, 4]
    assert recs.lr.dtype == torch.float64 and recs.lr.tolist() == pytest.approx([0.1, 0.1, 0.05])
    coef = torch.tensor([2.0, 2.0, 10.0])
    before, after = st.apply(recs, coef, history_weight=0.1)
    assert before.tolist() == [4.0, 1.0, 5.0]
    expected = [
        ref_idu(4.0, 0.5, 0.1, 2.0, 0.1),
        ref_idu(1.0, 0.25, 0.1, 2.0, 0.1),
        ref_idu(5.0, 1.5, 0.05, 10.0, 0.1),
    ]
    assert after.tolist() == pytest.approx(expected, rel=1e-6)
    assert st.idu.tolist() == pytest.approx([expected[1], 2.0, 3.0, expected[0], expected[2]], rel=1e-6)
    assert st.uses.tolist() == [1, 0, 0, 1, 1]  # untrained examples keep IU_0 and 0 uses


def test_apply_counts_one_use_per_application():
    st = IDUState(torch.ones(3))
    recs = RoundRecords(torch.tensor([0, 2]), torch.tensor([1.0, 1.0]), torch.zeros(2, dtype=torch.float64))
    for k in range(1, 4):
        st.apply(recs, torch.zeros(2), 0.1)
        assert st.uses.tolist() == [k, 0, k]


def test_uses_saturate_at_255():
    st = IDUState(torch.ones(2))
    st.load_state_dict({"idu": torch.ones(2), "uses": torch.tensor([254, 3], dtype=torch.uint8)})
    recs = RoundRecords(torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), torch.zeros(2, dtype=torch.float64))
    st.apply(recs, torch.zeros(2), 0.0)
    assert st.uses.tolist() == [255, 4]
    st.apply(recs, torch.zeros(2), 0.0)
    assert st.uses.tolist() == [255, 5]  # no wrap-around to 0


def test_take_records_resets_accumulator():
    """Official bug: the approximate-loss accumulator was never reset between rounds."""
    st = IDUState(torch.zeros(4))
    st.record(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), 0.1)
    first = st.take_records()
    assert first.ids.tolist() == [0, 1]
    assert st.num_recorded == 0
    assert len(st.take_records()) == 0  # nothing left over
    st.record(torch.tensor([2]), torch.tensor([3.0]), 0.2)
    second = st.take_records()
    assert second.ids.tolist() == [2] and second.loss.tolist() == [3.0]
    assert second.lr.tolist() == pytest.approx([0.2])


def test_state_dict_round_trip():
    st = IDUState(torch.tensor([1.0, 2.0, 3.0]))
    recs = RoundRecords(torch.tensor([1]), torch.tensor([0.5]), torch.tensor([0.0], dtype=torch.float64))
    st.apply(recs, torch.zeros(1), 0.0)
    sd = st.state_dict()
    assert set(sd) == {"idu", "uses"}
    other = IDUState(torch.zeros(3))
    other.load_state_dict(sd)
    assert torch.equal(other.idu, st.idu) and torch.equal(other.uses, st.uses)
    assert other.idu.tolist() == [1.0, 0.5, 3.0] and other.uses.tolist() == [0, 1, 0]
    sd["idu"][0] = 42.0  # the state dict is a snapshot, not a view
    assert st.idu[0] == 1.0 and other.idu[0] == 1.0


def test_state_dict_survives_torch_save_weights_only(tmp_path):
    st = IDUState(torch.tensor([1.0, 2.0]))
    torch.save(st.state_dict(), tmp_path / "s.pt")
    other = IDUState(torch.zeros(2))
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert other.idu.tolist() == [1.0, 2.0]


def test_load_state_dict_size_mismatch():
    st = IDUState(torch.zeros(3))
    with pytest.raises(
        ValueError, match=r"holds 4 examples but the pool has 3\. HINT: resume with the same pool"
    ):
        st.load_state_dict({"idu": torch.zeros(4), "uses": torch.zeros(4, dtype=torch.uint8)})
    with pytest.raises(ValueError, match=r"but the pool has 3"):
        st.load_state_dict({"idu": torch.zeros(3), "uses": torch.zeros(2, dtype=torch.uint8)})
