"""Influence and pruning, as circuit-tracer computes them (its ``graph.prune_graph``).

A node's influence is its share of the logits' (probability-weighted) input, summed over every path:
with ``A`` the adjacency normalised so that each target's absolute incoming weights sum to 1,
influence = ``w @ (A + A^2 + ...)``, ``w`` the logit probabilities. Pruning keeps the nodes that
carry ``node_threshold`` of the total influence (tokens and logits always), then the edges that
carry ``edge_threshold`` of the edge influence, then drops nodes left without an outgoing (or, for
features, an incoming) edge.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def normalized(adjacency: torch.Tensor) -> torch.Tensor:
    """|A| with each row (a target's incoming weights) summing to 1 (or 0)."""
    absolute = adjacency.abs()
    return absolute / absolute.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(normalized_adjacency: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """``weights @ (A + A^2 + ...)``: terminates because the graph is acyclic (A is nilpotent)."""
    step = weights @ normalized_adjacency
    total = step.clone()
    for _ in range(max_iter):
        if not step.any():
            return total
        step = step @ normalized_adjacency
        total += step
    raise RuntimeError(f"Influence did not converge in {max_iter} steps: the graph has a cycle.")


def partial_influence(
    rows: torch.Tensor, row_nodes: torch.Tensor, n_nodes: int, logit_weights: torch.Tensor, logit_nodes: torch.Tensor
) -> torch.Tensor:
    """Influence from the rows computed so far (``rows[i]`` the incoming edges of node
    ``row_nodes[i]`` from the first ``rows.shape[1]`` nodes): ranks the features still to visit
    when only some will be.

    The same sum as :func:`influence` over the square adjacency those rows fill, without building
    it: every node is a source, but only visited nodes are targets, so each step is
    ``step[row_nodes] @ normalized(rows)``; memory stays that of the rows (the square matrix over
    every active feature is quadratic in the prompt: 36 GB for 32 tokens of Gemma 2 2B).
    """
    normalized_rows = normalized(rows)
    step = torch.zeros(n_nodes, dtype=rows.dtype)
    step[logit_nodes] = logit_weights.to(rows.dtype)
    total = torch.zeros(n_nodes, dtype=rows.dtype)
    for _ in range(len(rows) + 1):  # a path visits each row's node at most once
        reached = step[row_nodes] @ normalized_rows
        if not reached.any():
            return total
        step = torch.zeros(n_nodes, dtype=rows.dtype)
        step[: len(reached)] = reached
        total += step
    raise RuntimeError("Influence did not converge: the rows have a cycle.")


def _threshold(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The smallest score among the fewest top scores whose sum reaches ``fraction`` of the total."""
    ordered = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ordered, 0) / ordered.sum().clamp(min=1e-30)
    return ordered[min(int(torch.searchsorted(cumulative, fraction)), len(ordered) - 1)]


class Pruned(NamedTuple):
    node_mask: torch.Tensor  # [n_nodes] bool
    edge_mask: torch.Tensor  # [n_nodes, n_nodes] bool, edge_mask[target, source]
    influence: torch.Tensor  # [n_nodes] node influence on the logits
    cumulative: torch.Tensor  # [n_nodes] cumulative share of influence, by rank (what Neuronpedia shows)


def prune(
    adjacency: torch.Tensor,
    logit_weights: torch.Tensor,
    n_features: int,
    n_kept_always: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> Pruned:
    """Prune a graph whose nodes are ordered features, errors, then ``n_kept_always`` embeddings and
    logits (the last ``len(logit_weights)`` nodes)."""
    adjacency = adjacency.to(torch.float64)
    weights = torch.zeros(adjacency.shape[0], dtype=torch.float64)
    weights[-len(logit_weights) :] = logit_weights.to(torch.float64)
    node_influence = influence(normalized(adjacency), weights)
    node_mask = node_influence >= _threshold(node_influence, node_threshold)
    node_mask[-n_kept_always:] = True
    kept = adjacency.clone()
    kept[~node_mask] = 0
    kept[:, ~node_mask] = 0
    normalized_kept = normalized(kept)
    edge_scores = normalized_kept * (influence(normalized_kept, weights) + weights)[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)
    edge_mask &= kept != 0
    sources = slice(0, adjacency.shape[0] - n_kept_always)  # features and errors must feed something
    while True:
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[sources] &= edge_mask[:, sources].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)
        if torch.equal(before, node_mask):
            break
    ordered, order = torch.sort(node_influence, descending=True)
    cumulative = torch.zeros_like(node_influence)
    cumulative[order] = torch.cumsum(ordered, 0) / ordered.sum().clamp(min=1e-30)
    return Pruned(node_mask, edge_mask, node_influence, cumulative)
