"""Smoke test of the end-to-end benchmark (benchmarks/e2e/run.py) at its tiniest size."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _runner():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("e2e_run", REPO / "benchmarks" / "e2e" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.slow
def test_e2e_tiny_study_writes_results_and_table(tmp_path):  # noqa: ANN001
    run = _runner()
    argv = [
        "--tiny",
        "--methods",
        "lead",
        "iterative_reinference",
        "--seeds",
        "0",
        "--budgets",
        "0.1",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
    ]
    out = run.main(argv)

    files = sorted(out["run_dir"].glob("*.json"))
    assert [f.name for f in files] == ["iterative_reinference_b0.1_s0.json", "lead_b0.1_s0.json"]
    for f in files:
        r = json.loads(f.read_text())
        for key in (
            "eval_loss_gsm8k",
            "eval_loss_gen",
            "gsm8k_accuracy",
            "wall_s",
            "example_steps",
            "pool_forward_passes",
            "noisy_share",
            "history",
            "curve",
            "selected_per_cluster",
        ):
            assert key in r, key
        assert set(r["time"]) >= {"offline_scoring_s", "online_rescoring_s", "selection_s", "training_s"}
        assert math.isfinite(r["eval_loss_gen"]) and r["example_steps"] > 0
        assert 0.0 <= r["noisy_share"] <= 1.0
        assert len(r["curve"]) == r["rounds_run"] + 1  # the base model's eval, then one per round
    lead = json.loads((out["run_dir"] / "lead_b0.1_s0.json").read_text())
    it = json.loads((out["run_dir"] / "iterative_reinference_b0.1_s0.json").read_text())
    n = lead["pool_size"]
    assert lead["pool_forward_passes"] == 2 * n  # one offline scoring pass (conditioned + response alone)
    assert it["pool_forward_passes"] == it["rounds_run"] * n  # the whole pool, every round
    assert lead["time"]["offline_scoring_s"] > 0 and it["time"]["online_rescoring_s"] > 0

    table = (tmp_path / "out" / "results.md").read_text()
    assert "| lead |" in table and "| iterative_reinference |" in table and "Headline" in table
    assert {p.name for p in out["plots"]} >= {"eval_loss_vs_example_steps.png", "eval_loss_vs_wall_time.png"}

    # a rerun reuses the cached runs (no training)
    again = run.main(argv)
    assert [r["wall_s"] for r in again["results"]] == [r["wall_s"] for r in out["results"]]
