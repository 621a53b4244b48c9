"""Running buffers of a mining pass, kept on the device the SAE encodes on: per feature, the top-k
examples so far, and activity statistics.

:class:`RunningTopK` holds each feature's ``k`` largest example maxima with where they peaked and
the tokens around the peak; :class:`ActivityStats` histograms non-zero activations (and so counts
firing tokens). Both take a batch in with batched tensor operations and copy nothing to the host;
:meth:`RunningTopK.state` / :meth:`ActivityStats.state` do, for checkpoints and results.
:func:`merge_top` / :func:`merge_stats` give exactly the buffers one pass over the union of several
parts' examples would hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

HISTOGRAM_EDGES = torch.logspace(-3, 4, 57)  # 8 bins per decade from 1e-3 to 1e4


class RunningTopK:
    """Per feature, the ``k`` largest example maxima seen so far, with where they peaked, the
    token ids around the peak (``-1`` beyond the window's edges) and the feature's activations
    on those tokens.

    Ranked entries (``values``, ``text_id``, ``position``: ``[k, features]``) are re-sorted each
    batch; contexts (``tokens``, ``acts``: ``[k, features, 2 * context + 1]``) stay in the storage
    row ``slot`` maps each rank to, so a batch writes only the contexts of the entries it brings
    in, never the whole context buffers.
    """

    def __init__(self, n_features: int, k: int, context: int, device: torch.device | str | None = None):
        self.k, self.context = k, context
        span = 2 * context + 1
        self.values = torch.full((k, n_features), float("-inf"), device=device)
        self.text_id = torch.full((k, n_features), -1, dtype=torch.long, device=device)
        self.position = torch.full((k, n_features), -1, dtype=torch.long, device=device)
        self.slot = torch.arange(k, device=device)[:, None].repeat(1, n_features)
        self.tokens = torch.full((k, n_features, span), -1, dtype=torch.int32, device=device)
        self.acts = torch.zeros((k, n_features, span), device=device)

    def update(self, values: torch.Tensor, text_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Merge a batch: ``values`` [batch, features] (``-inf`` where a feature is silent),
        ``text_id`` [batch]. Returns the ``(rank, feature, batch row)`` of each entry that came
        in, whose peak position and context the caller then gives to :meth:`fill`: those are
        found only for the few examples that make it into the buffers, not for every one seen."""
        k = self.k
        # Only features where some example beats the k-th entry change (equal ones rank after it).
        cols = (values.amax(0) > self.values[-1]).nonzero().squeeze(1)
        merged = torch.cat([self.values[:, cols], values[:, cols]])
        # Stable order for equal maxima: earlier examples first, so results never depend on batching.
        order = torch.sort(merged, dim=0, descending=True, stable=True).indices[:k]  # [k, changed]
        fresh = order >= k
        # The old entries kept are the best ones, in order; each fresh entry takes the storage of one
        # pushed out (old ranks k - n_fresh .. k - 1), in rank order.
        pushed_out = k - fresh.sum(0) + fresh.cumsum(0) - 1
        kept = order.clamp(max=k - 1)
        self.slot[:, cols] = self.slot[:, cols].gather(0, torch.where(fresh, pushed_out, kept))
        self.values[:, cols] = merged.gather(0, order)
        self.text_id[:, cols] = self.text_id[:, cols].gather(0, kept)
        self.position[:, cols] = self.position[:, cols].gather(0, kept)
        rank, column = fresh.nonzero(as_tuple=True)
        row = order[rank, column] - k
        feature = cols[column]
        self.text_id[rank, feature] = text_id[row]
        return rank, feature, row

    def fill(
        self,
        rank: torch.Tensor,
        feature: torch.Tensor,
        position: torch.Tensor,
        tokens: torch.Tensor,
        acts: torch.Tensor,
    ) -> None:
        """Where the entries :meth:`update` took in peaked (``position`` [entries]) and their
        contexts (``tokens``/``acts`` [entries, 2 * context + 1])."""
        self.position[rank, feature] = position
        storage = self.slot[rank, feature]
        self.tokens[storage, feature] = tokens
        self.acts[storage, feature] = acts

    def state(self) -> dict[str, Any]:
        """The buffers on the host, contexts in rank order: what checkpoints and shard results hold."""
        spans = self.slot[..., None].expand(-1, -1, self.tokens.shape[-1])
        return {
            "k": self.k,
            "context": self.context,
            "values": self.values.cpu(),
            "text_id": self.text_id.cpu(),
            "position": self.position.cpu(),
            "tokens": self.tokens.gather(0, spans).cpu(),
            "acts": self.acts.gather(0, spans).cpu(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str | None = None) -> RunningTopK:
        top = cls.__new__(cls)
        top.load_state(state, device)
        return top

    def load_state(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Take :meth:`state`'s buffers back, onto ``device`` (by default where they were)."""
        if device is None:
            device = self.values.device if hasattr(self, "values") else "cpu"
        self.k, self.context = state["k"], state["context"]
        for name in ("values", "text_id", "position", "tokens", "acts"):
            setattr(self, name, state[name].to(device))
        self.slot = torch.arange(self.k, device=device)[:, None].repeat(1, self.values.shape[1])


class ActivityStats:
    """Per feature, a histogram of its non-zero activations over fixed log-spaced bins (values
    outside go to the first / last bin): its row sums count the tokens it fired on."""

    def __init__(self, n_features: int, device: torch.device | str | None = None):
        self.n_tokens = 0
        self.histogram = torch.zeros(n_features, len(HISTOGRAM_EDGES) - 1, dtype=torch.long, device=device)

    def add(self, feature: torch.Tensor, value: torch.Tensor) -> None:
        """Count fired entries, given as lists: ``feature`` [entries] and ``value`` [entries] > 0
        (the caller counts the tokens they came from in :attr:`n_tokens`)."""
        n_bins = self.histogram.shape[1]
        bins = torch.bucketize(value.float(), HISTOGRAM_EDGES[1:-1].to(value.device))
        self.histogram.view(-1).index_add_(0, feature * n_bins + bins, torch.ones_like(bins))

    @property
    def active(self) -> torch.Tensor:
        """Tokens each feature fired on."""
        return self.histogram.sum(1)

    def density(self) -> torch.Tensor:
        return self.active.double().cpu() / max(self.n_tokens, 1)

    def state(self) -> dict[str, Any]:
        return {"n_tokens": self.n_tokens, "active": self.active.cpu(), "histogram": self.histogram.cpu()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str | None = None) -> ActivityStats:
        stats = cls.__new__(cls)
        stats.load_state(state, device)
        return stats

    def load_state(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        if device is None:
            device = self.histogram.device if hasattr(self, "histogram") else "cpu"
        self.n_tokens = state["n_tokens"]
        self.histogram = state["histogram"].to(device)


# ----------------------------------------------------------------------------- merging parts of a corpus


def merge_top(parts: Sequence[RunningTopK]) -> RunningTopK:
    """The buffers one pass over the union of the parts' windows would hold: per feature, the
    ``k`` largest of all the parts' entries. Equal maxima rank by text, then position: the order
    a single pass reads them in (earlier first), so the merge is exact, not approximate."""
    states = [p.state() for p in parts]
    k = states[0]["k"]
    values = torch.cat([s["values"] for s in states])
    text_id = torch.cat([s["text_id"] for s in states])
    position = torch.cat([s["position"] for s in states])
    # Sort by the least significant key first; each later stable sort keeps the earlier order on ties.
    order = torch.argsort(position, dim=0, stable=True)
    order = torch.gather(order, 0, torch.argsort(torch.gather(text_id, 0, order), dim=0, stable=True))
    order = torch.gather(order, 0, torch.argsort(torch.gather(values, 0, order), dim=0, descending=True, stable=True))[
        :k
    ]
    spans = order[..., None].expand(-1, -1, states[0]["tokens"].shape[-1])
    merged = {
        "k": k,
        "context": states[0]["context"],
        "values": torch.gather(values, 0, order),
        "text_id": torch.gather(text_id, 0, order),
        "position": torch.gather(position, 0, order),
        "tokens": torch.gather(torch.cat([s["tokens"] for s in states]), 0, spans),
        "acts": torch.gather(torch.cat([s["acts"] for s in states]), 0, spans),
    }
    return RunningTopK.from_state(merged)


def merge_stats(parts: Sequence[ActivityStats]) -> ActivityStats:
    """Token counts and histograms of the parts, added."""
    states = [p.state() for p in parts]
    return ActivityStats.from_state(
        {
            "n_tokens": sum(s["n_tokens"] for s in states),
            "histogram": torch.stack([s["histogram"] for s in states]).sum(0),
        }
    )
