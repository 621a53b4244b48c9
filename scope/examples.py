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

import itertools
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
    """Per feature, the ``k`` largest example maxima seen so far, with where they peaked, the
    token ids around the peak (``-1`` beyond the window's edges) and the feature's activations
    on those tokens."""

    def __init__(self, n_features: int, k: int, context: int):
        self.k, self.context = k, context
        span = 2 * context + 1
        self.values = torch.full((k, n_features), float("-inf"))
        self.text_id = torch.full((k, n_features), -1, dtype=torch.long)
        self.position = torch.full((k, n_features), -1, dtype=torch.long)
        self.tokens = torch.full((k, n_features, span), -1, dtype=torch.int32)
        self.acts = torch.zeros((k, n_features, span))

    def update(self, values: torch.Tensor, text_id: torch.Tensor, position: torch.Tensor,
               tokens: torch.Tensor, acts: torch.Tensor) -> None:
        """Merge a batch: ``values``/``position`` [batch, features], ``text_id`` [batch],
        ``tokens``/``acts`` [batch, features, 2 * context + 1]."""
        all_values = torch.cat([self.values, values])
        # Stable order for equal maxima: earlier examples first, so results never depend on batching.
        order = torch.sort(all_values, dim=0, descending=True, stable=True).indices[: self.k]
        self.values = torch.gather(all_values, 0, order)
        self.text_id = torch.gather(torch.cat([self.text_id, text_id[:, None].expand_as(values)]), 0, order)
        self.position = torch.gather(torch.cat([self.position, position]), 0, order)
        spans = order[..., None].expand(-1, -1, self.tokens.shape[-1])
        self.tokens = torch.gather(torch.cat([self.tokens, tokens]), 0, spans)
        self.acts = torch.gather(torch.cat([self.acts, acts]), 0, spans)


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


def _contexts(tokens: torch.Tensor, mask: torch.Tensor, acts: torch.Tensor, peak: torch.Tensor,
              context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[batch, features, 2 * context + 1]`` around each peak (-1 outside the text)
    and the feature's activations on them (0 outside)."""
    offsets = torch.arange(2 * context + 1)
    index = peak[..., None] + offsets  # position p sits at p + context once padded
    shown = torch.where(mask, tokens, -1).to(torch.int32)
    padded = torch.nn.functional.pad(shown, (context, context), value=-1)
    ids = torch.gather(padded[:, None, :].expand(-1, peak.shape[1], -1), 2, index)
    values = torch.nn.functional.pad(acts.clamp_min(0).transpose(1, 2), (context, context))
    return ids, torch.gather(values, 2, index)


# ----------------------------------------------------------------------------- activity statistics

HISTOGRAM_EDGES = torch.logspace(-3, 4, 57)  # 8 bins per decade from 1e-3 to 1e4


class ActivityStats:
    """Per feature: how many tokens it fired on, and a histogram of its non-zero activations
    over fixed log-spaced bins (values outside go to the first / last bin)."""

    def __init__(self, n_features: int):
        self.n_tokens = 0
        self.active = torch.zeros(n_features, dtype=torch.long)
        self.histogram = torch.zeros(n_features, len(HISTOGRAM_EDGES) - 1, dtype=torch.long)

    def update(self, acts: torch.Tensor, mask: torch.Tensor) -> None:
        """``acts`` [batch, pos, features] with ``mask`` [batch, pos] of the real text tokens."""
        values = acts[mask]  # [tokens, features]
        self.n_tokens += values.shape[0]
        on = values > 0
        self.active += on.sum(0)
        rows, cols = on.nonzero(as_tuple=True)
        bins = torch.bucketize(values[rows, cols], HISTOGRAM_EDGES[1:-1])
        flat = self.histogram.view(-1)
        flat.index_add_(0, cols * self.histogram.shape[1] + bins, torch.ones_like(bins))

    def density(self) -> torch.Tensor:
        return self.active.double() / max(self.n_tokens, 1)


@dataclass
class Mined:
    """What one pass over a corpus gives: the top examples and every feature's activity."""

    examples: pd.DataFrame
    features: list[int]
    n_tokens: int
    density: torch.Tensor  # [features], fraction of text tokens where the feature fires
    histogram: torch.Tensor  # [features, bins] counts of non-zero activations
    histogram_edges: torch.Tensor  # [bins + 1]
    span_tokens: list[list[str]]  # per row of ``examples``: the tokens of its context (peak in the middle)
    span_acts: list[list[float]]  # the feature's activation on each of those tokens


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.checkpoint")


def _save_checkpoint(path: Path, key: dict, windows_done: int, top: RunningTopK, stats: ActivityStats) -> None:
    state = {"key": key, "windows_done": windows_done, "top": vars(top), "stats": vars(stats)}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def _load_checkpoint(path: Path, key: dict, top: RunningTopK, stats: ActivityStats) -> int:
    """Restore ``top`` and ``stats`` from a checkpoint of the same run; returns windows done."""
    if not path.is_file():
        return 0
    state = torch.load(path, weights_only=False)
    if state["key"] != key:
        raise ValueError(f"{path} is a checkpoint of a different run ({state['key']}, now {key}); "
                         "delete it or choose another out= path.")
    vars(top).update(state["top"])
    vars(stats).update(state["stats"])
    return state["windows_done"]


def _run_key(sae, selected: torch.Tensor, k: int, context: int, window: int, batch_size: int) -> dict:
    """What must match for a checkpoint to be resumed (the corpus is the caller's to keep)."""
    return {"hook": sae_hook(sae), "d_sae": int(sae.cfg.d_sae), "features": selected.tolist(), "k": k,
            "context": context, "window": window, "batch_size": batch_size,
            "w_enc_sum": float(sae.W_enc.detach().double().sum())}


# ----------------------------------------------------------------------------- the public entry


def top_examples(model, sae, texts: Any, *, features: Sequence[int] | None = None, k: int = 20,
                 context: int = 8, out: str | os.PathLike | None = None, window: int = 128,
                 batch_size: int = 16, checkpoint_every: int = 50, progress: bool = True) -> pd.DataFrame:
    """The ``k`` examples where each feature fires hardest over ``texts``.

    ``texts``: an iterable of strings, a ``datasets`` dataset, or a .txt/.jsonl/.parquet file.
    Long texts are cut into windows of ``window`` tokens (BOS included). An example's activation
    is its maximum over its tokens. Returns DataFrame(feature, rank, activation, text_id,
    position, token, context): ``context`` shows ``context`` tokens either side of the peak, the
    peak marked ⟦like this⟧. Features that never fire get no rows.

    ``out``: write the table to this Parquet path (atomically). The run then checkpoints every
    ``checkpoint_every`` batches beside it, and a run that was interrupted (even killed) resumes
    from its checkpoint and ends with exactly the table an uninterrupted run gives. Densities and
    activation histograms come from the same pass: see :func:`mine`.
    """
    return mine(model, sae, texts, features=features, k=k, context=context, out=out, window=window,
                batch_size=batch_size, checkpoint_every=checkpoint_every, progress=progress).examples


def mine(model, sae, texts: Any, *, features: Sequence[int] | None = None, k: int = 20, context: int = 8,
         out: str | os.PathLike | None = None, window: int = 128, batch_size: int = 16,
         checkpoint_every: int = 50, progress: bool = True) -> Mined:
    """:func:`top_examples` plus each feature's density and activation histogram, in one pass."""
    _check_k(k)
    if not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be a non-negative integer (tokens either side), got {context!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    selected = _selected_features(sae, features)
    hook = sae_hook(sae)
    top, stats = RunningTopK(len(selected), k, context), ActivityStats(len(selected))
    checkpoint = _checkpoint_path(Path(out)) if out is not None else None
    key = _run_key(sae, selected, k, context, window, batch_size)
    done = _load_checkpoint(checkpoint, key, top, stats) if checkpoint else 0
    windows = itertools.islice(iter_windows(model, iter_texts(texts), window), done, None)
    bar = tqdm(batches(windows, batch_size), desc="top examples", unit="batch", disable=not progress,
               initial=done // batch_size)
    for n, batch in enumerate(bar, 1):
        tokens, mask = _batch_tokens(model, batch)
        act = run_to_hooks(model, tokens, [hook])[hook]
        check_width(model, sae, tuple(act.shape[2:]))
        with torch.no_grad():
            acts = sae.encode(act)
        if features is not None:  # indexing copies [batch, pos, d_sae]; skip it when mining them all
            acts = acts[..., selected]
        # BOS and padding read as 0: they never count, and a peak there has activation 0, which
        # no result row shows (rows need activation > 0).
        acts = acts.float().masked_fill(~mask[..., None], 0.0)  # [batch, pos, features]
        stats.update(acts, mask)
        values, peak = acts.max(dim=1)  # [batch, features]
        starts = torch.tensor([w.start for w in batch])
        top.update(values, torch.tensor([w.text_id for w in batch]), starts[:, None] + peak - 1,
                   *_contexts(tokens, mask, acts, peak, context))
        done += len(batch)
        if checkpoint and n % checkpoint_every == 0:
            _save_checkpoint(checkpoint, key, done, top, stats)
    frame, span_tokens, span_acts = _frame(model, top, selected)
    if out is not None:
        write_parquet(frame, out)
        checkpoint.unlink(missing_ok=True)
    return Mined(examples=frame, features=selected.tolist(), n_tokens=stats.n_tokens, density=stats.density(),
                 histogram=stats.histogram, histogram_edges=HISTOGRAM_EDGES.clone(),
                 span_tokens=span_tokens, span_acts=span_acts)


def _selected_features(sae, features: Sequence[int] | None) -> torch.Tensor:
    if features is None:
        return torch.arange(sae.cfg.d_sae)
    if isinstance(features, int):
        features = [features]
    chosen = [_check_feature(sae, f) for f in features]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"features lists a feature twice: {list(features)}.")
    return torch.tensor(chosen, dtype=torch.long)


def _frame(model, top: RunningTopK, selected: torch.Tensor) -> tuple[pd.DataFrame, list, list]:
    """The buffers as rows (features in the order asked, only activations above zero), and per
    row the context's tokens and activations (edges outside the text dropped)."""
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
    span_acts = top.acts[rank, column].tolist()
    span_tokens, span_values = [], []
    for ids, values in zip(contexts, span_acts):
        keep = [i for i, t in enumerate(ids) if t >= 0]
        span_tokens.append(_decode_each(model, [ids[i] for i in keep]))
        span_values.append([values[i] for i in keep])
    return frame, span_tokens, span_values


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
