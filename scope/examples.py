"""Top-activating examples: the texts (or windows of long texts) where each feature fires hardest.

One pass over a corpus, in batches: the model runs only up to the SAE's hook, every feature's
per-example maximum is merged into running top-k buffers of shape ``[k, n_features]``, so memory
is bounded by batch size x width and k x width, never by the corpus. The tokens around each
buffered peak are kept in the buffer too, which is what lets the pass stream.

An example is one window: a text cut into pieces of at most ``window`` tokens, each read with
its own BOS (as SAEs are trained). Positions count in the whole text's tokens with BOS at 0, as
:func:`scope.encode` numbers them; padding and BOS never appear in results.

Many SAEs share the pass: each batch runs once, to the deepest of their hooks, and every SAE
encodes the activation at its own hook into its own buffers. On Ray (``engine="ray"``):

1. documents go to shards by a hash of their text (:func:`scope.distributed.shard_of`);
2. each worker loads the model and SAEs once and mines whole shards, exactly as one pass would
   mine those documents (global ``text_id`` kept);
3. each finished shard's buffers are stored as they arrive (a restarted driver skips them);
4. the shards merge exactly (:func:`merge_top`: top-k of top-ks, ties in reading order;
   :func:`merge_stats`: counts and histograms add), and a worker turns the merged buffers
   into the tables a single process writes.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import shutil
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import pandas as pd
import torch
from tqdm.auto import tqdm

from scope import _checks
from scope._io import (
    batched,
    check_corpus_file,
    check_writable_dir,
    check_writable_file,
    iter_texts,
    write_atomically,
    write_parquet,
)
from scope.distributed import ShardStore, WorkerPool, require_ray, shard_of
from scope.features import check_feature
from scope.hooks import activation_shape, check_compatible, check_width, run_to_hooks, sae_hook
from scope.inputs import pad, pad_id
from scope.labels import PEAK_CLOSE, PEAK_OPEN
from scope.models import load_model
from scope.saes import LazySAEs, load_sae
from scope.subjects import subject_of

DEFAULT_CONTEXT = 8  # tokens shown either side of a peak, in tables and on feature pages

COLUMNS = ["feature", "rank", "activation", "text_id", "position", "token", "context"]


@dataclass
class Window:
    """``tokens`` (no BOS) of text ``text_id``, starting at text position ``start`` (BOS = 0)."""

    text_id: int
    start: int
    tokens: list[int]


# ----------------------------------------------------------------------------- windows


def iter_windows(
    model, texts: Iterable[str], window: int, keep: Callable[[str], bool] | None = None
) -> Iterator[Window]:
    """Every text cut into windows of at most ``window - 1`` tokens (each window gets a BOS);
    with ``keep``, only the texts it accepts (``text_id`` still counts every text)."""
    size = _check_window(window) - 1
    for text_id, text in enumerate(texts):
        if keep is not None and not keep(text):
            continue
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        for offset in range(0, len(ids), size):
            yield Window(text_id=text_id, start=1 + offset, tokens=ids[offset : offset + size])


def _check_window(window: Any) -> int:
    window = _checks.integer(window, "window")
    if window < 2:
        raise ValueError(f"window must be an integer >= 2 (tokens per example with its BOS), got {window!r}.")
    return window


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

    def update(self, values: torch.Tensor, text_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Merge a batch: ``values`` [batch, features] (``-inf`` where a feature is silent),
        ``text_id`` [batch]. Returns the ``(slot, feature, batch row)`` of each entry that came
        in, whose peak position and context the caller then gives to :meth:`fill`: those are
        found only for the few examples that make it into the buffers, not for every one seen."""
        all_values = torch.cat([self.values, values])
        # Stable order for equal maxima: earlier examples first, so results never depend on batching.
        order = torch.sort(all_values, dim=0, descending=True, stable=True).indices[: self.k]
        slot, feature = (order >= self.k).nonzero(as_tuple=True)
        row = order[slot, feature] - self.k
        if len(row) == 0:
            return slot, feature, row
        kept = order.clamp(max=self.k - 1)  # where each slot's entry sat before (fresh ones overwritten in fill)
        # Copied back into the same buffers: new long-lived tensors every batch would scatter
        # through the heap between the batch's temporaries and keep it from shrinking.
        self.values.copy_(torch.gather(all_values, 0, order))
        self.text_id.copy_(torch.gather(self.text_id, 0, kept))
        self.position.copy_(torch.gather(self.position, 0, kept))
        spans = kept[..., None].expand(-1, -1, self.tokens.shape[-1])
        self.tokens.copy_(torch.gather(self.tokens, 0, spans))
        self.acts.copy_(torch.gather(self.acts, 0, spans))
        self.text_id[slot, feature] = text_id[row]
        return slot, feature, row

    def fill(
        self,
        slot: torch.Tensor,
        feature: torch.Tensor,
        position: torch.Tensor,
        tokens: torch.Tensor,
        acts: torch.Tensor,
    ) -> None:
        """Where the entries :meth:`update` took in peaked (``position`` [entries]) and their
        contexts (``tokens``/``acts`` [entries, 2 * context + 1])."""
        self.position[slot, feature] = position
        self.tokens[slot, feature] = tokens
        self.acts[slot, feature] = acts


def _batch_tokens(model, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, pos]`` ids with BOS first and right padding (causal attention keeps padding from
    touching real tokens), and a mask of the real text tokens (not BOS, not padding)."""
    bos = model.tokenizer.bos_token_id
    tokens, real = pad([torch.tensor([bos, *w.tokens]) for w in batch], pad_id(model), side="right")
    mask = real.bool()
    mask[:, 0] = False  # BOS
    return tokens, mask


@dataclass
class EncodedBatch:
    """A batch's feature activations on its real text tokens only: BOS and padding are never
    encoded, so they can never count or show up. Each window's tokens are consecutive rows."""

    tokens: torch.Tensor  # [batch, pos] ids
    row_of: torch.Tensor  # [batch, pos] the row of ``acts`` holding each text token, -1 for BOS/padding
    acts: torch.Tensor  # [text tokens, features]
    lengths: list[int]  # text tokens of each window, in order


def _encode_batch(
    model, sae, act: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, selected: torch.Tensor | None
) -> EncodedBatch:
    """``sae`` encodes ``act``, the activation at its hook for ``tokens``, on the text tokens."""
    hook = sae_hook(sae)
    if activation_shape(model, hook) is None:  # a hook the config does not describe
        check_width(model, sae, tuple(act.shape[2:]))
    with torch.no_grad():
        acts = sae.encode(act[mask.to(act.device)]).cpu()  # [text tokens, d_sae]
    if selected is not None:
        acts = acts[:, selected]
    row_of = torch.full(mask.shape, -1, dtype=torch.long)
    row_of[mask] = torch.arange(int(mask.sum()))
    return EncodedBatch(tokens=tokens, row_of=row_of, acts=acts, lengths=mask.sum(1).tolist())


def _window_maxima(enc: EncodedBatch) -> torch.Tensor:
    """Each feature's maximum over each window's tokens, ``[batch, features]``, ``-inf`` where
    it is silent."""
    values = torch.stack([rows.amax(0) for rows in enc.acts.split(enc.lengths)]).float()
    return values.masked_fill_(values <= 0, float("-inf"))


def _peaks(enc: EncodedBatch, window: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """For entries (``window``, ``feature``): the first position (BOS = 0) where the feature
    reaches its maximum over the window."""
    peak = torch.empty(len(window), dtype=torch.long)
    for w, rows in enumerate(enc.acts.split(enc.lengths)):  # one window at a time: small temporaries
        entries = (window == w).nonzero(as_tuple=True)[0]
        if len(entries):
            peak[entries] = rows[:, feature[entries]].argmax(0) + 1  # argmax gives the first maximum
    return peak


def _contexts(
    enc: EncodedBatch, window: torch.Tensor, feature: torch.Tensor, peak: torch.Tensor, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For entries (``window``, ``feature``) peaking at ``peak``: the token ids ``[entries,
    2 * context + 1]`` around the peak (-1 outside the text: beyond the window, BOS, padding)
    and the feature's activations on them (0 outside)."""
    length = enc.tokens.shape[1]
    where = peak[:, None] + torch.arange(-context, context + 1)  # [entries, span]
    inside = (where >= 0) & (where < length)
    where = where.clamp(0, length - 1)
    rows = torch.where(inside, enc.row_of[window[:, None], where], -1)
    text = rows >= 0
    ids = torch.where(text, enc.tokens[window[:, None], where], -1).to(torch.int32)
    acts = enc.acts[rows.clamp_min(0), feature[:, None]].float().clamp_min(0)
    return ids, torch.where(text, acts, 0.0)


# ----------------------------------------------------------------------------- activity statistics

HISTOGRAM_EDGES = torch.logspace(-3, 4, 57)  # 8 bins per decade from 1e-3 to 1e4


class ActivityStats:
    """Per feature: how many tokens it fired on, and a histogram of its non-zero activations
    over fixed log-spaced bins (values outside go to the first / last bin)."""

    def __init__(self, n_features: int):
        self.n_tokens = 0
        self.active = torch.zeros(n_features, dtype=torch.long)
        self.histogram = torch.zeros(n_features, len(HISTOGRAM_EDGES) - 1, dtype=torch.long)

    def update(self, acts: torch.Tensor, chunk: int = 128) -> None:
        """``acts`` [text tokens, features]; read ``chunk`` rows at a time, so the non-zero
        entries listed stay small even for a densely firing SAE."""
        n_features, n_bins = self.histogram.shape
        flat = self.histogram.view(-1)
        self.n_tokens += acts.shape[0]
        for rows in acts.split(chunk):
            row, feature = (rows > 0).nonzero(as_tuple=True)
            self.active += torch.bincount(feature, minlength=n_features)
            bins = torch.bucketize(rows[row, feature].float(), HISTOGRAM_EDGES[1:-1])
            flat.index_add_(0, feature * n_bins + bins, torch.ones_like(bins))

    def density(self) -> torch.Tensor:
        return self.active.double() / max(self.n_tokens, 1)


# ----------------------------------------------------------------------------- merging parts of a corpus


def merge_top(parts: Sequence[RunningTopK]) -> RunningTopK:
    """The buffers one pass over the union of the parts' windows would hold: per feature, the
    ``k`` largest of all the parts' entries. Equal maxima rank by text, then position: the order
    a single pass reads them in (earlier first), so the merge is exact, not approximate."""
    first = parts[0]
    merged = RunningTopK(first.values.shape[1], first.k, first.context)
    values = torch.cat([p.values for p in parts])
    text_id = torch.cat([p.text_id for p in parts])
    position = torch.cat([p.position for p in parts])
    # Sort by the least significant key first; each later stable sort keeps the earlier order on ties.
    order = torch.argsort(position, dim=0, stable=True)
    order = torch.gather(order, 0, torch.argsort(torch.gather(text_id, 0, order), dim=0, stable=True))
    order = torch.gather(order, 0, torch.argsort(torch.gather(values, 0, order), dim=0, descending=True, stable=True))[
        : first.k
    ]
    merged.values = torch.gather(values, 0, order)
    merged.text_id = torch.gather(text_id, 0, order)
    merged.position = torch.gather(position, 0, order)
    spans = order[..., None].expand(-1, -1, first.tokens.shape[-1])
    merged.tokens = torch.gather(torch.cat([p.tokens for p in parts]), 0, spans)
    merged.acts = torch.gather(torch.cat([p.acts for p in parts]), 0, spans)
    return merged


def merge_stats(parts: Sequence[ActivityStats]) -> ActivityStats:
    """Token counts, firing counts and histograms of the parts, added."""
    merged = ActivityStats(parts[0].active.shape[0])
    for part in parts:
        merged.n_tokens += part.n_tokens
        merged.active += part.active
        merged.histogram += part.histogram
    return merged


# ----------------------------------------------------------------------------- one SAE's share of a pass


@dataclass
class _SAERun:
    """One SAE's part of a pass: its features and its running buffers. ``name`` is its
    partition in a many-SAE result (None for a single SAE)."""

    name: str | None
    sae: Any
    selected: torch.Tensor
    subset: bool  # only some features asked for
    top: RunningTopK
    stats: ActivityStats

    @classmethod
    def start(cls, name: str | None, sae: Any, features: Sequence[int] | None, k: int, context: int) -> _SAERun:
        selected = _selected_features(sae, features)
        return cls(
            name,
            sae,
            selected,
            features is not None,
            RunningTopK(len(selected), k, context),
            ActivityStats(len(selected)),
        )

    def update(self, model, act: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, batch: list[Window]) -> None:
        """Take in a batch, given the activation at this SAE's hook."""
        enc = _encode_batch(model, self.sae, act, tokens, mask, self.selected if self.subset else None)
        self.stats.update(enc.acts)
        slot, feature, row = self.top.update(_window_maxima(enc), torch.tensor([w.text_id for w in batch]))
        peak = _peaks(enc, row, feature)
        starts = torch.tensor([w.start for w in batch])
        self.top.fill(slot, feature, starts[row] + peak - 1, *_contexts(enc, row, feature, peak, self.top.context))

    def mined(self, model) -> Mined:
        frame, context_ids, context_acts, token_strings = _frame(model, self.top, self.selected)
        return Mined(
            examples=frame,
            features=self.selected.tolist(),
            n_tokens=self.stats.n_tokens,
            density=self.stats.density(),
            histogram=self.stats.histogram,
            histogram_edges=HISTOGRAM_EDGES.clone(),
            context_ids=context_ids,
            context_acts=context_acts,
            token_strings=token_strings,
        )


def _mine_batches(model, runs: Sequence[_SAERun], batches: Iterable[list[Window]]) -> Iterator[int]:
    """Feed every batch to every SAE from one forward pass, run only to the deepest hook they
    read; yields the windows read with each batch."""
    hooks = sorted({sae_hook(run.sae) for run in runs})
    for batch in batches:
        tokens, mask = _batch_tokens(model, batch)
        acts = run_to_hooks(model, tokens, hooks)
        for run in runs:
            run.update(model, acts[sae_hook(run.sae)], tokens, mask, batch)
        del acts  # the hooks' activations are the batch's largest tensors after the SAEs' own
        yield len(batch)


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


# ----------------------------------------------------------------------------- checkpoints
#
# A checkpoint is one torch.save of tensors, ints, strings, lists and dicts, read back with
# torch.load(weights_only=True): a file planted in its place cannot run code. It holds what the
# run must match (options, SAE and model identity: ``key``) and a running hash of the windows read
# so far (``corpus``), which a resume recomputes as it re-reads those windows: another corpus, or
# one now shorter than the part read, is refused whatever its source (list, file or dataset).

CHECKPOINT_FORMAT = "scope.mine checkpoint"
CHECKPOINT_VERSION = 1
_RESTART = "pass overwrite=True (scope examples --overwrite) to discard it and start again, or choose another out= path"


def checkpoint_path(out: Path) -> Path:
    """The hidden checkpoint file beside a run's ``out=``."""
    return out.with_name(f".{out.name}.checkpoint")


def _buffers(runs: Sequence[_SAERun]) -> dict[str, dict]:
    """The running buffers as a checkpoint holds them (the objects' own attribute dicts, so that
    restoring them in place restores the objects): ``top``/``stats`` are one SAE's buffers, or
    for many SAEs one such dict per SAE name."""
    if len(runs) == 1 and runs[0].name is None:
        return {"top": vars(runs[0].top), "stats": vars(runs[0].stats)}
    return {
        "top": {run.name: vars(run.top) for run in runs},
        "stats": {run.name: vars(run.stats) for run in runs},
    }


def _save_checkpoint(path: Path, key: dict, windows_done: int, corpus: str, buffers: dict[str, dict]) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "key": key,
        "windows_done": windows_done,
        "corpus": corpus,
        **buffers,
    }
    write_atomically(path, lambda tmp: torch.save(state, tmp))  # a kill mid-write keeps the previous one


def _load_checkpoint(path: Path, key: dict, buffers: dict[str, dict]) -> tuple[int, str | None]:
    """Restore ``buffers`` (see :func:`_buffers`) from a checkpoint of the same run; returns the
    windows done and the hash of those windows (0 and None without a checkpoint)."""
    if not path.is_file():
        return 0, None
    try:
        with warnings.catch_warnings():  # torch's notes on a planted pickle's protocol: the error says more
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or a pickle of anything but plain data
        reason = " ".join(str(err).split())
        raise ValueError(
            f"{path} is not a checkpoint scope.mine can resume (unreadable: {reason[:200]}); {_RESTART}."
        ) from None
    problem = _checkpoint_problem(state)
    if problem:
        raise ValueError(f"{path} is not a checkpoint scope.mine can resume ({problem}); {_RESTART}.")
    if state["key"] != key:
        differs = [name for name in key if state["key"].get(name) != key[name]]
        differs += [name for name in state["key"] if name not in key]
        shown = ", ".join(
            name
            if name.endswith(("features", "sae_weights", "model_weights")) or name not in key
            else f"{name} {state['key'][name]!r} then, {key[name]!r} now"
            for name in differs
        )
        raise ValueError(f"{path} is the checkpoint of a different run ({shown}); {_RESTART}.")
    problem = _layout_problem(state, buffers, "")
    if problem:
        raise ValueError(f"{path} is not a checkpoint scope.mine can resume ({problem}); {_RESTART}.")
    _restore(buffers, state)
    return state["windows_done"], state["corpus"]


def _checkpoint_problem(state: Any) -> str | None:
    """What makes ``state`` something other than a checkpoint of scope.mine."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        return f"a file of another kind, not a {CHECKPOINT_FORMAT}"
    if state.get("version") != CHECKPOINT_VERSION:
        return f"version {state.get('version')!r}, this scope reads version {CHECKPOINT_VERSION}"
    if not (
        isinstance(state.get("key"), dict)
        and isinstance(state.get("windows_done"), int)
        and state["windows_done"] >= 0
        and isinstance(state.get("corpus"), str)
    ):
        return "its key, windows read or corpus hash is missing"
    return None


def _layout_problem(saved: Any, fresh: dict, where: str) -> str | None:
    """What keeps the checkpoint's buffers from being this run's (same key, other shapes)."""
    for name, value in fresh.items():
        part = f"{where}{name}"
        if not isinstance(saved, dict) or name not in saved:
            return f"its {part!r} buffers are missing"
        if isinstance(value, dict):
            problem = _layout_problem(saved[name], value, f"{part}.")
            if problem:
                return problem
            continue
        if isinstance(value, torch.Tensor):
            ok = (
                isinstance(saved[name], torch.Tensor)
                and saved[name].shape == value.shape
                and saved[name].dtype == value.dtype
            )
        else:
            ok = type(saved[name]) is type(value)
        if not ok:
            return f"{part} is not shaped like this run's"
    return None


def _restore(fresh: dict, saved: dict) -> None:
    """Put ``saved``'s values into ``fresh`` (nested attribute dicts), in place."""
    for name, value in fresh.items():
        if isinstance(value, dict):
            _restore(value, saved[name])
        else:
            fresh[name] = saved[name]


def _window_bytes(w: Window) -> bytes:
    return struct.pack(f"<{3 + len(w.tokens)}q", w.text_id, w.start, len(w.tokens), *w.tokens)


@dataclass
class _Resume:
    """The checkpoint beside a run's ``out=``: restored at the start (checked against the run's
    key and, as the windows it covers are re-read, against the corpus), saved every few batches,
    removed once the result is written."""

    path: Path
    key: dict
    done: int = 0
    hasher: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16))

    def start(self, windows: Iterator[Window], buffers: dict[str, dict], *, overwrite: bool) -> Iterator[Window]:
        """The windows still to read (those the checkpoint covers are re-read and checked)."""
        if overwrite:
            self.path.unlink(missing_ok=True)
        self.done, corpus = _load_checkpoint(self.path, self.key, buffers)
        windows = _hashed(windows, self.hasher)
        if corpus is not None:
            _skip_read(windows, self.done, self.hasher, corpus, self.path)
        return windows

    def save(self, done: int, buffers: dict[str, dict]) -> None:
        _save_checkpoint(self.path, self.key, done, self.hasher.hexdigest(), buffers)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def _hashed(windows: Iterable[Window], hasher) -> Iterator[Window]:
    """``windows``, each added to ``hasher`` as it is read."""
    for w in windows:
        hasher.update(_window_bytes(w))
        yield w


def _skip_read(windows: Iterator[Window], done: int, hasher, expected: str, path: Path) -> None:
    """Re-read the ``done`` windows a checkpoint covers; ValueError unless they hash as it says."""
    read = sum(1 for _ in itertools.islice(windows, done))
    if read < done:
        raise ValueError(
            f"{path} is the checkpoint of a run over a different corpus: it has read {done} windows, "
            f"but the corpus given now has only {read} windows; {_RESTART}."
        )
    if hasher.hexdigest() != expected:
        raise ValueError(
            f"{path} is the checkpoint of a run over a different corpus: the first {done} windows "
            f"(token ids) of the corpus given now differ from those it has read; {_RESTART}."
        )


def _tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for name, tensor in named:
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        hasher.update(f"{name}:{tensor.dtype}:{tensor.numel()};".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _first_values(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """Up to ``n`` values of ``tensor``, never copying all of it."""
    tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor[(0,) * (tensor.ndim - 1)] if tensor.ndim > 1 else tensor
    return tensor.reshape(-1)[:n]


def _model_identity(model) -> dict:
    """The model's name and shapes, and a hash of a sample of its weights (the first values of
    every tensor: cheap for a 27B model, and different for any other checkpoint)."""
    spec = subject_of(model)
    cfg = model.cfg
    sample = [(name, _first_values(tensor, 256)) for name, tensor in model.state_dict().items()]
    return {
        "model": spec.name if spec is not None else type(model).__name__,
        "model_shapes": [int(cfg.n_layers), int(cfg.d_model), int(cfg.d_vocab), int(cfg.n_ctx)],
        "model_dtype": str(cfg.dtype),
        "model_weights": _tensors_digest(sample),
    }


def _run_key(model, sae, selected: torch.Tensor, k: int, context: int, window: int, batch_size: int) -> dict:
    """Everything that changes the result of a run and must match for its checkpoint to be resumed
    (the corpus is checked apart, as it is re-read)."""
    settings = {name: value for name, value in vars(sae.cfg).items() if name not in ("metadata", "device")}
    return {
        "hook": sae_hook(sae),
        "d_sae": int(sae.cfg.d_sae),
        "features": selected.tolist(),
        "k": k,
        "context": context,
        "window": window,
        "batch_size": batch_size,
        "sae": f"{type(sae).__name__} {sorted(settings.items())!r}",  # architecture, normalisation, dtype
        "sae_weights": _tensors_digest(sorted(sae.state_dict().items())),
        **_model_identity(model),
    }


_SAE_FIELDS = ("hook", "d_sae", "features", "sae", "sae_weights")  # per SAE in a many-SAE key


def _key_of(model, runs: Sequence[_SAERun], k: int, context: int, window: int, batch_size: int) -> dict:
    """The run key of a pass: :func:`_run_key` for one SAE; for many, the shared options once and
    each SAE's own fields under ``"NAME: field"``."""
    keys = [_run_key(model, run.sae, run.selected, k, context, window, batch_size) for run in runs]
    if len(runs) == 1 and runs[0].name is None:
        return keys[0]
    key = {name: value for name, value in keys[0].items() if name not in _SAE_FIELDS}
    key["saes"] = [run.name for run in runs]
    for run, each in zip(runs, keys):
        key.update({f"{run.name}: {name}": each[name] for name in _SAE_FIELDS})
    return key


# ----------------------------------------------------------------------------- many SAEs


def _named_saes(sae: Any, *, specs: bool = False) -> list[tuple[str | None, Any, Any]]:
    """``(partition name, key in the result, SAE or spec)`` for each SAE; one entry named None for
    a single SAE. A dict (or :func:`scope.load_saes`' lazy set) is named by its keys, a list by
    its SAEs' hooks. ``specs``: a lazy set gives its specs (for workers to load), not its SAEs."""
    if hasattr(sae, "cfg") and hasattr(sae, "encode"):
        return [(None, None, sae)]
    if isinstance(sae, LazySAEs) and specs:
        return [(_partition_name(layer), layer, spec) for layer, spec in sae.specs.items()]
    named: list[tuple[str | None, Any, Any]]
    if isinstance(sae, Mapping):  # a LazySAEs loads each SAE here, when it is touched
        named = [(_partition_name(key), key, value) for key, value in sae.items()]
    elif isinstance(sae, (list, tuple)):
        named = []
        for i, each in enumerate(sae):
            if not (hasattr(each, "cfg") and hasattr(each, "encode")):
                raise TypeError(
                    f"saes[{i}] is a {type(each).__name__}, not an SAE; a list holds loaded SAEs "
                    "(name specs in a dict: {'name': spec})."
                )
            hook = sae_hook(each)
            named.append((_partition_name(hook), hook, each))
        hooks = [sae_hook(each) for each in sae]
        twice = sorted({hook for hook in hooks if hooks.count(hook) > 1})
        if twice:
            raise ValueError(
                f"Two SAEs of the list read {', '.join(twice)}: a list names each SAE by its hook; "
                "pass a dict {name: sae} to mine several SAEs at one hook."
            )
    else:
        raise TypeError(
            f"sae must be an SAE, a list or dict of SAEs, or scope.load_saes(...), got {type(sae).__name__}."
        )
    if not named:
        raise ValueError("saes is empty: give at least one SAE.")
    return named


def _partition_name(key: Any) -> str:
    """``key`` as the name of its folder ``sae=NAME`` in a many-SAE result."""
    name = str(key)
    if not name or name.startswith(".") or any(c in name for c in "/\\=\0") or name != name.strip():
        raise ValueError(
            f"SAE name {key!r} cannot name a folder sae={name}: use a name without '/', '\\\\', '=', "
            "surrounding spaces or a leading '.'."
        )
    return name


def _features_of(features: Any, key: Any, single: bool) -> Sequence[int] | None:
    """The features asked of one SAE: ``features`` itself, or for many SAEs its entry in a dict."""
    if single or not isinstance(features, Mapping):
        return features
    return features.get(key)


def dataset_files(out: str | os.PathLike, names: Iterable[str]) -> dict[str, Path]:
    """Where a many-SAE result keeps each SAE's table: ``out/sae=NAME/part-0.parquet``."""
    return {name: Path(out) / f"sae={name}" / "part-0.parquet" for name in names}


def write_dataset(frames: Mapping[str, pd.DataFrame], out: str | os.PathLike) -> Path:
    """Write one table per SAE as a hive-partitioned Parquet dataset (``pd.read_parquet(out)``
    reads them all, with a ``sae`` column), atomically: the folder is written beside ``out`` and
    renamed into place, so a kill leaves the previous dataset (or none), never half of one."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, path in dataset_files(tmp, frames).items():
            path.parent.mkdir(parents=True)
            frames[name].to_parquet(path, index=False)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- the public entry


def top_examples(
    model: Any,
    sae: Any,
    texts: Any,
    *,
    features: Sequence[int] | None = None,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    out: str | os.PathLike | None = None,
    window: int = 128,
    batch_size: int = 16,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """The ``k`` examples where each feature fires hardest over ``texts``.

    ``texts``: an iterable of strings, a ``datasets`` dataset, or a .txt/.jsonl/.parquet file.
    Long texts are cut into windows of ``window`` tokens (BOS included). An example's activation
    is its maximum over its tokens. Returns DataFrame(feature, rank, activation, text_id,
    position, token, context): ``context`` shows ``context`` tokens either side of the peak, the
    peak marked ⟦like this⟧. Features that never fire get no rows.

    ``out``: write the table to this Parquet path (atomically). The run then checkpoints every
    ``checkpoint_every`` batches beside it, and a run that was interrupted (even killed) resumes
    from its checkpoint and ends with exactly the table an uninterrupted run gives. A checkpoint
    resumes only the same run: the same options, SAE and model, and a corpus whose windows read so
    far hash as they did (whether it comes from a list, a file or a dataset); anything else is a
    ValueError naming the checkpoint. ``overwrite=True`` discards it and starts again. Densities
    and activation histograms come from the same pass: see :func:`mine`, which also mines many
    SAEs in one pass.
    """
    return mine(
        model,
        sae,
        texts,
        features=features,
        k=k,
        context=context,
        out=out,
        window=window,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        overwrite=overwrite,
        progress=progress,
    ).examples


@overload
def mine(
    model: Any,
    sae: Mapping[Any, Any] | list[Any] | tuple[Any, ...],
    texts: Any,
    *,
    features: Sequence[int] | Mapping[Any, Sequence[int]] | None = None,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    out: str | os.PathLike | None = None,
    window: int = 128,
    batch_size: int = 16,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    progress: bool = True,
    engine: str | None = None,
    workers: int | None = None,
    shards: int = 64,
) -> dict[Any, Mined]: ...


@overload
def mine(
    model: Any,
    sae: Any,
    texts: Any,
    *,
    features: Sequence[int] | Mapping[Any, Sequence[int]] | None = None,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    out: str | os.PathLike | None = None,
    window: int = 128,
    batch_size: int = 16,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    progress: bool = True,
    engine: str | None = None,
    workers: int | None = None,
    shards: int = 64,
) -> Mined: ...


def mine(
    model: Any,
    sae: Any,
    texts: Any,
    *,
    features: Sequence[int] | Mapping[Any, Sequence[int]] | None = None,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    out: str | os.PathLike | None = None,
    window: int = 128,
    batch_size: int = 16,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    progress: bool = True,
    engine: str | None = None,
    workers: int | None = None,
    shards: int = 64,
) -> Mined | dict[Any, Mined]:
    """:func:`top_examples` plus each feature's density and activation histogram, in one pass,
    for one SAE or many.

    ``sae``: one SAE (returns a :class:`Mined`; ``out`` is one Parquet file, as
    :func:`top_examples` writes it), or many: a list (named by their hooks), a dict
    ``{name: sae}``, or :func:`scope.load_saes`' lazy set (named by layer). Many SAEs, at any
    hooks, are mined from one forward pass per batch that runs only to the deepest of their hooks;
    the result is ``{name: Mined}``, each exactly what mining that SAE alone gives, and ``out`` is
    a folder holding one Parquet table per SAE, ``out/sae=NAME/part-0.parquet`` (hive-partitioned:
    ``pd.read_parquet(out)`` reads them all with a ``sae`` column), written atomically and
    resumable like a single SAE's. ``features``: a list for every SAE, or a dict of lists by name.

    Memory (CPU, beside the model): per SAE of ``F`` features mined, running buffers of
    ``k * F * (20 + 8 * (2 * context + 1))`` bytes plus ``456 * F`` for the statistics (~3.6 KB
    per feature at k=20, context=8: 26 SAEs of 16k features take ~1.5 GB); per batch, the
    hooks' activations (``batch_size * window * d_model * 4`` bytes each) and one SAE's
    activations at a time (``batch_size * window * F * 4``). SAE weights (``8 * d_in * F``
    bytes each in fp32) stay on the model's device for the pass.

    ``engine="ray"``: shard the corpus over ``workers`` Ray workers (see
    :mod:`scope.distributed`). ``model`` is then something each worker can load on its own
    device: a model name (``"gemma-2-2b"``) or a picklable callable returning a model (e.g.
    ``functools.partial(scope.load_model, name, weights=path)``); each SAE is an SAE, an SAE spec
    of :func:`scope.load_sae`, or such a callable (``load_saes``' set sends its specs).
    ``texts`` is read once per shard, so it is a list, a dataset or a corpus file (which every
    worker must be able to read). Documents are split into ``shards`` by a hash of their text;
    each finished shard's result is kept beside ``out`` (a restarted run skips those), and the
    merge is exact: the result equals the single-process one.
    """
    k = _checks.positive_int(k, "k")
    context = _checks.non_negative_int(context, "context")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    checkpoint_every = _checks.positive_int(checkpoint_every, "checkpoint_every")
    window = _check_window(window)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}.")
    if engine not in (None, "ray"):
        raise ValueError(f"engine must be None (this process) or 'ray', got {engine!r}.")
    if engine is None and workers is not None:
        raise ValueError(f"workers={workers!r} is for engine='ray'; this process mines alone.")
    named = _named_saes(sae, specs=engine == "ray")
    single = named[0][0] is None
    if out is not None:
        check_writable_file(out) if single else check_writable_dir(out)
    options = _Options(k, context, window, batch_size)
    if engine == "ray":
        workers = _checks.positive_int(1 if workers is None else workers, "workers")
        return _mine_on_ray(
            model,
            named,
            texts,
            features,
            options,
            out,
            overwrite,
            progress,
            workers,
            _checks.positive_int(shards, "shards"),
        )
    runs = [_SAERun.start(name, each, _features_of(features, key, single), k, context) for name, key, each in named]
    for run in runs:
        check_compatible(model, run.sae)
    windows: Iterator[Window] = iter_windows(model, iter_texts(texts), window)
    resume = None
    if out is not None:
        resume = _Resume(checkpoint_path(Path(out)), _key_of(model, runs, k, context, window, batch_size))
        windows = resume.start(windows, _buffers(runs), overwrite=overwrite)
    done = resume.done if resume else 0
    bar = tqdm(
        batched(windows, batch_size),
        desc="top examples",
        unit="batch",
        disable=not progress,
        initial=done // batch_size,
    )
    for n, read in enumerate(_mine_batches(model, runs, bar), 1):
        done += read
        if resume and n % checkpoint_every == 0:
            resume.save(done, _buffers(runs))
    results = {key: run.mined(model) for (_, key, _), run in zip(named, runs)}
    _write(results, named, out)
    if resume:
        resume.finish()
    return results[None] if single else results


def _write(results: dict[Any, Mined], named: list[tuple[str | None, Any, Any]], out: str | os.PathLike | None) -> None:
    if out is None:
        return
    if named[0][0] is None:
        write_parquet(results[None].examples, out)
    else:
        write_dataset({str(name): results[key].examples for name, key, _ in named}, out)


# ----------------------------------------------------------------------------- the Ray engine


@dataclass(frozen=True)
class _Options:
    k: int
    context: int
    window: int
    batch_size: int


def shards_path(out: Path) -> Path:
    """The hidden folder of finished shards beside an ``engine="ray"`` run's ``out=``."""
    return out.with_name(f".{out.name}.shards")


def _model_loader(model: Any) -> Callable[[], Any]:
    if isinstance(model, str):
        return functools.partial(load_model, model)
    if callable(model) and not hasattr(model, "cfg"):
        return model
    raise TypeError(
        f"engine='ray' needs a model every worker can load, not a loaded {type(model).__name__}: "
        "pass its name (e.g. 'gemma-2-2b') or a picklable callable returning it, e.g. "
        "functools.partial(scope.load_model, name, weights=path)."
    )


def _load_sae_on(model: Any, spec: Any) -> Any:
    """A worker's SAE from an SAE, a load_sae spec or a callable, on the model's device."""
    if hasattr(spec, "cfg") and hasattr(spec, "encode"):
        return spec.to(model.cfg.device)
    if callable(spec):
        return spec()
    return load_sae(spec, device=str(model.cfg.device))


def _worker_setup(model_loader: Callable[[], Any], specs: list[tuple[str | None, Any]]) -> tuple[Any, list]:
    """What each Ray worker loads once: the model, then every SAE (checked against it)."""
    model = model_loader()
    saes = [(name, _load_sae_on(model, spec)) for name, spec in specs]
    for _, sae in saes:
        check_compatible(model, sae)
    return model, saes


def _worker_runs(state: tuple[Any, list], features: Any, options: _Options) -> list[_SAERun]:
    _, saes = state
    single = saes[0][0] is None
    return [
        _SAERun.start(name, sae, _features_of(features, key, single), options.k, options.context)
        for (name, sae), key in zip(saes, _keys_by_name(saes, features))
    ]


def _keys_by_name(saes: list, features: Any) -> list[Any]:
    """The keys ``features`` (a dict for many SAEs) may use: the partition names as given."""
    if not isinstance(features, Mapping):
        return [name for name, _ in saes]
    by_text = {str(key): key for key in features}
    return [by_text.get(str(name), name) for name, _ in saes]


def _worker_key(state: tuple[Any, list], features: Any, options: _Options) -> dict:
    model = state[0]
    runs = _worker_runs(state, features, options)
    return _key_of(model, runs, options.k, options.context, options.window, options.batch_size)


def _worker_mine_shard(
    state: tuple[Any, list], texts: Any, features: Any, options: _Options, shards: int, shard: int
) -> dict:
    """One shard's buffers: the documents whose text hashes to ``shard``, mined as one pass would."""
    model = state[0]
    runs = _worker_runs(state, features, options)
    windows = iter_windows(model, iter_texts(texts), options.window, keep=lambda text: shard_of(text, shards) == shard)
    read = sum(_mine_batches(model, runs, batched(windows, options.batch_size)))
    return {"windows": read, **_buffers(runs)}


def _worker_finish(state: tuple[Any, list], features: Any, options: _Options, merged: dict) -> list[Mined]:
    """The merged buffers as :class:`Mined` results (the tokenizer lives on the workers)."""
    model = state[0]
    runs = _worker_runs(state, features, options)
    _restore(_buffers(runs), merged)
    return [run.mined(model) for run in runs]


def _merge_shards(results: list[dict]) -> dict:
    """The buffers of the union of the shards (see :func:`merge_top`, :func:`merge_stats`)."""

    def top(d: dict) -> RunningTopK:
        part = RunningTopK.__new__(RunningTopK)
        vars(part).update(d)
        return part

    def stats(d: dict) -> ActivityStats:
        part = ActivityStats.__new__(ActivityStats)
        vars(part).update(d)
        return part

    first = results[0]["top"]
    if isinstance(first.get("values"), torch.Tensor):  # one SAE's buffers, not a dict of them by name
        return {
            "top": vars(merge_top([top(r["top"]) for r in results])),
            "stats": vars(merge_stats([stats(r["stats"]) for r in results])),
        }
    return {
        "top": {name: vars(merge_top([top(r["top"][name]) for r in results])) for name in first},
        "stats": {name: vars(merge_stats([stats(r["stats"][name]) for r in results])) for name in first},
    }


def _merged_with(merged: dict | None, result: dict) -> dict:
    return _merge_shards([result] if merged is None else [merged, result])


def _ray_texts(texts: Any) -> Any:
    """``texts`` as each shard reads it again: a corpus file's path, or the list/dataset itself."""
    if isinstance(texts, (str, os.PathLike)):
        return str(check_corpus_file(texts))
    if isinstance(texts, (list, tuple)) or hasattr(texts, "column_names"):
        return texts
    raise TypeError(
        f"engine='ray' reads the corpus once per shard, so texts must be a list, a dataset or a corpus "
        f"file, not a {type(texts).__name__} (an iterator can be read only once)."
    )


def _corpus_digest(texts: Any) -> str:
    """A hash of every text, in order: what a restarted run checks its stored shards against."""
    hasher = hashlib.blake2b(digest_size=16)
    for text in iter_texts(texts):
        data = text.encode("utf-8", "surrogatepass")
        hasher.update(struct.pack("<q", len(data)) + data)
    return hasher.hexdigest()


def _mine_on_ray(
    model: Any,
    named: list[tuple[str | None, Any, Any]],
    texts: Any,
    features: Any,
    options: _Options,
    out: str | os.PathLike | None,
    overwrite: bool,
    progress: bool,
    workers: int,
    shards: int,
) -> Mined | dict[Any, Mined]:
    """Steps: start the workers (each loads the model and SAEs); key the run (options, model and
    SAE identity from a worker, the corpus' hash); mine the shards not yet stored, storing each as
    it arrives; merge all shards exactly; build the tables on a worker; write them like a
    single-process run."""
    ray = require_ray()
    texts = _ray_texts(texts)
    setup = functools.partial(_worker_setup, _model_loader(model), [(name, spec) for name, _, spec in named])
    corpus = _corpus_digest(texts)
    with WorkerPool(setup, workers) as pool:
        key = {"engine": "ray", "shards": shards, "corpus": corpus, **pool.call(_worker_key, features, options)}
        store = None
        if out is not None:
            store = ShardStore(shards_path(Path(out)), key, overwrite=overwrite, restart_hint=_RESTART)
        done = store.done(range(shards)) if store else []
        todo = [shard for shard in range(shards) if shard not in done]
        # Merged as they come (the merge's order does not matter), so the driver holds two
        # shards' buffers at a time, not all of them.
        merged: dict | None = None
        for shard in done if store else []:  # stored by an earlier driver: read, never mined again
            merged = _merged_with(merged, store.load(shard))  # type: ignore[union-attr]
        bar = tqdm(total=shards, initial=len(done), desc="shards", unit="shard", disable=not progress)
        for shard, result in pool.map(_worker_mine_shard, todo, ray.put(texts), features, options, shards):
            if store:
                store.save(shard, result)
            merged = _merged_with(merged, result)
            bar.update()
        bar.close()
        mined = pool.call(_worker_finish, features, options, merged)
    by_key = {key: each for (_, key, _), each in zip(named, mined)}
    _write(by_key, named, out)
    if store:
        store.remove()
    return by_key[None] if named[0][0] is None else by_key


def _selected_features(sae, features: Sequence[int] | None) -> torch.Tensor:
    if features is None:
        return torch.arange(sae.cfg.d_sae)
    if not hasattr(features, "__iter__"):
        features = [features]  # type: ignore[list-item]
    chosen = [check_feature(sae, f) for f in features]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"features lists a feature twice: {list(features)}.")
    return torch.tensor(chosen, dtype=torch.long)


def _frame(
    model, top: RunningTopK, selected: torch.Tensor
) -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor, dict[int, str]]:
    """The buffers as rows (features in the order asked, only activations above zero), the
    rows' context ids and activations, and the decoded string of every id in them."""
    rank, column = torch.nonzero(top.values > 0, as_tuple=True)
    order = torch.argsort(column * top.k + rank)
    rank, column = rank[order], column[order]
    c = top.context
    context_ids, context_acts = top.tokens[rank, column], top.acts[rank, column]
    # Tens of thousands of rows for a wide SAE: few tokenizer calls and little Python per row.
    # Ids outside the text (-1) only ever sit at the ends of a context, so slices skip them.
    inside = context_ids >= 0
    first = (~inside[:, :c]).sum(1).tolist()
    last = (c + 1 + inside[:, c + 1 :].sum(1)).tolist()
    ids = context_ids.tolist()
    piece = _token_strings(model, torch.unique(context_ids[inside]).tolist())
    before = _decode_many(model.tokenizer, [row[a:c] for row, a in zip(ids, first)])
    after = _decode_many(model.tokenizer, [row[c + 1 : b] for row, b in zip(ids, last)])
    peak = [piece[row[c]] for row in ids]
    frame = pd.DataFrame(
        {
            "feature": selected[column].tolist(),
            "rank": (rank + 1).tolist(),
            "activation": top.values[rank, column].tolist(),
            "text_id": top.text_id[rank, column].tolist(),
            "position": top.position[rank, column].tolist(),
            "token": peak,
            "context": [f"{b}{PEAK_OPEN}{p}{PEAK_CLOSE}{a}" for b, p, a in zip(before, peak, after)],
        },
        columns=COLUMNS,
    )
    return frame, context_ids, context_acts, piece


def _token_strings(model, ids: list[int]) -> dict[int, str]:
    """Each token id decoded on its own (``" the"``), in one tokenizer call."""
    return dict(zip(ids, _decode_many(model.tokenizer, [[i] for i in ids])))


def _decode_many(tokenizer, sequences: list[list[int]]) -> list[str]:
    """``tokenizer.batch_decode(sequences)`` without its per-item Python checks, which cost more
    than the decoding: a fast tokenizer that cleans up no spaces decodes in its Rust backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.clean_up_tokenization_spaces:
        return tokenizer.batch_decode(sequences)
    return backend.decode_batch(sequences, skip_special_tokens=False)
