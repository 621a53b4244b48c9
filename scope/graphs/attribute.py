"""``attribution_graph``: circuit-tracer's attribution algorithm on scope's models.

1. One clean forward pass records every transcoder's activations and error (:mod:`.replacement`).
2. The logit targets: the top tokens covering ``desired_logit_prob`` (at most ``max_n_logits``), or
   the tokens asked for; each one's vector is its unembedding column minus the mean column.
3. One batched forward pass of the replacement model (patterns and norm scales frozen), then one
   backward pass per batch of targets: the gradient at each source's point, dotted with what the
   source writes there (``a * W_dec[f]``, the error, the embedding), is its edge to the target.
4. Feature rows in order of influence (re-ranked as rows arrive) up to ``max_feature_nodes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from scope import _checks
from scope.graphs.graph import Graph
from scope.graphs.prune import partial_influence
from scope.graphs.replacement import (
    LinearPass,
    Snapshot,
    check_transcoders,
    gradients,
    linear_pass,
    record,
    without_bos,
)
from scope.hooks import model_lock
from scope.inputs import str_tokens, to_tokens


def attribution_graph(
    model: Any,
    transcoders: Mapping[int, Any],
    prompt: str,
    *,
    targets: Sequence[int | str] | None = None,
    max_feature_nodes: int | None = None,
    batch_size: int = 64,
    desired_logit_prob: float = 0.95,
    max_n_logits: int = 10,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    zero_bos: bool = False,
    progress: bool = True,
) -> Graph:
    """The attribution graph of ``prompt``'s next token through ``transcoders``.

    Args:
        model: a model from :func:`scope.load_model` (Gemma 2 or Gemma 3).
        transcoders: layer -> transcoder (:func:`scope.load_transcoders`); a layer without one has
            no feature nodes, only an error node holding its whole MLP output.
        prompt: the text (one BOS is added).
        targets: the logit nodes, as token ids or single-token strings; default the top tokens whose
            probabilities sum to ``desired_logit_prob``, at most ``max_n_logits``.
        max_feature_nodes: feature nodes to compute rows for, most influential first (default all;
            with fewer, edges from the features left out are missing and ``completeness_error``
            shows their share).
        batch_size: targets per backward pass (memory grows with it: ``batch_size`` copies of the
            prompt's forward pass).
        node_threshold, edge_threshold: pruning (see :class:`scope.Graph`).
        zero_bos: drop the BOS position's MLP outputs as circuit-tracer does: no feature nodes at
            BOS, BOS error nodes carrying nothing (the BOS embedding node and any skip path stay).
            The cost in exactness: each node's incoming edges then sum to its input less the
            direct effect of those BOS MLP outputs, the node's ``bos_share`` (shown per node, and
            added back by ``completeness_error``, which stays ~0). BOS activations are huge and
            mean little (Gemma Scope was not trained on them), so the graph reads more easily.
        progress: a tqdm bar over the feature rows.
    """
    batch_size = _checks.positive_int(batch_size, "batch_size")
    max_n_logits = _checks.positive_int(max_n_logits, "max_n_logits")
    if max_feature_nodes is not None:
        max_feature_nodes = _checks.positive_int(max_feature_nodes, "max_feature_nodes")
    desired_logit_prob = _checks.number(desired_logit_prob, "desired_logit_prob")
    if not 0.0 < desired_logit_prob <= 1.0:
        raise ValueError(f"desired_logit_prob must be in (0, 1], got {desired_logit_prob!r}.")
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= _checks.number(value, name) <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}.")
    if not isinstance(zero_bos, bool):
        raise TypeError(f"zero_bos must be True or False, got {zero_bos!r}.")
    _checks.text(prompt, "prompt")
    tokens = to_tokens(model, prompt, name="prompt")
    target_ids = None if targets is None else _target_ids(model, targets)
    checked = check_transcoders(model, transcoders)
    origins, transcoders = _sources(transcoders, checked), checked
    with model_lock(model):
        snapshot = record(model, transcoders, tokens)
        bos_out = None
        if zero_bos:
            snapshot, bos_out = without_bos(snapshot, transcoders, model.cfg.dtype)
        logit_ids, probs = _logit_targets(snapshot, target_ids, desired_logit_prob, max_n_logits)
        features = _active(snapshot)
        rows_wanted = len(features) if max_feature_nodes is None else min(max_feature_nodes, len(features))
        run = linear_pass(model, transcoders, tokens, min(batch_size, max(rows_wanted, len(logit_ids))))
        sources = _Sources(model, transcoders, snapshot, features, bos_out)
        W_U = model.W_U.detach()
        logit_vectors = (W_U[:, logit_ids] - W_U.mean(1, keepdim=True)).T
        rows, bos_shares, order = _rows(
            sources, run, features, logit_ids, logit_vectors, batch_size, max_feature_nodes, probs, progress
        )
        del run
    return _graph(
        model,
        transcoders,
        snapshot,
        features,
        logit_ids,
        probs,
        rows,
        bos_shares,
        order,
        dict(
            prompt=prompt,
            max_feature_nodes=max_feature_nodes,
            batch_size=batch_size,
            desired_logit_prob=desired_logit_prob,
            max_n_logits=max_n_logits,
            zero_bos=zero_bos,
        ),
        origins,
        node_threshold,
        edge_threshold,
    )


def _target_ids(model: Any, targets: Sequence[int | str]) -> list[int]:
    if isinstance(targets, (str, int)):
        targets = [targets]
    ids = []
    for target in targets:
        if isinstance(target, str):
            found = model.tokenizer.encode(target, add_special_tokens=False)
            if len(found) != 1:
                raise ValueError(f"target {target!r} is {len(found)} tokens {found}; a target must be one token.")
            ids.append(found[0])
        else:
            ids.append(_checks.index(target, model.cfg.d_vocab, "target", "token ids"))
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"targets must be distinct tokens, at least one, got {list(targets)!r}.")
    return ids


def _logit_targets(
    snapshot: Snapshot, ids: list[int] | None, desired: float, most: int
) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(snapshot.logits.double(), -1)
    if ids is not None:
        chosen = torch.tensor(ids)
        return chosen, probs[chosen]
    top, chosen = torch.topk(probs, min(most, len(probs)))
    count = int(torch.searchsorted(torch.cumsum(top, 0), torch.tensor(desired, dtype=top.dtype))) + 1
    return chosen[:count].cpu(), top[:count].cpu()


def _active(snapshot: Snapshot) -> pd.DataFrame:
    """Every active feature: layer, position, feature, activation, input (pre-activation - b_enc)."""
    parts = []
    for layer, acts in snapshot.acts.items():
        position, feature = acts.nonzero(as_tuple=True)
        parts.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "position": position.cpu().numpy(),
                    "feature": feature.cpu().numpy(),
                    "activation": acts[position, feature].double().cpu().numpy(),
                }
            )
        )
    columns = ["layer", "position", "feature", "activation"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def _rows(
    sources: _Sources,
    run: LinearPass,
    features: pd.DataFrame,
    logit_ids: torch.Tensor,
    logit_vectors: torch.Tensor,
    batch_size: int,
    max_features: int | None,
    probs: torch.Tensor,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Incoming edges of the logits, then of the features in influence order: returns the rows
    ``[n_logits + n_visited, n_sources]``, each row's BOS share (``zero_bos``) and the visited
    features' indices in order."""
    last = torch.full((len(logit_ids),), sources.n_pos - 1)
    found = [
        sources.edges(
            run,
            torch.full_like(last, sources.n_layers)[i : i + batch_size],
            last[i : i + batch_size],
            logit_vectors[i : i + batch_size],
        )
        for i in range(0, len(logit_ids), batch_size)
    ]
    rows, shares = [row for row, _ in found], [share for _, share in found]
    n_features = len(features)
    wanted = n_features if max_features is None else min(max_features, n_features)
    layers = torch.tensor(features["layer"].to_numpy(), dtype=torch.long)
    positions = torch.tensor(features["position"].to_numpy(), dtype=torch.long)
    encoders = sources.encoder_rows()
    visited = torch.zeros(n_features, dtype=torch.bool)
    order: list[torch.Tensor] = []
    logit_nodes = torch.arange(len(logit_ids)) + sources.count
    with tqdm(total=wanted, desc="attribution graph", disable=not progress) as bar:
        while sum(len(o) for o in order) < wanted:
            pending = _next_features(rows, order, visited, wanted, batch_size, sources.count, probs, logit_nodes)
            for batch in pending.split(batch_size):
                row, share = sources.edges(run, layers[batch], positions[batch], encoders[batch])
                rows.append(row)
                shares.append(share)
                order.append(batch)
                visited[batch] = True
                bar.update(len(batch))
    return torch.cat(rows), torch.cat(shares), torch.cat(order) if order else torch.zeros(0, dtype=torch.long)


def _next_features(
    rows: list[torch.Tensor],
    order: list[torch.Tensor],
    visited: torch.Tensor,
    wanted: int,
    batch_size: int,
    n_sources: int,
    probs: torch.Tensor,
    logit_nodes: torch.Tensor,
) -> torch.Tensor:
    """All features when all are wanted; else the most influential unvisited ones by the rows so far
    (a few batches at a time, then re-ranked, as circuit-tracer does)."""
    n_visited = sum(len(o) for o in order)
    if wanted == len(visited):
        return torch.arange(len(visited))
    computed = torch.cat(rows).double()
    row_nodes = torch.cat([logit_nodes, *order])
    scores = partial_influence(computed, row_nodes, n_sources + len(logit_nodes), probs, logit_nodes)[: len(visited)]
    ranked = torch.argsort(scores, descending=True)
    return ranked[~visited[ranked]][: min(4 * batch_size, wanted - n_visited)]


class _Sources:
    """What each source node writes where: scaled decoder rows (features), errors, embeddings."""

    def __init__(
        self,
        model: Any,
        transcoders: dict[int, Any],
        snapshot: Snapshot,
        features: pd.DataFrame,
        bos_out: torch.Tensor | None,
    ) -> None:
        dtype = model.cfg.dtype
        self.bos_out = bos_out  # [n_layers, d_model]: the BOS MLP outputs zero_bos took out, or None
        self.n_layers, self.n_pos = model.cfg.n_layers, len(snapshot.tokens)
        self.features = features
        self.transcoders = transcoders
        self.snapshot = snapshot
        self.by_layer = {}
        for layer, part in features.groupby("layer"):
            index = torch.tensor(part.index.to_numpy())
            feature = torch.tensor(part["feature"].to_numpy())
            position = torch.tensor(part["position"].to_numpy())
            decoder = transcoders[layer].W_dec.detach()[feature].to(dtype)
            values = snapshot.acts[layer][position, feature].to(dtype)
            self.by_layer[int(layer)] = (index, position, decoder * values[:, None])
        self.count = len(features) + (self.n_layers + 1) * self.n_pos  # sources, in node order

    def encoder_rows(self) -> torch.Tensor:
        rows = [
            self.transcoders[int(layer)].W_enc.detach()[:, int(feature)]
            for layer, feature in zip(self.features["layer"], self.features["feature"])
        ]
        dtype = self.snapshot.embed.dtype
        return torch.stack(rows).to(dtype) if rows else torch.zeros(0, self.snapshot.embed.shape[-1], dtype=dtype)

    def edges(
        self, run: LinearPass, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[len(layers), count]``: every source's direct effect on each target; and ``[len(layers)]``:
        the direct effect of the BOS MLP outputs ``zero_bos`` took out (zeros without it)."""
        n = len(layers)
        embed_grad, out_grads = gradients(run, layers, positions, vectors, self.n_layers)
        row = torch.zeros(n, self.count, dtype=torch.float64)
        for layer, (index, position, written) in self.by_layer.items():
            row[:, index] = torch.einsum("bnd,nd->bn", out_grads[layer][:n, position], written).double().cpu()
        errors = torch.einsum("lbpd,lpd->blp", torch.stack(out_grads)[:, :n], self.snapshot.errors)
        start = len(self.features)
        row[:, start : start + self.n_layers * self.n_pos] = errors.reshape(n, -1).double().cpu()
        embeds = torch.einsum("bpd,pd->bp", embed_grad[:n], self.snapshot.embed)
        row[:, start + self.n_layers * self.n_pos :] = embeds.double().cpu()
        if self.bos_out is None:
            return row, torch.zeros(n, dtype=torch.float64)
        bos = torch.einsum("lbd,ld->b", torch.stack(out_grads)[:, :n, 0], self.bos_out)
        return row, bos.double().cpu()


def _graph(
    model: Any,
    transcoders: dict[int, Any],
    snapshot: Snapshot,
    features: pd.DataFrame,
    logit_ids: torch.Tensor,
    probs: torch.Tensor,
    rows: torch.Tensor,
    bos_shares: torch.Tensor,
    order: torch.Tensor,
    settings: dict[str, Any],
    sources: dict[int, str],
    node_threshold: float,
    edge_threshold: float,
) -> Graph:
    """Assemble the square adjacency over the visited features, errors, embeddings and logits."""
    n_layers, n_logits = model.cfg.n_layers, len(logit_ids)
    kept = torch.sort(order).values
    columns = torch.cat([kept, torch.arange(len(features), rows.shape[1])])
    n_nodes = len(columns) + n_logits
    adjacency = torch.zeros(n_nodes, n_nodes, dtype=rows.dtype)
    feature_rows = rows[n_logits:][torch.argsort(order)]
    adjacency[: len(kept), : len(columns)] = feature_rows[:, columns]
    adjacency[len(columns) :, : len(columns)] = rows[:n_logits][:, columns]
    tokens = str_tokens(model, snapshot.tokens)
    nodes = _nodes(model, transcoders, snapshot, features.iloc[kept.numpy()], logit_ids, probs, tokens)
    shares = torch.full((n_nodes,), float("nan"), dtype=torch.float64)  # targets only, as "input"
    shares[: len(kept)] = bos_shares[n_logits:][torch.argsort(order)]
    shares[len(columns) :] = bos_shares[:n_logits]
    nodes["bos_share"] = shares.numpy()
    metadata = {
        "model": getattr(model.cfg, "model_name", ""),
        "prompt": settings.pop("prompt"),
        "tokens": tokens,
        "token_ids": snapshot.tokens.tolist(),
        "n_layers": n_layers,
        "transcoders": sources,
        "settings": settings,
    }
    return Graph(
        nodes,
        adjacency.to(model.cfg.dtype if model.cfg.dtype == torch.float64 else torch.float32),
        metadata,
        node_threshold,
        edge_threshold,
    )


def _nodes(
    model: Any,
    transcoders: dict[int, Any],
    snapshot: Snapshot,
    features: pd.DataFrame,
    logit_ids: torch.Tensor,
    probs: torch.Tensor,
    tokens: list[str],
) -> pd.DataFrame:
    n_layers, n_pos = model.cfg.n_layers, len(tokens)
    feature_inputs = [
        float(snapshot.pre[int(layer)][int(pos), int(f)] - transcoders[int(layer)].b_enc.detach()[int(f)])
        for layer, pos, f in zip(features["layer"], features["position"], features["feature"])
    ]
    frames = [
        pd.DataFrame(
            {
                "node_id": [
                    f"{layer}_{f}_{pos}"
                    for layer, f, pos in zip(features["layer"], features["feature"], features["position"])
                ],
                "kind": "feature",
                "layer": features["layer"].to_numpy(),
                "position": features["position"].to_numpy(),
                "feature": features["feature"].to_numpy(),
                "token": [tokens[p] for p in features["position"]],
                "activation": features["activation"].to_numpy(),
                "input": feature_inputs,
                "probability": float("nan"),
            }
        )
    ]
    layer_pos = [(layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
    frames.append(
        pd.DataFrame(
            {
                "node_id": [f"err_{layer}_{pos}" for layer, pos in layer_pos],
                "kind": "error",
                "layer": [layer for layer, _ in layer_pos],
                "position": [pos for _, pos in layer_pos],
                "feature": -1,
                "token": [tokens[pos] for _, pos in layer_pos],
                "activation": float("nan"),
                "input": float("nan"),
                "probability": float("nan"),
            }
        )
    )
    ids = snapshot.tokens.tolist()
    frames.append(
        pd.DataFrame(
            {
                "node_id": [f"E_{ids[pos]}_{pos}" for pos in range(n_pos)],
                "kind": "embedding",
                "layer": -1,
                "position": range(n_pos),
                "feature": -1,
                "token": tokens,
                "activation": float("nan"),
                "input": float("nan"),
                "probability": float("nan"),
            }
        )
    )
    raw = snapshot.raw_logits.double()
    bias = model.b_U.detach().double()
    logit_inputs = (raw - raw.mean() - (bias - bias.mean()))[logit_ids].cpu()
    frames.append(
        pd.DataFrame(
            {
                "node_id": [f"{n_layers + 1}_{t}_{n_pos - 1}" for t in logit_ids.tolist()],
                "kind": "logit",
                "layer": n_layers,
                "position": n_pos - 1,
                "feature": logit_ids.numpy(),
                "token": list(model.to_str_tokens(logit_ids)),
                "activation": float("nan"),
                "input": logit_inputs.numpy(),
                "probability": probs.double().numpy(),
            }
        )
    )
    return pd.concat(frames, ignore_index=True).astype({"layer": int, "position": int, "feature": int})


def _sources(given: Any, checked: dict[int, Any]) -> dict[int, str]:
    """Where each layer's transcoder came from (``Transcoders.sources``; else its class and hook)."""
    known = getattr(given, "sources", None)
    if isinstance(known, dict):
        return {int(layer): str(known[layer]) for layer in checked}
    return {layer: f"{type(t).__name__} at {t.cfg.metadata.hook_name}" for layer, t in checked.items()}
