"""``scope graph``: an attribution graph of a prompt, written as Neuronpedia's graph JSON; with
``--open``, served on loopback (the graph page, each feature's page) until Ctrl-C."""

from __future__ import annotations

import argparse
import threading
from typing import Any

import scope
from scope._io import check_writable_file
from scope.cli.common import check_model, table


def graph(args: argparse.Namespace) -> None:
    check_model(args.model)
    out = check_writable_file(args.out, "--out")
    if args.open:
        from scope.serve import check_address

        check_address("127.0.0.1", args.port)  # before the model loads
    model = scope.load_model(args.model)
    transcoders = scope.load_transcoders(args.transcoders, model=model)
    found = scope.attribution_graph(
        model,
        transcoders,
        args.prompt,
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        zero_bos=args.zero_bos,
        progress=True,
    )
    found.to_json(out)
    if args.pt:
        found.save(args.pt)
    print(found)
    print(f"completeness error {found.completeness_error():.2e}; influence kept {found.influence_kept():.1%}")
    print(table(found.pruning_report().round(3)))
    kept = found.nodes[found.nodes["kept"] & (found.nodes["kind"] == "feature")]
    top = kept.nlargest(10, "influence")[
        ["node_id", "layer", "position", "token", "feature", "activation", "influence"]
    ]
    print(table(top.round(3)))
    print(f"wrote {out}")
    if args.open:
        open_graph(model, transcoders, found, args.port)


def open_graph(model: Any, transcoders: Any, found: scope.Graph, port: int) -> None:
    """Serve the graph and its transcoders' feature pages on 127.0.0.1 until Ctrl-C."""
    from scope.serve import create_app, serving
    from scope.serve.graph_page import add_graph

    names = {layer: f"transcoder-{layer}" for layer in found.metadata["transcoders"]}
    app = create_app(model, {names[layer]: transcoders[layer] for layer in names})
    path = add_graph(app, "graph", found, feature_pages=names)
    with serving(app, port=port) as base:
        print(f"serving the graph at {base}{path} (Ctrl-C stops)", flush=True)
        wait_for_interrupt(base + path)


def wait_for_interrupt(url: str) -> None:
    """Block until Ctrl-C (a KeyboardInterrupt, which main turns into exit 130)."""
    threading.Event().wait()
