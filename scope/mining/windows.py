"""The examples a corpus is mined in: windows of at most ``window`` tokens, each read with its own BOS.

A text is cut into windows of ``window - 1`` tokens, each read with a BOS in front (as SAEs are
trained). A token right after that BOS sees no context, so its activations are artifacts of where
the text was cut (the same on any token, wherever the cut fell). So every window after a text's
first starts ``overlap`` tokens before the previous one ends: those first ``overlap`` tokens are
run as context only (never scored: no top examples, densities or histogram counts), and every
token of the text is scored exactly once, in a window where it has at least ``overlap`` tokens
before it (or all of them, near the text's true start). ``overlap=0`` cuts without overlap.
Positions count in the whole text's tokens with BOS at 0, as :func:`scope.encode` numbers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from scope import _checks
from scope.inputs import pad, pad_id

MAX_DEFAULT_OVERLAP = 32  # tokens; the default is an eighth of the window, at most this


@dataclass
class Window:
    """``tokens`` (no BOS) of text ``text_id``, starting at text position ``start`` (BOS = 0); the
    first ``context_only`` of them are read as context only (they were scored in the window before)."""

    text_id: int
    start: int
    tokens: list[int]
    context_only: int = 0


def iter_windows(
    model,
    texts: Iterable[str],
    window: int,
    keep: Callable[[str], bool] | None = None,
    overlap: int | None = None,
) -> Iterator[Window]:
    """Every text cut into windows of at most ``window - 1`` tokens (each window gets a BOS), each
    after a text's first overlapping the one before by ``overlap`` context-only tokens (None:
    :func:`default_overlap`); with ``keep``, only the texts it accepts (``text_id`` still counts
    every text)."""
    size = check_window(window) - 1
    overlap = check_overlap(overlap, window)
    for text_id, text in enumerate(texts):
        if keep is not None and not keep(text):
            continue
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        offset = 0
        while offset < len(ids):
            context_only = overlap if offset else 0
            yield Window(
                text_id=text_id, start=1 + offset, tokens=ids[offset : offset + size], context_only=context_only
            )
            if offset + size >= len(ids):
                break
            offset += size - overlap


def check_window(window: Any) -> int:
    window = _checks.integer(window, "window")
    if window < 2:
        raise ValueError(f"window must be an integer >= 2 (tokens per example with its BOS), got {window!r}.")
    return window


def default_overlap(window: int) -> int:
    """Context-only tokens at the start of a text's later windows when none is asked: an eighth of
    the window, at most :data:`MAX_DEFAULT_OVERLAP` (16 for the default 128-token window)."""
    return min(window // 8, MAX_DEFAULT_OVERLAP)


def check_overlap(overlap: Any, window: int) -> int:
    """``overlap`` (None: the default for ``window``), checked to leave each window a scored token."""
    if overlap is None:
        return default_overlap(window)
    overlap = _checks.integer(overlap, "overlap")
    if not 0 <= overlap < window - 1:
        raise ValueError(
            f"overlap must be an integer from 0 to {window - 2} (window - 2: each window of {window} tokens, "
            f"BOS included, keeps at least one token to score), got {overlap!r}."
        )
    return overlap


def batch_tokens(model, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, pos]`` ids with BOS first and right padding (causal attention keeps padding from
    touching real tokens), and a mask of the real text tokens (not BOS, not padding)."""
    bos = model.tokenizer.bos_token_id
    tokens, real = pad([torch.tensor([bos, *w.tokens]) for w in batch], pad_id(model), side="right")
    mask = real.bool()
    mask[:, 0] = False  # BOS
    return tokens, mask
