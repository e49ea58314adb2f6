"""Structured-config schemas (dataclasses registered with Hydra's ConfigStore).

``conf/train.yaml`` starts its defaults list with ``train_schema``, so the composed config is typed:
a misspelt key in an experiment file or an override, or a value of the wrong type (``selection.budget=abc``,
``selection.reward=idu``), is an error at composition time instead of being silently ignored.
Groups whose options hold ``_target_`` objects with different arguments (``trainer``, ``logger``,
``peft``) are typed ``Any``; their keys are still checked, by the target's signature. Each
``selection=`` option has its own schema: its method's config dataclass (:mod:`lead_lightning.config`,
the single source of the settings) plus ``_target_``, registered as ``selection/<name>_schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

__all__ = [
    "CONF_DIR",
    "ClusteringConfig",
    "DataConfig",
    "ModelConfig",
    "PoolConfig",
    "ReferenceConfig",
    "ReferenceSource",
    "BanditConfig",
    "CheckpointConfig",
    "selection_nodes",
    "TrainConfig",
    "register_configs",
]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The package's ``conf/`` directory (installed with the code, editable or not)."""


class ClusterInput(str, Enum):
    ifd = "ifd"
    embedding = "embedding"
    group = "group"


def _selection_node(cls: type, wiring: dict[str, str]) -> type:
    """``cls`` as the Hydra schema of a ``selection=`` option: plus ``_target_`` and app wiring defaults.

    ``wiring`` gives interpolations of the top-level config (``seed: ${seed}``, the horizon
    ``max_rounds: ${rounds}``, the ``bandit`` group), so the option's YAML holds only what a run changes.
    """
    extra: list[tuple[str, Any, Any]] = [
        ("_target_", str, field(default=f"{cls.__module__}.{cls.__name__}")),
        ("_convert_", str, field(default="all")),
    ]
    for name, value in wiring.items():
        extra.append((name, Any, field(default=value)))
    return make_dataclass(f"{cls.__name__}Node", extra, bases=(cls,))


def selection_nodes() -> dict[str, type]:
    """Schema name -> schema of every ``selection=`` option (registered by :func:`register_configs`)."""
    from lead_lightning import config as c

    base = {"seed": "${seed}", "max_rounds": "${rounds}"}
    lead = {**base, "bandit": "${bandit.name}", "bandit_kwargs": "${bandit.kwargs}"}
    return {
        "lead_schema": _selection_node(c.LeadConfig, lead),
        "full_schema": _selection_node(c.FullConfig, base),
        "random_schema": _selection_node(c.RandomConfig, base),
        "static_ifd_schema": _selection_node(c.StaticIFDConfig, base),
        "static_loss_schema": _selection_node(c.StaticLossConfig, base),
        "iterative_reinference_schema": _selection_node(c.IterativeReinferenceConfig, base),
    }


@dataclass
class BanditConfig:
    """The bandit LEAD's node reads (``selection.bandit: ${bandit.name}``): a registry name and its options."""

    name: str = "exp3"
    kwargs: dict[str, Any] = field(default_factory=dict)


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


class ReferenceSource(Enum):
    none = "none"
    split = "split"
    jsonl = "jsonl"
    crossfit = "crossfit"


@dataclass
class ReferenceConfig:
    """RHO-LOSS reference losses (the pool index's ``ref_loss`` column), computed in the offline stage.

    See :mod:`lead_lightning.scoring.reference`: a copy of the model is trained on clean records
    disjoint from the pool (``split``, ``jsonl``) or, with ``crossfit``, on the other folds of the pool.
    """

    source: ReferenceSource = ReferenceSource.none  # none | split | jsonl | crossfit
    split: str = "reference"  # source=split: data.records built again with split=<this>
    path: Optional[str] = None  # noqa: UP045 - source=jsonl: clean records disjoint from the pool
    format: str = "chat"  # source=jsonl: the file's format (alpaca | chat | gsm8k)
    folds: int = 2  # source=crossfit: train on the other folds of the pool, score this one
    max_steps: int = 100  # reference training steps
    lr: Optional[float] = None  # noqa: UP045 - None: the model's lr
    batch_size: Optional[int] = None  # noqa: UP045 - None: data.module.batch_size


@dataclass
class PoolConfig:
    """Where the pool index comes from: a ``lead-score`` file, the score cache, or a scoring pass."""

    index: Optional[str] = None  # noqa: UP045 - a lead-score pool index (parquet): train from it, score nothing
    cache: bool = True  # keep the scored index under cache_dir, keyed by its fingerprint, and reuse it
    cache_dir: str = "${oc.env:LEAD_CACHE_DIR,.cache/lead_lightning}"  # relative: to the start directory
    check_provenance: bool = True  # with index: its stored records digest must match the records loaded
    wait_timeout_s: float = 14400.0  # DDP ranks > 0: seconds to wait for the index rank 0 scores
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)  # RHO-LOSS reference losses


@dataclass
class CheckpointConfig:
    """Checkpoints of a run (with ``trainer.enable_checkpointing``): ``<run dir>/checkpoints/``."""

    every_n_steps: int = 0  # also every N optimizer steps (0: only at round ends); last.ckpt = the newest


@dataclass
class PathsConfig:
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class ReportConfig:
    plots: bool = True
    wandb_media: bool = True
    print_summary: bool = True
    val_groups: bool = True  # val/loss/<group> and val/loss_macro when the held-out set has >= 2 groups


@dataclass
class TrainConfig:
    """The top-level config of ``lead-train``."""

    task_name: str = "lead"
    run_name: Optional[str] = None  # noqa: UP045
    tags: list[str] = field(default_factory=list)
    seed: int = 42
    rounds: int = 20
    validate_before: bool = True
    compare_with: Optional[str] = None  # noqa: UP045 - single LEAD runs: also train this baseline (random | full)
    save_model: bool = False  # write the trained model (LoRA merged) + tokenizer to <output_dir>/model
    resume: Optional[str] = None  # noqa: UP045 - auto: the newest checkpoint of hydra.run.dir | a .ckpt file
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    selection: Any = MISSING  # an option of the selection group (its own schema: selection_nodes())
    trainer: Any = MISSING
    logger: Any = None


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent; call before composing ``conf/``)."""
    from hydra.core.config_store import ConfigStore

    from lead_lightning.app.runtime import register_resolvers

    register_resolvers()  # `${lead.run_id:}` in the run and sweep directories
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, node in selection_nodes().items():
        cs.store(group="selection", name=name, node=node)
