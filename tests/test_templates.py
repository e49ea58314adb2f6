"""Chat templates (the tokenizer's own, via `apply_chat_template`) as a template choice, with exact
prompt/response masking; `auto` picks them for tokenizers that have one. No download: a byte-level
BPE trained here gets a ChatML chat template (SmolLM2's, default system prompt included)."""

from __future__ import annotations

import pytest

from lead_lightning.data import InstructionDataModule, InstructionRecord
from lead_lightning.data.collate import IGNORE_INDEX, InstructionCollator, tokenize_records
from lead_lightning.data.templates import CHATML_EXAMPLE, TEMPLATES, ChatTemplate, get_template
from lead_lightning.models import train_bpe_tokenizer
from lead_lightning.scoring.fingerprint import template_digest

# SmolLM2-135M-Instruct's chat template (ChatML with a default system prompt), as its tokenizer holds it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

RECORDS = [
    InstructionRecord("Natalia sold clips to 48 friends. How many?", "She sold 48 clips.\n#### 48"),
    InstructionRecord("Add 2 and 3.", " 5"),  # a response starting with a space
    InstructionRecord("Say nothing but a newline.", "\nok\n"),
]


def chat_tokenizer(template: str = SMOLLM2_CHAT_TEMPLATE, eos_is_im_end: bool = True):  # noqa: ANN201
    texts = [r.prompt + " " + r.response for r in RECORDS] * 5
    tok = train_bpe_tokenizer(texts, vocab_size=320)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if eos_is_im_end:  # as SmolLM2's tokenizer: eos = pad = <|im_end|>
        tok.eos_token = "<|im_end|>"
    tok.chat_template = template
    return tok


def multi_turn() -> InstructionRecord:
    messages = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"},
    )
    return InstructionRecord("Add 2 and 3.", "5", messages=messages)


# ----------------------------------------------------------------------------- choosing
def test_auto_picks_the_chat_template_only_when_the_tokenizer_has_one(tokenizer):  # noqa: ANN001
    assert get_template("auto", tokenizer) is TEMPLATES["tulu"]  # the pool BPE has none
    tok = chat_tokenizer()
    chat = get_template("auto", tok)
    assert isinstance(chat, ChatTemplate) and chat.name == "chat"
    assert chat == get_template("chat", tok) and chat.chat_template == SMOLLM2_CHAT_TEMPLATE
    assert get_template(chat) is chat  # an object passes through


def test_chat_without_a_chat_template_or_a_tokenizer_is_an_error(tokenizer):  # noqa: ANN001
    with pytest.raises(ValueError, match=r"has no chat template.*HINT: use `template='auto'`"):
        get_template("chat", tokenizer)
    for name in ("chat", "auto"):
        with pytest.raises(ValueError, match=rf"`template='{name}'` is resolved from the tokenizer"):
            get_template(name)
    with pytest.raises(ValueError, match=r"Unknown `template` 'chatml'.*'chat'.*'auto'"):
        get_template("chatml", tokenizer)
    with pytest.raises(ValueError, match="renders with its tokenizer"):
        get_template("chat", chat_tokenizer()).render_prompt("Hi")


def test_the_datamodule_resolves_auto_and_records_the_name(tokenizer):  # noqa: ANN001
    tok = chat_tokenizer()
    dm = InstructionDataModule(RECORDS, tok, template="auto", max_length=64)
    assert isinstance(dm.template, ChatTemplate) and dm.hparams["template"] == "chat"
    dm_bpe = InstructionDataModule(RECORDS, tokenizer, template="auto", max_length=64)
    assert dm_bpe.template is TEMPLATES["tulu"] and dm_bpe.hparams["template"] == "tulu"


def test_the_fingerprint_digest_follows_the_chat_template_source():
    a = get_template("chat", chat_tokenizer())
    b = get_template("chat", chat_tokenizer(CHATML_EXAMPLE))
    assert template_digest(a).startswith("chat@") and template_digest(a) != template_digest(b)
    assert template_digest(a) == template_digest(get_template("auto", chat_tokenizer()))


# ----------------------------------------------------------------------------- exact masking
@pytest.mark.parametrize("template", [SMOLLM2_CHAT_TEMPLATE, CHATML_EXAMPLE])
def test_chat_masking_is_exact(template):  # noqa: ANN001
    """Prompt + response tokens are exactly the tokens of the whole rendered conversation (minus the
    template's text after the end-of-turn token), and the labels are exactly the response tokens."""
    tok = chat_tokenizer(template)
    records = [*RECORDS, multi_turn()]
    prompts, responses = tokenize_records(records, tok, "chat")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    batch = InstructionCollator(tok, max_length=128, template="chat")(
        [
            {"id": i, "prompt_ids": p, "response_ids": r}
            for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
        ]
    )
    for i, record in enumerate(records):
        turns = (
            [dict(m) for m in record.messages]
            if record.messages is not None
            else [
                {"role": "user", "content": record.prompt},
                {"role": "assistant", "content": record.response},
            ]
        )
        prompt_text = tok.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
        full_text = tok.apply_chat_template(turns, tokenize=False)
        assert full_text == prompt_text + record.response + "<|im_end|>\n"
        full = tok(full_text, add_special_tokens=False)["input_ids"]
        # the prompt tokenises identically with and without the response after it
        assert full[: len(prompts[i])] == prompts[i]
        assert prompts[i] + responses[i] == full[:-1]  # all but the trailing "\n" of the template
        assert tok.decode(full[-1:]) == "\n"
        assert responses[i] == tok(record.response, add_special_tokens=False)["input_ids"] + [im_end]
        # the labels score exactly the response tokens, the end of turn included
        labels = batch["labels"][i]
        scored = labels[labels != IGNORE_INDEX].tolist()
        assert scored == responses[i]
        n_p = len(prompts[i])
        assert batch["input_ids"][i, : n_p + len(scored)].tolist() == prompts[i] + responses[i]
        assert (labels[:n_p] == IGNORE_INDEX).all()
    # SmolLM2's template adds its default system prompt when a conversation has none
    single = tok.decode(prompts[0])
    if template == SMOLLM2_CHAT_TEMPLATE:
        assert single.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert single.endswith("<|im_start|>user\n" + RECORDS[0].prompt + "<|im_end|>\n<|im_start|>assistant\n")


def test_the_end_of_turn_token_comes_from_the_template():
    # the template closes replies with <|im_end|>, which is not the tokenizer's eos: <|im_end|> is trained
    tok = chat_tokenizer(eos_is_im_end=False)
    assert tok.eos_token == "<eos>"
    _, responses = tokenize_records(RECORDS[:1], tok, "chat")
    assert responses[0][-1] == tok.convert_tokens_to_ids("<|im_end|>")
    # a template that closes replies with plain text: the tokenizer's eos
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    tok = chat_tokenizer(plain, eos_is_im_end=False)
    prompts, responses = tokenize_records(RECORDS[:1], tok, "chat")
    assert responses[0][-1] == tok.eos_token_id
    assert tok.decode(prompts[0]) == "user: " + RECORDS[0].prompt + "\nassistant: "


def test_a_template_whose_reply_differs_from_its_generation_prompt_is_an_error():
    # the generation prompt says "BOT: " but a rendered reply starts with "ASSISTANT: ": no exact boundary
    odd = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}ASSISTANT: {% else %}USER: {% endif %}"
        "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}BOT: {% endif %}"
    )
    with pytest.raises(
        ValueError, match=r"does not render a conversation ending in an assistant reply.*HINT"
    ):
        tokenize_records(RECORDS[:1], chat_tokenizer(odd), "chat")
