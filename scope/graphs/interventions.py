"""Interventions on graph nodes, checked against the model (circuit-tracer's ``feature_intervention``).

Set feature nodes to new activations (0 ablates) and compare, for each logit node, the change in
``logit - mean logit`` (before any soft-cap) that the graph predicts with what the models do:

- ``graph_direct``: the edges from the changed features alone (``A[t, s] / a_s * (v - a_s)``);
- ``replacement_direct``: the replacement model with every other feature held at its clean value,
  so only linear paths carry the change: equals ``graph_direct`` up to round-off;
- ``graph``: the change carried through the graph, every downstream feature responding linearly
  (slope 1 while active, as JumpReLU does above its threshold);
- ``replacement``: the replacement model (patterns and norm scales frozen) with its transcoders live:
  equals ``graph`` while no downstream feature crosses its threshold;
- ``model``: the model itself (attention, norms and real MLPs live), the decoder delta of the
  changed features added to their layer's MLP output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from scope import _checks
from scope.graphs.graph import Graph
from scope.graphs.replacement import check_transcoders, record, steered_run
from scope.hooks import model_lock


def intervene(model: Any, transcoders: Mapping[int, Any], graph: Graph, changes: Mapping[str, float]) -> pd.DataFrame:
    """The logit changes the graph predicts and the models show when feature nodes are set.

    Args:
        model, transcoders: what the graph was made with.
        graph: from :func:`scope.attribution_graph` on ``model`` (every active feature a node for
            the ``graph`` column to be exact).
        changes: feature node id (``graph.nodes.node_id``, e.g. ``"3_17_5"``) -> new activation.

    Returns: one row per logit node: ``token``, ``token_id``, ``probability``, ``graph_direct``,
    ``replacement_direct``, ``graph``, ``replacement``, ``model``.
    """
    nodes = graph.nodes
    if not isinstance(changes, Mapping) or not changes:
        raise ValueError("changes must map feature node ids to new activations, e.g. {'3_17_5': 0.0}.")
    kinds = dict(zip(nodes["node_id"], nodes["kind"]))
    bad = [node for node in changes if kinds.get(node) != "feature"]
    if bad:
        examples = nodes.loc[nodes["kind"] == "feature", "node_id"].head(3).tolist()
        raise ValueError(f"{bad} are not feature nodes of this graph; feature node ids look like {examples}.")
    values = {node: _checks.finite(value, f"changes[{node!r}]") for node, value in changes.items()}
    checked = check_transcoders(model, transcoders)
    tokens = torch.tensor([graph.metadata["token_ids"]], device=model.cfg.device)
    index = {node: i for i, node in enumerate(nodes["node_id"])}
    by_layer: dict[int, list[tuple[int, int, float]]] = {}
    for node, value in values.items():
        row = nodes.iloc[index[node]]
        by_layer.setdefault(int(row["layer"]), []).append((int(row["position"]), int(row["feature"]), value))
    with model_lock(model):
        snapshot = record(model, checked, tokens, keep_frozen=True)
        measured = {
            "replacement_direct": steered_run(model, checked, snapshot, by_layer, direct=True, frozen=True),
            "replacement": steered_run(model, checked, snapshot, by_layer, direct=False, frozen=True),
            "model": steered_run(model, checked, snapshot, by_layer, direct=False, frozen=False),
        }
    logits = nodes[nodes["kind"] == "logit"]
    token_ids = torch.tensor(logits["feature"].to_numpy())
    direct, carried = _predicted(graph, {index[node]: value for node, value in values.items()})
    frame = pd.DataFrame(
        {
            "token": logits["token"].to_numpy(),
            "token_id": token_ids.numpy(),
            "probability": logits["probability"].to_numpy(),
            "graph_direct": direct,
            "replacement_direct": 0.0,
            "graph": carried,
        }
    )
    clean = _centred(snapshot.raw_logits)[token_ids.to(snapshot.raw_logits.device)]
    for name, new in measured.items():
        frame[name] = (_centred(new)[token_ids.to(new.device)] - clean).cpu().numpy()
    return frame[
        ["token", "token_id", "probability", "graph_direct", "replacement_direct", "graph", "replacement", "model"]
    ]


def _centred(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.double()
    return logits - logits.mean()


def _predicted(graph: Graph, changes: dict[int, float]) -> tuple[Any, Any]:
    """The direct and the carried-through change of each logit node under the graph's linear map."""
    nodes = graph.nodes
    is_feature = torch.tensor((nodes["kind"] == "feature").to_numpy())
    activation = torch.tensor(nodes["activation"].fillna(1.0).to_numpy(), dtype=torch.float64)
    per_unit = graph.adjacency.double() / activation  # column s: the effect of one unit of s
    per_unit[:, ~is_feature] = 0.0  # errors and embeddings do not change
    delta = torch.zeros(len(nodes), dtype=torch.float64)
    fixed = torch.zeros(len(nodes), dtype=torch.bool)
    for node, value in changes.items():
        delta[node] = value - activation[node]
        fixed[node] = True
    logit_rows = torch.tensor((nodes["kind"] == "logit").to_numpy())
    direct = per_unit[logit_rows] @ delta
    free = is_feature & ~fixed
    for _ in range(int(graph.metadata["n_layers"]) + 1):  # one layer further each step (acyclic)
        delta = torch.where(free, per_unit @ delta, delta)
    return direct.numpy(), (per_unit[logit_rows] @ delta).numpy()
