"""The one input normaliser: a text, a chat or a list of them becomes tokens, by one rule.

- A text gets exactly one BOS (a leading ``<bos>`` in the string is not doubled).
- A chat (``[{"role": "user", "content": ...}, ...]``) is rendered in the Gemma turn format,
  ending with the model's turn (:func:`scope.chat.format_chat`). Only the template adds control
  tokens: message contents are text, so a ``"<end_of_turn>"`` typed into one is tokenized as
  the characters it spells (``split_special_tokens``), and cannot close or open a turn.
- A plain text is raw text by definition: control tokens spelled in it are parsed as control
  tokens (a completion prompt may build its own turns).
- Generated text (:func:`decode`) leaves control tokens out; their ids stay in the token lists.
- A text longer than the model's context is an error that names both lengths; nothing is
  cut silently (long corpora go through :func:`scope.mine`, which windows them).
- Batches are padded on the left (generation, scoring: every row's last token at -1) or on
  the right (reading: positions start at 0), with the mask of real tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import torch

from scope.chat import MEDIA_TOKENS, chat_segments, format_chat, is_messages

Message = Mapping[str, str]
TextOrMessages = Union[str, Sequence[Message]]


def as_text(text: Any, name: str = "text") -> str:
    """A prompt string from a string or a chat message list (without a leading BOS)."""
    if is_messages(text):
        return format_chat(text, add_generation_prompt=True)
    if isinstance(text, str):
        return text
    raise TypeError(f"{name} must be a string or a list of {{'role', 'content'}} messages, got {type(text).__name__}.")


def to_tokens(model: Any, text: Any, *, reserve: int = 0, name: str = "text") -> torch.Tensor:
    """Tokens ``[1, pos]`` of a text or chat, with exactly one BOS, on the model's device.

    ``reserve``: positions that must stay free after the text (tokens still to generate).
    Raises ValueError when the text (plus ``reserve``) does not fit the model's context.
    """
    if is_messages(text):
        ids = [model.tokenizer.bos_token_id, *chat_token_ids(model.tokenizer, text)]
        tokens = torch.tensor([ids], dtype=torch.long, device=model.cfg.device)
    else:
        prompt = as_text(text, name)
        bos = model.tokenizer.bos_token
        if bos and prompt.startswith(bos):  # tokenization adds the one BOS
            prompt = prompt[len(bos) :]
        tokens = model.to_tokens(prompt, prepend_bos=True, truncate=False)
    check_length(model, tokens.shape[1], reserve=reserve, name=name)
    return tokens


def chat_token_ids(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    """A chat's token ids, without BOS: the template's control tokens as their ids, every other
    piece (roles, contents, newlines) as text, control-token strings in it split like any text.

    For contents without control-token strings the ids equal tokenizing :func:`format_chat`'s
    string (a control token splits a text there too, so the pieces tokenize alike)."""
    ids: list[int] = []
    for text, control in chat_segments(messages, add_generation_prompt):
        if control:
            ids.append(control_token_id(tokenizer, text))
        else:
            ids += tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids


def control_token_id(tokenizer: Any, token: str) -> int:
    """The id of a control token such as ``<start_of_turn>``; ValueError when the tokenizer has none."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or found == tokenizer.unk_token_id:
        raise ValueError(f"This tokenizer has no {token!r} token: it cannot render Gemma chat turns.")
    return found


def check_length(model: Any, length: int, *, reserve: int = 0, name: str = "text") -> None:
    """ValueError unless ``length`` tokens (plus ``reserve``) fit the model's context."""
    n_ctx = model.cfg.n_ctx
    if length + reserve <= n_ctx:
        return
    if reserve:
        raise ValueError(
            f"The {name} has {length} tokens; with max_new_tokens={reserve} that exceeds the "
            f"model's context of {n_ctx} tokens. Shorten it or lower max_new_tokens "
            f"(at most {max(n_ctx - length, 0)} here)."
        )
    raise ValueError(
        f"The {name} has {length} tokens, more than the model's context of {n_ctx}; nothing "
        "is cut silently. Split it, or use scope.mine, which reads long texts in windows."
    )


def str_tokens(model: Any, tokens: torch.Tensor) -> list[str]:
    """Each token id of a 1-D tensor decoded on its own (``" the"``, not ``"▁the"``)."""
    return list(model.to_str_tokens(tokens))


def pad(
    sequences: Sequence[torch.Tensor], pad_id: int, *, side: Literal["left", "right"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D token tensors as one ``[batch, pos]`` tensor padded on ``side``, and the mask of real
    tokens (``[batch, pos]`` long, 1 = token). transformer-lens derives rotary positions from
    the mask, so a left-padded row sees the positions it would see alone."""
    tokens = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True, padding_value=pad_id, padding_side=side)
    ones = [torch.ones(len(s), dtype=torch.long) for s in sequences]
    mask = torch.nn.utils.rnn.pad_sequence(ones, batch_first=True, padding_value=0, padding_side=side)
    return tokens, mask


def pad_id(model: Any) -> int:
    """The tokenizer's padding id (0 when it has none)."""
    value = model.tokenizer.pad_token_id
    return int(value) if value is not None else 0


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Generated ids as text, control tokens left out (``<start_of_image>`` and the like, which
    strong steering can push a model into emitting); the ids themselves are kept by callers."""
    control = control_ids(tokenizer)
    return tokenizer.decode([i for i in ids if i not in control], skip_special_tokens=True)


@functools.lru_cache(maxsize=8)  # decode runs per generated token; a vocabulary has thousands of added tokens
def control_ids(tokenizer: Any) -> frozenset[int]:
    """The tokenizer's special tokens, its added tokens marked special, and Gemma's media markers."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    media = {i for i in map(tokenizer.convert_tokens_to_ids, MEDIA_TOKENS) if isinstance(i, int)}
    special = {int(i) for i, token in added.items() if token.special}
    return frozenset(tokenizer.all_special_ids) | special | (media - {tokenizer.unk_token_id})
