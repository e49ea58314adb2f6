"""`lead-train`'s offline stage done once: `pool.index=`, the fingerprint-keyed cache, DDP ranks waiting."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

import lead_lightning.scoring as scoring
from lead_lightning.app import CONF_DIR, register_configs
from lead_lightning.app.offline import build_pool, load_pool_index, wait_for_index
from lead_lightning.pool import PoolIndex

SMALL = [
    "data.records.pool_size=48",
    "data.records.val_size=16",
    "data.module.max_length=64",
    "data.module.eval_batch_size=64",
    "model.tokenizer.vocab_size=300",
    "model.net.hidden_size=32",
    "model.net.num_layers=1",
    "rounds=1",
    "trainer.enable_progress_bar=false",
]


def make_cfg(overrides: list[str], out_dir: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``lead-train`` would, ready for ``train(cfg)``."""
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*SMALL, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg["hydra"]
    return cfg


def pieces(cfg: DictConfig) -> tuple[torch.nn.Module, object, list]:
    """What `train` builds before the pool: the module, the datamodule and the pool records."""
    from lead_lightning.app.builders import build_datamodule

    split = instantiate(cfg.data.records)
    tokenizer = instantiate(cfg.model.tokenizer)(split.train)
    dm, records = build_datamodule(instantiate(cfg.data.module), split, tokenizer)
    net = instantiate(cfg.model.net)(vocab_size=len(tokenizer))
    module = instantiate(cfg.model.module)(model=net, lora=instantiate(cfg.peft) if cfg.peft else None)
    return module, dm, records


@pytest.fixture
def score_calls(monkeypatch):  # noqa: ANN001, ANN201
    """Counts `score_pool` calls (the offline stage's one expensive step)."""
    calls: list[int] = []
    real = scoring.score_pool

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "score_pool", counted)
    return calls


def _build(cfg: DictConfig) -> tuple[PoolIndex, list[str], list]:
    module, dm, records = pieces(cfg)
    pool, names = build_pool(cfg, module, dm, records)
    return pool, names, records


# ----------------------------------------------------------------------------- the cache
def test_the_cache_scores_once_per_fingerprint(tmp_path, score_calls, caplog):  # noqa: ANN001
    caplog.set_level(logging.INFO, logger="lead_lightning.app.offline")
    cache = tmp_path / "cache"
    cfg = make_cfg(["clustering=ifd_kmeans", "clustering.fn.k=3", f"pool.cache_dir={cache}"], tmp_path / "a")
    pool, names, records = _build(cfg)
    assert len(score_calls) == 1 and len(pool) == len(records) == 48
    [cached] = list(cache.glob("*.parquet"))
    prov = pool.provenance
    assert cached.stem == prov["fingerprint"] and prov["records"] == scoring.records_digest(records)
    assert prov["n_records"] == 48 and prov["cluster_input"] == "ifd"
    assert not list(cache.glob("*.tmp"))  # written atomically

    again, again_names, _ = _build(cfg)  # a second run, new objects, the same config: nothing scored
    assert len(score_calls) == 1
    assert "loaded the cached pool index" in caplog.text
    assert torch.equal(again.clusters, pool.clusters) and torch.equal(again.iu0, pool.iu0)
    assert again_names == names and names[0].startswith("c0 (ifd ")

    # what changes the scores or clusters changes the key
    _build(
        make_cfg(["clustering=ifd_kmeans", "clustering.fn.k=2", f"pool.cache_dir={cache}"], tmp_path / "b")
    )
    _build(
        make_cfg(
            [
                "clustering=ifd_kmeans",
                "clustering.fn.k=3",
                "data.module.max_length=80",
                f"pool.cache_dir={cache}",
            ],
            tmp_path / "c",
        )
    )
    assert len(score_calls) == 3 and len(list(cache.glob("*.parquet"))) == 3


def test_cache_off_scores_every_run_and_writes_the_run_dir(tmp_path, score_calls):  # noqa: ANN001
    cfg = make_cfg(["pool.cache=false", f"pool.cache_dir={tmp_path / 'cache'}"], tmp_path / "run")
    pool, names, records = _build(cfg)
    _build(cfg)
    assert len(score_calls) == 2 and not (tmp_path / "cache").exists()
    written = PoolIndex.load(tmp_path / "run" / "pool_index.parquet")
    assert torch.equal(written.clusters, pool.clusters)
    assert names == sorted({r.group for r in records})  # label clusters are named by their group


def test_a_damaged_cache_entry_is_scored_again(tmp_path, score_calls, caplog):  # noqa: ANN001
    cfg = make_cfg([f"pool.cache_dir={tmp_path / 'cache'}"], tmp_path / "run")
    pool, _, _ = _build(cfg)
    [cached] = list((tmp_path / "cache").glob("*.parquet"))
    cached.write_bytes(cached.read_bytes()[:100])
    again, _, _ = _build(cfg)
    assert len(score_calls) == 2 and "cannot be read" in caplog.text
    assert torch.equal(again.iu0, pool.iu0) and PoolIndex.load(cached).provenance == pool.provenance


# ----------------------------------------------------------------------------- pool.index
def _index_for(records: list, path: Path, n: int | None = None, provenance: bool = True) -> Path:
    n = len(records) if n is None else n
    scores = {"ids": torch.arange(n), "iu0": torch.linspace(0.5, 2.0, n), "ifd": torch.linspace(0.2, 0.9, n)}
    prov = {"records": scoring.records_digest(records), "n_records": len(records)} if provenance else None
    return scoring.write_pool_index(path, scores, np.arange(n) % 3, provenance=prov)


def test_pool_index_trains_from_a_file_without_scoring(tmp_path, score_calls):  # noqa: ANN001
    _, _, records = pieces(make_cfg([], tmp_path / "probe"))
    path = _index_for(records, tmp_path / "pool.parquet")
    pool, names, _ = _build(make_cfg([f"pool.index={path}"], tmp_path / "run"))
    assert score_calls == [] and pool.clusters.tolist() == (np.arange(48) % 3).tolist()
    assert names == ["c0 (ifd 0.535)", "c1 (ifd 0.550)", "c2 (ifd 0.565)"]


def test_pool_index_of_other_records_is_an_error(tmp_path, score_calls):  # noqa: ANN001
    _, _, records = pieces(make_cfg([], tmp_path / "probe"))
    other = [*records[1:], records[0]]  # the same size, other order: other ids
    path = _index_for(other, tmp_path / "pool.parquet")
    digest, stored = scoring.records_digest(records), scoring.records_digest(other)
    with pytest.raises(
        ValueError,
        match=rf"scored on other records: its records digest is {stored[:16]}, the"
        rf" 48 records lead-train loaded digest to {digest[:16]}.*HINT: re-run lead-score on"
        r" these records, or set `pool.check_provenance=false`",
    ):
        _build(make_cfg([f"pool.index={path}"], tmp_path / "run"))
    pool, _, _ = _build(make_cfg([f"pool.index={path}", "pool.check_provenance=false"], tmp_path / "run2"))
    assert len(pool) == 48 and score_calls == []


def test_pool_index_length_mismatch_names_both_numbers(tmp_path):  # noqa: ANN001
    _, _, records = pieces(make_cfg([], tmp_path / "probe"))
    for n in (40, 60):
        path = _index_for(records, tmp_path / f"pool{n}.parquet", n=n)
        with pytest.raises(ValueError, match=rf"has {n} rows but lead-train loaded 48 pool records"):
            load_pool_index(str(path), records)
        with pytest.raises(ValueError, match=rf"has {n} rows but lead-train loaded 48"):  # checked regardless
            load_pool_index(str(path), records, check_provenance=False)


def test_pool_index_without_provenance_loads_with_a_warning(tmp_path, caplog):  # noqa: ANN001
    _, _, records = pieces(make_cfg([], tmp_path / "probe"))
    path = _index_for(records, tmp_path / "old.parquet", provenance=False)
    pool = load_pool_index(str(path), records)
    assert len(pool) == 48 and "stores no provenance" in caplog.text


def test_a_lead_score_index_matches_lead_trains_records(tmp_path, score_calls):  # noqa: ANN001
    """The two entry points agree on the records: lead-score's generated pool is lead-train's."""
    from lead_lightning.scoring.cli import run

    out = tmp_path / "scored.parquet"
    run(
        [
            "--pool-size",
            "48",
            "--seed",
            "42",
            "--max-length",
            "64",
            "--clusters",
            "label",
            "--out",
            str(out),
            "--accelerator",
            "cpu",
        ]
    )
    calls = len(score_calls)
    pool, names, records = _build(make_cfg([f"pool.index={out}"], tmp_path / "run"))
    assert len(score_calls) == calls  # lead-train scored nothing
    assert pool.provenance["source"] == "lead-score"
    assert names == sorted({r.group for r in records}) and pool.num_clusters == len(names)


# ----------------------------------------------------------------------------- DDP ranks
def test_a_rank_above_zero_waits_for_rank_zeros_index(tmp_path, monkeypatch, score_calls):  # noqa: ANN001
    cfg = make_cfg([f"pool.cache_dir={tmp_path / 'cache'}", "pool.wait_timeout_s=0"], tmp_path / "run")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        TimeoutError,
        match=r"Rank 1 waited 0 s for the pool index that rank 0 scores .*"
        r"but it does not exist\. HINT: .*lead-score --devices N",
    ):
        _build(cfg)
    assert score_calls == []  # a rank > 0 never scores
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("WORLD_SIZE")
    pool, _, _ = _build(cfg)  # rank 0 scores and writes
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    same, _, _ = _build(cfg)
    assert len(score_calls) == 1 and torch.equal(same.iu0, pool.iu0)


@pytest.mark.parametrize(
    ("env", "rank", "world"),
    [
        ({}, 0, 1),
        ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, 1, 2),  # Lightning's relaunch
        ({"LOCAL_RANK": "0", "NODE_RANK": "1", "WORLD_SIZE": "4"}, 4, 4),  # first process of node 1
        ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}, 3, 4),  # torchrun
        ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, 2, 4),  # srun
    ],
)
def test_launch_rank_reads_the_launchers_environment(env, rank, world, monkeypatch):  # noqa: ANN001
    from lead_lightning.scoring.common import launch_rank, launch_world_size

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert (launch_rank(), launch_world_size()) == (rank, world)


def test_wait_for_index_returns_once_the_file_appears(tmp_path):  # noqa: ANN001
    path = tmp_path / "idx.parquet"
    PoolIndex(clusters=[0, 1], iu0=[1.0, 2.0], provenance={"fingerprint": "old"}).save(path)  # stale
    with pytest.raises(TimeoutError, match="it holds fingerprint old, not new"):
        wait_for_index(path, "new", timeout_s=0)
    writer = threading.Timer(
        0.2, lambda: PoolIndex(clusters=[0, 1], iu0=[3.0, 4.0], provenance={"fingerprint": "new"}).save(path)
    )
    writer.start()
    try:
        pool = wait_for_index(path, "new", timeout_s=120, poll_s=0.05)
    finally:
        writer.join()
    assert pool.iu0.tolist() == [3.0, 4.0]


# ----------------------------------------------------------------------------- whole runs
def test_a_second_train_run_does_not_rescore(tmp_path, score_calls):  # noqa: ANN001
    from lead_lightning.train import train

    def untimed(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in h.items() if "time" not in k} for h in history]

    quiet = ["logger=none", "report.plots=false", "report.print_summary=false", "validate_before=false"]
    cache = f"pool.cache_dir={tmp_path / 'cache'}"
    first = train(make_cfg([*quiet, cache], tmp_path / "one"))
    again = train(make_cfg([*quiet, cache], tmp_path / "two"))
    assert len(score_calls) == 1  # the same config: the cache serves the pool
    assert untimed(again["history"]) == untimed(first["history"]) and again["val_loss"] == first["val_loss"]
    other = train(make_cfg([*quiet, cache, "selection=random"], tmp_path / "three"))
    assert len(score_calls) == 1  # the selection method does not change the pool either
    assert len(first["history"]) == len(other["history"]) == 1
    index = train(
        make_cfg([*quiet, f"pool.index={next((tmp_path / 'cache').glob('*.parquet'))}"], tmp_path / "four")
    )
    assert len(score_calls) == 1 and index["cluster_names"] == first["cluster_names"]
    assert untimed(index["history"]) == untimed(first["history"])


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_scores_the_pool_once(tmp_path):  # noqa: ANN001
    """Lightning relaunches lead-train for rank 1: it loads the index rank 0 scored and cached."""
    cache = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "lead_lightning.train",
        "trainer=ddp",
        *SMALL,
        "logger=none",
        "report.plots=false",
        "validate_before=false",
        f"pool.cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK")}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert text.count("pool: scored 48 examples") == 1, text[-3000:]
    assert text.count("rank 1: loaded the pool index") == 1, text[-3000:]
    assert len(list(cache.glob("*.parquet"))) == 1
