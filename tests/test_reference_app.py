"""`pool.reference`: lead-train's offline stage adds RHO-LOSS reference losses to the pool index."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import lead_lightning.scoring as scoring
from lead_lightning.app import compose
from lead_lightning.app.builders import build_datamodule
from lead_lightning.app.offline import build_pool, load_reference_records, pool_fingerprint_parts
from lead_lightning.pool import PoolIndex
from lead_lightning.scoring import fingerprint

MODEL = ["model.tokenizer.vocab_size=300", "model.net.hidden_size=32", "model.net.num_layers=1"]
TESTBED = [
    *MODEL,
    "data=testbed",
    "data.records.pool_size=120",
    "data.records.eval_per_family=4",
    "data.records.pretrain_size=60",
    "data.records.reference_size=40",
    "data.module.max_length=64",
    "data.module.eval_batch_size=64",
    "trainer.enable_progress_bar=false",
]
GENERATED = [
    *MODEL,
    "data.records.pool_size=40",
    "data.records.val_size=8",
    "data.module.max_length=64",
    "trainer.enable_progress_bar=false",
]


def pieces(cfg: DictConfig) -> tuple[torch.nn.Module, object, list]:
    """What `train` builds before the pool: the module, the datamodule and the pool records."""
    split = instantiate(cfg.data.records)
    tokenizer = instantiate(cfg.model.tokenizer)(split.train)
    dm, records = build_datamodule(instantiate(cfg.data.module), split, tokenizer)
    net = instantiate(cfg.model.net)(vocab_size=len(tokenizer))
    module = instantiate(cfg.model.module)(model=net, lora=instantiate(cfg.peft) if cfg.peft else None)
    return module, dm, records


def parts_of(overrides: list[str], tmp_path: Path) -> dict:
    cfg = compose(overrides, tmp_path / "run")
    return pool_fingerprint_parts(cfg, *pieces(cfg))


@pytest.fixture
def reference_calls(monkeypatch):  # noqa: ANN001, ANN201
    """Counts the reference models trained (`train_reference` calls)."""
    from lead_lightning.scoring import reference

    calls: list[int] = []
    real = reference.train_reference

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(reference, "train_reference", counted)
    return calls


def test_testbed_reference_split_puts_finite_ref_losses_into_the_cached_index(
    tmp_path,  # noqa: ANN001
    reference_calls,  # noqa: ANN001
    caplog,  # noqa: ANN001
):
    cache = tmp_path / "cache"
    overrides = [
        *TESTBED,
        f"pool.cache_dir={cache}",
        "pool.reference.source=split",
        "pool.reference.max_steps=2",
    ]
    cfg = compose(overrides, tmp_path / "run")
    module, dm, records = pieces(cfg)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="lead_lightning.app.offline"):
        pool, _ = build_pool(cfg, module, dm, records)
    assert "pool: reference losses (a reference trained on 40 split records, 2 steps each) in" in caplog.text
    assert reference_calls == [1]
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())  # the model is untouched
    files = list(cache.glob("*.parquet"))
    assert len(files) == 1
    table = pq.read_table(files[0])
    assert "ref_loss" in table.column_names
    ref_loss = torch.tensor(table.column("ref_loss").to_numpy())
    assert len(ref_loss) == len(records) == 120 and bool(torch.isfinite(ref_loss).all())
    assert pool.ref_loss is not None and torch.equal(pool.ref_loss, ref_loss.float())
    reference = pool.provenance["reference"]
    assert reference["source"] == "split" and reference["split"] == "reference"
    assert reference["records"] == scoring.records_digest(
        instantiate(cfg.data.records, split="reference").train
    )

    # the same settings again: the cached index, no second reference model
    cfg = compose(overrides, tmp_path / "run2")
    again, _ = build_pool(cfg, *pieces(cfg))
    assert reference_calls == [1] and torch.equal(again.ref_loss, pool.ref_loss)


def test_without_a_reference_the_fingerprint_parts_are_what_they_were(tmp_path):  # noqa: ANN001
    plain = parts_of(GENERATED, tmp_path)
    assert "reference" not in plain  # cache keys of runs without a reference are unchanged
    crossfit = parts_of([*GENERATED, "pool.reference.source=crossfit"], tmp_path)
    assert {k: v for k, v in crossfit.items() if k != "reference"} == plain
    assert (
        crossfit["reference"]["folds"] == 2 and crossfit["reference"]["batch_size"] == 16
    )  # data.module.batch_size
    fps = {
        fingerprint(**plain),
        fingerprint(**crossfit),
        fingerprint(
            **parts_of([*GENERATED, "pool.reference.source=crossfit", "pool.reference.max_steps=7"], tmp_path)
        ),
        fingerprint(
            **parts_of([*GENERATED, "pool.reference.source=crossfit", "pool.reference.folds=3"], tmp_path)
        ),
        fingerprint(
            **parts_of([*GENERATED, "pool.reference.source=crossfit", "pool.reference.lr=0.5"], tmp_path)
        ),
    }
    assert len(fps) == 5


def test_crossfit_reference_needs_no_extra_data(tmp_path, reference_calls):  # noqa: ANN001
    cfg = compose(
        [
            *GENERATED,
            f"pool.cache_dir={tmp_path / 'cache'}",
            "pool.reference.source=crossfit",
            "pool.reference.folds=3",
            "pool.reference.max_steps=1",
        ],
        tmp_path / "run",
    )
    pool, _ = build_pool(cfg, *pieces(cfg))
    assert reference_calls == [1, 1, 1]
    assert (
        pool.ref_loss is not None
        and pool.ref_loss.shape == (40,)
        and bool(torch.isfinite(pool.ref_loss).all())
    )
    assert pool.provenance["reference"]["folds"] == 3


def test_jsonl_reference_records_and_their_digest(tmp_path, caplog):  # noqa: ANN001
    from lead_lightning.data import generate_family

    path = tmp_path / "clean.jsonl"
    rows = [{"instruction": r.prompt, "output": r.response} for r in generate_family("copy", 6, seed=9)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    overrides = [
        *GENERATED,
        "pool.reference.source=jsonl",
        f"pool.reference.path={path}",
        "pool.reference.format=alpaca",
    ]
    cfg = compose(overrides, tmp_path / "run")
    module, dm, records = pieces(cfg)
    ref_records = load_reference_records(cfg, records)
    assert ref_records is not None and [r.prompt for r in ref_records] == [row["instruction"] for row in rows]
    parts = pool_fingerprint_parts(cfg, module, dm, records)
    assert parts["reference"]["records"] == scoring.records_digest(ref_records)
    assert parts["reference"]["path"] == str(path)

    # pool records among the reference records are warned about
    path.write_text(
        "".join(json.dumps({"instruction": r.prompt, "output": r.response}) + "\n" for r in records[:3])
    )
    with caplog.at_level(logging.WARNING, logger="lead_lightning.app.offline"):
        load_reference_records(cfg, records)
    assert "3 of 3 reference records" in caplog.text and "also pool records" in caplog.text

    cfg = compose([*GENERATED, "pool.reference.source=jsonl"], tmp_path / "run")
    with pytest.raises(ValueError, match="needs `pool.reference.path`"):
        load_reference_records(cfg, records)


def test_split_reference_needs_a_data_source_with_a_split_argument(tmp_path):  # noqa: ANN001
    cfg = compose([*GENERATED, "pool.reference.source=split"], tmp_path / "run")
    with pytest.raises(
        ValueError, match="generated_split takes no `split` argument. HINT: use `data=testbed`"
    ):
        build_pool(cfg, *pieces(cfg))


def test_bad_reference_source_is_a_composition_error(tmp_path):  # noqa: ANN001
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose([*GENERATED, "pool.reference.source=holdout"], tmp_path / "run")


def test_a_pool_index_file_must_carry_ref_loss_when_a_reference_is_asked_for(tmp_path):  # noqa: ANN001
    cfg = compose(GENERATED, tmp_path / "run")
    module, dm, records = pieces(cfg)
    plain, with_ref = tmp_path / "plain.parquet", tmp_path / "ref.parquet"
    PoolIndex(clusters=torch.arange(40) % 2, iu0=torch.ones(40)).save(plain)
    PoolIndex(clusters=torch.arange(40) % 2, iu0=torch.ones(40), ref_loss=torch.full((40,), 0.5)).save(
        with_ref
    )
    ask = ["pool.reference.source=split", "pool.check_provenance=false"]
    cfg = compose([*GENERATED, *ask, f"pool.index={plain}"], tmp_path / "run")
    with pytest.raises(ValueError, match="has no `ref_loss` column"):
        build_pool(cfg, module, dm, records)
    cfg = compose([*GENERATED, *ask, f"pool.index={with_ref}"], tmp_path / "run")
    pool, _ = build_pool(cfg, module, dm, records)
    assert pool.ref_loss is not None and torch.equal(pool.ref_loss, torch.full((40,), 0.5))


def test_lead_train_with_the_reducible_utility_on_the_testbed_reference(tmp_path):  # noqa: ANN001
    from lead_lightning.train import train

    run = [
        *TESTBED,
        "pool.reference.source=split",
        "pool.reference.max_steps=2",
        "selection.utility=reducible",
        "rounds=1",
        "compare_with=null",
        "logger=none",
        "report.plots=false",
        "report.print_summary=false",
    ]
    result = train(compose(run, tmp_path / "run"))
    assert result["method"] == "lead" and len(result["history"]) == 1
