"""One fingerprint of what determines a pool's offline scores, and digests of its inputs.

:func:`fingerprint` hashes named parts (``sha256`` of their canonical JSON). The parts are small,
JSON-able values: settings as they are, and big inputs replaced by a digest from the helpers here:

- :func:`records_digest`: prompt, response, group (and the conversation, for chat records) of every
  record, in pool order; the count is part of it.
- :func:`model_digest`: the model's config and its weights. A model of at most ``max_full_params``
  parameters (50M by default: hashing them takes well under a second) is hashed in full. A bigger one
  is identified by its config, its ``name_or_path`` and the names, sizes and modification times
  (whole seconds) of the weight files in that directory, which costs nothing at 8B; weights changed in
  memory after loading are not seen then. A big model without weight files on disk is hashed from a
  strided sample of every tensor (names, shapes, dtypes and up to 4096 values each). A LoRA adapter
  that is still a no-op (every ``lora_B`` zero, as freshly initialised) does not change a score and
  is left out; a trained one is hashed with its PEFT config.
- :func:`tokenizer_digest`: the tokenizer's serialised JSON (a fast tokenizer) or its vocabulary,
  plus its special tokens.
- :func:`template_digest`: the prompt template's name and format strings.

:func:`scoring_parts` gathers them (plus max length, truncation, seed, embeddings on/off, warm-up
settings and :data:`SCORER_VERSION`). The same fingerprint keys ``lead-train``'s score cache,
stamps ``lead-score``'s shard directories, and is stored as the provenance of a pool index file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from enum import Enum
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = [
    "SCORER_VERSION",
    "RecordsHasher",
    "canonical_json",
    "diff_parts",
    "fingerprint",
    "model_digest",
    "records_digest",
    "scoring_parts",
    "template_digest",
    "tokenizer_digest",
]

SCORER_VERSION = 1
"""Version of what :class:`~lead_lightning.scoring.ScoringModule` computes; bump it when its outputs
change, so that cached scores and shards from the old code are not reused."""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
_SAMPLE = 4096


def _jsonable(obj: Any) -> Any:
    """``json.dumps(default=...)``: the non-JSON values settings are made of, in a stable form."""
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (Path, PathLike)):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, tensors
        return obj.tolist()
    if type(obj).__module__ == "torch" and type(obj).__name__ == "dtype":
        return str(obj)
    raise TypeError(
        f"Cannot fingerprint a value of type {type(obj).__name__}: {obj!r:.80}. HINT: pass a digest of it"
        " (a string) instead, e.g. from `records_digest`, `model_digest` or `tokenizer_digest`."
    )


def canonical_json(obj: Any) -> str:
    """``obj`` as JSON with sorted keys and no spaces: equal values give equal strings.

    Example:
        >>> canonical_json({"b": {2, 1}, "a": 1.5})
        '{"a":1.5,"b":[1,2]}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_jsonable)


def fingerprint(**parts: Any) -> str:
    """The ``sha256`` hex digest of the canonical JSON of ``parts``.

    Args:
        **parts: JSON-able values (sets, enums, paths, dataclasses and numpy/torch scalars are
            converted); pass digests for big inputs (records, model, tokenizer).

    Returns:
        64 hex characters; the same parts, in any keyword order, give the same fingerprint.

    Example:
        >>> fingerprint(seed=0, max_length=512) == fingerprint(max_length=512, seed=0)
        True
        >>> fingerprint(seed=0) == fingerprint(seed=1)
        False
        >>> len(fingerprint(records="ab12", template="tulu"))
        64
    """
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def _update_str(h: Any, text: str | None) -> None:
    """Length-prefixed text (``None`` distinct from ``""``), so field boundaries cannot shift."""
    if text is None:
        h.update(b"\xff" * 8)
        return
    data = text.encode("utf-8", "surrogatepass")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def records_digest(records: Iterable[Any]) -> str:
    """A digest of the pool's content: prompt, response and group of every record, in order.

    A chat record's conversation (``messages``, the context the template renders) is included too;
    the number of records is part of the digest.

    Args:
        records: :class:`~lead_lightning.data.InstructionRecord` objects (anything with ``prompt``,
            ``response`` and ``group``; ``messages`` optional).

    Example:
        >>> from lead_lightning.data import InstructionRecord
        >>> a = [InstructionRecord("Add 2 and 3.", "5", group="add")]
        >>> records_digest(a) == records_digest([InstructionRecord("Add 2 and 3.", "5", group="add")])
        True
        >>> records_digest(a) == records_digest([InstructionRecord("Add 2 and 3.", "5", group="sum")])
        False
    """
    streamed = getattr(records, "records_digest", None)
    if callable(streamed):  # an Arrow-backed pool (`ArrowRecords`): the same digest, from its columns
        return str(streamed())
    h = RecordsHasher()
    for r in records:
        messages = getattr(r, "messages", None)
        h.update(r.prompt, r.response, r.group, None if messages is None else canonical_json(messages))
    return h.hexdigest()


class RecordsHasher:
    """:func:`records_digest` one record at a time: ``update(prompt, response, group, messages_json)``
    (``messages_json``: the canonical JSON of the conversation, or ``None``), then :meth:`hexdigest`."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"lead_lightning.records.v1")
        self.n = 0

    def update(self, prompt: str, response: str, group: str, messages_json: str | None) -> None:
        for text in (prompt, response, group, messages_json):
            _update_str(self._h, text)
        self.n += 1

    def hexdigest(self) -> str:
        h = self._h.copy()
        h.update(self.n.to_bytes(8, "little"))
        return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """A digest of a Hugging Face tokenizer: its serialised JSON (or vocabulary) and special tokens.

    Example:
        >>> from lead_lightning.models import train_bpe_tokenizer
        >>> t1 = train_bpe_tokenizer(["add two and three"] * 5, vocab_size=300)
        >>> t2 = train_bpe_tokenizer(["add two and three"] * 5, vocab_size=300)
        >>> tokenizer_digest(t1) == tokenizer_digest(t2)
        True
    """
    h = hashlib.sha256(b"lead_lightning.tokenizer.v1")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        _update_str(h, backend.to_str())
    else:
        _update_str(h, canonical_json(sorted(tokenizer.get_vocab().items())))
    _update_str(h, canonical_json(getattr(tokenizer, "special_tokens_map", {})))
    _update_str(h, str(getattr(tokenizer, "padding_side", "")))
    return h.hexdigest()


def template_digest(template: Any) -> str:
    """``"<name>@<12 hex>"``: a prompt template's name and a digest of its format strings.

    Args:
        template: a template name or :class:`~lead_lightning.data.PromptTemplate`.

    Example:
        >>> template_digest("tulu").startswith("tulu@")
        True
    """
    from lead_lightning.data.templates import get_template

    t = get_template(template)
    return f"{t.name}@{fingerprint(**dataclasses.asdict(t))[:12]}"


def _tensor_bytes(t: Any, sample: bool) -> memoryview:
    import torch

    flat = t.detach().reshape(-1)
    if sample and flat.numel() > 2 * _SAMPLE:
        step = max(1, flat.numel() // _SAMPLE)
        flat = torch.cat([flat[:_SAMPLE], flat[::step][:_SAMPLE]])
    return memoryview(flat.cpu().contiguous().view(torch.uint8).numpy())


def _weight_files(name_or_path: str) -> list[tuple[str, int, int]]:
    root = Path(name_or_path) if name_or_path else None
    if root is None or not root.is_dir():
        return []
    return [
        (p.name, p.stat().st_size, int(p.stat().st_mtime))
        for p in sorted(root.iterdir())
        if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
    ]


def _base_key(key: str) -> str:
    """A PEFT model's state-dict key as the base model names it."""
    key = key.removeprefix("base_model.model.")
    return key.replace(".base_layer.", ".")


def model_digest(model: Any, max_full_params: int = 50_000_000) -> str:
    """A digest of a model's config and weights (see the module docstring for what a big model costs).

    Args:
        model: a Hugging Face causal LM, a PEFT model, a
            :class:`~lead_lightning.models.CausalLMModule` or a
            :class:`~lead_lightning.scoring.ScoringModule` (the model inside is used).
        max_full_params: up to this many parameters every weight is hashed; above it the weight files
            on disk (or a sample of every tensor) stand for them.

    Example:
        >>> from lead_lightning.models import tiny_causal_lm
        >>> a, b = tiny_causal_lm(300, hidden_size=32, seed=0), tiny_causal_lm(300, hidden_size=32, seed=0)
        >>> model_digest(a) == model_digest(b)
        True
        >>> model_digest(a) == model_digest(tiny_causal_lm(300, hidden_size=32, seed=1))
        False
    """
    from lead_lightning.scoring.common import hf_model

    net: Any = hf_model(model)
    state = net.state_dict()
    adapter = {k for k in state if "lora_" in k}
    b_keys = [k for k in adapter if "lora_B" in k or "lora_embedding_B" in k]
    active = any(bool(state[k].any()) for k in b_keys)
    if adapter and not active:  # a fresh LoRA computes the base model exactly: digest that
        state = {_base_key(k): v for k, v in state.items() if k not in adapter}
        net = net.get_base_model() if hasattr(net, "get_base_model") else net
    config: Any = getattr(net, "config", None)
    config_dict = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    config_dict = {k: v for k, v in config_dict.items() if not str(k).startswith("_")}
    name_or_path = str(getattr(net, "name_or_path", "") or getattr(config, "_name_or_path", "") or "")
    n_params = sum(int(v.numel()) for v in state.values())
    peft = getattr(net, "peft_config", None) if active else None
    head = {
        "class": type(net).__name__,
        "config": config_dict,
        "n_params": n_params,
        "dtypes": sorted({str(v.dtype) for v in state.values()}),
        "peft": {k: v.to_dict() for k, v in peft.items()} if isinstance(peft, Mapping) else None,
    }
    files = _weight_files(name_or_path) if n_params > max_full_params else []
    if files:
        return fingerprint(**head, name_or_path=name_or_path, weight_files=files)
    h = hashlib.sha256(canonical_json(head).encode())
    sample = n_params > max_full_params
    h.update(b"sampled" if sample else b"full")
    for key in sorted(state):
        t = state[key]
        _update_str(h, f"{key}:{tuple(t.shape)}:{t.dtype}")
        h.update(_tensor_bytes(t, sample))
    return h.hexdigest()


def scoring_parts(
    records: Iterable[Any],
    model: Any,
    tokenizer: Any,
    *,
    template: Any = "tulu",
    max_length: int,
    seed: int,
    truncation: str = "error",
    embed: bool = False,
    warmup: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """The parts that determine a pool's offline scores, ready for :func:`fingerprint`.

    Args:
        records: the pool, in id order (see :func:`records_digest`).
        model: the model that scores (see :func:`model_digest`); for a LoRA warm-up pass the base
            model, before the adapter is added.
        tokenizer: its tokenizer.
        template: the prompt template (name or object).
        max_length: the datamodule's longest sequence.
        seed: the run's seed.
        truncation: the datamodule's truncation mode.
        embed: whether embeddings are computed.
        warmup: the LoRA warm-up settings (``None``: no warm-up).
        **settings: more JSON-able settings that change the result (e.g. clustering).

    Returns:
        A flat dict of small JSON-able values (digests are hex strings).

    Example:
        >>> from lead_lightning.data import generate_pool
        >>> from lead_lightning.models import tiny_causal_lm, train_bpe_tokenizer
        >>> pool = generate_pool(10)
        >>> tok = train_bpe_tokenizer([r.prompt + r.response for r in pool], vocab_size=300)
        >>> parts = scoring_parts(pool, tiny_causal_lm(len(tok), hidden_size=32), tok, max_length=64, seed=0)
        >>> sorted(parts)[:4], len(fingerprint(**parts))
        (['embed', 'max_length', 'model', 'records'], 64)
    """
    return {
        "scorer": SCORER_VERSION,
        "records": records_digest(records),
        "model": model_digest(model),
        "tokenizer": tokenizer_digest(tokenizer),
        "template": template_digest(template),
        "max_length": max_length,
        "truncation": truncation,
        "seed": seed,
        "embed": bool(embed),
        "warmup": dict(warmup) if warmup else None,
        **settings,
    }


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text[:16] + "..." if len(text) > 19 else text


def diff_parts(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two sets of fingerprint parts, one readable line per part.

    Example:
        >>> diff_parts({"seed": 0, "records": "ab"}, {"seed": 1, "records": "ab"})
        ['seed (stored 0, now 1)']
    """
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if canonical_json(a) != canonical_json(b):
            out.append(f"{key} (stored {_short(a)}, now {_short(b)})")
    return out
