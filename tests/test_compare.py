"""`compare_with`: the main command trains a random baseline beside LEAD and says which won."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from test_train import TINY

from lead_lightning.app.compare import format_comparison


@pytest.mark.slow
def test_single_lead_run_prints_lead_beside_random(tmp_path):  # noqa: ANN001
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "lead_lightning.train",
        *TINY,
        "logger=none",
        "report.plots=false",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "LEAD vs random on the same data" in out
    lead = json.loads((run / "history.json").read_text())
    base = json.loads((run / "baseline_random" / "history.json").read_text())
    m_lead = re.search(r"lead\s+final val loss (\d+\.\d+)", out)
    m_rand = re.search(r"random\s+final val loss (\d+\.\d+)", out)
    assert m_lead and m_rand
    assert float(m_lead.group(1)) == pytest.approx(lead["evals"][-1]["val_loss"], abs=1e-4)
    assert float(m_rand.group(1)) == pytest.approx(base["evals"][-1]["val_loss"], abs=1e-4)
    winner = "LEAD" if float(m_lead.group(1)) < float(m_rand.group(1)) else "random"
    assert f"{winner} won by" in out
    assert len(base["history"]) == len(lead["history"])  # the same rounds
    assert all(h["method"] == "random" for h in base["history"])


def test_comparison_verdicts():
    h = [{"n_selected": 4, "n_missed": 1, "unique_seen": 3}]
    text = format_comparison({"val_loss": 1.0, "history": h}, {"val_loss": 1.25, "history": h}, "random")
    assert "LEAD won by 0.2500" in text and "example-steps 3, unique examples 3" in text
    nan = format_comparison(
        {"val_loss": float("nan"), "history": []}, {"val_loss": 1.0, "history": h}, "random"
    )
    assert "no verdict" in nan
