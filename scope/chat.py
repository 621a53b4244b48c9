"""The Gemma turn format for chat (instruction-tuned) models.

::

    <start_of_turn>user
    knock knock<end_of_turn>
    <start_of_turn>model
    who is there<end_of_turn>

Text is returned *without* the leading ``<bos>``: tokenization adds exactly one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
_ROLE_ALIASES = {"user": "user", "model": "model", "assistant": "model"}

Message = Mapping[str, str]


def format_chat(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """Render ``[{"role": ..., "content": ...}, ...]`` in the Gemma turn format.

    Roles are ``user`` and ``model`` (``assistant`` is accepted as ``model``), alternating
    and starting with ``user``. Gemma has no system role: a leading ``system`` message is
    folded into the first user turn as ``system + "\\n\\n" + user`` (what Gemma 3's official
    template does). Contents are stripped of surrounding whitespace, like the official
    template. With ``add_generation_prompt`` the text ends with ``<start_of_turn>model\\n``.
    """
    turns = _fold_system(_normalised(messages))
    parts = []
    for index, (role, content) in enumerate(turns):
        expected = "user" if index % 2 == 0 else "model"
        if role != expected:
            raise ValueError(
                f"Message {index} has role {role!r} but Gemma turns must alternate user/model, "
                f"starting with user (expected {expected!r})."
            )
        parts.append(f"{START_OF_TURN}{role}\n{content.strip()}{END_OF_TURN}\n")
    if add_generation_prompt:
        parts.append(f"{START_OF_TURN}model\n")
    return "".join(parts)


def is_messages(value: object) -> bool:
    """True for a chat message list (as opposed to a plain prompt string)."""
    return (
        not isinstance(value, str)
        and isinstance(value, Sequence)
        and len(value) > 0
        and all(isinstance(m, Mapping) for m in value)
    )


def _normalised(messages: Sequence[Message]) -> list[tuple[str, str]]:
    if isinstance(messages, str) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"Message {index} must be a dict with 'role' and 'content', got {message!r}.")
        role = message["role"]
        if role == "system":
            if index != 0:
                raise ValueError(f"Message {index}: a 'system' message is only allowed first.")
        elif role not in _ROLE_ALIASES:
            raise ValueError(
                f"Message {index} has unknown role {role!r}. Valid roles: 'user', 'model' "
                "('assistant' is accepted as 'model'), and a leading 'system'."
            )
        turns.append((_ROLE_ALIASES.get(role, role), str(message["content"])))
    return turns


def _fold_system(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if not turns or turns[0][0] != "system":
        return turns
    system = turns[0][1].strip()
    rest = turns[1:]
    if not rest or rest[0][0] != "user":
        return [("user", system)] + rest
    return [("user", f"{system}\n\n{rest[0][1].strip()}")] + rest[1:]
