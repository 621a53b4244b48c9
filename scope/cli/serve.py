"""``scope serve``: every cheap argument is checked (the address can be bound, files exist, names
match) before the model loads."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

import scope
from scope.assisted import check_assistant
from scope.cli.common import check_model, check_sae_spec, named
from scope.serve import Limits, check_address, create_app, host_warning
from scope.serve import serve as run_server
from scope.serve.graph_page import add_graph, read_graph_json
from scope.subjects import BUNDLED, SUBJECTS


def serve(args: argparse.Namespace) -> None:
    check_model(args.model)
    if args.assistant is not None:
        check_model(args.assistant)
    specs = named(args.sae or ["demo"], "--sae")
    for spec in specs.values():
        check_sae_spec(spec, None)
    mined_paths = named(args.mined or [], "--mined", default_name=next(iter(specs)))
    for name, path in mined_paths.items():
        if name not in specs:
            raise ValueError(f"--mined {name}={path} names no served SAE; served: {', '.join(specs)}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--mined {path}: no such file (write one with scope examples --out)")
    graphs = {name: read_graph_json(path) for name, path in graph_paths(args.graph or []).items()}
    if args.transcoders is not None:
        check_transcoders_spec(args.transcoders, args.model)
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty: give a key, or leave --api-key out for none.")
    limits = Limits(
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        request_timeout_s=args.request_timeout,
    )
    warning = host_warning(args.host)
    if warning:
        print(f"scope: warning: {warning}", file=sys.stderr)
    check_address(args.host, args.port)  # in use, or not an address of this machine: before the model loads
    model = scope.load_model(args.model)
    assistant = None
    if args.assistant is not None:  # after the target: a draft that cannot serve it fails before the SAEs load
        assistant = scope.load_model(args.assistant, device=model.cfg.device)
        check_assistant(model, assistant)
    saes = {name: scope.load_sae(spec, device=model.cfg.device) for name, spec in specs.items()}
    feature_pages = transcoder_saes(model, args.transcoders, saes) if args.transcoders is not None else {}
    mined = {name: pd.read_parquet(path) for name, path in mined_paths.items()}
    app = create_app(
        model,
        saes,
        mined=mined,
        limits=limits,
        api_key=args.api_key,
        cors_origins=args.cors_origin,
        any_model_name=args.any_model_name,
        assistant=assistant,
    )
    paths = [add_graph(app, name, data, feature_pages=feature_pages) for name, data in graphs.items()]
    if assistant is not None:  # each batch logs its draft's acceptance
        logging.basicConfig(format="scope: %(message)s")
        logging.getLogger("scope.serve.engine").setLevel(logging.INFO)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    drafted = f", drafted by {args.assistant}" if assistant is not None else ""
    served = [name for name in saes if name not in feature_pages.values()]
    with_transcoders = f" and {len(feature_pages)} transcoders" if feature_pages else ""
    print(f"scope serve: {args.model} with SAEs {', '.join(served)}{with_transcoders}{drafted}")
    print(f"  explorer    http://{shown}:{args.port}/")
    for path in paths:
        print(f"  graph       http://{shown}:{args.port}{path}")
    keyed = "  (Authorization: Bearer required)" if args.api_key else ""
    print(f"  OpenAI API  http://{shown}:{args.port}/v1{keyed}  (model {args.model!r})")
    run_server(app, host=args.host, port=args.port)


def graph_paths(values: list[str]) -> dict[str, str]:
    """``--graph`` values (``PATH`` or ``NAME=PATH``) -> {name: path}; a bare path is named by its stem."""
    return named(values, "--graph", bare_name=lambda path: Path(path).stem, what="PATH")


def check_transcoders_spec(spec: str, model_name: str) -> None:
    """What can be checked of a transcoder spec before the model loads (they load for the model)."""
    if spec == "demo":
        if model_name != BUNDLED:
            raise ValueError(f"--transcoders demo are {BUNDLED}'s; this server runs {model_name}.")
    elif spec in SUBJECTS:
        if spec != model_name:
            raise ValueError(f"--transcoders {spec} are another model's transcoders; this server runs {model_name}.")
    elif not Path(spec).expanduser().is_dir():
        raise ValueError(
            f"--transcoders {spec!r} is neither 'demo', a model name ({model_name}) nor a folder of transcoders."
        )


def transcoder_saes(model: Any, spec: str, saes: dict[str, Any]) -> dict[int, str]:
    """Add each layer's transcoder to ``saes`` as ``transcoder-LAYER``; returns layer -> that name."""
    transcoders = scope.load_transcoders(spec, model=model)
    names = {}
    for layer in transcoders:
        name = f"transcoder-{layer}"
        if name in saes:
            raise ValueError(f"--sae {name} clashes with the name --transcoders gives layer {layer}'s transcoder.")
        saes[name], names[layer] = transcoders[layer], name
    return names
