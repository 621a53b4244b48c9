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
from scope.mining.windows import Window, batch_tokens

_PEAK_CHUNK = 1 << 24  # activations gathered at a time to find where kept entries peak


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


def encode_batch(model, sae, act: torch.Tensor, batch: Batch, selected: torch.Tensor | None) -> torch.Tensor:
    """``sae``'s features of ``act``, the activation at its hook, ``[batch, pos, features]``, zero on
    BOS and padding (so that they never count or show up). Every position is encoded, in one
    call with no host round trip; the rows are then zeroed in place."""
    hook = sae_hook(sae)
    if activation_shape(model, hook) is None:  # a hook the config does not describe
        check_width(model, sae, tuple(act.shape[2:]))
    n, pos = act.shape[:2]
    with torch.no_grad():
        acts = sae.encode(act.reshape(n * pos, *act.shape[2:])).reshape(n, pos, -1)
    if selected is not None:
        acts = acts[..., selected]
    acts[:, 0] = 0  # BOS
    for row, length in enumerate(batch.lengths):
        acts[row, 1 + length :] = 0  # padding
    return acts


def _contexts(
    acts: torch.Tensor, batch: Batch, row: torch.Tensor, feature: torch.Tensor, peak: torch.Tensor, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For entries (window ``row``, ``feature``) peaking at ``peak`` (BOS = 0): the token ids
    ``[entries, 2 * context + 1]`` around the peak (-1 outside the text: beyond the window, BOS,
    padding) and the feature's activations on them (0 outside)."""
    where = peak[:, None] + torch.arange(-context, context + 1, device=peak.device)  # [entries, span]
    lengths = torch.tensor(batch.lengths, device=peak.device)
    text = (where >= 1) & (where <= lengths[row][:, None])
    where = where.clamp(0, acts.shape[1] - 1)
    ids = torch.where(text, batch.tokens[row[:, None], where], -1).to(torch.int32)
    values = acts[row[:, None], where, feature[:, None]].float().clamp_min(0)
    return ids, torch.where(text, values, 0.0)


def _first_peaks(acts: torch.Tensor, row: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """The first position of the maximum of each entry (window ``row``, ``feature``) of ``acts``
    [batch, pos, features], read a few million activations at a time."""
    pos = acts.shape[1]
    where = torch.arange(pos, device=acts.device)
    step = max(1, _PEAK_CHUNK // pos)
    peaks = [
        acts[r[:, None], where, f[:, None]].argmax(dim=1)  # argmax: the first of equal maxima
        for r, f in zip(row.split(step), feature.split(step))
    ]
    return torch.cat(peaks) if peaks else row.new_empty(0)


def _set_aside_context_only(acts: torch.Tensor, batch: Batch) -> torch.Tensor | None:
    """Zero the context-only tokens of ``acts`` [batch, pos, features] in place, so that they are
    never scored, and return what they held (positions 1 .. the batch's longest context-only
    run, every row); None when the batch has none."""
    longest = max(batch.context_only)
    if not longest:
        return None
    kept = acts[:, 1 : 1 + longest].clone()
    for row, n in enumerate(batch.context_only):
        acts[row, 1 : 1 + n] = 0
    return kept


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
        acts = encode_batch(model, self.sae, act, batch, selected)
        context_only = _set_aside_context_only(acts, batch)
        self.stats.update(acts.reshape(-1, acts.shape[-1]), batch.n_scored)
        maxima = acts.amax(dim=1)  # [batch, features]; no argmax over every entry, only those kept
        maxima = maxima.float().masked_fill_(maxima <= 0, float("-inf"))
        rank, feature, row = self.top.update(maxima, batch.text_id)
        peak = _first_peaks(acts, row, feature)  # among scored tokens: before the context is put back
        if context_only is not None:  # shown around a peak: the activations the window really had
            acts[:, 1 : 1 + context_only.shape[1]] = context_only
        position = batch.starts[row] + peak - 1
        self.top.fill(rank, feature, position, *_contexts(acts, batch, row, feature, peak, self.top.context))

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
