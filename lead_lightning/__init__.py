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
from lead_lightning.engine import LeadSelector
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
    "LeadSelector",
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

# The instruction-tuning stack imports transformers/peft; load it on first use so that
# `import lead_lightning` stays light for users who bring their own module.
_LAZY = {
    "InstructionRecord": "lead_lightning.data",
    "InstructionCollator": "lead_lightning.data",
    "InstructionDataset": "lead_lightning.data",
    "InstructionDataModule": "lead_lightning.data",
    "generate_pool": "lead_lightning.data",
    "get_template": "lead_lightning.data",
    "CausalLMModule": "lead_lightning.models",
    "LoraSettings": "lead_lightning.models",
    "tiny_causal_lm": "lead_lightning.models",
    "train_bpe_tokenizer": "lead_lightning.models",
    "load_tokenizer": "lead_lightning.models",
    "load_causal_lm": "lead_lightning.models",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lead_lightning' has no attribute {name!r}")
