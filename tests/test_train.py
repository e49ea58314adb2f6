"""`lead-train`: every config option composes and instantiates; tiny runs write the promised outputs."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from omegaconf.errors import ValidationError

from lead_lightning.app import CONF_DIR, register_configs

REPO = Path(__file__).resolve().parents[1]
GROUPS = [
    "model",
    "peft",
    "data",
    "clustering",
    "bandit",
    "selection",
    "trainer",
    "logger",
    "experiment",
    "preset",
]
TINY = [
    "data.records.pool_size=240",
    "data.records.val_size=32",
    "data.module.max_length=64",
    "data.module.eval_batch_size=128",
    "model.tokenizer.vocab_size=300",
    "model.net.hidden_size=32",
    "rounds=2",
    "trainer.enable_progress_bar=false",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def make_cfg(overrides: list[str], out_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``lead-train`` would; with ``out_dir``, ready for ``train(cfg)``."""
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # `${hydra:...}` and the run name read it
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir) if out_dir is not None else "unused"
        del cfg["hydra"]
    return cfg


@pytest.fixture
def local_checkpoint(tmp_path):  # noqa: ANN001, ANN201
    """A tiny model and tokenizer saved as a local checkpoint directory (for model=hf_local)."""
    from lead_lightning.data import generate_pool
    from lead_lightning.models import tiny_causal_lm, train_bpe_tokenizer

    tok = train_bpe_tokenizer(
        [r.prompt + " " + r.response for r in generate_pool(60)], vocab_size=300, save_dir=tmp_path / "ckpt"
    )
    tiny_causal_lm(len(tok), hidden_size=32).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.fixture
def pool_jsonl(tmp_path):  # noqa: ANN001, ANN201
    path = tmp_path / "pool.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Add {i} and {i + 1}."},
                {"role": "assistant", "content": str(2 * i + 1)},
            ],
            "dataset": f"src{i % 2}",
        }
        for i in range(50)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# ----------------------------------------------------------------------------- composition
def test_every_group_has_the_promised_options():
    assert options("model") == ["hf_local", "smollm2_135m", "tiny_llama"]
    assert options("peft") == ["lora", "none"]
    assert options("data") == ["generated", "gsm8k", "gsm8k_bbh", "jsonl", "testbed"]
    assert options("clustering") == ["embedding_kmeans", "ifd_kmeans", "label"]
    assert options("bandit") == ["exp3", "exp3s", "hedge", "thompson", "ucb", "uniform"]
    assert options("selection") == [
        "full",
        "iterative_reinference",
        "lead",
        "random",
        "random_within",
        "static_ifd",
        "static_loss",
    ]
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert options("logger") == ["csv", "none", "wandb"]
    assert options("experiment") == ["gsm8k_cpu", "paper_llama8b"]


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_each_option_composes_and_instantiates(group, option, local_checkpoint, pool_jsonl, tmp_path):  # noqa: ANN001
    if option == "smollm2_135m":
        pytest.skip(
            "loads a 135M-parameter model: composed, instantiated and trained in tests/test_smollm2.py"
        )
    extra = {
        "hf_local": [f"model.path={local_checkpoint}"],
        "jsonl": [f"data.records.path={pool_jsonl}"],
        "paper_llama8b": [f"model.path={local_checkpoint}", f"data.records.path={pool_jsonl}"],
    }.get(option, [])
    cfg = make_cfg([f"{group}={option}", *extra], tmp_path)

    # every `_target_` builds (partials are called the way train.py calls them)
    target = cfg.data.records._target_
    if target.endswith("gsm8k_bbh_split"):  # reads <data_dir>/gsm8k and <data_dir>/bbh
        absent = not all((Path(cfg.data.records.data_dir) / d).is_dir() for d in ("gsm8k", "bbh"))
    else:
        absent = target.endswith("gsm8k_split") and not Path(cfg.data.records.root).is_dir()
    records = None if absent else instantiate(cfg.data.records)
    if records is not None:
        assert len(records.train) > 0
        tok = instantiate(cfg.model.tokenizer)(records.train[:60])
        net = instantiate(cfg.model.net)(vocab_size=len(tok))
        lora = instantiate(cfg.peft) if cfg.peft else None
        module = instantiate(cfg.model.module)(model=net, lora=lora)
        assert sum(p.requires_grad for p in module.parameters()) > 0
        dm = instantiate(cfg.data.module)(
            train_records=records.train[:20], tokenizer=tok, val_records=records.val
        )
        assert dm.batch_size >= 1
    from lead_lightning.bandits import make_bandit

    bandit = make_bandit(cfg.bandit.name, 3, **cfg.bandit.kwargs)
    assert float(bandit.probabilities().sum()) == pytest.approx(1.0)
    labels = instantiate(cfg.clustering.fn)
    assert callable(labels)
    if cfg.trainer.get("accelerator") != "gpu" or torch.cuda.is_available():
        trainer = instantiate(cfg.trainer, logger=False)
        assert trainer.max_epochs == cfg.rounds
    for lg in (cfg.logger or {}).values():
        assert instantiate(lg).save_dir == str(tmp_path)
    selection = instantiate(cfg.selection)  # a validated selection config (lead_lightning.config)
    assert selection.seed == cfg.seed and selection.max_rounds == cfg.rounds and callable(selection.build)


@pytest.mark.parametrize("selection", options("selection"))
@pytest.mark.parametrize("bandit", options("bandit"))
def test_selection_bandit_combinations_compose(selection, bandit):  # noqa: ANN001
    from lead_lightning.config import LeadConfig

    cfg = make_cfg([f"selection={selection}", f"bandit={bandit}"])
    sel = instantiate(cfg.selection)
    if isinstance(sel, LeadConfig):
        assert sel.within_cluster == ("random" if selection == "random_within" else "idu")
        assert sel.bandit == bandit and sel.bandit_kwargs == dict(cfg.bandit.kwargs)


def test_experiments_hold_their_settings(local_checkpoint, pool_jsonl):  # noqa: ANN001
    paper = make_cfg(
        ["experiment=paper_llama8b", f"model.path={local_checkpoint}", f"data.records.path={pool_jsonl}"]
    )
    assert (paper.peft.r, paper.peft.alpha, paper.peft.dropout) == (64, 16, 0.1)
    assert paper.peft.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert (paper.model.module.lr, paper.model.module.scheduler, paper.model.module.decay) == (
        2e-5,
        "paper_step",
        0.995,
    )
    assert (paper.rounds, paper.seed, paper.data.module.max_length, paper.data.module.batch_size) == (
        20,
        42,
        3080,
        8,
    )
    s = paper.selection
    assert (s.budget, s.sample_rate, s.max_uses, s.history_weight) == (15000, 0.015, 4, 0.1)
    assert isinstance(s.budget, int)  # a count, not a fraction
    assert (paper.clustering.fn.k, paper.bandit.kwargs.gamma, paper.trainer.accelerator) == (7, 0.1, "gpu")
    lead = instantiate(paper.selection)
    assert (lead.budget, lead.bandit, lead.bandit_kwargs, lead.max_rounds) == (
        15000,
        "exp3",
        {"gamma": 0.1},
        20,
    )
    gsm = make_cfg(["experiment=gsm8k_cpu"])
    assert gsm.data.records._target_.endswith("gsm8k_split") and gsm.trainer.accelerator == "cpu"


@pytest.mark.parametrize(
    "override",
    [
        "selection.budgte=0.1",
        "+selection.budgt=0.1",
        "selection.reward=idu",
        "selection.budget=abc",
        "selection.method=best",
        "selection=random selection.max_uses=2",
        "bandit.kwargs.gama=0.2",
        "rounds=many",
        "clustering.input=tfidf",
        "bandit=exp4",
    ],
)
def test_typos_and_bad_values_are_errors(override):  # noqa: ANN001
    """At composition (typed schema) or when the selection config is built, before any data work."""
    from hydra.errors import InstantiationException

    with pytest.raises((ConfigCompositionException, ValidationError, InstantiationException)):
        cfg = make_cfg(override.split())
        instantiate(cfg.selection)


def test_a_typo_in_a_config_file_is_an_error():
    """What an experiment file's misspelt key meets when it is merged into the schema."""
    from omegaconf import OmegaConf

    from lead_lightning.app.schema import TrainConfig, selection_nodes

    with pytest.raises(Exception, match="sampel_rate"):
        OmegaConf.merge(OmegaConf.structured(selection_nodes()["lead_schema"]), {"sampel_rate": 0.1})
    with pytest.raises(Exception, match="rouns"):
        OmegaConf.merge(OmegaConf.structured(TrainConfig), {"rouns": 3})


def test_missing_checkpoint_path_is_reported():
    from lead_lightning.train import train

    cfg = make_cfg(["model=hf_local", "data=jsonl"])
    with pytest.raises(ValueError, match=r"\['data.records.path', 'model.path'\] unset"):
        train(cfg)


def test_gsm8k_missing_directory_says_how_to_fix(tmp_path, monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("LEAD_GSM8K_DIR", str(tmp_path / "nowhere"))
    cfg = make_cfg(["data=gsm8k"])
    assert cfg.data.records.root == str(tmp_path / "nowhere")
    with pytest.raises(Exception, match="LEAD_GSM8K_DIR"):
        instantiate(cfg.data.records)


def test_importing_train_parses_no_argv(monkeypatch):  # noqa: ANN001
    monkeypatch.setattr(sys, "argv", ["lead-train", "--definitely-not-an-option"])
    import importlib

    import lead_lightning.train as t

    importlib.reload(t)
    assert callable(t.main) and callable(t.train)


# ----------------------------------------------------------------------------- runs
def read_metrics(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def round_rows(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [r for r in rows if "lead/selected" in r]


@pytest.mark.slow
def test_train_default_tiny_writes_metrics_plots_and_summary(tmp_path, capsys):  # noqa: ANN001
    from PIL import Image

    from lead_lightning.train import train

    result = train(make_cfg(TINY, tmp_path))
    assert math.isfinite(result["val_loss"]) and len(result["history"]) == 2
    out = capsys.readouterr().out
    assert "clusters chosen" in out and f"outputs: {tmp_path.resolve()}" in out

    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    rounds = round_rows(rows)
    assert [r["lead/round"] for r in rounds] == [0.0, 1.0]
    k = len(result["cluster_names"])
    for r in rounds:
        assert r["lead/selected"] > 0 and 0 < r["lead/budget_frac"] <= 1
        assert r["lead/nan_skipped"] == 0 and r["lead/round_time_s"] > 0
        assert r["lead/idu_mean_pool"] > 0 and r["lead/idu_mean_selected"] > 0
        assert sum(r[f"lead/prob/cluster_{c}"] for c in range(k)) == pytest.approx(1.0, abs=1e-6)
        assert sum(r[f"lead/selected/cluster_{c}"] for c in range(k)) == r["lead/selected"]
        assert any(key.startswith("lead/reward_raw/cluster_") for key in r)
        assert any(key.startswith("lead/reward/cluster_") and 0 <= v <= 1 for key, v in r.items())
    chosen = [r for r in rows if "lead/chosen/cluster_0" in r]
    assert len(chosen) == 2 and all(sum(r[f"lead/chosen/cluster_{c}"] for c in range(k)) == 1 for r in chosen)
    assert rounds[1]["lead/unique_seen"] >= rounds[0]["lead/unique_seen"]
    assert len([r for r in rows if "val/loss" in r]) == 3  # before training + after each round

    for name in ("arm_probabilities", "selection_timeline", "budget", "eval_loss"):
        with Image.open(tmp_path / "plots" / f"{name}.png") as im:
            assert im.size[0] > 200 and im.size[1] > 200
    saved = json.loads((tmp_path / "history.json").read_text())
    assert len(saved["history"]) == 2 and len(saved["evals"]) == 3
    hparams = (tmp_path / "csv" / "hparams.yaml").read_text()
    assert "selection:" in hparams and "pool_size: 240" in hparams


@pytest.mark.slow
@pytest.mark.parametrize(
    "selection", ["full", "random", "static_ifd", "static_loss", "iterative_reinference"]
)
def test_baselines_train_the_same_rounds(selection, tmp_path):  # noqa: ANN001
    from lead_lightning.train import train

    cfg = make_cfg([*TINY, f"selection={selection}", "logger=none", "report.plots=false"], tmp_path)
    result = train(cfg)
    history = result["history"]
    assert len(history) == 2 and math.isfinite(result["val_loss"])
    assert (
        history[0]["n_selected"] == history[1]["n_selected"] == 6
    )  # LEAD's round: ceil(0.15 * 40 per family)
    assert all(h["arms"] == [] and h["nan_skipped"] == 0 for h in history)
    if selection != "full":
        assert history[-1]["unique_seen"] <= math.ceil(cfg.selection.budget * 240)


def read_wandb_offline_run(path: Path) -> dict:
    """Records of an offline ``run-*.wandb`` file (W&B's leveldb-style log of protobuf records).

    wandb >= 0.2x writes no ``wandb-summary.json`` for offline runs, and its Python reader is gone,
    so the log is read here: 7-byte file header, 32 KiB blocks, 7-byte record headers
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, rtype = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or rtype == 0:  # block trailer / padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if rtype in (1, 2) else buf + chunk
        if rtype in (1, 4):
            chunks.append(buf)
    out: dict = {"history": [], "summary": {}, "config": {}, "name": None}
    for raw in chunks:
        rec = pb.Record.FromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            )
        elif kind == "summary":
            out["summary"].update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update}
            )
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "run":
            out["name"] = rec.run.display_name
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["clustering=ifd_kmeans", "clustering.fn.k=3", "bandit=exp3s"],
        ["clustering=embedding_kmeans", "clustering.fn.k=4", "bandit=thompson", "selection=random_within"],
        ["model=hf_local", "peft=lora", "bandit=ucb", "selection.reward=val_loss_drop"],
    ],
    ids=["ifd_kmeans", "embedding_kmeans", "hf_local_lora"],
)
def test_train_runs_other_clusterings_bandits_and_a_local_checkpoint(overrides, local_checkpoint, tmp_path):  # noqa: ANN001
    from lead_lightning.train import train

    tiny = TINY
    if "model=hf_local" in overrides:  # the checkpoint fixes tokenizer and width: no tiny_llama overrides
        tiny = [o for o in TINY if not o.startswith("model.")] + [f"model.path={local_checkpoint}"]
    result = train(make_cfg([*tiny, *overrides, "logger=none", "report.plots=false"], tmp_path / "run"))
    assert len(result["history"]) == 2 and math.isfinite(result["val_loss"])
    k = len(result["cluster_names"])
    assert k == {"ifd_kmeans": 3, "embedding_kmeans": 4}.get(overrides[0].split("=")[1], 6)
    assert all(len(h["probs"]) == k for h in result["history"])


@pytest.mark.slow
def test_wandb_offline_run_holds_round_keys_and_config(tmp_path, monkeypatch):  # noqa: ANN001
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from lead_lightning.train import train

    train(make_cfg([*TINY, "logger=wandb", "bandit=uniform", "selection.sample_rate=0.1"], tmp_path))
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    run = read_wandb_offline_run(files[0])
    assert run["name"].endswith("bandit=uniform,selection.sample_rate=0.1")  # the overrides name the run

    rounds = [h for h in run["history"] if "lead/selected" in h]
    assert [h["lead/round"] for h in rounds] == [0, 1]
    for h in rounds:
        for key in (
            "lead/unique_seen",
            "lead/budget_frac",
            "lead/idu_mean_pool",
            "lead/idu_mean_selected",
            "lead/nan_skipped",
            "lead/round_time_s",
            "trainer/global_step",
        ):
            assert key in h, key
        probs = [v for k, v in h.items() if k.startswith("lead/prob/cluster_")]
        assert len(probs) == 6 and sum(probs) == pytest.approx(1.0)  # uniform bandit over 6 families
        assert 0 < h["lead/budget_frac"] <= 1 and h["lead/nan_skipped"] == 0
    chosen = [h for h in run["history"] if "lead/chosen/cluster_0" in h]
    assert len(chosen) == 2
    hists = [h for h in run["history"] if "lead/idu_hist/pool/_type" in h]
    assert len(hists) == 2 and all(h["lead/idu_hist/selected/_type"] == "histogram" for h in hists)
    summary = run["summary"]
    assert summary["lead/clusters/_type"] == "table-file" and summary["lead/clusters/nrows"] == 6
    assert summary["lead/selection_heatmap/_type"] == "image-file"
    assert {
        "lead/plots/arm_probabilities/_type",
        "lead/plots/budget/_type",
        "lead/plots/eval_loss/_type",
    } <= set(summary)
    assert "val/loss" in summary

    config = run["config"]  # the full resolved config, plus the overrides
    assert config["selection"]["sample_rate"] == 0.1 and config["selection"]["bandit"] == "uniform"
    assert config["selection"]["_target_"] == "lead_lightning.config.LeadConfig"
    assert "bandit=uniform" in config["overrides"] and config["pool_size"] == 240
    assert (tmp_path / "csv" / "metrics.csv").exists()  # the W&B option keeps the CSV too


@pytest.mark.slow
def test_multirun_2x2_gives_each_run_its_own_outputs(tmp_path):  # noqa: ANN001
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "lead_lightning.train",
        "-m",
        "bandit=exp3,uniform",
        "selection.sample_rate=0.05,0.1",
        *TINY,
        "logger=wandb",
        "report.print_summary=false",
        "validate_before=false",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1", "2", "3"]
    seen, names = set(), set()
    for run in runs:
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        seen.add(overrides)
        rows = round_rows(read_metrics(run / "csv" / "metrics.csv"))
        assert len(rows) == 2
        rate = 0.05 if "sample_rate=0.05" in overrides else 0.1
        hist = json.loads((run / "history.json").read_text())["history"]
        assert all(h["n_selected"] <= math.ceil(rate * 40) for h in hist)  # 40 examples per family
        assert (run / "plots" / "arm_probabilities.png").stat().st_size > 0
        wandb_runs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(wandb_runs) == 1  # one W&B run per job, named by its overrides
        name = read_wandb_offline_run(wandb_runs[0])["name"]
        names.add(name)
        assert ("bandit=uniform" in name) == ("bandit=uniform" in overrides)
        assert f"selection.sample_rate={rate}" in name
    assert len(seen) == 4 and len(names) == 4
    assert not (tmp_path / "outputs").exists()  # nothing ran outside the sweep directory

    # the sweep ends with a comparison of its jobs, written and printed
    table = (sweep / "comparison.md").read_text()
    assert "Sweep comparison" in proc.stdout and "| job | overrides | val loss |" in proc.stdout
    with (sweep / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
    losses = [float(r["val_loss"]) for r in rows]
    assert losses == sorted(losses)  # best first
    for r in rows:
        assert r["overrides"] in table
        evals = json.loads((sweep / r["job"] / "history.json").read_text())["evals"]
        assert float(r["val_loss"]) == pytest.approx(evals[-1]["val_loss"])  # the job's final val loss
        assert int(r["rounds"]) == 2 and int(r["example_steps"]) > 0 and float(r["wall_s"]) > 0
    assert (sweep / "eval_curves.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_sweep_runs_each_job_once_with_two_ranks(tmp_path):  # noqa: ANN001
    """Lightning re-launches the command for rank 1; inside `-m` that must be this job, not the sweep."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "lead_lightning.train",
        "-m",
        "trainer=ddp",
        "bandit=exp3,uniform",
        *TINY,
        "validate_before=false",
        "report.print_summary=false",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1"]
    for run in runs:
        assert (run / "train_ddp_process_1.log").exists()  # rank 1 ran inside this job's directory
        hist = json.loads((run / "history.json").read_text())["history"]
        assert len(hist) == 2
    assert (
        proc.stdout.count("Starting with 2 processes") + proc.stderr.count("Starting with 2 processes") == 2
    )
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
