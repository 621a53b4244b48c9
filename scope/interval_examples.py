"""Examples sampled from intervals of a feature's activation distribution, below its top examples
(the groups a feature page shows after its top activations, :mod:`scope.pages`).

How the interval groups are sampled (a second pass over the corpus, after :func:`scope.mine`):

1. From the mined histogram, the quantiles of the feature's non-zero activations split
   ``(0, max)`` into ``groups`` intervals (e.g. 0-25%, 25-50%, 50-75%, 75-100%).
2. Each window of the corpus (as mined) whose maximum for the feature falls in an interval is a
   candidate for that interval's group; top examples are skipped.
3. ``per_group`` candidates per interval are kept by seeded reservoir sampling (uniform over the
   candidates, memory bounded by features x groups x per_group).

:func:`check_mined_matches` checks, before that pass, that a mining result belongs to the SAE and
corpus it is read against.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scope._io import batched, iter_texts
from scope.hooks import run_to_hooks, sae_hook
from scope.inputs import pad, pad_id
from scope.mining import Mined, iter_windows


@dataclass
class Sampled:
    """One sampled example: where it is, its peak, and the context around the peak."""

    text_id: int
    position: int
    activation: float
    tokens: list[int]
    acts: list[float]
    peak: int  # index of the peak in ``tokens``


@dataclass
class Group:
    """Examples whose peak lies in ``[low, high)``, between the ``quantiles`` of non-zero activations."""

    low: float
    high: float
    quantiles: tuple[float, float]
    examples: list[Sampled] = field(default_factory=list)
    seen: int = 0  # candidates met (the reservoir keeps ``per_group`` of them)


def activation_quantiles(mined: Mined, feature: int, fractions: Sequence[float]) -> list[float]:
    """Quantiles of the feature's non-zero token activations, read off the mined histogram
    (interpolated geometrically inside a bin, as its bins are log-spaced)."""
    i = mined.features.index(feature)
    counts = mined.histogram[i].double()
    edges = mined.histogram_edges.double()
    total = float(counts.sum())
    cumulative = torch.cumsum(counts, 0)
    out = []
    for q in fractions:
        target = q * total
        b = int(torch.searchsorted(cumulative, torch.tensor(target, dtype=torch.float64)).clamp(max=len(counts) - 1))
        before = float(cumulative[b - 1]) if b else 0.0
        inside = (target - before) / float(counts[b]) if counts[b] > 0 else 0.0
        lo, hi = float(edges[b]), float(edges[b + 1])
        out.append(lo * (hi / lo) ** inside if lo > 0 else hi * inside)
    return out


def check_mined_matches(model: Any, sae: Any, mined: Mined, texts: Any, window: int) -> None:
    """ValueError unless ``mined`` is a mining result of ``sae`` over ``texts`` (with ``window``).

    A :class:`Mined` records no SAE identity, so this re-reads its strongest example: the
    features must lie within the SAE's width, and the SAE must give the recorded activation on
    the recorded token of that text (one window's forward pass). Another SAE, corpus or window
    gives another value there. Skipped for a one-shot iterator of texts (it cannot be re-read).
    """
    beyond = [f for f in mined.features if not 0 <= int(f) < sae.cfg.d_sae]
    if beyond:
        raise ValueError(
            f"mined holds feature(s) {beyond[:5]}, beyond this SAE's {sae.cfg.d_sae} features: it is the "
            "mining result of another SAE. Mine this SAE (scope.mine) or pass its own result."
        )
    if mined.examples.empty or (not isinstance(texts, (str, os.PathLike)) and iter(texts) is texts):
        return
    top = mined.examples.loc[mined.examples["activation"].idxmax()]
    text_id, position, recorded = int(top["text_id"]), int(top["position"]), float(top["activation"])
    text = next(itertools.islice(iter_texts(texts), text_id, None), None)
    found = None if text is None else _activation_at(model, sae, text, window, int(top["feature"]), position)
    if found is None or not math.isclose(found, recorded, rel_tol=1e-3, abs_tol=1e-4):
        read = "texts has no such token" if found is None else f"this SAE reads {found:.6g} there"
        raise ValueError(
            f"mined does not match this SAE and texts: its strongest example is feature {int(top['feature'])} "
            f"at {recorded:.6g} on text {text_id}, token {position}, but {read}. It was mined with another "
            "SAE, corpus or window (a mining result records none of them, so scope re-reads that example): "
            "pass the result of scope.mine(model, sae, texts) for these very arguments."
        )


def _activation_at(model: Any, sae: Any, text: str, window: int, feature: int, position: int) -> float | None:
    """The SAE's activation of ``feature`` at token ``position`` of ``text``, read in the mining
    window that holds it (None when the text is shorter)."""
    for w in iter_windows(model, [text], window):
        if w.start <= position < w.start + len(w.tokens):
            tokens = torch.tensor([[model.tokenizer.bos_token_id, *w.tokens]])
            act = run_to_hooks(model, tokens, [sae_hook(sae)])[sae_hook(sae)]
            with torch.no_grad():
                values = sae.encode(act.to(sae.W_dec.dtype))
            return float(values[0, position - w.start + 1, feature])
    return None


def interval_examples(
    model: Any,
    sae: Any,
    mined: Mined,
    features: list[int],
    texts: Any,
    groups: int,
    per_group: int,
    context: int,
    window: int,
    seed: int,
) -> dict[int, list[Group]]:
    """For each feature, ``groups`` interval groups of up to ``per_group`` sampled examples
    (see the module docstring); one pass over ``texts``, skipped when ``groups`` is 0."""
    plan = {f: _intervals(mined, f, groups) for f in features}
    if not groups or not any(plan.values()):
        return plan
    top = {(int(r.feature), int(r.text_id), int(r.position)) for r in mined.examples.itertuples()}
    hook = sae_hook(sae)
    selected = torch.tensor(features, dtype=torch.long)
    rng = random.Random(seed)
    bos = model.tokenizer.bos_token_id
    for batch in batched(iter_windows(model, iter_texts(texts), window), 16):
        tokens, mask = pad([torch.tensor([bos, *w.tokens]) for w in batch], pad_id(model), side="right")
        act = run_to_hooks(model, tokens, [hook], attention_mask=mask)[hook]
        with torch.no_grad():
            values = sae.encode(act.to(sae.W_dec.dtype))[..., selected.to(act.device)].float().cpu()
        real = mask.bool()
        real[:, 0] = False  # BOS never counts
        for row, w in enumerate(batch):
            real[row, 1 : 1 + w.context_only] = False  # read as context only, scored in the window before
        values = values.masked_fill(~real[..., None], 0.0)  # [batch, pos, features]
        maxima, peaks = values.max(dim=1)
        for b, j in zip(*torch.nonzero(maxima > 0, as_tuple=True)):
            b, j = int(b), int(j)
            feature, value, peak = features[j], float(maxima[b, j]), int(peaks[b, j])
            if (feature, batch[b].text_id, batch[b].start + peak - 1) in top:
                continue
            group = next((g for g in plan[feature] if g.low <= value < g.high), None)
            if group is None:
                continue
            group.seen += 1
            slot = len(group.examples) if len(group.examples) < per_group else rng.randrange(group.seen)
            if slot < per_group:
                example = _sampled(batch[b], tokens[b], values[b, :, j], peak, int(mask[b].sum()), context)
                if slot == len(group.examples):
                    group.examples.append(example)
                else:
                    group.examples[slot] = example
    for intervals in plan.values():
        for group in intervals:
            group.examples.sort(key=lambda e: -e.activation)
    return plan


def _intervals(mined: Mined, feature: int, groups: int) -> list[Group]:
    i = mined.features.index(feature)
    if not groups or float(mined.histogram[i].sum()) == 0:
        return []
    fractions = [g / groups for g in range(groups + 1)]
    edges = activation_quantiles(mined, feature, fractions)
    edges[0], edges[-1] = 0.0, math.inf  # every non-zero activation falls in some interval
    bounds = [(edges[g], edges[g + 1], (fractions[g], fractions[g + 1])) for g in range(groups)]
    return [Group(low, high, q) for low, high, q in reversed(bounds)]  # highest first


def _sampled(window, tokens: torch.Tensor, acts: torch.Tensor, peak: int, length: int, context: int) -> Sampled:
    start, stop = max(1, peak - context), min(length, peak + context + 1)
    return Sampled(
        text_id=window.text_id,
        position=window.start + peak - 1,
        activation=float(acts[peak]),
        tokens=tokens[start:stop].tolist(),
        acts=acts[start:stop].tolist(),
        peak=peak - start,
    )
