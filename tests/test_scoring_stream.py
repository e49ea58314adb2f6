"""`lead-score` reads --records into Arrow and tokenizes per batch (issue 12, part 4).

A 10^4-record JSONL pool: the streaming reader gives bit-identical scores, index and provenance to the
former in-memory reader (`--reader python`), its records digest is `records_digest` of the same
records, a run stopped by SIGTERM resumes from its shards to the same output, and, structurally, no
list of records of the pool's size is ever built on the streaming path (the in-memory reader and
dataset raise if called; every batch of records built from Arrow is checked to be small).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from lead_lightning.data import InstructionRecord, generate_pool, read_records
from lead_lightning.data.arrow import ArrowRecords
from lead_lightning.scoring import records_digest
from lead_lightning.signals import GracefulStop, StoppedBySignal

N_POOL = 10_000
LIMIT = 240  # scored; the reader still opens the whole file
MAX_BATCH = 4096  # the most records built from Arrow at a time (< N_POOL)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with path.open("w") as f:
        for i, r in enumerate(generate_pool(N_POOL, seed=0)):
            row: dict[str, Any] = {"instruction": r.prompt, "output": r.response, "task": r.group}
            if i % 7 == 0:
                row["input"] = f"context {i}"
            f.write(json.dumps(row) + "\n")
    return path


def _args(pool_file: Path, out: Path, *extra: str) -> list[str]:
    base = ["--records", str(pool_file), "--limit", str(LIMIT), "--max-length", "96"]
    base += ["--batch-size", "16", "--accelerator", "cpu", "--out", str(out)]
    return [*base, *extra]


@pytest.fixture(scope="module")
def in_memory(pool_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The former reader: the pool read into InstructionRecord objects, tokenized up front."""
    from lead_lightning.scoring.cli import run

    out = tmp_path_factory.mktemp("memory") / "pool.parquet"
    result = run(_args(pool_file, out, "--reader", "python"))
    return {"scores": result["scores"], "table": pq.read_table(out)}


@pytest.fixture
def streaming_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail on anything that holds the pool as Python records: the in-memory readers and dataset,
    and any batch of records built from Arrow larger than MAX_BATCH."""
    import lead_lightning.data as data
    import lead_lightning.data.records as records_mod
    from lead_lightning.data import dataset as dataset_mod

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the in-memory reader / dataset was used on the streaming path")

    for name in ("read_records", "read_alpaca_jsonl", "read_chat_jsonl", "read_gsm8k", "read_bbh"):
        monkeypatch.setattr(records_mod, name, refuse)
        monkeypatch.setattr(data, name, refuse)
    monkeypatch.setattr(records_mod, "READERS", {k: refuse for k in records_mod.READERS})
    monkeypatch.setattr(dataset_mod.InstructionDataset, "__init__", refuse)
    built = ArrowRecords._records

    def small_batches(table: Any) -> list[InstructionRecord]:
        assert table.num_rows <= MAX_BATCH < N_POOL, table.num_rows
        return built(table)

    monkeypatch.setattr(ArrowRecords, "_records", staticmethod(small_batches))


def _same_output(result: dict[str, Any], out: Path, reference: dict[str, Any]) -> None:
    for key, ref in reference["scores"].items():
        assert torch.equal(result["scores"][key], ref), key  # bit-identical, not close
    table = pq.read_table(out)
    assert table.equals(reference["table"])
    assert table.schema.metadata == reference["table"].schema.metadata  # provenance: digest, fingerprint


def test_streaming_scores_equal_the_in_memory_reader(pool_file, in_memory, streaming_only, tmp_path):  # noqa: ANN001
    from lead_lightning.scoring.cli import run

    out = tmp_path / "pool.parquet"
    result = run(_args(pool_file, out, "--arrow-dir", str(tmp_path / "arrow")))
    _same_output(result, out, in_memory)
    assert len(list((tmp_path / "arrow").glob("records-*.arrow"))) == 1  # the whole file, in Arrow
    provenance = json.loads(pq.read_schema(out).metadata[b"lead_lightning.provenance"])
    assert provenance["n_records"] == LIMIT


def test_records_digest_is_computed_streaming_and_equals_records_digest(pool_file, tmp_path):  # noqa: ANN001
    records = read_records(pool_file, format="alpaca")
    pool = ArrowRecords.from_file(pool_file, "alpaca", cache_dir=tmp_path)
    assert len(pool) == N_POOL and pool.dataset.cache_files  # memory-mapped from its file
    assert records_digest(pool) == pool.records_digest() == records_digest(records)
    assert records_digest(pool[:LIMIT]) == records_digest(records[:LIMIT])
    assert pool[123] == records[123] and pool.take([9, 2]) == [records[9], records[2]]
    assert pool.groups.tolist() == [r.group for r in records]
    # chat records: the conversation is part of the digest, stored as canonical JSON
    chat = tmp_path / "chat.jsonl"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    chat.write_text(
        "\n".join(
            json.dumps({"messages": [*msgs, {"role": "assistant", "content": f"Hello {i}"}], "dataset": "d"})
            for i in range(5)
        )
        + "\n"
    )
    chat_pool = ArrowRecords.from_file(chat, "chat", cache_dir=tmp_path)
    assert list(chat_pool) == read_records(chat, format="chat")
    assert records_digest(chat_pool) == records_digest(read_records(chat, format="chat"))
    # a BBH directory: every task file is part of the key and read in the reader's order
    bbh = tmp_path / "bbh"
    bbh.mkdir()
    for task in ("navigate", "boolean_expressions"):
        rows = [{"input": f"{task} {i}?", "target": "Yes"} for i in range(3)]
        (bbh / f"{task}.json").write_text(json.dumps({"examples": rows}))
    bbh_pool = ArrowRecords.from_file(bbh, "bbh", cache_dir=tmp_path)
    assert list(bbh_pool) == read_records(bbh, format="bbh")
    assert records_digest(bbh_pool) == records_digest(read_records(bbh, format="bbh"))


def test_a_changed_source_gets_a_new_arrow_file_and_errors_name_the_line(tmp_path):  # noqa: ANN001
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"instruction": "Add 1 and 2.", "output": "3"}) + "\n")
    first = ArrowRecords.from_file(path, "alpaca", cache_dir=tmp_path / "a")
    path.write_text(path.read_text() + json.dumps({"instruction": "Add 2 and 2.", "output": ""}) + "\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:2: empty response"):  # the reader's own error
        ArrowRecords.from_file(path, "alpaca", cache_dir=tmp_path / "a")
    assert len(first) == 1 and len(list((tmp_path / "a").glob("*.arrow"))) == 1  # no half-written file
    path.write_text("\n")
    with pytest.raises(ValueError, match="no examples found"):
        ArrowRecords.from_file(path, "alpaca", cache_dir=tmp_path / "a")


class _StopAt(GracefulStop):
    """GracefulStop that sends this process SIGTERM after predict batch ``at`` (written first)."""

    at = 3

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self._seen = getattr(self, "_seen", 0) + 1
        if self._seen == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        super().on_predict_batch_end(trainer, pl_module, *args)


def test_streaming_run_stopped_by_sigterm_resumes_to_the_same_output(
    pool_file,
    in_memory,
    streaming_only,
    tmp_path,
    monkeypatch,  # noqa: ANN001
):
    from lead_lightning.scoring import scorer
    from lead_lightning.scoring.cli import run

    out, shards = tmp_path / "pool.parquet", tmp_path / "shards"
    args = _args(pool_file, out, "--shard-dir", str(shards))
    with monkeypatch.context() as m:
        m.setattr(scorer, "GracefulStop", _StopAt)
        with pytest.raises(StoppedBySignal):
            run(args)
    kept = {p: p.stat().st_mtime_ns for p in shards.glob("rank0_batch*.pt")}
    assert len(kept) == _StopAt.at and not out.exists()
    assert len(list((shards / "arrow").glob("records-*.arrow"))) == 1  # beside the shards: reused

    result = run(args)  # the same command resumes: only what is left is scored
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert len(list(shards.glob("rank0_batch*.pt"))) == LIMIT // 16
    _same_output(result, out, in_memory)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ddp_ranks_stream_the_same_arrow_file_and_match_the_in_memory_reader(pool_file, tmp_path):  # noqa: ANN001
    import subprocess
    import sys

    tables = {}
    for reader in ("arrow", "python"):
        out = tmp_path / f"{reader}.parquet"
        cmd = [sys.executable, "-m", "lead_lightning.scoring.cli", *_args(pool_file, out, "--reader", reader)]
        proc = subprocess.run(
            [*cmd, "--devices", "2"], capture_output=True, text=True, timeout=600, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        tables[reader] = pq.read_table(out)
    assert tables["arrow"].equals(tables["python"])
    assert tables["arrow"].schema.metadata == tables["python"].schema.metadata
    # both ranks use the one Arrow file beside the shards (keyed by the source)
    assert len(list((tmp_path / "arrow.parquet.shards" / "arrow").glob("records-*.arrow"))) == 1


def test_lora_warmup_scores_are_reproducible_and_equal_on_both_readers(pool_file, tmp_path):  # noqa: ANN001
    """The LoRA warm-up (its adapter initialised from --seed) gives the same IFD on both readers."""
    from lead_lightning.scoring.cli import run

    warm = ["--warmup-examples", "24", "--warmup-steps", "2", "--limit", "96"]
    scores = [
        run([*_args(pool_file, tmp_path / f"{name}.parquet", "--reader", reader), *warm])["scores"]
        for name, reader in (("a", "python"), ("b", "python"), ("c", "arrow"))
    ]
    assert "iu0_warm" in scores[0]
    for key, ref in scores[0].items():
        assert all(torch.equal(ref, other[key]) for other in scores[1:]), key
