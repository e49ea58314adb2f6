from __future__ import annotations

import doctest
import io
import math
import random

import pytest
import torch

from lead_lightning import bandits
from lead_lightning.bandits import (
    BANDITS,
    EXP3,
    EXP3S,
    UCB1,
    BanditPolicy,
    RewardNormalizer,
    ThompsonGaussian,
    Uniform,
    make_bandit,
)

NAMES = sorted(BANDITS)
LEARNERS = ["exp3", "exp3s", "thompson", "ucb"]
K = 5
MASK = torch.tensor([True, False, True, True, False])


def _play(policy: BanditPolicy, rounds: int, seed: int, mask: torch.Tensor | None = None) -> list[int]:
    """Run ``rounds`` rounds with random rewards in [0, 1]; return the arms drawn."""
    gen, rng, drawn = torch.Generator().manual_seed(seed), random.Random(seed), []
    for _ in range(rounds):
        probs = policy.probabilities(mask)
        arms = policy.draw(2, gen, mask)
        policy.update(arms, [rng.random() for _ in arms], probs)
        drawn += arms
    return drawn


def test_registry_names_and_protocol():
    assert NAMES == ["exp3", "exp3s", "hedge", "thompson", "ucb", "uniform"]
    for name, cls in BANDITS.items():
        assert cls.name == name
        assert isinstance(cls(K), BanditPolicy)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mask", [None, MASK])
def test_probabilities_are_a_distribution_over_available_arms(name, mask):
    policy = make_bandit(name, K)
    _play(policy, 10, seed=0, mask=mask)
    rng_before = torch.get_rng_state()
    probs = policy.probabilities(mask)
    assert torch.equal(torch.get_rng_state(), rng_before)  # pure: no global RNG consumed
    assert probs.dtype == torch.float64 and probs.shape == (K,)
    assert math.isclose(float(probs.sum()), 1.0, abs_tol=1e-12)
    assert bool((probs >= 0).all())
    if mask is not None:
        assert bool((probs[~mask] == 0).all())
    assert torch.equal(policy.probabilities(mask), probs)


@pytest.mark.parametrize("name", NAMES)
def test_draw_returns_distinct_available_arms(name):
    policy, gen = make_bandit(name, K), torch.Generator().manual_seed(1)
    _play(policy, 10, seed=1)
    for n in (1, 2, 3):
        for _ in range(20):
            arms = policy.draw(n, gen, MASK)
            assert len(arms) == n == len(set(arms))
            assert all(MASK[a] for a in arms)
    assert sorted(policy.draw(K, gen)) == list(range(K))
    with pytest.raises(ValueError, match=r"`n` must be <= the number of available arms \(3\), got 4\."):
        policy.draw(4, gen, MASK)
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 1, got 0\."):
        policy.draw(0, gen)


@pytest.mark.parametrize("name", NAMES)
def test_mask_is_validated(name):
    policy = make_bandit(name, K)
    with pytest.raises(ValueError, match=r"`mask` must be a bool Tensor of shape \(5,\), got torch.int64"):
        policy.probabilities(torch.ones(K, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`mask` must be .* got torch.bool of shape \(3,\)\."):
        policy.draw(1, torch.Generator(), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="`mask` must leave at least one arm available, got none."):
        policy.probabilities(torch.zeros(K, dtype=torch.bool))


@pytest.mark.parametrize("name", NAMES)
def test_draws_are_deterministic_given_the_generator(name):
    first, second = make_bandit(name, K), make_bandit(name, K)
    assert _play(first, 30, seed=7, mask=MASK) == _play(second, 30, seed=7, mask=MASK)
    assert torch.equal(first.probabilities(), second.probabilities())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_through_torch_save(name):
    policy = make_bandit(name, K)
    _play(policy, 40, seed=3)
    buffer = io.BytesIO()
    torch.save(policy.state_dict(), buffer)
    buffer.seek(0)
    restored = make_bandit(name, K)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    fresh = make_bandit(name, K).state_dict()
    changed = any(not torch.equal(v, fresh[k]) for k, v in policy.state_dict().items() if torch.is_tensor(v))
    assert changed == (name != "uniform")  # the resume test cannot pass trivially
    assert _play(policy, 20, seed=4, mask=MASK) == _play(restored, 20, seed=4, mask=MASK)
    assert torch.equal(policy.probabilities(), restored.probabilities())
    for key, value in policy.state_dict().items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(restored.state_dict()[key]))


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_rejects_other_num_arms(name):
    state = make_bandit(name, K).state_dict()
    with pytest.raises(ValueError, match=r"saved with `num_arms`=5 into .* with `num_arms`=7\. HINT"):
        make_bandit(name, 7).load_state_dict(state)


def test_load_state_dict_rejects_another_policys_state():
    with pytest.raises(ValueError, match=r"UCB1 state is missing keys \['counts', 'sums'\]"):
        UCB1(K).load_state_dict(EXP3(K).state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_update_is_validated(name):
    policy, probs = make_bandit(name, K), torch.full((K,), 1 / K, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`arms` and `rewards` must have the same length, got 1 and 2\."):
        policy.update([0], [0.5, 0.5], probs)
    with pytest.raises(ValueError, match=r"`arms` must be in \[0, 5\), got 5\."):
        policy.update([5], [0.5], probs)
    with pytest.raises(ValueError, match=r"`rewards` must be finite and in \[0, 1\].*got 1\.5\."):
        policy.update([0], [1.5], probs)
    with pytest.raises(ValueError, match=r"`rewards` must be finite.*got nan\."):
        policy.update([0], [float("nan")], probs)
    with pytest.raises(ValueError, match=r"`probabilities` must be a Tensor of shape \(5,\), got .*\(4,\)\."):
        policy.update([0], [0.5], probs[:4])


@pytest.mark.parametrize("name", NAMES)
def test_learns_the_best_arm_of_a_bernoulli_problem(name):
    policy, gen, rng = make_bandit(name, K), torch.Generator().manual_seed(0), random.Random(0)
    counts = [0] * K
    for _ in range(500):
        probs = policy.probabilities()
        (arm,) = policy.draw(1, gen)
        counts[arm] += 1
        policy.update([arm], [float(rng.random() < (0.9 if arm == 3 else 0.1))], probs)
    probs = policy.probabilities()
    if name == "uniform":
        assert torch.equal(probs, torch.full((K,), 1 / K, dtype=torch.float64))
    else:
        assert int(probs.argmax()) == 3 and max(range(K), key=counts.__getitem__) == 3, (probs, counts)


def _reference_exp3(rounds, gamma, alpha=None):
    """EXP3 / EXP3.S in plain floats and plain weights (fine for short sequences)."""
    w, history = [1.0] * K, []
    for mask, arm, reward in rounds:
        avail = [i for i in range(K) if mask[i]]
        total = sum(w[i] for i in avail)
        p = [(1 - gamma) * w[i] / total + gamma / len(avail) if mask[i] else 0.0 for i in range(K)]
        history.append(p)
        share = math.e * alpha / K * sum(w) if alpha is not None else 0.0
        w = [w[i] * math.exp(gamma * (reward / p[i] if i == arm else 0.0) / K) + share for i in range(K)]
    return history


@pytest.mark.parametrize(("cls", "kwargs"), [(EXP3, {"gamma": 0.3}), (EXP3S, {"gamma": 0.3, "alpha": 0.05})])
def test_exp3_matches_a_plain_float_reference(cls, kwargs):
    rng, rounds = random.Random(5), []
    for _ in range(40):
        mask = [rng.random() < 0.7 for _ in range(K)]
        mask[rng.randrange(K)] = True
        rounds.append((mask, rng.choice([i for i in range(K) if mask[i]]), rng.random()))
    expected = _reference_exp3(rounds, kwargs["gamma"], kwargs.get("alpha"))
    policy = cls(K, **kwargs)
    for (mask, arm, reward), p_ref in zip(rounds, expected, strict=True):
        probs = policy.probabilities(torch.tensor(mask))
        assert probs.tolist() == pytest.approx(p_ref, abs=1e-9, rel=0)
        policy.update([arm], [reward], probs)


def test_exp3_reward_moves_the_weights():
    policy = EXP3(K)
    before = policy.probabilities()
    policy.update([2], [0.0], before)
    assert torch.equal(policy.probabilities(), before)  # zero reward: nothing to learn
    policy.update([2], [0.5], before)
    after = policy.probabilities()
    assert float(after[2]) > float(before[2]) and int(after.argmax()) == 2  # official bug: reward always 0


def test_exp3_rejects_a_zero_probability_for_a_drawn_arm():
    with pytest.raises(ValueError, match=r"`probabilities` must be > 0 .* got 0 for arms \[1\]\."):
        EXP3(K).update([1], [1.0], torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))


def test_exp3_does_not_overflow_after_100k_rounds():
    policy = EXP3(K, gamma=0.1)
    worst = torch.full((K,), 0.1 / K, dtype=torch.float64)  # p_a >= gamma / K: the largest step, +1 per round
    for _ in range(100_000):
        policy.update([0], [1.0], worst)
    # a plain-weight implementation would hold exp(1e5): inf
    assert float(policy.log_weights.max()) == 0.0 and float(policy.log_weights.min()) < -1e4
    probs = policy.probabilities()
    assert bool(torch.isfinite(probs).all()) and probs.tolist() == pytest.approx([0.92] + [0.02] * 4)


def test_exp3s_is_not_plain_exp3():
    # The official "EXP3S" was plain EXP3. With alpha=0 ours is; with alpha>0 the fixed share lets it recover.
    plain, shared = EXP3(K), EXP3S(K, alpha=0.0)
    assert _play(plain, 30, seed=2) == _play(shared, 30, seed=2)
    assert torch.allclose(plain.log_weights, shared.log_weights, rtol=0, atol=1e-12)
    final = {}
    for policy in (EXP3(K), EXP3S(K, alpha=0.001)):
        gen = torch.Generator().manual_seed(0)
        for t in range(1300):  # arm 0 pays for 1000 rounds, then arm 1 does
            probs = policy.probabilities()
            (arm,) = policy.draw(1, gen)
            policy.update([arm], [float(arm == (0 if t < 1000 else 1))], probs)
            if t == 999:
                assert float(probs[0]) > 0.8  # arm 0 dominated
        final[policy.name] = policy.probabilities()
    assert float(final["exp3s"][1]) > 0.5 and float(final["exp3"][1]) < 0.05


def test_ucb1_plays_unplayed_arms_first_then_the_best_score():
    policy, gen = UCB1(K, c=2.0), torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert policy.draw(3, gen) == [0, 1, 2] and policy.draw(2, gen, MASK) == [0, 2]
    assert torch.equal(gen.get_state(), state)  # the generator is not used
    assert policy.probabilities(MASK).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    policy.update([0, 1, 2, 3], [0.2, 0.5, 0.5, 0.9], torch.zeros(K))
    assert policy.draw(1, gen) == [4]  # still unplayed
    policy.update([4, 3], [0.1, 0.9], torch.zeros(K))
    t = 6
    mean_and_count = [(0.2, 1), (0.5, 1), (0.5, 1), (0.9, 2), (0.1, 1)]
    scores = [m + math.sqrt(2.0 * math.log(t) / n) for m, n in mean_and_count]
    expected = sorted(range(K), key=lambda i: (-scores[i], i))
    assert policy.draw(K, gen) == expected and expected[:2] == [1, 2]  # tie between 1 and 2 -> lower index
    assert policy.probabilities().tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_thompson_posterior_and_rng_use():
    policy = ThompsonGaussian(K, prior_mean=0.5, prior_var=1.0, noise_var=0.25)
    policy.update([1, 1, 2], [1.0, 0.0, 1.0], torch.zeros(K))
    mean, std = policy.posterior()
    assert mean[1].item() == pytest.approx((0.5 + 1.0 / 0.25) / (1 + 2 / 0.25))
    assert std[2].item() == pytest.approx((1 + 1 / 0.25) ** -0.5) and mean[0].item() == 0.5
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    policy.draw(1, gen)
    assert not torch.equal(gen.get_state(), state)  # draws sample from the caller's generator
    assert torch.equal(policy.probabilities(MASK), policy.probabilities(MASK))


def test_uniform_update_is_a_no_op():
    policy = Uniform(K)
    policy.update([0, 1], [1.0, 1.0], policy.probabilities())
    assert policy.probabilities().tolist() == [0.2] * K and policy.state_dict() == {"num_arms": K}


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (EXP3, {"gamma": 1.5}, r"`gamma` must be in \(0, 1\], got 1\.5\."),
        (EXP3, {"gamma": 0.0}, r"`gamma` must be in \(0, 1\], got 0\.0\."),
        (EXP3S, {"alpha": -0.1}, r"`alpha` must be in \[0, 1\], got -0\.1\."),
        (UCB1, {"c": -1.0}, r"`c` must be in \[0, inf\), got -1\.0\."),
        (ThompsonGaussian, {"prior_var": 0.0}, r"`prior_var` must be in \(0, inf\), got 0\.0\."),
        (ThompsonGaussian, {"noise_var": float("nan")}, r"`noise_var` must be in \(0, inf\), got nan\."),
        (ThompsonGaussian, {"prior_mean": float("inf")}, r"`prior_mean` must be in \(-inf, inf\), got inf\."),
    ],
)
def test_constructor_arguments_are_validated(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(K, **kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_arms", [0, 2.0, True])
def test_num_arms_is_validated(name, num_arms):
    with pytest.raises(ValueError, match=rf"`num_arms` must be an integer >= 1, got {num_arms!r}\."):
        BANDITS[name](num_arms)


def test_make_bandit():
    policy = make_bandit("EXP3S", 7, gamma=0.2, alpha=0.05)
    assert type(policy) is EXP3S and (policy.num_arms, policy.gamma, policy.alpha) == (7, 0.2, 0.05)
    ucb = UCB1(3)
    assert make_bandit(ucb, 3) is ucb
    msg = r"`bandit` must be one of \['exp3', 'exp3s', 'hedge', 'thompson', 'ucb', 'uniform'\], got 'foo'\."
    with pytest.raises(ValueError, match=msg):
        make_bandit("foo", 3)
    with pytest.raises(ValueError, match=r"The given bandit has `num_arms`=3, expected `num_arms`=4\."):
        make_bandit(ucb, 4)
    with pytest.raises(ValueError, match=r"Bandit options \['c'\] cannot be applied"):
        make_bandit(ucb, 3, c=1.0)
    with pytest.raises(TypeError, match="`bandit` must be a name or a `BanditPolicy`, got int."):
        make_bandit(3, 3)  # type: ignore[arg-type]


def test_reward_normalizer():
    norm = RewardNormalizer()
    assert norm.normalize(0.7) == 0.5
    assert norm.normalize(0.7) == 0.5  # the official code divided by max - min = 0 here
    assert norm.normalize(1.7) == 1.0 and norm.normalize(-0.3) == 0.0 and norm.normalize(0.7) == 0.5
    with pytest.raises(ValueError, match=r"`raw` reward must be finite, got inf\."):
        norm.normalize(float("inf"))
    assert norm.history == [0.7, 0.7, 1.7, -0.3, 0.7]
    buffer = io.BytesIO()
    torch.save(norm.state_dict(), buffer)
    buffer.seek(0)
    restored = RewardNormalizer()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.history == norm.history and restored.normalize(1.2) == norm.normalize(1.2) == 0.75


def test_docstring_examples_run():
    assert doctest.testmod(bandits).failed == 0
