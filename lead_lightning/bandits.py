"""Bandit policies that choose which clusters (arms) LEAD trains on each round.

Every policy follows :class:`BanditPolicy`: ``probabilities(mask)`` is a pure function of the state,
``draw(n, generator, mask)`` picks ``n`` distinct available arms using only the caller's generator, and
``update(arms, rewards, probabilities)`` learns from rewards already normalised to ``[0, 1]`` (see
:class:`RewardNormalizer`). State is a flat dict of tensors and ints, loadable with ``weights_only=True``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "BANDITS",
    "EXP3",
    "EXP3S",
    "UCB1",
    "Hedge",
    "RoundNormalizer",
    "BanditPolicy",
    "RewardNormalizer",
    "ThompsonGaussian",
    "Uniform",
    "make_bandit",
]


@runtime_checkable
class BanditPolicy(Protocol):
    """What the LEAD callback needs from a bandit over ``num_arms`` arms (see the module docstring)."""

    name: str  # short name, used in logs and in the callback's ``state_key``
    num_arms: int

    def probabilities(self, mask: Tensor | None = None) -> Tensor: ...
    def draw(self, n: int, generator: torch.Generator, mask: Tensor | None = None) -> list[int]: ...
    def update(self, arms: Sequence[int], rewards: Sequence[float], probabilities: Tensor) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _check_real(name: str, value: Any, lo: float, hi: float, lo_open: bool, hi_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")
    return float(value)


def _describe(value: Any) -> str:
    return f"{value.dtype} of shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)


def _top(scores: Tensor, available: Tensor, n: int) -> list[int]:
    """Indices of the ``n`` highest available scores; ties go to the lowest index."""
    masked = scores.masked_fill(~available, -math.inf)
    return torch.sort(masked, descending=True, stable=True).indices[:n].tolist()


class _Policy:
    """Validation, drawing and state shared by the policies; subclasses hold the maths."""

    name: str
    _state_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, num_arms: int) -> None:
        if isinstance(num_arms, bool) or not isinstance(num_arms, int) or num_arms < 1:
            raise ValueError(f"`num_arms` must be an integer >= 1, got {num_arms!r}.")
        self.num_arms = num_arms

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_arms={self.num_arms})"

    def _available(self, mask: Tensor | None) -> Tensor:
        if mask is None:
            return torch.ones(self.num_arms, dtype=torch.bool)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (self.num_arms,):
            got = _describe(mask)
            raise ValueError(f"`mask` must be a bool Tensor of shape ({self.num_arms},), got {got}.")
        if not bool(mask.any()):
            raise ValueError("`mask` must leave at least one arm available, got none.")
        return mask.cpu()

    def _scores(self, generator: torch.Generator | None) -> Tensor | None:
        """Per-arm scores when ``draw`` takes the top ``n`` (UCB1, Thompson); ``None`` to sample."""
        return None

    def probabilities(self, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def draw(self, n: int, generator: torch.Generator, mask: Tensor | None = None) -> list[int]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be an integer >= 1, got {n!r}.")
        available = self._available(mask)
        if n > (num_available := int(available.sum())):
            raise ValueError(f"`n` must be <= the number of available arms ({num_available}), got {n}.")
        scores = self._scores(generator)
        if scores is not None:
            return _top(scores, available, n)
        weights, chosen = self.probabilities(mask), []
        for _ in range(n):  # sequential draws, renormalising over the arms not chosen yet
            arm = int(torch.multinomial(weights, 1, generator=generator))
            weights[arm] = 0.0
            chosen.append(arm)
        return chosen

    def update(self, arms: Sequence[int], rewards: Sequence[float], probabilities: Tensor) -> None:
        arm_list, reward_list = [operator.index(a) for a in arms], [float(r) for r in rewards]
        if len(arm_list) != len(reward_list):
            raise ValueError(
                f"`arms` and `rewards` must have the same length, got {len(arm_list)} and {len(reward_list)}."
            )
        for a, r in zip(arm_list, reward_list, strict=True):
            if not 0 <= a < self.num_arms:
                raise ValueError(f"`arms` must be in [0, {self.num_arms}), got {a}.")
            if not (math.isfinite(r) and 0.0 <= r <= 1.0):
                raise ValueError(f"`rewards` must be finite and in [0, 1] (normalise them first), got {r}.")
        if not isinstance(probabilities, Tensor) or probabilities.shape != (self.num_arms,):
            got = _describe(probabilities)
            raise ValueError(f"`probabilities` must be a Tensor of shape ({self.num_arms},), got {got}.")
        self._update(arm_list, reward_list, probabilities.tolist())

    def _update(self, arms: list[int], rewards: list[float], probabilities: list[float]) -> None:
        """Learn from validated inputs (plain lists: cheaper than tensor ops for a handful of arms)."""

    def _per_arm(self, arms: list[int], values: list[float]) -> Tensor:
        """Sum of ``values`` per arm, as a float64 Tensor[K]."""
        total = [0.0] * self.num_arms
        for a, v in zip(arms, values, strict=True):
            total[a] += v
        return torch.tensor(total, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"num_arms": self.num_arms, **{k: getattr(self, k).clone() for k in self._state_keys}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cls = type(self).__name__
        if state.get("num_arms") != self.num_arms:
            raise ValueError(
                f"Cannot load a bandit state saved with `num_arms`={state.get('num_arms')} into {cls} with"
                f" `num_arms`={self.num_arms}. HINT: the pool's clusters must match the checkpoint's."
            )
        missing = [k for k in self._state_keys if k not in state]
        if missing:
            raise ValueError(f"{cls} state is missing keys {missing}; was it saved by another policy?")
        for k in self._state_keys:
            setattr(self, k, torch.as_tensor(state[k], dtype=torch.float64).clone().reshape(self.num_arms))


class EXP3(_Policy):
    r"""EXP3 (Auer et al., 2002): exponential weights with uniform exploration.

    .. math::
        p_i = (1 - \gamma) \frac{w_i}{\sum_{j \in A} w_j} + \frac{\gamma}{|A|}, \qquad
        w_a \leftarrow w_a \exp\!\Big(\frac{\gamma\, r_a}{K\, p_a}\Big) \text{ for each drawn arm } a,

    over the available arms :math:`A`, with :math:`K` = ``num_arms``. Weights live in log space,
    re-centred after every update. With several arms per round, :math:`p_a` stays the single-draw
    probability that ``probabilities`` returned (as in LEAD), not the inclusion probability.

    Args:
        num_arms: number of arms ``K`` (clusters), >= 1.
        gamma: exploration rate in ``(0, 1]`` (LEAD's official value is 0.1).
        eta: learning rate of the weights, > 0; ``None`` (the classic EXP3 and LEAD) uses
            ``gamma / K``, which ties learning to exploration: at ``gamma=0.1`` and a few dozen rounds
            the probabilities barely move. A rate tuned to a horizon of ``T`` rounds is
            ``sqrt(2 ln K / (T K))`` (Bubeck and Cesa-Bianchi, 2012, Thm. 3.1).

    Example:
        >>> bandit = EXP3(num_arms=3, gamma=0.1)
        >>> bandit.update([0], [1.0], bandit.probabilities())
        >>> bandit.probabilities()
        tensor([0.3537, 0.3232, 0.3232], dtype=torch.float64)
    """

    name = "exp3"
    _state_keys = ("log_weights",)

    def __init__(self, num_arms: int, gamma: float = 0.1, eta: float | None = None) -> None:
        super().__init__(num_arms)
        self.gamma = _check_real("gamma", gamma, 0.0, 1.0, lo_open=True)
        self.eta = (
            self.gamma / num_arms if eta is None else _check_real("eta", eta, 0.0, math.inf, True, True)
        )
        self.log_weights = torch.zeros(num_arms, dtype=torch.float64)

    def probabilities(self, mask: Tensor | None = None) -> Tensor:
        available = self._available(mask)
        share = torch.softmax(self.log_weights.masked_fill(~available, -math.inf), dim=0)
        return ((1.0 - self.gamma) * share + self.gamma / int(available.sum())) * available

    def _log_growth(self, arms: list[int], rewards: list[float], probabilities: list[float]) -> Tensor:
        """``eta * xhat_i`` per arm, with ``xhat_i = r_i / p_i`` for drawn arms and 0 elsewhere."""
        if bad := [a for a in arms if not probabilities[a] > 0]:
            raise ValueError(f"`probabilities` must be > 0 for every drawn arm, got 0 for arms {bad}.")
        scale = self.eta
        return self._per_arm(arms, [scale * r / probabilities[a] for a, r in zip(arms, rewards, strict=True)])

    def _update(self, arms: list[int], rewards: list[float], probabilities: list[float]) -> None:
        grown = self.log_weights + self._log_growth(arms, rewards, probabilities)
        self.log_weights = grown - grown.max()  # re-centre: the largest weight is always 1, no overflow


class EXP3S(EXP3):
    r"""EXP3.S (Auer et al., 2002): EXP3 plus a fixed share of the total weight, to track a moving best arm.

    .. math::
        w_i \leftarrow w_i \exp\!\Big(\frac{\gamma\, \hat x_i}{K}\Big) + \frac{e\,\alpha}{K} \sum_j w_j,
        \qquad \hat x_i = \frac{r_i}{p_i} \text{ if } i \text{ was drawn, else } 0.

    Probabilities are EXP3's. ``alpha=0`` is exactly EXP3.

    Args:
        num_arms: number of arms ``K``, >= 1.
        gamma: exploration rate in ``(0, 1]``.
        alpha: fixed-share rate in ``[0, 1]`` (Auer et al. suggest ``1/T`` for ``T`` rounds).

    Example:
        >>> bandit = EXP3S(num_arms=3, gamma=0.1, alpha=0.01)
        >>> for _ in range(200):
        ...     bandit.update([0], [1.0], bandit.probabilities())
        >>> bandit.probabilities()
        tensor([0.6756, 0.1622, 0.1622], dtype=torch.float64)
    """

    name = "exp3s"

    def __init__(
        self, num_arms: int, gamma: float = 0.1, alpha: float = 0.01, eta: float | None = None
    ) -> None:
        super().__init__(num_arms, gamma, eta)
        self.alpha = _check_real("alpha", alpha, 0.0, 1.0, lo_open=False)

    def _update(self, arms: list[int], rewards: list[float], probabilities: list[float]) -> None:
        grown = self.log_weights + self._log_growth(arms, rewards, probabilities)
        if self.alpha > 0:
            log_share = math.log(math.e * self.alpha / self.num_arms) + torch.logsumexp(self.log_weights, 0)
            grown = torch.logaddexp(grown, log_share)
        self.log_weights = grown - grown.max()


class Hedge(EXP3):
    r"""Hedge (Freund and Schapire, 1997): exponential weights with full information.

    .. math::
        p_i = (1 - \gamma) \frac{w_i}{\sum_{j \in A} w_j} + \frac{\gamma}{|A|}, \qquad
        w_a \leftarrow w_a \exp(\eta\, r_a) \text{ for every arm } a \text{ observed this round.}

    For ``allocation="proportional"``, where every available cluster is trained (observed) every
    round, so no importance weighting is needed. ``eta`` tuned to ``T`` rounds: ``sqrt(8 ln K / T)``
    (Cesa-Bianchi and Lugosi, 2006, Thm. 2.2).

    Args:
        num_arms: number of arms ``K``, >= 1.
        eta: learning rate, > 0.
        gamma: share of uniform exploration in ``[0, 1]`` (default 0: observation is free).

    Example:
        >>> bandit = Hedge(num_arms=2, eta=1.0)
        >>> bandit.update([0, 1], [1.0, 0.0], bandit.probabilities())
        >>> bandit.probabilities()
        tensor([0.7311, 0.2689], dtype=torch.float64)
    """

    name = "hedge"

    def __init__(self, num_arms: int, eta: float = 0.5, gamma: float = 0.0) -> None:
        _Policy.__init__(self, num_arms)
        self.gamma = _check_real("gamma", gamma, 0.0, 1.0, lo_open=False)
        self.eta = _check_real("eta", eta, 0.0, math.inf, True, True)
        self.log_weights = torch.zeros(num_arms, dtype=torch.float64)

    def _update(self, arms: list[int], rewards: list[float], probabilities: list[float]) -> None:
        grown = self.log_weights + self._per_arm(arms, [self.eta * r for r in rewards])
        self.log_weights = grown - grown.max()


class _CountingPolicy(_Policy):
    """Keeps per-arm play counts and reward sums (UCB1, Thompson)."""

    _state_keys = ("counts", "sums")

    def __init__(self, num_arms: int) -> None:
        super().__init__(num_arms)
        self.counts = torch.zeros(num_arms, dtype=torch.float64)
        self.sums = torch.zeros(num_arms, dtype=torch.float64)

    def _update(self, arms: list[int], rewards: list[float], probabilities: list[float]) -> None:
        self.counts += self._per_arm(arms, [1.0] * len(arms))
        self.sums += self._per_arm(arms, rewards)


class UCB1(_CountingPolicy):
    r"""UCB1 (Auer et al., 2002): deterministic optimism in the face of uncertainty.

    .. math::
        s_i = \bar r_i + \sqrt{\frac{c \ln t}{n_i}}, \qquad t = \sum_j n_j,

    arms never played come first (lowest index first). ``probabilities`` is one-hot on the best
    available arm and ``draw(n)`` takes the ``n`` best scores; the generator is not used. Ties go to
    the lowest index.

    Args:
        num_arms: number of arms, >= 1.
        c: exploration constant, finite and >= 0 (``0`` is greedy; 2 is the classic bound).

    Example:
        >>> bandit = UCB1(num_arms=3)
        >>> bandit.update([0, 1, 2], [0.2, 0.9, 0.5], torch.zeros(3))
        >>> bandit.draw(2, torch.Generator())
        [1, 2]
    """

    name = "ucb"

    def __init__(self, num_arms: int, c: float = 2.0) -> None:
        super().__init__(num_arms)
        self.c = _check_real("c", c, 0.0, math.inf, lo_open=False, hi_open=True)

    def _scores(self, generator: torch.Generator | None) -> Tensor:
        played = self.counts > 0
        t = float(self.counts.sum())
        n = self.counts.clamp(min=1.0)
        bonus = torch.sqrt(self.c * math.log(max(t, 1.0)) / n)
        return torch.where(played, self.sums / n + bonus, torch.full_like(n, math.inf))

    def probabilities(self, mask: Tensor | None = None) -> Tensor:
        probs = torch.zeros(self.num_arms, dtype=torch.float64)
        probs[_top(self._scores(None), self._available(mask), 1)[0]] = 1.0
        return probs


class ThompsonGaussian(_CountingPolicy):
    r"""Thompson sampling with a conjugate Gaussian posterior on each arm's mean reward.

    .. math::
        \tau_i = \frac{1}{\sigma_0^2} + \frac{n_i}{\sigma^2}, \qquad
        \mu_i = \frac{1}{\tau_i}\Big(\frac{\mu_0}{\sigma_0^2} + \frac{\sum r_i}{\sigma^2}\Big), \qquad
        \theta_i \sim \mathcal N(\mu_i, \tau_i^{-1}),

    and ``draw(n)`` takes the ``n`` largest samples. ``probabilities`` estimates the chance that each
    arm has the largest sample by Monte Carlo (``mc_samples`` draws from a private generator seeded
    with 0), so it is deterministic and never touches the caller's RNG.

    Args:
        num_arms: number of arms, >= 1.
        prior_mean: prior mean reward, finite.
        prior_var: prior variance, > 0.
        noise_var: reward noise variance, > 0 (0.25 bounds any reward in [0, 1]).

    Example:
        >>> bandit = ThompsonGaussian(num_arms=2)
        >>> for _ in range(20):
        ...     bandit.update([0, 1], [0.9, 0.1], torch.zeros(2))
        >>> bandit.draw(1, torch.Generator().manual_seed(0)), bandit.probabilities().tolist()
        ([0], [1.0, 0.0])
    """

    name = "thompson"
    mc_samples: ClassVar[int] = 4096

    def __init__(
        self, num_arms: int, prior_mean: float = 0.5, prior_var: float = 1.0, noise_var: float = 0.25
    ) -> None:
        super().__init__(num_arms)
        self.prior_mean = _check_real("prior_mean", prior_mean, -math.inf, math.inf, True, True)
        self.prior_var = _check_real("prior_var", prior_var, 0.0, math.inf, lo_open=True, hi_open=True)
        self.noise_var = _check_real("noise_var", noise_var, 0.0, math.inf, lo_open=True, hi_open=True)

    def posterior(self) -> tuple[Tensor, Tensor]:
        """Posterior mean and standard deviation of each arm's mean reward."""
        precision = 1.0 / self.prior_var + self.counts / self.noise_var
        mean = (self.prior_mean / self.prior_var + self.sums / self.noise_var) / precision
        return mean, precision.rsqrt()

    def _sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        mean, std = self.posterior()
        return mean + std * torch.randn(*shape, self.num_arms, generator=generator, dtype=torch.float64)

    def _scores(self, generator: torch.Generator | None) -> Tensor:
        return self._sample((), generator)

    def probabilities(self, mask: Tensor | None = None) -> Tensor:
        available = self._available(mask)
        theta = self._sample((self.mc_samples,), torch.Generator().manual_seed(0))
        winners = theta.masked_fill(~available, -math.inf).argmax(dim=1)
        return torch.bincount(winners, minlength=self.num_arms).double() / self.mc_samples


class Uniform(_Policy):
    r"""Equal probability on every available arm; ``update`` only validates (the "no MAB" ablation).

    .. math::
        p_i = \frac{1}{|A|} \text{ for } i \in A.

    Args:
        num_arms: number of arms, >= 1.

    Example:
        >>> Uniform(num_arms=4).probabilities(torch.tensor([True, False, True, True]))
        tensor([0.3333, 0.0000, 0.3333, 0.3333], dtype=torch.float64)
    """

    name = "uniform"

    def probabilities(self, mask: Tensor | None = None) -> Tensor:
        available = self._available(mask).double()
        return available / available.sum()


BANDITS: dict[str, type] = {cls.name: cls for cls in (EXP3, EXP3S, Hedge, UCB1, ThompsonGaussian, Uniform)}


def make_bandit(spec: str | BanditPolicy, num_arms: int, **kwargs: Any) -> BanditPolicy:
    """Build a policy from its registry name (case-insensitive), or check an instance's ``num_arms``.

    Example:
        >>> make_bandit("EXP3", num_arms=7, gamma=0.2)
        EXP3(num_arms=7)
    """
    if isinstance(spec, str):
        key = spec.lower()
        if key not in BANDITS:
            raise ValueError(f"`bandit` must be one of {sorted(BANDITS)}, got {spec!r}.")
        return BANDITS[key](num_arms, **kwargs)
    if not isinstance(spec, BanditPolicy):
        raise TypeError(f"`bandit` must be a name or a `BanditPolicy`, got {type(spec).__name__}.")
    if kwargs:
        raise ValueError(f"Bandit options {sorted(kwargs)} cannot be applied to an already built policy.")
    if spec.num_arms != num_arms:
        raise ValueError(f"The given bandit has `num_arms`={spec.num_arms}, expected `num_arms`={num_arms}.")
    return spec


class RewardNormalizer:
    r"""Min-max normalisation of raw rewards against every raw reward seen so far.

    .. math::
        \tilde r = \frac{r - \min_h r_h}{\max_h r_h - \min_h r_h}
        \quad (\tilde r = 0.5 \text{ when } \max_h r_h = \min_h r_h).

    Example:
        >>> norm = RewardNormalizer()
        >>> norm.normalize(1.0), norm.normalize(1.0), norm.normalize(3.0), norm.normalize(2.0)
        (0.5, 0.5, 1.0, 0.5)
    """

    def __init__(self) -> None:
        self.history: list[float] = []

    def normalize(self, raw: float) -> float:
        """Append ``raw`` to the history and return it scaled to ``[0, 1]``."""
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"`raw` reward must be finite, got {value}.")
        self.history.append(value)
        lo, hi = min(self.history), max(self.history)
        return 0.5 if hi == lo else (value - lo) / (hi - lo)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(v) for v in state["history"]]


class RoundNormalizer:
    r"""Per-round normalisation of per-arm rewards, after optional per-arm exponential smoothing.

    .. math::
        m_a \leftarrow s\,m_a + (1 - s)\,r_a, \qquad
        \tilde r_a = \frac{m_a - \min_{b \in R} m_b}{\max_{b \in R} m_b - \min_{b \in R} m_b}

    over the arms ``R`` rewarded this round (``m_a = r_a`` the first time; 0.5 when the round's
    values are all equal or only one arm was rewarded). Unlike :class:`RewardNormalizer`, the scale
    never drifts with the history: each round compares its arms with each other, which is what a
    full-information update (every cluster trained every round) needs.

    Args:
        num_arms: number of arms.
        smoothing: ``s`` in ``[0, 1)``; 0 uses each round's raw reward as is.

    Example:
        >>> norm = RoundNormalizer(3)
        >>> norm.normalize({0: 0.2, 1: 0.5, 2: 0.4})
        {0: 0.0, 1: 1.0, 2: 0.6666666666666667}
    """

    def __init__(self, num_arms: int, smoothing: float = 0.0) -> None:
        self.smoothing = _check_real("smoothing", smoothing, 0.0, 1.0, lo_open=False, hi_open=True)
        self.mean = torch.zeros(num_arms, dtype=torch.float64)
        self.seen = torch.zeros(num_arms, dtype=torch.bool)

    def normalize(self, raw: dict[int, float]) -> dict[int, float]:
        """Smooth each arm's raw reward into its running mean and scale this round's arms to ``[0, 1]``."""
        s = self.smoothing
        for a, r in raw.items():
            if not math.isfinite(r):
                raise ValueError(f"`raw` reward must be finite, got {r} for arm {a}.")
            self.mean[a] = s * self.mean[a] + (1.0 - s) * r if bool(self.seen[a]) else r
            self.seen[a] = True
        values = {a: float(self.mean[a]) for a in raw}
        if not values:
            return {}
        lo, hi = min(values.values()), max(values.values())
        return {a: 0.5 if hi == lo else (v - lo) / (hi - lo) for a, v in values.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = state["mean"].clone().to(torch.float64)
        self.seen = state["seen"].clone().to(torch.bool)
