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


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(_json(paper_history()), indent=1))
    print(f"wrote {GOLDEN}")
