"""lead_lightning: LEAD iterative data selection for LLM instruction tuning, as Lightning callbacks.

Every public name is loaded on first use (PEP 562), so ``import lead_lightning`` (and the config-only
paths of ``lead-train``: ``--help``, a config error) import neither torch nor lightning.

Example:
    >>> from lead_lightning import LeadConfig, LeadSelectionCallback, PoolIndex, RandomSelection
    >>> pool = PoolIndex(clusters=[0, 0, 1, 1], iu0=[1.0, 2.0, 3.0, 4.0])
    >>> cb = LeadSelectionCallback(pool, LeadConfig(budget=1.0, sample_rate=0.5, seed=0))
    >>> baseline = RandomSelection(pool, budget=1.0, sample_rate=0.5, seed=0)  # the same contract
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> the module that defines it; `from lead_lightning import X` imports that module then.
_LAZY: dict[str, str] = {
    # selection core (torch)
    "BANDITS": "lead_lightning.bandits",
    "EXP3": "lead_lightning.bandits",
    "EXP3S": "lead_lightning.bandits",
    "UCB1": "lead_lightning.bandits",
    "BanditPolicy": "lead_lightning.bandits",
    "RewardNormalizer": "lead_lightning.bandits",
    "ThompsonGaussian": "lead_lightning.bandits",
    "Uniform": "lead_lightning.bandits",
    "make_bandit": "lead_lightning.bandits",
    "LeadConfig": "lead_lightning.config",
    "LeadSelector": "lead_lightning.engine",
    "IDUState": "lead_lightning.idu",
    "idu_update": "lead_lightning.idu",
    "LMLosses": "lead_lightning.losses",
    "lm_losses": "lead_lightning.losses",
    "per_example_lm_loss": "lead_lightning.losses",
    "PoolIndex": "lead_lightning.pool",
    "RoundSampler": "lead_lightning.sampler",
    "ParameterSketch": "lead_lightning.sketch",
    "gradient_coefficient": "lead_lightning.sketch",
    # Lightning callbacks
    "RoundSelectionCallback": "lead_lightning.base",
    "RoundSummary": "lead_lightning.base",
    "LeadSelectionCallback": "lead_lightning.callback",
    "FullSelection": "lead_lightning.baselines",
    "RandomSelection": "lead_lightning.baselines",
    "StaticIFDSelection": "lead_lightning.baselines",
    "StaticLossSelection": "lead_lightning.baselines",
    "IterativeReinference": "lead_lightning.baselines",
    # the instruction-tuning stack (transformers, peft)
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

__all__ = [  # every public name; each is a key of _LAZY (a test checks both agree)
    "BANDITS",
    "BanditPolicy",
    "CausalLMModule",
    "EXP3",
    "EXP3S",
    "FullSelection",
    "IDUState",
    "InstructionCollator",
    "InstructionDataModule",
    "InstructionDataset",
    "InstructionRecord",
    "IterativeReinference",
    "LMLosses",
    "LeadConfig",
    "LeadSelectionCallback",
    "LeadSelector",
    "LoraSettings",
    "ParameterSketch",
    "PoolIndex",
    "RandomSelection",
    "RewardNormalizer",
    "RoundSampler",
    "RoundSelectionCallback",
    "RoundSummary",
    "StaticIFDSelection",
    "StaticLossSelection",
    "ThompsonGaussian",
    "UCB1",
    "Uniform",
    "generate_pool",
    "get_template",
    "gradient_coefficient",
    "idu_update",
    "lm_losses",
    "load_causal_lm",
    "load_tokenizer",
    "make_bandit",
    "per_example_lm_loss",
    "tiny_causal_lm",
    "train_bpe_tokenizer",
]

if TYPE_CHECKING:  # what mypy and IDEs see; at run time `__getattr__` below loads each name
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
    from lead_lightning.base import RoundSelectionCallback, RoundSummary
    from lead_lightning.baselines import (
        FullSelection,
        IterativeReinference,
        RandomSelection,
        StaticIFDSelection,
        StaticLossSelection,
    )
    from lead_lightning.callback import LeadSelectionCallback
    from lead_lightning.config import LeadConfig
    from lead_lightning.data import (
        InstructionCollator,
        InstructionDataModule,
        InstructionDataset,
        InstructionRecord,
        generate_pool,
        get_template,
    )
    from lead_lightning.engine import LeadSelector
    from lead_lightning.idu import IDUState, idu_update
    from lead_lightning.losses import LMLosses, lm_losses, per_example_lm_loss
    from lead_lightning.models import (
        CausalLMModule,
        LoraSettings,
        load_causal_lm,
        load_tokenizer,
        tiny_causal_lm,
        train_bpe_tokenizer,
    )
    from lead_lightning.pool import PoolIndex
    from lead_lightning.sampler import RoundSampler
    from lead_lightning.sketch import ParameterSketch, gradient_coefficient


def __getattr__(name: str) -> object:
    """Import the module that defines ``name`` on first access, and cache the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lead_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
