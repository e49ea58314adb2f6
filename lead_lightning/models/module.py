"""`CausalLMModule`: a Hugging Face causal LM (optionally with PEFT LoRA) as a LightningModule.

``training_step`` computes the token cross-entropy once, from the logits of one forward pass that is
not given the labels (so Hugging Face computes no second loss), and reduces it two ways: the batch
loss (token-weighted mean, as HF computes it) and the per-example response loss that LEAD's IDU
update consumes (see :func:`lead_lightning.losses.lm_losses`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from transformers import PreTrainedModel

from lead_lightning.losses import LMLosses, lm_losses

__all__ = ["SCHEDULERS", "CausalLMModule", "LoraSettings", "lr_multiplier"]

SCHEDULERS = ("constant", "cosine", "paper_step")
Scheduler = Literal["constant", "cosine", "paper_step"]
MODEL_INPUTS = ("input_ids", "attention_mask")


@dataclass
class LoraSettings:
    """LoRA adapter settings (turned into a ``peft.LoraConfig`` for a causal LM).

    Example:
        >>> LoraSettings(r=4, alpha=8).to_peft().r
        4
    """

    r: int = field(default=8, metadata={"help": "Rank of the LoRA update matrices."})
    alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch input."})
    target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names to adapt, e.g. ['q_proj', 'v_proj']; None: PEFT's default for the architecture."
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"`r` must be a positive int, got {self.r!r}.")
        if self.alpha <= 0:
            raise ValueError(f"`alpha` must be > 0, got {self.alpha!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}.")
        if self.target_modules is not None:
            self.target_modules = list(self.target_modules)

    def to_peft(self) -> Any:
        """The equivalent ``peft.LoraConfig`` (task type ``CAUSAL_LM``)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


def lr_multiplier(
    step: int,
    schedule: Scheduler,
    total_steps: int | None = None,
    warmup_steps: int = 0,
    decay: float = 0.995,
    decay_every: int = 8,
) -> float:
    """Factor applied to the base learning rate at optimizer step ``step`` (0-based).

    .. math::
        \\text{paper\\_step}: \\; \\eta_s = \\eta_0 \\cdot 0.995^{\\lfloor s / 8 \\rfloor}
        \\qquad \\text{cosine}: \\; \\eta_s = \\eta_0 \\cdot \\tfrac12 \\big(1 + \\cos(\\pi s / S)\\big)

    A linear warm-up over ``warmup_steps`` multiplies any schedule (its steps are counted from 0).

    Example:
        >>> [round(lr_multiplier(s, "paper_step"), 6) for s in (0, 7, 8, 16)]
        [1.0, 1.0, 0.995, 0.990025]
    """
    factor = 1.0
    if schedule == "paper_step":
        factor = decay ** (step // decay_every)
    elif schedule == "cosine":
        if not total_steps:
            raise ValueError("The cosine schedule needs `total_steps`.")
        factor = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if warmup_steps and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


class CausalLMModule(pl.LightningModule):
    """Train a Hugging Face causal LM, optionally with LoRA; return per-example losses for LEAD.

    Batches are dicts with ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on positions not
    scored); other keys (``ids``, ``ro_*``) are never passed to the model.

    Args:
        model: a causal LM, or a callable returning one (e.g. ``functools.partial(tiny_causal_lm, ...)``).
        lora: LoRA settings (a :class:`LoraSettings` or a dict of its fields); ``None`` trains every weight.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norm weights).
        betas: AdamW betas.
        eps: AdamW epsilon.
        scheduler: ``"constant"``, ``"cosine"`` (to ``total_steps``), or ``"paper_step"``
            (``lr * decay ** (step // decay_every)``, LEAD's schedule), stepped every optimizer step.
        warmup_steps: linear warm-up steps in front of the schedule.
        total_steps: cosine length; default ``trainer.estimated_stepping_batches``.
        decay: ``paper_step`` decay factor.
        decay_every: ``paper_step`` steps per decay.

    Example:
        >>> from lead_lightning.models import tiny_causal_lm
        >>> module = CausalLMModule(tiny_causal_lm(vocab_size=300, hidden_size=32), lora={"r": 4})
        >>> batch = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
        ...          "labels": torch.tensor([[-100, 6, 7]]), "ids": torch.tensor([42])}
        >>> out = module.training_step(batch, 0)
        >>> sorted(out), out["per_example_loss"].shape
        (['loss', 'per_example_loss'], torch.Size([1]))
    """

    def __init__(
        self,
        model: PreTrainedModel | Callable[[], PreTrainedModel],
        lora: LoraSettings | Mapping[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        scheduler: Scheduler = "constant",
        warmup_steps: int = 0,
        total_steps: int | None = None,
        decay: float = 0.995,
        decay_every: int = 8,
    ) -> None:
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"`scheduler` must be one of {SCHEDULERS}, got {scheduler!r}.")
        if lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {lr!r}.")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay!r}.")
        if warmup_steps < 0 or decay_every < 1 or not 0 < decay <= 1:
            raise ValueError(
                f"Need `warmup_steps` >= 0, `decay_every` >= 1 and 0 < `decay` <= 1; got {warmup_steps!r},"
                f" {decay_every!r}, {decay!r}."
            )
        if isinstance(lora, Mapping):
            lora = LoraSettings(**lora)
        elif lora is not None and not isinstance(lora, LoraSettings):
            raise ValueError(
                f"`lora` must be a LoraSettings, a dict of its fields or None, got {type(lora).__name__}."
            )
        self.save_hyperparameters(ignore=["model", "lora"])
        self.hparams["lora"] = asdict(lora) if lora is not None else None  # plain dict: weights_only-safe
        self.lora = lora

        net: torch.nn.Module = model if isinstance(model, torch.nn.Module) else model()
        if lora is not None:
            from peft import get_peft_model

            net = get_peft_model(net, lora.to_peft())  # type: ignore[arg-type]
        # `from_pretrained` returns a model in eval mode and Lightning keeps submodules' modes, so
        # dropout (LoRA's included) would stay off while training: start in training mode.
        net.train()
        self.model: torch.nn.Module = net

    # ------------------------------------------------------------------ steps
    def forward(self, batch: Mapping[str, Tensor]) -> LMLosses:
        """One forward pass (model inputs only, no labels to HF) and both loss reductions."""
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        logits: Tensor = self.model(**inputs, use_cache=False).logits
        return lm_losses(logits, batch["labels"])

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Returns ``{"loss": token-mean batch loss, "per_example_loss": Tensor[B] (detached)}``."""
        out = self(batch)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return {"loss": out.loss, "per_example_loss": out.per_example_loss.detach()}

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Logs ``val/loss``: mean over every scored token of the validation set (all ranks).

        Returns ``{"per_example_loss": Tensor[B], "n_tokens": LongTensor[B]}`` (detached) for
        callbacks that break the loss down, e.g. :class:`~lead_lightning.monitors.GroupValLoss`.
        """
        out = self(batch)
        n_tokens = int(out.n_tokens.sum())
        if n_tokens:
            # weighting each batch's token mean by its token count gives the token mean of the whole set
            self.log("val/loss", out.loss, batch_size=n_tokens, prog_bar=True, sync_dist=True)
        return {"per_example_loss": out.per_example_loss.detach(), "n_tokens": out.n_tokens.detach()}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not params:
            raise ValueError("The model has no trainable parameter.")
        groups = [
            {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": hp["weight_decay"]},
            {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"]
        )
        total = hp["total_steps"]
        if hp["scheduler"] == "cosine" and total is None:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError(
                    "The cosine schedule needs a finite length: set `total_steps` or `max_steps`."
                )
        fn = partial(
            lr_multiplier,
            schedule=hp["scheduler"],
            total_steps=int(total) if total is not None else None,
            warmup_steps=hp["warmup_steps"],
            decay=hp["decay"],
            decay_every=hp["decay_every"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ export
    def save_adapter(self, save_dir: str | PathLike[str]) -> Path:
        """Save the LoRA adapter the PEFT way (``PeftModel.from_pretrained`` loads it onto the base
        model), or the whole model when there is no LoRA (``from_pretrained`` loads it).

        Example:
            >>> import tempfile
            >>> from lead_lightning.models import tiny_causal_lm
            >>> module = CausalLMModule(tiny_causal_lm(vocab_size=300, hidden_size=32), lora={"r": 4})
            >>> sorted(p.name for p in module.save_adapter(tempfile.mkdtemp()).iterdir())
            ['README.md', 'adapter_config.json', 'adapter_model.safetensors']
        """
        path = Path(save_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))  # type: ignore[operator]
        return path

    def save_pretrained_model(self, save_dir: str | PathLike[str], tokenizer: Any = None) -> Path:
        """Save the whole trained model (and ``tokenizer``) with ``save_pretrained``, so that
        ``from_pretrained(save_dir)`` (``lead-train model=hf_local model.path=<save_dir>``) loads it
        as the base of another run.

        With LoRA the adapters are merged into a copy of the base weights (``merge_and_unload`` on a
        deep copy: the module keeps training its adapters; the copy needs the weights' memory once
        more) and the merged full model is saved, not the adapter (for that: :meth:`save_adapter`).

        Example:
            >>> import tempfile
            >>> from lead_lightning.models import load_causal_lm, tiny_causal_lm
            >>> module = CausalLMModule(tiny_causal_lm(vocab_size=300, hidden_size=32), lora={"r": 4})
            >>> path = module.save_pretrained_model(tempfile.mkdtemp())
            >>> type(load_causal_lm(path)).__name__, any("lora" in n for n, _ in module.named_parameters())
            ('LlamaForCausalLM', True)
        """
        path = Path(save_dir)
        path.mkdir(parents=True, exist_ok=True)
        model: Any = self.model
        if self.lora is not None:
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        try:
            model.save_pretrained(str(path))
        except (TypeError, ValueError, NotImplementedError) as e:
            raise type(e)(
                f"{e} HINT: a model transformers cannot save whole (e.g. one loaded from a GGUF file)"
                " can still save its LoRA adapter: `save_adapter`."
            ) from e
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        return path
