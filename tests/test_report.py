"""`lead_lightning.report`: per-round logger keys, PNG plots that render, the summary table, JSON."""

from __future__ import annotations

import csv
import json
import math

import pytest
from _toy import ToyDataModule, ToyDataset, ToyModule, make_trainer
from lightning.pytorch.loggers import CSVLogger

from lead_lightning import LeadSelectionCallback
from lead_lightning.report import (
    LeadReportCallback,
    cluster_table,
    format_summary,
    plot_arm_probabilities,
    write_plots,
)

HISTORY = [
    {
        "round": 0,
        "arms": [1],
        "n_selected": 5,
        "selected_per_cluster": [0, 5, 0],
        "reward_raw": {1: 0.2},
        "reward": {1: 0.5},
        "probs": [1 / 3, 1 / 3, 1 / 3],
        "coef": {1: 0.0},
        "unique_seen": 5,
        "budget_frac": 0.25,
        "idu_mean_pool": 2.0,
        "idu_mean_selected": 1.5,
        "nan_skipped": 0,
        "round_time_s": 0.1,
    },
    {
        "round": 1,
        "arms": [2],
        "n_selected": 4,
        "selected_per_cluster": [0, 0, 4],
        "reward_raw": {2: 0.1},
        "reward": {2: 0.0},
        "probs": [0.3, 0.4, 0.3],
        "coef": {2: 0.01},
        "unique_seen": 9,
        "budget_frac": 0.45,
        "idu_mean_pool": 1.9,
        "idu_mean_selected": 1.2,
        "nan_skipped": 1,
        "round_time_s": 0.1,
    },
]
EVALS = [
    {"rounds_trained": 0, "step": 0, "val_loss": 3.0},
    {"rounds_trained": 1, "step": 1, "val_loss": 2.5},
    {"rounds_trained": 2, "step": 2, "val_loss": 2.2},
]


def test_write_plots_render(tmp_path):  # noqa: ANN001
    from matplotlib.image import imread

    paths = write_plots(HISTORY, EVALS, tmp_path, names=["a", "b", "c"], budget=20)
    assert sorted(paths) == ["arm_probabilities", "budget", "eval_loss", "selection_timeline"]
    for path in paths.values():
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.std() > 0  # something was drawn


def test_plots_handle_baselines_and_no_validation(tmp_path):  # noqa: ANN001
    baseline = [{**h, "arms": [], "probs": [], "reward_raw": {}, "reward": {}} for h in HISTORY]
    paths = write_plots(baseline, [], tmp_path)
    assert all(p.stat().st_size > 0 for p in paths.values())
    fig = plot_arm_probabilities(baseline)
    assert "baseline" in fig.axes[0].texts[0].get_text()


def test_format_summary_lists_every_round_and_the_val_loss():
    table = format_summary(HISTORY, ["a", "b", "c"], EVALS).splitlines()
    assert len(table) == 1 + 1 + 2  # header, start, two rounds
    assert "start" in table[1] and "3.0000" in table[1]
    assert table[2].split("|")[1].strip() == "b" and "2.5000" in table[2] and "25.0%" in table[2]
    assert "+0.100" in table[3] and "2.2000" in table[3]


def _fit(tmp_path, rounds: int = 3):  # noqa: ANN001, ANN202
    ds = ToyDataset(n=120, clusters=4)
    lead = LeadSelectionCallback(ds.pool(), budget=0.5, sample_rate=0.2, bandit="exp3", seed=0)
    report = LeadReportCallback(lead, [f"k{i}" for i in range(4)], out_dir=tmp_path)
    logger = CSVLogger(tmp_path, name="csv", version="")
    trainer = make_trainer(tmp_path, [lead, report], max_epochs=rounds, logger=logger)
    trainer.fit(ToyModule(), ToyDataModule(ds))
    return lead, report


def test_callback_logs_chosen_clusters_and_writes_files(tmp_path):  # noqa: ANN001
    lead, report = _fit(tmp_path)
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    chosen = [r for r in rows if "lead/chosen/cluster_0" in r]
    assert len(chosen) == 3
    for r, h in zip(chosen, lead.history, strict=True):
        assert [r[f"lead/chosen/cluster_{k}"] for k in range(4)] == [float(k in h["arms"]) for k in range(4)]
        assert f"lead/coef/cluster_{h['arms'][0]}" in r
    rounds = [r for r in rows if "lead/selected" in r]
    assert [r["lead/round"] for r in rounds] == [0.0, 1.0, 2.0]
    assert sorted(report.paths) == ["arm_probabilities", "budget", "eval_loss", "selection_timeline"]
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["cluster_names"] == ["k0", "k1", "k2", "k3"] and len(saved["history"]) == 3
    assert saved["budget"] == 60


def test_cluster_table_sums_match_history(tmp_path):  # noqa: ANN001
    lead, _ = _fit(tmp_path, rounds=2)
    columns, rows = cluster_table(lead, ["k0", "k1", "k2", "k3"])
    col = {c: i for i, c in enumerate(columns)}
    assert [r[col["size"]] for r in rows] == [30, 30, 30, 30]
    assert sum(r[col["selected"]] for r in rows) == sum(h["n_selected"] for h in lead.history)
    assert sum(r[col["rounds_chosen"]] for r in rows) == 2
    assert sum(r[col["last_prob"]] for r in rows) == pytest.approx(1.0)
    assert all(math.isfinite(r[col["idu_mean"]]) for r in rows)


def test_report_needs_a_selection_callback():
    with pytest.raises(TypeError, match="must be a `RoundSelectionCallback`"):
        LeadReportCallback(object())  # type: ignore[arg-type]
