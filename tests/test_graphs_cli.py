"""``scope graph`` (scope/cli/graph.py) on the tiny Gemma 2 with random transcoders."""

import json

import jsonschema

import scope
from scope.cli import main
from tests.test_graphs import SCHEMA, random_transcoders


def test_graph_writes_neuronpedia_json_and_the_whole_graph(capsys, tmp_path, tiny_model, monkeypatch):
    transcoders = random_transcoders(tiny_model, d_sae=8)
    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: tiny_model)
    monkeypatch.setattr(scope, "load_transcoders", lambda *args, **kwargs: transcoders)
    out, pt = tmp_path / "g.json", tmp_path / "g.pt"
    argv = [
        "graph",
        "Paris is",
        "--out",
        str(out),
        "--pt",
        str(pt),
        "--node-threshold",
        "0.9",
        "--max-feature-nodes",
        "6",
    ]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    jsonschema.validate(data, SCHEMA)
    expected = scope.attribution_graph(tiny_model, transcoders, "Paris is", node_threshold=0.9, max_feature_nodes=6)
    assert {node["node_id"] for node in data["nodes"]} <= set(expected.nodes.loc[expected.nodes["kept"], "node_id"])
    assert {(link["source"], link["target"]) for link in data["links"]} == set(
        zip(*expected.links[["source", "target"]].T.values)
    )
    assert scope.Graph.load(pt).adjacency.equal(expected.adjacency)
    printed = capsys.readouterr().out
    assert "completeness error" in printed and f"wrote {out}" in printed


def test_graph_refuses_a_bad_threshold_before_loading_a_model(capsys, monkeypatch):
    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: 1 / 0)
    assert main(["graph", "hi", "--out", "g.json", "--edge-threshold", "1.5"]) == 2
    assert "--edge-threshold: must be a number in [0, 1], got '1.5'" in capsys.readouterr().err
