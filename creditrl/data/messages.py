"""Conversational prompts: validation of message lists, the system prompt, rendering through the chat template.

A prompt is either text or a list of messages, as TRL's conversational datasets and verl's parquet files have
it: ``[{"role": "system", "content": "..."}, {"role": "user", "content": "..."}, ...]``. Each message is a dict
with a string ``role`` in system / user / assistant / tool and a string ``content``; other keys are kept (null
ones, which `datasets` adds when rows have different keys, are dropped). The last turn must not be an assistant
turn: that conversation is complete and there is nothing left to generate.

A message list is rendered with ``tokenizer.apply_chat_template(messages, tokenize=False,
add_generation_prompt=True)``. `data.system_prompt` is prepended as a system message unless the row's messages
already start with a system turn (the row's own system turn wins).
"""

from __future__ import annotations

from typing import Any

from creditrl.data.errors import DataError

ROLES = ("system", "user", "assistant", "tool")


def is_message_list(value: Any) -> bool:
    """True for a list (or tuple) value: such a prompt must be a message list (then validated)."""
    return isinstance(value, (list, tuple))


def validate_messages(value: Any, where: str, field_desc: str) -> list[dict]:
    """The messages of `value` as plain dicts; a DataError naming `where` (file and row) and `field_desc` (the
    field and its recipe key) says what is wrong and how to fix it."""
    where = f"{where}: " if where else ""
    fix = "Fix: each message is {\"role\": \"system\"|\"user\"|\"assistant\"|\"tool\", \"content\": \"text\"}"
    if not value:
        raise DataError(f"{where}{field_desc} is an empty list of messages. {fix}; give at least one user turn.")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(f"{where}{field_desc}: message {j} is a {type(m).__name__}, not a "
                            f"{{role, content}} dict ({str(m)[:60]!r}). {fix}.")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise DataError(f"{where}{field_desc}: message {j} has role {role!r}; roles are "
                            f"{', '.join(ROLES)}. {fix}.")
        if not isinstance(content, str):
            what = "no content (null or missing)" if content is None else f"content of type {type(content).__name__}"
            raise DataError(f"{where}{field_desc}: message {j} ({role}) has {what}; content must be text. {fix}.")
        out.append({k: v for k, v in m.items() if v is not None})
    if out[-1]["role"] == "assistant":
        raise DataError(f"{where}{field_desc}: the last message is an assistant turn, so the conversation is "
                        f"already complete and there is nothing to generate. Fix: end the prompt with a user (or "
                        f"tool) turn; keep a reference reply in another column (e.g. for sft.answer_field).")
    if not any(m["content"].strip() for m in out):
        raise DataError(f"{where}{field_desc}: every message is empty. Fix: fill in the content or remove the row.")
    return out


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """`messages` with `system_prompt` as a first system turn, unless they already start with one (that wins)."""
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def require_chat_template(tokenizer, why: str) -> None:
    """A DataError naming the tokenizer's path when it has no chat template; `why` says what needs it."""
    if not has_chat_template(tokenizer):
        path = getattr(tokenizer, "name_or_path", "") or "(unnamed)"
        raise DataError(f"{why}, but the tokenizer of {path} has no chat template. Fix: use a tokenizer with "
                        f"chat_template in its tokenizer_config.json (an instruct/chat model), or give text prompts "
                        f"with a format template like data.template: '{{prompt}}' and no data.system_prompt.")


def render_chat(tokenizer, messages: list[dict], where: str) -> str:
    """The chat template's text of `messages` with the generation prompt (the assistant turn opener)."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - jinja templates raise what they like (e.g. "system role not supported")
        path = getattr(tokenizer, "name_or_path", "") or "(unnamed)"
        raise DataError(f"{where}: the chat template of the tokenizer of {path} rejects these messages "
                        f"({type(e).__name__}: {str(e)[:200]}). Fix: adapt the messages (some templates allow no "
                        f"system turn: drop data.system_prompt) or use another template.") from None
    if not isinstance(text, str):  # transformers may return a list for batched input
        raise DataError(f"{where}: the chat template returned {type(text).__name__}, not text")
    return text
