"""Structured-config schemas (dataclasses registered with Hydra's ConfigStore).

``conf/train.yaml`` starts its defaults list with ``train_schema``, so the composed config is typed:
a misspelt key in an experiment file or an override, or a value of the wrong type (``selection.budget=abc``,
``selection.reward=idu``), is an error at composition time instead of being silently ignored.
Groups whose options hold ``_target_`` objects with different arguments (``trainer``, ``logger``,
``bandit``, ``peft``) are typed ``Any``; their keys are still checked, by the target's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import MISSING

__all__ = [
    "CONF_DIR",
    "ClusteringConfig",
    "DataConfig",
    "ModelConfig",
    "PoolConfig",
    "SelectionConfig",
    "SelectionMethod",
    "TrainConfig",
    "register_configs",
]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The package's ``conf/`` directory (installed with the code, editable or not)."""


class SelectionMethod(str, Enum):
    """``lead``: the LEAD callback; the rest are baselines trained for the same rounds and steps."""

    lead = "lead"
    full = "full"
    random = "random"
    static_ifd = "static_ifd"


class Reward(str, Enum):
    idu_drop = "idu_drop"
    loss_drop = "loss_drop"
    val_loss_drop = "val_loss_drop"


class WithinCluster(str, Enum):
    idu = "idu"
    random = "random"


class ClusterHistory(str, Enum):
    last = "last"
    first = "first"


class ClusterInput(str, Enum):
    ifd = "ifd"
    embedding = "embedding"
    group = "group"


@dataclass
class SelectionConfig:
    """Arguments of :class:`~lead_lightning.LeadSelectionCallback` plus the baseline switch."""

    method: SelectionMethod = SelectionMethod.lead
    budget: Union[int, float] = 0.025  # noqa: UP007 - OmegaConf needs typing.Union
    sample_rate: Union[int, float] = 0.015  # noqa: UP007
    max_uses: int = 4
    history_weight: float = 0.1
    arms_per_round: int = 1
    reward: Reward = Reward.idu_drop
    within_cluster: WithinCluster = WithinCluster.idu
    stop_on_budget: bool = False
    cluster_history: ClusterHistory = ClusterHistory.last
    sketch_dim: int = 4096
    shuffle: bool = True


@dataclass
class ModelConfig:
    """Tokenizer factory ``(records) -> tokenizer``, net factory ``(vocab_size) -> HF model``, module partial."""

    tokenizer: Any = MISSING
    net: Any = MISSING
    module: Any = MISSING
    path: Optional[str] = MISSING  # noqa: UP045 - local checkpoint directory (hf_local); tiny_llama: null


@dataclass
class DataConfig:
    """``records`` builds a :class:`~lead_lightning.app.data.Split`; ``module`` the datamodule partial."""

    records: Any = MISSING
    module: Any = MISSING


@dataclass
class ClusteringConfig:
    """``fn(column) -> labels`` applied to the score column ``input``; ``stratify`` by record group."""

    fn: Any = MISSING
    input: ClusterInput = ClusterInput.ifd
    stratify: bool = True


@dataclass
class PoolConfig:
    """Where the pool index comes from: a ``lead-score`` file, the score cache, or a scoring pass."""

    index: Optional[str] = None  # noqa: UP045 - a lead-score pool index (parquet): train from it, score nothing
    cache: bool = True  # keep the scored index under cache_dir, keyed by its fingerprint, and reuse it
    cache_dir: str = "${oc.env:LEAD_CACHE_DIR,.cache/lead_lightning}"  # relative: to the start directory
    check_provenance: bool = True  # with index: its stored records digest must match the records loaded
    wait_timeout_s: float = 14400.0  # DDP ranks > 0: seconds to wait for the index rank 0 scores


@dataclass
class PathsConfig:
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class ReportConfig:
    plots: bool = True
    wandb_media: bool = True
    print_summary: bool = True


@dataclass
class TrainConfig:
    """The top-level config of ``lead-train``."""

    task_name: str = "lead"
    run_name: Optional[str] = None  # noqa: UP045
    tags: list[str] = field(default_factory=list)
    seed: int = 42
    rounds: int = 8
    validate_before: bool = True
    paths: PathsConfig = field(default_factory=PathsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    bandit: Any = MISSING
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    trainer: Any = MISSING
    logger: Any = None


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent; call before composing ``conf/``)."""
    from hydra.core.config_store import ConfigStore

    from lead_lightning.app.runtime import register_resolvers

    register_resolvers()  # `${lead.run_id:}` in the run and sweep directories
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
