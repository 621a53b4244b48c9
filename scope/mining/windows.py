"""The examples a corpus is mined in: windows of at most ``window`` tokens, each read with its own BOS.

A text is cut into consecutive pieces of ``window - 1`` tokens; each piece is one example, read
with a BOS in front (as SAEs are trained). Positions count in the whole text's tokens with BOS at
0, as :func:`scope.encode` numbers them. Any rule about which windows or positions to read (a
window's first tokens see no context) belongs here, in :func:`iter_windows`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from scope import _checks
from scope.inputs import pad, pad_id


@dataclass
class Window:
    """``tokens`` (no BOS) of text ``text_id``, starting at text position ``start`` (BOS = 0)."""

    text_id: int
    start: int
    tokens: list[int]


def iter_windows(
    model, texts: Iterable[str], window: int, keep: Callable[[str], bool] | None = None
) -> Iterator[Window]:
    """Every text cut into windows of at most ``window - 1`` tokens (each window gets a BOS);
    with ``keep``, only the texts it accepts (``text_id`` still counts every text)."""
    size = check_window(window) - 1
    for text_id, text in enumerate(texts):
        if keep is not None and not keep(text):
            continue
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        for offset in range(0, len(ids), size):
            yield Window(text_id=text_id, start=1 + offset, tokens=ids[offset : offset + size])


def check_window(window: Any) -> int:
    window = _checks.integer(window, "window")
    if window < 2:
        raise ValueError(f"window must be an integer >= 2 (tokens per example with its BOS), got {window!r}.")
    return window


def batch_tokens(model, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, pos]`` ids with BOS first and right padding (causal attention keeps padding from
    touching real tokens), and a mask of the real text tokens (not BOS, not padding)."""
    bos = model.tokenizer.bos_token_id
    tokens, real = pad([torch.tensor([bos, *w.tokens]) for w in batch], pad_id(model), side="right")
    mask = real.bool()
    mask[:, 0] = False  # BOS
    return tokens, mask
