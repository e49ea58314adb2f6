"""lead_lightning: LEAD iterative data selection for LLM instruction tuning, as Lightning callbacks.

Example:
    >>> from lead_lightning import LeadSelectionCallback, PoolIndex
    >>> pool = PoolIndex(clusters=[0, 0, 1, 1], iu0=[1.0, 2.0, 3.0, 4.0])
    >>> cb = LeadSelectionCallback(pool, budget=1.0, sample_rate=0.5, seed=0)
"""

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
from lead_lightning.callback import LeadSelectionCallback
from lead_lightning.idu import IDUState, idu_update
from lead_lightning.losses import LMLosses, lm_losses, per_example_lm_loss
from lead_lightning.pool import PoolIndex
from lead_lightning.sampler import RoundSampler
from lead_lightning.sketch import ParameterSketch, gradient_coefficient

__all__ = [
    "BANDITS",
    "EXP3",
    "EXP3S",
    "UCB1",
    "BanditPolicy",
    "IDUState",
    "LMLosses",
    "LeadSelectionCallback",
    "ParameterSketch",
    "PoolIndex",
    "RewardNormalizer",
    "RoundSampler",
    "ThompsonGaussian",
    "Uniform",
    "gradient_coefficient",
    "idu_update",
    "lm_losses",
    "make_bandit",
    "per_example_lm_loss",
]
__version__ = "0.1.0"
