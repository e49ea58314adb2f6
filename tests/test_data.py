"""Tests for lead_lightning.data: readers, templates, collation, datasets, the datamodule, the synthetic pool."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import lightning.pytorch as pl
import pytest
import torch

from lead_lightning.data import (
    IGNORE_INDEX,
    SYNTHETIC_FAMILIES,
    TEMPLATES,
    InstructionCollator,
    InstructionDataModule,
    InstructionDataset,
    InstructionRecord,
    LengthBucketBatchSampler,
    fit_to_length,
    generate_pool,
    get_template,
    read_alpaca_jsonl,
    read_bbh,
    read_chat_jsonl,
    read_gsm8k,
    read_records,
    records_from_hf,
)

DATA = Path("/work/shared/data")
needs_gsm8k = pytest.mark.skipif(not (DATA / "gsm8k" / "train.jsonl").exists(), reason="GSM8K copy absent")
needs_bbh = pytest.mark.skipif(not (DATA / "bbh").is_dir(), reason="BBH copy absent")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat(*turns: tuple[str, object]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


# ---------------------------------------------------------------------- records and readers
def test_record_validation():
    assert InstructionRecord("p", "r").group == "default"
    with pytest.raises(ValueError, match="empty response"):
        InstructionRecord("p", "  ")
    with pytest.raises(ValueError, match="empty prompt"):
        InstructionRecord("", "r")
    with pytest.raises(ValueError, match="`prompt` must be a string, got int"):
        InstructionRecord(3, "r")  # type: ignore[arg-type]


def test_chat_reader(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            chat(("user", "Hi"), ("assistant", "Hello!")),
            "",  # blank lines are skipped
            {
                **chat(
                    ("system", "Be brief."),
                    ("user", "a"),
                    ("assistant", "b"),
                    ("user", "c"),
                    ("assistant", "d"),
                ),
                "dataset": "flan",
            },
        ],
    )
    first, second = read_chat_jsonl(path)
    assert (first.prompt, first.response, first.group) == ("Hi", "Hello!", "chat")
    assert (second.prompt, second.response, second.group) == ("c", "d", "flan")
    assert [t["role"] for t in second.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert read_chat_jsonl(path, group="g")[1].group == "g"
    rendered = get_template("tulu").render_prompt(second.prompt, second.messages, eos_token="<eos>")
    assert (
        rendered == "<|system|>\nBe brief.\n<|user|>\na\n<|assistant|>\nb<eos>\n<|user|>\nc\n<|assistant|>\n"
    )


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ('{"messages": [', r"chat\.jsonl:2: invalid JSON"),
        ({"turns": []}, r"chat\.jsonl:2: missing field `messages` \(found fields: \['turns'\]\)"),
        (
            chat(("user", "a"), ("assistant", 5)),
            r"chat\.jsonl:2: messages\[1\]: `content` must be a string, got int",
        ),
        (chat(("user", "a"), ("assistant", "")), r"chat\.jsonl:2: empty response"),
        (
            chat(("user", "a"), ("assistant", "b"), ("user", "c")),
            r"chat\.jsonl:2: the last message must be the assistant",
        ),
        (chat(("user", "a"), ("robot", "b")), r"chat\.jsonl:2: messages\[1\]: unknown role 'robot'"),
        (chat(("assistant", "b")), r"chat\.jsonl:2: no user turn"),
        ({"messages": [{"role": "user"}]}, r"chat\.jsonl:2: messages\[0\]: missing field `content`"),
        ([1, 2], r"chat\.jsonl:2: expected a JSON object, got list"),
    ],
)
def test_chat_reader_errors(tmp_path, row, match):
    path = write_jsonl(tmp_path / "chat.jsonl", [chat(("user", "ok"), ("assistant", "fine")), row])
    with pytest.raises(ValueError, match=match):
        read_chat_jsonl(path)


def test_empty_pool_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"empty\.jsonl: no examples found \(empty pool\)"):
        read_chat_jsonl(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_alpaca_jsonl(tmp_path / "nope.jsonl")


def test_alpaca_reader(tmp_path):
    path = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Add the numbers.", "input": "2 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "hi"},
            {"instruction": "Say bye.", "output": "bye"},
        ],
    )
    records = read_alpaca_jsonl(path)
    assert [r.prompt for r in records] == ["Add the numbers.\n\n2 3", "Say hi.", "Say bye."]
    assert {r.group for r in records} == {"alpaca"}


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (
            {"instruction": "x", "input": ""},
            r"alpaca\.jsonl:3: missing field `output` \(found fields: \['input', 'instruction'\]\)",
        ),
        (
            {"instruction": "x", "output": ["a"]},
            r"alpaca\.jsonl:3: field `output` must be a string, got list",
        ),
        ({"instruction": "x", "output": ""}, r"alpaca\.jsonl:3: empty response"),
        ({"instruction": "x", "input": 7, "output": "y"}, r"alpaca\.jsonl:3: field `input` must be a string"),
    ],
)
def test_alpaca_reader_errors(tmp_path, row, match):
    good = {"instruction": "a", "output": "b"}
    path = write_jsonl(tmp_path / "alpaca.jsonl", [good, good, row])
    with pytest.raises(ValueError, match=match):
        read_alpaca_jsonl(path)


def test_gsm8k_reader_small(tmp_path):
    path = write_jsonl(
        tmp_path / "gsm8k.jsonl",
        [{"question": "What is 48/2?", "answer": "48/2 = <<48/2=24>>24\n#### 24"}, {"question": "q"}],
    )
    with pytest.raises(ValueError, match=r"gsm8k\.jsonl:2: missing field `answer`"):
        read_gsm8k(path)
    write_jsonl(path, [{"question": "What is 48/2?", "answer": "48/2 = <<48/2=24>>24\n#### 24"}])
    assert read_gsm8k(path)[0].response == "48/2 = <<48/2=24>>24\n#### 24"
    assert read_gsm8k(path, strip_calculator=True)[0].response == "48/2 = 24\n#### 24"


@needs_gsm8k
@pytest.mark.parametrize(("split", "n"), [("train", 7473), ("test", 1319)])
def test_gsm8k_reader_real(split, n):
    records = read_gsm8k(DATA / "gsm8k" / f"{split}.jsonl")
    assert len(records) == n
    assert {r.group for r in records} == {"gsm8k"}
    assert all("####" in r.response and r.prompt.strip() for r in records)


def test_bbh_reader_small(tmp_path):
    (tmp_path / "navigate.json").write_text(json.dumps({"examples": [{"input": "Go?", "target": "No"}]}))
    (tmp_path / "snarks.json").write_text(
        json.dumps({"examples": [{"input": "a", "target": "(A)"}, {"input": "b"}]})
    )
    with pytest.raises(ValueError, match=r"snarks\.json:examples\[1\]: missing field `target`"):
        read_bbh(tmp_path)
    records = read_bbh(tmp_path, tasks=["navigate"])
    assert [(r.prompt, r.response, r.group) for r in records] == [("Go?", "No", "navigate")]
    assert read_bbh(tmp_path / "navigate.json")[0].group == "navigate"
    with pytest.raises(ValueError, match=r"`tasks` \['web'\] not found"):
        read_bbh(tmp_path, tasks=["web"])


@needs_bbh
def test_bbh_reader_real():
    files = sorted((DATA / "bbh").glob("*.json"))
    records = read_bbh(DATA / "bbh")
    assert {r.group for r in records} == {f.stem for f in files}
    n_expected = sum(len(json.loads(f.read_text())["examples"]) for f in files)
    assert len(records) == n_expected
    assert read_records(DATA / "bbh", format="bbh", tasks=["navigate"])[0].group == "navigate"


def test_records_from_hf():
    ds = datasets.Dataset.from_dict(
        {"q": ["Add", "Say hi"], "x": ["2 3", ""], "a": ["5", "hi"], "task": ["math", "chat"]}
    )
    records = records_from_hf(
        ds, prompt_column="q", response_column="a", input_column="x", group_column="task"
    )
    assert [(r.prompt, r.response, r.group) for r in records] == [
        ("Add\n\n2 3", "5", "math"),
        ("Say hi", "hi", "chat"),
    ]
    conv = datasets.Dataset.from_dict({"messages": [chat(("user", "a"), ("assistant", "b"))["messages"]]})
    assert records_from_hf(conv, messages_column="messages")[0].response == "b"
    with pytest.raises(ValueError, match=r"missing column\(s\) \['prompt', 'response'\]"):
        records_from_hf(ds)
    bad = datasets.Dataset.from_dict({"prompt": ["a", "b"], "response": ["c", ""]})
    with pytest.raises(ValueError, match=r"row 1: empty response"):
        records_from_hf(bad)


def test_read_records_dispatch(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}])
    assert read_records(path, format="alpaca")[0].response == "b"
    with pytest.raises(
        ValueError, match=r"Unknown `format` 'csv'; known formats: \['alpaca', 'bbh', 'chat', 'gsm8k'\]"
    ):
        read_records(path, format="csv")


# ---------------------------------------------------------------------- templates
def test_tulu_template_exact():
    assert get_template("tulu").render_prompt("Hi") == "<|user|>\nHi\n<|assistant|>\n"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template(name):
    t = get_template(name)
    assert get_template(t) is t and t.name == name
    single = t.render_prompt("PROMPT")
    assert "PROMPT" in single and single.endswith(t.assistant_prefix)
    msgs = chat(("user", "PROMPT"), ("assistant", "R"))["messages"]
    assert t.render_prompt("PROMPT", msgs) == single  # one user turn renders like a plain prompt


def test_unknown_template():
    with pytest.raises(
        ValueError, match=r"Unknown `template` 'chatml'; known templates: \['alpaca', 'tulu'\]"
    ):
        get_template("chatml")


# ---------------------------------------------------------------------- collation
def items(records, start=0):
    return [{"id": start + i, "record": r} for i, r in enumerate(records)]


def test_collator_masks_prompt_and_padding(tokenizer):
    records = [
        InstructionRecord("Copy the word: abc", "abc"),
        InstructionRecord("Add: 100 + 23", "a much longer reply"),
    ]
    batch = InstructionCollator(tokenizer, max_length=128)(items(records, start=10))
    assert batch["ids"].tolist() == [10, 11]
    assert batch["input_ids"].dtype == torch.long
    for row, rec in enumerate(records):
        prompt_ids = tokenizer(get_template("tulu").render_prompt(rec.prompt), add_special_tokens=False)[
            "input_ids"
        ]
        resp_ids = tokenizer(rec.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n_p, n = len(prompt_ids), len(prompt_ids) + len(resp_ids)
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        assert ids[:n].tolist() == prompt_ids + resp_ids
        assert (labels[:n_p] == IGNORE_INDEX).all() and (labels[n:] == IGNORE_INDEX).all()
        assert labels[n_p:n].tolist() == resp_ids  # exactly the response (and its eos) is scored
        assert mask[:n].all() and not mask[n:].any()
        assert (ids[n:] == tokenizer.pad_token_id).all()
        assert tokenizer.decode(labels[n_p:n]) == rec.response + "<eos>"


def test_collator_validates(tokenizer):
    with pytest.raises(
        ValueError, match=r"`truncation` must be one of \('error', 'exclude', 'truncate_prompt'\), got 'drop'"
    ):
        InstructionCollator(tokenizer, 64, truncation="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="carrying its pool id under `id`"):
        InstructionCollator(tokenizer, 64)([{"record": InstructionRecord("a", "b")}])


def test_fit_to_length():
    assert fit_to_length([1, 2], [3, 4], 4) == ([1, 2], [3, 4])
    assert fit_to_length([1, 2], [3, 4, 5], 4, "exclude") == ([1, 2], [3, 4])
    assert fit_to_length([1, 2, 3, 4], [5], 4) is None
    assert fit_to_length([1, 2, 3, 4], [5], 4, "truncate_prompt") == ([2, 3, 4], [5])
    assert fit_to_length([1, 2], [3, 4, 5, 6, 7], 4, "truncate_prompt") == ([2], [3, 4, 5])


def long_and_short(tokenizer):
    short = InstructionRecord("Copy the word: abc", "abc")
    long_prompt = InstructionRecord("Copy the word: " + " ".join(["abcdefgh"] * 40), "abc")
    long_reply = InstructionRecord("Copy the word: abc", " ".join(["abc"] * 60))
    return short, long_prompt, long_reply


def test_collator_truncation_error_names_id(tokenizer):
    short, long_prompt, long_reply = long_and_short(tokenizer)
    collate = InstructionCollator(tokenizer, max_length=32)
    batch = collate(items([short, long_reply]))
    assert batch["input_ids"].shape[1] == 32 and collate.stats.n_truncated == 1
    assert (batch["labels"][1] != IGNORE_INDEX).sum() > 0
    with pytest.raises(
        ValueError, match=r"Example id 5: its prompt alone has \d+ tokens, >= `max_length` \(32\)"
    ):
        collate([{"id": 4, "record": short}, {"id": 5, "record": long_prompt}])


def test_collator_truncation_exclude_counts(tokenizer):
    short, long_prompt, long_reply = long_and_short(tokenizer)
    collate = InstructionCollator(tokenizer, max_length=32, truncation="exclude")
    batch = collate(items([short, long_prompt, long_reply]))
    assert batch["ids"].tolist() == [0, 2]
    assert (collate.stats.n_examples, collate.stats.n_truncated, collate.stats.n_excluded) == (3, 1, 1)
    collate.reset_stats()
    assert collate.stats.n_examples == 0


def test_collator_truncate_prompt_keeps_response(tokenizer):
    short, long_prompt, _ = long_and_short(tokenizer)
    collate = InstructionCollator(tokenizer, max_length=32, truncation="truncate_prompt")
    batch = collate(items([short, long_prompt]))
    assert collate.stats.n_truncated == 1 and batch["input_ids"].shape[1] == 32
    assert tokenizer.decode(batch["labels"][1][batch["labels"][1] != IGNORE_INDEX]) == "abc<eos>"


def test_collator_response_only(tokenizer):
    short, _, long_reply = long_and_short(tokenizer)
    batch = InstructionCollator(tokenizer, max_length=32, response_only=True)(items([short, long_reply]))
    for row in range(2):
        scored = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        ro_labels = batch["ro_labels"][row]
        assert ro_labels[0] == IGNORE_INDEX  # the start token is not scored
        assert ro_labels[ro_labels != IGNORE_INDEX].tolist() == scored.tolist()  # same tokens as in `labels`
        n = int(batch["ro_attention_mask"][row].sum())
        assert batch["ro_input_ids"][row][1:n].tolist() == scored.tolist()


def test_collator_pad_to_multiple(tokenizer):
    batch = InstructionCollator(tokenizer, max_length=128, pad_to_multiple_of=16)(
        items(long_and_short(tokenizer)[:1])
    )
    assert batch["input_ids"].shape[1] % 16 == 0


# ---------------------------------------------------------------------- dataset and sampler
def test_dataset_matches_on_the_fly_collation(tokenizer, small_pool):
    ds = InstructionDataset(small_pool, tokenizer, max_length=64)
    assert len(ds) == len(small_pool) and ds.groups == [r.group for r in small_pool]
    assert ds[7]["id"] == 7
    collate = InstructionCollator(tokenizer, max_length=64)
    picked = [3, 0, 42]
    a = collate([ds[i] for i in picked])
    b = collate([{"id": i, "record": small_pool[i]} for i in picked])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert ds.lengths[picked].tolist() == a["attention_mask"].sum(1).tolist()
    with pytest.raises(IndexError, match="pool id 120 out of range"):
        ds[120]
    with pytest.raises(ValueError, match="`records` is empty"):
        InstructionDataset([], tokenizer)


def test_dataset_truncation_report(tokenizer):
    records = list(long_and_short(tokenizer))
    report = InstructionDataset(records, tokenizer, max_length=32).truncation_report()
    assert report["n_truncated"] == 2 and report["response_cut_off_ids"].tolist() == [1]


def test_length_bucket_batch_sampler():
    lengths = [5, 1, 9, 3, 7, 2, 8]
    sampler = LengthBucketBatchSampler(range(7), batch_size=3, lengths=lengths)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [lengths[i] for b in batches for i in b] == sorted(lengths, reverse=True)
    shuffled = LengthBucketBatchSampler(range(7), batch_size=3, lengths=lengths, shuffle=True, seed=1)
    assert sorted(map(sorted, shuffled)) == sorted(map(sorted, batches))
    assert (
        len(LengthBucketBatchSampler(range(7), 3, drop_last=True, lengths=lengths))
        == 2
        == len(list(LengthBucketBatchSampler(range(7), 3, drop_last=True, lengths=lengths)))
    )


# ---------------------------------------------------------------------- datamodule
def test_datamodule_train_sampler_and_val(tokenizer, small_pool):
    dm = InstructionDataModule(small_pool, tokenizer, val_records=small_pool[:5], max_length=64, batch_size=4)
    dm.setup("fit")
    seen = torch.cat([b["ids"] for b in dm.train_dataloader()])
    assert sorted(seen.tolist()) == list(range(len(small_pool))) and seen.tolist() != sorted(seen.tolist())
    dm.set_train_sampler([9, 3, 7, 1, 0])
    assert torch.cat([b["ids"] for b in dm.train_dataloader()]).tolist() == [9, 3, 7, 1, 0]
    assert torch.cat([b["ids"] for b in dm.val_dataloader()]).tolist() == [0, 1, 2, 3, 4]
    assert InstructionDataModule(small_pool, tokenizer).val_dataloader() == []


def test_datamodule_checks_truncation_before_training(tokenizer, small_pool):
    records = list(small_pool[:4]) + [long_and_short(tokenizer)[1]]
    with pytest.raises(
        ValueError, match=r"1 train example\(s\) have a prompt of >= `max_length` \(32\).*ids: \[4\]"
    ):
        InstructionDataModule(records, tokenizer, max_length=32).setup("fit")
    dm = InstructionDataModule(records, tokenizer, max_length=32, truncation="exclude")
    with pytest.warns(UserWarning, match="1 excluded"):
        dm.setup("fit")
    assert dm.excluded_ids.tolist() == [4]


class _IdsOnly(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch, batch_idx):
        assert {"ro_input_ids", "ro_attention_mask", "ro_labels"} <= set(batch)
        return batch["ids"], batch["attention_mask"].sum(1)


def test_datamodule_predict_covers_pool_once(tokenizer, small_pool):
    dm = InstructionDataModule(small_pool, tokenizer, max_length=64, batch_size=4, eval_batch_size=16)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    out = trainer.predict(_IdsOnly(), datamodule=dm)
    ids = torch.cat([o[0] for o in out])
    lengths = torch.cat([o[1] for o in out])
    assert sorted(ids.tolist()) == list(range(len(small_pool)))
    assert lengths.tolist() == sorted(lengths.tolist(), reverse=True)  # length-bucketed, longest first
    assert torch.equal(lengths, torch.as_tensor(dm.train_dataset.lengths)[ids])


# ---------------------------------------------------------------------- synthetic pool
def test_synthetic_pool_deterministic_and_noisy():
    start = time.perf_counter()
    pool = generate_pool(20000, seed=3)
    assert time.perf_counter() - start < 2.0
    assert pool == generate_pool(20000, seed=3)
    assert pool != generate_pool(20000, seed=4)
    groups = {r.group for r in pool}
    assert groups == set(SYNTHETIC_FAMILIES) and any("noisy" in g for g in groups)

    def correct(r: InstructionRecord) -> bool:
        a, b = (int(x) for x in r.prompt.split(": ")[1].split(" + "))
        return r.response == str(a + b)

    add = [r for r in pool if r.group == "add"]
    noisy = [r for r in pool if r.group == "noisy_add"]
    assert all(map(correct, add))
    assert sum(map(correct, noisy)) < 0.01 * len(noisy)
    assert all(r.response == r.prompt.split(": ")[1][::-1] for r in pool if r.group == "reverse")


def test_synthetic_pool_arguments():
    assert {r.group for r in generate_pool(4, families=["copy", "add"])} == {"copy", "add"}
    with pytest.raises(ValueError, match=r"Unknown `families` \['divide'\]"):
        generate_pool(10, families=["divide"])
    with pytest.raises(ValueError, match="`n` must be >= the number of families"):
        generate_pool(2)
