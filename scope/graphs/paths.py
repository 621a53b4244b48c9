"""The strongest path from each input token through feature nodes to one logit.

A path's ``share`` is the product, over its edges, of each edge's share of its target's incoming
absolute weight (the normalised adjacency that influence and pruning use): the part of the logit's
input that flows along that one path. Only feature nodes are allowed between the token's embedding
and the logit, so error nodes (what the transcoders miss) never stand in a path; the share an
error node carries is read from :meth:`Graph.pruning_report` instead.
"""

from __future__ import annotations

import pandas as pd
import torch

from scope.graphs.graph import Graph
from scope.graphs.prune import normalized

PATH_COLUMNS = ["position", "token", "share", "sign", "n_features", "path"]


def strongest_paths(graph: Graph, logit: int | str | None = None, *, pruned: bool = True) -> pd.DataFrame:
    """For each prompt position, the path from its embedding node through one or more feature
    nodes to ``logit`` with the largest ``share`` (see the module docstring).

    Args:
        graph: from :func:`scope.attribution_graph`.
        logit: the logit node, as a token id or string (default the most probable one).
        pruned: walk only the edges pruning kept (``graph.links``); False walks every edge.

    Returns: one row per position that has such a path, strongest first: ``position``, ``token``,
    ``share``, ``sign`` (+1 if the path's edges multiply to a push up of the logit, -1 if down),
    ``n_features`` and ``path`` (node ids from the embedding to the logit).
    """
    if not isinstance(pruned, bool):
        raise TypeError(f"pruned must be True or False, got {pruned!r}.")
    nodes = graph.nodes
    target = graph.logit_index(logit)
    adjacency = graph.adjacency.double()
    if pruned:
        links = graph.links
        mask = torch.zeros_like(adjacency, dtype=torch.bool)
        mask[torch.tensor(links["target_index"].to_numpy()), torch.tensor(links["source_index"].to_numpy())] = True
        adjacency = torch.where(mask, adjacency, torch.zeros_like(adjacency))
    shares = normalized(adjacency)
    best = torch.zeros(len(nodes), dtype=torch.float64)  # the best share from a node to the logit
    best[target] = 1.0
    following = torch.full((len(nodes),), -1, dtype=torch.long)
    kinds = nodes["kind"].to_numpy()
    features = nodes.index[kinds == "feature"]
    # Edges run to later layers only: from the last layer down, every target is settled first.
    for node in sorted(features, key=lambda i: -int(nodes.at[i, "layer"])):
        _settle(int(node), shares, best, following)
    rows = []
    for node in nodes.index[kinds == "embedding"]:
        best[target] = 0.0  # an embedding's path must pass through a feature
        _settle(int(node), shares, best, following)
        best[target] = 1.0
        if best[node] > 0:
            rows.append(_row(graph, int(node), following, adjacency, float(best[node])))
    return pd.DataFrame(rows, columns=PATH_COLUMNS).sort_values("share", ascending=False, ignore_index=True)


def _settle(node: int, shares: torch.Tensor, best: torch.Tensor, following: torch.Tensor) -> None:
    through = shares[:, node] * best
    step = int(torch.argmax(through))
    if through[step] > 0:
        best[node] = through[step]
        following[node] = step


def _row(graph: Graph, start: int, following: torch.Tensor, adjacency: torch.Tensor, share: float) -> dict:
    path, sign = [start], 1
    while int(following[path[-1]]) >= 0:
        step = int(following[path[-1]])
        sign *= 1 if adjacency[step, path[-1]] > 0 else -1
        path.append(step)
    ids = graph.nodes["node_id"].to_numpy()
    return {
        "position": int(graph.nodes.at[start, "position"]),
        "token": graph.nodes.at[start, "token"],
        "share": share,
        "sign": sign,
        "n_features": len(path) - 2,
        "path": [str(ids[i]) for i in path],
    }
