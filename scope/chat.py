"""The Gemma turn format for chat (instruction-tuned) models.

::

    <start_of_turn>user
    knock knock<end_of_turn>
    <start_of_turn>model
    who is there<end_of_turn>

Text is returned *without* the leading ``<bos>``: tokenization adds exactly one.

Message contents are text, never markup: a ``"<start_of_turn>"`` typed into a message must not
open a turn. :func:`chat_segments` keeps the template's control tokens apart from the text, so
that tokenization (:func:`scope.inputs.to_tokens`) turns only the template's control tokens into
control ids and reads contents with control-token strings split as plain text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
# Gemma's media markers: control tokens of the vocabulary that its tokenizers do not mark special
# (Gemma 3 marks <start_of_image> as a plain added token), so skip_special_tokens keeps them.
MEDIA_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "[multimodal]")
_ROLE_ALIASES = {"user": "user", "model": "model", "assistant": "model"}

Message = Mapping[str, str]
Segment = tuple[str, bool]  # (text, is_control_token)


def format_chat(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """Render ``[{"role": ..., "content": ...}, ...]`` in the Gemma turn format.

    Roles are ``user`` and ``model`` (``assistant`` is accepted as ``model``), alternating
    and starting with ``user``. Gemma has no system role: a leading ``system`` message is
    folded into the first user turn as ``system + "\\n\\n" + user`` (what Gemma 3's official
    template does). Contents are stripped of surrounding whitespace, like the official
    template. With ``add_generation_prompt`` the text ends with ``<start_of_turn>model\\n``.
    Contents must be strings (scope has no tool calls, so ``None`` is refused too).

    The string cannot tell a typed ``"<end_of_turn>"`` from the template's: tokenize a chat with
    :func:`scope.inputs.to_tokens` (which reads :func:`chat_segments`), not from this string.
    """
    return "".join(text for text, _ in chat_segments(messages, add_generation_prompt))


def chat_segments(messages: Sequence[Message], add_generation_prompt: bool = True) -> list[Segment]:
    """:func:`format_chat`'s text as ``(text, is_control_token)`` pieces, in order.

    The control tokens are the template's ``<start_of_turn>`` and ``<end_of_turn>``; everything
    between them (role names, newlines and the message contents) is text, to be tokenized as
    text even where a content spells a control token.
    """
    turns = _fold_system(_normalised(messages))
    segments: list[Segment] = []
    for index, (role, content) in enumerate(turns):
        expected = "user" if index % 2 == 0 else "model"
        if role != expected:
            raise ValueError(
                f"Message {index} has role {role!r} but Gemma turns must alternate user/model, "
                f"starting with user (expected {expected!r})."
            )
        segments += [(START_OF_TURN, True), (f"{role}\n{content.strip()}", False), (END_OF_TURN, True), ("\n", False)]
    if add_generation_prompt:
        segments += [(START_OF_TURN, True), ("model\n", False)]
    return segments


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
        turns.append((_ROLE_ALIASES.get(role, role), _content(index, message["content"])))
    return turns


def _content(index: int, content: object) -> str:
    """A message's text. ``None`` is refused, not read as "None": OpenAI allows it only for an
    assistant turn that calls tools, and scope has no tools, so that turn's meaning would be lost."""
    if isinstance(content, str):
        return content
    if content is None:
        raise TypeError(
            f"Message {index} has content None: every message needs text content (scope has no "
            "tool calls, the one case where OpenAI allows None)."
        )
    raise TypeError(f"Message {index} content must be a string, got {type(content).__name__}: {content!r:.80}.")


def _fold_system(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if not turns or turns[0][0] != "system":
        return turns
    system = turns[0][1].strip()
    rest = turns[1:]
    if not rest or rest[0][0] != "user":
        return [("user", system)] + rest
    return [("user", f"{system}\n\n{rest[0][1].strip()}")] + rest[1:]
