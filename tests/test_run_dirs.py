"""Run directories of `lead-train`: one per run, never shared; `train.log` holds what the run printed."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lead_lightning.app import CONF_DIR, register_configs
from lead_lightning.app.runtime import (
    RUN_MARKER,
    RunDirGuard,
    check_run_dir,
    claim_run_dir,
    echo,
    is_relaunched_rank,
    register_resolvers,
)

TINY = [
    "data.records.pool_size=240",
    "data.records.val_size=32",
    "data.module.max_length=64",
    "data.module.eval_batch_size=128",
    "model.tokenizer.vocab_size=300",
    "model.net.hidden_size=32",
    "trainer.enable_progress_bar=false",
    "report.plots=false",
    "compare_with=null",  # one training per run: these tests are about directories and logs
]
RANK_ENV = ("LOCAL_RANK", "NODE_RANK", "RANK")


@pytest.fixture
def rank0(monkeypatch):  # noqa: ANN001, ANN201
    for k in RANK_ENV:
        monkeypatch.delenv(k, raising=False)


# ----------------------------------------------------------------------------- names
def test_default_run_and_sweep_dirs_end_with_the_process_run_id():
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    run_dir, sweep_dir = cfg.hydra.run.dir, cfg.hydra.sweep.dir
    run_id = OmegaConf.create({"x": "${lead.run_id:}"}).x
    assert re.fullmatch(r"[0-9a-f]{6}", run_id)
    assert re.fullmatch(rf"outputs/lead/runs/\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_{run_id}", run_dir)
    assert re.fullmatch(rf"multirun/lead/\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_{run_id}", sweep_dir)
    assert cfg.hydra.callbacks.run_dir_guard._target_ == "lead_lightning.app.runtime.RunDirGuard"


def test_run_id_is_stable_in_a_process_and_differs_between_processes():
    register_resolvers()
    register_resolvers()  # idempotent
    here = {OmegaConf.create({"x": "${lead.run_id:}"}).x for _ in range(3)}
    code = (
        "from omegaconf import OmegaConf; from lead_lightning.app.runtime import register_resolvers;"
        " register_resolvers(); print(OmegaConf.create({'x': '${lead.run_id:}'}).x)"
    )
    others = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(here) == 1 and len(others) == 2 and not here & others


# ----------------------------------------------------------------------------- claims
def test_claim_marks_the_directory_and_a_second_claim_fails(tmp_path):  # noqa: ANN001
    d = tmp_path / "run"
    assert claim_run_dir(d, key="hydra.run.dir") == d
    marker = json.loads((d / RUN_MARKER).read_text())
    assert marker["pid"] == os.getpid() and len(marker["run_id"]) == 6
    with pytest.raises(
        FileExistsError, match=r"`hydra.run.dir` \(.*run\) already holds .*\.lead-run\.json.*HINT"
    ):
        claim_run_dir(d, key="hydra.run.dir")
    claim_run_dir(d, key="hydra.run.dir", resuming=True)  # continuing that run is allowed


@pytest.mark.parametrize("trace", ["history.json", "csv/checkpoints/last.ckpt", "multirun.yaml"])
def test_claim_refuses_another_runs_outputs(trace, tmp_path):  # noqa: ANN001
    (tmp_path / trace).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / trace).write_text("x")
    with pytest.raises(FileExistsError, match=re.escape(trace)):
        claim_run_dir(tmp_path, key="hydra.sweep.dir")
    assert not (tmp_path / RUN_MARKER).exists()


def test_claim_accepts_a_directory_with_unrelated_files(tmp_path):  # noqa: ANN001
    (tmp_path / "notes.txt").write_text("mine")
    claim_run_dir(tmp_path, key="hydra.run.dir")
    assert (tmp_path / RUN_MARKER).exists()


def test_check_run_dir_ignores_the_claim_but_not_history_or_checkpoints(tmp_path):  # noqa: ANN001
    claim_run_dir(tmp_path, key="hydra.run.dir")
    check_run_dir(tmp_path)  # the claim of this very run (written by the Hydra callback)
    check_run_dir(tmp_path / "missing")
    (tmp_path / "x" / "epoch=0.ckpt").parent.mkdir()
    (tmp_path / "x" / "epoch=0.ckpt").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"`paths.output_dir` .*x/epoch=0\.ckpt.*HINT"):
        check_run_dir(tmp_path)
    check_run_dir(tmp_path, resuming=True)


@pytest.mark.parametrize(
    ("env", "relaunched"),
    [({}, False), ({"LOCAL_RANK": "0"}, False), ({"LOCAL_RANK": "1"}, True), ({"RANK": "3"}, True)],
)
def test_is_relaunched_rank(env, relaunched, monkeypatch, rank0):  # noqa: ANN001
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_relaunched_rank() is relaunched


def test_guard_stops_the_process_before_hydra_writes(tmp_path, rank0):  # noqa: ANN001
    """Hydra turns a callback's exception into a warning, so the guard exits instead."""
    (tmp_path / "history.json").write_text("{}")
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path)}, "sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit, match="already holds another run's outputs .*history.json.*HINT"):
        RunDirGuard().on_run_start(config=cfg)
    with pytest.raises(SystemExit, match="hydra.sweep.dir"):
        RunDirGuard().on_multirun_start(config=cfg)
    RunDirGuard().on_run_start(config=OmegaConf.merge(cfg, {"resume": "auto"}))  # resuming: let through


def test_guard_lets_relaunched_ddp_ranks_into_rank0s_directory(tmp_path, monkeypatch, rank0):  # noqa: ANN001
    claim_run_dir(tmp_path, key="hydra.run.dir")
    monkeypatch.setenv("LOCAL_RANK", "1")
    RunDirGuard().on_run_start(config=OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path)}}}))


# ----------------------------------------------------------------------------- echo
def test_echo_prints_once_without_a_stdout_handler(capsys, caplog):  # noqa: ANN001
    log = logging.getLogger("lead_lightning.test_echo")
    with caplog.at_level(logging.INFO, logger="lead_lightning.test_echo"):
        echo(log, "table\nrow")
    assert capsys.readouterr().out == "table\nrow\n"
    assert caplog.records[-1].getMessage() == "table\nrow"


def test_echo_leaves_stdout_to_a_handler_that_writes_there(capsys):  # noqa: ANN001
    log = logging.getLogger("lead_lightning.test_echo_handler")
    handler = logging.StreamHandler(sys.stdout)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        echo(log, "table")
    finally:
        log.removeHandler(handler)
    assert capsys.readouterr().out == "table\n"  # once, from the handler


# ----------------------------------------------------------------------------- real runs
def lead_train(*overrides: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    return subprocess.Popen(
        [sys.executable, "-m", "lead_lightning.train", *TINY, "compare_with=null", *overrides],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_concurrent_runs_get_their_own_directories_and_logs(tmp_path):  # noqa: ANN001
    # The same directory pattern without a timestamp: only `${lead.run_id:}` tells the two apart.
    pattern = "hydra.run.dir=outputs/run_${lead.run_id:}"
    procs = {
        1: lead_train("rounds=1", "logger=none", pattern, cwd=tmp_path),
        2: lead_train("rounds=2", "logger=csv", pattern, cwd=tmp_path),
    }
    outs = {r: p.communicate(timeout=600) for r, p in procs.items()}
    for r, p in procs.items():
        assert p.returncode == 0, outs[r][1][-3000:]
    dirs = sorted((tmp_path / "outputs").iterdir())
    assert len(dirs) == 2
    for d in dirs:
        overrides = (d / ".hydra" / "overrides.yaml").read_text()
        rounds = 1 if "rounds=1" in overrides else 2
        proc, (stdout, _) = procs[rounds], outs[rounds]
        assert json.loads((d / RUN_MARKER).read_text())["pid"] == proc.pid
        assert len(json.loads((d / "history.json").read_text())["history"]) == rounds
        assert (d / "csv" / "metrics.csv").exists() == (rounds == 2)  # logger=csv only
        assert f"rounds: {rounds}" in (d / ".hydra" / "config.yaml").read_text()
        # train.log holds what was printed: the per-round table and the directory, with times
        log = (d / "train.log").read_text()
        assert f"outputs: {d.resolve()}" in stdout and f"outputs: {d.resolve()}" in log
        table = stdout[stdout.index("round | clusters chosen") : stdout.index("stop reason:")]
        assert table.count("\n") == rounds + 2 and table in log
        assert re.search(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[lead_lightning\.train\]\[INFO\]", log, re.M)
        assert "LEAD round 0" in log and "`Trainer.fit` stopped" in log  # Lightning's messages too

    # A third run pointed at the first one's directory stops before writing anything there.
    first = dirs[0]
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    third = lead_train("rounds=1", f"hydra.run.dir={first}", cwd=tmp_path)
    stdout, stderr = third.communicate(timeout=300)
    assert third.returncode == 1
    assert "already holds another run's outputs" in stderr and "HINT" in stderr
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_rank1_joins_rank0s_run_directory(tmp_path):  # noqa: ANN001
    """Lightning relaunches rank 1 with `hydra.run.dir=<rank 0's dir>`: the same run, not a collision."""
    proc = lead_train("trainer=ddp", "rounds=1", "logger=csv", "validate_before=false", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "lead" / "runs").iterdir()
    assert (run / "train_ddp_process_1.log").exists()  # rank 1 ran in rank 0's directory
    assert json.loads((run / RUN_MARKER).read_text())["pid"] == proc.pid
    assert len(json.loads((run / "history.json").read_text())["history"]) == 1
    assert "round | clusters chosen" in (run / "train.log").read_text()
    assert stdout.count("round | clusters chosen") == 1  # the summary is rank 0's alone
