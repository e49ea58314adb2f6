"""`LeadConfig` and the baselines' configs: one source of settings, pinned against schema and YAML."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lead_lightning import LeadConfig, LeadSelectionCallback, LeadSelector, PoolIndex
from lead_lightning.app import CONF_DIR
from lead_lightning.app.schema import selection_nodes
from lead_lightning.config import (
    FullConfig,
    IterativeReinferenceConfig,
    RandomConfig,
    StaticIFDConfig,
    StaticLossConfig,
)

CLASSES = {
    "lead_schema": LeadConfig,
    "full_schema": FullConfig,
    "random_schema": RandomConfig,
    "static_ifd_schema": StaticIFDConfig,
    "static_loss_schema": StaticLossConfig,
    "iterative_reinference_schema": IterativeReinferenceConfig,
}
WIRED = {"seed", "max_rounds", "bandit", "bandit_kwargs"}  # filled from the top-level config


def test_every_field_is_documented_and_defaults_validate():
    for cls in CLASSES.values():
        cls()  # the defaults are valid
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_schema_mirrors_the_dataclass(name):  # noqa: ANN001
    """The Hydra schema of each option is its dataclass: same fields, same defaults (wiring aside)."""
    cls, node = CLASSES[name], OmegaConf.structured(selection_nodes()[name])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(node) == set(fields) | {"_target_", "_convert_"}
    assert node._target_ == f"lead_lightning.config.{cls.__name__}"
    defaults = cls()
    for key in set(fields) - WIRED:
        assert node[key] == getattr(defaults, key), key
    for key in WIRED & set(fields):
        assert OmegaConf.to_container(node, resolve=False)[key].startswith("${"), key


def _yaml_keys(option: str) -> dict:
    data = yaml.safe_load((CONF_DIR / "selection" / f"{option}.yaml").read_text())
    data.pop("defaults", None)
    return data


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "selection").glob("*.yaml")))
def test_yaml_holds_only_fields_and_instantiates_to_the_dataclass(option):  # noqa: ANN001
    from hydra.utils import instantiate
    from test_train import make_cfg

    cfg = make_cfg([f"selection={option}"])
    built = instantiate(cfg.selection)
    cls = type(built)
    assert cls in CLASSES.values()
    fields = {f.name for f in dataclasses.fields(cls)}
    keys = _yaml_keys(option)
    assert set(keys) <= fields, f"{option}.yaml sets keys that are not {cls.__name__} fields"
    expected = {k: v for k, v in keys.items()}
    wiring = {"seed": cfg.seed, "max_rounds": cfg.rounds}
    if cls is LeadConfig:
        wiring |= {"bandit": cfg.bandit.name, "bandit_kwargs": dict(cfg.bandit.kwargs)}
        if option == "random_within":
            expected |= _yaml_keys("lead")
    assert built == cls(**(expected | wiring))


def test_lead_default_is_the_papers_settings():
    c = LeadConfig()
    assert (c.budget, c.sample_rate, c.max_uses, c.history_weight, c.arms_per_round) == (
        0.025,
        0.015,
        4,
        0.1,
        1,
    )
    assert (c.bandit, c.reward, c.within_cluster, c.seed) == ("exp3", "idu_drop", "idu", 42)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0}, "`budget` must be"),
        ({"budget": float("nan")}, "`budget` must be finite"),
        ({"sample_rate": 1.5}, r"`sample_rate` must be in \(0, 1\]"),
        (
            {"bandit": "greedy"},
            r"`bandit` must be one of \['exp3', 'exp3s', 'hedge', 'thompson', 'ucb', 'uniform'\]",
        ),
        ({"bandit_kwargs": {"gama": 0.1}}, r"`bandit_kwargs` \['gama'\] are not options of bandit 'exp3'"),
        ({"max_uses": 256}, r"`max_uses` must be an int in \[1, 255\]"),
        ({"history_weight": -0.1}, "`history_weight`"),
        ({"reward": "accuracy"}, "`reward` must be one of"),
        ({"seed": -1}, "`seed`"),
    ],
)
def test_config_validates_with_the_callbacks_messages(kwargs, match):  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        LeadConfig(**kwargs)


def test_callback_and_selector_take_a_config_plus_overrides():
    pool = PoolIndex(clusters=torch.arange(40) % 4, iu0=torch.rand(40))
    cfg = LeadConfig(budget=0.5, sample_rate=0.25, seed=3)
    a = LeadSelectionCallback(pool, cfg)
    b = LeadSelectionCallback(pool, budget=0.5, sample_rate=0.25, seed=3)
    c = LeadSelectionCallback(pool, cfg, seed=4)
    assert a.config == b.config and c.config == cfg.replace(seed=4) and cfg.seed == 3
    assert torch.equal(a.current_subset(), b.current_subset())
    assert torch.equal(a.current_subset(), LeadSelector(pool, cfg).current_subset())
    with pytest.raises(TypeError, match="Unknown setting"):
        LeadSelectionCallback(pool, budgt=0.1)
    with pytest.raises(TypeError, match="HINT: pass settings by keyword"):
        LeadSelectionCallback(pool, 0.5)  # type: ignore[arg-type]  # the old positional `budget`
    assert isinstance(cfg.build(pool), LeadSelectionCallback)


def test_config_module_imports_neither_torch_nor_lightning():
    # (LeadConfig checks a bandit *name* against the registry in lead_lightning.bandits, which imports torch)
    code = (
        "import sys; from lead_lightning.config import LeadConfig, RandomConfig; RandomConfig(budget=5);"
        " print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
