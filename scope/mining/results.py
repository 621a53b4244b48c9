"""What a mining pass gives: :class:`Mined`, and the running buffers turned into its table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from scope.labels import PEAK_CLOSE, PEAK_OPEN

DEFAULT_CONTEXT = 8  # tokens shown either side of a peak, in tables and on feature pages

COLUMNS = ["feature", "rank", "activation", "text_id", "position", "token", "context"]


@dataclass
class Mined:
    """What one pass over a corpus gives: the top examples and every feature's activity."""

    examples: pd.DataFrame
    features: list[int]
    n_tokens: int
    density: torch.Tensor  # [features], fraction of text tokens where the feature fires
    histogram: torch.Tensor  # [features, bins] counts of non-zero activations
    histogram_edges: torch.Tensor  # [bins + 1]
    context_ids: torch.Tensor  # [rows of ``examples``, 2 * context + 1] token ids around the peak, -1 outside the text
    context_acts: torch.Tensor  # [rows, 2 * context + 1] the feature's activation on each of those tokens
    token_strings: dict[int, str]  # every id in ``context_ids``, decoded on its own

    def span(self, row: int) -> tuple[list[str], list[float]]:
        """The tokens of row ``row``'s context (peak in the middle; nothing outside the text) and
        the feature's activation on each, as a feature page shades them."""
        ids, acts = self.context_ids[row].tolist(), self.context_acts[row].tolist()
        keep = [i for i, t in enumerate(ids) if t >= 0]
        return [self.token_strings[ids[i]] for i in keep], [acts[i] for i in keep]


def frame_of(
    model, top: dict[str, Any], selected: torch.Tensor
) -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor, dict[int, str]]:
    """The buffers (:meth:`RunningTopK.state`) as rows (features in the order asked, only activations above zero), the
    rows' context ids and activations, and the decoded string of every id in them."""
    k, n_features = top["values"].shape
    column, rank = torch.nonzero(top["values"].t() > 0, as_tuple=True)  # by feature, then rank
    flat = rank * n_features + column  # rows of the [k * features] buffers, read with index_select

    def rows_of(buffer: torch.Tensor) -> torch.Tensor:
        return buffer.reshape(k * n_features, *buffer.shape[2:]).index_select(0, flat)

    context_ids, context_acts = rows_of(top["tokens"]), rows_of(top["acts"])
    text_id, position = rows_of(top["text_id"]), rows_of(top["position"])
    first, inverse = _distinct_contexts(text_id, position, context_ids)
    distinct = context_ids[torch.from_numpy(first)]
    piece = _token_strings(model, torch.unique(distinct[distinct >= 0]).tolist())
    token, context = _peak_strings(model.tokenizer, distinct, inverse, top["context"], piece)
    frame = pd.DataFrame(
        {
            "feature": selected[column].numpy(),
            "rank": (rank + 1).numpy(),
            "activation": rows_of(top["values"]).double().numpy(),
            "text_id": text_id.numpy(),
            "position": position.numpy(),
            "token": token,
            "context": context,
        },
        columns=COLUMNS,
    )
    return frame, context_ids, context_acts, piece


def _distinct_contexts(
    text_id: torch.Tensor, position: torch.Tensor, context_ids: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """The first row of each distinct context and, per row, which distinct context it shows.

    A wide SAE's table has k x F rows but far fewer distinct examples: features peaking on the same
    token of the same window share its context. A token is read in one window only (see
    :mod:`scope.mining.windows`), so ``(text_id, position)`` names the context."""
    rows = len(position)
    key = text_id.numpy() * (int(position.max()) + 1 if rows else 1) + position.numpy()
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if not torch.equal(context_ids, context_ids[torch.from_numpy(first)][torch.from_numpy(inverse)]):
        return np.arange(rows), np.arange(rows)  # never, but stay exact
    return first, inverse


def _peak_strings(
    tokenizer, ids: torch.Tensor, inverse: np.ndarray, c: int, piece: dict[int, str]
) -> tuple[pd.Series, pd.Series]:
    """Each row's peak token and context (``before⟦peak⟧after``) as string columns, from the
    distinct contexts ``ids`` [distinct, 2 * c + 1] and the one each row shows (``inverse``):
    each distinct one is decoded once and the columns are gathered in Arrow, not built per row."""
    # Ids outside the text (-1) only ever sit at the ends of a context, so slices skip them.
    inside = ids >= 0
    lo = (~inside[:, :c]).sum(1).tolist()
    hi = (c + 1 + inside[:, c + 1 :].sum(1)).tolist()
    spans = ids.tolist()
    before = decode_many(tokenizer, [span[a:c] for span, a in zip(spans, lo)])
    after = decode_many(tokenizer, [span[c + 1 : b] for span, b in zip(spans, hi)])
    peak = [piece[span[c]] for span in spans]
    context = [f"{b}{PEAK_OPEN}{p}{PEAK_CLOSE}{a}" for b, p, a in zip(before, peak, after)]
    take = pa.array(inverse)
    return _string_column(pa.array(peak, pa.string()).take(take)), _string_column(
        pa.array(context, pa.string()).take(take)
    )


def _string_column(array: pa.Array) -> pd.Series:
    """An Arrow string array as pandas' default string column (what a list of str becomes)."""
    return pd.Series(array, dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def _token_strings(model, ids: list[int]) -> dict[int, str]:
    """Each token id decoded on its own (``" the"``), in one tokenizer call."""
    return dict(zip(ids, decode_many(model.tokenizer, [[i] for i in ids])))


def decode_many(tokenizer, sequences: list[list[int]]) -> list[str]:
    """``tokenizer.batch_decode(sequences)`` without its per-item Python checks, which cost more
    than the decoding: a fast tokenizer that cleans up no spaces decodes in its Rust backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.clean_up_tokenization_spaces:
        return tokenizer.batch_decode(sequences)
    return backend.decode_batch(sequences, skip_special_tokens=False)
