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

import hashlib
import itertools
import os
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from scope import _checks
from scope._io import batched, check_writable_file, iter_texts, write_atomically, write_parquet
from scope.features import check_feature
from scope.hooks import activation_shape, check_compatible, check_width, run_to_hooks, sae_hook
from scope.inputs import pad, pad_id
from scope.subjects import subject_of

DEFAULT_CONTEXT = 8  # tokens shown either side of a peak, in tables and on feature pages

COLUMNS = ["feature", "rank", "activation", "text_id", "position", "token", "context"]
PEAK_OPEN, PEAK_CLOSE = "\u27e6", "\u27e7"  # ⟦peak token⟧ inside a context string


@dataclass
class Window:
    """``tokens`` (no BOS) of text ``text_id``, starting at text position ``start`` (BOS = 0)."""

    text_id: int
    start: int
    tokens: list[int]


# ----------------------------------------------------------------------------- windows


def iter_windows(model, texts: Iterable[str], window: int) -> Iterator[Window]:
    """Every text cut into windows of at most ``window - 1`` tokens (each window gets a BOS)."""
    size = _check_window(window) - 1
    for text_id, text in enumerate(texts):
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


def _encode_batch(model, sae, tokens: torch.Tensor, mask: torch.Tensor, selected: torch.Tensor | None) -> EncodedBatch:
    hook = sae_hook(sae)
    act = run_to_hooks(model, tokens, [hook])[hook]
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


def _save_checkpoint(
    path: Path, key: dict, windows_done: int, corpus: str, top: RunningTopK, stats: ActivityStats
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "key": key,
        "windows_done": windows_done,
        "corpus": corpus,
        "top": vars(top),
        "stats": vars(stats),
    }
    write_atomically(path, lambda tmp: torch.save(state, tmp))  # a kill mid-write keeps the previous one


def _load_checkpoint(path: Path, key: dict, top: RunningTopK, stats: ActivityStats) -> tuple[int, str | None]:
    """Restore ``top`` and ``stats`` from a checkpoint of the same run; returns the windows done
    and the hash of those windows (0 and None without a checkpoint)."""
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
            if name in ("features", "sae_weights", "model_weights") or name not in key
            else f"{name} {state['key'][name]!r} then, {key[name]!r} now"
            for name in differs
        )
        raise ValueError(f"{path} is the checkpoint of a different run ({shown}); {_RESTART}.")
    problem = _buffers_problem(state, top, stats)
    if problem:
        raise ValueError(f"{path} is not a checkpoint scope.mine can resume ({problem}); {_RESTART}.")
    vars(top).update(state["top"])
    vars(stats).update(state["stats"])
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


def _buffers_problem(state: dict, top: RunningTopK, stats: ActivityStats) -> str | None:
    """What keeps the checkpoint's buffers from being this run's (same key, other shapes)."""
    for part, fresh in (("top", vars(top)), ("stats", vars(stats))):
        saved = state.get(part)
        if not isinstance(saved, dict) or saved.keys() != fresh.keys():
            return f"its {part!r} buffers are missing"
        for name, value in fresh.items():
            if isinstance(value, torch.Tensor):
                ok = (
                    isinstance(saved[name], torch.Tensor)
                    and saved[name].shape == value.shape
                    and saved[name].dtype == value.dtype
                )
            else:
                ok = type(saved[name]) is type(value)
            if not ok:
                return f"{part}.{name} is not shaped like this run's"
    return None


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

    def start(
        self, windows: Iterator[Window], top: RunningTopK, stats: ActivityStats, *, overwrite: bool
    ) -> Iterator[Window]:
        """The windows still to read (those the checkpoint covers are re-read and checked)."""
        if overwrite:
            self.path.unlink(missing_ok=True)
        self.done, corpus = _load_checkpoint(self.path, self.key, top, stats)
        windows = _hashed(windows, self.hasher)
        if corpus is not None:
            _skip_read(windows, self.done, self.hasher, corpus, self.path)
        return windows

    def save(self, done: int, top: RunningTopK, stats: ActivityStats) -> None:
        _save_checkpoint(self.path, self.key, done, self.hasher.hexdigest(), top, stats)

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
    and activation histograms come from the same pass: see :func:`mine`.
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


def mine(
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
) -> Mined:
    """:func:`top_examples` plus each feature's density and activation histogram, in one pass."""
    k = _checks.positive_int(k, "k")
    context = _checks.non_negative_int(context, "context")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    checkpoint_every = _checks.positive_int(checkpoint_every, "checkpoint_every")
    window = _check_window(window)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}.")
    if out is not None:
        check_writable_file(out)
    check_compatible(model, sae)
    selected = _selected_features(sae, features)
    top, stats = RunningTopK(len(selected), k, context), ActivityStats(len(selected))
    windows: Iterator[Window] = iter_windows(model, iter_texts(texts), window)
    resume = None
    if out is not None:
        resume = _Resume(checkpoint_path(Path(out)), _run_key(model, sae, selected, k, context, window, batch_size))
        windows = resume.start(windows, top, stats, overwrite=overwrite)
    done = resume.done if resume else 0
    bar = tqdm(
        batched(windows, batch_size),
        desc="top examples",
        unit="batch",
        disable=not progress,
        initial=done // batch_size,
    )
    for n, batch in enumerate(bar, 1):
        tokens, mask = _batch_tokens(model, batch)
        enc = _encode_batch(model, sae, tokens, mask, None if features is None else selected)
        stats.update(enc.acts)
        slot, feature, row = top.update(_window_maxima(enc), torch.tensor([w.text_id for w in batch]))
        peak = _peaks(enc, row, feature)
        starts = torch.tensor([w.start for w in batch])
        top.fill(slot, feature, starts[row] + peak - 1, *_contexts(enc, row, feature, peak, context))
        done += len(batch)
        if resume and n % checkpoint_every == 0:
            resume.save(done, top, stats)
    frame, context_ids, context_acts, token_strings = _frame(model, top, selected)
    if out is not None:
        write_parquet(frame, out)
    if resume:
        resume.finish()
    return Mined(
        examples=frame,
        features=selected.tolist(),
        n_tokens=stats.n_tokens,
        density=stats.density(),
        histogram=stats.histogram,
        histogram_edges=HISTOGRAM_EDGES.clone(),
        context_ids=context_ids,
        context_acts=context_acts,
        token_strings=token_strings,
    )


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
