"""The single-process pass: each batch of windows runs once through the model, to the deepest hook
any SAE reads, and every SAE encodes the activation at its own hook into its own buffers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scope.features import check_feature
from scope.hooks import activation_shape, check_width, run_to_hooks, sae_hook
from scope.mining.buffers import HISTOGRAM_EDGES, ActivityStats, RunningTopK
from scope.mining.results import Mined, frame_of
from scope.mining.scores import Scores, scores_of
from scope.mining.windows import Window, batch_tokens

_CHUNK = 1 << 22  # activations listed at a time for the fired entries (bounds a dense SAE's list)
_NO_PEAK = torch.iinfo(torch.long).max


@dataclass
class Batch:
    """A batch of windows on the device the SAEs encode on: ``tokens`` [batch, pos] (BOS first,
    right padding), each window's ``lengths`` (text tokens), ``context_only`` leading tokens (read,
    not scored), ``starts`` and ``text_id``."""

    tokens: torch.Tensor
    lengths: list[int]
    context_only: list[int]
    starts: torch.Tensor
    text_id: torch.Tensor

    @classmethod
    def of(cls, model, windows: list[Window], device: torch.device) -> Batch:
        tokens, mask = batch_tokens(model, windows)
        return cls(
            tokens=tokens.to(device),
            lengths=mask.sum(1).tolist(),
            context_only=[w.context_only for w in windows],
            starts=torch.tensor([w.start for w in windows], device=device),
            text_id=torch.tensor([w.text_id for w in windows], device=device),
        )

    @property
    def n_scored(self) -> int:
        """Text tokens scored in this batch (not BOS, padding or context-only tokens)."""
        return sum(self.lengths) - sum(self.context_only)


def encode_batch(model, sae, act: torch.Tensor, batch: Batch, selected: torch.Tensor | None) -> Scores:
    """``sae``'s scores of ``act``, the activation at its hook, ``[batch, pos, features]``
    (:mod:`scope.mining.scores`), zero on BOS and padding (so that they never fire). Every
    position is encoded, in one call with no host round trip; the rows are then zeroed in place."""
    hook = sae_hook(sae)
    if activation_shape(model, hook) is None:  # a hook the config does not describe
        check_width(model, sae, tuple(act.shape[2:]))
    n, pos = act.shape[:2]
    scores = scores_of(sae, act.reshape(n * pos, *act.shape[2:]))
    scores = Scores(scores.score.reshape(n, pos, -1), scores.threshold)
    if selected is not None:
        scores = scores.select(selected)
    scores.score[:, 0] = 0  # BOS
    for row, length in enumerate(batch.lengths):
        scores.score[row, 1 + length :] = 0  # padding
    return scores


def _contexts(
    scores: Scores, batch: Batch, row: torch.Tensor, feature: torch.Tensor, peak: torch.Tensor, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For entries (window ``row``, ``feature``) peaking at ``peak`` (BOS = 0): the token ids
    ``[entries, 2 * context + 1]`` around the peak (-1 outside the text: beyond the window, BOS,
    padding) and the feature's activations on them (0 outside)."""
    where = peak[:, None] + torch.arange(-context, context + 1, device=peak.device)  # [entries, span]
    lengths = torch.tensor(batch.lengths, device=peak.device)
    text = (where >= 1) & (where <= lengths[row][:, None])
    # Flat offsets read with one take each: cheaper than indexing by three broadcast tensors.
    _, pos, n_features = scores.score.shape
    token_at = (row * pos)[:, None] + where.clamp(0, pos - 1)  # into [batch, pos]
    ids = torch.where(text, batch.tokens.reshape(-1)[token_at], -1).to(torch.int32)
    values = scores.activation(scores.score.reshape(-1)[token_at * n_features + feature[:, None]], feature[:, None])
    return ids, torch.where(text, values, 0.0)


@dataclass
class Fired:
    """The scored entries of some windows where a feature fired (activation > 0): window ``row``,
    ``position`` (BOS = 0), ``feature`` and ``value``, one per entry. Listed once per batch, so
    that the histograms, the per-window maxima and their first peaks each cost a pass over the few
    entries that fired, not over the dense ``[batch, pos, features]`` activations."""

    row: torch.Tensor
    position: torch.Tensor
    feature: torch.Tensor
    value: torch.Tensor

    @classmethod
    def of(cls, scores: Scores, first_scored: list[int]) -> Fired:
        """The entries of ``scores`` [rows, pos, features] that fire at or after each row's
        ``first_scored`` position (the context-only tokens before it are read, never scored;
        BOS, position 0, is zeroed by :func:`encode_batch`, so ``first_scored`` is at least 1)."""
        _, pos, n_features = scores.score.shape
        flat = scores.fires().reshape(-1).nonzero().squeeze(1)
        value = scores.score.reshape(-1).index_select(0, flat)
        row, rest = flat.div(pos * n_features, rounding_mode="floor"), flat.remainder(pos * n_features)
        position, feature = rest.div(n_features, rounding_mode="floor"), rest.remainder(n_features)
        # Filter only what can be there: scores at or below 0 (a threshold is never negative, so
        # only without one) and context-only tokens (only in windows that have some).
        keep = (value > 0) if scores.threshold is None else None
        if max(first_scored) > 1:
            scored = position >= torch.tensor(first_scored, device=flat.device)[row]
            keep = scored if keep is None else keep & scored
        if keep is None:
            return cls(row, position, feature, value)
        return cls(row[keep], position[keep], feature[keep], value[keep])

    def maxima(self, rows: int, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per (window, feature), ``[rows, features]`` each: the largest activation (``-inf``
        where the feature never fired) and the first position it occurs at."""
        entry = self.row * n_features + self.feature
        value = self.value.float()
        best = torch.full((rows * n_features,), float("-inf"), device=value.device)
        best.scatter_reduce_(0, entry, value, "amax")
        at_best = value == best[entry]
        peak = torch.full((rows * n_features,), _NO_PEAK, device=value.device)
        peak.scatter_reduce_(0, entry[at_best], self.position[at_best], "amin")  # the first of equal maxima
        return best.view(rows, n_features), peak.view(rows, n_features)


def _maxima_and_peaks(scores: Scores, batch: Batch, stats: ActivityStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (window, feature) of ``scores`` [batch, pos, features], the largest scored activation
    and its first position (:meth:`Fired.maxima`); adds the fired entries to ``stats``. A few
    windows at a time (about ``_CHUNK`` activations), so that even a densely firing SAE's list
    of entries stays small."""
    n, pos, n_features = scores.score.shape
    first_scored = [1 + c for c in batch.context_only]
    maxima, peaks = [], []
    step = max(1, _CHUNK // (pos * n_features))
    for start in range(0, n, step):
        fired = Fired.of(scores.rows(start, start + step), first_scored[start : start + step])
        stats.add(fired.feature, fired.value)
        best, peak = fired.maxima(min(step, n - start), n_features)
        maxima.append(best)
        peaks.append(peak)
    stats.n_tokens += batch.n_scored
    return torch.cat(maxima), torch.cat(peaks)


@dataclass
class SAERun:
    """One SAE's part of a pass: its features and its running buffers. ``name`` is its
    partition in a many-SAE result (None for a single SAE)."""

    name: str | None
    sae: Any
    selected: torch.Tensor
    subset: bool  # only some features asked for
    top: RunningTopK
    stats: ActivityStats

    @classmethod
    def start(cls, name: str | None, sae: Any, features: Sequence[int] | None, k: int, context: int) -> SAERun:
        device = device_of(sae)
        selected = _selected_features(sae, features)
        return cls(
            name,
            sae,
            selected,
            features is not None,
            RunningTopK(len(selected), k, context, device),
            ActivityStats(len(selected), device),
        )

    def update(self, model, act: torch.Tensor, batch: Batch) -> None:
        """Take in a batch, given the activation at this SAE's hook: all on the SAE's device."""
        selected = self.selected.to(act.device) if self.subset else None
        scores = encode_batch(model, self.sae, act, batch, selected)
        maxima, peaks = _maxima_and_peaks(scores, batch, self.stats)
        rank, feature, row = self.top.update(maxima, batch.text_id)
        peak = peaks[row, feature]  # among scored tokens; the context shown around it is all the window read
        position = batch.starts[row] + peak - 1
        self.top.fill(rank, feature, position, *_contexts(scores, batch, row, feature, peak, self.top.context))

    def mined(self, model) -> Mined:
        frame, context_ids, context_acts, token_strings = frame_of(model, self.top.state(), self.selected)
        return Mined(
            examples=frame,
            features=self.selected.tolist(),
            n_tokens=self.stats.n_tokens,
            density=self.stats.density(),
            histogram=self.stats.histogram.cpu(),
            histogram_edges=HISTOGRAM_EDGES.clone(),
            context_ids=context_ids,
            context_acts=context_acts,
            token_strings=token_strings,
        )


def mine_batches(model, runs: Sequence[SAERun], batches: Iterable[list[Window]]) -> Iterator[int]:
    """Feed every batch to every SAE from one forward pass, run only to the deepest hook they
    read; yields the windows read with each batch."""
    hooks = sorted({sae_hook(run.sae) for run in runs})
    devices = {device_of(run.sae) for run in runs}
    for windows in batches:
        on = {device: Batch.of(model, windows, device) for device in devices}  # each SAE's device
        acts = run_to_hooks(model, next(iter(on.values())).tokens, hooks)
        for run in runs:
            device = device_of(run.sae)
            run.update(model, acts[sae_hook(run.sae)].to(device), on[device])
        del acts  # the hooks' activations are the batch's largest tensors after the SAEs' own
        yield len(windows)


def device_of(sae: Any) -> torch.device:
    """Where ``sae`` encodes: its buffers live there too."""
    weight = next(iter(sae.parameters()), None)
    return weight.device if weight is not None else torch.device("cpu")


def _selected_features(sae, features: Sequence[int] | None) -> torch.Tensor:
    if features is None:
        return torch.arange(sae.cfg.d_sae)
    if not hasattr(features, "__iter__"):
        features = [features]  # type: ignore[list-item]
    chosen = [check_feature(sae, f) for f in features]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"features lists a feature twice: {list(features)}.")
    return torch.tensor(chosen, dtype=torch.long)
