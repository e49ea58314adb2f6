"""The one prompt template used for scoring, training and evaluation, chosen by name.

A template turns the context of an example (a single prompt, or the turns of a conversation before
its last assistant reply) into the text the model reads before the response. The response itself is
never part of the rendered prompt: the collator tokenizes it separately and appends the tokenizer's
eos token, so prompt and response tokens can be told apart exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["PromptTemplate", "TEMPLATES", "get_template"]


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
        messages: Sequence[Mapping[str, str]] | None = None,
        eos_token: str = "",
    ) -> str:
        """Render the text in front of the response.

        Args:
            prompt: the instruction, used when ``messages`` is ``None``.
            messages: a whole conversation whose last turn is the assistant reply being trained on;
                every turn before it is rendered (so multi-turn context and system prompts are kept).
            eos_token: text of the tokenizer's eos token, closing earlier assistant replies.

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
"""Templates by name; add an entry to register a new one."""


def get_template(template: str | PromptTemplate) -> PromptTemplate:
    """Look a template up by name (a :class:`PromptTemplate` is returned as is).

    Example:
        >>> get_template("alpaca").name
        'alpaca'
    """
    if isinstance(template, PromptTemplate):
        return template
    try:
        return TEMPLATES[template]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown `template` {template!r}; known templates: {sorted(TEMPLATES)}.") from None
