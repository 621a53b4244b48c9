"""``scope graph`` (scope/cli/graph.py) on the tiny Gemma 2 with random transcoders."""

import json
import socket

import httpx
import jsonschema
import pytest

import scope
import scope.cli.graph
import scope.cli.serve
from scope.cli import main
from scope.serve import serving
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


# ----------------------------------------------------------------------------- serving graphs


@pytest.fixture(scope="module")
def served_graph(tiny_model, tmp_path_factory):
    """A graph of the tiny Gemma 2 with random transcoders, written as JSON by Graph.to_json."""
    transcoders = random_transcoders(tiny_model, d_sae=8)
    graph = scope.attribution_graph(tiny_model, transcoders, "Paris is", max_feature_nodes=6, progress=False)
    return transcoders, graph, graph.to_json(tmp_path_factory.mktemp("graph") / "paris.json")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_graph_and_transcoders_on_a_real_server(capsys, monkeypatch, tiny_model, make_sae, served_graph):
    """`scope serve --graph paris.json --transcoders demo --api-key K`: the page loads without the
    key, its data only with it; a feature's layer maps to the transcoder served as its SAE."""
    transcoders, graph, path = served_graph
    sae, _ = make_sae()
    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: tiny_model)
    monkeypatch.setattr(scope, "load_sae", lambda *args, **kwargs: sae)
    monkeypatch.setattr(scope, "load_transcoders", lambda *args, **kwargs: transcoders)
    seen = {}

    def run(app, host, port):  # the server scope serve would run, on a thread for this test
        with serving(app, host=host, port=port) as base:
            seen["page"] = httpx.get(f"{base}/graph/paris", timeout=30)
            seen["no key"] = httpx.get(f"{base}/api/graph/paris", timeout=30)
            keyed = {"Authorization": "Bearer k3y"}
            seen["data"] = httpx.get(f"{base}/api/graph/paris", headers=keyed, timeout=30)
            feature = next(n for n in seen["data"].json()["nodes"] if n["feature_type"] == "cross layer transcoder")
            name = seen["data"].json()["feature_pages"][feature["layer"]]
            seen["feature"] = httpx.get(f"{base}/api/feature/{name}/{feature['feature']}", headers=keyed, timeout=30)
            seen["expected"] = scope.encode(tiny_model, transcoders[int(feature["layer"])], "Paris is")

    monkeypatch.setattr(scope.cli.serve, "run_server", run)
    port = _free_port()
    argv = ["serve", "--graph", str(path), "--transcoders", "demo", "--api-key", "k3y", "--port", str(port)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"graph       http://127.0.0.1:{port}/graph/paris" in printed
    assert seen["page"].status_code == 200 and "/static/common.js" in seen["page"].text
    assert seen["no key"].status_code == 401
    data = seen["data"].json()
    assert data["nodes"] == json.loads(path.read_text())["nodes"]
    assert data["feature_pages"] == {str(layer): f"transcoder-{layer}" for layer in transcoders}
    assert seen["feature"].status_code == 200


def test_serve_checks_graphs_and_transcoders_before_a_model_loads(capsys, monkeypatch, tmp_path, served_graph):
    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    _, _, path = served_graph
    assert main(["serve", "--graph", str(tmp_path / "nope.json")]) == 1
    assert f"No graph JSON at {tmp_path / 'nope.json'}" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"nodes": []}')
    assert main(["serve", "--graph", f"g={tmp_path / 'bad.json'}"]) == 2
    assert "is not a graph JSON: it needs metadata.prompt_tokens, nodes and links" in capsys.readouterr().err
    assert main(["serve", "--graph", f"g={path}", "--graph", f"g={path}"]) == 2
    assert "--graph: the name 'g' is given twice" in capsys.readouterr().err
    assert main(["serve", "--model", "gemma-2-2b", "--transcoders", "demo"]) == 2
    assert "--transcoders demo are gemma-3-270m's; this server runs gemma-2-2b" in capsys.readouterr().err
    assert main(["serve", "--transcoders", str(tmp_path / "none")]) == 2
    assert "is neither 'demo', a model name (gemma-3-270m) nor a folder" in capsys.readouterr().err


def test_graph_open_serves_the_graph_on_loopback(capsys, monkeypatch, tmp_path, tiny_model, served_graph):
    transcoders, _, _ = served_graph
    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: tiny_model)
    monkeypatch.setattr(scope, "load_transcoders", lambda *args, **kwargs: transcoders)
    seen = {}

    def visit(url):  # instead of waiting for Ctrl-C
        seen["url"] = url
        seen["page"] = httpx.get(url, timeout=30)
        seen["data"] = httpx.get(url.replace("/graph/", "/api/graph/"), timeout=30).json()

    monkeypatch.setattr(scope.cli.graph, "wait_for_interrupt", visit)
    port = _free_port()
    argv = ["graph", "Paris is", "--out", str(tmp_path / "g.json"), "--max-feature-nodes", "6", "--zero-bos"]
    assert main([*argv, "--open", "--port", str(port)]) == 0
    assert seen["url"] == f"http://127.0.0.1:{port}/graph/graph"
    assert f"serving the graph at {seen['url']}" in capsys.readouterr().out
    assert seen["page"].status_code == 200
    written = json.loads((tmp_path / "g.json").read_text())
    jsonschema.validate(written, SCHEMA)
    assert seen["data"]["nodes"] == written["nodes"] and written["metadata"]["generation_settings"]["zero_bos"]
    assert all(node["ctx_idx"] > 0 for node in written["nodes"] if node["feature_type"] == "cross layer transcoder")
