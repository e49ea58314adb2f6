"""Selection settings: :class:`LeadConfig` (LEAD) and one small config per baseline.

Each config is a dataclass in the PEFT style (typed fields, ``metadata={"help": ...}``, checks in
``__post_init__``) and is the single source of its method's settings: the callback and the engine
take it, the Hydra app registers it as the schema of its ``selection=`` option, and
``conf/selection/<name>.yaml`` holds only what a run changes. This module imports neither torch nor
Lightning, so a config is validated before any data or model work.

Example:
    >>> cfg = LeadConfig(budget=0.1, sample_rate=0.05, bandit="exp3", bandit_kwargs={"gamma": 0.2})
    >>> cfg.replace(seed=3).seed
    3
    >>> LeadConfig(max_uses=0)
    Traceback (most recent call last):
    ...
    ValueError: `max_uses` must be an int in [1, 255], got 0.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

if TYPE_CHECKING:
    from lead_lightning.base import RoundSelectionCallback
    from lead_lightning.pool import PoolIndex

__all__ = [
    "REWARDS",
    "WITHIN",
    "ALLOCATIONS",
    "CLUSTER_HISTORY",
    "REWARD_NORMS",
    "UTILITIES",
    "FullConfig",
    "IterativeReinferenceConfig",
    "LeadConfig",
    "RandomConfig",
    "SelectionConfig",
    "StaticIFDConfig",
    "StaticLossConfig",
    "resolve_config",
]

REWARDS = ("idu_drop", "loss_drop", "val_loss_drop", "first_visit_gain")
WITHIN = ("idu", "random")
CLUSTER_HISTORY = ("last", "first")
ALLOCATIONS = ("single", "proportional")
REWARD_NORMS = ("history", "round")
UTILITIES = ("idu", "reducible", "reducible_ratio")


def _check_fraction_or_count(name: str, value: Any) -> None:
    """Pool-independent part of :func:`lead_lightning.selection.resolve_count`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a fraction in (0, 1] or a count >= 1, got {value!r}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    if value <= 0 or (isinstance(value, float) and value > 1 and not float(value).is_integer()):
        raise ValueError(f"`{name}` must be a fraction in (0, 1] or a whole count >= 1, got {value!r}.")


def _check_sample_rate(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`sample_rate` must be a float in (0, 1] or an int count, got {value!r}.")
    if isinstance(value, float) and not (0.0 < value <= 1.0):
        raise ValueError(
            f"`sample_rate` must be in (0, 1] (a fraction of each group), got {value!r}."
            " HINT: pass an int for an absolute number of examples per round."
        )
    if isinstance(value, int) and value < 1:
        raise ValueError(f"`sample_rate` as a count must be >= 1, got {value!r}.")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


def _check_unit(name: str, value: Any, hi_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0.0
    ok = ok and (value < 1.0 if hi_open else value <= 1.0)
    if not ok:
        raise ValueError(f"`{name}` must be in [0, 1{')' if hi_open else ']'}, got {value!r}.")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    ok = (
        isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    )
    if not ok:
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        extra = " or None" if none_ok else ""
        raise ValueError(f"`{name}` must be an int {rng}{extra}, got {value!r}.")


def _check_bandit(bandit: Any, kwargs: Any) -> None:
    if not isinstance(kwargs, dict):
        raise ValueError(f"`bandit_kwargs` must be a dict, got {type(kwargs).__name__}.")
    if not isinstance(bandit, str):
        if not all(hasattr(bandit, a) for a in ("probabilities", "draw", "update", "state_dict")):
            raise ValueError(f"`bandit` must be a registered name or a `BanditPolicy`, got {bandit!r}.")
        if kwargs:
            raise ValueError(f"Bandit options {sorted(kwargs)} cannot be applied to an already built policy.")
        return
    from lead_lightning.bandits import BANDITS  # the registry (imports torch: only when a name is checked)

    key = bandit.lower()
    if key not in BANDITS:
        raise ValueError(f"`bandit` must be one of {sorted(BANDITS)}, got {bandit!r}.")
    params = inspect.signature(BANDITS[key]).parameters
    unknown = sorted(k for k in kwargs if k not in params or k == "num_arms")
    if unknown:
        known = sorted(k for k in params if k != "num_arms")
        raise ValueError(f"`bandit_kwargs` {unknown} are not options of bandit {key!r}; it takes {known}.")


def resolve_config(cls: type[Any], config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` (default ``cls()``) with ``overrides`` applied; a clear error for anything else.

    Example:
        >>> resolve_config(LeadConfig, None, {"seed": 1}).seed
        1
    """
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise TypeError(
            f"`config` must be a `{cls.__name__}`, got {type(config).__name__}. HINT: pass settings by keyword"
            f" (e.g. `budget=0.1`) or as `config={cls.__name__}(...)`."
        )
    if overrides:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"Unknown setting(s) {unknown} for `{cls.__name__}`; known: {sorted(known)}.")
        config = dataclasses.replace(config, **overrides)
    return config


class _Config:
    """Shared helpers of the selection configs (``replace``, ``to_dict``, ``build``)."""

    _callback: ClassVar[str] = ""  # "module:Class" of the callback this config builds

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for logging and ``state_key``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def build(self, pool: PoolIndex, **context: Any) -> RoundSelectionCallback:
        """The selection callback for ``pool`` (``context``: the extra arguments its class takes)."""
        import importlib

        module, name = self._callback.split(":")
        cls = getattr(importlib.import_module(module), name)
        return cls(pool, config=self, **context)  # type: ignore[no-any-return]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class LeadConfig(_Config):
    """Every setting of LEAD's selection (see the README's method card for each default's source).

    ``budget`` and ``sample_rate`` are checked against the pool (its size, its clusters) when the
    selector is built; everything else here.
    """

    budget: Union[int, float] = field(  # noqa: UP007 - OmegaConf needs typing.Union
        default=0.025,
        metadata=_help(
            "Unique examples ever trained: a fraction of the pool in (0, 1] or a count (paper: 2.5%)."
        ),
    )
    sample_rate: Union[int, float] = field(  # noqa: UP007
        default=0.015,
        metadata=_help(
            "Per round, per group of a chosen cluster: this fraction in (0, 1]; an int is a count per round."
        ),
    )
    bandit: Any = field(
        default="exp3",
        metadata=_help(
            "Cluster policy: exp3 | exp3s | ucb | thompson | uniform (no-MAB), or a BanditPolicy."
        ),
    )
    bandit_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=_help("Options of the bandit, e.g. {'gamma': 0.1} for exp3.")
    )
    arms_per_round: int = field(default=1, metadata=_help("Clusters drawn per round (paper: 1)."))
    max_uses: int = field(
        default=4, metadata=_help("Times one example may be trained, in [1, 255] (paper: 4).")
    )
    history_weight: float = field(
        default=0.1, metadata=_help("h in IDU <- h * IDU + (1 - h) * obs, in [0, 1) (paper: b = 0.1).")
    )
    reward: str = field(
        default="idu_drop", metadata=_help("Bandit reward: idu_drop (paper) | loss_drop | val_loss_drop.")
    )
    within_cluster: str = field(
        default="idu",
        metadata=_help("Inside a chosen cluster: idu (top IDU per group) | random (no-IDU ablation)."),
    )
    max_rounds: Optional[int] = field(  # noqa: UP045
        default=None,
        metadata=_help("Planned rounds (the horizon): stop after this many; None: the Trainer's max_epochs."),
    )
    stop_on_budget: bool = field(
        default=False, metadata=_help("Stop once the unique budget is spent (else revisit seen examples).")
    )
    cluster_history: str = field(
        default="last",
        metadata=_help("Round whose update of a cluster gives d_k: last | first (official code)."),
    )
    sketch_dim: int = field(
        default=4096, metadata=_help("Parameter-update sketch size (exact up to this many trainable params).")
    )
    seed: int = field(
        default=42, metadata=_help("Seeds bandit draws, random selection, shuffling, the sketch.")
    )
    shuffle: bool = field(
        default=True, metadata=_help("Shuffle the round's subset (official code: unshuffled).")
    )
    val_monitor: str = field(default="val/loss", metadata=_help("Metric read by reward='val_loss_drop'."))
    max_nonfinite_rounds: int = field(
        default=3,
        metadata=_help(
            "Stop with an error after this many rounds in a row without one finite loss (0: never)."
        ),
    )
    # ---- method options beyond the paper (off by default until measured; see the README's method card)
    allocation: str = field(
        default="single",
        metadata=_help(
            "single: the bandit draws arms_per_round clusters (paper) | proportional: every available cluster"
            " every round, quota ~ size tilted by the bandit's probabilities (online data mixing, DoReMi)."
        ),
    )
    allocation_floor: float = field(
        default=0.5,
        metadata=_help(
            "proportional: share of the round that stays proportional to cluster size, in [0, 1]."
        ),
    )
    bandit_eta: Any = field(
        default=None,
        metadata=_help(
            "Bandit learning rate: None (the bandit's own: EXP3 uses gamma/K) | a float | 'horizon' (tuned to"
            " max_rounds: EXP3 sqrt(2 ln K / (T K)), Hedge sqrt(8 ln K / T))."
        ),
    )
    reward_norm: str = field(
        default="history",
        metadata=_help("Reward scaling to [0, 1]: history (min-max over all past rewards, paper) | round."),
    )
    reward_smoothing: float = field(
        default=0.0,
        metadata=_help("reward_norm=round: per-arm EMA weight of the past raw reward, in [0, 1)."),
    )
    pacing: bool = field(
        default=False,
        metadata=_help("At most ceil(budget_left / rounds_left) new examples per round (needs max_rounds)."),
    )
    learnability: bool = field(
        default=False,
        metadata=_help(
            "Demote examples whose training loss did not fall between their first and latest visit"
            " (noisy or unlearnable; cf. RHO-LOSS): they are drawn only when nothing else is eligible."
        ),
    )
    utility: str = field(
        default="idu",
        metadata=_help(
            "Ranking inside clusters: idu (paper) | reducible (IDU minus the pool's reference loss"
            " `ref_loss`, RHO-LOSS's reducible loss: demotes noisy and unlearnable examples) |"
            " reducible_ratio ((IDU - ref_loss) / IDU: the share of the loss that is reducible)."
        ),
    )

    _callback: ClassVar[str] = "lead_lightning.callback:LeadSelectionCallback"

    @classmethod
    def paper(cls, **overrides: Any) -> LeadConfig:
        """The published LEAD's selection settings (``lead-train preset=paper``), exactly.

        One arm per round, EXP3 with ``gamma=0.1`` and learning rate ``gamma / K``, top-IDU per group,
        IDU-drop reward normalised by all past rewards, ``h=0.1``, ``max_uses=4``, a 2.5% budget,
        ``sample_rate=0.015``, 20 rounds. Clustering (K=7 k-means of IFD) is the offline stage's.

        Example:
            >>> LeadConfig.paper().allocation, LeadConfig.paper(seed=1).max_rounds
            ('single', 20)
        """
        paper = {
            "budget": 0.025,
            "sample_rate": 0.015,
            "bandit": "exp3",
            "bandit_kwargs": {"gamma": 0.1},
            "arms_per_round": 1,
            "max_uses": 4,
            "history_weight": 0.1,
            "reward": "idu_drop",
            "within_cluster": "idu",
            "max_rounds": 20,
            "cluster_history": "last",
            "seed": 42,
            "allocation": "single",
            "bandit_eta": None,
            "reward_norm": "history",
            "pacing": False,
            "learnability": False,
            "utility": "idu",
        }
        return cls(**{**paper, **overrides})

    def __post_init__(self) -> None:
        _check_fraction_or_count("budget", self.budget)
        _check_sample_rate(self.sample_rate)
        _check_bandit(self.bandit, self.bandit_kwargs)
        _check_int("arms_per_round", self.arms_per_round, 1)
        _check_int("max_uses", self.max_uses, 1, 255)
        hw = self.history_weight
        if isinstance(hw, bool) or not (isinstance(hw, (int, float)) and 0.0 <= hw < 1.0):
            raise ValueError(f"`history_weight` must be in [0, 1), got {hw!r}.")
        _check_choice("reward", self.reward, REWARDS)
        _check_choice("within_cluster", self.within_cluster, WITHIN)
        _check_choice("cluster_history", self.cluster_history, CLUSTER_HISTORY)
        if self.max_rounds is not None:
            _check_int("max_rounds", self.max_rounds, 1)
        if isinstance(self.sketch_dim, bool) or not isinstance(self.sketch_dim, int) or self.sketch_dim < 1:
            raise ValueError(f"`sketch_dim` must be a positive int, got {self.sketch_dim!r}.")
        _check_int("seed", self.seed, 0)
        if not isinstance(self.val_monitor, str) or not self.val_monitor:
            raise ValueError(f"`val_monitor` must be a metric name, got {self.val_monitor!r}.")
        _check_int("max_nonfinite_rounds", self.max_nonfinite_rounds, 0)
        self.bandit_kwargs = dict(self.bandit_kwargs)
        self._check_options()

    def _check_options(self) -> None:
        _check_choice("allocation", self.allocation, ALLOCATIONS)
        _check_unit("allocation_floor", self.allocation_floor, hi_open=False)
        eta = self.bandit_eta
        bad_number = (
            isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta > 0)
        )
        if eta is not None and eta != "horizon" and bad_number:
            raise ValueError(f"`bandit_eta` must be None, 'horizon' or a float > 0, got {eta!r}.")
        if eta is not None:
            name = self.bandit if isinstance(self.bandit, str) else ""
            if name.lower() not in ("exp3", "exp3s", "hedge"):
                raise ValueError(
                    f"`bandit_eta` applies to the exp3, exp3s and hedge bandits, not {self.bandit!r}."
                )
            if "eta" in self.bandit_kwargs:
                raise ValueError(
                    "Give the bandit's rate once: `bandit_eta` or `bandit_kwargs['eta']`, not both."
                )
        if eta == "horizon" and self.max_rounds is None:
            raise ValueError("`bandit_eta='horizon'` needs `max_rounds` (the horizon T).")
        _check_choice("reward_norm", self.reward_norm, REWARD_NORMS)
        _check_choice("utility", self.utility, UTILITIES)
        _check_unit("reward_smoothing", self.reward_smoothing, hi_open=True)
        if self.pacing and self.max_rounds is None:
            raise ValueError("`pacing=True` needs `max_rounds` (the rounds to spread the budget over).")


@dataclass
class _BaselineConfig(_Config):
    """Round size shared by the baselines: the examples LEAD draws per round on average."""

    sample_rate: Union[int, float] = field(  # noqa: UP007
        default=0.015,
        metadata=_help(
            "Examples per round, as LEAD's: a fraction of each group of one average cluster (times"
            " arms_per_round), or an int count per round."
        ),
    )
    arms_per_round: int = field(default=1, metadata=_help("LEAD's clusters per round (sets the round size)."))
    max_rounds: Optional[int] = field(default=None, metadata=_help("Planned rounds; None: max_epochs."))  # noqa: UP045
    seed: int = field(default=42, metadata=_help("Seeds the choice and the shuffles."))
    max_nonfinite_rounds: int = field(
        default=3,
        metadata=_help(
            "Stop with an error after this many rounds in a row without one finite loss (0: never)."
        ),
    )

    def __post_init__(self) -> None:
        _check_sample_rate(self.sample_rate)
        _check_int("arms_per_round", self.arms_per_round, 1)
        if self.max_rounds is not None:
            _check_int("max_rounds", self.max_rounds, 1)
        _check_int("seed", self.seed, 0)
        _check_int("max_nonfinite_rounds", self.max_nonfinite_rounds, 0)


@dataclass
class FullConfig(_BaselineConfig):
    """``full``: seeded shuffles of the whole pool, LEAD's round size per round (no unique budget)."""

    _callback: ClassVar[str] = "lead_lightning.baselines:FullSelection"


@dataclass
class _BudgetedConfig(_BaselineConfig):
    budget: Union[int, float] = field(  # noqa: UP007
        default=0.025, metadata=_help("Unique examples, chosen once: a fraction of the pool or a count.")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction_or_count("budget", self.budget)


@dataclass
class RandomConfig(_BudgetedConfig):
    """``random``: ``budget`` examples drawn at random once, walked in seeded shuffles."""

    _callback: ClassVar[str] = "lead_lightning.baselines:RandomSelection"


@dataclass
class StaticIFDConfig(_BudgetedConfig):
    """``static_ifd``: the ``budget`` examples of highest IFD (flagged IFD > 1 last), chosen once."""

    _callback: ClassVar[str] = "lead_lightning.baselines:StaticIFDSelection"


@dataclass
class StaticLossConfig(_BudgetedConfig):
    """``static_loss``: the ``budget`` examples of highest base-model loss (iu0; PPL selection), chosen once."""

    _callback: ClassVar[str] = "lead_lightning.baselines:StaticLossSelection"


@dataclass
class IterativeReinferenceConfig(_BudgetedConfig):
    """``iterative_reinference``: rescore the whole pool with the current model every round, train the top loss.

    Costs one forward pass per pool example per round (counted in the round summary).
    """

    budget: Union[int, float] = field(  # noqa: UP007
        default=1.0, metadata=_help("Unique examples that may be trained: a fraction of the pool or a count.")
    )
    max_uses: int = field(default=4, metadata=_help("Times one example may be trained."))
    batch_size: int = field(default=64, metadata=_help("Batch size of the per-round rescoring pass."))

    _callback: ClassVar[str] = "lead_lightning.baselines:IterativeReinference"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("max_uses", self.max_uses, 1, 255)
        _check_int("batch_size", self.batch_size, 1)


SelectionConfig = Union[  # noqa: UP007
    LeadConfig, FullConfig, RandomConfig, StaticIFDConfig, StaticLossConfig, IterativeReinferenceConfig
]
"""Any selection method's config (each builds its callback with ``config.build(pool)``)."""
