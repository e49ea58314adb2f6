"""Smoke test of the study runner (benchmarks/study/run.py) at its tiniest size, through the app."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _runner():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("study_run", REPO / "benchmarks" / "study" / "run.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_every_method_is_app_overrides_and_cells_are_paired():
    run = _runner()
    assert all(isinstance(o, str) and "=" in o for ovs in run.METHODS.values() for o in ovs)
    assert {"random", "full", "full_pass", "lead", "lead_uniform", "lead_random_within"} <= set(run.METHODS)
    seeds = {run.run_seed(s, b) for s in run.SEEDS for b in run.BUDGETS}
    assert len(seeds) == len(run.SEEDS) * len(run.BUDGETS)  # decorrelated across budgets
    assert run.dedupe(["a=1", "selection=lead", "a=2"]) == ["selection=lead", "a=2"]


@pytest.mark.slow
def test_tiny_study_runs_through_the_app_and_writes_results(tmp_path):  # noqa: ANN001
    run = _runner()
    argv = ["--tiny", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    out = run.main(argv)

    runs, results = out["runs"], out["results"]
    assert [r["method"] for r in runs] == ["random", "iterative_reinference", "lead"]
    assert len({next(o for o in r["overrides"] if o.startswith("seed=")) for r in runs}) == 1  # paired
    n = 120  # the tiny pool
    cached = tmp_path / "cache" / "runs" / run.key_of(runs[0]["overrides"]) / "result.json"
    assert json.loads(cached.read_text())["overrides"] == runs[0]["overrides"]
    for r in results:
        assert math.isfinite(r["val_metrics"]["val/loss_macro"]) and r["trained"]["example_steps"] > 0
        assert 0.0 <= r["trained"]["share_noisy"] <= 1.0 and r["selection_s"] is not None
        assert r["val_curve"][0]["rounds_trained"] == 0  # the base, evaluated before round 0
    by = {r["method"]: r for r in results}
    assert run._pool_passes(by["lead"], n) == 2 * n
    assert run._pool_passes(by["iterative_reinference"], n) == 2 * n  # rescored before each of 2 rounds
    assert run._pool_passes(by["random"], n) == 0

    table = (tmp_path / "out" / "results.md").read_text()
    for row in ("| base |", "| random |", "| lead |", "| iterative_reinference |"):
        assert row in table
    assert {p.name for p in out["plots"]} == {"macro_loss_curves.png", "diff_vs_random.png"}

    again = run.main(argv)  # every run is cached: nothing is trained again
    assert [r["wall_s"] for r in again["results"]] == [r["wall_s"] for r in results]
