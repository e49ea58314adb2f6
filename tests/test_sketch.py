"""`ParameterSketch` and `gradient_coefficient` against slow, obviously-correct references."""

from __future__ import annotations

import math

import pytest
import torch

from lead_lightning.sketch import ParameterSketch, gradient_coefficient, update_stats


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- sketch
def test_exact_mode_is_the_flat_vector():
    params = [_randn(2, 3, seed=1).float(), _randn(4, seed=2).float(), _randn(1, 1, 2, seed=3).float()]
    flat = torch.cat([p.reshape(-1) for p in params]).double()
    for dim in (12, 13, 100):  # total = 12 <= dim
        out = ParameterSketch(dim=dim, seed=5)(params)
        assert out.dtype == torch.float64 and out.shape == (dim,)
        assert torch.equal(out[:12], flat)
        assert torch.equal(out[12:], torch.zeros(dim - 12, dtype=torch.float64))


def test_exact_mode_ignores_the_seed():
    params = [_randn(10, seed=1)]
    assert torch.equal(ParameterSketch(dim=16, seed=0)(params), ParameterSketch(dim=16, seed=99)(params))


def test_accepts_parameters_that_require_grad():
    p = torch.nn.Parameter(_randn(3, seed=1).float())
    assert torch.equal(ParameterSketch(dim=4)([p])[:3], p.detach().double())


@pytest.mark.parametrize("dim", [64, 4096])
def test_linearity(dim):
    a = [_randn(300, 7, seed=1), _randn(50, seed=2)]
    b = [_randn(300, 7, seed=3), _randn(50, seed=4)]
    sk = ParameterSketch(dim=dim, seed=11)
    diff = [x - y for x, y in zip(a, b, strict=True)]
    torch.testing.assert_close(sk(a) - sk(b), sk(diff), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sk([2.5 * x for x in a]), 2.5 * sk(a), rtol=1e-12, atol=1e-12)


def test_hashed_sketch_is_independent_of_chunking_and_parameter_split():
    x = _randn(5000, seed=1)
    whole = ParameterSketch(dim=256, seed=3)([x])
    split = ParameterSketch(dim=256, seed=3, chunk=333)([x[:1234], x[1234:4000].reshape(2, -1), x[4000:]])
    torch.testing.assert_close(whole, split, rtol=0, atol=1e-12)


def test_hashed_sketch_is_a_signed_bucket_sum():
    """Every coordinate lands in exactly one bucket with sign +-1: one-hot inputs prove it."""
    sk = ParameterSketch(dim=8, seed=0)
    n = 20
    total = torch.zeros(8, dtype=torch.float64)
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1.0
        s = sk([e])
        assert (s != 0).sum() == 1 and s.abs().sum() == 1.0
        total += s
    torch.testing.assert_close(total, sk([torch.ones(n, dtype=torch.float64)]))


def test_countsketch_preserves_norms_and_inner_products():
    n, dim = 200_000, 4096
    x = _randn(n, seed=1)
    y = _randn(n, seed=2)
    w = 0.6 * x + 0.8 * y  # correlated with x: true cosine ~ 0.6
    sk = ParameterSketch(dim=dim, seed=7)
    sx, sw = sk([x]), sk([w])

    def rel(a, b):
        return abs(a - b) / abs(b)

    assert rel(float(sx @ sx), float(x @ x)) < 0.1
    assert rel(float(sw @ sw), float(w @ w)) < 0.1
    assert rel(float(sx @ sw), float(x @ w)) < 0.1
    _, _, cos_true = update_stats(x, w)
    _, _, cos_sk = update_stats(sx, sw)
    assert abs(cos_sk - cos_true) < 0.05
    # ... and the coefficient of the IDU formula built on it
    c_true, _ = gradient_coefficient(x, w)
    c_sk, _ = gradient_coefficient(sx, sw)
    assert rel(c_sk, c_true) < 0.1


def test_same_seed_same_sketch_different_seed_different():
    params = [_randn(1000, seed=1), _randn(10, 10, seed=2)]
    a = ParameterSketch(dim=128, seed=3)(params)
    b = ParameterSketch(dim=128, seed=3)(params)
    c = ParameterSketch(dim=128, seed=4)(params)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("dim", [0, -3, 2.0, "8"])
def test_invalid_dim(dim):
    with pytest.raises(ValueError, match=r"`sketch_dim` must be a positive int, got"):
        ParameterSketch(dim=dim)


def test_no_parameters():
    with pytest.raises(ValueError, match=r"No trainable parameters to sketch"):
        ParameterSketch(dim=8)([])
    with pytest.raises(ValueError, match=r"No trainable parameters to sketch"):
        ParameterSketch(dim=8)([torch.empty(0)])


# -------------------------------------------------------------------------------- gradient coefficient
def _grid_reference(u_k, u_prev, points=10001):
    """min over beta in a grid of [0, 1] of ||beta u_k + (1 - beta) u_prev||^2, by brute force."""
    betas = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    combos = betas[:, None] * u_k.double()[None, :] + (1.0 - betas[:, None]) * u_prev.double()[None, :]
    values = (combos**2).sum(dim=1)
    i = int(torch.argmin(values))
    return float(values[i]), float(betas[i])


def _grid_error(u_k, u_prev, points=10001):
    """The grid minimum exceeds the true one by at most ||u_k - u_prev||^2 * (step / 2)^2."""
    return float(((u_k - u_prev) ** 2).sum()) * (0.5 / (points - 1)) ** 2 * 1.01


_U = _randn(16, seed=1)
_V = _randn(16, seed=2)
_E1 = torch.zeros(16, dtype=torch.float64)
_E1[0] = 3.0
_E2 = torch.zeros(16, dtype=torch.float64)
_E2[1] = 2.0

PAIRS = {
    "random": (_U, _V, True),
    "random_scaled": (10.0 * _U, 0.1 * _V + 0.05 * _U, True),
    "parallel_longer_prev": (_U, 2.0 * _U, True),  # beta* = 1, C = d_k
    "parallel_shorter_prev": (_U, 0.5 * _U, True),  # beta* = 0, C = d_prev
    "anti_parallel": (_U, -0.5 * _U, True),  # a convex combination is exactly 0
    "orthogonal": (_E1, _E2, True),
    "identical": (_U, _U.clone(), False),  # every beta gives the same value
    "zero_k": (torch.zeros(16, dtype=torch.float64), _V, True),
    "both_zero": (torch.zeros(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64), False),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_gradient_coefficient_matches_grid_search(name):
    u_k, u_prev, unique_min = PAIRS[name]
    c, beta = gradient_coefficient(u_k, u_prev)
    c_ref, beta_ref = _grid_reference(u_k, u_prev)
    scale = float(u_k @ u_k + u_prev @ u_prev) + 1e-12
    assert c <= c_ref + 1e-12 * scale
    assert c == pytest.approx(c_ref, rel=1e-9, abs=_grid_error(u_k, u_prev) + 1e-12 * scale)
    assert 0.0 <= beta <= 1.0
    if unique_min:
        assert beta == pytest.approx(beta_ref, abs=1e-4)
    # C is the squared norm of the returned convex combination
    direct = float(((beta * u_k + (1 - beta) * u_prev) ** 2).sum())
    assert c == pytest.approx(direct, rel=1e-9, abs=1e-12 * scale)


def test_gradient_coefficient_on_many_random_pairs():
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        u_k = torch.randn(8, generator=g, dtype=torch.float64) * float(torch.rand(1, generator=g) * 5)
        u_prev = torch.randn(8, generator=g, dtype=torch.float64) + 0.7 * u_k
        c, beta = gradient_coefficient(u_k, u_prev)
        c_ref, beta_ref = _grid_reference(u_k, u_prev)
        assert c <= c_ref + 1e-12
        assert c == pytest.approx(c_ref, rel=1e-9, abs=_grid_error(u_k, u_prev) + 1e-12)
        assert beta == pytest.approx(beta_ref, abs=1e-4)


def test_gradient_coefficient_special_values():
    assert gradient_coefficient(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == (0.5, 0.5)
    c, beta = gradient_coefficient(_U, _U.clone())
    assert beta == 0.5 and c == pytest.approx(float(_U @ _U))
    c, _ = gradient_coefficient(_U, -_U)
    assert c == pytest.approx(0.0, abs=1e-12)


def test_first_round_gives_zero():
    assert gradient_coefficient(None, None)[0] == 0.0
    assert gradient_coefficient(_U, None)[0] == 0.0


def test_unseen_cluster_gives_d_prev():
    c, beta = gradient_coefficient(None, _V)
    assert c == pytest.approx(float(_V @ _V), rel=1e-12)
    assert beta == 0.0


def test_float32_inputs_are_computed_in_float64():
    c32, b32 = gradient_coefficient(_U.float(), _V.float())
    c64, b64 = gradient_coefficient(_U.float().double(), _V.float().double())
    assert (c32, b32) == (c64, b64)


def test_update_stats_matches_definitions():
    d_k, d_prev, cos = update_stats(_U, _V)
    assert d_k == pytest.approx(sum(float(x) ** 2 for x in _U))
    assert d_prev == pytest.approx(sum(float(x) ** 2 for x in _V))
    dot = sum(float(a) * float(b) for a, b in zip(_U, _V, strict=True))
    assert cos == pytest.approx(dot / math.sqrt(d_k * d_prev))
    assert update_stats(torch.zeros(3), torch.ones(3))[2] == 0.0


def test_official_bug_cos_phi_is_not_always_one():
    """Official code took cos_phi between two scalar norms (always 1.0), so C collapsed to an endpoint.

    Two different update vectors have cos_phi < 1, and C is then strictly below both d_k and d_prev.
    """
    u_k = torch.tensor([1.0, 2.0, -1.0, 0.5])
    u_prev = torch.tensor([2.0, -1.0, 0.5, 1.0])
    d_k, d_prev, cos = update_stats(u_k, u_prev)
    assert cos != pytest.approx(1.0)
    assert abs(cos) < 0.99
    c, beta = gradient_coefficient(u_k, u_prev)
    assert 0.0 < beta < 1.0
    assert c != pytest.approx(d_k) and c != pytest.approx(d_prev)
    assert c < min(d_k, d_prev)
    # the formula spelled out with the stats gives the same C
    rho = math.sqrt(d_k * d_prev) * cos
    beta_f = min(1.0, max(0.0, (d_prev - rho) / (d_k + d_prev - 2 * rho)))
    c_f = beta_f**2 * d_k + (1 - beta_f) ** 2 * d_prev + 2 * beta_f * (1 - beta_f) * rho
    assert (c, beta) == (pytest.approx(c_f), pytest.approx(beta_f))
