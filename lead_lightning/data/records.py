"""`InstructionRecord` and readers for the instruction formats users have.

Every reader returns ``list[InstructionRecord]`` whose list position is the example's pool id (its
``iter_*`` twin, :func:`iter_records`, yields the same records one at a time, for pools read into
Arrow by :mod:`lead_lightning.data.arrow` without holding them in Python objects). Errors
name where the bad example is (``file:line`` for JSONL and for bytes that are not UTF-8,
``file:examples[i]`` for BBH, ``row i`` for a HF dataset), the field involved and what was expected.
:func:`deduplicate_split` warns about repeated (prompt, response) pairs in a pool and removes the
held-out records that the pool holds too.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = [
    "ITER_READERS",
    "InstructionRecord",
    "READERS",
    "deduplicate_split",
    "iter_alpaca_jsonl",
    "iter_bbh",
    "iter_chat_jsonl",
    "iter_gsm8k",
    "iter_records",
    "read_alpaca_jsonl",
    "read_bbh",
    "read_chat_jsonl",
    "read_gsm8k",
    "read_records",
    "records_from_hf",
]

_ROLES = ("system", "user", "assistant")
PathT = str | PathLike[str]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstructionRecord:
    """One instruction-tuning example: the response is scored, the prompt is context.

    Args:
        prompt: the instruction (for a chat example: the last user turn; the template renders the
            whole context from ``messages``).
        response: the reply being trained on (non-empty).
        group: fine label (task / source) used for stratified selection.
        messages: for chat examples, the whole conversation; its last turn is the assistant reply
            equal to ``response``. ``None`` for single-turn examples.

    Example:
        >>> InstructionRecord("Add 2 and 3.", "5", group="add").group
        'add'
        >>> InstructionRecord("Add 2 and 3.", "")
        Traceback (most recent call last):
        ...
        ValueError: empty response (`response` is '')
    """

    prompt: str
    response: str
    group: str = "default"
    messages: tuple[dict[str, str], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "response", "group"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"`{name}` must be a string, got {type(value).__name__}: {value!r:.80}")
        if not self.response.strip():
            raise ValueError(f"empty response (`response` is {self.response!r})")
        if not self.prompt.strip():
            raise ValueError(f"empty prompt (`prompt` is {self.prompt!r})")
        if self.messages is not None:
            msgs = tuple(_check_messages(self.messages))
            if msgs[-1]["content"] != self.response:
                raise ValueError(
                    "`response` must equal the content of the last message (the assistant reply)"
                )
            object.__setattr__(self, "messages", msgs)


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValueError(
            f"`messages` must be a non-empty list of {{role, content}} objects, got {messages!r:.80}"
        )
    out = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, Mapping):
            raise ValueError(f"messages[{i}] must be an object with `role` and `content`, got {turn!r:.80}")
        for key in ("role", "content"):
            if key not in turn:
                raise ValueError(f"messages[{i}]: missing field `{key}` (found fields: {sorted(turn)})")
        role, content = turn["role"], turn["content"]
        if role not in _ROLES:
            raise ValueError(f"messages[{i}]: unknown role {role!r}; allowed: {list(_ROLES)}")
        if not isinstance(content, str):
            raise ValueError(
                f"messages[{i}]: `content` must be a string, got {type(content).__name__}: {content!r:.80}"
            )
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise ValueError(
            f"the last message must be the assistant reply to train on, got role {out[-1]['role']!r}"
        )
    if not any(t["role"] == "user" for t in out[:-1]):
        raise ValueError("no user turn before the last assistant reply")
    return out


def _record_from_messages(messages: Any, group: str) -> InstructionRecord:
    msgs = _check_messages(messages)
    last_user = next(t["content"] for t in reversed(msgs[:-1]) if t["role"] == "user")
    return InstructionRecord(
        prompt=last_user, response=msgs[-1]["content"], group=group, messages=tuple(msgs)
    )


def _at(where: str, build: Callable[[], InstructionRecord]) -> InstructionRecord:
    """Build a record, prefixing any validation error with where the example is."""
    try:
        return build()
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _field(row: Mapping[str, Any], name: str, where: str, allow_missing: bool = False) -> Any:
    if name not in row:
        if allow_missing:
            return None
        raise ValueError(f"{where}: missing field `{name}` (found fields: {sorted(row)})")
    value = row[name]
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: field `{name}` must be a string, got {type(value).__name__}: {value!r:.80}"
        )
    return value


def _iter_jsonl(path: PathT) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", object)`` for every non-blank line of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such JSONL file: {path}")
    with path.open("rb") as f:  # decoded line by line, so bytes that are not UTF-8 are named by line
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, path, lineno, bom=lineno == 1)
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _decode(raw: bytes, source: object, first_line: int = 1, bom: bool = True) -> str:
    """``raw`` (text from ``source`` starting at line ``first_line``) as UTF-8, or an error naming the
    line and column of the first byte that is not UTF-8. A leading byte-order mark is dropped (``bom``).

    Example:
        >>> _decode(b'{"a": 1}\\n{"b": "caf\\xe9"}', "pool.jsonl")
        Traceback (most recent call last):
        ...
        ValueError: pool.jsonl:2: not UTF-8 (byte 0xe9 at column 11). HINT: convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`.
    """
    try:
        return raw.decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        column = e.start - raw.rfind(b"\n", 0, e.start)
        raise ValueError(
            f"{source}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {column}). HINT: convert the"
            " file to UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`."
        ) from None


def _non_empty(records: list[InstructionRecord], source: object) -> list[InstructionRecord]:
    if not records:
        raise ValueError(f"{source}: no examples found (empty pool)")
    return records


def read_chat_jsonl(
    path: PathT,
    group: str | None = None,
    group_field: str | None = "dataset",
    messages_field: str = "messages",
) -> list[InstructionRecord]:
    """Read chat JSONL (``{"messages": [{"role", "content"}, ...]}``, the open-instruct / tulu shape).

    The response is the last (assistant) turn; every earlier turn is context that the template renders.

    Args:
        path: the ``.jsonl`` file.
        group: group of every example; if ``None``, the row's ``group_field`` when present, else the
            file stem.
        group_field: row field holding the source/task label (tulu mixtures call it ``dataset``).
        messages_field: row field holding the conversation.

    Example:
        >>> import json, os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "chat.jsonl")
        >>> msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
        >>> _ = open(p, "w").write(json.dumps({"messages": msgs}) + "\\n")
        >>> r = read_chat_jsonl(p)[0]
        >>> r.prompt, r.response, r.group
        ('Hi', 'Hello!', 'chat')
    """
    return _non_empty(list(iter_chat_jsonl(path, group, group_field, messages_field)), path)


def iter_chat_jsonl(
    path: PathT,
    group: str | None = None,
    group_field: str | None = "dataset",
    messages_field: str = "messages",
) -> Iterator[InstructionRecord]:
    """:func:`read_chat_jsonl` one record at a time (the same records and errors; an empty file yields none)."""
    for where, row in _iter_jsonl(path):
        if messages_field not in row:
            raise ValueError(f"{where}: missing field `{messages_field}` (found fields: {sorted(row)})")
        g = group if group is not None else _group_of(row, group_field, Path(path).stem, where)
        yield _at(where, lambda: _record_from_messages(row[messages_field], g))  # noqa: B023


def _group_of(row: Mapping[str, Any], group_field: str | None, default: str, where: str) -> str:
    if group_field is None or group_field not in row:
        return default
    value = row[group_field]
    if not isinstance(value, str | int):
        raise ValueError(f"{where}: field `{group_field}` (the group) must be a string, got {value!r:.80}")
    return str(value)


def _join_instruction(instruction: str, input_: str | None) -> str:
    return instruction if not input_ or not input_.strip() else f"{instruction}\n\n{input_}"


def read_alpaca_jsonl(
    path: PathT,
    group: str | None = None,
    group_field: str | None = None,
) -> list[InstructionRecord]:
    """Read Alpaca-style JSONL (``instruction``, optional ``input``, ``output``).

    The prompt is the instruction, followed by a blank line and the input when the input is non-empty.

    Args:
        path: the ``.jsonl`` file.
        group: group of every example; default: the row's ``group_field`` if given, else the file stem.
        group_field: optional row field holding the group label.

    Example:
        >>> import json, os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "alpaca.jsonl")
        >>> _ = open(p, "w").write(json.dumps({"instruction": "Add", "input": "2 3", "output": "5"}) + "\\n")
        >>> read_alpaca_jsonl(p)[0].prompt
        'Add\\n\\n2 3'
    """
    return _non_empty(list(iter_alpaca_jsonl(path, group, group_field)), path)


def iter_alpaca_jsonl(
    path: PathT, group: str | None = None, group_field: str | None = None
) -> Iterator[InstructionRecord]:
    """:func:`read_alpaca_jsonl` one record at a time (the same records and errors)."""
    for where, row in _iter_jsonl(path):
        instruction = _field(row, "instruction", where)
        input_ = _field(row, "input", where, allow_missing=True)
        output = _field(row, "output", where)
        g = group if group is not None else _group_of(row, group_field, Path(path).stem, where)
        prompt = _join_instruction(instruction, input_)
        yield _at(where, lambda: InstructionRecord(prompt, output, g))  # noqa: B023


_CALCULATOR = re.compile(r"<<[^>]*>>")


def read_gsm8k(path: PathT, group: str = "gsm8k", strip_calculator: bool = False) -> list[InstructionRecord]:
    """Read GSM8K JSONL (``question``, ``answer``); the answer (with its ``#### n`` line) is the response.

    Args:
        path: ``train.jsonl`` or ``test.jsonl``.
        group: group of every example.
        strip_calculator: remove the ``<<48/2=24>>`` calculator annotations from answers.

    Example:
        >>> import json, os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "gsm8k.jsonl")
        >>> row = {"question": "What is 48/2?", "answer": "48/2 = <<48/2=24>>24\\n#### 24"}
        >>> _ = open(p, "w").write(json.dumps(row) + "\\n")
        >>> read_gsm8k(p, strip_calculator=True)[0].response
        '48/2 = 24\\n#### 24'
    """
    return _non_empty(list(iter_gsm8k(path, group, strip_calculator)), path)


def iter_gsm8k(
    path: PathT, group: str = "gsm8k", strip_calculator: bool = False
) -> Iterator[InstructionRecord]:
    """:func:`read_gsm8k` one record at a time (the same records and errors)."""
    for where, row in _iter_jsonl(path):
        question = _field(row, "question", where)
        answer = _field(row, "answer", where)
        if strip_calculator:
            answer = _CALCULATOR.sub("", answer)
        yield _at(where, lambda: InstructionRecord(question, answer, group))  # noqa: B023


def read_bbh(path: PathT, tasks: Sequence[str] | None = None) -> list[InstructionRecord]:
    """Read BIG-Bench-Hard task files (``{"examples": [{"input", "target"}]}``); group = task file stem.

    Args:
        path: one task ``.json`` file, or a directory of them (read in sorted name order).
        tasks: with a directory, only these task stems (each must exist).

    Example:
        >>> import json, os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = open(os.path.join(d, "navigate.json"), "w").write(
        ...     json.dumps({"examples": [{"input": "Turn left. Start?", "target": "No"}]}))
        >>> [(r.group, r.response) for r in read_bbh(d)]
        [('navigate', 'No')]
    """
    return _non_empty(list(iter_bbh(path, tasks)), path)


def iter_bbh(path: PathT, tasks: Sequence[str] | None = None) -> Iterator[InstructionRecord]:
    """:func:`read_bbh` one record at a time (one task file in memory at a time; the same errors)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if tasks is not None:
            by_stem = {f.stem: f for f in files}
            missing = [t for t in tasks if t not in by_stem]
            if missing:
                raise ValueError(f"`tasks` {missing} not found in {path}; available: {sorted(by_stem)}")
            files = [by_stem[t] for t in tasks]
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"No such BBH file or directory: {path}")
    for file in files:
        try:
            data = json.loads(_decode(file.read_bytes(), file))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
            raise ValueError(f"{file}: expected an object with an `examples` list")
        for i, row in enumerate(data["examples"]):
            where = f"{file}:examples[{i}]"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
            input_, target = _field(row, "input", where), _field(row, "target", where)
            yield _at(where, lambda: InstructionRecord(input_, target, file.stem))  # noqa: B023


def records_from_hf(
    dataset: Any,
    prompt_column: str = "prompt",
    response_column: str = "response",
    input_column: str | None = None,
    group_column: str | None = None,
    messages_column: str | None = None,
    group: str = "default",
) -> list[InstructionRecord]:
    """Convert a Hugging Face ``datasets.Dataset`` (or any ``Sequence`` of row dicts) into records.

    Args:
        dataset: the dataset; row ``i`` becomes pool id ``i``.
        prompt_column: column of the instruction (ignored when ``messages_column`` is set).
        response_column: column of the response (ignored when ``messages_column`` is set).
        input_column: optional column appended to the prompt after a blank line (Alpaca ``input``).
        group_column: optional column of group labels; otherwise every row gets ``group``.
        messages_column: column of chat conversations; then prompt/response come from the messages.
        group: the group when ``group_column`` is ``None``.

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"q": ["2+3?"], "a": ["5"]})
        >>> records_from_hf(ds, prompt_column="q", response_column="a")[0].response
        '5'
    """
    names = list(getattr(dataset, "column_names", None) or (dataset[0].keys() if len(dataset) else []))
    needed = [messages_column] if messages_column else [prompt_column, response_column]
    needed += [c for c in (input_column, group_column) if c]
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(f"dataset: missing column(s) {missing}; found columns {names}")
    records = []
    for i, row in enumerate(dataset):
        where = f"row {i}"
        g = group if group_column is None else _group_of(row, group_column, group, where)
        if messages_column:
            records.append(_at(where, lambda: _record_from_messages(row[messages_column], g)))  # noqa: B023
            continue
        prompt, response = _field(row, prompt_column, where), _field(row, response_column, where)
        if input_column:
            input_ = row[input_column]
            if input_ is not None and not isinstance(input_, str):
                raise ValueError(f"{where}: field `{input_column}` must be a string, got {input_!r:.80}")
            prompt = _join_instruction(prompt, input_)
        records.append(_at(where, lambda: InstructionRecord(prompt, response, g)))  # noqa: B023
    return _non_empty(records, "dataset")


READERS: dict[str, Callable[..., list[InstructionRecord]]] = {
    "chat": read_chat_jsonl,
    "alpaca": read_alpaca_jsonl,
    "gsm8k": read_gsm8k,
    "bbh": read_bbh,
}
"""File readers by format name, used by :func:`read_records` (and Hydra data configs)."""

ITER_READERS: dict[str, Callable[..., Iterator[InstructionRecord]]] = {
    "chat": iter_chat_jsonl,
    "alpaca": iter_alpaca_jsonl,
    "gsm8k": iter_gsm8k,
    "bbh": iter_bbh,
}
"""The same readers one record at a time (:func:`iter_records`), for pools read into Arrow."""


def iter_records(path: PathT, format: str, **kwargs: Any) -> Iterator[InstructionRecord]:
    """:func:`read_records` one record at a time: the same records, in order, and the same errors,
    without holding the pool (an empty file yields nothing; callers check).

    Example:
        >>> next(iter_records("x.jsonl", format="csv"))
        Traceback (most recent call last):
        ...
        ValueError: Unknown `format` 'csv'; known formats: ['alpaca', 'bbh', 'chat', 'gsm8k'].
    """
    if format not in ITER_READERS:
        raise ValueError(f"Unknown `format` {format!r}; known formats: {sorted(ITER_READERS)}.")
    yield from ITER_READERS[format](path, **kwargs)


def read_records(path: PathT, format: str, **kwargs: Any) -> list[InstructionRecord]:
    """Read a file (or, for ``"bbh"``, a directory) with the reader registered under ``format``.

    Example:
        >>> read_records("x.jsonl", format="csv")
        Traceback (most recent call last):
        ...
        ValueError: Unknown `format` 'csv'; known formats: ['alpaca', 'bbh', 'chat', 'gsm8k'].
    """
    if format not in READERS:
        raise ValueError(f"Unknown `format` {format!r}; known formats: {sorted(READERS)}.")
    return READERS[format](path, **kwargs)


def deduplicate_split(
    pool: Sequence[InstructionRecord], held_out: Sequence[InstructionRecord] | None
) -> list[InstructionRecord] | None:
    """Warn about repeated (prompt, response) pairs in ``pool``; return ``held_out`` without the records
    that ``pool`` holds too (warned with their count).

    Repeats in the pool stay (each keeps its pool id: ids are list positions), but the warning says how
    many there are, since an example stored twice is trained twice as often. A held-out record that is
    also a training record makes the held-out loss a training loss, so it is removed; ``None`` is
    returned when nothing is left (or ``held_out`` is ``None``).

    Args:
        pool: the training pool (list position = pool id).
        held_out: the held-out records, or ``None``.

    Returns:
        ``held_out`` without the records whose (prompt, response) pair is in ``pool``.

    Example:
        >>> pool = [InstructionRecord("1+1?", "2"), InstructionRecord("2+2?", "4"), InstructionRecord("1+1?", "2")]
        >>> val = [InstructionRecord("2+2?", "4"), InstructionRecord("3+3?", "6")]
        >>> [r.prompt for r in deduplicate_split(pool, val)]
        ['3+3?']
    """
    counts = Counter((r.prompt, r.response) for r in pool)
    repeated = {pair: n for pair, n in counts.items() if n > 1}
    if repeated:
        extra = sum(repeated.values()) - len(repeated)
        first = next(iter(repeated))
        ids = [i for i, r in enumerate(pool) if (r.prompt, r.response) == first][:3]
        log.warning(
            f"The pool holds {extra} duplicate record(s): {len(repeated)} (prompt, response) pair(s) occur"
            f" more than once (the first: ids {ids}, prompt {first[0]!r:.60}). Each copy is its own pool id,"
            " so these examples count more in selection and training. HINT: de-duplicate the source file."
        )
    if held_out is None:
        return None
    kept = [r for r in held_out if (r.prompt, r.response) not in counts]
    if len(kept) < len(held_out):
        log.warning(
            f"Removed {len(held_out) - len(kept)} of {len(held_out)} held-out record(s) that are also in the"
            " training pool (identical prompt and response): they would measure training loss, not"
            f" held-out loss. {len(kept)} held-out record(s) remain."
        )
    return kept or None
