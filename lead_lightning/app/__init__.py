"""The Hydra application behind ``lead-train``: config schemas, builders, baselines.

``lead_lightning/train.py`` is the entry point; the pieces it instantiates live here so that each
stays small and testable on its own (:mod:`.schema`, :mod:`.data`, :mod:`.builders`, :mod:`.baselines`,
:mod:`.runtime`). :func:`compose` builds the config from Python: ``train(compose(overrides, output_dir))``.
"""

from lead_lightning.app.compose import compose
from lead_lightning.app.schema import CONF_DIR, register_configs

__all__ = ["CONF_DIR", "compose", "register_configs"]
