"""``Graph``: an attribution graph's nodes, its adjacency matrix, metadata and pruning.

Nodes are ordered as circuit-tracer orders them: feature nodes (layer, position, feature), error
nodes (layer-major, then position), embedding nodes (one per position), logit nodes (the targets).
``adjacency[target, source]`` is the direct effect of source on target in the local replacement
model: the amount the source adds to the target's input (a feature's pre-activation less its
encoder bias; a logit minus the mean logit, before any soft-cap).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from scope._io import write_atomically
from scope.graphs.export import write_json
from scope.graphs.prune import Pruned, influence, normalized, prune

NODE_COLUMNS = [
    "node_id",
    "kind",
    "layer",
    "position",
    "feature",
    "token",
    "activation",
    "input",
    "bos_share",
    "probability",
]
KINDS = ("feature", "error", "embedding", "logit")


@dataclass
class Graph:
    """An attribution graph (see :func:`scope.attribution_graph`).

    Attributes:
        nodes: one row per node, in adjacency order: ``node_id`` (Neuronpedia's), ``kind``
            (feature / error / embedding / logit), ``layer`` (-1 for embeddings, ``n_layers`` for
            logits), ``position``, ``feature`` (feature index; the token id for logits; -1 else),
            ``token`` (the prompt token at ``position``; the predicted token for logits),
            ``activation`` (features), ``input`` (features and logits: what the incoming edges sum
            to, with ``bos_share``), ``bos_share`` (features and logits: the part of ``input`` that
            came from the BOS position's MLP outputs, which ``zero_bos=True`` leaves out of the
            graph; 0 without it), ``probability`` (logits), and after pruning ``influence`` and
            ``kept``.
        adjacency: ``[n_nodes, n_nodes]``, ``adjacency[target, source]``.
        metadata: model, prompt, tokens, token_ids, transcoders (layer -> source), n_layers and
            the settings the graph was made with.
        node_threshold, edge_threshold: the pruning applied (``links`` are the edges it kept).
    """

    nodes: pd.DataFrame
    adjacency: torch.Tensor
    metadata: dict[str, Any]
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    _pruned: Pruned = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, value in (("node_threshold", self.node_threshold), ("edge_threshold", self.edge_threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}.")
        if "bos_share" not in self.nodes:  # a graph saved before zero_bos existed
            targets = self.nodes["kind"].isin(["feature", "logit"])
            self.nodes = self.nodes.assign(bos_share=targets.map({True: 0.0, False: float("nan")}))
        kinds = self.nodes["kind"]
        logits = self.nodes.loc[kinds == "logit", "probability"].to_numpy(dtype=float)
        n_always = int((kinds == "embedding").sum() + (kinds == "logit").sum())
        self._pruned = prune(
            self.adjacency,
            torch.tensor(logits),
            int((kinds == "feature").sum()),
            n_always,
            self.node_threshold,
            self.edge_threshold,
        )
        self.nodes = self.nodes[NODE_COLUMNS].assign(
            influence=self._pruned.influence.numpy(), kept=self._pruned.node_mask.numpy()
        )

    # --------------------------------------------------------------------- views

    @property
    def links(self) -> pd.DataFrame:
        """The edges pruning kept: ``source``, ``target`` (node ids), ``weight``, and the node
        indices ``source_index``, ``target_index``."""
        targets, sources = self._pruned.edge_mask.nonzero(as_tuple=True)
        ids = self.nodes["node_id"].to_numpy()
        return pd.DataFrame(
            {
                "source": ids[sources.numpy()],
                "target": ids[targets.numpy()],
                "weight": self.adjacency[targets, sources].double().numpy(),
                "source_index": sources.numpy(),
                "target_index": targets.numpy(),
            }
        )

    @property
    def cumulative_influence(self) -> torch.Tensor:
        """Each node's cumulative share of influence by rank (Neuronpedia's ``influence`` field)."""
        return self._pruned.cumulative

    def completeness_error(self) -> float:
        """The largest relative gap, over feature and logit nodes, between a node's input and the
        sum of its incoming edges plus its ``bos_share``: ~0 (float round-off) when every active
        feature is a node."""
        targets = self.nodes["kind"].isin(["feature", "logit"]).to_numpy()
        inputs = torch.tensor(self.nodes["input"].to_numpy()[targets], dtype=torch.float64)
        shares = torch.tensor(self.nodes["bos_share"].to_numpy()[targets], dtype=torch.float64)
        sums = self.adjacency[torch.tensor(targets)].double().sum(1) + shares
        scale = (self.adjacency[torch.tensor(targets)].double().abs().sum(1) + shares.abs()).clamp(min=1e-30)
        return float(((sums - inputs).abs() / torch.maximum(inputs.abs(), scale)).max()) if targets.any() else 0.0

    def pruning_report(self) -> pd.DataFrame:
        """Per node kind: nodes, nodes kept, and the share of the logits' influence they carry."""
        total = float(self.nodes["influence"].sum()) or 1.0
        rows = []
        for kind in KINDS:
            of_kind = self.nodes[self.nodes["kind"] == kind]
            kept = of_kind[of_kind["kept"]]
            rows.append(
                {
                    "kind": kind,
                    "nodes": len(of_kind),
                    "kept": len(kept),
                    "influence": of_kind["influence"].sum() / total,
                    "influence_kept": kept["influence"].sum() / total,
                }
            )
        return pd.DataFrame(rows)

    def influence_kept(self) -> float:
        """The fraction of all node influence on the logits that the kept nodes carry."""
        total = float(self.nodes["influence"].sum())
        return float(self.nodes.loc[self.nodes["kept"], "influence"].sum()) / total if total else 1.0

    def nodes_for_logit(self, token: int | str) -> pd.DataFrame:
        """The nodes by their influence on one logit node alone (the influence above with that
        logit weighted 1 and the others 0), most influential first, the logit itself left out:
        the node columns plus ``logit_influence``. ``token``: the logit's token id or string."""
        index = self.logit_index(token)
        weights = torch.zeros(len(self.nodes), dtype=torch.float64)
        weights[index] = 1.0
        found = influence(normalized(self.adjacency.double()), weights)
        ranked = self.nodes.assign(logit_influence=found.numpy()).drop(index=index)
        return ranked.sort_values("logit_influence", ascending=False, kind="stable")

    def logit_index(self, token: int | str | None = None) -> int:
        """The node index of a logit node, by token id or string; None: the most probable one."""
        logits = self.nodes[self.nodes["kind"] == "logit"]
        if token is None:
            return int(logits["probability"].idxmax())
        column = "feature" if isinstance(token, int) and not isinstance(token, bool) else "token"
        match = logits.index[logits[column] == token]
        if len(match) > 1:
            ids = logits.loc[match, "feature"].tolist()
            raise ValueError(f"{token!r} is the string of {len(match)} logit nodes (token ids {ids}): pass the id.")
        if not len(match):
            raise ValueError(
                f"{token!r} is not a logit node of this graph; its logits are token ids "
                f"{logits['feature'].tolist()}, strings {logits['token'].tolist()}."
            )
        return int(match[0])

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Graph:
        """The same graph pruned with other thresholds."""
        return Graph(
            self.nodes[NODE_COLUMNS].copy(), self.adjacency, dict(self.metadata), node_threshold, edge_threshold
        )

    # --------------------------------------------------------------------- files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the whole graph (adjacency included) to one ``.pt`` file, atomically."""
        state = {
            "nodes": self.nodes[NODE_COLUMNS].to_dict("list"),
            "adjacency": self.adjacency,
            "metadata": self.metadata,
            "node_threshold": self.node_threshold,
            "edge_threshold": self.edge_threshold,
        }
        return write_atomically(path, lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Graph:
        """A graph written by :meth:`save`."""
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls(
            pd.DataFrame(state["nodes"]),
            state["adjacency"],
            state["metadata"],
            state["node_threshold"],
            state["edge_threshold"],
        )

    def to_json(self, path: str | os.PathLike, *, slug: str | None = None, labels: Any = None) -> Path:
        """Write the pruned graph in the JSON schema Neuronpedia and circuit-tracer's server read.

        ``labels``: feature labels for the nodes' ``clerp``: a mapping ``(layer, feature) -> str``
        or a DataFrame with ``layer``, ``feature``, ``label`` columns."""
        return write_json(self, path, slug=slug, labels=labels)

    def __repr__(self) -> str:
        counts = self.nodes["kind"].value_counts()
        return (
            f"Graph({self.metadata.get('prompt', '')!r}: {counts.get('feature', 0)} features, "
            f"{counts.get('error', 0)} errors, {counts.get('embedding', 0)} embeddings, {counts.get('logit', 0)} "
            f"logits; kept {int(self.nodes['kept'].sum())} nodes, {int(self._pruned.edge_mask.sum())} edges)"
        )
