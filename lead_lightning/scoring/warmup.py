"""Optional warm-up before IFD scoring: a few LoRA steps on a random subset of the pool.

IFD is meant to be measured by a model that has seen the instruction format (Cherry LLM's
"pre-experienced" model; LEAD_METHOD section 1, official recipe: 6k examples). ``iu0``, the initial
instructional uncertainty LEAD starts from, must still come from the *base* model. So
:func:`~lead_lightning.scoring.score_pool` with ``warmup=`` scores twice: first the base model
(``iu0``, and embeddings), then it warms the LoRA up and scores again for IFD. Off by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lead_lightning.scoring.common import fit_steps, hf_model

__all__ = ["WARMUP_KEYS", "warmup_lora"]

WARMUP_KEYS = ("n_examples", "max_steps", "seed", "lr", "batch_size")
"""The settings ``score_pool(warmup={...})`` accepts (the arguments of :func:`warmup_lora`)."""


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def warmup_lora(
    module: torch.nn.Module,
    data: Any,
    n_examples: int,
    max_steps: int,
    seed: int = 0,
    *,
    lr: float | None = None,
    batch_size: int | None = None,
    tokenizer: Any = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    state_path: str | PathLike[str] | None = None,
) -> torch.nn.Module:
    """Train the LoRA adapter of ``module`` in place for ``max_steps`` steps on a seeded random subset.

    Args:
        module: a LoRA :class:`~lead_lightning.models.CausalLMModule`, a
            :class:`~lead_lightning.scoring.ScoringModule` or a PEFT model; its adapter weights are
            updated in place (only LoRA weights are trainable, the base weights stay as they are).
        data: an :class:`~lead_lightning.data.InstructionDataModule` (the pool), or a sequence of
            :class:`~lead_lightning.data.InstructionRecord` with ``tokenizer``.
        n_examples: size of the random subset (all of the pool when larger), drawn with ``seed``;
            ids the datamodule excluded are never drawn.
        max_steps: optimizer steps (the subset is repeated as needed).
        seed: seed of the subset, the shuffle and LoRA dropout (the global RNG is left untouched).
        lr: learning rate; default the module's (``1e-4`` when it is not a ``CausalLMModule``).
        batch_size: default the datamodule's training batch size.
        tokenizer: needed only when ``data`` is a list of records.
        trainer_kwargs: ``Trainer`` arguments (accelerator, devices, strategy, precision...).
        state_path: where to keep the warmed adapter: if the file holds a warm-up with the same
            settings it is loaded instead of training again (a resumed scoring run), else it is written
            after training.

    Returns:
        The warmed model (the ``CausalLMModule`` used for training), in eval mode.
    """
    from lead_lightning.data import InstructionDataModule
    from lead_lightning.models import CausalLMModule

    if not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"`n_examples` must be a positive int, got {n_examples!r}.")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
    lm = module if isinstance(module, CausalLMModule) else None
    net = hf_model(module)
    if not hasattr(net, "peft_config"):
        raise ValueError(
            "Warm-up trains a LoRA adapter, but the model has none. HINT: build the model as"
            " `CausalLMModule(model, lora=LoraSettings(...))` (`lead-score` does this with `--lora-r`)."
        )
    if lm is None:
        lm = CausalLMModule(net, lr=lr or 1e-4)

    if isinstance(data, InstructionDataModule):
        dm = data
    elif isinstance(data, Sequence):
        if tokenizer is None:
            raise ValueError("Warm-up on a list of records needs a `tokenizer`.")
        dm = InstructionDataModule(data, tokenizer)
    else:
        raise ValueError(
            f"`data` must be an InstructionDataModule or a list of records, got {type(data).__name__}."
        )
    dm.setup("fit")
    dataset = dm.train_dataset
    assert dataset is not None, "set up above"
    n = len(dataset)
    settings = {
        "n_examples": n_examples,
        "max_steps": max_steps,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
    }

    state_file = Path(state_path) if state_path is not None else None
    if state_file is not None and state_file.is_file():
        saved = torch.load(state_file, weights_only=True)
        if saved["settings"] == settings and saved["n_pool"] == n:
            missing = set(saved["state"]) - {k for k, _ in net.named_parameters()}
            if missing:
                raise RuntimeError(f"{state_file} holds parameters this model lacks: {sorted(missing)[:5]}.")
            net.load_state_dict(saved["state"], strict=False)
            return lm.eval()

    candidates = np.setdiff1d(np.arange(n), np.asarray(dm.excluded_ids, dtype=np.int64))
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(candidates, size=min(n_examples, len(candidates)), replace=False)).tolist()
    old_lr = lm.hparams["lr"]
    if lr is not None:
        lm.hparams["lr"] = lr
    try:
        trainer = fit_steps(
            lm, dm, ids, max_steps=max_steps, seed=seed, batch_size=batch_size, trainer_kwargs=trainer_kwargs
        )
    finally:
        lm.hparams["lr"] = old_lr
    if state_file is not None and trainer.is_global_zero:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_file.with_name(state_file.name + ".tmp")
        torch.save({"settings": settings, "n_pool": n, "state": _trainable_state(net)}, tmp)
        tmp.replace(state_file)
    return lm.eval()
