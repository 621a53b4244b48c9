"""``scope features`` and ``scope search``."""

from __future__ import annotations

import argparse
from typing import Any

import scope
from scope._io import iter_texts
from scope.cli.common import check_sae_spec, model_and_sae, table
from scope.labels import read_labels


def features(args: argparse.Namespace) -> None:
    model, sae = model_and_sae(args)
    found = scope.top_features(model, sae, args.text, k=args.k, **view_options(args))
    print(table(found))
    print(found.attrs["dense_note"])


def view_options(args: argparse.Namespace) -> dict[str, Any]:
    """top_features' keyword arguments from --show-dense, --dense-threshold and --rank-by."""
    return {"dense": args.show_dense, "dense_threshold": args.dense_threshold, "rank_by": args.rank_by}


def search(args: argparse.Namespace) -> None:
    if args.query is not None and args.negative:
        raise ValueError("--negative goes with --positive (a contrast), not with --query.")
    labels = read_labels(args.labels) if args.labels else None
    if args.query is not None:  # words against labels: no model needed
        check_sae_spec(args.sae, args.hook)
        sae = scope.load_sae(args.sae, hook=args.hook)
        found = scope.search_features(None, sae, query=args.query, k=args.k, labels=labels)
    else:
        positive = list(iter_texts(args.positive))
        negative = list(iter_texts(args.negative)) if args.negative else None
        model, sae = model_and_sae(args)
        found = scope.search_features(model, sae, positive=positive, negative=negative, k=args.k, labels=labels)
    if found.empty:
        print(f"No feature label shares a word with {args.query!r}.")
        return
    print(table(found.drop(columns=["top_tokens", "explanation"], errors="ignore").round(3)))
