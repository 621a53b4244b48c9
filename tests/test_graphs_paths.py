"""Strongest paths (scope/graphs/paths.py) against every path enumerated by brute force on small
random graphs laid out as attribution graphs are (features, errors, embeddings, logits)."""

import itertools

import pandas as pd
import pytest
import torch

from scope.graphs import Graph, strongest_paths

N_LAYERS, N_POS = 4, 3


def random_graph(seed: int) -> Graph:
    """Features at random (layer, position)s, an error per (layer, position), one embedding per
    position, two logits; signed random edges from earlier layers and positions, about half absent."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for layer, pos in itertools.product(range(N_LAYERS), range(N_POS)):
        for feature in range(int(torch.randint(0, 3, (1,), generator=g))):
            rows.append(("feature", layer, pos, feature, 1.0 + float(torch.rand(1, generator=g))))
    rows += [("error", layer, pos, -1, float("nan")) for layer, pos in itertools.product(range(N_LAYERS), range(N_POS))]
    rows += [("embedding", -1, pos, -1, float("nan")) for pos in range(N_POS)]
    rows += [("logit", N_LAYERS, N_POS - 1, token, float("nan")) for token in (7, 9)]
    nodes = pd.DataFrame(rows, columns=["kind", "layer", "position", "feature", "activation"])
    nodes["node_id"] = [f"n{i}" for i in range(len(nodes))]
    nodes["token"] = [
        f"t{p}" if k != "logit" else f"out{f}" for k, p, f in zip(nodes.kind, nodes.position, nodes.feature)
    ]
    nodes["input"] = 0.0
    nodes["bos_share"] = 0.0
    nodes["probability"] = [0.7 if f == 7 else 0.2 for f in nodes.feature]
    nodes.loc[nodes.kind != "logit", "probability"] = float("nan")
    layer, pos = torch.tensor(nodes.layer.to_numpy()), torch.tensor(nodes.position.to_numpy())
    is_target = torch.tensor(nodes.kind.isin(["feature", "logit"]).to_numpy())
    allowed = is_target[:, None] & (layer[None, :] < layer[:, None]) & (pos[None, :] <= pos[:, None])
    weights = torch.randn(len(nodes), len(nodes), generator=g, dtype=torch.float64)
    present = torch.rand(len(nodes), len(nodes), generator=g) < 0.5
    return Graph(nodes, torch.where(allowed & present, weights, 0.0), {"n_layers": N_LAYERS}, 0.9, 0.9)


def brute_force(graph: Graph, logit: int, edges: torch.Tensor) -> dict[int, tuple[float, list[int]]]:
    """Every embedding -> feature(s) -> logit path by depth-first search: the best share per embedding."""
    A = edges.abs()
    shares = A / A.sum(1, keepdim=True).clamp(min=1e-10)
    kinds = graph.nodes["kind"].tolist()
    found: dict[int, tuple[float, list[int]]] = {}

    def walk(path: list[int], share: float, start: int) -> None:
        for target in range(len(kinds)):
            step = share * float(shares[target, path[-1]])
            if step <= 0:
                continue
            if target == logit and len(path) > 1 and step > found.get(start, (0.0, []))[0]:
                found[start] = (step, [*path, target])
            elif kinds[target] == "feature":
                walk([*path, target], step, start)

    for start in (i for i, kind in enumerate(kinds) if kind == "embedding"):
        walk([start], 1.0, start)
    return found


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pruned", [False, True])
def test_strongest_paths_are_the_best_paths_a_brute_force_finds(seed, pruned):
    graph = random_graph(seed)
    edges = graph.adjacency.double()
    if pruned:
        mask = torch.zeros_like(edges)
        mask[
            torch.tensor(graph.links["target_index"].to_numpy()), torch.tensor(graph.links["source_index"].to_numpy())
        ] = 1.0
        edges = edges * mask
    for token in (7, "out9"):
        logit = graph.logit_index(token)
        expected = brute_force(graph, logit, edges)
        paths = strongest_paths(graph, token, pruned=pruned)
        assert len(paths) == len(expected)
        ids = graph.nodes["node_id"].tolist()
        for row in paths.itertuples():
            start = ids.index(row.path[0])
            share, path = expected[start]
            assert row.share == pytest.approx(share, rel=1e-12)
            assert row.path == [ids[i] for i in path] and row.n_features == len(path) - 2
            signs = [float(torch.sign(edges[b, a])) for a, b in itertools.pairwise(path)]
            assert row.sign == int(torch.tensor(signs).prod()) and row.position == graph.nodes.at[start, "position"]
        assert paths["share"].is_monotonic_decreasing


def test_the_default_logit_is_the_most_probable_and_bad_logits_say_what_is_valid():
    graph = random_graph(0)
    assert strongest_paths(graph).equals(strongest_paths(graph, 7))
    with pytest.raises(
        ValueError, match=r"'nope' is not a logit node of this graph; its logits are token ids \[7, 9\]"
    ):
        strongest_paths(graph, "nope")
    with pytest.raises(TypeError, match="pruned must be True or False, got 'yes'"):
        strongest_paths(graph, pruned="yes")
