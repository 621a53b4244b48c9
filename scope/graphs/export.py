"""A graph as the JSON Neuronpedia and circuit-tracer's local server read.

The schema is Neuronpedia's ``apps/webapp/app/api/graph/graph-schema.json`` (a copy with its source
is ``tests/neuronpedia_graph_schema.json``); the fields follow circuit-tracer's
``create_graph_files``: the pruned nodes and the edges pruning kept, node ids ``L_F_P`` (features),
``err_L_P`` (errors; circuit-tracer's ``0_L_P`` can equal a layer-0 feature's id), ``E_T_P``
(embeddings), ``{n_layers + 1}_T_P`` (logits).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch

from scope._io import check_writable_file, write_atomically


class Graph(Protocol):
    """What export reads of a :class:`scope.graphs.graph.Graph` (which imports this module)."""

    nodes: pd.DataFrame
    metadata: dict[str, Any]
    node_threshold: float
    edge_threshold: float

    @property
    def links(self) -> pd.DataFrame: ...

    @property
    def cumulative_influence(self) -> torch.Tensor: ...


FEATURE_TYPES = {
    "feature": "cross layer transcoder",  # what circuit-tracer writes for per-layer transcoders too
    "error": "mlp reconstruction error",
    "embedding": "embedding",
    "logit": "logit",
}


def graph_json(graph: Graph, *, slug: str | None = None, labels: Any = None) -> dict[str, Any]:
    """The graph as a dict in Neuronpedia's schema (kept nodes, kept links)."""
    meta = graph.metadata
    n_layers = int(meta["n_layers"])
    names = _labels(labels)
    influence = graph.cumulative_influence.numpy()
    kept = graph.nodes[graph.nodes["kept"]]
    raw = graph.nodes["influence"].to_numpy()
    nodes = [
        _node(row, n_layers, float(influence[i]), names) | {"influence_raw": float(raw[i])}  # raw: for sizing
        for i, row in kept.iterrows()
    ]
    links = graph.links
    used = set(links["source"]) | set(links["target"])
    nodes = [node for node in nodes if node["node_id"] in used or node["feature_type"] in ("embedding", "logit")]
    logits = [node for node in nodes if node["feature_type"] == "logit"]
    if logits:  # the most probable one is the target the frontend opens on
        max(logits, key=lambda node: node["token_prob"])["is_target_logit"] = True
    return {
        "metadata": {
            "slug": slug or _slug(meta.get("prompt", "graph")),
            "scan": str(meta.get("model") or "unknown"),
            "transcoder_list": [str(source) for _, source in sorted(meta.get("transcoders", {}).items())],
            "prompt_tokens": list(meta["tokens"]),
            "prompt": str(meta.get("prompt", "")),
            "node_threshold": graph.node_threshold,
            "generation_settings": {k: v for k, v in meta.get("settings", {}).items() if v is not None},
            "pruning_settings": {"node_threshold": graph.node_threshold, "edge_threshold": graph.edge_threshold},
            "info": {
                "generator": {"name": "scope", "url": "https://github.com/safety-research/circuit-tracer"},
                "create_time_ms": int(time.time() * 1000),
            },
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [
            {"source": s, "target": t, "weight": float(w)}
            for s, t, w in zip(links["source"], links["target"], links["weight"])
        ],
    }


def write_json(graph: Graph, path: str | os.PathLike, *, slug: str | None = None, labels: Any = None) -> Path:
    """Write :func:`graph_json` to ``path`` atomically."""
    path = check_writable_file(path, "path")
    text = json.dumps(graph_json(graph, slug=slug, labels=labels))
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def _node(row: pd.Series, n_layers: int, influence: float, names: dict[tuple[int, int], str]) -> dict[str, Any]:
    kind, layer, position, feature = row["kind"], int(row["layer"]), int(row["position"]), int(row["feature"])
    node: dict[str, Any] = {
        "node_id": row["node_id"],
        "feature": feature,
        "layer": str(layer),
        "ctx_idx": position,
        "feature_type": FEATURE_TYPES[kind],
        "jsNodeId": f"{layer}_{feature}-0",
        "clerp": "",
        "influence": influence,
        "activation": None if pd.isna(row["activation"]) else float(row["activation"]),
    }
    if kind == "feature":
        node["clerp"] = names.get((layer, feature), "")
    elif kind == "error":
        node.update(feature=-1, jsNodeId=f"{layer}_{position}-0")
    elif kind == "embedding":
        node.update(feature=position, layer="E", jsNodeId=f"E_{row['node_id'].split('_')[1]}-{position}")
    else:
        probability = float(row["probability"])
        node.update(
            layer=str(n_layers + 1),
            jsNodeId=f"L_{feature}-{position}",
            token_prob=probability,
            is_target_logit=False,
            clerp=f'Output "{row["token"]}" (p={probability:.3f})',
        )
    return node


def _labels(labels: Any) -> dict[tuple[int, int], str]:
    if labels is None:
        return {}
    if isinstance(labels, pd.DataFrame):
        missing = {"layer", "feature", "label"} - set(labels.columns)
        if missing:
            raise ValueError(f"labels is missing the column(s) {sorted(missing)}; it needs layer, feature, label.")
        return {(int(a), int(b)): str(c) for a, b, c in zip(labels["layer"], labels["feature"], labels["label"])}
    if isinstance(labels, Mapping):
        return {(int(key[0]), int(key[1])): str(value) for key, value in labels.items()}
    raise TypeError(f"labels must be a mapping (layer, feature) -> label or a DataFrame, got {type(labels).__name__}.")


def _slug(prompt: str) -> str:
    words = "".join(c if c.isalnum() else "-" for c in prompt.lower()).split("-")
    return "-".join(w for w in words if w)[:48] or "graph"
