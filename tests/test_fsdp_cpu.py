"""LEAD under Lightning's sharding strategies on 2 CPU processes (gloo).

`FSDPStrategy` (FSDP1; Lightning refuses it on CPU, so `fsdp_script.py` skips that check with a
subclass and wraps the units itself with `device_id=cpu`) and `ModelParallelStrategy` with FSDP2
`fully_shard`. Every round: ranks agree, the callback's parameter sketch equals the sketch of the
gathered parameters (exact mode bitwise, hashed mode to float64 rounding), every update lands once.
The same script runs the strategies as documented on 2 GPUs in `test_fsdp_gpu.py`.
"""

from __future__ import annotations

import pytest
from fsdp_script import check, launch

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


@pytest.mark.parametrize("kind", ["fsdp1", "fsdp2"])
def test_lead_under_sharding_strategy_on_cpu(tmp_path, kind):  # noqa: ANN001
    check(launch(tmp_path, kind, "cpu"))
