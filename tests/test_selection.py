"""Fine stage of the redraw, against slow pure-Python references (loops, sorts by (-score, id))."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch

from lead_lightning.selection import (
    ClusterLayout,
    cap_new_examples,
    eligible_mask,
    per_group_quota,
    resolve_count,
    select_in_clusters,
)


# ------------------------------------------------------------------------------------- references
def ref_quota(sizes, sample_rate, examples):
    """LEAD's quota rule with exact arithmetic: ceil(rate * n) per group, or an absolute count split
    by largest remainder (ties to the lower group index)."""
    if sample_rate is not None:
        return [min(n, math.ceil(Fraction(str(sample_rate)) * n)) for n in sizes]
    total = sum(sizes)
    if total == 0:
        return [0] * len(sizes)
    e = min(examples, total)
    quota = [n * e // total for n in sizes]
    remainders = [n * e % total for n in sizes]
    for g in sorted(range(len(sizes)), key=lambda g: (-remainders[g], g))[: e - sum(quota)]:
        quota[g] += 1
    return quota


def ref_select(clusters, groups, arms, scores, eligible, sample_rate, examples=None):
    """Per chosen cluster (in `arms` order), per group (ascending): the best eligible ids by (-score, id)."""
    n = len(clusters)
    strata = []
    for a in arms:
        for g in sorted({groups[i] for i in range(n) if clusters[i] == a}):
            strata.append([i for i in range(n) if clusters[i] == a and groups[i] == g])
    quotas = ref_quota([len(s) for s in strata], sample_rate, examples)
    out = []
    for ids, q in zip(strata, quotas, strict=True):
        candidates = sorted((i for i in ids if eligible[i]), key=lambda i: (-scores[i], i))
        out += candidates[:q]
    return out


def random_pool(seed, n=300, k=5, g=4, p_eligible=0.7):
    rng = random.Random(seed)
    clusters = [rng.randrange(k) for _ in range(n)]
    groups = [rng.randrange(g) for _ in range(n)]
    scores = [round(rng.random(), 1) for _ in range(n)]  # 11 distinct values: many ties
    eligible = [rng.random() < p_eligible for _ in range(n)]
    return clusters, groups, scores, eligible


def as_tensors(clusters, groups, scores, eligible):
    return (
        ClusterLayout(torch.tensor(clusters), torch.tensor(groups)),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(eligible),
    )


# ---------------------------------------------------------------------------------------- eligible
def test_eligible_mask_max_uses():
    uses = torch.tensor([0, 1, 3, 4, 5, 255], dtype=torch.uint8)
    assert eligible_mask(uses, max_uses=4, budget_left=10).tolist() == [True, True, True, False, False, False]
    assert eligible_mask(uses, max_uses=1, budget_left=10).tolist() == [
        True,
        False,
        False,
        False,
        False,
        False,
    ]


@pytest.mark.parametrize("budget_left", [0, -5])
def test_eligible_mask_budget_spent_only_seen(budget_left):
    uses = torch.tensor([0, 1, 3, 4, 0, 2], dtype=torch.uint8)
    assert eligible_mask(uses, max_uses=4, budget_left=budget_left).tolist() == [
        False,
        True,
        True,
        False,
        False,
        True,
    ]


# ------------------------------------------------------------------------------------------ quotas
def test_per_group_quota_ceil_rule():
    rng = random.Random(0)
    for rate in (0.015, 0.1, 0.25, 0.5, 1.0):
        sizes = [rng.randrange(0, 500) for _ in range(12)]
        got = per_group_quota(torch.tensor(sizes), rate, None)
        assert got.dtype == torch.int64
        assert got.tolist() == ref_quota(sizes, rate, None)
    # the official setting: a group of 100 gives ceil(1.5) = 2, a group of 1 still gives 1
    assert per_group_quota(torch.tensor([100, 1, 0, 67]), 0.015, None).tolist() == [2, 1, 0, 2]


def test_per_group_quota_ceil_never_exceeds_group():
    assert per_group_quota(torch.tensor([3, 1, 0]), 2.0, None).tolist() == [3, 1, 0]


def test_per_group_quota_absolute_count_largest_remainder():
    rng = random.Random(1)
    for _ in range(300):
        sizes = [rng.randrange(0, 40) for _ in range(rng.randint(1, 7))]
        total = sum(sizes)
        e = rng.randint(1, total + 5) if total else rng.randint(1, 5)
        got = per_group_quota(torch.tensor(sizes), None, e).tolist()
        assert sum(got) == min(e, total)
        assert all(0 <= q <= n for n, q in zip(sizes, got, strict=True))
        if total == 0:
            continue
        e = min(e, total)
        floors = [n * e // total for n in sizes]
        rem = [n * e % total for n in sizes]
        bumped = [g for g in range(len(sizes)) if got[g] == floors[g] + 1]
        assert all(got[g] in (floors[g], floors[g] + 1) for g in range(len(sizes)))
        # every group that got an extra unit has a remainder >= every group that did not
        assert all(rem[a] >= rem[b] for a in bumped for b in range(len(sizes)) if b not in bumped)


def test_per_group_quota_absolute_examples():
    assert per_group_quota(torch.tensor([100, 50]), None, 10).tolist() == [7, 3]
    assert per_group_quota(torch.tensor([5, 5, 5]), None, 4).tolist() == [2, 1, 1]  # exact tie: lower index
    assert per_group_quota(torch.tensor([3, 2]), None, 100).tolist() == [3, 2]  # more than the pool
    assert per_group_quota(torch.tensor([0, 0]), None, 3).tolist() == [0, 0]


def test_per_group_quota_equal_remainders_go_to_the_lower_group():
    # exact shares 4/3, 1/3, 16/3: every remainder is 1/3, one unit left -> group 0 (lowest index)
    assert ref_quota([4, 1, 16], None, 7) == [2, 0, 5]
    assert per_group_quota(torch.tensor([4, 1, 16]), None, 7).tolist() == [2, 0, 5]


# ---------------------------------------------------------------------------------------- layout
def test_cluster_layout_order_and_offsets():
    clusters, groups, _, _ = random_pool(3, n=200)
    lay = ClusterLayout(torch.tensor(clusters), torch.tensor(groups))
    assert lay.num_clusters == 5
    for k in range(5):
        expected = sorted((i for i in range(200) if clusters[i] == k), key=lambda i: (groups[i], i))
        assert lay.ids_of(k).tolist() == expected
        assert lay.ids_of(k).dtype == torch.int64
    assert lay.offsets.tolist() == [0] + list(
        torch.cumsum(torch.bincount(torch.tensor(clusters)), 0).tolist()
    )


def test_cluster_layout_is_at_most_10_bytes_per_example():
    n = 10_000
    lay = ClusterLayout(torch.arange(n) % 7, torch.arange(n) % 13)
    assert lay.nbytes() / n <= 10


# ------------------------------------------------------------------------------------- selection
ARMS_SETS = [[0], [4], [1, 3], [3, 0, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("arms", ARMS_SETS)
@pytest.mark.parametrize("sample_rate", [0.015, 0.1, 0.3, 1.0])
def test_select_in_clusters_matches_reference_sample_rate(arms, sample_rate):
    for seed in range(3):
        pool = random_pool(seed)
        layout, scores, eligible = as_tensors(*pool)
        got = select_in_clusters(layout, arms, scores, eligible, sample_rate=sample_rate)
        assert got.dtype == torch.int64
        assert got.tolist() == ref_select(*pool[:2], arms, *pool[2:], sample_rate=sample_rate)


@pytest.mark.parametrize("arms", ARMS_SETS)
@pytest.mark.parametrize("examples", [1, 7, 40, 1000])
def test_select_in_clusters_matches_reference_examples(arms, examples):
    for seed in range(3):
        pool = random_pool(seed)
        layout, scores, eligible = as_tensors(*pool)
        got = select_in_clusters(layout, arms, scores, eligible, sample_rate=None, examples=examples)
        assert got.tolist() == ref_select(*pool[:2], arms, *pool[2:], sample_rate=None, examples=examples)


@pytest.mark.parametrize(("sample_rate", "examples"), [(0.05, None), (0.5, None), (None, 77)])
def test_select_in_clusters_large_strata_with_ties_at_the_cut(sample_rate, examples):
    """Strata of ~100 with 11 distinct scores: the k-th score is almost always tied with left-out ids."""
    pool = random_pool(9, n=2000, k=4, g=5, p_eligible=0.8)
    layout, scores, eligible = as_tensors(*pool)
    for arms in ([2], [3, 1], [0, 1, 2, 3]):
        got = select_in_clusters(layout, arms, scores, eligible, sample_rate, examples)
        assert got.tolist() == ref_select(
            *pool[:2], arms, *pool[2:], sample_rate=sample_rate, examples=examples
        )


@pytest.mark.parametrize("arms", ARMS_SETS[2:])
def test_select_in_clusters_accepts_callables(arms):
    """`scores` / `eligible` may be functions of the chosen clusters' ids (only those are evaluated)."""
    pool = random_pool(4)
    layout, scores, eligible = as_tensors(*pool)
    asked = []

    def score_fn(ids):
        asked.append(ids.clone())
        return scores[ids]

    got = select_in_clusters(layout, arms, score_fn, lambda ids: eligible[ids], sample_rate=0.3)
    assert got.tolist() == select_in_clusters(layout, arms, scores, eligible, sample_rate=0.3).tolist()
    assert got.tolist() == ref_select(*pool[:2], arms, *pool[2:], sample_rate=0.3)
    assert len(asked) == 1 and set(asked[0].tolist()) == {i for i, c in enumerate(pool[0]) if c in arms}


def test_select_in_clusters_ties_broken_by_lower_id():
    clusters = torch.zeros(8, dtype=torch.long)
    groups = torch.zeros(8, dtype=torch.long)
    scores = torch.tensor([1.0, 2.0, 2.0, 0.5, 2.0, 2.0, 1.0, 2.0])
    got = select_in_clusters(
        ClusterLayout(clusters, groups), [0], scores, torch.ones(8, dtype=torch.bool), None, 3
    )
    assert got.tolist() == [1, 2, 4]


def test_select_in_clusters_never_selects_ineligible():
    for seed in range(5):
        clusters, groups, scores, eligible = random_pool(seed, p_eligible=0.3)
        layout, scores_t, eligible_t = as_tensors(clusters, groups, scores, eligible)
        got = select_in_clusters(layout, [0, 1, 2, 3, 4], scores_t, eligible_t, sample_rate=1.0)
        assert all(eligible[i] for i in got.tolist())
        assert sorted(got.tolist()) == [
            i for i in range(len(eligible)) if eligible[i]
        ]  # rate 1: all eligible
        assert len(set(got.tolist())) == got.numel()


def test_select_in_clusters_nothing_eligible_or_no_arms():
    layout = ClusterLayout(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))
    scores = torch.tensor([1.0, 2.0, 3.0])
    assert select_in_clusters(layout, [0, 1], scores, torch.zeros(3, dtype=torch.bool), 1.0).numel() == 0
    assert select_in_clusters(layout, [], scores, torch.ones(3, dtype=torch.bool), 1.0).numel() == 0


def test_select_in_clusters_quota_from_full_group_size():
    """A group with fewer eligible examples than its quota gives what it has (no refill from elsewhere)."""
    clusters = torch.zeros(6, dtype=torch.long)
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 9.0, 8.0])
    eligible = torch.tensor([False, False, False, True, True, True])
    got = select_in_clusters(ClusterLayout(clusters, groups), [0], scores, eligible, 0.5)
    assert got.tolist() == [3, 4]


# ------------------------------------------------------------------------------------ new examples
def ref_cap(selected, uses, scores, budget_left):
    new = [i for i in selected if uses[i] == 0]
    if len(new) <= budget_left:
        return list(selected)
    keep_new = set(sorted(new, key=lambda i: (-scores[i], i))[: max(budget_left, 0)])
    return [i for i in selected if uses[i] > 0 or i in keep_new]


def test_cap_new_examples_matches_reference():
    rng = random.Random(5)
    for _ in range(50):
        n = 60
        uses = [rng.choice([0, 0, 1, 2]) for _ in range(n)]
        scores = rng.sample(range(1000), n)  # distinct: the order of ties is pinned separately
        selected = rng.sample(range(n), 25)
        budget_left = rng.randint(-2, 20)
        got = cap_new_examples(
            torch.tensor(selected),
            torch.tensor(uses, dtype=torch.uint8),
            torch.tensor(scores, dtype=torch.float32),
            budget_left,
        )
        expected = ref_cap(selected, uses, scores, budget_left)
        assert got.tolist() == expected
        assert all(i in got.tolist() for i in selected if uses[i] > 0)  # seen ones always kept
        assert sum(uses[i] == 0 for i in got.tolist()) <= max(budget_left, 0) or got.tolist() == selected


def test_cap_new_examples_keeps_everything_within_budget():
    sel = torch.tensor([4, 1, 2])
    uses = torch.tensor([0, 0, 3, 0, 0], dtype=torch.uint8)
    assert cap_new_examples(sel, uses, torch.ones(5), budget_left=2).tolist() == [4, 1, 2]
    assert cap_new_examples(sel, uses, torch.ones(5), budget_left=0).tolist() == [2]


def test_cap_new_examples_ties_broken_by_id():
    # `selected` comes from select_in_clusters: cluster order, so id 5 (cluster 0) precedes id 2 (cluster 1)
    sel = torch.tensor([5, 2])
    uses = torch.zeros(6, dtype=torch.uint8)
    scores = torch.ones(6)
    assert cap_new_examples(sel, uses, scores, budget_left=1).tolist() == ref_cap(
        [5, 2], [0] * 6, [1.0] * 6, 1
    )
    assert cap_new_examples(sel, uses, scores, budget_left=1).tolist() == [2]


# ---------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize(
    ("value", "n", "expected"),
    [
        (0.5, 10, 5),
        (0.25, 10, 3),
        (1.0, 10, 10),
        (1e-9, 10, 1),
        (0.025, 600, 15),
        (1, 10, 1),
        (2.0, 10, 2),
        (10, 10, 10),
    ],
)
def test_resolve_count_fraction_and_count(value, n, expected):
    got = resolve_count("budget", value, n)
    assert got == expected and type(got) is int


def test_resolve_count_one_is_a_count_but_one_point_zero_is_a_fraction():
    assert resolve_count("budget", 1, 50) == 1
    assert resolve_count("budget", 1.0, 50) == 50


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (
            0,
            r"`budget` must be a fraction in \(0, 1\] or a whole count in \[1, 10\] \(the pool size\), got 0",
        ),
        (-3, r"`budget` must be a fraction .* got -3"),
        (-0.5, r"`budget` must be a fraction .* got -0.5"),
        (11, r"whole count in \[1, 10\] .* got 11"),
        (1.5, r"got 1.5"),
        (float("nan"), r"`budget` must be finite, got nan"),
        (float("inf"), r"`budget` must be finite, got inf"),
        (True, r"`budget` must be a fraction in \(0, 1\] or a count in \[1, 10\], got True"),
        ("3", r"`budget` must be a fraction .* got '3'"),
        (None, r"got None"),
    ],
)
def test_resolve_count_errors(value, match):
    with pytest.raises(ValueError, match=match):
        resolve_count("budget", value, 10)
