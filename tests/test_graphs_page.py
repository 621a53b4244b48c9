"""The explorer's graph page (scope/serve/graph_page.py) in headless Chromium: every node of the
graph JSON drawn, tokens along the bottom, a node's edges on hover, a click on a feature opening
its feature page; behind --api-key, the graph drawn once the key is typed in."""

import scope
from scope.serve import create_app, serving
from scope.serve.graph_page import add_graph
from tests.test_graphs import random_transcoders
from tests.test_serve_browser import browser  # noqa: F401 (the Chromium fixture)


def test_the_graph_page_draws_every_node_and_links_features_to_their_pages(browser, tiny_model, make_sae):  # noqa: F811
    transcoders = random_transcoders(tiny_model, d_sae=8)
    graph = scope.attribution_graph(tiny_model, transcoders, "Paris is", max_feature_nodes=8)
    sae, _ = make_sae()
    app = create_app(tiny_model, {"tc": sae})
    path = add_graph(app, "paris", graph, feature_pages={layer: "tc" for layer in transcoders})
    data = scope.graphs.export.graph_json(graph)
    with serving(app) as base:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(base + path)
        page.wait_for_selector("circle.node")
        assert page.locator("circle.node").count() == len(data["nodes"])
        assert page.locator("text.token").all_text_contents() == data["metadata"]["prompt_tokens"]
        feature = next(node for node in data["nodes"] if node["feature_type"] == "cross layer transcoder")
        degree = sum(feature["node_id"] in (link["source"], link["target"]) for link in data["links"])
        page.hover(f'circle[data-node="{feature["node_id"]}"]')
        assert page.locator("line.edge").count() == degree > 0
        page.click(f'circle[data-node="{feature["node_id"]}"]')
        page.wait_for_url(f"**/feature/tc/{feature['feature']}")
        assert not errors
        missing = page.goto(base + "/graph/nope")
        assert missing.status == 404 and "paris" in page.content()


def test_the_graph_page_sends_the_api_key(browser, tiny_model):  # noqa: F811
    graph = scope.attribution_graph(
        tiny_model, random_transcoders(tiny_model, d_sae=8), "Paris is", max_feature_nodes=4
    )
    app = create_app(tiny_model, {}, api_key="k3y")
    path = add_graph(app, "paris", graph)
    with serving(app) as base:
        page = browser.new_page()
        page.goto(base + path)
        page.wait_for_selector("#info:has-text('API key')")  # the server's 401, said on the page
        page.fill("#api-key", "k3y")
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("circle.node")
        assert page.locator("circle.node").count() == len(scope.graphs.export.graph_json(graph)["nodes"])
