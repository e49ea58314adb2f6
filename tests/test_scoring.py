"""Offline scoring (iu0, IFD, shards, resume), clustering and the pool index file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lead_lightning.data import InstructionDataModule
from lead_lightning.models import CausalLMModule, tiny_causal_lm
from lead_lightning.pool import PoolIndex
from lead_lightning.scoring import (
    ScoringModule,
    build_pool_index,
    cluster_embeddings,
    cluster_ifd,
    cluster_labels,
    load_shards,
    merge_scores,
    score_pool,
    write_pool_index,
)

N = 60
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def records(small_pool):  # noqa: ANN001, ANN201
    return small_pool[:N]


@pytest.fixture(scope="module")
def lm(tokenizer):  # noqa: ANN001, ANN201
    return CausalLMModule(
        tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, seed=0)
    ).eval()


def _dm(records, tokenizer):  # noqa: ANN001, ANN202
    dm = InstructionDataModule(records, tokenizer, max_length=96, batch_size=8, eval_batch_size=8)
    dm.setup("predict")
    return dm


@pytest.fixture(scope="module")
def full_scores(records, tokenizer, lm):  # noqa: ANN001, ANN201
    return score_pool(ScoringModule(lm, embed=True), _dm(records, tokenizer), TRAINER)


def test_iu0_matches_reference(records, tokenizer, lm):  # noqa: ANN001
    dm = _dm(records, tokenizer)
    batch = next(iter(dm.predict_dataloader()))
    out = ScoringModule(lm).score(batch)
    with torch.no_grad():
        ref = lm(batch)
        alone = lm(
            {
                "input_ids": batch["ro_input_ids"],
                "attention_mask": batch["ro_attention_mask"],
                "labels": batch["ro_labels"],
            }
        )
    torch.testing.assert_close(out["iu0"], ref.per_example_loss.float())
    torch.testing.assert_close(out["ce_alone"], alone.per_example_loss.float())
    torch.testing.assert_close(out["ifd"], out["iu0"] / out["ce_alone"])
    assert torch.equal(out["n_response_tokens"], ref.n_tokens)
    # one example, unpadded: equals Hugging Face's own loss
    n = int(batch["attention_mask"][0].sum())
    with torch.no_grad():
        hf = lm.model(input_ids=batch["input_ids"][:1, :n], labels=batch["labels"][:1, :n]).loss
    torch.testing.assert_close(out["iu0"][0], hf.float(), rtol=1e-5, atol=1e-5)


def test_score_pool_every_id_once(full_scores, records):  # noqa: ANN001
    s = full_scores
    assert torch.equal(s["ids"], torch.arange(N))
    assert torch.isfinite(s["iu0"]).all() and (s["iu0"] > 0).all()
    torch.testing.assert_close(s["ifd"], s["iu0"] / s["ce_alone"])
    assert s["ifd_flag"].dtype == torch.bool
    torch.testing.assert_close(s["ifd_flag"], ~torch.isfinite(s["ifd"]) | (s["ifd"] > 1))
    assert s["embedding"].shape == (N, 32) and torch.isfinite(s["embedding"]).all()
    assert (s["n_response_tokens"] > 0).all()


def test_merge_drops_duplicates_and_names_missing():
    part = {
        "ids": torch.tensor([2, 0, 1]),
        "iu0": torch.tensor([3.0, 1.0, 2.0]),
        "ifd_flag": torch.zeros(3, dtype=bool),
    }
    dup = {"ids": torch.tensor([0]), "iu0": torch.tensor([9.0]), "ifd_flag": torch.ones(1, dtype=bool)}
    out = merge_scores([part, dup], 3)
    assert out["iu0"].tolist() == [1.0, 2.0, 3.0] and not out["ifd_flag"].any()
    with pytest.raises(RuntimeError, match="2 of 5 pool examples are missing"):
        merge_scores([part], 5)


def test_resume_scores_only_missing_ids(tmp_path, records, tokenizer, lm, full_scores):  # noqa: ANN001
    shard_dir = tmp_path / "shards"
    first = ScoringModule(lm, embed=True)
    score_pool(first, _dm(records, tokenizer), TRAINER, shard_dir=shard_dir)
    assert first.examples_seen == N
    shards = sorted(shard_dir.glob("rank0_batch*.pt"))
    assert len(shards) == 8  # ceil(60 / 8)
    removed = shards[::2]  # "killed" run: half of the shards never got written
    lost = sum(int(torch.load(p)["ids"].numel()) for p in removed)
    for p in removed:
        p.unlink()
    second = ScoringModule(lm, embed=True)
    resumed = score_pool(second, _dm(records, tokenizer), TRAINER, shard_dir=shard_dir)
    assert second.examples_seen == lost < N
    for k, v in full_scores.items():
        torch.testing.assert_close(resumed[k], v, msg=k)
    # everything present: nothing is recomputed
    third = ScoringModule(lm, embed=True)
    again = score_pool(third, _dm(records, tokenizer), TRAINER, shard_dir=shard_dir)
    assert third.examples_seen == 0
    torch.testing.assert_close(again["iu0"], full_scores["iu0"])


def test_cluster_ifd_deterministic_and_ordered():
    rng = np.random.default_rng(0)
    ifd = np.concatenate([rng.normal(c, 0.01, 20) for c in (0.9, 0.2, 0.5)])
    a, b = cluster_ifd(ifd, k=3, seed=0), cluster_ifd(torch.tensor(ifd), k=3, seed=0)
    assert np.array_equal(a, b)
    assert a[:20].tolist() == [2] * 20 and a[20:40].tolist() == [0] * 20 and a[40:].tolist() == [1] * 20
    means = [ifd[a == c].mean() for c in range(3)]
    assert means == sorted(means)


def test_cluster_ifd_too_few_distinct_values():
    with pytest.raises(ValueError, match="k=7 IFD clusters from 2 distinct"):
        cluster_ifd([0.5, 0.5, 0.7, 0.7, 0.5, 0.7, 0.5, 0.7], k=7)
    with pytest.raises(ValueError, match="non-finite"):
        cluster_ifd([0.5, float("nan"), 0.7], k=2)


def test_cluster_embeddings_deterministic(full_scores):  # noqa: ANN001
    emb = full_scores["embedding"]
    a = cluster_embeddings(emb, k=4, seed=1)
    assert np.array_equal(a, cluster_embeddings(emb, k=4, seed=1))
    sizes = np.bincount(a)
    assert len(sizes) == 4 and list(sizes) == sorted(sizes, reverse=True)
    mb = cluster_embeddings(emb, k=4, seed=1, minibatch_threshold=10)  # MiniBatchKMeans path
    assert np.array_equal(mb, cluster_embeddings(emb, k=4, seed=1, minibatch_threshold=10))
    assert cluster_labels(["b", "a", "c", "a"]).tolist() == [1, 0, 2, 0]


def test_pool_index_round_trip(tmp_path, full_scores, records):  # noqa: ANN001
    clusters = cluster_ifd(full_scores["ifd"], k=3, seed=0)
    groups = [r.group for r in records]
    path = write_pool_index(tmp_path / "pool.parquet", full_scores, clusters, groups)
    pool = PoolIndex.load(path)
    assert len(pool) == N and pool.num_clusters == 3
    assert torch.equal(pool.clusters, torch.from_numpy(clusters))
    torch.testing.assert_close(pool.iu0, full_scores["iu0"])
    torch.testing.assert_close(pool.ifd, full_scores["ifd"])
    assert torch.equal(pool.n_response_tokens, full_scores["n_response_tokens"])
    assert [pool.group_names[g] for g in pool.groups] == groups
    assert build_pool_index(full_scores, clusters).num_groups == 1


class _FakeLM(torch.nn.Module):
    """Uniform logits on long inputs, confident on token 1 for short ones (response-alone pass)."""

    def forward(self, input_ids, attention_mask=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        from types import SimpleNamespace

        b, t = input_ids.shape
        logits = torch.zeros(b, t, 5)
        if t <= 3:
            logits[..., 1] = 10.0
        return SimpleNamespace(logits=logits, hidden_states=None)


def test_degenerate_ifd_is_flagged_not_dropped():
    batch = {
        "ids": torch.tensor([7, 8]),
        "input_ids": torch.tensor([[2, 3, 1, 1], [2, 3, 1, 1]]),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
        "labels": torch.tensor([[-100, -100, 1, 1], [-100, -100, -100, -100]]),
        "ro_input_ids": torch.tensor([[0, 1, 1], [0, 1, 1]]),
        "ro_attention_mask": torch.ones(2, 3, dtype=torch.long),
        "ro_labels": torch.tensor([[-100, 1, 1], [-100, -100, -100]]),
    }
    out = ScoringModule(_FakeLM()).predict_step(batch, 0)
    assert out["ids"].tolist() == [7, 8]
    assert out["ifd"][0] > 1 and torch.isnan(out["ifd"][1])  # ratio > 1; empty response
    assert out["ifd_flag"].tolist() == [True, True]
    assert out["n_response_tokens"].tolist() == [2, 0]


def test_cli_smoke(tmp_path):  # noqa: ANN001
    from lead_lightning.scoring.cli import run

    out = run(
        [
            "--pool-size",
            "40",
            "--out",
            str(tmp_path / "p.parquet"),
            "--k",
            "3",
            "--max-length",
            "96",
            "--accelerator",
            "cpu",
            "--shard-dir",
            str(tmp_path / "shards"),
        ]
    )
    pool = PoolIndex.load(out["path"])
    assert len(pool) == 40 and pool.num_clusters == 3
    warm = run(
        [
            "--pool-size",
            "40",
            "--out",
            str(tmp_path / "w.parquet"),
            "--k",
            "3",
            "--max-length",
            "96",
            "--accelerator",
            "cpu",
            "--warmup-examples",
            "8",
            "--warmup-steps",
            "2",
            "--warmup-lr",
            "1e-2",
        ]
    )
    torch.testing.assert_close(warm["scores"]["iu0"], out["scores"]["iu0"])  # iu0: still the base model
    assert not torch.allclose(warm["scores"]["ifd"], out["scores"]["ifd"])


def test_warmup_changes_ifd_not_iu0_and_resumes(tmp_path, records, tokenizer):  # noqa: ANN001
    """iu0 comes from the base model (scored before warm-up); IFD from the warmed LoRA."""

    def lora_lm() -> CausalLMModule:
        net = tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, seed=0)
        return CausalLMModule(net, lora={"r": 4, "alpha": 8, "dropout": 0.0}).eval()

    warmup = {"n_examples": 16, "max_steps": 3, "seed": 0, "lr": 1e-2}
    plain = score_pool(lora_lm(), _dm(records, tokenizer), TRAINER)
    warm = score_pool(lora_lm(), _dm(records, tokenizer), TRAINER, shard_dir=tmp_path, warmup=warmup)
    torch.testing.assert_close(warm["iu0"], plain["iu0"])
    torch.testing.assert_close(warm["ifd_base"], plain["ifd"])
    assert (warm["ifd"] - plain["ifd"]).abs().max() > 1e-3  # the warmed adapter changed IFD
    torch.testing.assert_close(warm["ifd"], warm["iu0_warm"] / warm["ce_alone"])
    with pytest.raises(ValueError, match="has none"):
        score_pool(
            tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2),
            _dm(records, tokenizer),
            TRAINER,
            warmup=warmup,
        )

    # a killed run resumes: the saved adapter is loaded (no second training), only lost shards rescored
    lost_shard = sorted((tmp_path / "warm").glob("rank0_batch*.pt"))[0]
    lost = int(torch.load(lost_shard, weights_only=True)["ids"].numel())
    lost_shard.unlink()
    scorer = ScoringModule(lora_lm())
    resumed = score_pool(scorer, _dm(records, tokenizer), TRAINER, shard_dir=tmp_path, warmup=warmup)
    assert scorer.examples_seen == lost
    for k, v in warm.items():
        torch.testing.assert_close(resumed[k], v, msg=k)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch_score_ddp(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(_free_port())}
    script = Path(__file__).with_name("score_ddp_script.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_scoring_every_id_once_and_resume(tmp_path):  # noqa: ANN001
    """2-process DDP scoring: every id once, equal to a 1-process run; a resumed DDP run fills the gaps."""
    sys.path.insert(0, str(Path(__file__).parent))
    from score_ddp_script import POOL_SIZE, build

    lm, dm = build(POOL_SIZE)
    ref = score_pool(ScoringModule(lm), dm, TRAINER)

    out = tmp_path / "ddp"
    ranks = _launch_score_ddp(out)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert sum(r["examples_seen"] for r in ranks) == POOL_SIZE  # split without padding or repeats
    assert all(r["examples_seen"] > 0 for r in ranks)
    shards = out / "shards"
    parts = {r: sorted(shards.glob(f"rank{r}_batch*.pt")) for r in (0, 1)}
    assert parts[0] and parts[1], "each rank writes its own shards"
    ids = torch.cat([torch.load(p, weights_only=True)["ids"] for r in (0, 1) for p in parts[r]])
    assert sorted(ids.tolist()) == list(range(POOL_SIZE))  # every id exactly once across the shards
    merged = [torch.load(out / f"merged_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for m in merged:  # every rank merged the same full result
        assert torch.equal(m["ids"], torch.arange(POOL_SIZE))
        assert set(m) == set(ref)
        for k, v in ref.items():
            torch.testing.assert_close(m[k], v, rtol=1e-5, atol=1e-5, msg=k)

    # resume under DDP: drop one shard of each rank; the rerun scores exactly those ids, on both ranks
    lost = []
    for r in (0, 1):
        lost += torch.load(parts[r][0], weights_only=True)["ids"].tolist()
        parts[r][0].unlink()
    for r in (0, 1):
        (out / f"merged_rank{r}.pt").unlink()
    again = _launch_score_ddp(out)
    assert sum(r["examples_seen"] for r in again) == len(lost)
    for r in (0, 1):
        resumed = torch.load(out / f"merged_rank{r}.pt", weights_only=True)
        for k, v in ref.items():
            torch.testing.assert_close(resumed[k], v, rtol=1e-5, atol=1e-5, msg=k)
    for r in (0, 1):  # the rerun numbered its shards after the rank's last one: nothing overwritten
        batch_no = sorted(int(p.stem.split("batch")[1]) for p in shards.glob(f"rank{r}_batch*.pt"))
        assert batch_no[: len(parts[r]) - 1] == list(range(1, len(parts[r])))
        assert len(batch_no) >= len(parts[r])


# ----------------------------------------------------------------------------- fingerprinted shards
def _parts(records, tokenizer, lm, **change):  # noqa: ANN001, ANN003, ANN202
    from lead_lightning.scoring import scoring_parts

    return scoring_parts(
        records, lm, tokenizer, **{"template": "tulu", "max_length": 96, "seed": 0, **change}
    )


def test_shards_are_stamped_and_other_inputs_are_an_error(tmp_path, records, tokenizer, lm, full_scores):  # noqa: ANN001
    from lead_lightning.scoring import clear_shards

    shard_dir = tmp_path / "shards"
    parts = _parts(records, tokenizer, lm)
    first = ScoringModule(lm, embed=True)
    score_pool(first, _dm(records, tokenizer), TRAINER, shard_dir=shard_dir, fingerprint_parts=parts)
    assert first.examples_seen == N and (shard_dir / "fingerprint.json").is_file()
    again = ScoringModule(lm, embed=True)  # the same inputs: resumed, nothing rescored
    score_pool(again, _dm(records, tokenizer), TRAINER, shard_dir=shard_dir, fingerprint_parts=parts)
    assert again.examples_seen == 0

    # other records of the same size (the case), another seed: errors naming the cause
    other = list(records[1:]) + [records[0]]
    stale = ScoringModule(lm, embed=True)
    with pytest.raises(
        ValueError, match=r"written for other inputs: records \(stored [0-9a-f]{16}\.\.\., now"
    ):
        score_pool(
            stale,
            _dm(other, tokenizer),
            TRAINER,
            shard_dir=shard_dir,
            fingerprint_parts=_parts(other, tokenizer, lm),
        )
    with pytest.raises(ValueError, match=r"seed \(stored 0, now 1\).*HINT: .*--overwrite"):
        score_pool(
            stale,
            _dm(records, tokenizer),
            TRAINER,
            shard_dir=shard_dir,
            fingerprint_parts=_parts(records, tokenizer, lm, seed=1),
        )
    assert stale.examples_seen == 0  # checked before any work

    (shard_dir / "notes.txt").write_text("mine")  # a file the user keeps there survives --overwrite
    assert clear_shards(shard_dir) == 9  # 8 shards + the stamp
    assert sorted(p.name for p in shard_dir.iterdir()) == ["notes.txt"]
    rescored = ScoringModule(lm, embed=True)
    out = score_pool(
        rescored,
        _dm(other, tokenizer),
        TRAINER,
        shard_dir=shard_dir,
        fingerprint_parts=_parts(other, tokenizer, lm),
    )
    assert rescored.examples_seen == N
    torch.testing.assert_close(out["iu0"][:-1], full_scores["iu0"][1:])  # the other order, scored afresh


def test_unstamped_shards_are_an_error(tmp_path, records, tokenizer, lm):  # noqa: ANN001
    shard_dir = tmp_path / "old"
    score_pool(ScoringModule(lm), _dm(records, tokenizer), TRAINER, shard_dir=shard_dir)  # no fingerprint
    with pytest.raises(ValueError, match=r"holds shards but no fingerprint\.json"):
        score_pool(
            ScoringModule(lm),
            _dm(records, tokenizer),
            TRAINER,
            shard_dir=shard_dir,
            fingerprint_parts=_parts(records, tokenizer, lm),
        )


def test_corrupt_truncated_or_foreign_shards_name_the_file(tmp_path, records, tokenizer, lm):  # noqa: ANN001
    shard_dir = tmp_path / "shards"
    score_pool(ScoringModule(lm), _dm(records, tokenizer), TRAINER, shard_dir=shard_dir)
    shards = sorted(shard_dir.glob("rank0_batch*.pt"))
    data = shards[2].read_bytes()
    shards[2].write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(RuntimeError, match=rf"Shard {shards[2]} cannot be read .*HINT: delete that file"):
        score_pool(ScoringModule(lm), _dm(records, tokenizer), TRAINER, shard_dir=shard_dir)
    shards[2].write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match=rf"Shard {shards[2]} cannot be read"):
        load_shards(shard_dir)
    shards[2].write_bytes(data)
    # shards from a bigger pool: ids this pool does not have (was an IndexError)
    smaller = records[: N - 10]
    with pytest.raises(RuntimeError, match=r"holds pool ids up to 5\d, but the pool has 50 examples"):
        score_pool(ScoringModule(lm), _dm(smaller, tokenizer), TRAINER, shard_dir=shard_dir)


def test_pool_index_stores_provenance_and_old_files_load(tmp_path, full_scores):  # noqa: ANN001
    import pyarrow.parquet as pq

    prov = {"fingerprint": "f" * 64, "records": "a" * 64, "n_records": N}
    path = write_pool_index(tmp_path / "p.parquet", full_scores, np.arange(N) % 3, provenance=prov)
    meta = pq.read_schema(path).metadata
    assert json.loads(meta[b"lead_lightning.provenance"]) == prov  # in the parquet schema metadata
    assert PoolIndex.load(path).provenance == prov
    # an index written before provenance existed: no metadata key, loads with provenance None
    table = pq.read_table(path).replace_schema_metadata({"lead_lightning.pool_schema": "1"})
    pq.write_table(table, tmp_path / "old.parquet")
    old = PoolIndex.load(tmp_path / "old.parquet")
    assert old.provenance is None and len(old) == N
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "bare.parquet")
    assert len(PoolIndex.load(tmp_path / "bare.parquet")) == N
    pq.write_table(
        table.replace_schema_metadata({"lead_lightning.pool_schema": "99"}), tmp_path / "new.parquet"
    )
    with pytest.raises(
        ValueError, match="pool schema version '99'; this lead_lightning reads versions up to 2"
    ):
        PoolIndex.load(tmp_path / "new.parquet")


# ----------------------------------------------------------------------------- lead-score
def _cli_args(tmp_path, *extra):  # noqa: ANN001, ANN002, ANN202
    common = ["--pool-size", "40", "--k", "3", "--max-length", "96", "--accelerator", "cpu"]
    return [*common, *extra]


def test_cli_checks_out_before_any_work(tmp_path, monkeypatch):  # noqa: ANN001
    from lead_lightning.scoring import cli

    def no_work(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("scoring started before `--out` was checked")

    monkeypatch.setattr(cli, "score_pool", no_work)
    monkeypatch.setattr("lead_lightning.data.generate_pool", no_work)
    with pytest.raises(ValueError, match=rf"`--out {tmp_path}` is an existing directory.*HINT: e.g\."):
        cli.run(_cli_args(tmp_path, "--out", str(tmp_path)))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="its directory .*file/sub cannot be created"):
        cli.run(_cli_args(tmp_path, "--out", str(blocker / "sub" / "p.parquet")))
    with pytest.raises(ValueError, match="is not a directory"):
        cli.run(_cli_args(tmp_path, "--out", str(tmp_path / "p.parquet"), "--shard-dir", str(blocker)))
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(SystemExit):
        cli.run(_cli_args(tmp_path, "--out", str(tmp_path / "p.parquet"), "--limit", "0"))


def test_cli_limit_fingerprinted_shards_and_overwrite(tmp_path, capsys):  # noqa: ANN001
    from lead_lightning.data import generate_pool
    from lead_lightning.scoring import records_digest
    from lead_lightning.scoring.cli import run

    out, shards = tmp_path / "p.parquet", tmp_path / "shards"
    first = run(_cli_args(tmp_path, "--limit", "30", "--out", str(out), "--shard-dir", str(shards)))
    pool = PoolIndex.load(out)
    assert len(pool) == 30 and len(first["scores"]["iu0"]) == 30
    prov = pool.provenance
    assert prov["records"] == records_digest(generate_pool(40, seed=0)[:30]) and prov["n_records"] == 30
    assert (
        prov["source"] == "lead-score" and prov["cluster_input"] == "ifd" and len(prov["fingerprint"]) == 64
    )
    # another seed with the same shard directory: an error naming the seed, before any scoring
    with pytest.raises(ValueError, match=r"written for other inputs: .*seed \(stored 0, now 1\)"):
        run(
            _cli_args(tmp_path, "--limit", "30", "--seed", "1", "--out", str(out), "--shard-dir", str(shards))
        )
    again = run(
        _cli_args(
            tmp_path,
            "--limit",
            "30",
            "--seed",
            "1",
            "--out",
            str(out),
            "--shard-dir",
            str(shards),
            "--overwrite",
        )
    )
    assert "--overwrite: deleted" in capsys.readouterr().out
    assert not torch.equal(again["scores"]["iu0"], first["scores"]["iu0"])  # another model (seed 1)
    assert PoolIndex.load(out).provenance["fingerprint"] != prov["fingerprint"]
