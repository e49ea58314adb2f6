"""Compose ``lead-train``'s config from Python, exactly as the command line does.

Benchmarks, notebooks and tests build a run as ``train(compose(overrides, output_dir))``: the same
``conf/train.yaml``, the same structured schemas (a typo is an error), the same override grammar
(``selection=random``, ``selection.budget=0.1``, ``+key=value``). Only light modules are imported
(Hydra and OmegaConf), so composing checks a config without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from omegaconf import DictConfig, open_dict

from lead_lightning.app.schema import CONF_DIR, register_configs

__all__ = ["compose"]


def compose(overrides: Sequence[str], output_dir: str | PathLike[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``, ready for :func:`lead_lightning.train.train`.

    As under ``lead-train``: the schemas are registered, the config directory is the package's
    ``conf/``, and Hydra's runtime config is set (``hydra.runtime.output_dir`` is ``output_dir``), so
    ``${hydra:...}`` interpolations resolve and the run is named after its overrides. The returned
    config holds no ``hydra`` node; ``paths.output_dir`` is ``output_dir`` (resolved to an absolute
    path). Composing another config replaces the global Hydra runtime config, so compose and run one
    config at a time.

    Args:
        overrides: Hydra overrides, as on the ``lead-train`` command line.
        output_dir: the run's directory (created by the run; it must not hold another run).

    Returns:
        The composed config.

    Raises:
        hydra.errors.ConfigCompositionException: an unknown option, key or a value of the wrong type.

    Example:
        >>> cfg = compose(["selection=random", "rounds=3"], "/tmp/lead-run")
        >>> cfg.selection._target_, cfg.rounds, cfg.paths.output_dir, cfg.run_name is None
        ('lead_lightning.config.RandomConfig', 3, '/tmp/lead-run', True)
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    if isinstance(overrides, str):
        raise TypeError(
            f"`overrides` must be a list of strings, got the string {overrides!r}. HINT: `compose([{overrides!r}], ...)`."
        )
    out = str(Path(output_dir).expanduser().absolute())
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="lead-train"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = out
    HydraConfig.instance().set_config(cfg)  # `${hydra:...}` and the run name (its overrides) read it
    with open_dict(cfg):
        cfg.paths.output_dir = out
        del cfg["hydra"]
    return cfg
