"""Top-activating examples: the texts (or windows of long texts) where each feature fires hardest.

One pass over a corpus, in batches: the model runs only up to the SAE's hook, every feature's
per-example maximum is merged into running top-k buffers of shape ``[k, n_features]``, so memory
is bounded by batch size x width and k x width, never by the corpus. The tokens around each
buffered peak are kept in the buffer too, which is what lets the pass stream.

An example is one window: a text cut into pieces of at most ``window`` tokens, each read with
its own BOS (as SAEs are trained). Positions count in the whole text's tokens with BOS at 0, as
:func:`scope.encode` numbers them; padding and BOS never appear in results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from scope.features import _check_feature, _check_k, run_to_hooks
from scope.saes import check_width, sae_hook

COLUMNS = ["feature", "rank", "activation", "text_id", "position", "token", "context"]
PEAK_OPEN, PEAK_CLOSE = "\u27e6", "\u27e7"  # ⟦peak token⟧ inside a context string


@dataclass
class Window:
    """``tokens`` (no BOS) of text ``text_id``, starting at text position ``start`` (BOS = 0)."""

    text_id: int
    start: int
    tokens: list[int]


# ----------------------------------------------------------------------------- reading a corpus


def iter_texts(texts: Any) -> Iterator[str]:
    """Strings from an iterable of strings, a ``datasets`` dataset with a ``text`` column, or a
    local file: ``.txt`` (one text per line), ``.jsonl`` (a ``text`` field) or ``.parquet``."""
    if isinstance(texts, (str, os.PathLike)):
        yield from _read_file(Path(texts))
        return
    if hasattr(texts, "column_names"):  # a Hugging Face dataset
        if "text" not in texts.column_names:
            raise ValueError(f"The dataset has no 'text' column; its columns are {texts.column_names}.")
        texts = (row["text"] for row in texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must hold strings; item {i} is a {type(text).__name__}.")
        yield text


def _read_file(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise FileNotFoundError(f"No corpus file at {path}. Pass a .txt, .jsonl or .parquet file, "
                                "or an iterable of strings.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
            yield from batch.column("text").to_pylist()
    elif suffix in (".jsonl", ".json"):
        with path.open() as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["text"]
    elif suffix == ".txt":
        with path.open() as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")
    else:
        raise ValueError(f"Unknown corpus file type {suffix!r} for {path}; use .txt, .jsonl or .parquet.")


def iter_windows(model, texts: Iterable[str], window: int) -> Iterator[Window]:
    """Every text cut into windows of at most ``window - 1`` tokens (each window gets a BOS)."""
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an integer >= 2 (tokens per example with its BOS), got {window!r}.")
    size = window - 1
    for text_id, text in enumerate(texts):
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        for offset in range(0, len(ids), size):
            yield Window(text_id=text_id, start=1 + offset, tokens=ids[offset:offset + size])


def batches(items: Iterable[Window], size: int) -> Iterator[list[Window]]:
    batch: list[Window] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------- running top-k


class RunningTopK:
    """Per feature, the ``k`` largest example maxima seen so far, with where they peaked and
    the token ids around the peak (``-1`` beyond the window's edges)."""

    def __init__(self, n_features: int, k: int, context: int):
        self.k, self.context = k, context
        self.values = torch.full((k, n_features), float("-inf"))
        self.text_id = torch.full((k, n_features), -1, dtype=torch.long)
        self.position = torch.full((k, n_features), -1, dtype=torch.long)
        self.tokens = torch.full((k, n_features, 2 * context + 1), -1, dtype=torch.int32)

    def update(self, values: torch.Tensor, text_id: torch.Tensor, position: torch.Tensor,
               tokens: torch.Tensor) -> None:
        """Merge a batch: ``values``/``position`` [batch, features], ``text_id`` [batch],
        ``tokens`` [batch, features, 2 * context + 1]."""
        all_values = torch.cat([self.values, values])
        # Stable order for equal maxima: earlier examples first, so results never depend on batching.
        order = torch.sort(all_values, dim=0, descending=True, stable=True).indices[: self.k]
        self.values = torch.gather(all_values, 0, order)
        self.text_id = torch.gather(torch.cat([self.text_id, text_id[:, None].expand_as(values)]), 0, order)
        self.position = torch.gather(torch.cat([self.position, position]), 0, order)
        expanded = order[..., None].expand(-1, -1, self.tokens.shape[-1])
        self.tokens = torch.gather(torch.cat([self.tokens, tokens]), 0, expanded)


def _batch_tokens(model, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, pos]`` ids with BOS first and right padding (causal attention keeps padding from
    touching real tokens), and a mask of the real text tokens (not BOS, not padding)."""
    length = 1 + max(len(w.tokens) for w in batch)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(batch), length), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.bool)
    tokens[:, 0] = model.tokenizer.bos_token_id
    for row, w in enumerate(batch):
        tokens[row, 1:1 + len(w.tokens)] = torch.tensor(w.tokens, dtype=torch.long)
        mask[row, 1:1 + len(w.tokens)] = True
    return tokens, mask


def _contexts(tokens: torch.Tensor, mask: torch.Tensor, peak: torch.Tensor, context: int) -> torch.Tensor:
    """Token ids around each peak ``[batch, features, 2 * context + 1]``; -1 outside the text."""
    shown = torch.where(mask, tokens, -1).to(torch.int32)
    padded = torch.nn.functional.pad(shown, (context, context), value=-1)
    offsets = torch.arange(2 * context + 1)
    index = peak[..., None] + offsets  # position p sits at p + context in ``padded``
    return torch.gather(padded[:, None, :].expand(-1, peak.shape[1], -1), 2, index)


# ----------------------------------------------------------------------------- the public entry


def top_examples(model, sae, texts: Any, *, features: Sequence[int] | None = None, k: int = 20,
                 context: int = 8, out: str | os.PathLike | None = None, window: int = 128,
                 batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """The ``k`` examples where each feature fires hardest over ``texts``.

    ``texts``: an iterable of strings, a ``datasets`` dataset, or a .txt/.jsonl/.parquet file.
    Long texts are cut into windows of ``window`` tokens (BOS included). An example's activation
    is its maximum over its tokens. Returns DataFrame(feature, rank, activation, text_id,
    position, token, context): ``context`` shows ``context`` tokens either side of the peak, the
    peak marked ⟦like this⟧. Features that never fire get no rows. ``out``: also write the
    table to this Parquet path (atomically).
    """
    _check_k(k)
    if not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be a non-negative integer (tokens either side), got {context!r}.")
    selected = _selected_features(sae, features)
    hook = sae_hook(sae)
    top = RunningTopK(len(selected), k, context)
    windows = iter_windows(model, iter_texts(texts), window)
    for batch in tqdm(batches(windows, batch_size), desc="top examples", unit="batch", disable=not progress):
        tokens, mask = _batch_tokens(model, batch)
        act = run_to_hooks(model, tokens, [hook])[hook]
        check_width(model, sae, tuple(act.shape[2:]))
        with torch.no_grad():
            acts = sae.encode(act)[..., selected].float()  # [batch, pos, features]
        acts = acts.masked_fill(~mask[..., None], float("-inf"))
        values, peak = acts.max(dim=1)  # [batch, features]
        starts = torch.tensor([w.start for w in batch])
        top.update(values, torch.tensor([w.text_id for w in batch]), starts[:, None] + peak - 1,
                   _contexts(tokens, mask, peak, context))
    frame = _frame(model, top, selected)
    if out is not None:
        write_parquet(frame, out)
    return frame


def _selected_features(sae, features: Sequence[int] | None) -> torch.Tensor:
    if features is None:
        return torch.arange(sae.cfg.d_sae)
    if isinstance(features, int):
        features = [features]
    chosen = [_check_feature(sae, f) for f in features]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"features lists a feature twice: {list(features)}.")
    return torch.tensor(chosen, dtype=torch.long)


def _frame(model, top: RunningTopK, selected: torch.Tensor) -> pd.DataFrame:
    """The buffers as rows, features in the order asked, only activations above zero."""
    rank, column = torch.nonzero(top.values > 0, as_tuple=True)
    order = torch.argsort(column * top.k + rank)
    rank, column = rank[order], column[order]
    c = top.context
    contexts = top.tokens[rank, column].tolist()
    frame = pd.DataFrame({
        "feature": selected[column].tolist(),
        "rank": (rank + 1).tolist(),
        "activation": top.values[rank, column].tolist(),
        "text_id": top.text_id[rank, column].tolist(),
        "position": top.position[rank, column].tolist(),
        "token": _decode_each(model, [ids[c] for ids in contexts]),
        "context": [_render_context(model, ids, c) for ids in contexts],
    }, columns=COLUMNS)
    return frame


def _decode_each(model, ids: list[int]) -> list[str]:
    return model.tokenizer.batch_decode([[i] for i in ids]) if ids else []


def _render_context(model, ids: list[int], center: int) -> str:
    before = [i for i in ids[:center] if i >= 0]
    after = [i for i in ids[center + 1:] if i >= 0]
    decode = model.tokenizer.decode
    return f"{decode(before)}{PEAK_OPEN}{decode([ids[center]])}{PEAK_CLOSE}{decode(after)}"


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` to ``path`` via a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
