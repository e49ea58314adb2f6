"""lead_lightning: LEAD iterative data selection for LLM instruction tuning, as Lightning callbacks."""

from lead_lightning.losses import LMLosses, lm_losses, per_example_lm_loss
from lead_lightning.pool import PoolIndex

__all__ = ["LMLosses", "PoolIndex", "lm_losses", "per_example_lm_loss"]
__version__ = "0.1.0"
