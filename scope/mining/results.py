"""What a mining pass gives: :class:`Mined`, and the running buffers turned into its table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
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
    rank, column = torch.nonzero(top["values"] > 0, as_tuple=True)
    order = torch.argsort(column * top["k"] + rank)
    rank, column = rank[order], column[order]
    c = top["context"]
    context_ids, context_acts = top["tokens"][rank, column], top["acts"][rank, column]
    # Tens of thousands of rows for a wide SAE: few tokenizer calls and little Python per row.
    # Ids outside the text (-1) only ever sit at the ends of a context, so slices skip them.
    inside = context_ids >= 0
    first = (~inside[:, :c]).sum(1).tolist()
    last = (c + 1 + inside[:, c + 1 :].sum(1)).tolist()
    ids = context_ids.tolist()
    piece = _token_strings(model, torch.unique(context_ids[inside]).tolist())
    before = decode_many(model.tokenizer, [row[a:c] for row, a in zip(ids, first)])
    after = decode_many(model.tokenizer, [row[c + 1 : b] for row, b in zip(ids, last)])
    peak = [piece[row[c]] for row in ids]
    frame = pd.DataFrame(
        {
            "feature": selected[column].tolist(),
            "rank": (rank + 1).tolist(),
            "activation": top["values"][rank, column].tolist(),
            "text_id": top["text_id"][rank, column].tolist(),
            "position": top["position"][rank, column].tolist(),
            "token": peak,
            "context": [f"{b}{PEAK_OPEN}{p}{PEAK_CLOSE}{a}" for b, p, a in zip(before, peak, after)],
        },
        columns=COLUMNS,
    )
    return frame, context_ids, context_acts, piece


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
