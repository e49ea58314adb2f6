"""LEAD under Lightning's `FSDPStrategy` (auto-wrapped FSDP1) and `ModelParallelStrategy` (FSDP2) on 2 GPUs.

Skipped without 2 CUDA devices (NCCL). The checks are those of `test_fsdp_cpu.py`: every round
ranks agree, the callback's parameter sketch equals the sketch of the gathered parameters, every
update lands once. Unlike the CPU run, Lightning wraps the LightningModule itself here (the FSDP
root is `trainer.strategy.model`, outside `pl_module`).
"""

from __future__ import annotations

import pytest
import torch
from fsdp_script import check, launch

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
]


@pytest.mark.parametrize("kind", ["fsdp1", "fsdp2"])
def test_lead_under_sharding_strategy_on_gpus(tmp_path, kind):  # noqa: ANN001
    check(launch(tmp_path, kind, "gpu"))
