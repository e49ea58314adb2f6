"""`preset=paper` is the published LEAD, pinned by a golden history (regenerate only for a documented fix).

Regenerate (after a deliberate, documented change to the paper's mechanics):
``python tests/test_paper_preset.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lead_lightning import LeadConfig, LeadSelector, PoolIndex
from lead_lightning.idu import RoundRecords

GOLDEN = Path(__file__).with_name("golden") / "paper_history.json"


def paper_history() -> list[dict]:
    """20 paper rounds on a fixed pool (7 clusters, 3 groups, N=2100) with a deterministic loss model."""
    g = torch.Generator().manual_seed(0)
    n = 2100
    clusters = torch.arange(n) % 7
    groups = (torch.arange(n) // 7) % 3
    iu0 = 1.0 + torch.rand(n, generator=g) * 2 + clusters.float() * 0.1
    sel = LeadSelector(PoolIndex(clusters=clusters, groups=groups, iu0=iu0), LeadConfig.paper(budget=0.1))
    learn = 0.5 + 0.4 * torch.rand(n, generator=g)  # per-example loss decay per visit
    theta = torch.zeros(64, dtype=torch.float64)
    for r in range(20):
        sub = sel.current_subset()
        if sub.numel() == 0:
            break
        uses = sel.state.uses[sub].float()
        loss = iu0[sub] * learn[sub] ** uses
        lr = torch.full((sub.numel(),), 2e-5 * 0.995**r, dtype=torch.float64)
        theta = theta + torch.sin(
            torch.arange(64, dtype=torch.float64) * (r + 1) + float(clusters[sub].float().mean())
        )
        sel.close_round(RoundRecords(sub, loss.float(), lr), theta.clone())
    return [{k: v for k, v in h.items() if k != "round_time_s"} for h in sel.history]


def _json(x):  # noqa: ANN001, ANN202 - dict keys to str, as JSON stores them
    return json.loads(json.dumps(x))


def test_paper_history_matches_golden():
    got = _json(paper_history())
    want = json.loads(GOLDEN.read_text())
    assert len(got) == len(want) == 20
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in g:
            assert g[key] == pytest.approx(w[key], rel=1e-9, abs=1e-12), (g["round"], key)


def test_preset_paper_composes_to_the_paper_config():
    from hydra.utils import instantiate
    from test_train import make_cfg

    cfg = make_cfg(["preset=paper"])
    assert cfg.clustering.fn.k == 7 and cfg.clustering.input == "ifd" and cfg.rounds == 20
    assert instantiate(cfg.selection) == LeadConfig.paper(seed=cfg.seed)
    # the preset wins over the embedded default's budget and sample rate
    assert (cfg.selection.budget, cfg.selection.sample_rate) == (0.025, 0.015)


def test_preset_rho_composes_to_the_best_measured_configuration():
    """`preset=rho` is the study's `lead_rho_hedge` (benchmarks/study/run.py) on top of any data."""
    from hydra.utils import instantiate
    from test_train import make_cfg

    cfg = make_cfg(["preset=rho", "rounds=10"])
    sel = instantiate(cfg.selection)
    assert (sel.allocation, sel.utility, sel.reward, sel.reward_norm) == (
        "proportional",
        "reducible",
        "first_visit_gain",
        "round",
    )
    assert sel.bandit == "hedge" and sel.bandit_eta == "horizon" and sel.max_rounds == 10
    assert cfg.clustering.fn.k == 7 and cfg.clustering.input == "ifd"
    # the same settings as the study's row, override by override
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "study_run", Path(__file__).parents[1] / "benchmarks" / "study" / "run.py"
    )
    assert spec is not None and spec.loader is not None
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    row = dict(o.split("=", 1) for o in study.METHODS["lead_rho_hedge"])
    assert row["selection.utility"] == sel.utility and row["selection.allocation"] == sel.allocation
    assert row["bandit"] == sel.bandit and row["selection.bandit_eta"] == sel.bandit_eta
    assert row["selection.reward"] == sel.reward and row["selection.reward_norm"] == sel.reward_norm
    assert (
        LeadConfig.paper().utility == "idu"
        and instantiate(make_cfg(["preset=paper"]).selection).utility == "idu"
    )


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(_json(paper_history()), indent=1))
    print(f"wrote {GOLDEN}")
