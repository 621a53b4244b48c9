"""``scope graph``: an attribution graph of a prompt, written as Neuronpedia's graph JSON."""

from __future__ import annotations

import argparse

import scope
from scope._io import check_writable_file
from scope.cli.common import check_model, table


def graph(args: argparse.Namespace) -> None:
    check_model(args.model)
    out = check_writable_file(args.out, "--out")
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
