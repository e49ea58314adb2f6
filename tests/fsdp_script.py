"""Run by tests/test_sharded_strategies.py and tests/test_fsdp_gpu.py: LEAD under a sharding strategy.

``python fsdp_script.py OUT KIND ACCELERATOR``: KIND ``fsdp1`` (Lightning's ``FSDPStrategy``) or
``fsdp2`` (``ModelParallelStrategy`` with ``fully_shard``), ACCELERATOR ``cpu`` or ``gpu``, 2 ranks.

On GPUs the strategies are used as documented (``FSDPStrategy`` wraps the LightningModule itself,
``auto_wrap_policy`` wraps each ``nn.Linear``). On CPU Lightning refuses ``FSDPStrategy`` (torch's
FSDP1 runs on CPU only with an explicit ``device_id``): a subclass skips that check and the module
wraps its own units with ``device_id=cpu`` in ``configure_model`` (the strategy then leaves them
as they are). ``ModelParallelStrategy`` runs on CPU as is.

After every round each rank writes what the callback computed and what it should have: the sketch
of the whole (gathered) parameters, exact and hashed. Lightning relaunches this script for rank 1,
so it parses its arguments only under ``__main__``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _toy import ToyDataModule, ToyDataset, ToyModule  # noqa: E402

from lead_lightning import LeadSelectionCallback  # noqa: E402
from lead_lightning.distributed import local_parameter_shards  # noqa: E402

HASHED_DIM = 32  # < the 61 parameters: hashed mode; the callback under test runs with it


class CPUFSDPStrategy(FSDPStrategy):
    """`FSDPStrategy` itself; only Lightning's check that `accelerator` is a GPU is skipped (by type)."""


class MLP(ToyModule):
    def __init__(self, kind: str = "none", accelerator: str = "cpu") -> None:
        super().__init__(lr=0.05)
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1))
        self.kind, self.accelerator = kind, accelerator

    def configure_model(self) -> None:
        if self.kind == "fsdp2":
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            fully_shard(self.net[0], mesh=mesh)
            fully_shard(self.net, mesh=mesh)
        elif self.kind == "fsdp1" and self.accelerator == "cpu":
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            kw = {"device_id": torch.device("cpu"), "use_orig_params": True}
            self.net[0] = FSDP(self.net[0], **kw)
            self.net = FSDP(self.net, **kw)


def state_hash(cb: LeadSelectionCallback) -> str:
    h = hashlib.sha256()
    for t in (
        cb.state.idu,
        cb.state.uses,
        cb.bandit.probabilities(),
        cb.selector.sketch_start,
        cb.selector.coef,
    ):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([{k: v for k, v in e.items() if k != "round_time_s"} for e in cb.history]).encode())
    return h.hexdigest()


class Spy(pl.Callback):
    """After the LEAD callback closed a round: its sketch against the sketch of the gathered parameters."""

    def __init__(self, lead: LeadSelectionCallback, exact: LeadSelectionCallback) -> None:
        self.lead, self.exact = lead, exact
        self.rounds: list[dict] = []

    def on_train_epoch_start(self, trainer, pl_module):  # noqa: ANN001
        self.rounds.append({"subset": self.lead.current_subset().tolist(), "trained": []})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        self.rounds[-1]["trained"].extend(batch["ids"].tolist())

    def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(trainer.strategy.model, options=StateDictOptions(full_state_dict=True))
        reference = MLP()
        reference.load_state_dict({k: v.detach().cpu() for k, v in full.items()})
        params = [p for p in reference.parameters() if p.requires_grad]
        self.rounds[-1].update(
            hash=state_hash(self.lead),
            sketch=self.lead.selector.sketch_start.tolist(),  # what close_round stored
            want=self.lead.sketcher(params).tolist(),
            exact=self.exact._sketch(trainer, pl_module).tolist(),
            want_exact=self.exact.sketcher(params).tolist(),
            uses_sum=int(self.lead.state.uses.sum()),
            sharded=local_parameter_shards(pl_module, trainer.strategy.model) is not None,
        )


def launch(out: Path, kind: str, accelerator: str, timeout: float = 300.0) -> list[list[dict]]:
    """Run this script (Lightning starts rank 1); each rank's rounds."""
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_PORT": port}
    cmd = [sys.executable, str(Path(__file__)), str(out), kind, accelerator]
    # a session of its own: on a timeout the rank Lightning started goes down with rank 0
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s:\n{err[-4000:]}") from None
    assert proc.returncode == 0, err[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text())["rounds"] for r in (0, 1)]


def check(ranks: list[list[dict]]) -> None:
    """Per round: ranks agree, the callback's sketches are those of the gathered parameters, updates land once."""
    r0, r1 = ranks
    assert len(r0) == len(r1) == 3
    uses = 0
    for k, (a, b) in enumerate(zip(r0, r1, strict=True)):
        assert a["sharded"] and b["sharded"], "the parameters should be sharded"
        assert a["subset"] == b["subset"] and a["hash"] == b["hash"], f"ranks disagree in round {k}"
        assert a["exact"] == a["want_exact"], f"exact sketch, round {k}"  # bitwise (JSON floats round-trip)
        torch.testing.assert_close(torch.tensor(a["sketch"]), torch.tensor(a["want"]), rtol=1e-13, atol=1e-13)
        assert set(a["trained"] + b["trained"]) == set(a["subset"])
        uses += len(set(a["subset"]))
        assert a["uses_sum"] == uses
    assert any(len(a["subset"]) % 2 for a in r0), "a round with an odd subset (a padding duplicate)"


def main(out: Path, kind: str, accelerator: str) -> None:
    pl.seed_everything(0)
    ds = ToyDataset(n=120)
    settings = {"budget": 0.6, "sample_rate": 13, "seed": 11}
    lead = LeadSelectionCallback(ds.pool(), sketch_dim=HASHED_DIM, **settings)
    exact = LeadSelectionCallback(ds.pool(), sketch_dim=4096, **settings)
    spy = Spy(lead, exact)
    if kind == "fsdp1":
        if accelerator == "cpu":
            strategy: pl.strategies.Strategy = CPUFSDPStrategy()
        else:
            strategy = FSDPStrategy(auto_wrap_policy={nn.Linear})
    else:
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=2,
        strategy=strategy,
        max_epochs=3,
        callbacks=[lead, spy],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
    )
    trainer.fit(MLP(kind, accelerator), ToyDataModule(ds, batch_size=4))
    rank = trainer.global_rank
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "rounds": spy.rounds}))
    trainer.strategy.barrier()
    if torch.distributed.is_initialized():  # a gloo group left to interpreter shutdown can abort
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
