"""``gsm8k_bbh_split`` and ``bbh_sample``: the SmolLM2 confirmation study's data (skipped without a
local copy of GSM8K and BBH under ``$LEAD_DATA_DIR``, default ``../shared/data``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lead_lightning.app.data import bbh_sample, gsm8k_bbh_split

DATA = Path(os.environ.get("LEAD_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
HAVE = (DATA / "gsm8k" / "train.jsonl").is_file() and (DATA / "bbh").is_dir()


def test_bbh_sample_is_round_robin_seeded_and_filtered(tmp_path: Path) -> None:
    for t in ("a", "b", "c"):
        rows = [{"input": f"{t}{i}" + "?" * (50 * (i == 0)), "target": "x"} for i in range(4)]
        (tmp_path / f"{t}.json").write_text(json.dumps({"examples": rows}))
    s = bbh_sample(tmp_path, 3, seed=1)
    assert sorted(r.prompt[0] for r in s) == ["a", "b", "c"] and {r.group for r in s} == {"bbh"}
    assert bbh_sample(tmp_path, 3, seed=1) == s
    short = bbh_sample(tmp_path, 9, seed=1, max_chars=10, group=None)
    assert all(len(r.prompt) < 10 for r in short) and {r.group for r in short} == {"a", "b", "c"}
    with pytest.raises(ValueError, match="10 asked"):
        bbh_sample(tmp_path, 10, max_chars=10)


@pytest.mark.skipif(not HAVE, reason="no local GSM8K + BBH copy")
def test_gsm8k_bbh_split_parts_are_disjoint_and_grouped() -> None:
    pool = gsm8k_bbh_split(40, gsm8k_eval=5, bbh_eval=6, reference_size=7, data_dir=DATA)
    ref = gsm8k_bbh_split(40, gsm8k_eval=5, bbh_eval=6, reference_size=7, data_dir=DATA, split="reference")
    assert len(pool.train) == 40 and len(ref.train) == 7 and ref.val == pool.val
    assert [r.group for r in pool.val or []] == ["gsm8k"] * 5 + ["bbh"] * 6
    assert not {r.prompt for r in pool.train} & {r.prompt for r in ref.train}
    assert not {r.prompt for r in pool.train} & {r.prompt for r in pool.val or []}
    assert not any(pool.flags["noisy"]) and not any(pool.flags["duplicate"])
