"""The README's main job: a real Trainer.fit of a tiny LoRA causal LM with LEAD on the generated pool."""

from __future__ import annotations

import pytest

from lead_lightning.example import run


@pytest.mark.slow
def test_example_runs_lead_rounds_end_to_end(capsys):
    out = run(["--pool-size", "240", "--rounds", "2", "--sample-rate", "0.2", "--budget", "0.5"])
    history = out["history"]
    assert len(history) == 2
    for h in history:
        assert h["n_selected"] > 0 and h["reward_raw"]
        assert sum(h["selected_per_cluster"]) == h["n_selected"]
        assert abs(sum(h["probs"]) - 1) < 1e-9
    assert history[1]["unique_seen"] >= history[0]["unique_seen"] > 0
    printed = capsys.readouterr().out
    assert "round | clusters chosen" in printed and "selected share per family" in printed
