"""What the README promises about installing and data paths holds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lead_lightning.app import CONF_DIR, register_configs

REPO = Path(__file__).resolve().parents[1]


def _gsm8k_root() -> str:
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=gsm8k_cpu"])
    return str(cfg.data.records.root)


def test_data_dir_comes_from_lead_data_dir_with_a_default_that_works_from_the_repo(monkeypatch):  # noqa: ANN001
    monkeypatch.delenv("LEAD_GSM8K_DIR", raising=False)
    monkeypatch.delenv("LEAD_DATA_DIR", raising=False)
    assert _gsm8k_root() == "../shared/data/gsm8k"
    if (REPO.parent / "shared" / "data" / "gsm8k").is_dir():  # this machine's copy: the default finds it
        assert (REPO / _gsm8k_root() / "train.jsonl").is_file()
    monkeypatch.setenv("LEAD_DATA_DIR", "/data")
    assert _gsm8k_root() == "/data/gsm8k"
    monkeypatch.setenv("LEAD_GSM8K_DIR", "/elsewhere/gsm8k")  # the older, more specific variable wins
    assert _gsm8k_root() == "/elsewhere/gsm8k"


@pytest.mark.slow
def test_a_wheel_ships_every_config(tmp_path):  # noqa: ANN001
    """A non-editable install finds `conf/`: the wheel holds train.yaml and every group's yaml files."""
    src = tmp_path / "src"  # a copy: building in the repository would leave build/ there
    shutil.copytree(
        REPO / "lead_lightning", src / "lead_lightning", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=src,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("lead_lightning-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"lead_lightning/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert "lead_lightning/conf/train.yaml" in expected and len(expected) > 20
    assert expected <= names, sorted(expected - names)
