"""The one prompt template used for scoring, training and evaluation, chosen by name.

A template turns the context of an example (a single prompt, or the turns of a conversation before
its last assistant reply) into the text the model reads before the response. The response itself is
never part of the rendered prompt: the collator tokenizes it separately and appends the tokenizer's
eos token, so prompt and response tokens can be told apart exactly.

Names: ``tulu`` and ``alpaca`` (:data:`TEMPLATES`, fixed format strings); ``chat``, the tokenizer's own
chat template (``tokenizer.apply_chat_template``, e.g. SmolLM2's ChatML) as a :class:`ChatTemplate`;
``auto``, ``chat`` when the tokenizer has a chat template and ``tulu`` otherwise. ``chat`` and
``auto`` need the tokenizer: ``get_template(name, tokenizer)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHATML_EXAMPLE", "ChatTemplate", "PromptTemplate", "TEMPLATES", "TEMPLATE_NAMES", "get_template"]

Message = Mapping[str, str]


@dataclass(frozen=True)
class PromptTemplate:
    """How a conversation's context is rendered in front of the response.

    Each ``*_turn`` string is formatted with ``{content}``; an earlier assistant turn is followed by the
    eos token text and ``assistant_turn_end`` (the reply being trained on gets its eos as a token id).

    Args:
        name: registry name.
        user_turn: format of a user turn, e.g. ``"<|user|>\\n{content}\\n"``.
        assistant_prefix: text that opens an assistant reply (the generation prompt).
        system_turn: format of a system turn.
        assistant_turn_end: text after the eos of an earlier assistant reply.
        preamble: text in front of everything when the conversation has no system turn.

    Example:
        >>> TEMPLATES["tulu"].render_prompt("Add 2 and 3.")
        '<|user|>\\nAdd 2 and 3.\\n<|assistant|>\\n'
    """

    name: str
    user_turn: str
    assistant_prefix: str
    system_turn: str = "{content}\n"
    assistant_turn_end: str = "\n"
    preamble: str = ""

    def render_prompt(
        self,
        prompt: str,
        messages: Sequence[Message] | None = None,
        eos_token: str = "",
        tokenizer: Any = None,
    ) -> str:
        """Render the text in front of the response.

        Args:
            prompt: the instruction, used when ``messages`` is ``None``.
            messages: a whole conversation whose last turn is the assistant reply being trained on;
                every turn before it is rendered (so multi-turn context and system prompts are kept).
            eos_token: text of the tokenizer's eos token, closing earlier assistant replies.
            tokenizer: unused by format-string templates (a :class:`ChatTemplate` renders with it).

        Example:
            >>> msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            ...         {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]
            >>> TEMPLATES["tulu"].render_prompt("Bye", msgs, eos_token="<eos>")
            '<|user|>\\nHi\\n<|assistant|>\\nHello<eos>\\n<|user|>\\nBye\\n<|assistant|>\\n'
        """
        if messages is None:
            return self.preamble + self.user_turn.format(content=prompt) + self.assistant_prefix
        context = messages[:-1]
        parts = [] if context and context[0]["role"] == "system" else [self.preamble]
        for turn in context:
            role, content = turn["role"], turn["content"]
            if role == "system":
                parts.append(self.system_turn.format(content=content))
            elif role == "user":
                parts.append(self.user_turn.format(content=content))
            elif role == "assistant":
                parts.append(self.assistant_prefix + content + eos_token + self.assistant_turn_end)
            else:
                raise ValueError(f"Unknown message role {role!r}; allowed: 'system', 'user', 'assistant'.")
        parts.append(self.assistant_prefix)
        return "".join(parts)


_ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)

TEMPLATES: dict[str, PromptTemplate] = {
    "tulu": PromptTemplate(
        name="tulu",
        user_turn="<|user|>\n{content}\n",
        assistant_prefix="<|assistant|>\n",
        system_turn="<|system|>\n{content}\n",
    ),
    "alpaca": PromptTemplate(
        name="alpaca",
        user_turn="### Instruction:\n{content}\n\n",
        assistant_prefix="### Response:\n",
        system_turn="{content}\n\n",
        assistant_turn_end="\n\n",
        preamble=_ALPACA_PREAMBLE,
    ),
}
"""Format-string templates by name; add an entry to register a new one."""

TEMPLATE_NAMES = (*TEMPLATES, "chat", "auto")
"""Every name :func:`get_template` accepts (``chat`` and ``auto`` with a tokenizer)."""

_PROBE_PROMPT, _PROBE_REPLY = "Question?", "Answer."


def _conversation(prompt: str, messages: Sequence[Message] | None) -> list[dict[str, str]]:
    """The turns in front of the reply: ``messages[:-1]``, or one user turn holding ``prompt``."""
    if messages is None:
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]


@dataclass(frozen=True)
class ChatTemplate(PromptTemplate):
    """A tokenizer's own chat template (Jinja, rendered by ``tokenizer.apply_chat_template``).

    The prompt is the conversation before the reply rendered with ``add_generation_prompt=True``
    (whatever the template puts there, a default system prompt or BOS included); the response is the
    reply followed by the template's end-of-turn token (:meth:`end_of_turn_id`). The template must render a
    conversation ending in an assistant reply as that prompt followed by the reply
    (:meth:`check`): then prompt and response tokens are told apart exactly. ``chat_template`` (the
    Jinja source) is a field, so the template's digest in a scoring fingerprint changes with it.

    Build one with :meth:`from_tokenizer` or ``get_template("chat", tokenizer)``; the tokenizer that
    renders must be passed to :meth:`render_prompt`.

    Args:
        name: registry name (``"chat"``).
        chat_template: the Jinja source, ``tokenizer.chat_template``.

    Example:
        >>> from lead_lightning.models import train_bpe_tokenizer
        >>> tok = train_bpe_tokenizer(["hi"] * 10, vocab_size=300)
        >>> tok.chat_template = CHATML_EXAMPLE
        >>> t = get_template("chat", tok)
        >>> t.render_prompt("Add 2 and 3.", tokenizer=tok)
        '<|im_start|>user\\nAdd 2 and 3.<|im_end|>\\n<|im_start|>assistant\\n'
    """

    name: str = "chat"
    user_turn: str = ""
    assistant_prefix: str = ""
    chat_template: str = field(default="", repr=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatTemplate:
        """The tokenizer's chat template; an error with a HINT when it has none.

        Example:
            >>> from lead_lightning.models import train_bpe_tokenizer
            >>> tok = train_bpe_tokenizer(["hi"] * 10, vocab_size=300)
            >>> tok.chat_template = CHATML_EXAMPLE
            >>> ChatTemplate.from_tokenizer(tok).chat_template == CHATML_EXAMPLE
            True
        """
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # several named templates: the default one
            source = source.get("default")
        if not isinstance(source, str) or not source:
            raise ValueError(
                f"`template='chat'`: the tokenizer ({type(tokenizer).__name__}) has no chat template"
                " (`tokenizer.chat_template` is empty). HINT: use `template='auto'` (the chat template"
                f" when there is one, else tulu) or a format-string template: {sorted(TEMPLATES)}."
            )
        return cls(chat_template=source)

    def _render(self, tokenizer: Any, turns: list[dict[str, str]], generation_prompt: bool) -> str:
        if tokenizer is None:
            raise ValueError(
                "A chat template renders with its tokenizer: pass `tokenizer=` to `render_prompt`."
            )
        text = tokenizer.apply_chat_template(
            turns, chat_template=self.chat_template, tokenize=False, add_generation_prompt=generation_prompt
        )
        return str(text)

    def render_prompt(
        self,
        prompt: str,
        messages: Sequence[Message] | None = None,
        eos_token: str = "",
        tokenizer: Any = None,
    ) -> str:
        """Render the conversation before the reply, ending with the generation prompt.

        Args:
            prompt: the instruction, used when ``messages`` is ``None``.
            messages: a whole conversation whose last turn is the reply being trained on.
            eos_token: unused (the chat template closes earlier replies itself).
            tokenizer: the tokenizer whose ``apply_chat_template`` renders (required).
        """
        return self._render(tokenizer, _conversation(prompt, messages), generation_prompt=True)

    def reply_suffix(self, tokenizer: Any) -> str:
        """The text the template puts after an assistant reply (SmolLM2: ``"<|im_end|>\\n"``).

        Raises:
            ValueError: the template does not render a conversation ending in a reply as the
                generation prompt followed by the reply (prompt/response masking would not be exact).
        """
        turns = _conversation(_PROBE_PROMPT, None)
        prompt = self._render(tokenizer, turns, generation_prompt=True)
        full = self._render(tokenizer, [*turns, {"role": "assistant", "content": _PROBE_REPLY}], False)
        head = prompt + _PROBE_REPLY
        if not full.startswith(head):
            raise ValueError(
                "The tokenizer's chat template does not render a conversation ending in an assistant"
                f" reply as its generation prompt followed by the reply: prompt {prompt!r}, whole"
                f" conversation {full!r}. Prompt and response tokens could not be told apart exactly."
                f" HINT: use a format-string template ({sorted(TEMPLATES)}), or set"
                " `tokenizer.chat_template` to one whose generation prompt opens the reply."
            )
        return full[len(head) :]

    def end_of_turn_id(self, tokenizer: Any) -> int:
        """The token that closes a reply: the special token the template puts right after it
        (SmolLM2: ``<|im_end|>``, which is also its eos), else the tokenizer's eos.

        Example:
            >>> from lead_lightning.models import train_bpe_tokenizer
            >>> tok = train_bpe_tokenizer(["hi"] * 10, vocab_size=300)
            >>> tok.chat_template = CHATML_EXAMPLE
            >>> tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
            2
            >>> tok.convert_ids_to_tokens(get_template("chat", tok).end_of_turn_id(tok))
            '<|im_end|>'
        """
        suffix = self.reply_suffix(tokenizer)
        ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
        special = set(getattr(tokenizer, "all_special_ids", ()))
        if ids and int(ids[0]) in special:
            return int(ids[0])
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"The chat template closes a reply with {suffix!r}, which starts with no special token,"
                " and the tokenizer has no eos token. HINT: set `tokenizer.eos_token`."
            )
        return int(tokenizer.eos_token_id)


CHATML_EXAMPLE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""A minimal ChatML chat template (SmolLM2's without its default system prompt), for examples and tests."""


def get_template(template: str | PromptTemplate, tokenizer: Any = None) -> PromptTemplate:
    """Look a template up by name (a :class:`PromptTemplate` is returned as is).

    Args:
        template: ``"tulu"``, ``"alpaca"``, ``"chat"`` (the tokenizer's chat template), ``"auto"``
            (``chat`` when the tokenizer has a chat template, else ``tulu``) or a template object.
        tokenizer: needed by ``"chat"`` and ``"auto"``.

    Example:
        >>> get_template("alpaca").name
        'alpaca'
        >>> from lead_lightning.models import train_bpe_tokenizer
        >>> get_template("auto", train_bpe_tokenizer(["hi"] * 10, vocab_size=300)).name  # no chat template
        'tulu'
    """
    if isinstance(template, PromptTemplate):
        return template
    if template in ("chat", "auto"):
        if tokenizer is None:
            raise ValueError(
                f"`template={template!r}` is resolved from the tokenizer's chat template: pass the"
                f" tokenizer, `get_template({template!r}, tokenizer)`."
            )
        if template == "auto" and not getattr(tokenizer, "chat_template", None):
            return TEMPLATES["tulu"]
        return ChatTemplate.from_tokenizer(tokenizer)
    try:
        return TEMPLATES[template]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown `template` {template!r}; known templates: {sorted(TEMPLATES)}, and 'chat' (the"
            " tokenizer's chat template) or 'auto' (chat when the tokenizer has one, else tulu)."
        ) from None
