"""LEAD under 2-process DDP on CPU: every rank agrees, every update lands once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def test_ddp_ranks_agree_and_updates_land_once(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    script = Path(__file__).with_name("ddp_script.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    r0, r1 = ranks[0]["rounds"], ranks[1]["rounds"]
    assert len(r0) == len(r1) == 5
    uses = 0
    for a, b in zip(r0, r1, strict=False):
        assert a["subset"] == b["subset"]  # all ranks drew the same subset
        assert a["hash"] == b["hash"]  # identical selection state after the exchange, despite skewed losses
        trained = a["trained"] + b["trained"]
        assert set(trained) == set(a["subset"])  # the union of what ranks trained is the drawn subset
        assert not set(a["trained"]) & set(b["trained"]) or len(trained) > len(a["subset"])
        uses += len(set(a["subset"]))
        assert a["uses_sum"] == uses  # padding duplicates counted once
    assert any(len(a["trained"] + b["trained"]) > len(a["subset"]) for a, b in zip(r0, r1, strict=False)), (
        "the test needs a round with an odd subset so the sampler pads"
    )
